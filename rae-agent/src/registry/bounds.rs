//! The cap on open sessions: what the core does when a new MAC arrives and `max_sessions`
//! sessions are open already.
//!
//! Every unicast source MAC that proves it is alive opens a session, so without a cap a MAC
//! flood (or a misbehaving DUT that randomizes its MAC per frame) grows the core, the
//! database and the outbox without end. At the cap:
//! - the session of the device heard least recently among the offline ones is closed
//!   (`Closed { Gone }`, its cause names the cap) to make room, and counted as evicted: an
//!   offline device has already missed its probes, so it is the one an operator misses least,
//!   and its next frame opens a new session like any device back from `gone_after`;
//! - when no session is offline, the new MAC is refused (no session, no event) and counted:
//!   the devices already tracked are all alive and keep their sessions, and a flood of MACs
//!   that each sent one frame goes offline within `offline_after_misses` probe rounds, after
//!   which its sessions are evicted first.
//!
//! Choosing the victim costs O(log n): the offline sessions sit in an ordered set by when they
//! were last heard, kept in step wherever a session goes offline or online, opens or closes.

use std::collections::{BTreeSet, HashMap};

use rae_proto::{CloseReason, Liveness, Mac};

use super::change::{Cause, Change};
use super::core::Core;
use super::ids::SessionIds;
use super::session::Session;

/// What the cap did since the core started, for `raectl status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapCounters {
    /// Offline sessions closed to make room for a new MAC.
    pub evicted: u64,
    /// New MACs that got no session: the cap was reached and no session was offline.
    pub refused: u64,
}

/// The cap and the offline sessions it may evict.
#[derive(Clone, Debug, Default)]
pub(super) struct SessionCap {
    pub max: usize,
    pub counters: CapCounters,
    /// MAC -> when every offline open session was last heard (core clock), and the same
    /// pairs in eviction order (least recently heard first; the MAC breaks ties).
    offline: HashMap<Mac, i64>,
    order: BTreeSet<(i64, Mac)>,
}

impl SessionCap {
    pub fn new(max: usize) -> SessionCap {
        SessionCap {
            max: max.max(1),
            ..SessionCap::default()
        }
    }

    /// Brings the index in step with the open session `session`.
    pub fn track(&mut self, session: &Session) {
        let record = &session.record;
        let key = (record.reachability.state == Liveness::Offline).then_some(session.heard_ms);
        self.set(record.mac, key);
    }

    /// The session of `mac` closed.
    pub fn forget(&mut self, mac: Mac) {
        self.set(mac, None);
    }

    /// The offline session to evict first.
    pub fn oldest_offline(&self) -> Option<Mac> {
        self.order.first().map(|(_, mac)| *mac)
    }

    fn set(&mut self, mac: Mac, last_seen: Option<i64>) {
        let old = match last_seen {
            Some(at) => self.offline.insert(mac, at),
            None => self.offline.remove(&mac),
        };
        if old == last_seen {
            return;
        }
        if let Some(old) = old {
            self.order.remove(&(old, mac));
        }
        if let Some(at) = last_seen {
            self.order.insert((at, mac));
        }
    }

    #[cfg(test)]
    pub fn offline_len(&self) -> usize {
        debug_assert_eq!(self.offline.len(), self.order.len());
        self.offline.len()
    }
}

impl<I: SessionIds> Core<I> {
    /// What the session cap did (`bounds`).
    pub fn cap_counters(&self) -> CapCounters {
        self.cap.counters
    }

    /// `max_sessions`, as configured.
    pub fn max_sessions(&self) -> usize {
        self.cap.max
    }

    /// Makes room for one more session at the cap (`bounds`): evicts offline sessions, least
    /// recently heard first; false (counted) when none is offline. Each turn removes a
    /// session, so the loop ends; it runs more than once only after the cap was lowered.
    pub(super) fn make_room(&mut self, now_ms: i64, out: &mut Vec<Change>) -> bool {
        let at_ms = self.wall(now_ms);
        while self.sessions.len() >= self.cap.max {
            let Some(victim) = self.cap.oldest_offline() else {
                self.cap.counters.refused += 1;
                return false;
            };
            let Some(mut session) = self.remove_session(victim) else {
                self.cap.forget(victim);
                continue;
            };
            self.cap.counters.evicted += 1;
            out.push(Change::Closed {
                session: session.id,
                seq: session.bump(),
                mac: victim,
                reason: CloseReason::Gone,
                cause: Cause {
                    at_ms,
                    summary: format!(
                        "evicted: {} sessions open (registry.max_sessions) and a new device \
                         arrived; this one was offline and heard least recently",
                        self.cap.max
                    ),
                },
            });
        }
        true
    }
}

#[cfg(test)]
#[path = "bounds_tests.rs"]
mod tests;
