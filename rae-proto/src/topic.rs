//! MQTT topic names: building, parsing, and the subscription filters both programs use.
//!
//! ```text
//! rae/v1/{serial}/devices/{session}   RAE -> cloud  device events
//! rae/v1/{serial}/inventory           RAE -> cloud  open sessions
//! rae/v1/{serial}/status              RAE -> cloud  retained online/offline
//! rae/v1/{serial}/cmd/{command}       cloud -> RAE  commands
//! rae/v1/{serial}/reply/{requester}   RAE -> cloud  command replies
//! ```
//!
//! Every topic has exactly one text form: [`Topic::parse`] accepts only what `Display` writes.

use std::fmt;
use std::str::FromStr;

use crate::command::CommandKind;
use crate::id::{NameError, RequesterId, Serial, SessionId, SessionIdError};

/// The levels every topic of this schema starts with.
pub const PREFIX: &str = "rae/v1/";

/// Subscription filters.
pub mod filter {
    use crate::id::{RequesterId, Serial};

    /// Device events of every RAE (the sink and the bridge).
    pub const ALL_DEVICES: &str = "rae/v1/+/devices/+";
    /// Inventories of every RAE.
    pub const ALL_INVENTORIES: &str = "rae/v1/+/inventory";
    /// Status of every RAE.
    pub const ALL_STATUSES: &str = "rae/v1/+/status";
    /// Every topic an RAE publishes on, replies excluded.
    pub const ALL_FROM_RAES: [&str; 3] = [ALL_DEVICES, ALL_INVENTORIES, ALL_STATUSES];

    /// Device events of one RAE.
    pub fn devices_of(serial: &Serial) -> String {
        format!("rae/v1/{serial}/devices/+")
    }

    /// The commands addressed to one RAE: what its agent subscribes to.
    pub fn commands_for(serial: &Serial) -> String {
        format!("rae/v1/{serial}/cmd/+")
    }

    /// Every reply one RAE sends, whoever asked.
    pub fn replies_of(serial: &Serial) -> String {
        format!("rae/v1/{serial}/reply/+")
    }

    /// The replies to one requester from every RAE: what a cloud requester subscribes to
    /// once, whichever RAEs it then asks.
    pub fn replies_to(requester: &RequesterId) -> String {
        format!("rae/v1/+/reply/{requester}")
    }
}

/// A parsed topic of schema v1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Device {
        serial: Serial,
        session: SessionId,
    },
    Inventory {
        serial: Serial,
    },
    Status {
        serial: Serial,
    },
    Command {
        serial: Serial,
        command: CommandKind,
    },
    Reply {
        serial: Serial,
        requester: RequesterId,
    },
}

/// Why a text is not a v1 topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic does not start with `rae/`")]
    NotRae,
    #[error("topic schema `{0}` is not supported; this build knows `v1`")]
    UnsupportedSchema(String),
    #[error("topic ends before its {0} level")]
    MissingLevel(&'static str),
    #[error("bad serial in topic: {0}")]
    BadSerial(NameError),
    #[error("unknown topic kind `{0}`; expected devices, inventory, status, cmd or reply")]
    UnknownKind(String),
    #[error("bad session in topic: {0}")]
    BadSession(SessionIdError),
    #[error("unknown command `{0}` in topic")]
    UnknownCommand(String),
    #[error("bad requester in topic: {0}")]
    BadRequester(NameError),
    #[error("a `{0}` topic has levels after its last one")]
    TrailingLevels(&'static str),
    #[error("expected a reply topic, found a `{0}` topic")]
    NotReply(&'static str),
    #[error("topic belongs to RAE `{found}`, not to `{expected}`")]
    ForeignSerial { expected: Serial, found: Serial },
}

impl Topic {
    pub fn device(serial: Serial, session: SessionId) -> Self {
        Self::Device { serial, session }
    }

    pub fn inventory(serial: Serial) -> Self {
        Self::Inventory { serial }
    }

    pub fn status(serial: Serial) -> Self {
        Self::Status { serial }
    }

    pub fn command(serial: Serial, command: CommandKind) -> Self {
        Self::Command { serial, command }
    }

    pub fn reply(serial: Serial, requester: RequesterId) -> Self {
        Self::Reply { serial, requester }
    }

    /// The RAE the topic belongs to.
    pub fn serial(&self) -> &Serial {
        match self {
            Self::Device { serial, .. }
            | Self::Inventory { serial }
            | Self::Status { serial }
            | Self::Command { serial, .. }
            | Self::Reply { serial, .. } => serial,
        }
    }

    pub fn parse(text: &str) -> Result<Self, TopicError> {
        let mut levels = text.split('/');
        let mut next = |what| levels.next().ok_or(TopicError::MissingLevel(what));
        if next("rae")? != "rae" {
            return Err(TopicError::NotRae);
        }
        let schema = next("schema")?;
        if schema != "v1" {
            return Err(TopicError::UnsupportedSchema(schema.to_owned()));
        }
        let serial = Serial::new(next("serial")?).map_err(TopicError::BadSerial)?;
        let topic = match next("kind")? {
            "devices" => {
                let session = SessionId::parse(next("session")?).map_err(TopicError::BadSession)?;
                Self::Device { serial, session }
            }
            "inventory" => Self::Inventory { serial },
            "status" => Self::Status { serial },
            "cmd" => {
                let name = next("command")?;
                let command = CommandKind::from_topic_level(name)
                    .ok_or_else(|| TopicError::UnknownCommand(name.to_owned()))?;
                Self::Command { serial, command }
            }
            "reply" => {
                let requester =
                    RequesterId::new(next("requester")?).map_err(TopicError::BadRequester)?;
                Self::Reply { serial, requester }
            }
            other => return Err(TopicError::UnknownKind(other.to_owned())),
        };
        if levels.next().is_some() {
            return Err(TopicError::TrailingLevels(topic.kind()));
        }
        Ok(topic)
    }

    /// Checks a command's MQTT v5 Response Topic: the agent answers only on its own
    /// `rae/v1/{own}/reply/{requester}`, so a command cannot make it publish anywhere else.
    pub fn parse_reply_for(text: &str, own: &Serial) -> Result<RequesterId, TopicError> {
        match Self::parse(text)? {
            Self::Reply { serial, requester } if serial == *own => Ok(requester),
            Self::Reply { serial, .. } => Err(TopicError::ForeignSerial {
                expected: own.clone(),
                found: serial,
            }),
            other => Err(TopicError::NotReply(other.kind())),
        }
    }

    /// The kind level as written in the topic.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Device { .. } => "devices",
            Self::Inventory { .. } => "inventory",
            Self::Status { .. } => "status",
            Self::Command { .. } => "cmd",
            Self::Reply { .. } => "reply",
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}/{}", self.serial(), self.kind())?;
        match self {
            Self::Device { session, .. } => write!(f, "/{session}"),
            Self::Inventory { .. } | Self::Status { .. } => Ok(()),
            Self::Command { command, .. } => write!(f, "/{}", command.topic_level()),
            Self::Reply { requester, .. } => write!(f, "/{requester}"),
        }
    }
}

