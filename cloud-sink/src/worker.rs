//! Ordered batching per partition or lane, and offset tracking; sans-IO (`now` is an argument).
//!
//! - [`Batcher`] groups a partition's records into batches of up to N records or T time,
//!   whichever comes first, keeping arrival order.
//! - [`OffsetTracker`] knows, per partition, the highest offset whose batch committed in the
//!   database, and what to commit to Kafka next (in batches of N records or T time).
//!
//! Neither reads a clock nor touches a socket, so the rules are unit-tested in microseconds;
//! the Kafka source drives them (`source::kafka`).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::record::Raw;

/// When a batch is complete: `max_records` records, or `max_wait` after its first record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_records: usize,
    pub max_wait: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_records: 1000,
            max_wait: Duration::from_secs(1),
        }
    }
}

/// The batch a partition worker is filling.
#[derive(Debug)]
pub struct Batcher {
    policy: BatchPolicy,
    records: Vec<Raw>,
    opened_at: Option<Instant>,
}

impl Batcher {
    pub fn new(policy: BatchPolicy) -> Batcher {
        // A zero limit would make a batch that is never full; one record is the floor.
        let policy = BatchPolicy {
            max_records: policy.max_records.max(1),
            ..policy
        };
        Batcher {
            policy,
            records: Vec::new(),
            opened_at: None,
        }
    }

    pub fn push(&mut self, raw: Raw, now: Instant) {
        if self.records.is_empty() {
            self.opened_at = Some(now);
        }
        self.records.push(raw);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.records.len() >= self.policy.max_records
    }

    /// When the open batch must go out even if not full; `None` while empty.
    pub fn due_at(&self) -> Option<Instant> {
        self.opened_at.map(|at| at + self.policy.max_wait)
    }

    /// Whether the batch should be written now.
    pub fn ready(&self, now: Instant) -> bool {
        self.is_full() || self.due_at().is_some_and(|due| now >= due)
    }

    /// Takes the batch, in arrival order, and starts a new one.
    pub fn take(&mut self) -> Vec<Raw> {
        self.opened_at = None;
        std::mem::take(&mut self.records)
    }
}

/// When written offsets go to Kafka: after `max_records` records or `max_wait` after the
/// first uncommitted one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitPolicy {
    pub max_records: usize,
    pub max_wait: Duration,
}

