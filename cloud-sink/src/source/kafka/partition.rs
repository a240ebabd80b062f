//! The ordered worker of one partition. It owns the partition's own librdkafka queue
//! (`split_partition_queue`), woken by the queue's non-empty callback: it takes what is
//! queued (up to a batch), hands it to the [`BatchWriter`] at once, and reports the
//! batch's last offset only after the writer committed it. While a write is in flight
//! nothing is taken, so records gather in librdkafka's prefetch (bounded by
//! `queued.min.messages` / `queued.max.messages.kbytes`) and the next batch is larger:
//! a lone record goes out at once when the partition is idle, batches grow under load,
//! and back-pressure is simply not polling. Nothing is paused, so nothing is purged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::ConsumerContext;
use rdkafka::Message;
use tokio::sync::{mpsc, watch, Notify};

use super::metrics::{KafkaMetrics, PartitionId};
use crate::record::{BatchWriter, Origin, Raw, WriteError};

/// A batch the database committed: its offsets may go to Kafka.
#[derive(Debug)]
pub(crate) struct Written {
    pub partition: PartitionId,
    pub last_offset: i64,
    pub records: usize,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkerSettings {
    /// The most records one write takes.
    pub batch_max_records: usize,
    /// Delay before writing a batch again after the writer gave up on it; doubles to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

/// Why a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerExit {
    /// Shutdown: the batch in hand was written; what is still queued in librdkafka is not
    /// committed and goes to the partition's next reader.
    Drained,
    /// The partition was revoked; the batch in hand was written (or given up), the rest left.
    Revoked,
    /// The writer is shutting down.
    WriterStopped,
}

/// A lost wake-up (none is expected) costs at most this much latency.
const REPOLL: Duration = Duration::from_millis(100);

pub(crate) struct PartitionWorker<W, C: ConsumerContext + 'static> {
    pub partition: PartitionId,
    pub queue: PartitionQueue<C>,
    /// Notified by the queue's non-empty callback.
    pub wake: Arc<Notify>,
    pub revoked: watch::Receiver<bool>,
    /// Shutdown: finish the batch in hand, take nothing more.
    pub draining: watch::Receiver<bool>,
    pub writer: Arc<W>,
    pub settings: WorkerSettings,
    pub reports: mpsc::UnboundedSender<Written>,
    pub metrics: Arc<KafkaMetrics>,
    /// Records taken from the queue and not written yet (the partition's `buffered` gauge).
    pub in_hand: Arc<AtomicUsize>,
}

/// Records taken and not written yet; dropping it (also when the task is aborted at a
/// deadline) accounts them as dropped, so the in-flight gauge stays true.
struct Held {
    in_hand: Arc<AtomicUsize>,
    metrics: Arc<KafkaMetrics>,
}

impl Held {
    fn set(&self, n: usize) {
        self.in_hand.store(n, Ordering::Relaxed);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let dropped = self.in_hand.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            KafkaMetrics::add(&self.metrics.stale_dropped, dropped as u64);
            self.metrics
                .in_flight
                .fetch_sub(dropped as u64, Ordering::Relaxed);
        }
    }
}

impl<W: BatchWriter, C: ConsumerContext + 'static> PartitionWorker<W, C> {
    pub async fn run(self) -> WorkerExit {
        let PartitionWorker {
            partition,
            mut queue,
            wake,
            mut revoked,
            mut draining,
            writer,
            settings,
            reports,
            metrics,
            in_hand,
        } = self;
        let notify = wake.clone();
        queue.set_nonempty_callback(move || notify.notify_one());
        let held = Held {
            in_hand,
            metrics: metrics.clone(),
        };
        let ctx = WriteCtx {
            partition: &partition,
            writer: &*writer,
            settings: &settings,
            reports: &reports,
            metrics: &metrics,
        };
        let max = settings.batch_max_records.max(1);
        loop {
            if *revoked.borrow() {
                return WorkerExit::Revoked;
            }
            if *draining.borrow() {
                return WorkerExit::Drained;
            }
            let batch = take(&queue, &partition, max);
            if batch.is_empty() {
                tokio::select! {
                    biased;
                    _ = revoked.changed() => return WorkerExit::Revoked,
                    _ = draining.changed() => return WorkerExit::Drained,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(REPOLL) => {}
                }
                continue;
            }
            let n = batch.len();
            KafkaMetrics::add(&metrics.records_received, n as u64);
            KafkaMetrics::add(&metrics.in_flight, n as u64);
            metrics
                .buffered_high_water
                .fetch_max(n as u64, Ordering::Relaxed);
            held.set(n);
            match ctx.write(batch, &mut revoked).await {
                Write::Committed => held.set(0),
                Write::GaveUp => return WorkerExit::Revoked,
                Write::Stopped => return WorkerExit::WriterStopped,
            }
        }
    }
}

