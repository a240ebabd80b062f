//! The byte form of every payload: one schema version byte, then the value in `postcard`.
//!
//! Decoding is for untrusted input: it never panics, refuses anything over
//! [`MAX_PAYLOAD_BYTES`] before parsing, rejects trailing bytes, and checks what the types
//! cannot express (seq from 1, a Delta names each field once).
//!
//! Evolution: postcard writes an enum variant as its index and a struct as its fields in order,
//! with no names. Within v1, variants may only be appended. A payload that uses anything a
//! version-N decoder does not know must carry version N+1, so that older decoders fail with
//! [`DecodeError::UnsupportedVersion`] rather than a confusing `Malformed`; newer decoders keep
//! decoding every older version (the golden vectors in `tests/vectors/` hold them to it).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::command::{CommandKind, CommandReply, CommandRequest, ReplyBody};
use crate::event::{Envelope, Inventory, SessionSeq, Status};
use crate::field::FieldId;
use crate::id::{NameError, Serial};

/// The schema version this build writes, and the newest it reads.
pub const SCHEMA_VERSION: u8 = 1;

/// The largest payload, version byte included, that is encoded or decoded. A full Snapshot of a
/// device with many services is a few KiB; this bounds what a hostile peer can make us parse.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// A payload that is well formed but breaks a rule of the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("seq is 0; a session's seq starts at 1")]
    ZeroSeq,
    #[error("the delta carries field `{0}` more than once")]
    DuplicateField(FieldId),
}

/// Why bytes are not a payload of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty {payload} payload: no schema version byte")]
    Empty { payload: &'static str },
    #[error("{payload} payload is {len} bytes, more than the {max} allowed")]
    TooLarge {
        payload: &'static str,
        len: usize,
        max: usize,
    },
    #[error("schema version 0 does not exist; versions start at 1")]
    VersionZero,
    #[error(
        "schema version {found} is newer than the newest this decoder supports \
         ({max_supported}); upgrade rae-proto to read it"
    )]
    UnsupportedVersion { found: u8, max_supported: u8 },
    #[error("bad serial in {payload} payload: {source}")]
    BadSerial {
        payload: &'static str,
        source: NameError,
    },
    #[error("malformed {payload} payload: {source}")]
    Malformed {
        payload: &'static str,
        source: postcard::Error,
    },
    #[error("{payload} payload has {count} bytes after its end")]
    TrailingBytes { payload: &'static str, count: usize },
    #[error("invalid {payload} payload: {source}")]
    Invalid {
        payload: &'static str,
        source: ContentError,
    },
    #[error("the payload is a `{payload}` command but the topic says `{topic}`")]
    CommandMismatch {
        topic: CommandKind,
        payload: CommandKind,
    },
}

/// Why a value cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("invalid {payload}: {source}")]
    Invalid {
        payload: &'static str,
        source: ContentError,
    },
    #[error("{payload} payload would be {len} bytes, more than the {max} allowed")]
    TooLarge {
        payload: &'static str,
        len: usize,
        max: usize,
    },
    #[error("cannot encode {payload}: {source}")]
    Postcard {
        payload: &'static str,
        source: postcard::Error,
    },
}

/// The five top-level payloads. Sealed: the rules above hold only for these.
trait Payload: Serialize + DeserializeOwned {
    /// Names the payload kind in errors.
    const NAME: &'static str;
    /// Whether the encoding starts with a [`Serial`], which decoding then checks on its own:
    /// postcard drops the text of a custom deserialization error, so a bad serial found inside
    /// the full decode would come out as an anonymous `Malformed`.
    const LEADS_WITH_SERIAL: bool;

    fn check(&self) -> Result<(), ContentError>;
}

fn check_seqs<'a>(seqs: impl IntoIterator<Item = &'a SessionSeq>) -> Result<(), ContentError> {
    match seqs.into_iter().any(|s| s.seq == 0) {
        true => Err(ContentError::ZeroSeq),
        false => Ok(()),
    }
}

impl Payload for Envelope {
    const NAME: &'static str = "device event";
    const LEADS_WITH_SERIAL: bool = true;

