//! When to ask an RAE to resync a session with a gap; sans-IO (time comes in as `now`).
//!
//! Per session: at most one request outstanding; after a reply (or a timeout) the next one
//! waits a backoff that doubles per attempt up to a cap, and after `max_attempts` the session
//! is left to the periodic Snapshot. Per RAE: a token bucket, so a burst of gaps (a sink that
//! was away, an RAE that lost its outbox) cannot flood one RAE with commands. Memory: at most
//! `max_sessions` sessions are tracked; the rest are counted as overflow and left to the
//! periodic Snapshot.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rae_proto::{Serial, SessionId};

#[derive(Debug, Clone, PartialEq)]
pub struct HealPolicy {
    /// From the first gap notice to the first request: a gap that closes by itself within it
    /// (an inventory that overtook its session's events) costs no command.
    pub grace: Duration,
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    /// Requests per second per RAE, and the bucket size.
    pub per_rae_per_sec: f64,
    pub per_rae_burst: u32,
    pub max_sessions: usize,
    /// Requests for one gap before it is left to the periodic Snapshot.
    pub max_attempts: u32,
}

impl Default for HealPolicy {
    fn default() -> Self {
        HealPolicy {
            grace: Duration::from_millis(500),
            backoff_first: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
            per_rae_per_sec: 2.0,
            per_rae_burst: 10,
            max_sessions: 10_000,
            max_attempts: 8,
        }
    }
}

/// Why a gap notice or a due session sent nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppressed {
    /// A request for the session is waiting for its reply.
    Outstanding,
    /// The session's backoff has not run out.
    Backoff,
    /// The RAE's bucket is empty; the session goes when a token is there.
    RateLimit,
    /// `max_sessions` are tracked already.
    Overflow,
}

/// How a request ended, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// The RAE replied (done, or an error other than the ones below): wait, then ask again
    /// if the gap is still open.
    Replied,
    /// No reply (timeout, broker unreachable): ask again after the backoff, same request.
    NoReply,
    /// The RAE does not know the session (forgotten or closed): nothing to resync.
    UnknownDevice,
}

/// What the healer should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub serial: Serial,
    pub session: SessionId,
    /// The attempt this is, from 1.
    pub attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// May be sent at this time.
    Waiting(Instant),
    Outstanding,
}

#[derive(Debug)]
struct Tracked {
    serial: Serial,
    state: State,
    attempts: u32,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The decisions, and the sessions they are about.
#[derive(Debug)]
pub struct Healer {
    policy: HealPolicy,
    sessions: BTreeMap<SessionId, Tracked>,
    buckets: HashMap<Serial, Bucket>,
}

/// What [`Healer::notice`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Noticed {
    /// Tracked now; a request goes when it is due ([`Healer::due`]).
    Scheduled,
    Send(Send),
    Suppressed(Suppressed),
}

/// What [`Healer::answered`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAnswer {
    /// Asks again at this time unless the gap closes first.
    Retry(Instant),
    /// No longer tracked: the RAE does not know the session.
    Dropped,
    /// No longer tracked: `max_attempts` requests went without closing the gap.
    GaveUp,
}

impl Healer {
    pub fn new(policy: HealPolicy) -> Healer {
        Healer {
            policy,
            sessions: BTreeMap::new(),
            buckets: HashMap::new(),
        }
    }

    pub fn tracked(&self) -> usize {
        self.sessions.len()
    }

    /// The writer committed a row of `session` with `needs_resync` set.
    pub fn notice(&mut self, serial: &Serial, session: SessionId, now: Instant) -> Noticed {
        match self.sessions.get(&session).map(|t| t.state) {
            Some(State::Outstanding) => return Noticed::Suppressed(Suppressed::Outstanding),
            Some(State::Waiting(at)) if at > now => {
                return Noticed::Suppressed(Suppressed::Backoff)
            }
            Some(State::Waiting(_)) => {}
            None => {
                if self.sessions.len() >= self.policy.max_sessions {
                    return Noticed::Suppressed(Suppressed::Overflow);
                }
                let at = now + self.policy.grace;
                self.sessions.insert(
                    session,
                    Tracked {
                        serial: serial.clone(),
                        state: State::Waiting(at),
                        attempts: 0,
                    },
                );
                if at > now {
                    return Noticed::Scheduled;
                }
            }
        }
        match self.try_send(session, now) {
            Ok(send) => Noticed::Send(send),
            Err(why) => Noticed::Suppressed(why),
        }
    }

