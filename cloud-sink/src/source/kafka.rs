//! The Kafka source (DESIGN section 5): a consumer group member that feeds one ordered
//! `partition` worker per assigned partition and commits offsets only for batches the
//! database committed.
//!
//! - One poll thread owns the `BaseConsumer` and polls its main queue, which carries only
//!   events (librdkafka's rebalance callbacks run on it and may block there while revoked
//!   partitions finish their batch). On assignment, before fetching starts, every partition's
//!   queue is split off (`split_partition_queue`) and handed to that partition's worker,
//!   which polls it when its non-empty callback fires. A worker takes records only when no
//!   write of its own is in flight, so back-pressure is not polling: records wait in
//!   librdkafka's prefetch, which is capped (`queued.min.messages` per partition,
//!   `queued.max.messages.kbytes`), so memory is bounded by configuration. Nothing is paused:
//!   pausing purges the prefetch, and resuming left the fetcher idle until the end of its
//!   serve window (about 1 s lost per pause; BENCHMARKS.md, issue 4).
//! - Offsets: `enable.auto.commit=false` and `enable.auto.offset.store=false`. The
//!   [`OffsetTracker`] is the offset store: a worker reports a batch's last offset after
//!   `BatchWriter::write` returned `Ok`, and the poll thread commits explicit offsets in
//!   batches (N records or T time), synchronously on revocation and shutdown. So a commit
//!   never covers a record the writer did not acknowledge, and its timing is ours, not an
//!   auto-commit timer's.
//! - Static membership: with `group_instance_id` set (`group.instance.id`), a member that
//!   restarts under the same id gets its partitions back at once instead of after the
//!   group's session timeout; two live members must never share an id (the broker fences
//!   one, a fatal error, and each rebuild fences the other).
//! - [`run`] is the supervisor: it rebuilds the consumer after a fatal client error, a lost
//!   worker, or a stall (lag reported while nothing arrives or is being written), with a
//!   backoff of 3 s to 30 s and jitter. Shutdown lets every worker finish the batch in hand
//!   (nothing more is taken; the rest stays uncommitted for the next reader), commits and
//!   returns within `shutdown_deadline_ms`.

mod metrics;
mod partition;
mod session;
pub mod supervise;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::Message;
use serde::Deserialize;
use tokio::sync::{oneshot, watch};

pub use metrics::{KafkaMetrics, KafkaMetricsSnapshot, PartitionGauge, PartitionId};
use partition::WorkerSettings;
use session::{LaneSettings, SinkConsumer, SinkContext};
use supervise::{Backoff, StallWatch};

use crate::record::BatchWriter;
use crate::worker::{CommitPolicy, OffsetTracker};

