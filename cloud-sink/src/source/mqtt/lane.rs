//! The ordered worker of one lane: takes records from its channel in order, batches them
//! ([`Batcher`]), hands each batch to the [`BatchWriter`] until it commits, and only then
//! reports the batch's messages as done (so that their acknowledgements may go out).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::metrics::MqttMetrics;
use crate::record::{BatchWriter, Raw, WriteError};
use crate::worker::{BatchPolicy, Batcher};

/// What the router hands a lane.
#[derive(Debug)]
pub(crate) enum LaneInput {
    /// A record and the id of its message in the ack queue.
    Record { raw: Raw, ack_id: u64 },
    /// Write what is batched now: the broker will send nothing more until we acknowledge.
    Flush,
}

/// What a lane tells the router.
#[derive(Debug)]
pub(crate) enum LaneReport {
    /// The database committed these messages.
    Written { ack_ids: Vec<u64> },
    /// The lane's channel closed and everything in it was written.
    Drained { lane: u32 },
    /// The writer is shutting down: nothing more can be written.
    WriterStopped { lane: u32 },
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct LaneSettings {
    pub batch: BatchPolicy,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

pub(crate) struct LaneWorker<W> {
    pub lane: u32,
    pub input: mpsc::Receiver<LaneInput>,
    pub writer: Arc<W>,
    pub settings: LaneSettings,
    pub reports: mpsc::UnboundedSender<LaneReport>,
    pub metrics: Arc<MqttMetrics>,
}

/// The batch being filled, with the ack ids of its records in the same order.
struct Pending {
    batcher: Batcher,
    ack_ids: Vec<u64>,
}

impl<W: BatchWriter> LaneWorker<W> {
    pub async fn run(mut self) {
        let mut pending = Pending {
            batcher: Batcher::new(self.settings.batch),
            ack_ids: Vec::new(),
        };
        loop {
            let due = pending.batcher.due_at().map(Instant::from_std);
            let mut flush = false;
            tokio::select! {
                next = self.input.recv() => match next {
                    Some(input) => {
                        flush |= self.take(&mut pending, input);
                        while !pending.batcher.is_full() {
                            match self.input.try_recv() {
                                Ok(input) => flush |= self.take(&mut pending, input),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        if !self.write(&mut pending).await {
                            return;
                        }
                        let _ = self.reports.send(LaneReport::Drained { lane: self.lane });
                        return;
                    }
                },
                _ = sleep_until(due), if due.is_some() => {}
            }
            if (flush || pending.batcher.ready(std::time::Instant::now()))
                && !self.write(&mut pending).await
            {
                return;
            }
        }
    }

    /// Adds one input to the batch; returns whether it asked for a flush.
    fn take(&self, pending: &mut Pending, input: LaneInput) -> bool {
        match input {
            LaneInput::Record { raw, ack_id } => {
                if pending.batcher.is_empty() {
                    MqttMetrics::add(&self.metrics.lanes_busy, 1);
                }
                pending.batcher.push(raw, std::time::Instant::now());
                pending.ack_ids.push(ack_id);
                false
            }
            LaneInput::Flush => true,
        }
    }

    /// Writes the batch until the writer commits it and reports it; `false` when the writer
    /// stopped. Retries are unbounded: the router aborts the lane at the shutdown deadline,
    /// and unacknowledged messages come back from the broker.
    async fn write(&self, pending: &mut Pending) -> bool {
        if pending.batcher.is_empty() {
            return true;
        }
        let batch = pending.batcher.take();
        let ack_ids = std::mem::take(&mut pending.ack_ids);
        let mut delay = self.settings.retry_min;
        let mut attempt: u32 = 0;
        let m = &self.metrics;
        loop {
            attempt += 1;
            match self.writer.write(&batch).await {
                Ok(outcome) => {
                    MqttMetrics::add(&m.applied, outcome.applied as u64);
                    MqttMetrics::add(&m.dead_lettered, outcome.dead_lettered as u64);
                    MqttMetrics::add(&m.write_retries, u64::from(outcome.retries));
                    MqttMetrics::add(&m.batches_written, 1);
                    MqttMetrics::sub(&m.lanes_busy, 1);
                    let _ = self.reports.send(LaneReport::Written { ack_ids });
                    return true;
                }
                Err(WriteError::Stopped) => {
                    tracing::warn!(lane = self.lane, "writer stopped; lane ends");
                    MqttMetrics::sub(&m.lanes_busy, 1);
                    let _ = self
                        .reports
                        .send(LaneReport::WriterStopped { lane: self.lane });
                    return false;
                }
                Err(err @ WriteError::Unavailable { .. }) => {
                    MqttMetrics::add(&m.write_failures, 1);
                    MqttMetrics::add(&m.write_retries, 1);
                    if attempt.is_power_of_two() {
                        tracing::warn!(
                            lane = self.lane,
                            attempt,
                            retry_in_ms = delay.as_millis() as u64,
                            cause = %err,
                            "batch not written; retrying it, acks wait"
                        );
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.settings.retry_max);
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
