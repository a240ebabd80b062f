//! Helpers shared by the `store_*` tests: a small device simulator that emits the Changes a
//! registry core would, and a sink that folds events with the convergence rule.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use rae_agent::registry::{Cause, Change};
use rae_proto::{
    Availability, CloseReason, DeviceRecord, Envelope, Event, Evidence, Field, FieldId, Liveness,
    Mac, Reachability, Serial, SessionId, Text,
};

pub fn serial() -> Serial {
    Serial::new("RAE-test-1").expect("valid serial")
}

pub fn cause(at_ms: i64, summary: &str) -> Cause {
    Cause {
        at_ms,
        summary: summary.to_owned(),
    }
}

pub fn mac(n: u8) -> Mac {
    Mac([0x02, 0, 0, 0, 0, n])
}

pub fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

/// One device as the registry core sees it: its open session, seq and record.
#[derive(Debug, Clone)]
pub struct Device {
    pub session: SessionId,
    pub seq: u64,
    pub record: DeviceRecord,
}

impl Device {
    /// A new session for `mac`; `id` makes the session id.
    pub fn open(id: u32, mac: Mac, at_ms: i64) -> (Device, Change) {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&id.to_be_bytes());
        bytes[6] = 0x40; // looks like a v4 uuid, for readable ids
        bytes[8] = 0x80;
        let session = SessionId::from_bytes(bytes);
        let record = DeviceRecord::new(mac, Evidence::DhcpRequest, at_ms);
        let device = Device {
            session,
            seq: 1,
            record: record.clone(),
        };
        let change = Change::Opened {
            session,
            seq: 1,
            record,
            cause: cause(at_ms, &format!("DHCP DISCOVER from {mac}")),
        };
        (device, change)
    }

    pub fn update(&mut self, fields: Vec<Field>, at_ms: i64) -> Change {
        self.seq += 1;
        for field in &fields {
            self.record.apply(field.clone());
        }
        Change::Updated {
            session: self.session,
            seq: self.seq,
            mac: self.record.mac,
            fields,
            cause: cause(at_ms, "DHCP REQUEST option 50/12"),
        }
    }

    pub fn snapshot(&mut self, at_ms: i64) -> Change {
        self.seq += 1;
        Change::Snapshot {
            session: self.session,
            seq: self.seq,
            record: self.record.clone(),
            cause: cause(at_ms, "periodic snapshot"),
        }
    }

    pub fn close(&mut self, at_ms: i64) -> Change {
        self.seq += 1;
        Change::Closed {
            session: self.session,
            seq: self.seq,
            mac: self.record.mac,
            reason: CloseReason::Gone,
            cause: cause(at_ms, "not seen for 600 s"),
        }
    }

    pub fn seen(&mut self, at_ms: i64) -> Change {
        self.record.last_seen_ms = at_ms;
        Change::Seen {
            session: self.session,
            last_seen_ms: at_ms,
        }
    }
}

/// A field value that differs with `n`, for generated updates.
pub fn field(kind: u8, n: u8) -> Field {
    match kind % 6 {
        0 => Field::Ipv4(Some(ip(n))),
        1 => Field::Hostname(Some(Text::from(format!("dut-{n}")))),
        2 => Field::Availability(Availability::ALL[usize::from(n) % 3]),
        3 => Field::Esn(Some(format!("ESN-{n:04}"))),
        4 => Field::Reachability(Reachability {
            state: if n % 2 == 0 {
                Liveness::Online
            } else {
                Liveness::Offline
            },
            evidence: Evidence::ProbeMissed {
                count: u32::from(n),
            },
            rtt_us: Some(u32::from(n) * 10),
        }),
        _ => Field::Vendor(Some(format!("Vendor {n}"))),
    }
}

/// What a sink stores for one session under the convergence rule: per field, the value of the
/// highest-seq event that carried it; and whether it saw the Closed event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkRow {
    pub fields: BTreeMap<u8, (u64, Field)>,
    pub closed: Option<CloseReason>,
}

impl SinkRow {
    fn set(&mut self, seq: u64, field: Field) {
        let slot = self.fields.entry(field.id().number());
        match slot {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert((seq, field));
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                if seq >= o.get().0 {
                    o.insert((seq, field));
                }
            }
        }
    }

    /// The values only, as the sink's table would show them.
    pub fn values(&self) -> BTreeMap<u8, Field> {
        self.fields
            .iter()
            .map(|(id, (_, field))| (*id, field.clone()))
            .collect()
    }
}

/// Folds encoded envelopes, in any order, into one row per session.
pub fn fold<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> BTreeMap<SessionId, SinkRow> {
    let mut rows: BTreeMap<SessionId, SinkRow> = BTreeMap::new();
    for payload in payloads {
        let envelope = Envelope::decode(payload).expect("outbox payloads decode");
        let row = rows.entry(envelope.session).or_default();
        match envelope.event {
            Event::Snapshot { record } => {
                for field in record.fields() {
                    row.set(envelope.seq, field);
                }
            }
            Event::Delta { fields } => {
                for field in fields {
                    row.set(envelope.seq, field);
                }
            }
            Event::Closed { reason } => row.closed = Some(reason),
        }
    }
    rows
}

/// The values per session, ignoring `last_seen` (it moves with `Seen`, which a coalesced
/// Snapshot may carry ahead of the events it replaced).
pub fn values_without_last_seen(
    rows: &BTreeMap<SessionId, SinkRow>,
) -> BTreeMap<SessionId, (BTreeMap<u8, Field>, Option<CloseReason>)> {
    rows.iter()
        .map(|(session, row)| {
            let mut values = row.values();
            values.remove(&FieldId::LastSeen.number());
            (*session, (values, row.closed))
        })
        .collect()
}
