//! The supervisor's rules, sans-IO: how long to wait before rebuilding the consumer, and
//! when a consumer counts as stalled.

use std::time::{Duration, Instant};

/// Exponential backoff between consumer rebuilds, with jitter so that a fleet of sinks
/// does not rejoin the group in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff {
            min,
            max,
            current: min,
        }
    }

    /// The next delay; `jitter` is uniform in `[0, 1)` and spreads the delay by +-20 %,
    /// always within `[min, max]`.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        base.mul_f64(factor).clamp(self.min, self.max)
    }

    /// A session worked: the next failure starts from the minimum again.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// A uniform value in `[0, 1)` from the standard library's per-process random hash keys.
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Detects the consumer that has silently stopped fetching (librdkafka can leave the group
/// with only a log line): the broker reports lag, yet nothing arrives and nothing is
/// buffered or being written for `stall_after`. A slow database is not a stall: its records
/// are in flight.
#[derive(Debug, Clone)]
pub struct StallWatch {
    stall_after: Duration,
    last_progress: Instant,
    lag_seen_at: Option<Instant>,
}

impl StallWatch {
    pub fn new(stall_after: Duration, now: Instant) -> StallWatch {
        StallWatch {
            stall_after,
            last_progress: now,
            lag_seen_at: None,
        }
    }

    /// A record arrived or a batch was written.
    pub fn progress(&mut self, now: Instant) {
        self.last_progress = now;
        self.lag_seen_at = None;
    }

    /// The latest lag total from the client's statistics.
    pub fn lag(&mut self, total: i64, now: Instant) {
        if total > 0 {
            self.lag_seen_at.get_or_insert(now);
        } else {
            self.lag_seen_at = None;
        }
    }

    /// Whether the consumer should be rebuilt; `idle` means nothing is buffered or in flight.
    pub fn stalled(&self, idle: bool, now: Instant) -> bool {
        idle && self.lag_seen_at.is_some()
            && now.saturating_duration_since(self.last_progress) >= self.stall_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_3_s_to_30_s_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_secs(3), Duration::from_secs(30));
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay(0.5)).collect();
        let secs: Vec<u64> = delays.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![3, 6, 12, 24, 30, 30]);
        let mut b = Backoff::new(Duration::from_secs(3), Duration::from_secs(30));
        assert_eq!(
            b.next_delay(0.0),
            Duration::from_secs(3),
            "never below the minimum"
        );
        let second = b.next_delay(0.0);
        assert_eq!(second, Duration::from_secs(6).mul_f64(0.8));
        for _ in 0..10 {
            assert!(
                b.next_delay(0.999) <= Duration::from_secs(30),
                "never above the maximum"
            );
        }
        b.reset();
        assert!(b.next_delay(1.0) <= Duration::from_secs_f64(3.6));
    }

    #[test]
    fn jitter_is_in_the_unit_interval() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn lag_without_progress_while_idle_is_a_stall() {
        let t0 = Instant::now();
        let after = Duration::from_secs(60);
        let mut w = StallWatch::new(after, t0);
        w.lag(10, t0 + Duration::from_secs(5));
        assert!(!w.stalled(true, t0 + Duration::from_secs(59)));
        assert!(w.stalled(true, t0 + Duration::from_secs(60)));
        // Busy workers (a slow database) are not a stalled consumer.
        assert!(!w.stalled(false, t0 + Duration::from_secs(600)));
    }

    #[test]
    fn progress_or_no_lag_is_not_a_stall() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(Duration::from_secs(60), t0);
        assert!(
            !w.stalled(true, t0 + Duration::from_secs(600)),
            "no lag seen"
        );
        w.lag(5, t0);
        w.progress(t0 + Duration::from_secs(50));
        assert!(
            !w.stalled(true, t0 + Duration::from_secs(100)),
            "progress cleared the lag"
        );
        w.lag(5, t0 + Duration::from_secs(100));
        w.lag(0, t0 + Duration::from_secs(105));
        assert!(!w.stalled(true, t0 + Duration::from_secs(200)), "caught up");
    }
}
