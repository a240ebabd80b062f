//! IPv6 addresses in the record: learnt from DAD probes and from every NS/NA a device sends,
//! contested between MACs the way IPv4 addresses are, and aged out once unheard.

mod registry_support;

use std::net::{IpAddr, Ipv6Addr};

use rae_agent::registry::{Change, ConflictKind, NdpKind, Observation, ObservationKind};
use rae_proto::{Field, Liveness, Mac};
use registry_support::*;

fn ndp(mac: Mac, ip: Ipv6Addr, kind: NdpKind, at: i64) -> Observation {
    obs(mac, at, ObservationKind::Ndp { ip: Some(ip), kind })
}

fn link_local(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, last)
}

fn ipv6_of(core: &Core, mac: Mac) -> Vec<Ipv6Addr> {
    core.session(&rae_proto::DeviceRef::Mac(mac))
        .map(|view| view.record.ipv6.clone())
        .unwrap_or_default()
}

type Core = rae_agent::registry::Core<rae_agent::registry::SeededSessionIds>;

/// The Conflict notes in `changes` as (mac, ip, kind, others).
fn notes(changes: &[Change]) -> Vec<(Mac, IpAddr, ConflictKind, Vec<Mac>)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Conflict {
                mac,
                ip,
                kind,
                others,
                ..
            } => Some((*mac, *ip, *kind, others.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_dad_probe_puts_the_slaac_address_of_a_device_that_talks_from_its_link_local_in_the_record() {
    let mut core = core();
    let tv = mac(1);
    let global = v6(0x77);
    core.apply(ndp(tv, link_local(7), NdpKind::RouterSolicit, T0), T0);
    let changes = core.apply(ndp(tv, global, NdpKind::DadProbe, T0 + SEC), T0 + SEC);
    assert_eq!(
        only_delta(&changes).1,
        vec![
            Field::Ipv6(vec![global, link_local(7)]),
            Field::LastSeen(T0 + SEC)
        ]
    );
    // From now on only link-local solicitations, and the answers to the agent's probes of
    // the global address: the address stays.
    for s in 2..400 {
        let at = T0 + s * SEC;
        core.apply(ndp(tv, link_local(7), NdpKind::NeighborSolicit, at), at);
        if s % 10 == 0 {
            core.apply(ndp(tv, global, NdpKind::NeighborAdvert, at), at);
        }
        core.tick(at);
    }
    assert_eq!(ipv6_of(&core, tv), vec![global, link_local(7)]);
    assert_eq!(core.mac_for_ip(IpAddr::V6(global)), Some(tv));
}

#[test]
fn two_live_devices_claiming_one_ipv6_address_are_a_conflict_in_both_histories() {
    let mut core = core();
    let (a, b) = (mac(1), mac(2));
    let shared = v6(0x55);
    core.apply(ndp(a, shared, NdpKind::NeighborAdvert, T0), T0);
    let opened = core.apply(mdns(b, T0 + SEC), T0 + SEC);
    let b_session = opened[0].session();
    let changes = core.apply(
        ndp(b, shared, NdpKind::NeighborSolicit, T0 + 2 * SEC),
        T0 + 2 * SEC,
    );
    assert_eq!(
        notes(&changes),
        vec![
            (a, IpAddr::V6(shared), ConflictKind::Claimed, vec![b]),
            (b, IpAddr::V6(shared), ConflictKind::Claimed, vec![a]),
        ]
    );
    let Some(Change::Conflict { cause, .. }) = changes
        .iter()
        .find(|c| matches!(c, Change::Conflict { session, .. } if *session == b_session))
    else {
        panic!("no Conflict for the claimant's session: {changes:?}");
    };
    assert!(
        cause
            .summary
            .starts_with("2001:db8::55 claimed by 2 live devices"),
        "{}",
        cause.summary
    );
    // Both keep the address; the latest claimant answers for it.
    assert_eq!(ipv6_of(&core, a), vec![shared]);
    assert_eq!(ipv6_of(&core, b), vec![shared]);
    assert_eq!(core.mac_for_ip(IpAddr::V6(shared)), Some(b));
    // The holder defending it (its NA) is a flip, noted at once the first time.
    let changes = core.apply(
        ndp(a, shared, NdpKind::NeighborAdvert, T0 + 3 * SEC),
        T0 + 3 * SEC,
    );
    let kinds: Vec<_> = notes(&changes).into_iter().map(|n| n.2).collect();
    assert_eq!(kinds, vec![ConflictKind::FlipFlop { flips: 1 }; 2]);
}

#[test]
fn a_dad_probe_for_the_address_of_an_offline_device_takes_it_over() {
    let mut core = core();
    let (old, new) = (mac(1), mac(2));
    let ip = v6(0x10);
    core.apply(ndp(old, ip, NdpKind::NeighborAdvert, T0), T0);
    let t = T0 + 60 * SEC;
    core.tick(t);
    let view = core.session(&rae_proto::DeviceRef::Mac(old)).unwrap();
    assert_eq!(view.record.reachability.state, Liveness::Offline);
    core.apply(mdns(new, t), t);
    let changes = core.apply(ndp(new, ip, NdpKind::DadProbe, t + SEC), t + SEC);
    let lost = changes.iter().find_map(|c| match c {
        Change::Updated { mac, fields, .. } if *mac == old => Some(fields.clone()),
        _ => None,
    });
    assert_eq!(lost, Some(vec![Field::Ipv6(Vec::new())]));
    let kinds: Vec<_> = notes(&changes).into_iter().map(|n| (n.0, n.2)).collect();
    assert_eq!(
        kinds,
        vec![
            (old, ConflictKind::Reassigned),
            (new, ConflictKind::Reassigned)
        ]
    );
    assert_eq!(ipv6_of(&core, new), vec![ip]);
}

#[test]
fn an_address_unheard_while_the_device_talks_on_ages_out_at_its_deadline() {
    let mut core = core();
    let tv = mac(1);
    let old = v6(0x20);
    core.apply(ndp(tv, old, NdpKind::NeighborAdvert, T0), T0);
    // Silent, the device keeps its address: silence says nothing about one address.
    assert!(core
        .tick(T0 + 300 * SEC)
        .iter()
        .all(|c| !matches!(c, Change::Updated { fields, .. } if fields.iter().any(|f| matches!(f, Field::Ipv6(_))))));
    assert_eq!(ipv6_of(&core, tv), vec![old]);

    let mut core = registry_support::core();
    core.apply(ndp(tv, old, NdpKind::NeighborAdvert, T0), T0);
    // It talks on without the address (mDNS), then goes quiet: the address leaves the
    // record ipv6_expire_after (120 s) after it was last heard, at a tick, with no frame.
    core.apply(mdns(tv, T0 + 10 * SEC), T0 + 10 * SEC);
    let aged_at = T0 + 120 * SEC + 1;
    let mut now = T0 + 10 * SEC;
    let mut dropped = None;
    while let Some(deadline) = core.next_deadline(now) {
        if deadline > aged_at + 60 * SEC {
            break;
        }
        now = deadline.max(now + 1);
        for change in core.tick(now) {
            if let Change::Updated { fields, cause, .. } = &change {
                if fields.contains(&Field::Ipv6(Vec::new())) {
                    dropped = Some((now, cause.at_ms, cause.summary.clone()));
                }
            }
        }
        if dropped.is_some() {
            break;
        }
    }
    let (ticked, at, summary) = dropped.expect("the address never aged out");
    assert_eq!((ticked, at), (aged_at, aged_at), "{summary}");
    assert!(summary.contains("ipv6_expire_after"), "{summary}");
    assert_eq!(ipv6_of(&core, tv), Vec::<Ipv6Addr>::new());
    assert_eq!(core.mac_for_ip(IpAddr::V6(old)), None);
}
