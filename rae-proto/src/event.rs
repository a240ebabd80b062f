//! What an RAE publishes: device events in an [`Envelope`], its [`Inventory`] and its [`Status`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::field::{Field, FieldId};
use crate::id::{Serial, SessionId};
use crate::record::DeviceRecord;
use crate::topic::Topic;

/// One event of one device session, published on `rae/v1/{serial}/devices/{session}`.
///
/// `serial` and `session` repeat the topic's so that a payload is self-describing once it left
/// MQTT (Kafka, a dead-letter table); the sink rejects a payload whose ids differ from its topic.
///
/// The first field must stay `serial`: the decoder reads it first to report a bad serial precisely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub serial: Serial,
    pub session: SessionId,
    /// Per session, from 1, one more for every event; never reused. The only order there is.
    pub seq: u64,
    /// RAE wall clock when the event was made, unix ms. Informational: never used for ordering.
    pub at_ms: i64,
    pub event: Event,
}

impl Envelope {
    /// The topic this envelope is published on.
    pub fn topic(&self) -> Topic {
        Topic::Device {
            serial: self.serial.clone(),
            session: self.session,
        }
    }

    /// The first field id that appears twice in a Delta, which would make the delta ambiguous.
    pub(crate) fn duplicate_field(&self) -> Option<FieldId> {
        let Event::Delta { fields } = &self.event else {
            return None;
        };
        let mut seen = [false; FieldId::COUNT];
        for field in fields {
            let slot = &mut seen[usize::from(field.id().number())];
            if *slot {
                return Some(field.id());
            }
            *slot = true;
        }
        None
    }
}

/// What happened to the session. Wire indices: Snapshot 0, Delta 1, Closed 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The complete record: when the session opens, periodically, on `resync`, and when the
    /// outbox coalesces Deltas it could not keep. Stands for every [`Field`].
    Snapshot { record: Box<DeviceRecord> },
    /// Only the fields that changed, each at most once.
    Delta { fields: Vec<Field> },
    /// The session ended; no event follows it.
    Closed { reason: CloseReason },
}

impl Event {
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Snapshot { .. } => "snapshot",
            Self::Delta { .. } => "delta",
            Self::Closed { .. } => "closed",
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CloseReason {
    /// wire index 0: not seen for longer than the agent's `gone_after`.
    Gone,
    /// wire index 1: an operator or a cloud command forgot the device.
    Forgotten,
}

impl CloseReason {
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Gone => "gone",
            Self::Forgotten => "forgotten",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session and the seq of its latest event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionSeq {
    pub session: SessionId,
    pub seq: u64,
}

/// The RAE's open sessions, published periodically on `rae/v1/{serial}/inventory`. The sink
/// closes the sessions of this RAE that the inventory no longer lists, and records a gap for
/// those whose latest seq it has not seen.
///
/// The first field must stay `serial` (see [`Envelope`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub serial: Serial,
    /// RAE wall clock, unix ms, informational.
    pub at_ms: i64,
    pub sessions: Vec<SessionSeq>,
}

impl Inventory {
    pub fn topic(&self) -> Topic {
        Topic::Inventory {
            serial: self.serial.clone(),
        }
    }
}

/// The agent's connection state, retained on `rae/v1/{serial}/status`: `Online` after each
/// connect, `Offline` as the MQTT Last Will (or on a clean shutdown).
///
/// The first field must stay `serial` (see [`Envelope`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub serial: Serial,
    pub state: AgentState,
    /// The agent's version, e.g. `0.1.0`.
    pub agent_version: String,
    /// RAE wall clock, unix ms, informational. For a Last Will it is the time of the connect
    /// that registered it, since the broker publishes the will later on its own.
    pub at_ms: i64,
}

impl Status {
    pub fn topic(&self) -> Topic {
        Topic::Status {
            serial: self.serial.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AgentState {
    /// wire index 0
    Online,
    /// wire index 1
    Offline,
}

impl AgentState {
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
