//! The core's two clocks: a wall-clock step of +1 h or -1 h changes no session and no
//! liveness decision; only the stamps made after the step follow the new wall clock.
//!
//! Each test runs two cores through the same history on the core clock, one of them with the
//! wall clock stepped part way, and compares every Change and every probe: equal once the
//! stamps (`at_ms`, `first_seen_ms`, `last_seen_ms`) are taken out, and the stamps of the
//! stepped one moved by exactly the step from the step on.

mod registry_support;

use rae_agent::registry::{Change, Core, ProbeRequest, SeededSessionIds};
use rae_proto::{Field, Mac};
use registry_support::*;

const HOUR: i64 = 3_600 * SEC;

/// What a core did at one instant.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    now: i64,
    changes: Vec<Change>,
    probes: Vec<ProbeRequest>,
}

/// Three devices on the core clock from `T0`: one answers every probe until it is unplugged
/// at +100 s (offline, then gone after 600 s), one keeps talking all along, one changes its
/// address at +300 s. `step_at`/`step` move the wall clock by `step` from that instant.
fn history(step_at: i64, step: i64) -> Vec<Step> {
    let mut core = core();
    let mut steps = Vec::new();
    let (unplugged, chatty, mover) = (mac(1), mac(2), mac(3));
    let mut now = T0;
    let end = T0 + 900 * SEC;
    while now <= end {
        if now == step_at {
            core.set_wall_offset(step);
        }
        let mut changes = Vec::new();
        if now == T0 {
            for (mac, ip) in [(unplugged, v4(10)), (chatty, v4(11)), (mover, v4(12))] {
                changes.extend(core.apply(dhcp_request(mac, "dut", now), now));
                changes.extend(core.apply(dhcp_ack(mac, ip, now), now));
            }
        }
        if (now - T0) % (5 * SEC) == 0 {
            changes.extend(core.apply(arp_announce(chatty, v4(11), now), now));
        }
        if now == T0 + 300 * SEC {
            changes.extend(core.apply(arp_announce(mover, v4(13), now), now));
        }
        let probes = core.due_probes(now);
        for probe in &probes {
            let answers = probe.mac != unplugged || now < T0 + 100 * SEC;
            if let (true, Some(ip)) = (answers, probe.ipv4) {
                changes.extend(core.apply(probe_reply(probe.mac, ip, 800, now), now));
            }
        }
        changes.extend(core.tick(now));
        if !changes.is_empty() || !probes.is_empty() {
            steps.push(Step {
                now,
                changes,
                probes,
            });
        }
        now += 250;
    }
    steps
}

/// `stepped` with each wall stamp put back to `plain`'s where the two differ by exactly the
/// step `by` (a stamp made after the step) or not at all (one made before, carried on).
fn unstamped(plain: &Change, stepped: &Change, by: i64) -> Change {
    let mut change = stepped.clone();
    let undo = |stamp: &mut i64, plain: i64| {
        if *stamp - by == plain {
            *stamp = plain;
        }
    };
    match (&mut change, plain) {
        (
            Change::Opened { record, cause, .. },
            Change::Opened {
                record: p,
                cause: pc,
                ..
            },
        )
        | (
            Change::Snapshot { record, cause, .. },
            Change::Snapshot {
                record: p,
                cause: pc,
                ..
            },
        ) => {
            undo(&mut record.first_seen_ms, p.first_seen_ms);
            undo(&mut record.last_seen_ms, p.last_seen_ms);
            undo(&mut cause.at_ms, pc.at_ms);
        }
        (
            Change::Updated { fields, cause, .. },
            Change::Updated {
                fields: pf,
                cause: pc,
                ..
            },
        ) => {
            for (field, p) in fields.iter_mut().zip(pf) {
                match (field, p) {
                    (Field::LastSeen(ms), Field::LastSeen(p))
                    | (Field::FirstSeen(ms), Field::FirstSeen(p)) => undo(ms, *p),
                    _ => {}
                }
            }
            undo(&mut cause.at_ms, pc.at_ms);
        }
        (Change::Closed { cause, .. }, Change::Closed { cause: pc, .. })
        | (Change::Conflict { cause, .. }, Change::Conflict { cause: pc, .. }) => {
            undo(&mut cause.at_ms, pc.at_ms);
        }
        (
            Change::Seen { last_seen_ms, .. },
            Change::Seen {
                last_seen_ms: p, ..
            },
        ) => undo(last_seen_ms, *p),
        _ => {}
    }
    change
}

