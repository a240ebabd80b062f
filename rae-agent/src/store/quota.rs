//! The outbox quota: which sessions' pending events to coalesce when the outbox holds more
//! bytes than allowed. Pure; the store gathers the numbers and carries the plan out.
//!
//! The rule. A session's coalescable events are its pending Snapshots and Deltas that the
//! publisher has not taken yet (rows it peeked may be on the wire; Closed is never touched).
//! Coalescing replaces them by one Snapshot of the session's current record, carrying the
//! highest seq among them, at the queue position of the oldest. That is what the sink's
//! convergence rule needs: every field then has, at that seq, the value it had after the last
//! replaced event, so applying the remaining events gives the same row as applying all of them;
//! the seqs of the dropped events become a gap that this very Snapshot closes. The record is
//! current as of that seq because the only events of a session that can follow its coalescable
//! ones are its Closed event, which carries no field.
//!
//! Rows the publisher took are marked in `meta` before it gets them, so a restart does not
//! coalesce them either. That mark is fsynced before the rows are handed over
//! (`synchronous=FULL`), so it cannot fall back in a power loss either: a coalesced Snapshot
//! never takes the seq of an event the broker may already have.
//!
//! Order of choice: sessions with the most coalescable events first (they lose the least detail
//! per byte saved), only sessions with two or more (one event replaced by a Snapshot saves
//! nothing), until the outbox is projected under seven eighths of the quota, so that the next
//! few commits do not coalesce again.
//!
//! Vanishing. Coalescing leaves every session with pending events at least one row (a Snapshot,
//! and a Closed when it closed), so on its own it cannot hold the quota against churn: a MAC
//! flood during an outage opens and closes sessions without end, each leaving a Snapshot and a
//! Closed. A session that was opened and closed while every one of its events was still
//! pending (its opening row never handed to the publisher) is one the cloud never heard of;
//! when coalescing is not enough, such sessions vanish whole, those that free the most first: their outbox rows and their registry row go, counted (`outbox_vanished_*`), so the
//! cloud and `raectl devices --all` still agree. Nothing the cloud has is contradicted.
//!
//! The bound that holds. With `max_sessions` = C and at most W rows in flight (peeked), after
//! coalescing and vanishing the outbox holds at most: the W rows in flight; one Snapshot (or a
//! single Delta) per open session, C of them; one Snapshot plus one Closed per closed session
//! that had a row published, of which there are at most C + W (each was open when its last
//! published row was written, or is in flight). So the outbox stays under
//! `max(quota, W * E + (2C + W) * (S + K))` bytes, E the largest row, S the largest Snapshot
//! and K a Closed row; the overrun beyond the quota (only when that sum is larger) is counted in
//! `outbox_quota_unmet`.

use rae_proto::SessionId;

/// One session's coalescable events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub session: SessionId,
    /// Pending Snapshots and Deltas the publisher has not taken.
    pub events: u64,
    pub bytes: u64,
    /// The size of the Snapshot that would replace them (about the stored record's size).
    pub snapshot_bytes: u64,
    /// The session is closed and none of its rows was ever handed to the publisher: it may
    /// vanish whole, freeing `total_bytes`.
    pub vanishable: bool,
    /// All of the session's pending rows, Closed and rows in flight included.
    pub total_bytes: u64,
}

/// The sessions to coalesce, in order, those to drop whole, and the outbox size expected
/// afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub sessions: Vec<SessionId>,
    pub vanish: Vec<SessionId>,
    pub expected_bytes: u64,
}

/// The outbox size coalescing aims for once over `max_bytes`.
pub const fn target_bytes(max_bytes: u64) -> u64 {
    max_bytes - max_bytes / 8
}

