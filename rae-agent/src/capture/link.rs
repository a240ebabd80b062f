//! Whether the capture has its interface, and when to try again if not: a pure state
//! machine (time and jitter are arguments) so flapping links are unit-testable.
//!
//! Every state change yields exactly one [`LinkChange`], which the capture thread turns
//! into one log line and one counter increment; failed retries while the link is away
//! yield nothing, so a link that is gone for a day costs no log lines after the first.

use std::time::{Duration, Instant};

/// Exponential backoff between attempts to reopen the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub initial: Duration,
    /// Delays double up to this.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failed attempts (1 or more), with "equal
    /// jitter": half the exponential step, plus `jitter` (clamped to 0..=1) times the other
    /// half, so RAEs that lose a shared link do not all retry in the same instant.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let step = self
            .initial
            .checked_mul(1 << doublings)
            .unwrap_or(self.max)
            .min(self.max);
        let half = step / 2;
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        half + half.mul_f64(jitter)
    }
}

/// A change of the capture's link state; one log line each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// The socket opened for the first time.
    Started,
    /// The first attempt failed: the interface is missing or down at start-up.
    Unavailable,
    /// The socket was lost (interface down or removed, or a read error).
    WentAway,
    /// The socket opened again after being away this long.
    CameBack { away_for: Duration },
}

impl LinkChange {
    pub fn is_up(self) -> bool {
        matches!(self, LinkChange::Started | LinkChange::CameBack { .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Starting,
    Up,
    Away {
        since: Instant,
        failures: u32,
        retry_at: Instant,
    },
}

/// The link state and the retry schedule.
#[derive(Clone, Debug)]
pub struct LinkMonitor {
    backoff: Backoff,
    state: State,
}

impl LinkMonitor {
    pub fn new(backoff: Backoff) -> LinkMonitor {
        LinkMonitor {
            backoff,
            state: State::Starting,
        }
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// When to try opening the socket again; `None` while it is open (or before the
    /// first attempt, which is due at once).
    pub fn retry_at(&self) -> Option<Instant> {
        match self.state {
            State::Away { retry_at, .. } => Some(retry_at),
            State::Starting | State::Up => None,
        }
    }

    /// The socket opened at `now`.
    pub fn opened(&mut self, now: Instant) -> Option<LinkChange> {
        let change = match self.state {
            State::Starting => Some(LinkChange::Started),
            State::Up => None,
            State::Away { since, .. } => Some(LinkChange::CameBack {
                away_for: now.saturating_duration_since(since),
            }),
        };
        self.state = State::Up;
        change
    }

    /// Opening failed, or the open socket was lost, at `now`; `jitter` in 0..=1 spreads
    /// the next attempt (see [`Backoff::delay`]).
    pub fn failed(&mut self, now: Instant, jitter: f64) -> Option<LinkChange> {
        let (change, since, failures) = match self.state {
            State::Starting => (Some(LinkChange::Unavailable), now, 1),
            State::Up => (Some(LinkChange::WentAway), now, 1),
            State::Away {
                since, failures, ..
            } => (None, since, failures.saturating_add(1)),
        };
        self.state = State::Away {
            since,
            failures,
            retry_at: now + self.backoff.delay(failures, jitter),
        };
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn monitor() -> LinkMonitor {
        LinkMonitor::new(Backoff::default())
    }

    #[test]
    fn delays_double_from_the_initial_delay_up_to_the_maximum() {
        let backoff = Backoff::default();
        let full: Vec<Duration> = (1..=9).map(|n| backoff.delay(n, 1.0)).collect();
        assert_eq!(
            full,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000].map(|ms| ms * MS)
        );
        assert_eq!(backoff.delay(u32::MAX, 1.0), 5000 * MS);
        assert_eq!(backoff.delay(0, 1.0), 100 * MS);
    }

    #[test]
    fn jitter_spreads_each_delay_over_its_upper_half() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(3, 0.0), 200 * MS);
        assert_eq!(backoff.delay(3, 0.5), 300 * MS);
        assert_eq!(backoff.delay(3, 1.0), 400 * MS);
        assert_eq!(backoff.delay(3, -4.0), 200 * MS);
        assert_eq!(backoff.delay(3, f64::NAN), 200 * MS);
    }

    #[test]
    fn a_clean_start_is_one_change() {
        let t0 = Instant::now();
        let mut link = monitor();
        assert!(!link.is_up());
        assert_eq!(link.opened(t0), Some(LinkChange::Started));
        assert_eq!(link.opened(t0 + MS), None);
        assert!(link.is_up());
        assert_eq!(link.retry_at(), None);
    }

    #[test]
    fn an_outage_is_two_changes_however_many_retries_fail() {
        let t0 = Instant::now();
        let mut link = monitor();
        link.opened(t0);
        let mut changes = vec![link.failed(t0 + 10 * MS, 1.0)];
        assert_eq!(link.retry_at(), Some(t0 + 110 * MS));
        let mut now = t0 + 10 * MS;
        for _ in 0..50 {
            now = link.retry_at().unwrap();
            changes.push(link.failed(now, 1.0));
        }
        assert_eq!(link.retry_at(), Some(now + 5000 * MS), "capped at 5 s");
        let back = now + 20 * MS;
        changes.push(link.opened(back));
        let changes: Vec<LinkChange> = changes.into_iter().flatten().collect();
        assert_eq!(
            changes,
            [
                LinkChange::WentAway,
                LinkChange::CameBack {
                    away_for: back - (t0 + 10 * MS)
                }
            ]
        );
        assert!(link.is_up());
    }

    #[test]
    fn the_backoff_starts_over_after_the_link_came_back() {
        let t0 = Instant::now();
        let mut link = monitor();
        link.opened(t0);
        for n in 0..6 {
            link.failed(t0 + n * MS, 1.0);
        }
        link.opened(t0 + 10 * MS);
        assert_eq!(link.failed(t0 + 20 * MS, 1.0), Some(LinkChange::WentAway));
        assert_eq!(link.retry_at(), Some(t0 + 120 * MS));
    }

    #[test]
    fn a_missing_interface_at_start_is_reported_once_then_its_arrival() {
        let t0 = Instant::now();
        let mut link = monitor();
        assert_eq!(link.failed(t0, 0.0), Some(LinkChange::Unavailable));
        assert_eq!(link.retry_at(), Some(t0 + 50 * MS));
        assert_eq!(link.failed(t0 + 50 * MS, 0.0), None);
        assert_eq!(link.retry_at(), Some(t0 + 150 * MS));
        let change = link.opened(t0 + 150 * MS).unwrap();
        assert_eq!(change, LinkChange::CameBack { away_for: 150 * MS });
        assert!(change.is_up() && !LinkChange::Unavailable.is_up());
    }
}