    /// The writer committed a row of `session` without a gap (the Snapshot landed).
    /// `true` when the session was tracked.
    pub fn closed(&mut self, session: SessionId) -> bool {
        self.sessions.remove(&session).is_some()
    }

    /// Requests that are due at `now`, and how many due sessions the rate limit held back.
    pub fn due(&mut self, now: Instant) -> (Vec<Send>, u64) {
        let due: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, t)| matches!(t.state, State::Waiting(at) if at <= now))
            .map(|(id, _)| *id)
            .collect();
        let mut sends = Vec::new();
        let mut limited = 0;
        for session in due {
            match self.try_send(session, now) {
                Ok(send) => sends.push(send),
                Err(_) => limited += 1,
            }
        }
        self.prune_buckets(now);
        (sends, limited)
    }

    /// The earliest time something may be due.
    pub fn next_due(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter_map(|t| match t.state {
                State::Waiting(at) => Some(at),
                State::Outstanding => None,
            })
            .min()
    }

    /// A request for `session` ended.
    pub fn answered(&mut self, session: SessionId, how: Answered, now: Instant) -> AfterAnswer {
        let Some(tracked) = self.sessions.get_mut(&session) else {
            // The gap closed while the request was out.
            return AfterAnswer::Dropped;
        };
        if how == Answered::UnknownDevice {
            self.sessions.remove(&session);
            return AfterAnswer::Dropped;
        }
        if tracked.attempts >= self.policy.max_attempts {
            self.sessions.remove(&session);
            return AfterAnswer::GaveUp;
        }
        let at = now + backoff(&self.policy, tracked.attempts);
        tracked.state = State::Waiting(at);
        AfterAnswer::Retry(at)
    }

    fn try_send(&mut self, session: SessionId, now: Instant) -> Result<Send, Suppressed> {
        let Some(tracked) = self.sessions.get_mut(&session) else {
            return Err(Suppressed::Overflow);
        };
        let rate = self.policy.per_rae_per_sec.max(1e-6);
        let burst = f64::from(self.policy.per_rae_burst.max(1));
        let bucket = self
            .buckets
            .entry(tracked.serial.clone())
            .or_insert(Bucket {
                tokens: burst,
                at: now,
            });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
            tracked.state = State::Waiting(now + wait);
            return Err(Suppressed::RateLimit);
        }
        bucket.tokens -= 1.0;
        tracked.state = State::Outstanding;
        tracked.attempts += 1;
        Ok(Send {
            serial: tracked.serial.clone(),
            session,
            attempt: tracked.attempts,
        })
    }

    /// Forgets buckets that are full again and serve no tracked session: memory stays bounded
    /// by the RAEs with gaps.
    fn prune_buckets(&mut self, now: Instant) {
        if self.buckets.len() <= self.sessions.len() {
            return;
        }
        let rate = self.policy.per_rae_per_sec.max(1e-6);
        let burst = f64::from(self.policy.per_rae_burst.max(1));
        let busy: std::collections::HashSet<&Serial> =
            self.sessions.values().map(|t| &t.serial).collect();
        self.buckets.retain(|serial, b| {
            let full = b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate >= burst;
            busy.contains(serial) || !full
        });
    }
}