/// `None` while `total_bytes` is within `max_bytes`. Otherwise the sessions to coalesce; the
/// plan may fall short of the target when too little is coalescable.
pub fn plan(total_bytes: u64, max_bytes: u64, candidates: &[Candidate]) -> Option<Plan> {
    if total_bytes <= max_bytes {
        return None;
    }
    let target = target_bytes(max_bytes);
    let mut useful: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !c.vanishable && c.events >= 2 && c.bytes > c.snapshot_bytes)
        .collect();
    useful.sort_by(|a, b| {
        b.events
            .cmp(&a.events)
            .then(b.bytes.cmp(&a.bytes))
            .then(a.session.cmp(&b.session))
    });
    let mut expected = total_bytes;
    let mut sessions = Vec::new();
    for candidate in useful {
        if expected <= target {
            break;
        }
        expected -= candidate.bytes - candidate.snapshot_bytes;
        sessions.push(candidate.session);
    }
    // Coalescing loses detail the cloud never sees; vanishing loses a whole (short-lived,
    // never published) session, so it comes second.
    let mut gone: Vec<&Candidate> = candidates.iter().filter(|c| c.vanishable).collect();
    gone.sort_by(|a, b| {
        b.total_bytes
            .cmp(&a.total_bytes)
            .then(a.session.cmp(&b.session))
    });
    let mut vanish = Vec::new();
    for candidate in gone {
        if expected <= target {
            break;
        }
        expected = expected.saturating_sub(candidate.total_bytes);
        vanish.push(candidate.session);
    }
    Some(Plan {
        sessions,
        vanish,
        expected_bytes: expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(n: u8, events: u64, bytes: u64) -> Candidate {
        Candidate {
            session: SessionId::from_bytes([n; 16]),
            events,
            bytes,
            snapshot_bytes: 100,
            vanishable: false,
            total_bytes: bytes,
        }
    }

    fn vanishable(n: u8, bytes: u64) -> Candidate {
        Candidate {
            vanishable: true,
            ..candidate(n, 1, bytes)
        }
    }

    #[test]
    fn sessions_the_cloud_never_heard_of_vanish_when_coalescing_is_not_enough() {
        // 1 and 2: closed, never published, one Snapshot and a Closed each (counted as one
        // coalescable event); 3 coalesces.
        let candidates = [
            vanishable(1, 300),
            vanishable(2, 400),
            candidate(3, 10, 1000),
        ];
        // 1700 bytes, quota 1000, target 875: 3 saves 900 and is enough.
        let plan = plan(1700, 1000, &candidates).unwrap();
        assert_eq!(plan.sessions, [SessionId::from_bytes([3; 16])]);
        assert!(plan.vanish.is_empty());
        // 2200 bytes: 3 saves 900 -> 1300, then 2 (the bigger) -> 900, then 1 -> 600.
        let plan = super::plan(2200, 1000, &candidates).unwrap();
        assert_eq!(plan.sessions, [SessionId::from_bytes([3; 16])]);
        assert_eq!(
            plan.vanish,
            [
                SessionId::from_bytes([2; 16]),
                SessionId::from_bytes([1; 16])
            ]
        );
        assert_eq!(plan.expected_bytes, 2200 - 900 - 400 - 300);
    }

    #[test]
    fn a_vanishable_session_is_never_also_coalesced() {
        let c = Candidate {
            vanishable: true,
            ..candidate(1, 5, 5000)
        };
        let plan = plan(5000, 1000, &[c]).unwrap();
        assert!(plan.sessions.is_empty());
        assert_eq!(plan.vanish, [SessionId::from_bytes([1; 16])]);
        assert_eq!(plan.expected_bytes, 0);
    }

    #[test]
    fn nothing_to_do_within_the_quota() {
        assert_eq!(plan(1000, 1000, &[candidate(1, 10, 1000)]), None);
    }

    #[test]
    fn busiest_sessions_first_until_under_the_target() {
        let candidates = [
            candidate(1, 3, 300),
            candidate(2, 20, 2000),
            candidate(3, 10, 1000),
            candidate(4, 1, 500),
        ];
        // 3800 bytes, quota 3200, target 2800: session 2 saves 1900 and is enough.
        let plan = plan(3800, 3200, &candidates).unwrap();
        assert_eq!(plan.sessions, [SessionId::from_bytes([2; 16])]);
        assert_eq!(plan.expected_bytes, 1900);
    }

    #[test]
    fn falls_short_when_little_is_coalescable() {
        let candidates = [candidate(1, 1, 5000), candidate(2, 2, 150)];
        let plan = plan(5150, 1000, &candidates).unwrap();
        assert_eq!(plan.sessions, [SessionId::from_bytes([2; 16])]);
        assert_eq!(plan.expected_bytes, 5100);
    }

    #[test]
    fn ties_are_broken_by_session_for_a_deterministic_plan() {
        let candidates = [candidate(9, 5, 600), candidate(3, 5, 600)];
        let plan = plan(1200, 1000, &candidates).unwrap();
        assert_eq!(plan.sessions, [SessionId::from_bytes([3; 16])]);
    }
}
