//! The pure rules of a commit: one [`Change`] against the session's stored state gives the new
//! state, a history entry and the encoded event to publish. Both [`Store`](super::Store) and
//! [`MemoryStore`](super::MemoryStore) run them, so the twin cannot drift from the database.

use std::fmt::Write as _;
use std::str::FromStr;

use rae_proto::{CloseReason, DeviceRecord, Envelope, Event, Field, Mac, Serial, SessionId, Topic};

use super::error::{ChangeError, StoreError};
use super::Closure;
use crate::registry::Change;

/// The longest `fields` text a history row keeps.
const MAX_DETAIL_CHARS: usize = 512;

/// A session as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionState {
    pub session: SessionId,
    pub mac: Mac,
    pub record: DeviceRecord,
    pub last_seq: u64,
    pub opened_ms: i64,
    pub closed: Option<Closure>,
}

/// What a history row says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HistoryKind {
    Opened,
    Updated,
    Snapshot,
    Closed,
    /// The outbox replaced pending events of the session by one Snapshot (detail lost).
    Coalesced,
    /// Another MAC claimed this session's IPv4 address (local only, never published).
    Conflict,
}

impl HistoryKind {
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Updated => "updated",
            Self::Snapshot => "snapshot",
            Self::Closed => "closed",
            Self::Coalesced => "coalesced",
            Self::Conflict => "conflict",
        }
    }
}

impl FromStr for HistoryKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        [
            Self::Opened,
            Self::Updated,
            Self::Snapshot,
            Self::Closed,
            Self::Coalesced,
            Self::Conflict,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
        .ok_or_else(|| format!("unknown history kind `{text}`"))
    }
}

impl std::fmt::Display for HistoryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A history row to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HistoryEntry {
    pub session: SessionId,
    pub seq: Option<u64>,
    /// When the evidence was observed.
    pub at_ms: i64,
    pub kind: HistoryKind,
    /// The Cause: which packet or timer.
    pub summary: String,
    /// The fields the change set, as `name=value` text.
    pub fields: String,
}

/// An outbox row to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewEvent {
    pub session: SessionId,
    pub seq: u64,
    /// `Event::kind()`: snapshot, delta or closed.
    pub kind: &'static str,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// The outcome of one Change.
#[derive(Debug)]
pub(crate) struct Applied {
    pub state: SessionState,
    /// The session did not exist before this change.
    pub is_new: bool,
    pub history: Option<HistoryEntry>,
    pub event: Option<NewEvent>,
}

