//! What goes into a session's record and which Changes carry it: addresses, names, RTT,
//! Snapshots, operator actions and a restart.

mod registry_support;

use rae_agent::registry::{
    Action, ActionError, Change, Core, CoreConfig, ObservationKind, RestoredSession,
    SeededSessionIds,
};
use rae_proto::{
    Availability, CloseReason, DeviceRef, DialApp, DialAppState, EsnError, Field, Liveness, Mac,
    MdnsService, Text,
};
use registry_support::*;

#[test]
fn a_new_session_carries_vendor_and_the_randomized_flag() {
    let mut core = core();
    let changes = core.apply(dhcp_request(mac(1), "tv", T0), T0);
    let [Change::Opened { record, cause, .. }] = changes.as_slice() else {
        panic!("expected Opened, got {changes:?}");
    };
    assert_eq!(
        record.vendor.as_deref(),
        Some("Samsung Electronics Co.,Ltd")
    );
    assert!(!record.locally_administered);
    assert_eq!(record.hostname, Some(Text::from("tv")));
    assert_eq!(
        record.dhcp_param_request_list,
        vec![1, 3, 6, 12, 15, 28, 42]
    );
    assert_eq!(record.first_seen_ms, T0);
    assert_eq!(record.reachability.state, Liveness::Online);
    assert!(cause.summary.contains("DHCP REQUEST"), "{}", cause.summary);

    let randomized = Mac([0x02, 0x00, 0xf0, 0x00, 0x00, 0x02]);
    let changes = core.apply(mdns(randomized, T0), T0);
    let [Change::Opened { record, .. }] = changes.as_slice() else {
        panic!("expected Opened, got {changes:?}");
    };
    assert_eq!(record.vendor, None);
    assert!(record.locally_administered);
}

#[test]
fn own_macs_server_acks_and_resolved_names_open_nothing() {
    let mut core = core();
    assert!(core.apply(arp_reply(OWN, v4(1), T0), T0).is_empty());
    assert!(core.apply(dhcp_ack(mac(1), v4(10), T0), T0).is_empty());
    let name = obs(
        mac(1),
        T0,
        ObservationKind::MdnsHost {
            hostname: Text::from("tv"),
        },
    );
    assert!(core.apply(name, T0).is_empty());
    assert_eq!(core.sessions().count(), 0);
}

#[test]
fn an_ip_change_is_one_delta_with_seq_plus_one() {
    let mut core = core();
    let session = open(&mut core, mac(1), v4(10), T0);
    let changes = core.apply(arp_announce(mac(1), v4(11), T0 + SEC), T0 + SEC);
    assert_eq!(changes[0].session(), session);
    assert_eq!(
        only_delta(&changes),
        (
            2,
            vec![Field::Ipv4(Some(v4(11))), Field::LastSeen(T0 + SEC)]
        )
    );
}

#[test]
fn a_hostname_change_is_a_delta_and_dhcp_names_win_over_mdns() {
    let mut core = core();
    core.apply(mdns(mac(1), T0), T0);
    let host = |name: &str, at| {
        obs(
            mac(1),
            at,
            ObservationKind::MdnsHost {
                hostname: Text::from(name),
            },
        )
    };
    let changes = core.apply(host("living-room.local", T0), T0);
    assert_eq!(
        only_delta(&changes).1,
        vec![Field::Hostname(Some(Text::from("living-room.local")))]
    );
    let changes = core.apply(dhcp_request(mac(1), "tv", T0 + SEC), T0 + SEC);
    let fields = only_delta(&changes).1;
    assert!(fields.contains(&Field::Hostname(Some(Text::from("tv")))));
    // mDNS fills in only where DHCP gave nothing.
    let changes = core.apply(host("other.local", T0 + 2 * SEC), T0 + 2 * SEC);
    assert!(changes.is_empty(), "{changes:?}");
    let changes = core.apply(dhcp_request(mac(1), "tv-2", T0 + 3 * SEC), T0 + 3 * SEC);
    assert_eq!(
        only_delta(&changes),
        (
            4,
            vec![
                Field::Hostname(Some(Text::from("tv-2"))),
                Field::LastSeen(T0 + 3 * SEC)
            ]
        )
    );
}

#[test]
fn last_seen_alone_is_a_local_seen_not_a_delta() {
    let mut core = core();
    let session = open(&mut core, mac(1), v4(10), T0);
    let changes = core.apply(arp_announce(mac(1), v4(10), T0 + 5 * SEC), T0 + 5 * SEC);
    assert_eq!(
        changes,
        vec![Change::Seen {
            session,
            last_seen_ms: T0 + 5 * SEC
        }]
    );
    // An older frame moves nothing.
    assert!(core.apply(mdns(mac(1), T0 + SEC), T0 + 6 * SEC).is_empty());
}

