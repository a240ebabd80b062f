//! Two MACs and one IPv4 address: a DUT whose MAC changed, two live devices with one static
//! address, and the flip-flop damping.

mod registry_support;

use std::net::IpAddr;

use rae_agent::registry::{Change, ConflictKind};
use rae_proto::{Field, Liveness, Mac};
use registry_support::*;

/// The Conflict notes in `changes` as (mac, kind, others).
fn notes(changes: &[Change]) -> Vec<(Mac, ConflictKind, Vec<Mac>)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Conflict {
                mac, kind, others, ..
            } => Some((*mac, *kind, others.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_dut_whose_mac_changed_hands_its_dhcp_address_to_the_new_session() {
    let mut core = core();
    let (old, new) = (mac(1), mac(2));
    core.apply(dhcp_request(old, "stb", T0), T0);
    core.apply(dhcp_ack(old, v4(10), T0), T0);
    let old_session = core.sessions().next().unwrap().session;

    let t = T0 + 60 * SEC;
    let opened = core.apply(dhcp_request(new, "stb", t), t);
    assert!(matches!(opened.as_slice(), [Change::Opened { .. }]));
    let new_session = opened[0].session();

    let changes = core.apply(dhcp_ack(new, v4(10), t), t);
    let updates: Vec<_> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Updated {
                session,
                seq,
                fields,
                ..
            } => Some((*session, *seq, fields.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        updates,
        vec![
            (new_session, 2, vec![Field::Ipv4(Some(v4(10)))]),
            (old_session, 3, vec![Field::Ipv4(None)]),
        ]
    );
    assert_eq!(
        notes(&changes),
        vec![
            (old, ConflictKind::Reassigned, vec![new]),
            (new, ConflictKind::Reassigned, vec![old]),
        ]
    );
    assert_eq!(core.mac_for_ip(IpAddr::V4(v4(10))), Some(new));
}

#[test]
fn two_live_devices_with_one_static_address_both_keep_it_and_both_histories_say_so() {
    let mut core = core();
    let (a, b) = (mac(1), mac(2));
    let a_session = open(&mut core, a, v4(10), T0);
    let changes = core.apply(arp_announce(b, v4(10), T0 + SEC), T0 + SEC);
    let [Change::Opened { record, .. }, ..] = changes.as_slice() else {
        panic!("expected b's session first, got {changes:#?}");
    };
    assert_eq!(record.ipv4, Some(v4(10)));
    assert_eq!(
        notes(&changes),
        vec![
            (a, ConflictKind::Claimed, vec![b]),
            (b, ConflictKind::Claimed, vec![a]),
        ]
    );
    assert!(
        of(&changes, a_session)
            .iter()
            .all(|c| matches!(c, Change::Conflict { .. })),
        "a's record does not change: {changes:#?}"
    );
    let Change::Conflict { cause, .. } = &changes[1] else {
        unreachable!()
    };
    assert!(
        cause
            .summary
            .contains("198.18.0.10 claimed by 2 live devices"),
        "{}",
        cause.summary
    );
    assert!(core.sessions().all(|s| s.record.ipv4 == Some(v4(10))));
}

#[test]
fn flip_flops_make_no_deltas_and_their_notes_are_damped() {
    let mut core = core();
    let (a, b) = (mac(1), mac(2));
    open(&mut core, a, v4(10), T0);
    core.apply(arp_announce(b, v4(10), T0), T0);
    let mut changes = Vec::new();
    let mut flips = 0;
    // 200 s of alternating claims, one a second: 199 flips.
    for s in 1..=200 {
        let who = if s % 2 == 0 { a } else { b };
        let at = T0 + s * SEC;
        changes.extend(core.apply(arp_reply(who, v4(10), at), at));
        changes.extend(core.tick(at));
        flips += 1;
    }
    assert!(
        !changes.iter().any(|c| matches!(c, Change::Updated { .. })),
        "flip-flops must not churn Deltas"
    );
    let flip_notes: Vec<u32> = notes(&changes)
        .into_iter()
        .filter(|(mac, _, _)| *mac == a)
        .map(|(_, kind, _)| match kind {
            ConflictKind::FlipFlop { flips } => flips,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    // The first flip at once, then one note per 60 s with the flips in between.
    assert_eq!(flip_notes.len(), 4, "{flip_notes:?}");
    assert_eq!(flip_notes[0], 1);
    assert_eq!(flip_notes[1..], [60, 60, 60]);
    assert!(flip_notes.iter().sum::<u32>() <= flips);
    // Both devices get each note.
    assert_eq!(
        notes(&changes).len(),
        2 * flip_notes.len(),
        "{:#?}",
        notes(&changes)
    );
}

#[test]
fn an_offline_holder_loses_the_address_to_a_live_claimant() {
    let mut core = core();
    let (a, b) = (mac(1), mac(2));
    let a_session = open(&mut core, a, v4(10), T0);
    let mut now = T0;
    while core.sessions().next().unwrap().record.reachability.state == Liveness::Online {
        now += SEC;
        core.tick(now);
        assert!(now < T0 + 60 * SEC, "a never went offline");
    }
    let changes = core.apply(arp_announce(b, v4(10), now), now);
    let lost: Vec<_> = of(&changes, a_session)
        .into_iter()
        .filter_map(|c| match c {
            Change::Updated { fields, .. } => Some(fields.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(lost, vec![vec![Field::Ipv4(None)]]);
    assert_eq!(
        notes(&changes),
        vec![
            (a, ConflictKind::Reassigned, vec![b]),
            (b, ConflictKind::Reassigned, vec![a]),
        ]
    );
}

#[test]
fn a_conflict_ends_when_one_device_moves_on() {
    let mut core = core();
    let (a, b) = (mac(1), mac(2));
    open(&mut core, a, v4(10), T0);
    core.apply(arp_announce(b, v4(10), T0), T0);
    core.apply(arp_announce(a, v4(11), T0 + SEC), T0 + SEC);
    let changes = core.apply(arp_announce(b, v4(10), T0 + 2 * SEC), T0 + 2 * SEC);
    assert!(notes(&changes).is_empty(), "{changes:#?}");
    // Claiming a held address again starts a new conflict.
    let changes = core.apply(arp_announce(a, v4(10), T0 + 3 * SEC), T0 + 3 * SEC);
    assert_eq!(
        notes(&changes),
        vec![
            (a, ConflictKind::Claimed, vec![b]),
            (b, ConflictKind::Claimed, vec![a]),
        ]
    );
}

#[test]
fn mac_for_ip_prefers_the_live_and_recent_holder() {
    let mut core = core();
    let (a, b) = (mac(1), mac(2));
    open(&mut core, a, v4(10), T0);
    core.apply(arp_announce(b, v4(10), T0 + SEC), T0 + SEC);
    assert_eq!(core.mac_for_ip(IpAddr::V4(v4(10))), Some(b));
    core.apply(arp_reply(a, v4(10), T0 + 2 * SEC), T0 + 2 * SEC);
    assert_eq!(core.mac_for_ip(IpAddr::V4(v4(10))), Some(a));
    core.apply(ndp_advert(a, v6(7), T0 + 3 * SEC), T0 + 3 * SEC);
    assert_eq!(core.mac_for_ip(IpAddr::V6(v6(7))), Some(a));
    assert_eq!(core.mac_for_ip(IpAddr::V4(v4(99))), None);
}
