//! One consumer's session: the per-partition lanes (bounded channel, parked records,
//! worker task), the offset tracker, and the librdkafka callbacks that drive them on
//! rebalance. Everything here runs on the poll thread, the consumer's only owner.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::metrics::{KafkaMetrics, PartitionId};
use super::partition::{PartitionWorker, WorkerExit, WorkerSettings, Written};
use crate::record::{BatchWriter, Raw};
use crate::worker::OffsetTracker;

/// Sizes and deadlines a session works with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LaneSettings {
    pub capacity: usize,
    /// A paused partition resumes once its channel holds no more than this.
    pub low_water: usize,
    pub revoke_deadline: Duration,
    pub worker: WorkerSettings,
}

struct Lane {
    /// `None` once closed for the shutdown drain.
    tx: Option<mpsc::Sender<Raw>>,
    /// Records polled while the channel was full; the partition is paused meanwhile.
    parked: VecDeque<Raw>,
    paused: bool,
    /// Kept alive until the worker is joined: dropping it reads as a revocation.
    revoke: watch::Sender<bool>,
    task: JoinHandle<WorkerExit>,
}

impl Lane {
    fn buffered(&self, capacity: usize) -> usize {
        let queued = self
            .tx
            .as_ref()
            .map_or(0, |tx| capacity.saturating_sub(tx.capacity()));
        queued + self.parked.len()
    }
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
}

/// The consumer's context: librdkafka's callbacks reach the session through it.
pub(crate) struct SinkContext<W> {
    session: Mutex<Session<W>>,
    pub(crate) metrics: Arc<KafkaMetrics>,
    /// Total lag from the latest statistics, `i64::MIN` once read.
    lag: AtomicI64,
    failed_commits: Mutex<Vec<(PartitionId, i64)>>,
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
            }),
            metrics,
            lag: AtomicI64::new(i64::MIN),
            failed_commits: Mutex::new(Vec::new()),
        }
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
            Rebalance::Revoke(tpl) => {
                let partitions = partition_ids(tpl);
                tracing::info!(partitions = ?partitions, "partitions revoked");
                self.session().revoke(consumer, &partitions);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(cause = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions = partition_ids(tpl);
            tracing::info!(partitions = ?partitions, "partitions assigned");
            self.session().assign(&partitions);
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

fn one_partition(id: &PartitionId) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&id.topic, id.partition);
    tpl
}

impl<W: BatchWriter> Session<W> {
    fn assign(&mut self, partitions: &[PartitionId]) {
        for id in partitions {
            if self.lanes.contains_key(id) {
                continue;
            }
            let (tx, rx) = mpsc::channel(self.settings.capacity.max(1));
            let (revoke, revoked) = watch::channel(false);
            let worker = PartitionWorker {
                partition: id.clone(),
                records: rx,
                revoked,
                writer: self.writer.clone(),
                settings: self.settings.worker,
                reports: self.reports_tx.clone(),
                metrics: self.metrics.clone(),
            };
            let task = self.runtime.spawn(worker.run());
            self.lanes.insert(
                id.clone(),
                Lane {
                    tx: Some(tx),
                    parked: VecDeque::new(),
                    paused: false,
                    revoke,
                    task,
                },
            );
            self.metrics.gauges().insert(id.clone(), Default::default());
            KafkaMetrics::add(&self.metrics.partitions_assigned, 1);
        }
    }

