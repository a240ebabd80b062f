//! Cloud -> RAE commands and their replies.
//!
//! A request is published on `rae/v1/{serial}/cmd/{command}` with an MQTT v5 Response Topic
//! (`rae/v1/{serial}/reply/{requester}`) and Correlation Data; the agent publishes one
//! [`CommandReply`] there with the same Correlation Data. The topic's command level and the
//! payload's variant must agree ([`CommandRequest::decode_for`] checks it).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::event::{Inventory, SessionSeq};
use crate::id::SessionId;
use crate::mac::Mac;
use crate::record::Availability;

/// The longest ESN a command may set, in bytes.
pub const MAX_ESN_LEN: usize = 128;

/// The command level of a `cmd/{command}` topic; one per [`CommandRequest`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CommandKind {
    SetAvailability,
    SetEsn,
    Resync,
    Forget,
    Inventory,
    Ping,
}

impl CommandKind {
    pub const ALL: [CommandKind; 6] = [
        Self::SetAvailability,
        Self::SetEsn,
        Self::Resync,
        Self::Forget,
        Self::Inventory,
        Self::Ping,
    ];

    /// The topic level naming this command.
    pub const fn topic_level(self) -> &'static str {
        match self {
            Self::SetAvailability => "set-availability",
            Self::SetEsn => "set-esn",
            Self::Resync => "resync",
            Self::Forget => "forget",
            Self::Inventory => "inventory",
            Self::Ping => "ping",
        }
    }

    pub fn from_topic_level(level: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.topic_level() == level)
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.topic_level())
    }
}

/// Which device a command is about: a session (exact) or a MAC (the MAC's open session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeviceRef {
    /// wire index 0
    Session(SessionId),
    /// wire index 1
    Mac(Mac),
}

/// Why a text names no device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a device is named by its MAC (aa:bb:cc:dd:ee:ff) or its session id (lowercase hyphenated UUID)")]
pub struct DeviceRefParseError;

impl fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Session(session) => write!(f, "session {session}"),
            Self::Mac(mac) => write!(f, "mac {mac}"),
        }
    }
}

impl FromStr for DeviceRef {
    type Err = DeviceRefParseError;
    /// Accepts a MAC or a session id, the forms an operator types.
    fn from_str(text: &str) -> Result<Self, DeviceRefParseError> {
        if let Ok(mac) = text.parse() {
            return Ok(Self::Mac(mac));
        }
        SessionId::parse(text)
            .map(Self::Session)
            .map_err(|_| DeviceRefParseError)
    }
}

/// A command to one RAE. Wire indices in declaration order (0 to 5); only ever appended to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandRequest {
    /// Reply: `Ok(Device)` with the session's seq after the change.
    SetAvailability {
        device: DeviceRef,
        availability: Availability,
    },
    /// `None` clears the ESN. The agent refuses an ESN that [`check_esn`] rejects.
    /// Reply: `Ok(Device)`.
    SetEsn {
        device: DeviceRef,
        esn: Option<String>,
    },
    /// Publish a Snapshot of one device, or of every open session when `device` is `None`.
    /// Reply: `Ok(Sessions)` with the seq of each Snapshot.
    Resync { device: Option<DeviceRef> },
    /// Close the device's session (`Closed { Forgotten }`) and drop it from the registry.
    /// Reply: `Ok(Device)` with the seq of the Closed event.
    Forget { device: DeviceRef },
    /// Publish the inventory now. Reply: `Ok(Inventory)` with the same content.
    Inventory,
    /// wire index 5. Changes nothing. Reply: `Ok(Pong)`.
    Ping,
}

impl CommandRequest {
    pub const fn kind(&self) -> CommandKind {
        match self {
            Self::SetAvailability { .. } => CommandKind::SetAvailability,
            Self::SetEsn { .. } => CommandKind::SetEsn,
            Self::Resync { .. } => CommandKind::Resync,
            Self::Forget { .. } => CommandKind::Forget,
            Self::Inventory => CommandKind::Inventory,
            Self::Ping => CommandKind::Ping,
        }
    }
}

/// Why an ESN was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EsnError {
    #[error("ESN must not be empty")]
    Empty,
    #[error("ESN is {len} bytes long, at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error("ESN may hold only printable ASCII without spaces")]
    InvalidChar,
}

/// The rule for an ESN set by a command or an operator: 1 to 128 printable ASCII characters,
/// no spaces (a stray space or newline from a copy-paste would make a different identity).
pub fn check_esn(esn: &str) -> Result<(), EsnError> {
    if esn.is_empty() {
        return Err(EsnError::Empty);
    }
    if esn.len() > MAX_ESN_LEN {
        return Err(EsnError::TooLong {
            len: esn.len(),
            max: MAX_ESN_LEN,
        });
    }
    if !esn.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(EsnError::InvalidChar);
    }
    Ok(())
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandReply {
    /// wire index 0
    Ok(ReplyBody),
    /// wire index 1
    Error(CommandError),
}

impl CommandReply {
    pub fn unknown_device(device: &DeviceRef) -> Self {
        Self::Error(CommandError {
            kind: ErrorKind::UnknownDevice,
            message: format!("unknown device: {device}"),
        })
    }

