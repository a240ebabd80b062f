//! The MQTT connection both the MQTT source and the bridge read from: an MQTT v5 client with
//! manual acknowledgements and a persistent session, whose event loop one task owns.
//!
//! The event loop task forwards what the router needs (`Intake`) over a bounded channel and
//! reconnects with backoff. A conforming broker sends at most `max_inflight` unacknowledged
//! QoS 1 messages (our receive maximum), and the channels behind it hold at least that many, so
//! forwarding never blocks the event loop for long and keep-alives keep flowing while the
//! database or Kafka is down. A broker that sends more (mosquitto 2.0.11 does, in a burst)
//! only makes the event loop wait for the router: back-pressure, not loss.
//!
//! Acknowledgements go the other way, through rumqttc's request channel, which the event loop
//! drains one request per poll. It is sized for every packet id the broker can have in flight
//! ([`MqttBrokerConfig::request_capacity`]), and whatever it refuses anyway waits in the
//! router's `AckOutbox` and is offered again: on a live connection an acknowledgement is never
//! dropped, since MQTT 5 redelivers only on a reconnect and a broker whose send quota is used up
//! by unacknowledged messages stops delivering.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, RetainForwardRule, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::acks::AckToken;
use crate::source::kafka::supervise::{jitter, Backoff};

/// How to reach the broker and what to subscribe to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttBrokerConfig {
    pub host: String,
    pub port: u16,
    /// Stable across restarts: the broker keeps the session (and queues QoS 1 messages)
    /// under this id while the client is away.
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Topic filters; subscribed at QoS 1.
    pub filters: Vec<String>,
    /// Subscribe as `$share/<group>/<filter>` so that several instances split the load.
    /// Per-topic order then holds only while the broker keeps a topic on one member.
    pub shared_group: Option<String>,
    pub keep_alive_secs: u64,
    /// How long the broker keeps the session (and its queued messages) while disconnected.
    pub session_expiry_secs: u32,
    /// Our receive maximum: unacknowledged messages the broker may send us at once.
    pub max_inflight: u16,
    pub max_packet_bytes: u32,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// TLS to the broker; `None`: plain TCP.
    pub tls: Option<crate::mqtt_connect::MqttTls>,
}

impl Default for MqttBrokerConfig {
    fn default() -> Self {
        MqttBrokerConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "cloud-sink".into(),
            username: None,
            password: None,
            filters: rae_proto::topic::filter::ALL_FROM_RAES
                .iter()
                .map(|f| (*f).to_owned())
                .collect(),
            shared_group: None,
            keep_alive_secs: 30,
            session_expiry_secs: 7 * 24 * 3600,
            max_inflight: 1000,
            max_packet_bytes: 1024 * 1024,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            tls: None,
        }
    }
}

impl MqttBrokerConfig {
    /// What is wrong with the config, if anything.
    pub fn problem(&self) -> Option<&'static str> {
        if self.host.trim().is_empty() {
            return Some("broker.host is empty");
        }
        if self.client_id.trim().is_empty() {
            return Some("broker.client_id is empty (a persistent session needs a stable id)");
        }
        if self.filters.is_empty() || self.filters.iter().any(|f| f.trim().is_empty()) {
            return Some("broker.filters must name at least one filter, none empty");
        }
        if self.max_inflight == 0 {
            return Some("broker.max_inflight must be at least 1");
        }
        if self.keep_alive_secs < 5 {
            return Some("broker.keep_alive_secs must be at least 5");
        }
        if self
            .shared_group
            .as_deref()
            .is_some_and(|g| g.is_empty() || g.contains(['/', '+', '#']))
        {
            return Some("broker.shared_group must be a non-empty name without / + #");
        }
        None
    }

    /// The common options ([`crate::mqtt_connect::connect_options`]) and a consumer's.
    fn options(&self) -> Result<MqttOptions, crate::mqtt_connect::MqttConnectError> {
        let mut o = crate::mqtt_connect::connect_options(self)?;
        o.set_manual_acks(true)
            .set_clean_start(false)
            .set_session_expiry_interval(Some(self.session_expiry_secs))
            .set_receive_maximum(Some(self.max_inflight))
            .set_max_packet_size(Some(self.max_packet_bytes))
            .set_request_channel_capacity(self.request_capacity());
        Ok(o)
    }

    /// Room for every acknowledgement the broker can be owed, plus subscribes and the
    /// disconnect. Not `max_inflight`: a broker may send more than our receive maximum
    /// (mosquitto 2.0.11 refills its whole send quota on one PUBACK), but never more than
    /// 65,535 unacknowledged messages, since packet ids are 16 bits and unique while in flight;
    /// an acknowledgement keeps its packet id in flight until it leaves this channel, so the
    /// channel never holds more. flume allocates as it fills, so memory follows use.
    pub(crate) fn request_capacity(&self) -> usize {
        usize::from(u16::MAX) + 64
    }

    /// The filters as subscribed: retained messages only on a new subscription, so a
    /// resubscribe after a reconnect does not replay every status.
    fn subscriptions(&self) -> Vec<Filter> {
        self.filters
            .iter()
            .map(|f| {
                let path = match &self.shared_group {
                    Some(group) => format!("$share/{group}/{f}"),
                    None => f.clone(),
                };
                let mut filter = Filter::new(path, QoS::AtLeastOnce);
                filter.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
                filter
            })
            .collect()
    }
}