fn assert_same_decisions(step: i64) {
    let step_at = T0 + 200 * SEC;
    let plain = history(i64::MAX, 0);
    let stepped = history(step_at, step);
    assert_eq!(
        plain.len(),
        stepped.len(),
        "a wall step of {step} ms changed at which instants the core did something"
    );
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for (a, b) in plain.iter().zip(&stepped) {
        assert_eq!(a.now, b.now);
        assert_eq!(a.probes, b.probes, "probes differ at +{} ms", a.now - T0);
        let by = if a.now >= step_at { step } else { 0 };
        assert_eq!(
            a.changes.len(),
            b.changes.len(),
            "at +{} ms the stepped core made other changes: {:?} vs {:?}",
            a.now - T0,
            a.changes,
            b.changes
        );
        let undone: Vec<Change> = a
            .changes
            .iter()
            .zip(&b.changes)
            .map(|(plain, stepped)| unstamped(plain, stepped, by))
            .collect();
        assert_eq!(
            a.changes,
            undone,
            "at +{} ms the stepped core decided differently (stamps moved by {by} taken out)",
            a.now - T0
        );
        for change in &a.changes {
            *kinds.entry(change_kind(change)).or_default() += 1;
        }
    }
    // The history must have exercised what the step could have broken.
    for kind in ["opened", "offline", "closed", "updated", "seen"] {
        assert!(
            kinds.get(kind).copied().unwrap_or(0) > 0,
            "the history made no {kind} change: {kinds:?}"
        );
    }
}

fn change_kind(change: &Change) -> &'static str {
    match change {
        Change::Opened { .. } => "opened",
        Change::Updated { fields, .. }
            if fields.iter().any(
                |f| matches!(f, Field::Reachability(r) if r.state == rae_proto::Liveness::Offline),
            ) =>
        {
            "offline"
        }
        Change::Updated { .. } => "updated",
        Change::Snapshot { .. } => "snapshot",
        Change::Closed { .. } => "closed",
        Change::Seen { .. } => "seen",
        Change::Conflict { .. } => "conflict",
    }
}

#[test]
fn a_wall_step_of_plus_one_hour_changes_no_session_and_no_liveness_decision() {
    assert_same_decisions(HOUR);
}

#[test]
fn a_wall_step_of_minus_one_hour_changes_no_session_and_no_liveness_decision() {
    assert_same_decisions(-HOUR);
}

#[test]
fn stamps_after_a_step_follow_the_new_wall_clock_and_earlier_ones_keep_theirs() {
    let mut core: Core<SeededSessionIds> = core();
    let dut: Mac = mac(1);
    let opened = core.apply(arp_announce(dut, v4(10), T0), T0);
    let [Change::Opened { record, .. }] = opened.as_slice() else {
        panic!("expected the session to open, got {opened:?}");
    };
    assert_eq!((record.first_seen_ms, record.last_seen_ms), (T0, T0));
    core.set_wall_offset(HOUR);
    let later = T0 + 10 * SEC;
    let seen = core.apply(arp_announce(dut, v4(10), later), later);
    assert!(
        matches!(seen.as_slice(), [Change::Seen { last_seen_ms, .. }] if *last_seen_ms == later + HOUR),
        "a frame after the step is stamped on the new wall clock: {seen:?}"
    );
    let moved = core.apply(arp_announce(dut, v4(11), later + SEC), later + SEC);
    let Some(Change::Updated { cause, fields, .. }) = moved.first() else {
        panic!("expected a Delta for the new address, got {moved:?}");
    };
    assert_eq!(cause.at_ms, later + SEC + HOUR);
    assert!(
        fields.contains(&Field::LastSeen(later + SEC + HOUR)),
        "{fields:?}"
    );
    let session = core
        .sessions()
        .next()
        .expect("the session is still open after the step");
    assert_eq!(
        session.record.first_seen_ms, T0,
        "first_seen keeps its stamp"
    );
}