/// Takes up to `max` records from the partition's queue without waiting.
fn take<C: ConsumerContext>(
    queue: &PartitionQueue<C>,
    partition: &PartitionId,
    max: usize,
) -> Vec<Raw> {
    let mut batch = Vec::new();
    while batch.len() < max {
        match queue.poll(Duration::ZERO) {
            None => break,
            Some(Ok(message)) => batch.push(Raw {
                // Keys are MQTT topics; a key that is not UTF-8 keeps its bytes visible
                // (lossily) for the dead letter it will become.
                topic: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: message.payload().unwrap_or_default().to_vec(),
                origin: Origin::Kafka {
                    topic: partition.topic.clone(),
                    partition: partition.partition,
                    offset: message.offset(),
                },
            }),
            Some(Err(e)) => {
                tracing::debug!(partition = %partition, cause = %e, "partition poll error");
                break;
            }
        }
    }
    batch
}

struct WriteCtx<'a, W> {
    partition: &'a PartitionId,
    writer: &'a W,
    settings: &'a WorkerSettings,
    reports: &'a mpsc::UnboundedSender<Written>,
    metrics: &'a KafkaMetrics,
}

enum Write {
    /// The database committed the batch and its offsets were reported.
    Committed,
    /// The partition was revoked while the batch kept failing.
    GaveUp,
    /// The writer is shutting down.
    Stopped,
}

impl<W: BatchWriter> WriteCtx<'_, W> {
    /// Writes `batch` until the writer commits it; a revocation ends the retries, leaving
    /// the batch to the partition's next owner. (A shutdown keeps retrying until the
    /// session's deadline aborts the worker.)
    async fn write(&self, batch: Vec<Raw>, revoked: &mut watch::Receiver<bool>) -> Write {
        let Some(last_offset) = batch.iter().rev().find_map(kafka_offset) else {
            return Write::Committed;
        };
        let records = batch.len();
        let mut delay = self.settings.retry_min;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            match self.writer.write(&batch).await {
                Ok(outcome) => {
                    let m = self.metrics;
                    KafkaMetrics::add(&m.records_applied, outcome.applied as u64);
                    KafkaMetrics::add(&m.records_dead_lettered, outcome.dead_lettered as u64);
                    KafkaMetrics::add(&m.write_retries, u64::from(outcome.retries));
                    KafkaMetrics::add(&m.batches_written, 1);
                    m.in_flight.fetch_sub(records as u64, Ordering::Relaxed);
                    // The receiver lives as long as the session; after it the offsets are
                    // moot (the next session reads from the last commit).
                    let _ = self.reports.send(Written {
                        partition: self.partition.clone(),
                        last_offset,
                        records,
                    });
                    return Write::Committed;
                }
                Err(WriteError::Stopped) => {
                    tracing::warn!(partition = %self.partition, "writer stopped; partition worker ends");
                    return Write::Stopped;
                }
                Err(err @ WriteError::Unavailable { .. }) => {
                    KafkaMetrics::add(&self.metrics.write_failures, 1);
                    KafkaMetrics::add(&self.metrics.write_retries, 1);
                    // Powers of two keep a long outage to a few lines.
                    if attempt.is_power_of_two() {
                        tracing::warn!(
                            partition = %self.partition,
                            attempt,
                            retry_in_ms = delay.as_millis() as u64,
                            cause = %err,
                            "batch not written; retrying it, offsets wait"
                        );
                    }
                    if *revoked.borrow() {
                        return Write::GaveUp;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = revoked.changed() => return Write::GaveUp,
                    }
                    delay = (delay * 2).min(self.settings.retry_max);
                }
            }
        }
    }
}

fn kafka_offset(raw: &Raw) -> Option<i64> {
    match raw.origin {
        Origin::Kafka { offset, .. } => Some(offset),
        Origin::Mqtt { .. } => None,
    }
}
