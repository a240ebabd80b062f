//! The command rate: a token bucket (`[control] max_commands_per_sec`, `burst`). Pure: time
//! comes in as core-clock milliseconds.

/// Tokens are kept in thousandths so that a rate of a few per second refills smoothly.
const MILLI: u64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens added per second.
    rate: u64,
    /// Capacity, in thousandths of a token.
    capacity: u64,
    /// Tokens now, in thousandths.
    level: u64,
    /// When `level` was last brought up to date (core clock, ms).
    at_ms: i64,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `per_sec` tokens a second.
    pub fn new(per_sec: u32, burst: u32, now_ms: i64) -> TokenBucket {
        let capacity = u64::from(burst.max(1)) * MILLI;
        TokenBucket {
            rate: u64::from(per_sec.max(1)),
            capacity,
            level: capacity,
            at_ms: now_ms,
        }
    }

    /// Takes one token at `now_ms`; false when the bucket is empty (the command is refused).
    pub fn take(&mut self, now_ms: i64) -> bool {
        // A clock that went back (it does not: the core clock is monotonic) refills nothing.
        let elapsed = u64::try_from(now_ms.saturating_sub(self.at_ms)).unwrap_or(0);
        if elapsed > 0 {
            // rate tokens per 1000 ms = rate thousandths per ms.
            let refill = elapsed.saturating_mul(self.rate);
            self.level = self.level.saturating_add(refill).min(self.capacity);
            self.at_ms = now_ms;
        }
        if self.level >= MILLI {
            self.level -= MILLI;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(2, 5, 0);
        let taken = (0..10).filter(|_| bucket.take(0)).count();
        assert_eq!(taken, 5, "the burst");
        assert!(!bucket.take(499), "half a token after 499 ms at 2/s");
        assert!(bucket.take(500), "one token after 500 ms");
        assert!(!bucket.take(500));
        // A long pause refills to the burst, no more.
        let taken = (0..10).filter(|_| bucket.take(60_000)).count();
        assert_eq!(taken, 5);
    }

    #[test]
    fn time_going_back_refills_nothing() {
        let mut bucket = TokenBucket::new(1, 1, 10_000);
        assert!(bucket.take(10_000));
        assert!(!bucket.take(0));
        assert!(!bucket.take(10_500));
        assert!(bucket.take(11_000));
    }
}
