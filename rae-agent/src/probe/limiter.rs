//! How often the agent may fetch from a device and from the LAN as a whole. Sans-IO: every
//! call takes `now`.
//!
//! Per device: one identification (description + DIAL) per `refetch_after`, or per
//! `retry_after_failure` when the last one failed, and never two at once. In total: at most
//! `max_concurrent` identifications at a time, started from a token bucket (`burst` tokens,
//! one more every `refill_every`), so a LAN full of chatty devices costs the router a
//! bounded trickle of HTTP requests.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Rate limits of identification fetches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchLimits {
    pub refetch_after: Duration,
    pub retry_after_failure: Duration,
    pub max_concurrent: usize,
    pub burst: u32,
    pub refill_every: Duration,
    /// Devices waiting for a free slot or token; more are dropped until the next search.
    pub max_queued: usize,
    /// Devices whose last fetch time is remembered; a full table refuses new devices until
    /// entries expire rather than forgetting when it last fetched from one.
    pub max_tracked: usize,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            refetch_after: Duration::from_secs(30 * 60),
            retry_after_failure: Duration::from_secs(5 * 60),
            max_concurrent: 2,
            burst: 8,
            refill_every: Duration::from_secs(2),
            max_queued: 64,
            max_tracked: 4096,
        }
    }
}

/// What the limiter says about starting a fetch from one device now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go: the fetch is now in flight until [`FetchLimiter::finish`].
    Start,
    /// This device was fetched recently, is being fetched, or cannot be tracked: drop it.
    TooSoon,
    /// The LAN-wide limit is reached: keep it queued and ask again at [`FetchLimiter::next_slot`].
    Busy,
}

/// A token bucket: `capacity` tokens, one more every `every`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    capacity: u32,
    every: Duration,
    tokens: u32,
    /// When the next token is due, while below capacity.
    next_refill: Instant,
}

impl TokenBucket {
    pub fn new(capacity: u32, every: Duration, now: Instant) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            every: every.max(Duration::from_millis(1)),
            tokens: capacity,
            next_refill: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if self.tokens >= self.capacity {
            self.next_refill = now;
            return;
        }
        while self.tokens < self.capacity && now >= self.next_refill + self.every {
            self.tokens += 1;
            self.next_refill += self.every;
        }
        if self.tokens >= self.capacity {
            self.next_refill = now;
        }
    }

    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens == 0 {
            return false;
        }
        if self.tokens == self.capacity {
            self.next_refill = now;
        }
        self.tokens -= 1;
        true
    }

    /// When a token will be available (`now` if one is).
    pub fn next_token(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens > 0 {
            now
        } else {
            self.next_refill + self.every
        }
    }
}

/// Per-device and LAN-wide fetch limits.
#[derive(Debug)]
pub struct FetchLimiter {
    limits: FetchLimits,
    bucket: TokenBucket,
    /// Earliest next fetch per device.
    not_before: HashMap<IpAddr, Instant>,
    in_flight: HashSet<IpAddr>,
}

/// Longest wait any limit may ask for: keeps `Instant` arithmetic far from overflow whatever
/// the configuration says.
const MAX_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);

impl FetchLimiter {
    pub fn new(mut limits: FetchLimits, now: Instant) -> Self {
        limits.refetch_after = limits.refetch_after.min(MAX_WAIT);
        limits.retry_after_failure = limits.retry_after_failure.min(MAX_WAIT);
        limits.refill_every = limits.refill_every.min(MAX_WAIT);
        Self {
            bucket: TokenBucket::new(limits.burst, limits.refill_every, now),
            limits,
            not_before: HashMap::new(),
            in_flight: HashSet::new(),
        }
    }

    pub fn limits(&self) -> &FetchLimits {
        &self.limits
    }

    pub fn try_start(&mut self, ip: IpAddr, now: Instant) -> Admission {
        if self.in_flight.contains(&ip) || self.not_before.get(&ip).is_some_and(|t| now < *t) {
            return Admission::TooSoon;
        }
        if !self.not_before.contains_key(&ip) && self.not_before.len() >= self.limits.max_tracked {
            self.not_before.retain(|_, t| now < *t);
            if self.not_before.len() >= self.limits.max_tracked {
                return Admission::TooSoon;
            }
        }
        if self.in_flight.len() >= self.limits.max_concurrent.max(1) {
            return Admission::Busy;
        }
        if !self.bucket.try_take(now) {
            return Admission::Busy;
        }
        self.in_flight.insert(ip);
        self.not_before.insert(ip, now + self.limits.refetch_after);
        Admission::Start
    }

