//! Reachability hysteresis, gone_after and session lifetimes, through the core's public API.

mod registry_support;

use rae_agent::registry::{Change, Core, SeededSessionIds};
use rae_proto::{CloseReason, Evidence, Field, Liveness, Reachability};
use registry_support::*;

/// When the device opened at `T0` is reported offline when nothing more is heard, and the
/// probes asked for it until then.
fn silence_until_offline(core: &mut Core<SeededSessionIds>) -> (i64, Change, usize) {
    // A round may be under way at T0 already; count the probes of the rounds after it.
    core.due_probes(T0);
    let mut probes = 0;
    let mut now = T0 + 100;
    while now <= T0 + 120 * SEC {
        probes += core.due_probes(now).len();
        let changes = core.tick(now);
        if let Some(change) = changes.into_iter().next() {
            return (now, change, probes);
        }
        now += 100;
    }
    panic!("the unplugged device never went offline within 120 s");
}

#[test]
fn unplugged_device_goes_offline_after_three_missed_rounds_not_one() {
    let mut core = core();
    let session = open(&mut core, mac(1), v4(10), T0);
    let (at, change, probes) = silence_until_offline(&mut core);
    let Change::Updated {
        session: s,
        seq,
        fields,
        ..
    } = change
    else {
        panic!("expected an offline Delta, got {change:?}");
    };
    assert_eq!((s, seq), (session, 2));
    assert_eq!(
        fields,
        vec![Field::Reachability(Reachability {
            state: Liveness::Offline,
            evidence: Evidence::ProbeMissed { count: 3 },
            rtt_us: None,
        })]
    );
    // Three rounds: the first starts within an interval of the last frame, each has a 2 s
    // timeout. One or two missed rounds (at most 22 s of silence) must not do it.
    let silent = at - T0;
    assert!(
        (22 * SEC..=32 * SEC).contains(&silent),
        "offline after {silent} ms of silence"
    );
    assert_eq!(probes, 3, "one probe per round was asked for");
}

#[test]
fn an_answer_after_one_miss_keeps_the_device_online_without_a_delta() {
    let mut core = core();
    let session = open(&mut core, mac(1), v4(10), T0);
    core.due_probes(T0);
    let mut replies = std::collections::VecDeque::new();
    let mut changes = Vec::new();
    let mut now = T0 + 100;
    while now <= T0 + 200 * SEC {
        // Every probe is answered 3 s late, past its 2 s timeout: each round is a miss, and
        // each answer comes after exactly one.
        for _ in core.due_probes(now) {
            replies.push_back(now + 3 * SEC);
        }
        while replies.front().is_some_and(|at| *at <= now) {
            replies.pop_front();
            changes.extend(core.apply(probe_reply(mac(1), v4(10), 900, now), now));
        }
        changes.extend(core.tick(now));
        now += 100;
    }
    let session_changes = of(&changes, session);
    assert!(
        session_changes
            .iter()
            .all(|c| matches!(c, Change::Seen { .. })),
        "a device answering after one miss must stay online with only Seen changes: {session_changes:#?}"
    );
    assert!(session_changes.len() >= 19, "{session_changes:#?}");
    let view = core.sessions().next().unwrap();
    assert_eq!(view.record.reachability.state, Liveness::Online);
    assert_eq!(view.record.reachability.rtt_us, Some(900));
    assert_eq!(view.seq, 1);
}

/// Changes other than periodic Snapshots.
fn not_snapshots(changes: Vec<(i64, Change)>) -> Vec<(i64, Change)> {
    changes
        .into_iter()
        .filter(|(_, c)| !matches!(c, Change::Snapshot { .. }))
        .collect()
}

fn seq_of(core: &Core<SeededSessionIds>) -> u64 {
    core.sessions().next().expect("an open session").seq
}

#[test]
fn replugged_within_gone_after_keeps_its_session() {
    let mut core = core();
    let session = open(&mut core, mac(1), v4(10), T0);
    let (offline_at, _, _) = silence_until_offline(&mut core);
    let back = offline_at + 300 * SEC;
    assert!(not_snapshots(tick_through(&mut core, offline_at + 100, back)).is_empty());
    let seq_before = seq_of(&core);
    let changes = core.apply(arp_reply(mac(1), v4(10), back), back);
    let (seq, fields) = only_delta(&changes);
    assert_eq!(seq, seq_before + 1);
    assert_eq!(changes[0].session(), session);
    assert_eq!(
        fields,
        vec![
            Field::Reachability(Reachability {
                state: Liveness::Online,
                evidence: Evidence::ArpReply,
                rtt_us: None,
            }),
            Field::LastSeen(back),
        ]
    );
}

