//! Grouped commits: when the store thread turns pending Changes into one transaction.
//!
//! Every commit that carries events to publish costs an fsync of the WAL (see
//! [`Store`](super::Store) on durability), so commits are grouped to spare the flash. Events wait
//! at most `max_delay` (they hold up publishing); local-only Changes (`Seen`) may wait the
//! longer `local_delay` (they only move `last_seen`). A batch of `max_changes` goes at once.

use std::time::{Duration, Instant};

use crate::registry::Change;

/// The grouped-commit policy and the Changes waiting for it. Pure: `now` is an argument.
#[derive(Debug)]
pub struct CommitBatcher {
    max_delay: Duration,
    local_delay: Duration,
    max_changes: usize,
    pending: Vec<Change>,
    oldest: Option<Instant>,
    oldest_event: Option<Instant>,
}

impl CommitBatcher {
    /// `max_changes` is at least 1.
    pub fn new(max_delay: Duration, local_delay: Duration, max_changes: usize) -> Self {
        CommitBatcher {
            max_delay,
            local_delay: local_delay.max(max_delay),
            max_changes: max_changes.max(1),
            pending: Vec::new(),
            oldest: None,
            oldest_event: None,
        }
    }

    pub fn push(&mut self, changes: impl IntoIterator<Item = Change>, now: Instant) {
        for change in changes {
            self.oldest.get_or_insert(now);
            if change.seq().is_some() {
                self.oldest_event.get_or_insert(now);
            }
            self.pending.push(change);
        }
    }

    /// When the pending Changes must be committed at the latest; `None` when there are none.
    pub fn deadline(&self) -> Option<Instant> {
        let local = self.oldest.map(|at| at + self.local_delay);
        let event = self.oldest_event.map(|at| at + self.max_delay);
        match (local, event) {
            (Some(local), Some(event)) => Some(local.min(event)),
            (local, event) => local.or(event),
        }
    }

    /// Whether the pending Changes should be committed now.
    pub fn is_due(&self, now: Instant) -> bool {
        self.pending.len() >= self.max_changes || self.deadline().is_some_and(|d| d <= now)
    }

    /// Hands over the pending Changes, in order, and starts a new batch.
    pub fn take(&mut self) -> Vec<Change> {
        self.oldest = None;
        self.oldest_event = None;
        std::mem::take(&mut self.pending)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use rae_proto::{CloseReason, Mac, SessionId};

    use super::*;
    use crate::registry::Cause;

    fn seen() -> Change {
        Change::Seen {
            session: SessionId::from_bytes([1; 16]),
            last_seen_ms: 5,
        }
    }

    fn closed() -> Change {
        Change::Closed {
            session: SessionId::from_bytes([1; 16]),
            seq: 2,
            mac: Mac([2, 0, 0, 0, 0, 1]),
            reason: CloseReason::Gone,
            cause: Cause {
                at_ms: 5,
                summary: "gone".into(),
            },
        }
    }

    fn batcher() -> CommitBatcher {
        CommitBatcher::new(Duration::from_millis(100), Duration::from_secs(2), 3)
    }

    #[test]
    fn empty_batcher_never_flushes() {
        let b = batcher();
        assert_eq!(b.deadline(), None);
        assert!(!b.is_due(Instant::now() + Duration::from_secs(3600)));
    }

    #[test]
    fn local_changes_wait_longer_than_events() {
        let t0 = Instant::now();
        let mut b = batcher();
        b.push([seen()], t0);
        assert_eq!(b.deadline(), Some(t0 + Duration::from_secs(2)));
        assert!(!b.is_due(t0 + Duration::from_millis(500)));
        b.push([closed()], t0 + Duration::from_millis(500));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(600)));
        assert!(!b.is_due(t0 + Duration::from_millis(599)));
        assert!(b.is_due(t0 + Duration::from_millis(600)));
        assert_eq!(b.take(), [seen(), closed()]);
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn a_full_batch_is_due_at_once() {
        let t0 = Instant::now();
        let mut b = batcher();
        b.push([seen(), seen()], t0);
        assert!(!b.is_due(t0));
        b.push([seen()], t0);
        assert!(b.is_due(t0));
        assert_eq!(b.len(), 3);
    }
}
