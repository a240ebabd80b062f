//! One consumer's session: the per-partition lanes (a worker task polling the partition's
//! own librdkafka queue), the offset tracker, and the librdkafka callbacks that drive them
//! on rebalance. Everything here runs on the poll thread, which owns the consumer; the
//! workers hold it only through their partition queues and are joined before it is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::metrics::{KafkaMetrics, PartitionId};
use super::partition::{PartitionWorker, WorkerExit, WorkerSettings, Written};
use crate::record::BatchWriter;
use crate::worker::OffsetTracker;

/// Sizes and deadlines a session works with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LaneSettings {
    pub revoke_deadline: Duration,
    pub worker: WorkerSettings,
}

struct Lane {
    /// Records the worker took and has not written yet.
    in_hand: Arc<AtomicUsize>,
    /// Kept alive until the worker is joined: dropping it reads as a revocation.
    revoke: watch::Sender<bool>,
    task: JoinHandle<WorkerExit>,
}

pub(crate) struct Session<W> {
    lanes: HashMap<PartitionId, Lane>,
    pub(crate) tracker: OffsetTracker<PartitionId>,
    reports: mpsc::UnboundedReceiver<Written>,
    reports_tx: mpsc::UnboundedSender<Written>,
    settings: LaneSettings,
    runtime: Handle,
    writer: Arc<W>,
    metrics: Arc<KafkaMetrics>,
    /// A worker ended on its own (the writer stopped): the session must end.
    pub(crate) worker_lost: bool,
    /// An assigned partition's queue could not be split off: the session must end.
    pub(crate) split_failed: bool,
    /// Set at shutdown: every worker finishes the batch in hand and ends.
    draining: watch::Sender<bool>,
}

/// The consumer's context: librdkafka's callbacks reach the session through it.
pub(crate) struct SinkContext<W: BatchWriter> {
    session: Mutex<Session<W>>,
    pub(crate) metrics: Arc<KafkaMetrics>,
    /// Total lag from the latest statistics, `i64::MIN` once read.
    lag: AtomicI64,
    failed_commits: Mutex<Vec<(PartitionId, i64)>>,
    /// The consumer itself, for splitting partition queues off in the assign callback.
    consumer: OnceLock<Weak<SinkConsumer<W>>>,
}

pub(crate) type SinkConsumer<W> = BaseConsumer<SinkContext<W>>;

impl<W: BatchWriter> SinkContext<W> {
    pub fn new(
        settings: LaneSettings,
        tracker: OffsetTracker<PartitionId>,
        runtime: Handle,
        writer: Arc<W>,
        metrics: Arc<KafkaMetrics>,
    ) -> SinkContext<W> {
        let (reports_tx, reports) = mpsc::unbounded_channel();
        SinkContext {
            session: Mutex::new(Session {
                lanes: HashMap::new(),
                tracker,
                reports,
                reports_tx,
                settings,
                runtime,
                writer,
                metrics: metrics.clone(),
                worker_lost: false,
                split_failed: false,
                draining: watch::channel(false).0,
            }),
            metrics,
            lag: AtomicI64::new(i64::MIN),
            failed_commits: Mutex::new(Vec::new()),
            consumer: OnceLock::new(),
        }
    }

    /// Must be called before subscribing: the assign callback splits queues off it.
    pub fn set_consumer(&self, consumer: &Arc<SinkConsumer<W>>) {
        let _ = self.consumer.set(Arc::downgrade(consumer));
    }

    /// Never held across `poll`: the rebalance callbacks take it.
    pub fn session(&self) -> MutexGuard<'_, Session<W>> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The total lag of the latest statistics not read yet.
    pub fn take_lag(&self) -> Option<i64> {
        let lag = self.lag.swap(i64::MIN, Ordering::Relaxed);
        (lag != i64::MIN).then_some(lag)
    }

