//! What the registry core decides: the Changes the store persists and the publisher sends.
//!
//! Every Change that is published carries its session's next `seq`, assigned by the core
//! (which owns the per-session counters, restored from the store at start-up), so the store
//! only has to write what it is given, in one transaction with the matching outbox rows.

use std::net::IpAddr;

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
    /// An address of this session (its IPv4 address or one of its IPv6 ones) is claimed by
    /// other MACs too. Local-only: recorded in the session's history (`raectl show`), never
    /// published. Each session involved gets its own Conflict, so every history tells the
    /// whole story.
    Conflict {
        session: SessionId,
        mac: Mac,
        ip: IpAddr,
        /// The other MACs involved, sorted.
        others: Vec<Mac>,
        kind: ConflictKind,
        cause: Cause,
    },
}

/// What happened to an address (IPv4 or IPv6) that more than one MAC claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictKind {
    /// A MAC claimed an address that another live session holds; both keep it.
    Claimed,
    /// The address moved: the DHCP server gave it to another MAC, or the holder was offline
    /// when another MAC claimed it. The previous holder's record loses it (a Delta).
    Reassigned,
    /// The claims kept alternating between the holders: `flips` changes of claimant since
    /// the previous note about this address.
    FlipFlop { flips: u32 },
}

impl ConflictKind {
    pub const fn as_str(&self) -> &'static str {
        match self {
            ConflictKind::Claimed => "claimed",
            ConflictKind::Reassigned => "reassigned",
            ConflictKind::FlipFlop { .. } => "flip_flop",
        }
    }
}

impl Change {
    pub fn session(&self) -> SessionId {
        match self {
            Change::Opened { session, .. }
            | Change::Updated { session, .. }
            | Change::Snapshot { session, .. }
            | Change::Closed { session, .. }
            | Change::Seen { session, .. }
            | Change::Conflict { session, .. } => *session,
        }
    }

    /// The seq of the event this Change publishes; `None` for local-only Changes.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Change::Opened { seq, .. }
            | Change::Updated { seq, .. }
            | Change::Snapshot { seq, .. }
            | Change::Closed { seq, .. } => Some(*seq),
            Change::Seen { .. } | Change::Conflict { .. } => None,
        }
    }
}