/// The wait after `attempts` requests: first, doubled per further attempt, capped.
fn backoff(policy: &HealPolicy, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    policy
        .backoff_first
        .saturating_mul(1 << doublings)
        .min(policy.backoff_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(n: u32) -> Serial {
        Serial::new(format!("rae-{n}")).unwrap()
    }

    fn session(n: u128) -> SessionId {
        SessionId::from(uuid::Uuid::from_u128(n))
    }

    fn policy() -> HealPolicy {
        HealPolicy {
            grace: Duration::ZERO,
            backoff_first: Duration::from_secs(5),
            backoff_max: Duration::from_secs(20),
            per_rae_per_sec: 1.0,
            per_rae_burst: 2,
            max_sessions: 3,
            max_attempts: 4,
        }
    }

    fn sent(n: Noticed) -> Send {
        match n {
            Noticed::Send(send) => send,
            other => panic!("expected a send, got {other:?}"),
        }
    }

    #[test]
    fn one_request_outstanding_per_session() {
        let t0 = Instant::now();
        let mut h = Healer::new(policy());
        let first = sent(h.notice(&serial(1), session(1), t0));
        assert_eq!(first.attempt, 1);
        for later in 1..5 {
            assert_eq!(
                h.notice(&serial(1), session(1), t0 + Duration::from_secs(later)),
                Noticed::Suppressed(Suppressed::Outstanding)
            );
        }
        assert_eq!(h.due(t0 + Duration::from_secs(60)).0, vec![]);
        assert_eq!(h.next_due(), None);
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_the_gap_is_given_up_after_max_attempts() {
        let mut now = Instant::now();
        let mut h = Healer::new(policy());
        sent(h.notice(&serial(1), session(1), now));
        let mut waits = Vec::new();
        loop {
            match h.answered(session(1), Answered::Replied, now) {
                AfterAnswer::Retry(at) => {
                    waits.push((at - now).as_secs());
                    assert_eq!(
                        h.notice(&serial(1), session(1), at - Duration::from_millis(1)),
                        Noticed::Suppressed(Suppressed::Backoff)
                    );
                    now = at;
                    let (sends, limited) = h.due(now);
                    assert_eq!((sends.len(), limited), (1, 0));
                }
                AfterAnswer::GaveUp => break,
                AfterAnswer::Dropped => panic!("not dropped"),
            }
        }
        assert_eq!(waits, vec![5, 10, 20]);
        assert_eq!(h.tracked(), 0);
    }

    #[test]
    fn a_closed_gap_is_forgotten_and_its_late_reply_ignored() {
        let t0 = Instant::now();
        let mut h = Healer::new(policy());
        sent(h.notice(&serial(1), session(1), t0));
        assert!(h.closed(session(1)));
        assert!(!h.closed(session(1)));
        assert_eq!(
            h.answered(session(1), Answered::Replied, t0),
            AfterAnswer::Dropped
        );
        // A new gap later starts over at attempt 1.
        assert_eq!(sent(h.notice(&serial(1), session(1), t0)).attempt, 1);
    }

    #[test]
    fn unknown_device_stops_the_requests() {
        let t0 = Instant::now();
        let mut h = Healer::new(policy());
        sent(h.notice(&serial(1), session(1), t0));
        assert_eq!(
            h.answered(session(1), Answered::UnknownDevice, t0),
            AfterAnswer::Dropped
        );
        assert_eq!(h.tracked(), 0);
    }

    #[test]
    fn rate_limit_per_rae_defers_and_then_sends() {
        let t0 = Instant::now();
        let mut h = Healer::new(HealPolicy {
            max_sessions: 10,
            ..policy()
        });
        sent(h.notice(&serial(1), session(1), t0));
        sent(h.notice(&serial(1), session(2), t0));
        assert_eq!(
            h.notice(&serial(1), session(3), t0),
            Noticed::Suppressed(Suppressed::RateLimit)
        );
        // Another RAE has its own bucket.
        sent(h.notice(&serial(2), session(4), t0));
        // The deferred session is due when one token is back (1 per second).
        assert_eq!(h.next_due(), Some(t0 + Duration::from_secs(1)));
        let (sends, limited) = h.due(t0 + Duration::from_millis(500));
        assert_eq!((sends.len(), limited), (0, 0), "not due yet");
        let (sends, limited) = h.due(t0 + Duration::from_secs(1));
        assert_eq!(limited, 0);
        assert_eq!(
            sends,
            vec![Send {
                serial: serial(1),
                session: session(3),
                attempt: 1
            }]
        );
    }

    #[test]
    fn tracked_sessions_are_capped() {
        let t0 = Instant::now();
        let mut h = Healer::new(policy());
        for n in 1..=3 {
            sent(h.notice(&serial(n), session(u128::from(n)), t0));
        }
        assert_eq!(
            h.notice(&serial(9), session(9), t0),
            Noticed::Suppressed(Suppressed::Overflow)
        );
        assert_eq!(h.tracked(), 3);
        h.closed(session(1));
        sent(h.notice(&serial(9), session(9), t0));
    }

    #[test]
    fn grace_lets_a_gap_close_by_itself() {
        let t0 = Instant::now();
        let mut h = Healer::new(HealPolicy {
            grace: Duration::from_secs(1),
            ..policy()
        });
        assert_eq!(h.notice(&serial(1), session(1), t0), Noticed::Scheduled);
        assert_eq!(
            h.notice(&serial(1), session(1), t0 + Duration::from_millis(10)),
            Noticed::Suppressed(Suppressed::Backoff)
        );
        assert_eq!(h.next_due(), Some(t0 + Duration::from_secs(1)));
        h.closed(session(1));
        assert_eq!(h.due(t0 + Duration::from_secs(2)).0, vec![]);
        assert_eq!(h.notice(&serial(1), session(2), t0), Noticed::Scheduled);
        let (sends, _) = h.due(t0 + Duration::from_secs(1));
        assert_eq!(sends.len(), 1);
    }
}