#[test]
fn rtt_alone_never_makes_a_delta_and_travels_in_the_next_snapshot() {
    let mut core = core();
    let session = open(&mut core, mac(1), v4(10), T0);
    for (i, rtt) in [350u32, 420, 380].into_iter().enumerate() {
        let at = T0 + (i as i64 + 1) * 10 * SEC;
        let changes = core.apply(probe_reply(mac(1), v4(10), rtt, at), at);
        assert!(
            changes.iter().all(|c| matches!(c, Change::Seen { .. })),
            "{changes:?}"
        );
    }
    let changes = core
        .act(&Action::Resync { device: None }, "test", T0 + 40 * SEC)
        .unwrap();
    let [Change::Snapshot {
        session: s,
        seq: 2,
        record,
        ..
    }] = changes.as_slice()
    else {
        panic!("expected one Snapshot, got {changes:?}");
    };
    assert_eq!(*s, session);
    assert_eq!(record.reachability.rtt_us, Some(380));
}

#[test]
fn ipv6_addresses_accumulate_sorted_and_expire_while_the_device_lives_on() {
    let mut core = core();
    core.apply(ndp_advert(mac(1), v6(0x20), T0), T0);
    let changes = core.apply(ndp_advert(mac(1), v6(0x10), T0 + SEC), T0 + SEC);
    assert_eq!(
        only_delta(&changes).1,
        vec![
            Field::Ipv6(vec![v6(0x10), v6(0x20)]),
            Field::LastSeen(T0 + SEC)
        ]
    );
    // The device keeps answering for ::10 only; ::20 goes once it has been unheard for
    // ipv6_expire_after (120 s) while the device lived on.
    let mut dropped = None;
    for s in (10..=200).step_by(10) {
        let at = T0 + s * SEC;
        let changes = core.apply(ndp_advert(mac(1), v6(0x10), at), at);
        if changes.iter().any(|c| matches!(c, Change::Updated { .. })) {
            assert_eq!(only_delta(&changes).1[0], Field::Ipv6(vec![v6(0x10)]));
            dropped = Some(s);
            break;
        }
    }
    assert_eq!(dropped, Some(130));
    // A probe asks for every address the record holds.
    let probes: Vec<_> = (0..=10)
        .flat_map(|s| core.due_probes(T0 + (200 + s) * SEC))
        .collect();
    assert!(!probes.is_empty());
    assert!(probes
        .iter()
        .all(|p| p.ipv4.is_none() && p.ipv6 == vec![v6(0x10)]));
}

#[test]
fn the_ipv6_list_is_capped_by_recency() {
    let mut core = core();
    for i in 0..6u16 {
        core.apply(
            ndp_advert(mac(1), v6(0x100 - i), T0 + i64::from(i)),
            T0 + 10,
        );
    }
    let view = core.sessions().next().unwrap();
    assert_eq!(
        view.record.ipv6,
        vec![v6(0xfb), v6(0xfc), v6(0xfd), v6(0xfe)]
    );
}

#[test]
fn dhcp_release_clears_the_address() {
    let mut core = core();
    open(&mut core, mac(1), v4(10), T0);
    let release = obs(
        mac(1),
        T0 + SEC,
        ObservationKind::DhcpClient(rae_agent::registry::DhcpClient {
            message: rae_agent::registry::DhcpMessage::Release,
            ciaddr: Some(v4(10)),
            ..Default::default()
        }),
    );
    let changes = core.apply(release, T0 + SEC);
    assert_eq!(only_delta(&changes).1[0], Field::Ipv4(None));
}

#[test]
fn services_and_descriptions_fill_the_record() {
    let mut core = core();
    core.apply(mdns(mac(1), T0), T0);
    let service = |instance: &str, port| MdnsService {
        service_type: "_googlecast._tcp.local.".into(),
        instance: instance.into(),
        port,
        txt: Vec::new(),
    };
    core.apply(
        obs(mac(1), T0, ObservationKind::MdnsService(service("B", 8009))),
        T0,
    );
    core.apply(
        obs(mac(1), T0, ObservationKind::MdnsService(service("A", 8009))),
        T0,
    );
    let changes = core.apply(
        obs(mac(1), T0, ObservationKind::MdnsService(service("A", 8010))),
        T0,
    );
    assert_eq!(
        only_delta(&changes).1,
        vec![Field::MdnsServices(vec![
            service("A", 8010),
            service("B", 8009)
        ])]
    );
    let gone = ObservationKind::MdnsServiceGone {
        service_type: "_googlecast._tcp.local.".into(),
        instance: "B".into(),
    };
    let changes = core.apply(obs(mac(1), T0, gone), T0);
    assert_eq!(
        only_delta(&changes).1,
        vec![Field::MdnsServices(vec![service("A", 8010)])]
    );
    let app = |name: &str| DialApp {
        name: name.into(),
        state: DialAppState::Stopped,
        additional_data: None,
    };
    let dial = ObservationKind::Dial {
        apps: vec![app("YouTube"), app("Netflix")],
    };
    let changes = core.apply(obs(mac(1), T0 + SEC, dial), T0 + SEC);
    assert_eq!(
        only_delta(&changes).1,
        vec![
            Field::DialApps(vec![app("Netflix"), app("YouTube")]),
            Field::LastSeen(T0 + SEC)
        ]
    );
}

