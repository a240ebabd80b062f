//! The MQTT source (DESIGN section 5), the default for a single lab without Kafka: an MQTT
//! v5 client with a persistent session and manual acknowledgements, whose messages are
//! hashed by topic onto N ordered lanes running the same batching pipeline as Kafka's
//! partition workers.
//!
//! - [`intake`]: the connection. One task owns rumqttc's event loop (clean start off, a
//!   session expiry, our receive maximum) and forwards messages to the router; QoS 1
//!   messages published while the sink is away wait in the broker's session.
//! - The router (this module) hashes each topic onto a lane (same topic, same lane, so a
//!   session's events stay in order), records the message in the `AckQueue` and
//!   sends acknowledgements only after the lane's batch committed, in arrival order as MQTT
//!   requires. Nothing written on a lost connection is acknowledged on the next one: the
//!   broker redelivers it and the copy is written again (the writer converges on duplicates).
//! - Acknowledgements are never dropped on a live connection. MQTT 5 redelivers only on a
//!   reconnect, so a dropped PUBACK holds its message at the broker, uses up part of its send
//!   quota for good, and enough of them stop delivery. A conforming broker sends at most our
//!   receive maximum (`max_inflight`) unacknowledged; mosquitto 2.0.11 sends thousands more
//!   in a burst (it refills its whole quota on one PUBACK), and rumqttc's event loop takes one
//!   request per poll while reading up to ten messages per read, so acknowledgements pile up
//!   in its request channel. That channel is therefore sized for the protocol's worst case (a
//!   16-bit packet id space: at most 65,535 messages in flight, whatever the broker does) and
//!   not for `max_inflight`; whatever it refuses anyway waits in the router's `AckOutbox`, in
//!   order, and is offered again on every routing step and every `ACK_RETRY` until taken
//!   (`acks_deferred`). Only a lost connection drops waiting acknowledgements
//!   (`acks_not_queued`): the broker redelivers those messages on the next one.
//!   Not chosen: awaiting room in the request channel inside the router (the event loop task
//!   may itself be waiting for the router to take a message: a deadlock), and not polling
//!   while acknowledgements wait (rumqttc offers no way to poll only its requests).
//! - Flow: a conforming broker sends at most `max_inflight` unacknowledged messages. So a
//!   batch cannot wait for more than that to arrive: when the window is full, or nothing
//!   arrived for `idle_flush_ms`, the lanes write what they hold. Beyond it, a full lane makes
//!   the router, and with it the event loop, wait: back-pressure, nothing dropped.
//! - Shutdown: stop routing (later messages stay unacknowledged and come back), let every
//!   lane write what it has, acknowledge, disconnect (the session stays), all within
//!   `shutdown_deadline_ms`.
//!
//! Limitation: with `shared_group`, per-topic order holds only while the broker keeps a
//! topic on one member.

pub mod acks;
pub mod intake;
mod lane;
mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use intake::MqttBrokerConfig;
pub use metrics::{MqttMetrics, MqttMetricsSnapshot};

use acks::{AckOutbox, AckQueue};
use intake::{Connection, Intake};
use lane::{LaneInput, LaneReport, LaneSettings, LaneWorker};

use crate::record::{BatchWriter, Origin, Raw};
use crate::worker::BatchPolicy;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSourceConfig {
    pub broker: MqttBrokerConfig,
    /// Ordered lanes: topics hash onto them; lanes write in parallel.
    pub lanes: u32,
    pub batch_max_records: usize,
    pub batch_max_wait_ms: u64,
    /// Nothing arrived for this long: write what the lanes hold instead of waiting for
    /// `batch_max_wait_ms` (the broker may be holding back until we acknowledge).
    pub idle_flush_ms: u64,
    pub write_retry_min_ms: u64,
    pub write_retry_max_ms: u64,
    /// From the shutdown signal to `run` returning.
    pub shutdown_deadline_ms: u64,
}