    fn check(&self) -> Result<(), ContentError> {
        if self.seq == 0 {
            return Err(ContentError::ZeroSeq);
        }
        match self.duplicate_field() {
            Some(id) => Err(ContentError::DuplicateField(id)),
            None => Ok(()),
        }
    }
}

impl Payload for Inventory {
    const NAME: &'static str = "inventory";
    const LEADS_WITH_SERIAL: bool = true;

    fn check(&self) -> Result<(), ContentError> {
        check_seqs(&self.sessions)
    }
}

impl Payload for Status {
    const NAME: &'static str = "status";
    const LEADS_WITH_SERIAL: bool = true;

    fn check(&self) -> Result<(), ContentError> {
        Ok(())
    }
}

impl Payload for CommandRequest {
    const NAME: &'static str = "command request";
    const LEADS_WITH_SERIAL: bool = false;

    fn check(&self) -> Result<(), ContentError> {
        Ok(())
    }
}

impl Payload for CommandReply {
    const NAME: &'static str = "command reply";
    const LEADS_WITH_SERIAL: bool = false;

    fn check(&self) -> Result<(), ContentError> {
        match self {
            CommandReply::Ok(ReplyBody::Device(one)) => check_seqs([one]),
            CommandReply::Ok(ReplyBody::Sessions(many)) => check_seqs(many),
            CommandReply::Ok(ReplyBody::Inventory(inventory)) => inventory.check(),
            CommandReply::Ok(ReplyBody::Done | ReplyBody::Pong(_)) | CommandReply::Error(_) => {
                Ok(())
            }
        }
    }
}

fn encode<T: Payload>(value: &T) -> Result<Vec<u8>, EncodeError> {
    value.check().map_err(|source| EncodeError::Invalid {
        payload: T::NAME,
        source,
    })?;
    let bytes = postcard::to_extend(value, vec![SCHEMA_VERSION]).map_err(|source| {
        EncodeError::Postcard {
            payload: T::NAME,
            source,
        }
    })?;
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(EncodeError::TooLarge {
            payload: T::NAME,
            len: bytes.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(bytes)
}

fn decode<T: Payload>(bytes: &[u8]) -> Result<T, DecodeError> {
    let payload = T::NAME;
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge {
            payload,
            len: bytes.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty { payload })?;
    match version {
        0 => return Err(DecodeError::VersionZero),
        // Every version up to ours decodes with today's types while versions only append.
        1..=SCHEMA_VERSION => {}
        found => {
            return Err(DecodeError::UnsupportedVersion {
                found,
                max_supported: SCHEMA_VERSION,
            })
        }
    }
    if T::LEADS_WITH_SERIAL {
        if let Ok((text, _)) = postcard::take_from_bytes::<&str>(body) {
            Serial::new(text).map_err(|source| DecodeError::BadSerial { payload, source })?;
        }
    }
    let (value, rest) = postcard::take_from_bytes::<T>(body)
        .map_err(|source| DecodeError::Malformed { payload, source })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            payload,
            count: rest.len(),
        });
    }
    value
        .check()
        .map_err(|source| DecodeError::Invalid { payload, source })?;
    Ok(value)
}

macro_rules! codec_methods {
    ($($ty:ty),*) => {$(
        impl $ty {
            /// The version byte followed by the postcard encoding.
            pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
                encode(self)
            }

            /// Decodes untrusted bytes; never panics.
            pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
                decode(bytes)
            }
        }
    )*};
}

codec_methods!(Envelope, Inventory, Status, CommandRequest, CommandReply);

