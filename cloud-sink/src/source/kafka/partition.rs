//! The ordered worker of one partition: takes records from its channel in order, batches
//! them ([`Batcher`]), hands each batch to the [`BatchWriter`] and reports the batch's last
//! offset only after the writer committed it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::metrics::{KafkaMetrics, PartitionId};
use crate::record::{BatchWriter, Origin, Raw, WriteError};
use crate::worker::{BatchPolicy, Batcher};

/// A batch the database committed: its offsets may go to Kafka.
#[derive(Debug)]
pub(crate) struct Written {
    pub partition: PartitionId,
    pub last_offset: i64,
    pub records: usize,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkerSettings {
    pub batch: BatchPolicy,
    /// Delay before writing a batch again after the writer gave up on it; doubles to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

/// Why a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerExit {
    /// Its channel closed and everything in it was written (shutdown).
    Drained,
    /// The partition was revoked; the batch in hand was written (or given up), the rest dropped.
    Revoked,
    /// The writer is shutting down.
    WriterStopped,
}

pub(crate) struct PartitionWorker<W> {
    pub partition: PartitionId,
    pub records: mpsc::Receiver<Raw>,
    pub revoked: watch::Receiver<bool>,
    pub writer: Arc<W>,
    pub settings: WorkerSettings,
    pub reports: mpsc::UnboundedSender<Written>,
    pub metrics: Arc<KafkaMetrics>,
}

/// What a worker holds that is not written yet; dropping it (also when the task is aborted
/// at a deadline) accounts those records as dropped, so the in-flight gauge stays true.
struct Held {
    records: mpsc::Receiver<Raw>,
    batcher: Batcher,
    in_hand: usize,
    metrics: Arc<KafkaMetrics>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.records.close();
        let mut dropped = self.in_hand + self.batcher.len();
        while self.records.try_recv().is_ok() {
            dropped += 1;
        }
        if dropped > 0 {
            KafkaMetrics::add(&self.metrics.stale_dropped, dropped as u64);
            self.metrics
                .in_flight
                .fetch_sub(dropped as u64, Ordering::Relaxed);
        }
    }
}

impl<W: BatchWriter> PartitionWorker<W> {
    pub async fn run(self) -> WorkerExit {
        let PartitionWorker {
            partition,
            records,
            mut revoked,
            writer,
            settings,
            reports,
            metrics,
        } = self;
        let mut held = Held {
            records,
            batcher: Batcher::new(settings.batch),
            in_hand: 0,
            metrics: metrics.clone(),
        };
        let ctx = WriteCtx {
            partition: &partition,
            writer: &*writer,
            settings: &settings,
            reports: &reports,
            metrics: &metrics,
        };
        loop {
            let due = held.batcher.due_at().map(Instant::from_std);
            tokio::select! {
                biased;
                _ = revoked.changed() => {
                    // The batch in hand is in-flight work: finish it; what is still queued
                    // is stale and the partition's next owner reads it again.
                    let batch = held.batcher.take();
                    held.in_hand = batch.len();
                    return match ctx.write(batch, Some(&mut revoked)).await {
                        Write::Committed => {
                            held.in_hand = 0;
                            WorkerExit::Revoked
                        }
                        Write::GaveUp => WorkerExit::Revoked,
                        Write::Stopped => WorkerExit::WriterStopped,
                    };
                }
                next = held.records.recv() => match next {
                    Some(raw) => {
                        held.batcher.push(raw, std::time::Instant::now());
                        // Take what is already queued without another trip through select.
                        while !held.batcher.is_full() {
                            match held.records.try_recv() {
                                Ok(raw) => held.batcher.push(raw, std::time::Instant::now()),
                                Err(_) => break,
                            }
                        }
                        if !held.batcher.is_full() {
                            continue;
                        }
                    }
                    None => {
                        let batch = held.batcher.take();
                        held.in_hand = batch.len();
                        return match ctx.write(batch, None).await {
                            Write::Committed => {
                                held.in_hand = 0;
                                WorkerExit::Drained
                            }
                            Write::GaveUp => WorkerExit::Revoked,
                            Write::Stopped => WorkerExit::WriterStopped,
                        };
                    }
                },
                _ = sleep_until(due), if due.is_some() => {}
            }
            if held.batcher.ready(std::time::Instant::now()) {
                let batch = held.batcher.take();
                held.in_hand = batch.len();
                match ctx.write(batch, Some(&mut revoked)).await {
                    Write::Committed => held.in_hand = 0,
                    Write::GaveUp => return WorkerExit::Revoked,
                    Write::Stopped => return WorkerExit::WriterStopped,
                }
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
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
    /// Writes `batch` until the writer commits it; a revocation (when `revoked` is given)
    /// ends the retries, leaving the batch to the partition's next owner.
    async fn write(
        &self,
        batch: Vec<Raw>,
        mut revoked: Option<&mut watch::Receiver<bool>>,
    ) -> Write {
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
                    match revoked.as_deref_mut() {
                        Some(revoked) => {
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => {}
                                _ = revoked.changed() => return Write::GaveUp,
                            }
                        }
                        None => tokio::time::sleep(delay).await,
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
