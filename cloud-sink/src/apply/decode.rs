//! From a [`Raw`] record to a [`SinkEvent`], or to the reason it becomes a dead letter.
//!
//! The topic decides what the payload must be; the ids the payload repeats (serial, session)
//! must equal the topic's, so a misrouted or forged record never lands on another RAE's rows.

use rae_proto::{DecodeError, Envelope, Inventory, Serial, SessionId, Status, Topic, TopicError};

use crate::record::Raw;

/// The largest seq the database can hold (`INT8`). The agent starts at 1 and adds one per
/// event, so only a forged payload comes near it.
pub const MAX_STORABLE_SEQ: u64 = i64::MAX as u64;

/// A record that decoded and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkEvent {
    Device(Envelope),
    Inventory(Inventory),
    Status(Status),
}

/// Why a record is dead-lettered. The text (`Display`) is what the `reason` column holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("record has no topic (a Kafka record without a key)")]
    NoTopic,
    #[error("unparsable topic: {0}")]
    Topic(#[from] TopicError),
    #[error("`{0}` topics carry no data for the sink")]
    NotIngested(&'static str),
    #[error("undecodable payload: {0}")]
    Payload(#[from] DecodeError),
    #[error("payload serial `{payload}` differs from the topic's `{topic}`")]
    SerialMismatch { topic: Serial, payload: Serial },
    #[error("payload session {payload} differs from the topic's {topic}")]
    SessionMismatch {
        topic: SessionId,
        payload: SessionId,
    },
    #[error("seq {seq} is beyond the largest storable seq ({MAX_STORABLE_SEQ})")]
    SeqTooLarge { seq: u64 },
    #[error("inventory lists seq {seq} for session {session}, beyond the largest storable seq")]
    InventorySeqTooLarge { session: SessionId, seq: u64 },
    #[error("the database rejected the record: {0}")]
    Database(String),
    #[error("session {session} belongs to RAE `{owner}`, not to `{serial}`")]
    ForeignSession {
        session: SessionId,
        owner: String,
        serial: Serial,
    },
}

/// Decodes and validates one record.
pub fn decode(raw: &Raw) -> Result<SinkEvent, Rejection> {
    let text = raw.topic.as_deref().ok_or(Rejection::NoTopic)?;
    match Topic::parse(text)? {
        Topic::Device { serial, session } => {
            let envelope = Envelope::decode(&raw.payload)?;
            check_serial(&serial, &envelope.serial)?;
            if envelope.session != session {
                return Err(Rejection::SessionMismatch {
                    topic: session,
                    payload: envelope.session,
                });
            }
            if envelope.seq > MAX_STORABLE_SEQ {
                return Err(Rejection::SeqTooLarge { seq: envelope.seq });
            }
            Ok(SinkEvent::Device(envelope))
        }
        Topic::Inventory { serial } => {
            let inventory = Inventory::decode(&raw.payload)?;
            check_serial(&serial, &inventory.serial)?;
            if let Some(bad) = inventory.sessions.iter().find(|s| s.seq > MAX_STORABLE_SEQ) {
                return Err(Rejection::InventorySeqTooLarge {
                    session: bad.session,
                    seq: bad.seq,
                });
            }
            Ok(SinkEvent::Inventory(inventory))
        }
        Topic::Status { serial } => {
            let status = Status::decode(&raw.payload)?;
            check_serial(&serial, &status.serial)?;
            Ok(SinkEvent::Status(status))
        }
        Topic::Command { .. } => Err(Rejection::NotIngested("cmd")),
        Topic::Reply { .. } => Err(Rejection::NotIngested("reply")),
    }
}

fn check_serial(topic: &Serial, payload: &Serial) -> Result<(), Rejection> {
    if topic == payload {
        Ok(())
    } else {
        Err(Rejection::SerialMismatch {
            topic: topic.clone(),
            payload: payload.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Origin;
    use rae_proto::{AgentState, CloseReason, Event};

    fn raw(topic: Option<String>, payload: Vec<u8>) -> Raw {
        Raw {
            topic,
            payload,
            origin: Origin::Mqtt {
                lane: 0,
                pkid: None,
            },
        }
    }

    fn envelope(serial: &str, session: SessionId, seq: u64) -> Envelope {
        Envelope {
            serial: Serial::new(serial).unwrap(),
            session,
            seq,
            at_ms: 5,
            event: Event::Closed {
                reason: CloseReason::Gone,
            },
        }
    }

    #[test]
    fn device_event_with_matching_ids_decodes() {
        let session = SessionId::from_bytes([7; 16]);
        let env = envelope("RAE-1", session, 3);
        let got = decode(&raw(Some(env.topic().to_string()), env.encode().unwrap())).unwrap();
        assert_eq!(got, SinkEvent::Device(env));
    }

    #[test]
    fn ids_must_match_the_topic() {
        let session = SessionId::from_bytes([7; 16]);
        let env = envelope("RAE-1", session, 3);
        let other_serial = format!("rae/v1/RAE-2/devices/{session}");
        assert!(matches!(
            decode(&raw(Some(other_serial), env.encode().unwrap())),
            Err(Rejection::SerialMismatch { .. })
        ));
        let other_session = format!("rae/v1/RAE-1/devices/{}", SessionId::from_bytes([8; 16]));
        assert!(matches!(
            decode(&raw(Some(other_session), env.encode().unwrap())),
            Err(Rejection::SessionMismatch { .. })
        ));
    }

    #[test]
    fn bad_records_say_why() {
        assert_eq!(decode(&raw(None, vec![1])), Err(Rejection::NoTopic));
        assert!(matches!(
            decode(&raw(Some("rae/v1/RAE-1/weather".into()), vec![1])),
            Err(Rejection::Topic(TopicError::UnknownKind(_)))
        ));
        assert!(matches!(
            decode(&raw(Some("rae/v1/RAE-1/status".into()), vec![1, 0xff])),
            Err(Rejection::Payload(_))
        ));
        assert_eq!(
            decode(&raw(Some("rae/v1/RAE-1/cmd/resync".into()), vec![1])),
            Err(Rejection::NotIngested("cmd"))
        );
        let env = envelope("RAE-1", SessionId::from_bytes([7; 16]), u64::MAX);
        assert_eq!(
            decode(&raw(Some(env.topic().to_string()), env.encode().unwrap())),
            Err(Rejection::SeqTooLarge { seq: u64::MAX })
        );
    }

    #[test]
    fn status_decodes() {
        let status = Status {
            serial: Serial::new("RAE-1").unwrap(),
            state: AgentState::Online,
            agent_version: "0.1.0".into(),
            at_ms: 9,
        };
        let got = decode(&raw(
            Some(status.topic().to_string()),
            status.encode().unwrap(),
        ));
        assert_eq!(got, Ok(SinkEvent::Status(status)));
    }
}