#[test]
fn availability_and_esn_are_set_by_actions() {
    let mut core = core();
    let session = open(&mut core, mac(1), v4(10), T0);
    let set = |availability| Action::SetAvailability {
        device: DeviceRef::Mac(mac(1)),
        availability,
    };
    let changes = core.act(&set(Availability::InTest), "raectl", T0).unwrap();
    let (seq, fields) = only_delta(&changes);
    assert_eq!(
        (seq, fields),
        (2, vec![Field::Availability(Availability::InTest)])
    );
    let Change::Updated { cause, .. } = &changes[0] else {
        unreachable!()
    };
    assert_eq!(cause.summary, "availability set to in_test (by raectl)");
    assert!(core
        .act(&set(Availability::InTest), "raectl", T0)
        .unwrap()
        .is_empty());

    let esn = |esn: Option<&str>| Action::SetEsn {
        device: DeviceRef::Session(session),
        esn: esn.map(str::to_owned),
    };
    let changes = core
        .act(&esn(Some("NFANDROID2-PRV-1234")), "cloud", T0)
        .unwrap();
    assert_eq!(
        only_delta(&changes),
        (3, vec![Field::Esn(Some("NFANDROID2-PRV-1234".into()))])
    );
    assert_eq!(
        core.act(&esn(Some("has space")), "cloud", T0),
        Err(ActionError::InvalidEsn(EsnError::InvalidChar))
    );
    let unknown = DeviceRef::Mac(mac(9));
    assert_eq!(
        core.act(&Action::Forget { device: unknown }, "raectl", T0),
        Err(ActionError::UnknownDevice(unknown))
    );
}

#[test]
fn forget_closes_and_the_next_frame_opens_a_new_session() {
    let mut core = core();
    let first = open(&mut core, mac(1), v4(10), T0);
    let changes = core
        .act(
            &Action::Forget {
                device: DeviceRef::Mac(mac(1)),
            },
            "raectl",
            T0 + SEC,
        )
        .unwrap();
    assert!(matches!(
        changes.as_slice(),
        [Change::Closed {
            seq: 2,
            reason: CloseReason::Forgotten,
            ..
        }]
    ));
    let again = open(&mut core, mac(1), v4(10), T0 + 2 * SEC);
    assert_ne!(again, first);
}

#[test]
fn periodic_snapshots_come_once_per_interval_per_session() {
    let mut core = core();
    for i in 0..20u8 {
        open(&mut core, mac(i), v4(i), T0);
    }
    let mut snapshots = std::collections::BTreeMap::<_, Vec<i64>>::new();
    let mut now = T0;
    while now <= T0 + 900 * SEC {
        if now % (10 * SEC) == 0 {
            // Keep every device alive.
            for i in 0..20u8 {
                core.apply(mdns(mac(i), now), now);
            }
        }
        for change in core.tick(now) {
            match change {
                Change::Snapshot { session, .. } => snapshots.entry(session).or_default().push(now),
                other => panic!("unexpected {other:?}"),
            }
        }
        now += SEC;
    }
    assert_eq!(snapshots.len(), 20);
    for times in snapshots.values() {
        // 900 s: two or three slots, none within 150 s of the Opened Snapshot.
        assert!((2..=3).contains(&times.len()), "{times:?}");
        assert!(times[0] - T0 >= 150 * SEC, "{times:?}");
        for pair in times.windows(2) {
            assert_eq!(pair[1] - pair[0], 300 * SEC);
        }
    }
}

#[test]
fn a_restart_keeps_sessions_and_seq() {
    let mut core = core();
    let session = open(&mut core, mac(1), v4(10), T0);
    core.apply(arp_announce(mac(1), v4(11), T0 + SEC), T0 + SEC);
    let stored: Vec<RestoredSession> = core.export().sessions();
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0].session, stored[0].seq), (session, 2));

    let mut restarted = Core::new(&config(), stored, SeededSessionIds::new(99)).unwrap();
    let changes = restarted.apply(arp_announce(mac(1), v4(12), T0 + 2 * SEC), T0 + 2 * SEC);
    assert_eq!(changes[0].session(), session);
    assert_eq!(only_delta(&changes).0, 3);
}

#[test]
fn restored_duplicates_of_one_mac_are_closed_at_the_first_tick() {
    let mut core = core();
    let session = open(&mut core, mac(1), v4(10), T0);
    let mut stored = core.export().sessions();
    let mut stale = stored[0].clone();
    stale.session = rae_proto::SessionId::from_bytes([9; 16]);
    stale.seq = 7;
    stale.record.last_seen_ms -= 1;
    stored.push(stale.clone());
    let mut restarted = Core::new(&config(), stored, SeededSessionIds::new(2)).unwrap();
    assert_eq!(restarted.sessions().next().unwrap().session, session);
    let changes = restarted.tick(T0 + SEC);
    assert!(matches!(
        changes.as_slice(),
        [Change::Closed { session, seq: 8, .. }] if *session == stale.session
    ));
}

#[test]
fn a_bad_config_is_refused() {
    let config = CoreConfig {
        offline_after_misses: 0,
        ..config()
    };
    assert!(Core::new(&config, Vec::new(), SeededSessionIds::new(1)).is_err());
}