/// librdkafka settings the source's guarantees depend on; `librdkafka` may not override them.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "partition.assignment.strategy",
    "queued.max.messages.kbytes",
    "queued.min.messages",
    "statistics.interval.ms",
    "enable.partition.eof",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSourceConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub group_id: String,
    /// `group.instance.id` (static membership); `None`: dynamic membership.
    pub group_instance_id: Option<String>,
    pub topics: Vec<String>,
    /// Where a group without a committed offset starts: `earliest` loses nothing.
    pub auto_offset_reset: String,
    /// Unused since each worker polls its partition's own queue (records wait in
    /// librdkafka's prefetch, see `prefetch_messages`); kept so existing settings parse.
    pub channel_capacity: usize,
    /// The most records one write takes.
    pub batch_max_records: usize,
    /// Unused: a worker writes what is queued as soon as its previous write returned.
    pub batch_max_wait_ms: u64,
    pub commit_max_records: usize,
    pub commit_interval_ms: u64,
    /// librdkafka's prefetch cap in KiB (`queued.max.messages.kbytes`).
    pub prefetch_kbytes: u32,
    /// librdkafka's prefetch per partition in records (`queued.min.messages`).
    pub prefetch_messages: u32,
    /// How long a revoked partition's worker may take to finish its batch.
    pub revoke_deadline_ms: u64,
    /// From the shutdown signal to `run` returning.
    pub shutdown_deadline_ms: u64,
    /// Lag reported while nothing arrives or is written for this long: rebuild the consumer.
    pub stall_after_ms: u64,
    pub statistics_interval_ms: u64,
    pub rebuild_backoff_min_ms: u64,
    pub rebuild_backoff_max_ms: u64,
    /// Delay before writing a batch again after the writer gave up on it (doubles).
    pub write_retry_min_ms: u64,
    pub write_retry_max_ms: u64,
    /// Further librdkafka settings (TLS, SASL, timeouts), except the reserved ones.
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for KafkaSourceConfig {
    fn default() -> Self {
        KafkaSourceConfig {
            brokers: String::new(),
            group_id: "cloud-sink".into(),
            group_instance_id: None,
            topics: Vec::new(),
            auto_offset_reset: "earliest".into(),
            channel_capacity: 2000,
            batch_max_records: 1000,
            batch_max_wait_ms: 1000,
            commit_max_records: 1000,
            commit_interval_ms: 1000,
            prefetch_kbytes: 16 * 1024,
            prefetch_messages: 2000,
            revoke_deadline_ms: 10_000,
            shutdown_deadline_ms: 20_000,
            stall_after_ms: 120_000,
            statistics_interval_ms: 5000,
            rebuild_backoff_min_ms: 3000,
            rebuild_backoff_max_ms: 30_000,
            write_retry_min_ms: 200,
            write_retry_max_ms: 10_000,
            librdkafka: BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid Kafka source config: {0}")]
    Config(String),
    #[error("creating the Kafka consumer")]
    Create(#[source] rdkafka::error::KafkaError),
    #[error("the Kafka poll thread could not start")]
    Thread(#[source] std::io::Error),
}

/// Why a session ended without being asked to.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("subscribing to {topics:?}")]
    Subscribe {
        topics: Vec<String>,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("fatal client error {code:?}: {reason}")]
    Fatal {
        code: rdkafka::types::RDKafkaErrorCode,
        reason: String,
    },
    #[error("stalled: lag reported while nothing arrived for {0:?}")]
    Stalled(Duration),
    #[error("a partition worker stopped (the writer is shutting down)")]
    WorkerLost,
    #[error("a partition's queue could not be split off, or its record reached the main queue")]
    Split,
    #[error("the poll thread ended without a result")]
    ThreadGone,
}

impl KafkaSourceConfig {
    fn validate(&self) -> Result<(), SourceError> {
        let bad = |m: &str| Err(SourceError::Config(m.to_owned()));
        if self.brokers.trim().is_empty() {
            return bad("brokers is empty");
        }
        if self.group_id.trim().is_empty() {
            return bad("group_id is empty");
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return bad("topics must name at least one topic, none empty");
        }
        if self.batch_max_records == 0 {
            return bad("batch_max_records must be at least 1");
        }
        if self
            .group_instance_id
            .as_ref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return bad("group_instance_id is empty");
        }
        if let Some(key) = self
            .librdkafka
            .keys()
            .find(|k| RESERVED.contains(&k.as_str()))
        {
            return Err(SourceError::Config(format!(
                "librdkafka.{key} is set by the source itself and cannot be overridden"
            )));
        }
        Ok(())
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        // A worker busy writing leaves its partition's prefetch "full"; librdkafka's default
        // 1 s pause before the next fetch would then dominate throughput.
        c.set("fetch.queue.backoff.ms", "50");
        for (k, v) in &self.librdkafka {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("auto.offset.reset", &self.auto_offset_reset)
            .set(
                "queued.max.messages.kbytes",
                self.prefetch_kbytes.to_string(),
            )
            .set(
                "queued.min.messages",
                self.prefetch_messages.max(1).to_string(),
            )
            .set(
                "statistics.interval.ms",
                self.statistics_interval_ms.to_string(),
            )
            .set("enable.partition.eof", "false");
        if let Some(id) = &self.group_instance_id {
            c.set("group.instance.id", id.trim());
        }
        c
    }

    fn lane_settings(&self) -> LaneSettings {
        LaneSettings {
            revoke_deadline: ms(self.revoke_deadline_ms),
            worker: WorkerSettings {
                batch_max_records: self.batch_max_records,
                retry_min: ms(self.write_retry_min_ms.max(1)),
                retry_max: ms(self.write_retry_max_ms.max(self.write_retry_min_ms)),
            },
        }
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A session that ran this long without failing resets the rebuild backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// How long one `poll` may block: bounds the reaction to shutdown and commit deadlines.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// Runs the Kafka source until `shutdown` resolves, rebuilding the consumer after failures.
///
/// Returns `Ok` after a shutdown that drained and committed; `Err` only for a configuration
/// the consumer cannot be built from.
pub async fn run<W: BatchWriter>(
    config: KafkaSourceConfig,
    writer: Arc<W>,
    metrics: Arc<KafkaMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SourceError> {
    config.validate()?;
    let (stop_tx, mut stop) = watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
        // Keep the sender: its drop would read as a stop too, but only after the send.
        stop_tx
    });
    let mut backoff = Backoff::new(
        ms(config.rebuild_backoff_min_ms),
        ms(config.rebuild_backoff_max_ms),
    );
    let result = loop {
        let started = Instant::now();
        let (done_tx, done) = oneshot::channel();
        let session_config = config.clone();
        let runtime = tokio::runtime::Handle::current();
        let (session_writer, session_metrics, session_stop) =
            (writer.clone(), metrics.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || {
                let result = poll_session(
                    &session_config,
                    runtime,
                    session_writer,
                    session_metrics,
                    session_stop,
                );
                let _ = done_tx.send(result);
            })
            .map_err(SourceError::Thread)?;
        let ended = done
            .await
            .unwrap_or(Err(Outcome::Retry(SessionError::ThreadGone)));
        let err = match ended {
            Ok(()) => break Ok(()),
            Err(Outcome::Fatal(e)) => break Err(e),
            Err(Outcome::Retry(e)) => e,
        };
        if *stop.borrow() {
            break Ok(());
        }
        if started.elapsed() >= HEALTHY_AFTER {
            backoff.reset();
        }
        let delay = backoff.next_delay(supervise::jitter());
        KafkaMetrics::add(&metrics.rebuilds, 1);
        tracing::warn!(cause = %err, retry_in_ms = delay.as_millis() as u64, "kafka consumer ended; rebuilding it");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|stopped| *stopped) => break Ok(()),
        }
    };
    signal.abort();
    result
}

enum Outcome {
    Retry(SessionError),
    Fatal(SourceError),
}

/// One consumer, from creation to close, on the poll thread.
fn poll_session<W: BatchWriter>(
    config: &KafkaSourceConfig,
    runtime: tokio::runtime::Handle,
    writer: Arc<W>,
    metrics: Arc<KafkaMetrics>,
    stop: watch::Receiver<bool>,
) -> Result<(), Outcome> {
    let tracker = OffsetTracker::new(CommitPolicy {
        max_records: config.commit_max_records,
        max_wait: ms(config.commit_interval_ms),
    });
    let context = SinkContext::new(config.lane_settings(), tracker, runtime, writer, metrics);
    let consumer: Arc<SinkConsumer<W>> = Arc::new(
        config
            .client_config()
            .create_with_context(context)
            .map_err(|e| Outcome::Fatal(SourceError::Create(e)))?,
    );
    consumer.context().set_consumer(&consumer);
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|source| {
        Outcome::Retry(SessionError::Subscribe {
            topics: config.topics.clone(),
            source,
        })
    })?;
    let result = poll_loop(&consumer, config, &stop);
    // Dropping the consumer leaves the group; its revocation callback finds no lanes left.
    // Every worker (and so every partition queue) was joined: this is the last reference.
    drop(consumer);
    result.map_err(Outcome::Retry)
}

fn poll_loop<W: BatchWriter>(
    consumer: &SinkConsumer<W>,
    config: &KafkaSourceConfig,
    stop: &watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let context = consumer.context().clone();
    let stall_after = ms(config.stall_after_ms);
    let mut stall = StallWatch::new(stall_after, Instant::now());
    loop {
        let now = Instant::now();
        if *stop.borrow() {
            let total = ms(config.shutdown_deadline_ms);
            // Leave room after the drain for the final commit and for leaving the group.
            let reserve = (total / 4).min(Duration::from_secs(2));
            context
                .session()
                .drain(consumer, now + total.saturating_sub(reserve));
            return Ok(());
        }
        if let Some((code, reason)) = consumer.client().fatal_error() {
            KafkaMetrics::add(&context.metrics.fatal_errors, 1);
            context.session().revoke_all(consumer);
            return Err(SessionError::Fatal { code, reason });
        }
        {
            let mut session = context.session();
            if session.absorb_reports(now) > 0 {
                stall.progress(now);
            }
            let failed = context.take_failed_commits();
            if !failed.is_empty() {
                session.tracker.commit_failed(&failed, now);
            }
            if session.tracker.commit_due(now) {
                let offsets = session.tracker.take_commit();
                session.commit(consumer, offsets, CommitMode::Async);
            }
            session.pump();
            if session.split_failed {
                session.revoke_all(consumer);
                return Err(SessionError::Split);
            }
            if session.worker_lost {
                session.revoke_all(consumer);
                return Err(SessionError::WorkerLost);
            }
            if let Some(lag) = context.take_lag() {
                stall.lag(lag, now);
            }
            if stall.stalled(session.idle(), now) {
                KafkaMetrics::add(&context.metrics.stalls, 1);
                session.revoke_all(consumer);
                return Err(SessionError::Stalled(stall_after));
            }
        }
        match consumer.poll(POLL_TIMEOUT) {
            None => {}
            Some(Ok(message)) => {
                // Every assigned partition's queue was split off before fetching began, so
                // no record should come here. One that does would be written out of order
                // with its partition's queue: end the session (its offsets are not
                // committed, so the next session reads it again).
                let id = PartitionId {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                };
                let mut session = context.session();
                if session.owns(&id) {
                    tracing::error!(partition = %id, offset = message.offset(), "a record reached the main queue");
                    session.revoke_all(consumer);
                    return Err(SessionError::Split);
                }
                KafkaMetrics::add(&context.metrics.stale_dropped, 1);
            }
            Some(Err(e)) => {
                tracing::debug!(cause = %e, "consumer poll error");
            }
        }
    }
}
