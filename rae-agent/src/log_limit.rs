//! Log volume per event kind: a recurring warning (a refused MAC, a coalescing commit, a
//! drop) is logged at most `log.max_per_minute` times a minute per kind; the rest of that
//! minute is suppressed and counted, and one summary line says how many were. A MAC flood or
//! a long broker outage then costs a few lines a minute, never a full flash.
//!
//! [`LogLimiter`] is the pure policy (time comes in as an argument); the process-wide one
//! behind [`allow`] is what the agent's parts call, since the warnings come from several
//! threads (core loop, store thread) and the counters go to one `raectl status` section
//! (`log.*`, see [`status_entries`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window the per-kind budget applies to.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Bucket {
    window_start: Instant,
    logged: u32,
    /// Suppressed in the current window, not yet summarized.
    pending: u64,
    /// Suppressed since start.
    total: u64,
}

/// The per-kind budget. See the module documentation.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    per_window: u32,
    kinds: BTreeMap<&'static str, Bucket>,
}

/// A summary due: `suppressed` lines of `kind` were not logged in the window that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub kind: &'static str,
    pub suppressed: u64,
}

impl LogLimiter {
    pub fn new(per_window: u32) -> LogLimiter {
        LogLimiter {
            per_window: per_window.max(1),
            kinds: BTreeMap::new(),
        }
    }

    /// Whether a line of `kind` may be logged at `now`; a suppressed one is counted. When a
    /// window with suppressed lines ended, its summary comes back first.
    pub fn check(&mut self, kind: &'static str, now: Instant) -> (bool, Option<Summary>) {
        let bucket = self.kinds.entry(kind).or_insert(Bucket {
            window_start: now,
            logged: 0,
            pending: 0,
            total: 0,
        });
        let summary = roll(kind, bucket, now);
        if bucket.logged < self.per_window {
            bucket.logged += 1;
            (true, summary)
        } else {
            bucket.pending += 1;
            bucket.total += 1;
            (false, summary)
        }
    }

    /// The summaries of windows that ended by `now` with suppressed lines (for kinds that
    /// went quiet, so no later [`check`](Self::check) would bring them).
    pub fn summaries(&mut self, now: Instant) -> Vec<Summary> {
        self.kinds
            .iter_mut()
            .filter_map(|(kind, bucket)| roll(kind, bucket, now))
            .collect()
    }

    /// Lines suppressed since start, by kind.
    pub fn suppressed(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.kinds.iter().map(|(kind, b)| (*kind, b.total))
    }

    pub fn per_window(&self) -> u32 {
        self.per_window
    }
}

/// Starts a new window when the current one ended; its summary when it suppressed lines.
fn roll(kind: &'static str, bucket: &mut Bucket, now: Instant) -> Option<Summary> {
    if now.saturating_duration_since(bucket.window_start) < WINDOW {
        return None;
    }
    bucket.window_start = now;
    bucket.logged = 0;
    let suppressed = std::mem::take(&mut bucket.pending);
    (suppressed > 0).then_some(Summary { kind, suppressed })
}

static LIMITER: Mutex<Option<LogLimiter>> = Mutex::new(None);

const DEFAULT_PER_MINUTE: u32 = 10;

fn with<T>(f: impl FnOnce(&mut LogLimiter) -> T) -> T {
    // A panic while holding the lock leaves a limiter that is still consistent enough to use.
    let mut guard = LIMITER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    f(guard.get_or_insert_with(|| LogLimiter::new(DEFAULT_PER_MINUTE)))
}

/// Sets the budget (`log.max_per_minute`); counts so far are kept.
pub fn configure(per_minute: u32) {
    with(|limiter| limiter.per_window = per_minute.max(1));
}

/// Whether a line of `kind` may be logged now (see [`LogLimiter::check`]); logs the summary
/// of the previous window first when one is due.
pub fn allow(kind: &'static str) -> bool {
    let (allowed, summary) = with(|limiter| limiter.check(kind, Instant::now()));
    if let Some(summary) = summary {
        log_summary(summary);
    }
    allowed
}

/// Logs the summaries of kinds that went quiet; the daemon calls it with its status writes.
pub fn flush_summaries() {
    for summary in with(|limiter| limiter.summaries(Instant::now())) {
        log_summary(summary);
    }
}

fn log_summary(summary: Summary) {
    tracing::warn!(
        kind = summary.kind,
        suppressed = summary.suppressed,
        window_secs = WINDOW.as_secs(),
        "similar log lines suppressed (log.max_per_minute)"
    );
}

/// `log.max_per_minute`, `log.suppressed` (all kinds) and `log.suppressed.<kind>`.
pub fn status_entries() -> Vec<(String, String)> {
    with(|limiter| {
        let mut out = vec![(
            "log.max_per_minute".to_owned(),
            limiter.per_window().to_string(),
        )];
        let mut total = 0u64;
        for (kind, count) in limiter.suppressed() {
            total += count;
            out.push((format!("log.suppressed.{kind}"), count.to_string()));
        }
        out.push(("log.suppressed".to_owned(), total.to_string()));
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_n_per_window_per_kind_then_one_summary() {
        let mut limiter = LogLimiter::new(3);
        let t0 = Instant::now();
        let allowed: Vec<bool> = (0..10)
            .map(|i| limiter.check("a", t0 + Duration::from_millis(i)).0)
            .collect();
        assert_eq!(allowed.iter().filter(|a| **a).count(), 3);
        // Another kind has its own budget.
        assert!(limiter.check("b", t0).0);
        // The next window: allowed again, with the summary of the 7 suppressed.
        let (allowed, summary) = limiter.check("a", t0 + WINDOW);
        assert!(allowed);
        assert_eq!(
            summary,
            Some(Summary {
                kind: "a",
                suppressed: 7
            })
        );
        let counts: Vec<_> = limiter.suppressed().collect();
        assert_eq!(counts, [("a", 7), ("b", 0)]);
    }

    #[test]
    fn a_kind_that_went_quiet_still_gets_its_summary_once() {
        let mut limiter = LogLimiter::new(1);
        let t0 = Instant::now();
        limiter.check("a", t0);
        limiter.check("a", t0);
        assert!(limiter.summaries(t0 + Duration::from_secs(1)).is_empty());
        let due = limiter.summaries(t0 + WINDOW);
        assert_eq!(
            due,
            [Summary {
                kind: "a",
                suppressed: 1
            }]
        );
        assert!(limiter.summaries(t0 + WINDOW * 3).is_empty());
    }
}
