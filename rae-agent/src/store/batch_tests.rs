//! The grouped-commit policy: rules one by one, then a simulated store thread fed random
//! arrivals, which checks the bounds the module documentation promises.

use std::collections::VecDeque;

use proptest::prelude::*;
use rae_proto::{CloseReason, Mac, SessionId};

use super::*;
use crate::registry::Cause;

fn seen() -> Change {
    Change::Seen {
        session: SessionId::from_bytes([1; 16]),
        last_seen_ms: 5,
    }
}

fn event() -> Change {
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

const MS: Duration = Duration::from_millis(1);

fn policy() -> CommitPolicy {
    CommitPolicy {
        adaptive: true,
        quiet_gap: 10 * MS,
        max_delay: 100 * MS,
        local_delay: Duration::from_secs(2),
        max_changes: 3,
    }
}

/// Commits what is pending at `at`, the commit taking `took`.
fn commit(b: &mut CommitBatcher, at: Instant, took: Duration) -> Vec<Change> {
    assert!(b.is_due(at), "the batch is due at the commit");
    let changes = b.take();
    b.committed(at + took);
    changes
}

#[test]
fn an_empty_batcher_never_commits() {
    let b = CommitBatcher::new(policy());
    assert_eq!(b.deadline(), None);
    assert!(!b.is_due(Instant::now() + Duration::from_secs(3600)));
}

#[test]
fn the_first_event_after_a_quiet_period_commits_at_once() {
    let t0 = Instant::now();
    let mut b = CommitBatcher::new(policy());
    b.push([event()], t0);
    assert_eq!(b.deadline(), Some(t0), "no commit yet: quiet");
    commit(&mut b, t0, 2 * MS);
    // The hold-off after that commit is quiet_gap: 10 ms from its end at t0 + 2 ms.
    let later = t0 + 12 * MS;
    b.push([event()], later);
    assert_eq!(b.deadline(), Some(later), "arrived as the hold-off ended");
    commit(&mut b, later, 2 * MS);
    assert_eq!(
        b.last_commit().map(|l| l.hold),
        Some(10 * MS),
        "a quiet commit keeps the shortest hold-off"
    );
}

#[test]
fn under_load_events_wait_for_a_hold_off_that_doubles_up_to_max_delay() {
    let t0 = Instant::now();
    let mut b = CommitBatcher::new(policy());
    b.push([event()], t0);
    commit(&mut b, t0, MS);
    let mut ended = t0 + MS;
    let mut holds = Vec::new();
    for _ in 0..6 {
        // One event right after each commit: always under load.
        b.push([event()], ended + MS);
        let hold = b.last_commit().map(|l| l.hold).unwrap_or_default();
        holds.push(hold.as_millis());
        assert_eq!(b.deadline(), Some(ended + hold));
        assert!(
            !b.is_due(ended + hold - MS),
            "batched until the hold-off ends"
        );
        commit(&mut b, ended + hold, MS);
        ended += hold + MS;
    }
    assert_eq!(holds, [10, 20, 40, 80, 100, 100]);
    // Quiet again: at once, and the hold-off is back to quiet_gap.
    let quiet = ended + 100 * MS;
    b.push([event()], quiet);
    assert_eq!(b.deadline(), Some(quiet));
    commit(&mut b, quiet, MS);
    assert_eq!(b.last_commit().map(|l| l.hold), Some(10 * MS));
}

#[test]
fn local_changes_wait_local_delay_and_go_with_an_event() {
    let t0 = Instant::now();
    let mut b = CommitBatcher::new(policy());
    b.push([seen()], t0);
    assert_eq!(b.deadline(), Some(t0 + Duration::from_secs(2)));
    assert!(!b.is_due(t0 + 500 * MS));
    b.push([event()], t0 + 500 * MS);
    assert_eq!(b.deadline(), Some(t0 + 500 * MS));
    assert_eq!(commit(&mut b, t0 + 500 * MS, MS), [seen(), event()]);
    assert!(b.is_empty());
    assert_eq!(b.deadline(), None);
}

#[test]
fn a_commit_of_local_changes_alone_starts_no_hold_off() {
    let t0 = Instant::now();
    let mut b = CommitBatcher::new(policy());
    b.push([seen()], t0);
    commit(&mut b, t0 + Duration::from_secs(2), MS);
    assert_eq!(b.last_commit(), None, "no fsync, nothing to space out");
    let at = t0 + Duration::from_secs(2) + MS;
    b.push([event()], at);
    assert_eq!(b.deadline(), Some(at));
}

#[test]
fn a_full_batch_is_due_at_once_even_under_load() {
    let t0 = Instant::now();
    let mut b = CommitBatcher::new(policy());
    b.push([event()], t0);
    commit(&mut b, t0, MS);
    b.push([event(), seen()], t0 + 2 * MS);
    assert!(!b.is_due(t0 + 2 * MS));
    b.push([seen()], t0 + 2 * MS);
    assert!(b.is_full());
    assert!(b.is_due(t0 + 2 * MS));
    assert_eq!(b.len(), 3);
}

#[test]
fn without_adaptive_every_event_waits_the_fixed_batch() {
    let t0 = Instant::now();
    let mut b = CommitBatcher::new(CommitPolicy {
        adaptive: false,
        ..policy()
    });
    b.push([event()], t0);
    assert_eq!(
        b.deadline(),
        Some(t0 + 100 * MS),
        "quiet, and still batched"
    );
    b.push([event()], t0 + 50 * MS);
    assert_eq!(
        b.deadline(),
        Some(t0 + 100 * MS),
        "from the first pending event"
    );
}

#[test]
fn settings_are_raised_to_what_the_policy_needs() {
    let t0 = Instant::now();
    let mut b = CommitBatcher::new(CommitPolicy {
        adaptive: false,
        quiet_gap: 50 * MS,
        max_delay: 10 * MS,
        local_delay: MS,
        max_changes: 0,
    });
    b.push([seen()], t0);
    assert_eq!(
        b.deadline(),
        Some(t0 + 50 * MS),
        "local_delay >= max_delay >= quiet_gap"
    );
    assert!(b.is_full(), "max_changes is at least 1");
}

/// What a simulated store thread did with a stream of events.
struct Simulated {
    /// Per event: from its arrival to the start of the commit that carried it.
    waits: Vec<Duration>,
    /// Per commit: start, end, and how many Changes it carried.
    commits: Vec<(Instant, Instant, usize)>,
    /// Per event: whether the thread was idle and past the hold-off when it arrived.
    quiet: Vec<bool>,
}

/// Runs the policy as the store thread does: arrivals during a commit queue up and are taken
/// before the next decision; otherwise the thread waits for the next arrival or the deadline.
fn simulate(policy: CommitPolicy, arrivals: &[Instant], took: Duration) -> Simulated {
    let mut b = CommitBatcher::new(policy);
    let mut out = Simulated {
        waits: Vec::new(),
        commits: Vec::new(),
        quiet: Vec::new(),
    };
    let mut waiting: VecDeque<Instant> = VecDeque::new();
    let (mut next, mut free) = (0, arrivals.first().copied().unwrap_or_else(Instant::now));
    while next < arrivals.len() || !b.is_empty() {
        while next < arrivals.len() && arrivals[next] <= free {
            let at = arrivals[next];
            // Arrivals before `free` came while a commit ran; at `free`, to a waiting thread.
            let idle = at == free;
            let past_hold = b.last_commit().map_or(true, |l| at >= l.ended + l.hold);
            out.quiet.push(idle && b.is_empty() && past_hold);
            b.push([event()], at);
            waiting.push_back(at);
            next += 1;
        }
        if b.is_empty() {
            free = arrivals[next];
            continue;
        }
        let due = match b.is_full() {
            true => free,
            false => b.deadline().map_or(free, |d| d.max(free)),
        };
        if next < arrivals.len() && arrivals[next] < due {
            free = arrivals[next];
            continue;
        }
        let taken = b.take();
        out.commits.push((due, due + took, taken.len()));
        out.waits.extend(
            waiting
                .drain(..)
                .map(|at| due.saturating_duration_since(at)),
        );
        b.committed(due + took);
        free = due + took;
    }
    out
}

#[test]
fn a_sustained_stream_settles_at_one_commit_per_max_delay() {
    let t0 = Instant::now();
    // One event a millisecond for two seconds; commits take 3 ms.
    let arrivals: Vec<Instant> = (0..2000).map(|i| t0 + i * MS).collect();
    let sim = simulate(
        CommitPolicy {
            max_changes: 1000,
            ..policy()
        },
        &arrivals,
        3 * MS,
    );
    assert_eq!(
        sim.waits[0],
        Duration::ZERO,
        "the first event commits at once"
    );
    assert!(sim.waits.iter().all(|w| *w <= 103 * MS), "{:?}", sim.waits);
    // 10 + 20 + 40 + 80 ms to reach the cap, then one commit per 100 ms (+ 3 ms each).
    assert!(
        (20..=26).contains(&sim.commits.len()),
        "{} commits for 2000 events",
        sim.commits.len()
    );
}

proptest! {
    /// For any arrivals and commit time: no event waits longer than `max_delay` after the
    /// thread is free; an event into a quiet, idle thread waits not at all; and commits with
    /// events are at least `quiet_gap` apart unless the batch was full.
    #[test]
    fn the_policy_keeps_its_bounds(
        gaps in prop::collection::vec(0u32..150, 1..300),
        took_ms in 0u32..8,
        quiet_ms in 1u32..30,
        max_ms in 1u32..200,
        max_changes in 1usize..50,
    ) {
        let t0 = Instant::now();
        let mut at = t0;
        let arrivals: Vec<Instant> = gaps.iter().map(|g| { at += *g * MS; at }).collect();
        let policy = CommitPolicy {
            adaptive: true,
            quiet_gap: quiet_ms * MS,
            max_delay: max_ms * MS,
            local_delay: Duration::from_secs(2),
            max_changes,
        };
        let took = took_ms * MS;
        let sim = simulate(policy, &arrivals, took);
        prop_assert_eq!(sim.waits.len(), arrivals.len());
        let longest = (max_ms.max(quiet_ms) + took_ms) * MS;
        for (i, wait) in sim.waits.iter().enumerate() {
            prop_assert!(*wait <= longest, "event {} waited {:?} > {:?}", i, wait, longest);
            if sim.quiet[i] {
                prop_assert_eq!(*wait, Duration::ZERO, "quiet event {} waited", i);
            }
        }
        for pair in sim.commits.windows(2) {
            let ((_, ended, _), (start, _, len)) = (pair[0], pair[1]);
            prop_assert!(
                len >= max_changes || start >= ended + quiet_ms * MS,
                "commit at {:?} only {:?} after the previous one",
                start - t0,
                start.saturating_duration_since(ended)
            );
        }
    }
}