/// What the event loop task tells the router, in the order it happened.
#[derive(Debug)]
pub(crate) enum Intake {
    /// A connection is up (the first or a new one).
    Connected {
        session_present: bool,
    },
    /// The connection dropped. The event loop reconnects only after `resume` is answered, so
    /// that no acknowledgement meant for the old connection reaches the new one.
    Lost {
        cause: String,
        resume: oneshot::Sender<()>,
    },
    /// The broker answered our subscribe; `refused` filters it did not grant.
    Subscribed {
        refused: usize,
    },
    Message(Publish),
}

/// The client handle and the router's end of the intake.
pub(crate) struct Connection {
    pub client: AsyncClient,
    pub intake: mpsc::Receiver<Intake>,
    pub task: JoinHandle<()>,
}

/// Starts the event loop task; fails on TLS files that cannot be used.
pub(crate) fn connect(
    config: &MqttBrokerConfig,
) -> Result<Connection, crate::mqtt_connect::MqttConnectError> {
    let (client, eventloop) = AsyncClient::new(config.options()?, config.request_capacity());
    let (tx, intake) = mpsc::channel(usize::from(config.max_inflight) + 16);
    let task = tokio::spawn(drive(
        eventloop,
        client.clone(),
        config.subscriptions(),
        config.tls.clone(),
        Backoff::new(
            Duration::from_millis(config.reconnect_min_ms.max(1)),
            Duration::from_millis(config.reconnect_max_ms.max(config.reconnect_min_ms)),
        ),
        tx,
    ));
    Ok(Connection {
        client,
        intake,
        task,
    })
}

/// The client's request channel did not take an acknowledgement now: it is full (a broker
/// beyond every bound) or the event loop is gone. The caller keeps the acknowledgement and
/// offers it again ([`super::acks::AckOutbox`]); a lost connection drops it, and the broker
/// redelivers the message on the next one.
#[derive(Debug, thiserror::Error)]
#[error("the MQTT event loop did not take the acknowledgement of packet {pkid} now")]
pub(crate) struct AckNotQueued {
    pub pkid: u16,
}

/// Sends the acknowledgement `token` stands for.
pub(crate) fn ack(client: &AsyncClient, token: AckToken) -> Result<(), AckNotQueued> {
    let mut publish = Publish::new("", token.qos, Vec::new(), None);
    publish.pkid = token.pkid;
    client
        .try_ack(&publish)
        .map_err(|_| AckNotQueued { pkid: token.pkid })
}

/// Owns the event loop until the client disconnects or the router goes away.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    subscriptions: Vec<Filter>,
    tls: Option<crate::mqtt_connect::MqttTls>,
    mut backoff: Backoff,
    tx: mpsc::Sender<Intake>,
) {
    let mut failures: u32 = 0;
    loop {
        let event = eventloop.poll().await;
        let forward = match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                failures = 0;
                backoff.reset();
                // Always (re)subscribe: a session the broker kept may hold other filters, and
                // one it lost holds none.
                if let Err(e) = client.try_subscribe_many(subscriptions.clone()) {
                    tracing::error!(cause = %e, "subscribe request not queued");
                }
                Intake::Connected {
                    session_present: ack.session_present,
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => Intake::Message(publish),
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                    .count();
                if refused > 0 {
                    tracing::error!(refused, codes = ?ack.return_codes, "broker refused subscriptions");
                }
                Intake::Subscribed { refused }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                failures = failures.saturating_add(1);
                let (resume, resumed) = oneshot::channel();
                if tx
                    .send(Intake::Lost {
                        cause: crate::mqtt_connect::explain(&e, tls.as_ref()),
                        resume,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                if resumed.await.is_err() {
                    return;
                }
                // Acks the router queued before it heard of the loss belong to the old
                // connection; `clean` drops queued acks and keeps everything else.
                eventloop.clean();
                let delay = backoff.next_delay(jitter());
                // Powers of two keep a long outage to a few lines.
                if failures.is_power_of_two() {
                    tracing::warn!(cause = %e, failures, retry_in_ms = delay.as_millis() as u64, "MQTT connection lost; reconnecting");
                }
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if tx.send(forward).await.is_err() {
            return;
        }
    }
}
