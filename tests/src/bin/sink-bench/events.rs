//! The workload: `sessions` device sessions spread over a few RAEs, each a Snapshot at seq 1
//! and then Deltas, interleaved round-robin (event `i` belongs to session `i % sessions`),
//! so that a batch of 1000 consecutive events touches up to 1000 sessions, as a fleet does.
//!
//! Events are made on demand from their index: a 1,000,000-event backlog is never held in
//! memory by the producer.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use cloud_sink::record::{Origin, Raw};
use rae_proto::{DeviceRecord, Envelope, Event, Evidence, Field, Mac, Serial, SessionId, Text};
use uuid::Uuid;

/// RAEs the sessions are spread over.
const RAES: usize = 50;
const EPOCH_MS: i64 = 1_700_000_000_000;

/// SplitMix64's finaliser: a bijection on u64 that scatters consecutive inputs.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One encoded event and where it goes.
pub struct Encoded {
    /// The MQTT topic, which is the Kafka key.
    pub key: String,
    pub payload: Vec<u8>,
    /// `session % partitions`: the bare loop's lanes and Kafka's partitions hold the same
    /// events in the same order.
    pub partition: i32,
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub sessions: usize,
    pub partitions: i32,
    /// Makes the session ids of one run differ from those of another run in the same database.
    pub salt: u64,
}

impl Workload {
    pub fn new(sessions: usize, partitions: i32, salt: u64) -> Workload {
        Workload {
            sessions: sessions.max(1),
            partitions: partitions.max(1),
            salt,
        }
    }

    /// A v4-shaped id that looks random, as the agent's are: sequential ids would put the
    /// sessions of every partition on the same index pages.
    fn session(&self, s: usize) -> SessionId {
        let hi = splitmix(self.salt ^ splitmix(s as u64));
        let lo = splitmix(hi ^ s as u64);
        let bits = (u128::from(hi) << 64) | u128::from(lo);
        let v4 = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
        SessionId::from_uuid(Uuid::from_u128(v4))
    }

    fn serial(s: usize) -> Result<Serial> {
        Serial::new(format!("RAE-B{:02}", s % RAES)).context("making a bench serial")
    }

    pub fn event(&self, i: usize) -> Result<Encoded> {
        let s = i % self.sessions;
        let seq = (i / self.sessions) as u64 + 1;
        let at_ms = EPOCH_MS + i as i64;
        let [_, b1, b2, b3] = (s as u32).to_be_bytes();
        let ip = Ipv4Addr::new(198, 18 | (b1 & 1), b2, b3);
        let event = if seq == 1 {
            let mut record = DeviceRecord::new(
                Mac([0x02, 0xbe, (s >> 24) as u8, b1, b2, b3]),
                Evidence::DhcpRequest,
                at_ms,
            );
            record.ipv4 = Some(ip);
            record.hostname = Some(Text::from(format!("device-{s}")));
            record.vendor = Some("Bench Devices Ltd".into());
            record.dhcp_param_request_list = vec![1, 3, 6, 15, 28, 51, 58, 59];
            Event::Snapshot {
                record: Box::new(record),
            }
        } else {
            Event::Delta {
                fields: vec![
                    Field::LastSeen(at_ms),
                    Field::Hostname(Some(Text::from(format!("device-{s}-{seq}")))),
                ],
            }
        };
        let envelope = Envelope {
            serial: Self::serial(s)?,
            session: self.session(s),
            seq,
            at_ms,
            event,
        };
        Ok(Encoded {
            key: envelope.topic().to_string(),
            payload: envelope.encode().context("encoding an envelope")?,
            partition: (s % self.partitions as usize) as i32,
        })
    }

    /// Events `0..count` as the bare loop's records, split into one ordered lane per partition.
    pub fn lanes(&self, count: usize) -> Result<Vec<Vec<Raw>>> {
        let mut lanes: Vec<Vec<Raw>> = (0..self.partitions).map(|_| Vec::new()).collect();
        for i in 0..count {
            let e = self.event(i)?;
            let lane = &mut lanes[e.partition as usize];
            let offset = lane.len() as i64;
            lane.push(Raw {
                topic: Some(e.key),
                payload: e.payload,
                origin: Origin::Kafka {
                    topic: "bare-loop".into(),
                    partition: e.partition,
                    offset,
                },
            });
        }
        Ok(lanes)
    }
}