    /// `reason` is shown to the requester: say what was wrong with the request, nothing more.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::Error(CommandError {
            kind: ErrorKind::BadRequest,
            message: reason.into(),
        })
    }

    /// A command level this agent does not know (a newer requester, or a typo).
    pub fn unknown_command(level: &str) -> Self {
        Self::Error(CommandError {
            kind: ErrorKind::UnknownCommand,
            message: format!("unknown command: {level:?}"),
        })
    }

    /// Over the agent's command rate; the requester may try again later.
    pub fn rate_limited() -> Self {
        Self::Error(CommandError {
            kind: ErrorKind::RateLimited,
            message: "too many commands; try again later".to_owned(),
        })
    }

    /// The requester learns only that the RAE failed; the cause stays in the agent's log.
    pub fn internal() -> Self {
        Self::Error(CommandError {
            kind: ErrorKind::Internal,
            message: "internal error on the RAE".to_owned(),
        })
    }
}

/// What a successful command returns. Wire indices in declaration order (0 to 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyBody {
    /// Nothing to report.
    Done,
    /// The one session the command touched, with its latest seq after the command: the
    /// requester can wait until the sink has stored that seq.
    Device(SessionSeq),
    /// The sessions the command touched, each with its latest seq.
    Sessions(Vec<SessionSeq>),
    Inventory(Inventory),
    /// wire index 4: the answer to `Ping`.
    Pong(Pong),
}

/// What an agent says about itself when pinged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The agent's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// Device sessions open in its registry.
    pub sessions_open: u64,
}

/// A refused or failed command, as the requester sees it. `message` is meant for people outside
/// the RAE: it never carries internal details (paths, SQL, cause chains).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct CommandError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// wire index 0: no open session matches the device reference.
    UnknownDevice,
    /// wire index 1: the request cannot be carried out as sent (undecodable payload, topic and
    /// payload disagree, a value breaks its rule).
    BadRequest,
    /// wire index 2: the RAE failed to carry out a valid request.
    Internal,
    /// wire index 3: the topic names a command this agent does not know.
    UnknownCommand,
    /// wire index 4: refused without being looked at, over the agent's command rate.
    RateLimited,
}

impl ErrorKind {
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::UnknownDevice => "unknown_device",
            Self::BadRequest => "bad_request",
            Self::Internal => "internal",
            Self::UnknownCommand => "unknown_command",
            Self::RateLimited => "rate_limited",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_kind_has_a_topic_level() {
        for kind in CommandKind::ALL {
            assert_eq!(
                CommandKind::from_topic_level(kind.topic_level()),
                Some(kind)
            );
        }
        assert_eq!(CommandKind::from_topic_level("Resync"), None);
        let mac = Mac([0, 1, 2, 3, 4, 5]);
        let requests = [
            CommandRequest::SetAvailability {
                device: DeviceRef::Mac(mac),
                availability: Availability::InTest,
            },
            CommandRequest::SetEsn {
                device: DeviceRef::Mac(mac),
                esn: None,
            },
            CommandRequest::Resync { device: None },
            CommandRequest::Forget {
                device: DeviceRef::Mac(mac),
            },
            CommandRequest::Inventory,
            CommandRequest::Ping,
        ];
        let kinds: Vec<_> = requests.iter().map(CommandRequest::kind).collect();
        assert_eq!(kinds, CommandKind::ALL);
    }

    #[test]
    fn device_ref_text() {
        let mac: DeviceRef = "00:1a:11:02:03:04".parse().unwrap();
        assert_eq!(mac.to_string(), "mac 00:1a:11:02:03:04");
        let session: DeviceRef = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap();
        assert_eq!(
            session.to_string(),
            "session 67e55044-10b1-426f-9247-bb680e5fe0c8"
        );
        assert_eq!("tv".parse::<DeviceRef>(), Err(DeviceRefParseError));
    }

    #[test]
    fn esn_rule() {
        assert_eq!(
            check_esn("NFANDROID2-PRV-SHIELDANDROIDTV-NVIDIA=1234"),
            Ok(())
        );
        assert_eq!(check_esn(""), Err(EsnError::Empty));
        assert_eq!(check_esn("ab c"), Err(EsnError::InvalidChar));
        assert_eq!(check_esn("abc\n"), Err(EsnError::InvalidChar));
        assert_eq!(
            check_esn(&"E".repeat(129)),
            Err(EsnError::TooLong { len: 129, max: 128 })
        );
    }

    #[test]
    fn error_replies_say_little() {
        let CommandReply::Error(error) = CommandReply::internal() else {
            panic!("internal() must be an error reply");
        };
        assert_eq!(error.kind, ErrorKind::Internal);
        assert_eq!(error.to_string(), "internal: internal error on the RAE");
        let device = DeviceRef::Mac(Mac([0, 1, 2, 3, 4, 5]));
        let CommandReply::Error(error) = CommandReply::unknown_device(&device) else {
            panic!("unknown_device() must be an error reply");
        };
        assert_eq!(error.message, "unknown device: mac 00:01:02:03:04:05");
    }
}