    pub fn take_failed_commits(&self) -> Vec<(PartitionId, i64)> {
        std::mem::take(
            &mut *self
                .failed_commits
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

impl<W: BatchWriter> ClientContext for SinkContext<W> {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", facility = fac, "{message}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", facility = fac, "{message}"),
            L::Notice | L::Info => {
                tracing::info!(target: "librdkafka", facility = fac, "{message}")
            }
            L::Debug => tracing::debug!(target: "librdkafka", facility = fac, "{message}"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        let mut total = 0i64;
        let mut gauges = self.metrics.gauges();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                let id = PartitionId {
                    topic: topic.clone(),
                    partition: *partition,
                };
                // Only partitions this consumer owns have a gauge; -1 means unknown.
                if let Some(gauge) = gauges.get_mut(&id) {
                    gauge.lag = (p.consumer_lag >= 0).then_some(p.consumer_lag);
                    total += p.consumer_lag.max(0);
                }
            }
        }
        self.lag.store(total, Ordering::Relaxed);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(cause = %error, reason, "kafka client error");
    }
}

impl<W: BatchWriter> ConsumerContext for SinkContext<W> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            // Before librdkafka starts fetching them: no record of theirs reaches the main
            // queue.
            Rebalance::Assign(tpl) => {
                let partitions = partition_ids(tpl);
                tracing::info!(partitions = ?partitions, "partitions assigned");
                match self.consumer.get().and_then(Weak::upgrade) {
                    Some(consumer) => self.session().assign(&consumer, &partitions),
                    None => {
                        tracing::error!("assigned partitions before the consumer was known");
                        self.session().split_failed = true;
                    }
                }
            }
            Rebalance::Revoke(tpl) => {
                let partitions = partition_ids(tpl);
                tracing::info!(partitions = ?partitions, "partitions revoked");
                self.session().revoke(consumer, &partitions);
            }
            Rebalance::Error(e) => tracing::warn!(cause = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            KafkaMetrics::add(&self.metrics.commit_failures, 1);
            tracing::warn!(cause = %e, "offset commit failed; offering it again");
            let mut failed = self
                .failed_commits
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for elem in offsets.elements() {
                if let Offset::Offset(next) = elem.offset() {
                    failed.push((
                        PartitionId {
                            topic: elem.topic().to_owned(),
                            partition: elem.partition(),
                        },
                        next,
                    ));
                }
            }
        }
    }
}

fn partition_ids(tpl: &TopicPartitionList) -> Vec<PartitionId> {
    tpl.elements()
        .iter()
        .map(|e| PartitionId {
            topic: e.topic().to_owned(),
            partition: e.partition(),
        })
        .collect()
}

impl<W: BatchWriter> Session<W> {
    fn assign(&mut self, consumer: &Arc<SinkConsumer<W>>, partitions: &[PartitionId]) {
        // Every rebalance ends here (often with nothing new). A commit sent while the group
        // was rebalancing can be refused (ILLEGAL_GENERATION) without the refusal reaching
        // `commit_callback` (seen in sink_kafka's group test), so the partitions kept offer
        // their written offsets again; committing an offset twice is harmless.
        let now = Instant::now();
        let kept: Vec<(PartitionId, i64)> = self
            .lanes
            .keys()
            .filter_map(|id| Some((id.clone(), self.tracker.highest_written(id)? + 1)))
            .collect();
        self.tracker.commit_failed(&kept, now);
        for id in partitions {
            if self.lanes.contains_key(id) {
                continue;
            }
            let Some(queue) = consumer.split_partition_queue(&id.topic, id.partition) else {
                tracing::error!(partition = %id, "the partition's queue could not be split off");
                self.split_failed = true;
                continue;
            };
            let (revoke, revoked) = watch::channel(false);
            let in_hand = Arc::new(AtomicUsize::new(0));
            let worker = PartitionWorker {
                partition: id.clone(),
                queue,
                wake: Arc::new(Notify::new()),
                revoked,
                draining: self.draining.subscribe(),
                writer: self.writer.clone(),
                settings: self.settings.worker,
                reports: self.reports_tx.clone(),
                metrics: self.metrics.clone(),
                in_hand: in_hand.clone(),
            };
            let task = self.runtime.spawn(worker.run());
            self.lanes.insert(
                id.clone(),
                Lane {
                    in_hand,
                    revoke,
                    task,
                },
            );
            self.metrics.gauges().insert(id.clone(), Default::default());
            KafkaMetrics::add(&self.metrics.partitions_assigned, 1);
        }
    }