    /// Stops routing to `partitions`, lets their workers finish the batch in hand within the
    /// revoke deadline, commits what was written and forgets the rest (stale).
    pub(crate) fn revoke(&mut self, consumer: &SinkConsumer<W>, partitions: &[PartitionId]) {
        let deadline = Instant::now() + self.settings.revoke_deadline;
        let mut stopping = Vec::new();
        for id in partitions {
            if let Some(mut lane) = self.lanes.remove(id) {
                self.drop_parked(&mut lane);
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

    /// Shutdown: hands the parked records to the workers, closes every channel so the
    /// workers write all they were given, waits for them until `deadline`, commits.
    pub(crate) fn drain(&mut self, consumer: &SinkConsumer<W>, deadline: Instant) {
        let runtime = self.runtime.clone();
        let tokio_deadline = tokio::time::Instant::from_std(deadline);
        for lane in self.lanes.values_mut() {
            let Some(tx) = lane.tx.take() else { continue };
            runtime.block_on(async {
                while let Some(raw) = lane.parked.pop_front() {
                    match tokio::time::timeout_at(tokio_deadline, tx.send(raw)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(mpsc::error::SendError(raw))) => {
                            lane.parked.push_front(raw);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            });
        }
        let lanes: Vec<Lane> = self.lanes.drain().map(|(_, lane)| lane).collect();
        let mut stopping = Vec::with_capacity(lanes.len());
        for mut lane in lanes {
            self.drop_parked(&mut lane);
            stopping.push(lane);
        }
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

    fn drop_parked(&self, lane: &mut Lane) {
        let n = lane.parked.len() as u64;
        lane.parked.clear();
        if n > 0 {
            KafkaMetrics::add(&self.metrics.stale_dropped, n);
            self.metrics.in_flight.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Hands a polled record to its partition's worker, parking it and pausing the
    /// partition when the channel is full. Records of a partition not (or no longer)
    /// assigned are stale and dropped.
    pub(crate) fn route(&mut self, consumer: &SinkConsumer<W>, id: PartitionId, raw: Raw) {
        let capacity = self.settings.capacity;
        let Some(lane) = self.lanes.get_mut(&id) else {
            KafkaMetrics::add(&self.metrics.stale_dropped, 1);
            return;
        };
        KafkaMetrics::add(&self.metrics.records_received, 1);
        KafkaMetrics::add(&self.metrics.in_flight, 1);
        if lane.paused || !lane.parked.is_empty() {
            lane.parked.push_back(raw);
        } else if let Some(tx) = &lane.tx {
            match tx.try_send(raw) {
                Ok(()) => {}
                Err(TrySendError::Full(raw)) => lane.parked.push_back(raw),
                Err(TrySendError::Closed(raw)) => {
                    lane.parked.push_back(raw);
                    self.worker_lost = true;
                }
            }
        }
        if !lane.paused && !lane.parked.is_empty() {
            match consumer.pause(&one_partition(&id)) {
                Ok(()) => {
                    lane.paused = true;
                    KafkaMetrics::add(&self.metrics.pauses, 1);
                }
                Err(e) => tracing::warn!(partition = %id, cause = %e, "pause failed"),
            }
        }
        let buffered = lane.buffered(capacity) as u64;
        self.metrics
            .buffered_high_water
            .fetch_max(buffered, Ordering::Relaxed);
    }

    /// Moves parked records into channels that have room and resumes partitions whose
    /// channel drained to the low-water mark.
    pub(crate) fn pump(&mut self, consumer: &SinkConsumer<W>) {
        let capacity = self.settings.capacity;
        let mut gauges = self.metrics.gauges();
        for (id, lane) in &mut self.lanes {
            if let Some(tx) = &lane.tx {
                while let Some(raw) = lane.parked.pop_front() {
                    match tx.try_send(raw) {
                        Ok(()) => {}
                        Err(TrySendError::Full(raw)) => {
                            lane.parked.push_front(raw);
                            break;
                        }
                        Err(TrySendError::Closed(raw)) => {
                            lane.parked.push_front(raw);
                            self.worker_lost = true;
                            break;
                        }
                    }
                }
                let queued = capacity.saturating_sub(tx.capacity());
                if lane.paused && lane.parked.is_empty() && queued <= self.settings.low_water {
                    match consumer.resume(&one_partition(id)) {
                        Ok(()) => {
                            lane.paused = false;
                            KafkaMetrics::add(&self.metrics.resumes, 1);
                        }
                        Err(e) => tracing::warn!(partition = %id, cause = %e, "resume failed"),
                    }
                }
            }
            if let Some(gauge) = gauges.get_mut(id) {
                gauge.buffered = lane.buffered(capacity);
                gauge.paused = lane.paused;
            }
        }
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