impl FromStr for Topic {
    type Err = TopicError;
    fn from_str(text: &str) -> Result<Self, TopicError> {
        Self::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";

    fn serial() -> Serial {
        Serial::new("rae-0042").unwrap()
    }

    #[test]
    fn builds_the_documented_names() {
        let session = SessionId::parse(SESSION).unwrap();
        let cases = [
            (
                Topic::device(serial(), session),
                format!("rae/v1/rae-0042/devices/{SESSION}"),
            ),
            (
                Topic::inventory(serial()),
                "rae/v1/rae-0042/inventory".into(),
            ),
            (Topic::status(serial()), "rae/v1/rae-0042/status".into()),
            (
                Topic::command(serial(), CommandKind::SetAvailability),
                "rae/v1/rae-0042/cmd/set-availability".into(),
            ),
            (
                Topic::reply(serial(), RequesterId::new("ci_runner-7").unwrap()),
                "rae/v1/rae-0042/reply/ci_runner-7".into(),
            ),
        ];
        for (topic, text) in cases {
            assert_eq!(topic.to_string(), text);
            assert_eq!(Topic::parse(&text), Ok(topic));
        }
    }

    #[test]
    fn rejects_with_typed_errors() {
        use TopicError as E;
        let cases: [(&str, TopicError); 14] = [
            ("", E::NotRae),
            ("rae", E::MissingLevel("schema")),
            ("xyz/v1/rae-1/status", E::NotRae),
            ("rae/v2/rae-1/status", E::UnsupportedSchema("v2".into())),
            ("rae/v1", E::MissingLevel("serial")),
            ("rae/v1/", E::BadSerial(NameError::Empty)),
            (
                "rae/v1/+/status",
                E::BadSerial(NameError::InvalidChar { ch: '+', index: 0 }),
            ),
            ("rae/v1/rae-1", E::MissingLevel("kind")),
            ("rae/v1/rae-1/devices", E::MissingLevel("session")),
            ("rae/v1/rae-1/telemetry", E::UnknownKind("telemetry".into())),
            (
                "rae/v1/rae-1/cmd/reboot",
                E::UnknownCommand("reboot".into()),
            ),
            ("rae/v1/rae-1/reply/", E::BadRequester(NameError::Empty)),
            ("rae/v1/rae-1/status/", E::TrailingLevels("status")),
            (
                "rae/v1/rae-1/devices/67E55044-10B1-426F-9247-BB680E5FE0C8",
                E::BadSession(SessionIdError),
            ),
        ];
        for (text, error) in cases {
            assert_eq!(Topic::parse(text), Err(error), "{text}");
        }
    }

    #[test]
    fn reply_topic_must_be_the_agents_own() {
        let own = serial();
        assert_eq!(
            Topic::parse_reply_for("rae/v1/rae-0042/reply/cloud", &own),
            Ok(RequesterId::new("cloud").unwrap())
        );
        assert_eq!(
            Topic::parse_reply_for("rae/v1/rae-0043/reply/cloud", &own),
            Err(TopicError::ForeignSerial {
                expected: own.clone(),
                found: Serial::new("rae-0043").unwrap()
            })
        );
        assert_eq!(
            Topic::parse_reply_for("rae/v1/rae-0042/status", &own),
            Err(TopicError::NotReply("status"))
        );
        assert!(Topic::parse_reply_for("elsewhere/entirely", &own).is_err());
    }

    #[test]
    fn filters() {
        assert_eq!(filter::devices_of(&serial()), "rae/v1/rae-0042/devices/+");
        assert_eq!(filter::commands_for(&serial()), "rae/v1/rae-0042/cmd/+");
        assert_eq!(filter::replies_of(&serial()), "rae/v1/rae-0042/reply/+");
        assert_eq!(filter::ALL_DEVICES, "rae/v1/+/devices/+");
    }
}