impl CommandRequest {
    /// Decodes a request that arrived on `cmd/{topic}` and checks that it is that command.
    pub fn decode_for(topic: CommandKind, bytes: &[u8]) -> Result<Self, DecodeError> {
        let request = Self::decode(bytes)?;
        if request.kind() != topic {
            return Err(DecodeError::CommandMismatch {
                topic,
                payload: request.kind(),
            });
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AgentState, CloseReason, Event};
    use crate::field::Field;
    use crate::id::SessionId;

    fn closed(seq: u64) -> Envelope {
        Envelope {
            serial: Serial::new("rae-1").unwrap(),
            session: SessionId::from_bytes([7; 16]),
            seq,
            at_ms: 1_700_000_000_000,
            event: Event::Closed {
                reason: CloseReason::Gone,
            },
        }
    }

    #[test]
    fn layout_is_version_then_postcard() {
        let bytes = closed(1).encode().unwrap();
        let mut expected = vec![1, 5];
        expected.extend_from_slice(b"rae-1");
        expected.push(16);
        expected.extend_from_slice(&[7; 16]);
        expected.push(1); // seq varint
        assert_eq!(&bytes[..expected.len()], expected);
        assert_eq!(&bytes[bytes.len() - 2..], [2, 0]); // Closed, Gone
        assert_eq!(Envelope::decode(&bytes), Ok(closed(1)));
    }

    #[test]
    fn versions() {
        let mut bytes = closed(1).encode().unwrap();
        bytes[0] = 2;
        let error = Envelope::decode(&bytes).unwrap_err();
        assert_eq!(
            error,
            DecodeError::UnsupportedVersion {
                found: 2,
                max_supported: 1
            }
        );
        assert_eq!(
            error.to_string(),
            "schema version 2 is newer than the newest this decoder supports (1); \
             upgrade rae-proto to read it"
        );
        bytes[0] = 0;
        assert_eq!(Envelope::decode(&bytes), Err(DecodeError::VersionZero));
        assert_eq!(
            Envelope::decode(&[]),
            Err(DecodeError::Empty {
                payload: "device event"
            })
        );
    }

    #[test]
    fn contract_rules_hold_both_ways() {
        let zero = closed(0);
        assert!(matches!(
            zero.encode(),
            Err(EncodeError::Invalid {
                source: ContentError::ZeroSeq,
                ..
            })
        ));
        let mut bytes = closed(1).encode().unwrap();
        let seq_at = 1 + 6 + 17;
        bytes[seq_at] = 0;
        assert_eq!(
            Envelope::decode(&bytes),
            Err(DecodeError::Invalid {
                payload: "device event",
                source: ContentError::ZeroSeq
            })
        );

        let mut dup = closed(3);
        dup.event = Event::Delta {
            fields: vec![Field::Esn(None), Field::LastSeen(1), Field::Esn(None)],
        };
        assert!(matches!(
            dup.encode(),
            Err(EncodeError::Invalid {
                source: ContentError::DuplicateField(FieldId::Esn),
                ..
            })
        ));
    }

    #[test]
    fn bad_serial_is_named() {
        let status = Status {
            serial: Serial::new("rae-1").unwrap(),
            state: AgentState::Online,
            agent_version: "0.1.0".into(),
            at_ms: 5,
        };
        let mut bytes = status.encode().unwrap();
        bytes[2 + 3] = b'/';
        assert_eq!(
            Status::decode(&bytes),
            Err(DecodeError::BadSerial {
                payload: "status",
                source: NameError::InvalidChar { ch: '/', index: 3 }
            })
        );
    }

    #[test]
    fn oversized_is_refused_before_parsing() {
        let bytes = vec![1u8; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            Inventory::decode(&bytes),
            Err(DecodeError::TooLarge {
                payload: "inventory",
                len: MAX_PAYLOAD_BYTES + 1,
                max: MAX_PAYLOAD_BYTES
            })
        );
        let huge = CommandReply::bad_request("x".repeat(MAX_PAYLOAD_BYTES));
        assert!(matches!(huge.encode(), Err(EncodeError::TooLarge { .. })));
    }

    #[test]
    fn command_topic_must_match_payload() {
        let bytes = CommandRequest::Inventory.encode().unwrap();
        assert_eq!(
            CommandRequest::decode_for(CommandKind::Inventory, &bytes),
            Ok(CommandRequest::Inventory)
        );
        assert_eq!(
            CommandRequest::decode_for(CommandKind::Forget, &bytes),
            Err(DecodeError::CommandMismatch {
                topic: CommandKind::Forget,
                payload: CommandKind::Inventory
            })
        );
    }
}