impl Default for CommitPolicy {
    fn default() -> Self {
        CommitPolicy {
            max_records: 1000,
            max_wait: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct PartitionOffsets {
    /// The highest offset whose batch the database committed.
    written: Option<i64>,
    /// The next offset last handed out for a Kafka commit.
    committed_next: Option<i64>,
}

/// Per partition (`K`), what the database has and what Kafka was told.
///
/// Kafka commits name the *next* offset to read, so a partition whose highest written
/// offset is 41 commits 42.
#[derive(Debug)]
pub struct OffsetTracker<K> {
    policy: CommitPolicy,
    partitions: HashMap<K, PartitionOffsets>,
    uncommitted_records: usize,
    first_uncommitted_at: Option<Instant>,
}

impl<K: Clone + Eq + Hash> OffsetTracker<K> {
    pub fn new(policy: CommitPolicy) -> OffsetTracker<K> {
        OffsetTracker {
            policy,
            partitions: HashMap::new(),
            uncommitted_records: 0,
            first_uncommitted_at: None,
        }
    }

    /// A batch of `records` ending at `last_offset` committed in the database.
    ///
    /// Offsets only move forward: a report older than what is already known is ignored.
    pub fn written(&mut self, partition: K, last_offset: i64, records: usize, now: Instant) {
        let entry = self.partitions.entry(partition).or_default();
        if entry.written.is_some_and(|w| w >= last_offset) {
            return;
        }
        entry.written = Some(last_offset);
        self.uncommitted_records += records;
        self.first_uncommitted_at.get_or_insert(now);
    }

    /// The highest offset of `partition` the database committed.
    pub fn highest_written(&self, partition: &K) -> Option<i64> {
        self.partitions.get(partition).and_then(|p| p.written)
    }

    /// Whether a commit is due: enough records, or the oldest uncommitted one waited long enough.
    pub fn commit_due(&self, now: Instant) -> bool {
        self.uncommitted_records >= self.policy.max_records
            || self.commit_due_at().is_some_and(|due| now >= due)
    }

    /// When the next commit becomes due by time; `None` when nothing waits.
    pub fn commit_due_at(&self) -> Option<Instant> {
        self.first_uncommitted_at
            .map(|first| first + self.policy.max_wait)
    }

    /// Every partition whose written offset moved since its last commit, with the next
    /// offset to commit; marks them committed.
    pub fn take_commit(&mut self) -> Vec<(K, i64)> {
        self.uncommitted_records = 0;
        self.first_uncommitted_at = None;
        let mut out = Vec::new();
        for (key, offsets) in &mut self.partitions {
            if let Some(next) = Self::advance(offsets) {
                out.push((key.clone(), next));
            }
        }
        out
    }

    /// Like [`OffsetTracker::take_commit`], for the named partitions only (a revocation).
    pub fn take_commit_for(&mut self, partitions: &[K]) -> Vec<(K, i64)> {
        let mut out = Vec::new();
        for key in partitions {
            if let Some(next) = self.partitions.get_mut(key).and_then(Self::advance) {
                out.push((key.clone(), next));
            }
        }
        out
    }

    /// A commit failed: offer these partitions again in the next commit.
    pub fn commit_failed(&mut self, failed: &[(K, i64)], now: Instant) {
        for (key, next) in failed {
            if let Some(offsets) = self.partitions.get_mut(key) {
                if offsets.committed_next == Some(*next) {
                    offsets.committed_next = None;
                    self.first_uncommitted_at.get_or_insert(now);
                }
            }
        }
    }

    /// The partition left this consumer: whatever it knew is the next owner's business.
    pub fn forget(&mut self, partition: &K) {
        self.partitions.remove(partition);
    }

    fn advance(offsets: &mut PartitionOffsets) -> Option<i64> {
        let next = offsets.written? + 1;
        if offsets.committed_next == Some(next) {
            return None;
        }
        offsets.committed_next = Some(next);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Origin;

    fn raw(offset: i64) -> Raw {
        Raw {
            topic: Some("rae/v1/A/devices/s".into()),
            payload: vec![offset as u8],
            origin: Origin::Kafka {
                topic: "t".into(),
                partition: 0,
                offset,
            },
        }
    }

    fn offsets(batch: &[Raw]) -> Vec<i64> {
        batch
            .iter()
            .map(|r| match r.origin {
                Origin::Kafka { offset, .. } => offset,
                Origin::Mqtt { .. } => -1,
            })
            .collect()
    }

    #[test]
    fn a_batch_is_ready_when_full() {
        let now = Instant::now();
        let mut b = Batcher::new(BatchPolicy {
            max_records: 3,
            max_wait: Duration::from_secs(1),
        });
        assert!(!b.ready(now));
        assert_eq!(b.due_at(), None);
        b.push(raw(1), now);
        b.push(raw(2), now);
        assert!(!b.ready(now));
        b.push(raw(3), now);
        assert!(b.ready(now));
        assert_eq!(offsets(&b.take()), vec![1, 2, 3]);
        assert!(b.is_empty());
        assert_eq!(b.due_at(), None);
    }

    #[test]
    fn a_batch_is_ready_after_max_wait_from_its_first_record() {
        let t0 = Instant::now();
        let mut b = Batcher::new(BatchPolicy {
            max_records: 100,
            max_wait: Duration::from_millis(500),
        });
        b.push(raw(1), t0);
        b.push(raw(2), t0 + Duration::from_millis(400));
        assert_eq!(b.due_at(), Some(t0 + Duration::from_millis(500)));
        assert!(!b.ready(t0 + Duration::from_millis(499)));
        assert!(b.ready(t0 + Duration::from_millis(500)));
        assert_eq!(offsets(&b.take()), vec![1, 2]);
        // The next batch's clock starts at its own first record.
        b.push(raw(3), t0 + Duration::from_secs(2));
        assert_eq!(
            b.due_at(),
            Some(t0 + Duration::from_secs(2) + Duration::from_millis(500))
        );
    }

    #[test]
    fn a_zero_record_limit_still_makes_batches() {
        let now = Instant::now();
        let mut b = Batcher::new(BatchPolicy {
            max_records: 0,
            max_wait: Duration::from_secs(1),
        });
        b.push(raw(7), now);
        assert!(b.ready(now));
        assert_eq!(b.len(), 1);
    }

    fn policy(max_records: usize) -> CommitPolicy {
        CommitPolicy {
            max_records,
            max_wait: Duration::from_secs(1),
        }
    }

    #[test]
    fn commits_name_the_next_offset_after_the_highest_written() {
        let now = Instant::now();
        let mut t = OffsetTracker::new(policy(1000));
        t.written(0, 9, 10, now);
        t.written(0, 19, 10, now);
        t.written(1, 4, 5, now);
        let mut commit = t.take_commit();
        commit.sort();
        assert_eq!(commit, vec![(0, 20), (1, 5)]);
        assert_eq!(t.highest_written(&0), Some(19));
        // Nothing new: nothing to commit.
        assert!(t.take_commit().is_empty());
        assert!(!t.commit_due(now + Duration::from_secs(10)));
    }

    #[test]
    fn a_commit_is_due_after_enough_records_or_enough_time() {
        let t0 = Instant::now();
        let mut t = OffsetTracker::new(policy(100));
        assert!(!t.commit_due(t0 + Duration::from_secs(100)));
        t.written(0, 49, 50, t0);
        assert!(!t.commit_due(t0));
        assert_eq!(t.commit_due_at(), Some(t0 + Duration::from_secs(1)));
        assert!(t.commit_due(t0 + Duration::from_secs(1)));
        t.written(0, 99, 50, t0 + Duration::from_millis(10));
        assert!(t.commit_due(t0 + Duration::from_millis(10)));
        t.take_commit();
        assert!(!t.commit_due(t0 + Duration::from_secs(5)));
        assert_eq!(t.commit_due_at(), None);
    }

    #[test]
    fn offsets_never_move_backwards() {
        let now = Instant::now();
        let mut t = OffsetTracker::new(policy(1000));
        t.written(0, 30, 10, now);
        t.written(0, 20, 10, now);
        assert_eq!(t.highest_written(&0), Some(30));
        assert_eq!(t.take_commit(), vec![(0, 31)]);
    }

    #[test]
    fn a_revocation_commits_only_the_revoked_partitions() {
        let now = Instant::now();
        let mut t = OffsetTracker::new(policy(1000));
        t.written(0, 5, 6, now);
        t.written(1, 7, 8, now);
        assert_eq!(t.take_commit_for(&[1, 2]), vec![(1, 8)]);
        t.forget(&1);
        assert_eq!(t.highest_written(&1), None);
        assert_eq!(t.take_commit(), vec![(0, 6)]);
    }

    #[test]
    fn a_failed_commit_is_offered_again() {
        let now = Instant::now();
        let mut t = OffsetTracker::new(policy(1000));
        t.written(0, 5, 6, now);
        let commit = t.take_commit();
        assert_eq!(commit, vec![(0, 6)]);
        t.commit_failed(&commit, now);
        assert!(t.commit_due(now + Duration::from_secs(1)));
        assert_eq!(t.take_commit(), vec![(0, 6)]);
        // A failure of an older commit does not undo a newer one.
        t.written(0, 9, 4, now);
        let newer = t.take_commit();
        t.commit_failed(&commit, now);
        assert_eq!(newer, vec![(0, 10)]);
        assert!(t.take_commit().is_empty());
    }
}
