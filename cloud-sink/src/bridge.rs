//! Bridge mode (`cloud-sink bridge`, DESIGN section 5): MQTT in, Kafka out. Every message on
//! the subscribed filters (device events, inventories, statuses) is produced to one Kafka
//! topic with the MQTT topic as the record key and the payload unchanged; the MQTT message is
//! acknowledged only after Kafka's delivery report said the record is stored.
//!
//! - MQTT: the same connection as the MQTT source ([`crate::source::mqtt::intake`]): a
//!   persistent session, manual acknowledgements sent in arrival order
//!   (`AckQueue`).
//! - Kafka: an idempotent producer (`enable.idempotence=true`, `acks=all`), so librdkafka's
//!   own retries neither duplicate nor reorder records of a key. Records are enqueued in
//!   arrival order; a record whose delivery failed (librdkafka gave up after
//!   `delivery_timeout_ms`) is produced again after a backoff and its message, and every
//!   later one, stays unacknowledged until it is stored. Such a retry can put the record
//!   behind later ones of its key; the sink converges on any order (DESIGN section 3).
//! - Shutdown: stop producing new messages (they stay unacknowledged in the broker), wait
//!   for outstanding deliveries, flush the producer, acknowledge, disconnect, within
//!   `shutdown_deadline_ms`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::source::kafka::supervise::{jitter, Backoff};
use crate::source::mqtt::acks::AckQueue;
use crate::source::mqtt::intake::{self, Connection, Intake, MqttBrokerConfig};
use crate::source::mqtt::stopped;

/// librdkafka settings the bridge's guarantees depend on.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    pub broker: MqttBrokerConfig,
    /// Kafka `bootstrap.servers`.
    pub kafka_brokers: String,
    /// The Kafka topic every message goes to.
    pub kafka_topic: String,
    /// How long librdkafka tries to deliver one record before reporting a failure.
    pub delivery_timeout_ms: u64,
    /// Delay before producing a failed record again (doubles up to the maximum).
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    pub shutdown_deadline_ms: u64,
    /// Further librdkafka settings (TLS, SASL, linger), except the reserved ones.
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            broker: MqttBrokerConfig {
                client_id: "cloud-sink-bridge".into(),
                ..MqttBrokerConfig::default()
            },
            kafka_brokers: String::new(),
            kafka_topic: "rae-events".into(),
            delivery_timeout_ms: 30_000,
            retry_min_ms: 500,
            retry_max_ms: 30_000,
            shutdown_deadline_ms: 20_000,
            librdkafka: BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("invalid bridge config: {0}")]
    Config(String),
    #[error("creating the Kafka producer")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("cannot set up the MQTT connection")]
    Connect(#[from] crate::mqtt_connect::MqttConnectError),
}

impl BridgeConfig {
    fn validate(&self) -> Result<(), BridgeError> {
        let bad = |m: &str| Err(BridgeError::Config(m.to_owned()));
        if let Some(problem) = self.broker.problem() {
            return bad(problem);
        }
        if self.kafka_brokers.trim().is_empty() {
            return bad("kafka_brokers is empty");
        }
        if self.kafka_topic.trim().is_empty() {
            return bad("kafka_topic is empty");
        }
        if let Some(key) = self
            .librdkafka
            .keys()
            .find(|k| RESERVED.contains(&k.as_str()))
        {
            return Err(BridgeError::Config(format!(
                "librdkafka.{key} is set by the bridge itself and cannot be overridden"
            )));
        }
        Ok(())
    }

    fn producer(&self) -> Result<FutureProducer, BridgeError> {
        let mut c = ClientConfig::new();
        for (k, v) in &self.librdkafka {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.kafka_brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string())
            .create()
            .map_err(BridgeError::Producer)
    }
}

#[derive(Debug, Default)]
pub struct BridgeMetrics {
    received: AtomicU64,
    produced: AtomicU64,
    delivery_failures: AtomicU64,
    acks_sent: AtomicU64,
    acks_not_queued: AtomicU64,
    stale_unacked: AtomicU64,
    connects: AtomicU64,
    subscribed: AtomicU64,
    subscriptions_refused: AtomicU64,
    connection_losses: AtomicU64,
    left_at_shutdown: AtomicU64,
    in_flight: AtomicU64,
}

/// A point-in-time copy of [`BridgeMetrics`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeMetricsSnapshot {
    /// Messages received from the broker (redeliveries included).
    pub received: u64,
    /// Records Kafka acknowledged.
    pub produced: u64,
    /// Deliveries that failed (each record is produced again).
    pub delivery_failures: u64,
    pub acks_sent: u64,
    pub acks_not_queued: u64,
    /// Messages of a lost MQTT connection, stored in Kafka but not acknowledged (the broker
    /// redelivers them; Kafka then holds them twice).
    pub stale_unacked: u64,
    pub connects: u64,
    /// Subscribe requests the broker answered (one per connection).
    pub subscribed: u64,
    pub subscriptions_refused: u64,
    pub connection_losses: u64,
    /// Messages not stored by the shutdown deadline or received during shutdown.
    pub left_at_shutdown: u64,
    /// Messages received and not yet acknowledged or given up.
    pub in_flight: u64,
}