    /// A fetch ended; a failed one may be retried sooner.
    pub fn finish(&mut self, ip: IpAddr, succeeded: bool, now: Instant) {
        self.in_flight.remove(&ip);
        let wait = if succeeded {
            self.limits.refetch_after
        } else {
            self.limits.retry_after_failure
        };
        self.not_before.insert(ip, now + wait);
    }

    /// When a `Busy` device could start: now if a slot and a token are free, the next token
    /// if only that is missing, `None` while every slot is taken (a finishing fetch frees one).
    pub fn next_slot(&mut self, now: Instant) -> Option<Instant> {
        if self.in_flight.len() >= self.limits.max_concurrent.max(1) {
            return None;
        }
        Some(self.bucket.next_token(now))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 18, 1, last])
    }

    fn limits() -> FetchLimits {
        FetchLimits {
            refetch_after: Duration::from_secs(600),
            retry_after_failure: Duration::from_secs(60),
            max_concurrent: 2,
            burst: 3,
            refill_every: Duration::from_secs(2),
            max_queued: 8,
            max_tracked: 4,
        }
    }

    #[test]
    fn one_fetch_per_device_per_interval() {
        let t0 = Instant::now();
        let mut l = FetchLimiter::new(limits(), t0);
        assert_eq!(l.try_start(ip(1), t0), Admission::Start);
        assert_eq!(l.try_start(ip(1), t0), Admission::TooSoon, "in flight");
        l.finish(ip(1), true, t0 + Duration::from_secs(1));
        let s = Duration::from_secs;
        assert_eq!(l.try_start(ip(1), t0 + s(300)), Admission::TooSoon);
        assert_eq!(l.try_start(ip(1), t0 + s(601)), Admission::Start);
    }

    #[test]
    fn failures_retry_sooner() {
        let t0 = Instant::now();
        let mut l = FetchLimiter::new(limits(), t0);
        assert_eq!(l.try_start(ip(1), t0), Admission::Start);
        l.finish(ip(1), false, t0);
        assert_eq!(
            l.try_start(ip(1), t0 + Duration::from_secs(59)),
            Admission::TooSoon
        );
        assert_eq!(
            l.try_start(ip(1), t0 + Duration::from_secs(60)),
            Admission::Start
        );
    }

    #[test]
    fn concurrency_and_budget_are_lan_wide() {
        let t0 = Instant::now();
        let mut l = FetchLimiter::new(limits(), t0);
        assert_eq!(l.try_start(ip(1), t0), Admission::Start);
        assert_eq!(l.try_start(ip(2), t0), Admission::Start);
        assert_eq!(l.try_start(ip(3), t0), Admission::Busy, "two in flight");
        assert_eq!(l.next_slot(t0), None);
        l.finish(ip(1), true, t0);
        assert_eq!(l.next_slot(t0), Some(t0));
        assert_eq!(l.try_start(ip(3), t0), Admission::Start, "third token");
        l.finish(ip(2), true, t0);
        l.finish(ip(3), true, t0);
        // The bucket (3) is empty: the next device waits for a refill.
        assert_eq!(l.try_start(ip(4), t0), Admission::Busy);
        let next = l.next_slot(t0).unwrap();
        assert_eq!(next, t0 + Duration::from_secs(2));
        assert_eq!(l.try_start(ip(4), next), Admission::Start);
        assert_eq!(l.in_flight(), 1);
    }

    #[test]
    fn bucket_refills_up_to_capacity_only() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, Duration::from_secs(1), t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        let later = t0 + Duration::from_secs(100);
        assert!(b.try_take(later));
        assert!(b.try_take(later));
        assert!(!b.try_take(later));
        assert_eq!(b.next_token(later), later + Duration::from_secs(1));
    }

    #[test]
    fn a_full_table_refuses_new_devices_until_entries_expire() {
        let t0 = Instant::now();
        let mut l = FetchLimiter::new(
            FetchLimits {
                max_concurrent: 10,
                burst: 10,
                ..limits()
            },
            t0,
        );
        for i in 1..=4 {
            assert_eq!(l.try_start(ip(i), t0), Admission::Start);
            l.finish(ip(i), true, t0);
        }
        assert_eq!(l.try_start(ip(5), t0), Admission::TooSoon);
        let later = t0 + Duration::from_secs(601);
        assert_eq!(l.try_start(ip(5), later), Admission::Start);
    }
}
