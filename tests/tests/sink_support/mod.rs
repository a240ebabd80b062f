//! What the MQTT source and bridge tests share: RAE traffic built from the wire contract, a
//! publisher that waits for the broker to take every message, and polling with a deadline.

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use rae_proto::{
    AgentState, CloseReason, DeviceRecord, Envelope, Event, Evidence, Field, Inventory, Mac,
    Serial, SessionId, SessionSeq, Status,
};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};

/// One MQTT message as an RAE publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn event(envelope: &Envelope) -> Message {
        Message {
            topic: envelope.topic().to_string(),
            payload: envelope.encode().unwrap(),
        }
    }

    pub fn status(serial: &Serial, state: AgentState, at_ms: i64) -> Message {
        let status = Status {
            serial: serial.clone(),
            state,
            agent_version: "0.1.0".into(),
            at_ms,
        };
        Message {
            topic: status.topic().to_string(),
            payload: status.encode().unwrap(),
        }
    }

    pub fn inventory(serial: &Serial, at_ms: i64, sessions: &[(SessionId, u64)]) -> Message {
        let inventory = Inventory {
            serial: serial.clone(),
            at_ms,
            sessions: sessions
                .iter()
                .map(|&(session, seq)| SessionSeq { session, seq })
                .collect(),
        };
        Message {
            topic: inventory.topic().to_string(),
            payload: inventory.encode().unwrap(),
        }
    }
}

/// Device events of `sessions` sessions spread over `serials`, `rounds` events each
/// (Snapshot, Deltas, and a Closed for every fifth session), interleaved across sessions
/// the way a busy lab sends them. `salt` keeps sessions of different calls apart.
pub fn device_events(salt: u8, serials: &[Serial], sessions: usize, rounds: u64) -> Vec<Message> {
    let ids: Vec<SessionId> = (0..sessions)
        .map(|i| {
            let mut bytes = [salt; 16];
            bytes[14] = (i >> 8) as u8;
            bytes[15] = i as u8;
            // A version-4 UUID shape, as the agent draws them.
            bytes[6] = 0x40 | (bytes[6] & 0x0f);
            bytes[8] = 0x80 | (bytes[8] & 0x3f);
            SessionId::from_bytes(bytes)
        })
        .collect();
    let mut out = Vec::new();
    for round in 0..rounds {
        for (i, session) in ids.iter().enumerate() {
            let serial = &serials[i % serials.len()];
            let seq = round + 1;
            let event = if round == 0 {
                let record = DeviceRecord::new(
                    Mac([2, salt, 0, 0, (i >> 8) as u8, i as u8]),
                    Evidence::DhcpRequest,
                    1_000,
                );
                Event::Snapshot {
                    record: Box::new(record),
                }
            } else if round + 1 == rounds && i % 5 == 0 {
                Event::Closed {
                    reason: CloseReason::Gone,
                }
            } else {
                Event::Delta {
                    fields: vec![
                        Field::Ipv4(Some(std::net::Ipv4Addr::new(
                            198,
                            18,
                            (round % 250) as u8,
                            i as u8,
                        ))),
                        Field::Esn(Some(format!("ESN-{salt}-{i}-{round}"))),
                    ],
                }
            };
            out.push(Message::event(&Envelope {
                serial: serial.clone(),
                session: *session,
                seq,
                at_ms: 1_000 + (seq as i64) * 10,
                event,
            }));
        }
    }
    out
}

/// Every `every`-th message sent twice in a row, as QoS 1 redelivery does.
pub fn with_duplicates(messages: Vec<Message>, every: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(messages.len() + messages.len() / every.max(1));
    for (i, m) in messages.into_iter().enumerate() {
        if i % every.max(1) == 0 {
            out.push(m.clone());
        }
        out.push(m);
    }
    out
}

/// Publishes `messages` at QoS 1 in order from one client and returns once the broker
/// acknowledged every one.
pub async fn publish(host: &str, port: u16, client_id: &str, messages: &[Message]) {
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(10));
    options.set_max_packet_size(Some(1024 * 1024));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let total = messages.len();
    let driver = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher connection failed after {acked} of {total} acks: {e}"),
            }
        }
        eventloop
    });
    for m in messages {
        client
            .publish(m.topic.clone(), QoS::AtLeastOnce, false, m.payload.clone())
            .await
            .unwrap();
    }
    let within = Duration::from_secs(30);
    let mut eventloop = tokio::time::timeout(within, driver)
        .await
        .unwrap_or_else(|_| {
            panic!("the broker did not acknowledge {total} messages within {within:?}")
        })
        .unwrap();
    client.disconnect().await.unwrap();
    // Drive the DISCONNECT out; the loop ends when the broker closes the connection.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
}

/// Polls `check` until it returns `Ok`, failing with its last message after `within`.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not reached within {within:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub fn serials(names: &[&str]) -> Vec<Serial> {
    names.iter().map(|n| Serial::new(*n).unwrap()).collect()
}