/// Applies `change` to its session's state (`None` when the store has no such session).
/// Refuses whatever the registry core must never emit.
pub(crate) fn apply_change(
    current: Option<SessionState>,
    change: &Change,
    serial: &Serial,
) -> Result<Applied, StoreError> {
    // Exhaustive on purpose: a new Change variant must be given its storage rule here.
    match change {
        Change::Opened {
            session,
            seq,
            record,
            cause,
        } => {
            if current.is_some() {
                return Err(ChangeError::SessionExists { session: *session }.into());
            }
            if *seq != 1 {
                return Err(ChangeError::OpenedSeq {
                    session: *session,
                    seq: *seq,
                }
                .into());
            }
            let state = SessionState {
                session: *session,
                mac: record.mac,
                record: record.clone(),
                last_seq: *seq,
                opened_ms: cause.at_ms,
                closed: None,
            };
            let fresh = DeviceRecord::new(
                record.mac,
                record.reachability.evidence,
                record.first_seen_ms,
            );
            let event = Event::Snapshot {
                record: Box::new(record.clone()),
            };
            Ok(Applied {
                event: Some(encode_event(serial, *session, *seq, cause.at_ms, event)?),
                history: Some(HistoryEntry {
                    session: *session,
                    seq: Some(*seq),
                    at_ms: cause.at_ms,
                    kind: HistoryKind::Opened,
                    summary: cause.summary.clone(),
                    fields: describe_fields(&fresh.diff(record)),
                }),
                state,
                is_new: true,
            })
        }
        Change::Updated {
            session,
            seq,
            mac,
            fields,
            cause,
        } => {
            let mut state = open_session(current, *session)?;
            check_mac(&state, *mac)?;
            next_seq(&state, *seq)?;
            for field in fields {
                if let Field::Mac(other) = field {
                    check_mac(&state, *other)?;
                }
                state.record.apply(field.clone());
            }
            state.last_seq = *seq;
            let event = Event::Delta {
                fields: fields.clone(),
            };
            Ok(Applied {
                event: Some(encode_event(serial, *session, *seq, cause.at_ms, event)?),
                history: Some(HistoryEntry {
                    session: *session,
                    seq: Some(*seq),
                    at_ms: cause.at_ms,
                    kind: HistoryKind::Updated,
                    summary: cause.summary.clone(),
                    fields: describe_fields(fields),
                }),
                state,
                is_new: false,
            })
        }
        Change::Snapshot {
            session,
            seq,
            record,
            cause,
        } => {
            let mut state = open_session(current, *session)?;
            check_mac(&state, record.mac)?;
            next_seq(&state, *seq)?;
            let changed = describe_fields(&state.record.diff(record));
            state.record = record.clone();
            state.last_seq = *seq;
            let event = Event::Snapshot {
                record: Box::new(record.clone()),
            };
            Ok(Applied {
                event: Some(encode_event(serial, *session, *seq, cause.at_ms, event)?),
                history: Some(HistoryEntry {
                    session: *session,
                    seq: Some(*seq),
                    at_ms: cause.at_ms,
                    kind: HistoryKind::Snapshot,
                    summary: cause.summary.clone(),
                    fields: changed,
                }),
                state,
                is_new: false,
            })
        }
        Change::Closed {
            session,
            seq,
            mac,
            reason,
            cause,
        } => {
            let mut state = open_session(current, *session)?;
            check_mac(&state, *mac)?;
            next_seq(&state, *seq)?;
            state.last_seq = *seq;
            state.closed = Some(Closure {
                at_ms: cause.at_ms,
                reason: *reason,
            });
            let event = Event::Closed { reason: *reason };
            Ok(Applied {
                event: Some(encode_event(serial, *session, *seq, cause.at_ms, event)?),
                history: Some(HistoryEntry {
                    session: *session,
                    seq: Some(*seq),
                    at_ms: cause.at_ms,
                    kind: HistoryKind::Closed,
                    summary: cause.summary.clone(),
                    fields: format!("reason={reason}"),
                }),
                state,
                is_new: false,
            })
        }
        Change::Seen {
            session,
            last_seen_ms,
        } => {
            let mut state = open_session(current, *session)?;
            state.record.last_seen_ms = *last_seen_ms;
            Ok(Applied {
                state,
                is_new: false,
                history: None,
                event: None,
            })
        }
        Change::Conflict {
            session,
            mac,
            ip,
            others,
            kind,
            cause,
        } => {
            let state = open_session(current, *session)?;
            check_mac(&state, *mac)?;
            let others: Vec<String> = others.iter().map(ToString::to_string).collect();
            // The same `field=value` labels as the record's own fields.
            let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
            Ok(Applied {
                history: Some(HistoryEntry {
                    session: *session,
                    seq: None,
                    at_ms: cause.at_ms,
                    kind: HistoryKind::Conflict,
                    summary: cause.summary.clone(),
                    fields: format!(
                        "{}: {family}={ip} others={}",
                        kind.as_str(),
                        others.join(",")
                    ),
                }),
                state,
                is_new: false,
                event: None,
            })
        }
    }
}

fn open_session(
    current: Option<SessionState>,
    session: SessionId,
) -> Result<SessionState, ChangeError> {
    let state = current.ok_or(ChangeError::UnknownSession { session })?;
    match state.closed {
        Some(_) => Err(ChangeError::SessionClosed { session }),
        None => Ok(state),
    }
}

fn check_mac(state: &SessionState, mac: Mac) -> Result<(), ChangeError> {
    match state.mac == mac {
        true => Ok(()),
        false => Err(ChangeError::MacMismatch {
            session: state.session,
            expected: state.mac,
            got: mac,
        }),
    }
}

fn next_seq(state: &SessionState, seq: u64) -> Result<(), ChangeError> {
    match state.last_seq.checked_add(1) == Some(seq) {
        true => Ok(()),
        false => Err(ChangeError::SeqDiscontinuity {
            session: state.session,
            last: state.last_seq,
            got: seq,
        }),
    }
}