    /// Stops `partitions`' workers: each finishes the batch in hand within the revoke
    /// deadline (what its queue still holds is left to the next owner); commits what was
    /// written and forgets the rest.
    pub(crate) fn revoke(&mut self, consumer: &SinkConsumer<W>, partitions: &[PartitionId]) {
        let deadline = Instant::now() + self.settings.revoke_deadline;
        let mut stopping = Vec::new();
        for id in partitions {
            if let Some(lane) = self.lanes.remove(id) {
                lane.revoke.send_replace(true);
                stopping.push(lane);
            }
        }
        self.join(stopping, deadline);
        self.absorb_reports(Instant::now());
        let offsets = self.tracker.take_commit_for(partitions);
        if consumer.assignment_lost() {
            tracing::warn!("assignment lost; the revoked partitions' offsets cannot be committed");
        } else {
            self.commit(consumer, offsets, CommitMode::Sync);
        }
        let mut gauges = self.metrics.gauges();
        for id in partitions {
            self.tracker.forget(id);
            gauges.remove(id);
        }
        KafkaMetrics::add(&self.metrics.partitions_revoked, partitions.len() as u64);
    }

    /// Revokes every partition this session holds (the session is ending on an error).
    pub(crate) fn revoke_all(&mut self, consumer: &SinkConsumer<W>) {
        let all: Vec<PartitionId> = self.lanes.keys().cloned().collect();
        self.revoke(consumer, &all);
    }

    /// Shutdown: every worker finishes the batch in hand (records still in librdkafka's
    /// queue were never taken and go to the partition's next reader); waits for them until
    /// `deadline`, commits.
    pub(crate) fn drain(&mut self, consumer: &SinkConsumer<W>, deadline: Instant) {
        self.draining.send_replace(true);
        let stopping: Vec<Lane> = self.lanes.drain().map(|(_, lane)| lane).collect();
        self.join(stopping, deadline);
        self.absorb_reports(Instant::now());
        let offsets = self.tracker.take_commit();
        self.commit(consumer, offsets, CommitMode::Sync);
    }

    /// Waits for the workers until `deadline`, then aborts the rest (their records count as
    /// dropped; what the writer acknowledged before is already reported).
    fn join(&mut self, lanes: Vec<Lane>, deadline: Instant) {
        if lanes.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::from_std(deadline);
        let runtime = self.runtime.clone();
        let lost = runtime.block_on(async {
            let mut lost = false;
            for lane in lanes {
                let mut task = lane.task;
                match tokio::time::timeout_at(deadline, &mut task).await {
                    Ok(Ok(WorkerExit::WriterStopped)) => lost = true,
                    Ok(_) => {}
                    Err(_) => {
                        task.abort();
                        let _ = task.await;
                    }
                }
                drop(lane.revoke);
            }
            lost
        });
        self.worker_lost |= lost;
    }

    /// Notices workers that ended on their own and refreshes the partition gauges.
    pub(crate) fn pump(&mut self) {
        let mut gauges = self.metrics.gauges();
        for (id, lane) in &self.lanes {
            if lane.task.is_finished() {
                self.worker_lost = true;
            }
            if let Some(gauge) = gauges.get_mut(id) {
                gauge.buffered = lane.in_hand.load(Ordering::Relaxed);
            }
        }
    }

    /// Whether a record of `id` polled from the main queue belongs to a live lane (it
    /// should not exist: the partition's queue was split off before fetching began).
    pub(crate) fn owns(&self, id: &PartitionId) -> bool {
        self.lanes.contains_key(id)
    }

    /// Feeds the workers' reports into the tracker; returns how many records they cover.
    pub(crate) fn absorb_reports(&mut self, now: Instant) -> usize {
        let mut records = 0;
        while let Ok(w) = self.reports.try_recv() {
            records += w.records;
            self.tracker
                .written(w.partition, w.last_offset, w.records, now);
        }
        records
    }

    pub(crate) fn commit(
        &mut self,
        consumer: &SinkConsumer<W>,
        offsets: Vec<(PartitionId, i64)>,
        mode: CommitMode,
    ) {
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (id, next) in &offsets {
            if let Err(e) = tpl.add_partition_offset(&id.topic, id.partition, Offset::Offset(*next))
            {
                tracing::warn!(partition = %id, cause = %e, "offset not committable");
            }
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                KafkaMetrics::add(&self.metrics.commits, 1);
                let mut gauges = self.metrics.gauges();
                for (id, next) in &offsets {
                    if let Some(gauge) = gauges.get_mut(id) {
                        gauge.committed = Some(*next);
                    }
                }
            }
            Err(e) => {
                KafkaMetrics::add(&self.metrics.commit_failures, 1);
                tracing::warn!(cause = %e, "offset commit failed; offering it again");
                self.tracker.commit_failed(&offsets, Instant::now());
            }
        }
    }

    /// Nothing polled is waiting or being written.
    pub(crate) fn idle(&self) -> bool {
        self.metrics.in_flight.load(Ordering::Relaxed) == 0
    }
}
