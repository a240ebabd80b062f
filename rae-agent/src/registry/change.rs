//! What the registry core decides: the Changes the store persists and the publisher sends.
//!
//! Every Change that is published carries its session's next `seq`, assigned by the core
//! (which owns the per-session counters, restored from the store at start-up), so the store
//! only has to write what it is given, in one transaction with the matching outbox rows.

use rae_proto::{CloseReason, DeviceRecord, Field, Mac, SessionId};

/// Why the core made a Change: the frame or timer behind it, kept in the event history that
/// `raectl show` prints ("DHCP REQUEST from 02:..:01 option 12 = tv", "3rd probe missed").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// When the evidence was observed (RAE wall clock, unix ms).
    pub at_ms: i64,
    /// One line for an operator.
    pub summary: String,
}

/// One decision of the registry core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A session opened (a MAC first seen, or seen again after `gone_after`): publish a
    /// Snapshot with `seq` (1 for a new session).
    Opened {
        session: SessionId,
        seq: u64,
        record: DeviceRecord,
        cause: Cause,
    },
    /// Fields of an open session changed: publish a Delta with exactly these fields.
    Updated {
        session: SessionId,
        seq: u64,
        mac: Mac,
        fields: Vec<Field>,
        cause: Cause,
    },
    /// A full Snapshot of an open session, periodic or asked for (resync); nothing changed.
    Snapshot {
        session: SessionId,
        seq: u64,
        record: DeviceRecord,
        cause: Cause,
    },
    /// The session ended: publish Closed.
    Closed {
        session: SessionId,
        seq: u64,
        mac: Mac,
        reason: CloseReason,
        cause: Cause,
    },
    /// The device was seen; `last_seen` moved but nothing else did. Persisted locally
    /// (batched), never published on its own: `last_seen` travels in the next event.
    Seen {
        session: SessionId,
        last_seen_ms: i64,
    },
}

impl Change {
    pub fn session(&self) -> SessionId {
        match self {
            Change::Opened { session, .. }
            | Change::Updated { session, .. }
            | Change::Snapshot { session, .. }
            | Change::Closed { session, .. }
            | Change::Seen { session, .. } => *session,
        }
    }

    /// The seq of the event this Change publishes; `None` for local-only Changes.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Change::Opened { seq, .. }
            | Change::Updated { seq, .. }
            | Change::Snapshot { seq, .. }
            | Change::Closed { seq, .. } => Some(*seq),
            Change::Seen { .. } => None,
        }
    }
}