/// Encodes one device event with its topic.
pub(crate) fn encode_event(
    serial: &Serial,
    session: SessionId,
    seq: u64,
    at_ms: i64,
    event: Event,
) -> Result<NewEvent, StoreError> {
    let kind = event.kind();
    let envelope = Envelope {
        serial: serial.clone(),
        session,
        seq,
        at_ms,
        event,
    };
    let payload = envelope.encode().map_err(|source| StoreError::Encode {
        what: "event",
        session,
        source,
    })?;
    Ok(NewEvent {
        session,
        seq,
        kind,
        topic: Topic::device(serial.clone(), session).to_string(),
        payload,
    })
}

/// The stored form of a session's record: the Snapshot envelope of its latest state, so that
/// it has the wire contract's versioned encoding and golden vectors.
pub(crate) fn encode_record(serial: &Serial, state: &SessionState) -> Result<Vec<u8>, StoreError> {
    let envelope = Envelope {
        serial: serial.clone(),
        session: state.session,
        seq: state.last_seq,
        at_ms: state.record.last_seen_ms,
        event: Event::Snapshot {
            record: Box::new(state.record.clone()),
        },
    };
    envelope.encode().map_err(|source| StoreError::Encode {
        what: "record",
        session: state.session,
        source,
    })
}

pub(crate) fn decode_record(session: &str, blob: &[u8]) -> Result<DeviceRecord, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        session: session.to_owned(),
        what: "record",
        detail,
    };
    let envelope = Envelope::decode(blob).map_err(|err| corrupt(err.to_string()))?;
    match envelope.event {
        Event::Snapshot { record } => Ok(*record),
        other => Err(corrupt(format!("holds a {} event", other.kind()))),
    }
}

pub(crate) fn parse_session(text: &str) -> Result<SessionId, StoreError> {
    SessionId::parse(text).map_err(|err| StoreError::Corrupt {
        session: text.to_owned(),
        what: "session id",
        detail: err.to_string(),
    })
}

pub(crate) fn parse_mac(session: &str, text: &str) -> Result<Mac, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        session: session.to_owned(),
        what: "MAC",
        detail: format!("`{text}` is not a MAC"),
    })
}

pub(crate) fn parse_close_reason(text: &str) -> Option<CloseReason> {
    [CloseReason::Gone, CloseReason::Forgotten]
        .into_iter()
        .find(|reason| reason.as_str() == text)
}

/// `name=value; name=value`, cut at a few hundred characters: what an operator reads in
/// `raectl show`.
pub(crate) fn describe_fields(fields: &[Field]) -> String {
    let mut text = String::new();
    for field in fields {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(&describe_field(field));
        if text.chars().count() > MAX_DETAIL_CHARS {
            let cut: String = text.chars().take(MAX_DETAIL_CHARS - 1).collect();
            return cut + "…";
        }
    }
    text
}

/// One field as `name=value`, on one line (device-sent text is shown lossily and escaped).
pub fn describe_field(field: &Field) -> String {
    let name = field.id().name();
    let value = match field {
        Field::Mac(mac) => mac.to_string(),
        Field::Ipv4(ip) => ip.map_or_else(none, |ip| ip.to_string()),
        Field::Ipv6(ips) => join(ips.iter().map(ToString::to_string)),
        Field::DhcpClientId(id) => id.as_ref().map_or_else(none, |id| hex(id)),
        Field::Hostname(text) | Field::DhcpVendorClass(text) => text
            .as_ref()
            .map_or_else(none, |t| format!("{:?}", t.to_string_lossy())),
        Field::Vendor(text) | Field::Esn(text) => {
            text.as_ref().map_or_else(none, |t| format!("{t:?}"))
        }
        Field::LocallyAdministered(flag) => flag.to_string(),
        Field::DhcpParamRequestList(list) => join(list.iter().map(ToString::to_string)),
        Field::MdnsServices(services) => join(
            services
                .iter()
                .map(|s| format!("{:?} {}:{}", s.instance, s.service_type, s.port)),
        ),
        Field::Upnp(upnp) => upnp.as_ref().map_or_else(none, |u| {
            let parts = [&u.friendly_name, &u.manufacturer, &u.model_name];
            join(parts.into_iter().flatten().map(|p| format!("{p:?}")))
        }),
        Field::DialApps(apps) => join(apps.iter().map(|a| format!("{}:{}", a.name, a.state))),
        Field::Reachability(r) => {
            let mut text = format!("{} ({}", r.state, r.evidence);
            if let Some(rtt) = r.rtt_us {
                let _ = write!(text, ", rtt {rtt} us");
            }
            text + ")"
        }
        Field::Availability(a) => a.to_string(),
        Field::FirstSeen(ms) | Field::LastSeen(ms) => ms.to_string(),
    };
    format!("{name}={value}")
}

