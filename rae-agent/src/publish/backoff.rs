//! Exponential backoff with jitter, for reconnects and for retrying refused rows.
//!
//! The delay doubles from `min` up to `max`; each delay is drawn from the upper half of its
//! ceiling ("equal jitter"), so a fleet of RAEs that lost the same broker does not come back in
//! lockstep, yet no RAE retries sooner than `min`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The delay before attempt `attempt` (0 for the first retry), given a random value.
pub fn delay(min: Duration, max: Duration, attempt: u32, random: u64) -> Duration {
    let max = max.max(min);
    let ceiling = min
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let half = ceiling / 2;
    let span = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
    let jitter = match span {
        0 => Duration::ZERO,
        span => Duration::from_nanos(random % span),
    };
    (half + jitter).clamp(min, max)
}

/// Consecutive failures and the randomness for their delays.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: SplitMix64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            attempt: 0,
            rng: SplitMix64::from_entropy(),
        }
    }

    /// The delay before the next attempt; each call doubles the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let delay = delay(self.min, self.max, self.attempt, self.rng.next());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Starts again from `min` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn max(&self) -> Duration {
        self.max
    }
}

/// A tiny generator for jitter; not for anything that needs secrecy.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeded from the standard library's per-process random hash keys.
    fn from_entropy() -> SplitMix64 {
        SplitMix64(RandomState::new().build_hasher().finish())
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn delays_double_within_their_bounds() {
        for attempt in 0..40 {
            let ceiling = (MIN * 2u32.saturating_pow(attempt.min(20))).min(MAX);
            for random in [0, 1, u64::MAX / 3, u64::MAX] {
                let d = delay(MIN, MAX, attempt, random);
                assert!(
                    d >= MIN && d <= MAX,
                    "attempt {attempt}: {d:?} out of bounds"
                );
                assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?}");
            }
        }
        assert_eq!(delay(MIN, MAX, 0, 0), MIN);
        assert_eq!(delay(MIN, MAX, 10, 0), MAX / 2);
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let mut backoff = Backoff::new(MIN, MAX);
        let delays: Vec<_> = (0..8)
            .map(|_| {
                backoff.reset();
                for _ in 0..5 {
                    backoff.next_delay();
                }
                backoff.next_delay()
            })
            .collect();
        assert!(
            delays.iter().any(|d| *d != delays[0]),
            "eight draws gave one delay: {delays:?}"
        );
    }

    #[test]
    fn reset_starts_from_min_and_odd_bounds_hold() {
        let mut backoff = Backoff::new(MIN, MAX);
        for _ in 0..30 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() <= MIN * 2);
        assert_eq!(delay(MAX, MIN, 3, 7), MAX, "max below min acts as min");
        assert_eq!(delay(Duration::ZERO, Duration::ZERO, 5, 9), Duration::ZERO);
    }
}