#[test]
fn a_frame_older_than_the_last_one_heard_does_not_revive_an_offline_device() {
    let mut core = core();
    open(&mut core, mac(1), v4(10), T0);
    let (offline_at, _, _) = silence_until_offline(&mut core);
    let stale = core.apply(mdns(mac(1), T0), offline_at + SEC);
    assert!(stale.is_empty(), "{stale:?}");
    let view = core.sessions().next().unwrap();
    assert_eq!(view.record.reachability.state, Liveness::Offline);
}

#[test]
fn closed_after_gone_after_and_a_new_session_when_seen_again() {
    let mut core = core();
    let first = open(&mut core, mac(1), v4(10), T0);
    let gone_at = T0 + 600 * SEC;
    let before = not_snapshots(tick_through(&mut core, T0, gone_at - 100));
    assert_eq!(
        before.len(),
        1,
        "only the offline Delta before gone_after: {before:?}"
    );
    let seq_before = seq_of(&core);
    let closed = core.tick(gone_at);
    assert_eq!(
        closed,
        vec![Change::Closed {
            session: first,
            seq: seq_before + 1,
            mac: mac(1),
            reason: CloseReason::Gone,
            cause: closed_cause(&closed),
        }]
    );
    assert_eq!(core.sessions().count(), 0);

    let again = gone_at + 5 * SEC;
    let changes = core.apply(mdns(mac(1), again), again);
    let [Change::Opened {
        session,
        seq,
        record,
        ..
    }] = changes.as_slice()
    else {
        panic!("expected a new session, got {changes:?}");
    };
    assert_ne!(*session, first);
    assert_eq!(*seq, 1);
    assert_eq!(record.first_seen_ms, again);
    assert_eq!(record.reachability.evidence, Evidence::MdnsResponse);
}

fn closed_cause(changes: &[Change]) -> rae_agent::registry::Cause {
    match changes.first() {
        Some(Change::Closed { cause, .. }) => cause.clone(),
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[test]
fn a_late_frame_closes_the_stale_session_before_opening_a_new_one() {
    // No tick ran after the deadline: the outcome must not depend on how often tick runs.
    let mut core = core();
    let first = open(&mut core, mac(1), v4(10), T0);
    let late = T0 + 700 * SEC;
    let changes = core.apply(arp_reply(mac(1), v4(10), late), late);
    let kinds: Vec<_> = changes
        .iter()
        .map(|c| match c {
            Change::Updated { session, seq, .. } => ("updated", *session == first, *seq),
            Change::Closed { session, seq, .. } => ("closed", *session == first, *seq),
            Change::Opened { session, seq, .. } => ("opened", *session == first, *seq),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [("closed", true, 2), ("opened", false, 1)],
        "{changes:#?}"
    );
}

#[test]
fn probes_are_spread_over_the_interval() {
    let mut core = core();
    for i in 0..100u8 {
        open(&mut core, mac(i), v4(i), T0);
    }
    core.due_probes(T0);
    let mut per_second = Vec::new();
    let mut seen = std::collections::BTreeMap::new();
    for s in 1..=10 {
        let probes = core.due_probes(T0 + s * SEC);
        per_second.push(probes.len());
        for probe in probes {
            assert!(probe.ipv4.is_some());
            *seen.entry(probe.mac).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), 100, "every device is probed once per interval");
    assert!(seen.values().all(|n| *n == 1));
    assert!(
        per_second.iter().all(|n| *n <= 25),
        "probes bunch up: {per_second:?}"
    );
}

#[test]
fn devices_without_an_address_are_not_probed_but_still_time_out() {
    let mut core = core();
    core.apply(mdns(mac(1), T0), T0);
    let mut probes = 0;
    let mut offline = None;
    let mut now = T0;
    while now <= T0 + 40 * SEC {
        probes += core.due_probes(now).len();
        if !core.tick(now).is_empty() && offline.is_none() {
            offline = Some(now);
        }
        now += 100;
    }
    assert_eq!(probes, 0);
    assert!(
        offline.is_some(),
        "a silent device goes offline even unprobed"
    );
}

#[test]
fn next_deadline_points_at_the_next_transition() {
    let mut core = core();
    assert_eq!(core.next_deadline(T0), None);
    open(&mut core, mac(1), v4(10), T0);
    let deadline = core.next_deadline(T0).unwrap();
    assert!(deadline > T0 && deadline <= T0 + 10 * SEC, "{deadline}");
    // Nothing happens between now and the deadline.
    assert!(tick_through(&mut core, T0, deadline - 1).is_empty());
}