impl BridgeMetrics {
    pub fn snapshot(&self) -> BridgeMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BridgeMetricsSnapshot {
            received: get(&self.received),
            produced: get(&self.produced),
            delivery_failures: get(&self.delivery_failures),
            acks_sent: get(&self.acks_sent),
            acks_not_queued: get(&self.acks_not_queued),
            stale_unacked: get(&self.stale_unacked),
            connects: get(&self.connects),
            subscribed: get(&self.subscribed),
            subscriptions_refused: get(&self.subscriptions_refused),
            connection_losses: get(&self.connection_losses),
            left_at_shutdown: get(&self.left_at_shutdown),
            in_flight: get(&self.in_flight),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(counter: &AtomicU64, n: u64) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }
}

/// One message on its way to Kafka.
#[derive(Debug)]
struct Outgoing {
    ack_id: u64,
    key: String,
    payload: Vec<u8>,
    attempt: u32,
}

/// What a delivery task reports back.
#[derive(Debug)]
enum Delivery {
    Stored {
        ack_id: u64,
    },
    /// Produce it again (the backoff already passed).
    Again(Outgoing),
}

/// The pause before producing a record again after its `attempt`-th failure (0-based):
/// doubling from the minimum, capped, with jitter.
fn retry_delay(config: &BridgeConfig, attempt: u32) -> Duration {
    let mut backoff = Backoff::new(
        Duration::from_millis(config.retry_min_ms.max(1)),
        Duration::from_millis(config.retry_max_ms.max(config.retry_min_ms)),
    );
    let mut delay = backoff.next_delay(jitter());
    for _ in 0..attempt.min(16) {
        delay = backoff.next_delay(jitter());
    }
    delay
}

/// Runs the bridge until `shutdown` resolves.
pub async fn run(
    config: BridgeConfig,
    metrics: Arc<BridgeMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BridgeError> {
    config.validate()?;
    let producer = config.producer()?;
    let connection = intake::connect(&config.broker)?;
    let (stop_tx, mut stop) = watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
        stop_tx
    });
    let (delivery_tx, deliveries) = mpsc::unbounded_channel();
    let mut bridge = Bridge {
        config: &config,
        connection,
        producer,
        delivery_tx,
        deliveries,
        acks: AckQueue::default(),
        outstanding: 0,
        reports: JoinSet::new(),
        metrics,
    };
    bridge.route(&mut stop).await;
    let deadline = Instant::now() + Duration::from_millis(config.shutdown_deadline_ms);
    bridge.finish(deadline).await;
    signal.abort();
    Ok(())
}

struct Bridge<'a> {
    config: &'a BridgeConfig,
    connection: Connection,
    producer: FutureProducer,
    delivery_tx: mpsc::UnboundedSender<Delivery>,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    acks: AckQueue,
    /// Records enqueued and not yet stored.
    outstanding: usize,
    /// The tasks awaiting delivery reports (and retry backoffs).
    reports: JoinSet<()>,
    metrics: Arc<BridgeMetrics>,
}