impl Default for MqttSourceConfig {
    fn default() -> Self {
        MqttSourceConfig {
            broker: MqttBrokerConfig::default(),
            lanes: 4,
            batch_max_records: 1000,
            batch_max_wait_ms: 1000,
            idle_flush_ms: 50,
            write_retry_min_ms: 200,
            write_retry_max_ms: 10_000,
            shutdown_deadline_ms: 20_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MqttSourceError {
    #[error("invalid MQTT source config: {0}")]
    Config(String),
    #[error("cannot set up the MQTT connection")]
    Connect(#[from] crate::mqtt_connect::MqttConnectError),
    #[error("the writer stopped (lane {lane}); the source ended without writing further")]
    WriterStopped { lane: u32 },
}

impl MqttSourceConfig {
    fn validate(&self) -> Result<(), MqttSourceError> {
        if let Some(problem) = self.broker.problem() {
            return Err(MqttSourceError::Config(problem.into()));
        }
        if self.lanes == 0 || self.batch_max_records == 0 {
            return Err(MqttSourceError::Config(
                "lanes and batch_max_records must be at least 1".into(),
            ));
        }
        Ok(())
    }

    fn lane_settings(&self) -> LaneSettings {
        LaneSettings {
            batch: BatchPolicy {
                max_records: self.batch_max_records,
                max_wait: ms(self.batch_max_wait_ms),
            },
            retry_min: ms(self.write_retry_min_ms.max(1)),
            retry_max: ms(self.write_retry_max_ms.max(self.write_retry_min_ms)),
        }
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The lane a topic belongs to: FNV-1a, so that it is the same in every process and run.
pub fn lane_of(topic: &[u8], lanes: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in topic {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(lanes.max(1))) as u32
}

/// Runs the MQTT source until `shutdown` resolves (or the writer stops).
///
/// Returns `Ok` after a shutdown that wrote and acknowledged what it could within the
/// deadline; `Err` for a bad config or a writer that stopped.
pub async fn run<W: BatchWriter>(
    config: MqttSourceConfig,
    writer: Arc<W>,
    metrics: Arc<MqttMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MqttSourceError> {
    config.validate()?;
    let connection = intake::connect(&config.broker)?;
    let (stop_tx, mut stop) = watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
        stop_tx
    });
    let (report_tx, reports) = mpsc::unbounded_channel();
    let mut workers = JoinSet::new();
    // Room for the whole receive window plus a flush marker per record: the router only
    // waits for a lane after a reconnect replayed the window on top of an unwritten one. Then
    // it holds the event loop too, and the broker keeps the session until the lane drains.
    let capacity = 2 * usize::from(config.broker.max_inflight) + 2;
    let mut lanes = Vec::with_capacity(config.lanes as usize);
    for lane in 0..config.lanes {
        let (tx, input) = mpsc::channel(capacity);
        workers.spawn(
            LaneWorker {
                lane,
                input,
                writer: writer.clone(),
                settings: config.lane_settings(),
                reports: report_tx.clone(),
                metrics: metrics.clone(),
            }
            .run(),
        );
        lanes.push(LaneTx { tx, dirty: false });
    }
    drop(report_tx);
    let mut router = Router {
        config: &config,
        connection,
        lanes,
        reports,
        acks: AckQueue::default(),
        outbox: AckOutbox::default(),
        metrics,
        last_arrival: None,
    };
    let result = router.route(&mut stop).await;
    let deadline = Instant::now() + ms(config.shutdown_deadline_ms);
    router.finish(&mut workers, deadline).await;
    signal.abort();
    result
}

struct LaneTx {
    tx: mpsc::Sender<LaneInput>,
    /// Records went in since the last flush.
    dirty: bool,
}

struct Router<'a> {
    config: &'a MqttSourceConfig,
    connection: Connection,
    lanes: Vec<LaneTx>,
    reports: mpsc::UnboundedReceiver<LaneReport>,
    acks: AckQueue,
    /// Released acknowledgements the client has not taken yet.
    outbox: AckOutbox,
    metrics: Arc<MqttMetrics>,
    last_arrival: Option<Instant>,
}

/// How soon acknowledgements the client refused are offered again when nothing else happens.
const ACK_RETRY: Duration = Duration::from_millis(2);

impl Router<'_> {
    /// Routes until shutdown; `Err` when the writer stopped.
    async fn route(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), MqttSourceError> {
        let idle = ms(self.config.idle_flush_ms.max(1));
        loop {
            if !self.outbox.is_empty() {
                self.send_acks();
            }
            let flush_at = self
                .last_arrival
                .filter(|_| self.lanes.iter().any(|l| l.dirty))
                .map(|at| at + idle);
            let retry_at = (!self.outbox.is_empty()).then(|| Instant::now() + ACK_RETRY);
            tokio::select! {
                biased;
                _ = stopped(stop) => return Ok(()),
                report = self.reports.recv() => match report {
                    Some(report) => self.absorb(report)?,
                    None => return Ok(()),
                },
                intake = self.connection.intake.recv() => match intake {
                    Some(intake) => self.take(intake).await,
                    None => {
                        tracing::error!("MQTT event loop ended unexpectedly");
                        return Ok(());
                    }
                },
                _ = sleep_until(flush_at), if flush_at.is_some() => self.flush(),
                _ = sleep_until(retry_at), if retry_at.is_some() => self.send_acks(),
            }
        }
    }

    fn absorb(&mut self, report: LaneReport) -> Result<(), MqttSourceError> {
        match report {
            LaneReport::Written { ack_ids } => {
                for id in ack_ids {
                    self.acks.complete(id);
                }
                self.release();
                Ok(())
            }
            LaneReport::Drained { lane } => {
                tracing::debug!(lane, "lane drained");
                Ok(())
            }
            LaneReport::WriterStopped { lane } => Err(MqttSourceError::WriterStopped { lane }),
        }
    }

    /// Releases the acknowledgements that may go now and hands them to the client.
    fn release(&mut self) {
        let released = self.acks.release();
        let m = &self.metrics;
        // Entries that need no acknowledgement leave the in-flight count now, the others
        // once the client took their acknowledgement.
        MqttMetrics::sub(
            &m.in_flight,
            (released.entries - released.acks.len()) as u64,
        );
        MqttMetrics::add(&m.stale_unacked, released.stale as u64);
        self.outbox.extend(released.acks);
        self.send_acks();
    }

    /// Offers the waiting acknowledgements to the client, in order; what it refuses waits
    /// for the next routing step or `ACK_RETRY`.
    fn send_acks(&mut self) {
        let client = &self.connection.client;
        let sent = self.outbox.send(|token| intake::ack(client, token).is_ok());
        let m = &self.metrics;
        MqttMetrics::add(&m.acks_sent, sent.taken as u64);
        MqttMetrics::sub(&m.in_flight, sent.taken as u64);
        if sent.newly_deferred > 0 {
            let before = m.acks_deferred.load(std::sync::atomic::Ordering::Relaxed);
            MqttMetrics::add(&m.acks_deferred, sent.newly_deferred as u64);
            // Powers of two keep a long stall to a few lines.
            let after = before + sent.newly_deferred as u64;
            if (before + 1).next_power_of_two() <= after {
                tracing::warn!(
                    waiting = self.outbox.len(),
                    deferred_total = after,
                    "MQTT client's request channel full; acknowledgements wait and are retried"
                );
            }
        }
    }

    /// A lost connection: acknowledgements that wait for it are given up (the broker
    /// redelivers their messages on the next connection, whose copies get theirs).
    fn connection_lost(&mut self) {
        self.acks.new_epoch();
        self.release();
        let dropped = self.outbox.drop_stale(&self.acks) as u64;
        MqttMetrics::add(&self.metrics.acks_not_queued, dropped);
        MqttMetrics::add(&self.metrics.stale_unacked, dropped);
        MqttMetrics::sub(&self.metrics.in_flight, dropped);
        if dropped > 0 {
            tracing::info!(dropped, "acknowledgements of the lost connection given up");
        }
    }

    async fn take(&mut self, intake: Intake) {
        match intake {
            Intake::Connected { session_present } => {
                MqttMetrics::add(&self.metrics.connects, 1);
                if !session_present {
                    MqttMetrics::add(&self.metrics.sessions_lost, 1);
                    tracing::info!("broker has no session for us: a new one starts");
                }
            }
            Intake::Subscribed { refused } => {
                MqttMetrics::add(&self.metrics.subscribed, 1);
                MqttMetrics::add(&self.metrics.subscriptions_refused, refused as u64);
            }
            Intake::Lost { cause, resume } => {
                MqttMetrics::add(&self.metrics.connection_losses, 1);
                tracing::debug!(%cause, "MQTT connection lost");
                self.connection_lost();
                let _ = resume.send(());
            }
            Intake::Message(publish) => {
                MqttMetrics::add(&self.metrics.received, 1);
                MqttMetrics::add(&self.metrics.in_flight, 1);
                self.last_arrival = Some(Instant::now());
                let ack_id = self.acks.push(publish.qos, publish.pkid);
                let lane = lane_of(&publish.topic, self.lanes.len() as u32);
                let raw = Raw {
                    // A topic that is not UTF-8 is still written (as a dead letter).
                    topic: Some(String::from_utf8_lossy(&publish.topic).into_owned()),
                    payload: publish.payload.to_vec(),
                    origin: Origin::Mqtt {
                        lane,
                        pkid: (publish.pkid != 0).then_some(publish.pkid),
                    },
                };
                let Some(target) = self.lanes.get_mut(lane as usize) else {
                    return;
                };
                target.dirty = true;
                if target
                    .tx
                    .send(LaneInput::Record { raw, ack_id })
                    .await
                    .is_err()
                {
                    tracing::error!(lane, "lane gone; message left unacknowledged");
                }
                if self.acks.unacked_now() >= usize::from(self.config.broker.max_inflight) {
                    self.flush();
                }
            }
        }
    }

    /// Asks every lane holding unwritten records to write them now.
    fn flush(&mut self) {
        for lane in &mut self.lanes {
            if lane.dirty {
                // A full channel means the lane has work coming anyway.
                let _ = lane.tx.try_send(LaneInput::Flush);
                lane.dirty = false;
            }
        }
    }

    /// Shutdown: lanes write what they hold, acknowledgements go out, the client disconnects.
    async fn finish(&mut self, workers: &mut JoinSet<()>, deadline: Instant) {
        // Closing the channels lets each lane write its last batch and end.
        self.lanes.clear();
        let mut intake_open = true;
        let drained = tokio::time::timeout_at(deadline, async {
            loop {
                tokio::select! {
                    report = self.reports.recv() => match report {
                        Some(report) => {
                            let _ = self.absorb(report);
                        }
                        None => break,
                    },
                    intake = self.connection.intake.recv(), if intake_open => match intake {
                        // Messages arriving now stay unacknowledged; the broker keeps them.
                        Some(Intake::Message(_)) => {
                            MqttMetrics::add(&self.metrics.left_at_shutdown, 1);
                        }
                        Some(Intake::Lost { resume, .. }) => {
                            self.connection_lost();
                            let _ = resume.send(());
                        }
                        Some(Intake::Connected { .. } | Intake::Subscribed { .. }) => {}
                        None => intake_open = false,
                    },
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown deadline reached before every lane wrote its records");
        }
        workers.abort_all();
        while workers.join_next().await.is_some() {}
        self.release();
        // The event loop still runs: acknowledgements the client refused get until the
        // deadline to go out, ahead of the DISCONNECT.
        while !self.outbox.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(ACK_RETRY).await;
            self.send_acks();
        }
        let waiting = self.outbox.len() as u64;
        if waiting > 0 {
            tracing::warn!(
                waiting,
                "shutdown deadline reached with acknowledgements waiting"
            );
        }
        MqttMetrics::add(&self.metrics.acks_not_queued, waiting);
        let unacked = self.acks.len() as u64 + waiting;
        MqttMetrics::add(&self.metrics.left_at_shutdown, unacked);
        MqttMetrics::sub(&self.metrics.in_flight, unacked);
        // The broker keeps the session (and whatever is unacknowledged) after a normal
        // disconnect; the event loop task ends once the DISCONNECT is out.
        let _ = self.connection.client.try_disconnect();
        let grace = deadline.max(Instant::now() + Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = &mut self.connection.task => break,
                intake = self.connection.intake.recv() => match intake {
                    Some(Intake::Lost { resume, .. }) => drop(resume),
                    Some(Intake::Message(_)) => {
                        MqttMetrics::add(&self.metrics.left_at_shutdown, 1);
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

/// Resolves once the stop flag is set, holding no borrow of it (so the routing future
/// stays `Send`).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_always_lands_on_the_same_lane() {
        let topic = b"rae/v1/RAE-1/devices/00000000-0000-4000-8000-000000000001";
        let lane = lane_of(topic, 8);
        assert!(lane < 8);
        for _ in 0..10 {
            assert_eq!(lane_of(topic, 8), lane);
        }
        assert_eq!(lane_of(topic, 1), 0);
        assert_eq!(lane_of(topic, 0), 0, "zero lanes reads as one");
    }

    #[test]
    fn topics_spread_over_lanes() {
        let mut used = [0usize; 4];
        for i in 0..400 {
            let topic = format!("rae/v1/RAE-{}/devices/{i}", i % 7);
            used[lane_of(topic.as_bytes(), 4) as usize] += 1;
        }
        assert!(used.iter().all(|&n| n > 50), "{used:?}");
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = MqttSourceConfig::default();
        assert!(c.validate().is_ok());
        c.lanes = 0;
        assert!(c.validate().is_err());
        let mut c = MqttSourceConfig::default();
        c.broker.client_id = " ".into();
        assert!(c.validate().is_err());
        let mut c = MqttSourceConfig::default();
        c.broker.shared_group = Some("a/b".into());
        assert!(c.validate().is_err());
        assert!(from_pairs(&[("lanes", 2)]).is_ok());
        assert!(from_pairs(&[("lanes", 2), ("nonsense", 1)]).is_err());
    }

    /// A config from key/value pairs (cloud-sink has no config-format dependency).
    fn from_pairs(pairs: &[(&str, u32)]) -> Result<MqttSourceConfig, serde::de::value::Error> {
        let map = serde::de::value::MapDeserializer::new(pairs.iter().copied());
        MqttSourceConfig::deserialize(map)
    }
}