fn none() -> String {
    "none".to_owned()
}

fn join(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    match items.is_empty() {
        true => none(),
        false => items.join(","),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut text, b| {
        let _ = write!(text, "{b:02x}");
        text
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use rae_proto::{Evidence, Text};

    use super::*;
    use crate::registry::Cause;

    fn serial() -> Serial {
        Serial::new("RAE-1").unwrap()
    }

    fn session() -> SessionId {
        SessionId::from_bytes([7; 16])
    }

    fn cause(at_ms: i64) -> Cause {
        Cause {
            at_ms,
            summary: "DHCP REQUEST".into(),
        }
    }

    fn opened() -> Applied {
        let record = DeviceRecord::new(Mac([2, 0, 0, 0, 0, 1]), Evidence::DhcpRequest, 10);
        let change = Change::Opened {
            session: session(),
            seq: 1,
            record,
            cause: cause(10),
        };
        apply_change(None, &change, &serial()).unwrap()
    }

    #[test]
    fn opened_makes_a_snapshot_at_seq_1() {
        let applied = opened();
        assert!(applied.is_new);
        let event = applied.event.unwrap();
        assert_eq!((event.seq, event.kind), (1, "snapshot"));
        let envelope = Envelope::decode(&event.payload).unwrap();
        assert_eq!(envelope.topic().to_string(), event.topic);
        assert_eq!(applied.history.unwrap().kind, HistoryKind::Opened);
    }

    #[test]
    fn updated_must_follow_the_last_seq() {
        let state = opened().state;
        let mac = state.mac;
        let update = |seq| Change::Updated {
            session: session(),
            seq,
            mac,
            fields: vec![Field::Ipv4(Some(Ipv4Addr::new(198, 18, 0, 9)))],
            cause: cause(20),
        };
        let err = apply_change(Some(state.clone()), &update(3), &serial()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Rejected(ChangeError::SeqDiscontinuity {
                    last: 1,
                    got: 3,
                    ..
                })
            ),
            "{err:?}"
        );
        let applied = apply_change(Some(state), &update(2), &serial()).unwrap();
        assert_eq!(applied.state.last_seq, 2);
        assert_eq!(
            applied.state.record.ipv4,
            Some(Ipv4Addr::new(198, 18, 0, 9))
        );
        assert_eq!(applied.history.unwrap().fields, "ipv4=198.18.0.9");
    }

    #[test]
    fn nothing_follows_closed() {
        let state = opened().state;
        let closed = Change::Closed {
            session: session(),
            seq: 2,
            mac: state.mac,
            reason: CloseReason::Gone,
            cause: cause(30),
        };
        let state = apply_change(Some(state), &closed, &serial()).unwrap().state;
        let seen = Change::Seen {
            session: session(),
            last_seen_ms: 40,
        };
        let err = apply_change(Some(state), &seen, &serial()).unwrap_err();
        assert!(matches!(
            err,
            StoreError::Rejected(ChangeError::SessionClosed { .. })
        ));
    }

    #[test]
    fn record_blob_round_trips() {
        let state = opened().state;
        let blob = encode_record(&serial(), &state).unwrap();
        assert_eq!(decode_record("x", &blob).unwrap(), state.record);
        assert!(decode_record("x", b"\x01garbage").is_err());
    }

    #[test]
    fn descriptions_are_one_line_and_bounded() {
        let text = describe_field(&Field::Hostname(Some(Text::new(b"tv\n\xff".to_vec()))));
        assert_eq!(text, "hostname=\"tv\\n\u{fffd}\"");
        let many = vec![Field::Esn(Some("x".repeat(100))); 20];
        assert_eq!(describe_fields(&many).chars().count(), MAX_DETAIL_CHARS);
        assert_eq!(describe_field(&Field::Ipv6(vec![])), "ipv6=none");
    }
}