impl Bridge<'_> {
    async fn route(&mut self, stop: &mut watch::Receiver<bool>) {
        loop {
            tokio::select! {
                biased;
                _ = stopped(stop) => return,
                Some(delivery) = self.deliveries.recv() => self.delivered(delivery),
                intake = self.connection.intake.recv() => match intake {
                    Some(Intake::Message(publish)) => {
                        BridgeMetrics::add(&self.metrics.received, 1);
                        BridgeMetrics::add(&self.metrics.in_flight, 1);
                        let ack_id = self.acks.push(publish.qos, publish.pkid);
                        self.outstanding += 1;
                        self.produce(Outgoing {
                            ack_id,
                            key: String::from_utf8_lossy(&publish.topic).into_owned(),
                            payload: publish.payload.to_vec(),
                            attempt: 0,
                        });
                    }
                    Some(other) => self.connection_event(other),
                    None => {
                        tracing::error!("MQTT event loop ended unexpectedly");
                        return;
                    }
                },
            }
        }
    }

    fn connection_event(&mut self, intake: Intake) {
        match intake {
            Intake::Connected { session_present } => {
                BridgeMetrics::add(&self.metrics.connects, 1);
                if !session_present {
                    tracing::info!("broker has no session for the bridge: a new one starts");
                }
            }
            Intake::Subscribed { refused } => {
                BridgeMetrics::add(&self.metrics.subscribed, 1);
                BridgeMetrics::add(&self.metrics.subscriptions_refused, refused as u64);
            }
            Intake::Lost { resume, .. } => {
                BridgeMetrics::add(&self.metrics.connection_losses, 1);
                self.acks.new_epoch();
                self.release();
                let _ = resume.send(());
            }
            Intake::Message(_) => {}
        }
    }

    /// Enqueues the record (in arrival order) and hands its delivery report to a task.
    fn produce(&mut self, out: Outgoing) {
        let record = FutureRecord::to(&self.config.kafka_topic)
            .key(&out.key)
            .payload(&out.payload);
        let enqueued = self.producer.send_result(record).map_err(|(e, _)| e);
        let tx = self.delivery_tx.clone();
        let delay = retry_delay(self.config, out.attempt);
        let metrics = self.metrics.clone();
        // Finished report tasks are reaped here, so the set holds only live ones.
        while self.reports.try_join_next().is_some() {}
        self.reports.spawn(async move {
            let failure = match enqueued {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => {
                        let _ = tx.send(Delivery::Stored { ack_id: out.ack_id });
                        return;
                    }
                    Ok(Err((e, _))) => e.to_string(),
                    Err(_) => "the producer dropped the delivery report".to_owned(),
                },
                Err(e) => e.to_string(),
            };
            BridgeMetrics::add(&metrics.delivery_failures, 1);
            if (out.attempt + 1).is_power_of_two() {
                tracing::warn!(key = %out.key, attempt = out.attempt + 1, cause = %failure, retry_in_ms = delay.as_millis() as u64, "record not stored in Kafka; producing it again, its ack waits");
            }
            tokio::time::sleep(delay).await;
            let _ = tx.send(Delivery::Again(Outgoing {
                attempt: out.attempt + 1,
                ..out
            }));
        });
    }

    fn delivered(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Stored { ack_id } => {
                BridgeMetrics::add(&self.metrics.produced, 1);
                self.outstanding = self.outstanding.saturating_sub(1);
                self.acks.complete(ack_id);
                self.release();
            }
            Delivery::Again(out) => self.produce(out),
        }
    }

    fn release(&mut self) {
        let released = self.acks.release();
        let m = &self.metrics;
        BridgeMetrics::sub(&m.in_flight, released.entries as u64);
        BridgeMetrics::add(&m.stale_unacked, released.stale as u64);
        for token in released.acks {
            match intake::ack(&self.connection.client, token) {
                Ok(()) => BridgeMetrics::add(&m.acks_sent, 1),
                Err(e) => {
                    BridgeMetrics::add(&m.acks_not_queued, 1);
                    tracing::warn!(pkid = token.pkid, cause = %e, "acknowledgement not queued");
                }
            }
        }
    }

    async fn finish(&mut self, deadline: Instant) {
        // Outstanding records: wait for their reports, but produce none again.
        let mut intake_open = true;
        let waited = tokio::time::timeout_at(deadline, async {
            while self.outstanding > 0 {
                tokio::select! {
                    Some(delivery) = self.deliveries.recv() => match delivery {
                        Delivery::Stored { .. } => self.delivered(delivery),
                        Delivery::Again(_) => self.outstanding = self.outstanding.saturating_sub(1),
                    },
                    intake = self.connection.intake.recv(), if intake_open => match intake {
                        Some(Intake::Message(_)) => {
                            BridgeMetrics::add(&self.metrics.left_at_shutdown, 1);
                        }
                        Some(other) => self.connection_event(other),
                        None => intake_open = false,
                    },
                }
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                outstanding = self.outstanding,
                "shutdown deadline reached before Kafka stored every record"
            );
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let producer = self.producer.clone();
        // `flush` blocks; keep it off the runtime's worker threads.
        let flushed = tokio::task::spawn_blocking(move || producer.flush(remaining)).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("producer not flushed by the shutdown deadline");
        }
        while let Ok(delivery) = self.deliveries.try_recv() {
            if let Delivery::Stored { .. } = delivery {
                self.delivered(delivery);
            }
        }
        self.reports.abort_all();
        self.release();
        let unacked = self.acks.len() as u64;
        BridgeMetrics::add(&self.metrics.left_at_shutdown, unacked);
        BridgeMetrics::sub(&self.metrics.in_flight, unacked);
        let _ = self.connection.client.try_disconnect();
        let grace = deadline.max(Instant::now() + Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = &mut self.connection.task => break,
                intake = self.connection.intake.recv() => match intake {
                    Some(Intake::Lost { resume, .. }) => drop(resume),
                    Some(Intake::Message(_)) => {
                        BridgeMetrics::add(&self.metrics.left_at_shutdown, 1);
                    }
                    Some(_) => {}
                    // The event loop task is gone.
                    None => break,
                },
                _ = tokio::time::sleep_until(grace) => {
                    self.connection.task.abort();
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configs_are_refused() {
        let ok = BridgeConfig {
            kafka_brokers: "127.0.0.1:9092".into(),
            ..BridgeConfig::default()
        };
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.kafka_brokers = String::new();
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.kafka_topic = " ".into();
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.librdkafka.insert("acks".into(), "1".into());
        assert!(c.validate().is_err(), "acks=all is not negotiable");
        let mut c = ok;
        c.broker.filters.clear();
        assert!(c.validate().is_err());
    }
}
