//! Counters and gauges of the Kafka source, for the ops layer and for tests.
//!
//! Counters are atomics the pipeline bumps in place; [`KafkaMetrics::snapshot`] reads them
//! all into a plain value.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A partition of a topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub topic: String,
    pub partition: i32,
}

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// What the source knows about one assigned partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionGauge {
    /// Records the partition's worker took from its queue and has not written yet (at most
    /// one batch; the rest waits in librdkafka's bounded prefetch).
    pub buffered: usize,
    /// Always false: partitions are no longer paused (kept for the metrics' shape).
    pub paused: bool,
    /// Consumer lag from the client's statistics (high watermark minus committed offset).
    pub lag: Option<i64>,
    /// The next offset last committed for this partition.
    pub committed: Option<i64>,
}

#[derive(Debug, Default)]
pub struct KafkaMetrics {
    pub(crate) records_received: AtomicU64,
    pub(crate) records_applied: AtomicU64,
    pub(crate) records_dead_lettered: AtomicU64,
    pub(crate) batches_written: AtomicU64,
    pub(crate) write_retries: AtomicU64,
    pub(crate) write_failures: AtomicU64,
    pub(crate) stale_dropped: AtomicU64,
    pub(crate) pauses: AtomicU64,
    pub(crate) resumes: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) commit_failures: AtomicU64,
    pub(crate) partitions_assigned: AtomicU64,
    pub(crate) partitions_revoked: AtomicU64,
    pub(crate) rebuilds: AtomicU64,
    pub(crate) stalls: AtomicU64,
    pub(crate) fatal_errors: AtomicU64,
    pub(crate) buffered_high_water: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) partitions: Mutex<BTreeMap<PartitionId, PartitionGauge>>,
}

/// A point-in-time copy of [`KafkaMetrics`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaMetricsSnapshot {
    /// Records polled from Kafka.
    pub records_received: u64,
    /// Records the writer applied.
    pub records_applied: u64,
    /// Records the writer sent to `dead_letters`.
    pub records_dead_lettered: u64,
    pub batches_written: u64,
    /// Transaction retries inside the writer plus whole-batch retries by the worker.
    pub write_retries: u64,
    /// Batch writes that returned an error (each is retried; offsets wait).
    pub write_failures: u64,
    /// Records dropped because their partition was revoked before they were written.
    pub stale_dropped: u64,
    /// Always 0 since each worker polls its own partition queue (nothing is paused); kept
    /// so dashboards keep their series.
    pub pauses: u64,
    pub resumes: u64,
    pub commits: u64,
    pub commit_failures: u64,
    pub partitions_assigned: u64,
    pub partitions_revoked: u64,
    /// Consumers rebuilt by the supervisor after a fatal error, a stall or a lost worker.
    pub rebuilds: u64,
    pub stalls: u64,
    /// Fatal client errors (a fenced static member, say); each ends in a rebuild.
    pub fatal_errors: u64,
    /// The most records one partition's worker ever held (its largest batch).
    pub buffered_high_water: u64,
    /// Records polled and not yet written or dropped.
    pub in_flight: u64,
    pub partitions: BTreeMap<PartitionId, PartitionGauge>,
}

impl KafkaMetrics {
    pub fn snapshot(&self) -> KafkaMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        KafkaMetricsSnapshot {
            records_received: get(&self.records_received),
            records_applied: get(&self.records_applied),
            records_dead_lettered: get(&self.records_dead_lettered),
            batches_written: get(&self.batches_written),
            write_retries: get(&self.write_retries),
            write_failures: get(&self.write_failures),
            stale_dropped: get(&self.stale_dropped),
            pauses: get(&self.pauses),
            resumes: get(&self.resumes),
            commits: get(&self.commits),
            commit_failures: get(&self.commit_failures),
            partitions_assigned: get(&self.partitions_assigned),
            partitions_revoked: get(&self.partitions_revoked),
            rebuilds: get(&self.rebuilds),
            stalls: get(&self.stalls),
            fatal_errors: get(&self.fatal_errors),
            buffered_high_water: get(&self.buffered_high_water),
            in_flight: get(&self.in_flight),
            partitions: self.gauges().clone(),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn gauges(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<PartitionId, PartitionGauge>> {
        // A panic elsewhere while holding the lock leaves plain numbers behind: still readable.
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
