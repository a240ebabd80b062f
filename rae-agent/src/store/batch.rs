//! Grouped commits: when the store thread turns pending Changes into one transaction.
//!
//! Every commit that carries events to publish costs an fsync of the WAL (see
//! [`Store`](super::Store) on durability), and an event is published only once its commit
//! returned, so the commit policy trades detection latency against flash writes:
//!
//! - **Quiet: at once.** An event that arrives when no commit with events ended within the
//!   current hold-off is committed at once: a device that joins a quiet LAN is published within
//!   one fsync.
//! - **Under load: batched.** An event that arrives within the hold-off after the last commit
//!   with events waits for the hold-off to end and goes with everything that came meanwhile.
//!   The hold-off starts at `quiet_gap` and doubles with every commit made under load, up to
//!   `max_delay`; a quiet commit resets it. So a burst costs a handful of commits, sustained
//!   churn settles at one commit per `max_delay` (the fixed batch of before), and no event waits
//!   longer than `max_delay`.
//! - A batch of `max_changes` goes at once; local-only Changes (`Seen`, which only move
//!   `last_seen` and commit without an fsync) wait up to `local_delay` unless an event commit
//!   takes them along.
//!
//! The store thread adds one thing the policy cannot see: before it commits it takes every
//! request already queued in its channel, so changes that arrived while the previous commit
//! ran go into the next one (group commit).
//!
//! With `adaptive` off, every event waits `max_delay` from the first pending one (the fixed
//! batch the agent used before; kept for side-by-side measurements and as an operator's
//! choice when flash wear matters more than latency).

use std::time::{Duration, Instant};

use crate::registry::Change;

/// The settings of the grouped-commit policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitPolicy {
    /// Quiet events commit at once; off: every event waits `max_delay` (a fixed batch).
    pub adaptive: bool,
    /// The first hold-off after a commit with events.
    pub quiet_gap: Duration,
    /// Longest wait of an event before its commit (the longest hold-off).
    pub max_delay: Duration,
    /// Longest wait of a local-only change (`Seen`) before its commit.
    pub local_delay: Duration,
    /// A batch this large is committed at once.
    pub max_changes: usize,
}

impl Default for CommitPolicy {
    fn default() -> Self {
        CommitPolicy {
            adaptive: true,
            quiet_gap: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            local_delay: Duration::from_secs(2),
            max_changes: 1000,
        }
    }
}

/// The last commit that carried events, as the policy remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastCommit {
    /// When it returned.
    pub ended: Instant,
    /// Events arriving before `ended + hold` are batched.
    pub hold: Duration,
}

/// The grouped-commit policy and the Changes waiting for it. Pure: `now` is an argument.
#[derive(Debug)]
pub struct CommitBatcher {
    policy: CommitPolicy,
    pending: Vec<Change>,
    oldest: Option<Instant>,
    oldest_event: Option<Instant>,
    last_commit: Option<LastCommit>,
    /// Whether the batch handed over by `take` was gathered under load (see `committed`).
    taken_under_load: Option<bool>,
}

impl CommitBatcher {
    /// `max_changes` is raised to at least 1, `max_delay` to at least `quiet_gap` and
    /// `local_delay` to at least `max_delay`.
    pub fn new(policy: CommitPolicy) -> Self {
        let max_delay = policy.max_delay.max(policy.quiet_gap);
        CommitBatcher {
            policy: CommitPolicy {
                max_delay,
                local_delay: policy.local_delay.max(max_delay),
                max_changes: policy.max_changes.max(1),
                ..policy
            },
            pending: Vec::new(),
            oldest: None,
            oldest_event: None,
            last_commit: None,
            taken_under_load: None,
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

    /// Whether an event that arrived at `at` came within the hold-off of the last commit.
    fn under_load(&self, at: Instant) -> bool {
        self.last_commit
            .is_some_and(|last| at < last.ended + last.hold)
    }

    /// When the pending Changes must be committed at the latest; `None` when there are none.
    pub fn deadline(&self) -> Option<Instant> {
        let local = self.oldest.map(|at| at + self.policy.local_delay);
        let event = self.oldest_event.map(|at| match self.policy.adaptive {
            false => at + self.policy.max_delay,
            // `under_load(at)` means `ended + hold > at`, and `hold <= max_delay`.
            true => match self.last_commit {
                Some(last) if self.under_load(at) => last.ended + last.hold,
                _ => at,
            },
        });
        match (local, event) {
            (Some(local), Some(event)) => Some(local.min(event)),
            (local, event) => local.or(event),
        }
    }

    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.policy.max_changes
    }

    /// Whether the pending Changes should be committed now.
    pub fn is_due(&self, now: Instant) -> bool {
        self.is_full() || self.deadline().is_some_and(|d| d <= now)
    }

    /// Hands over the pending Changes, in order, and starts a new batch. Call
    /// [`CommitBatcher::committed`] once the commit returned.
    pub fn take(&mut self) -> Vec<Change> {
        self.taken_under_load = self.oldest_event.map(|at| self.under_load(at));
        self.oldest = None;
        self.oldest_event = None;
        std::mem::take(&mut self.pending)
    }

    /// Records that the batch last taken was committed at `ended`: a commit with events
    /// starts the next hold-off, doubled when the batch was gathered under load.
    pub fn committed(&mut self, ended: Instant) {
        let Some(under_load) = self.taken_under_load.take() else {
            return; // Only local Changes: no fsync, no hold-off.
        };
        let hold = match (under_load, self.last_commit) {
            (true, Some(last)) => last.hold.saturating_mul(2),
            _ => self.policy.quiet_gap,
        };
        self.last_commit = Some(LastCommit {
            ended,
            hold: hold.clamp(self.policy.quiet_gap, self.policy.max_delay),
        });
    }

    pub fn last_commit(&self) -> Option<LastCommit> {
        self.last_commit
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
