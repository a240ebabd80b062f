//! The core's indexes against full scans of its sessions on random histories: the deadline
//! queue and phase sets (`tick`, `due_probes`, `next_deadline`), the session-id index and
//! the address index (`mac_for_ip`, contests). The scans are the core's code before the
//! indexes existed, kept here as the reference. The fast path of `apply` is checked the
//! same way, against a core that takes every observation the full way.

use std::net::IpAddr;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::select;

use super::*;
use crate::registry::ids::SeededSessionIds;
use crate::registry::observation::{ArpKind, DhcpClient, DhcpMessage, NdpKind, ObservationKind};

const T0: i64 = 1_795_600_000_000;

fn config() -> CoreConfig {
    CoreConfig {
        probe_interval: Duration::from_millis(1000),
        probe_timeout: Duration::from_millis(300),
        offline_after_misses: 2,
        gone_after: Duration::from_secs(30),
        snapshot_interval: Duration::from_secs(10),
        ipv6_expire_after: Duration::from_secs(5),
        conflict_note_interval: Duration::from_secs(4),
        max_ipv6_per_device: 3,
        own_macs: Vec::new(),
        max_sessions: 4096,
    }
}

fn mac(last: u8) -> Mac {
    Mac([0x00, 0x00, 0xf0, 0x00, 0x00, last])
}

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, last)
}

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

fn addresses() -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = (10..13).map(|i| IpAddr::V4(v4(i))).collect();
    all.extend((1..5).map(|i| IpAddr::V6(v6(i))));
    all
}

/// The old `next_deadline`: four deadlines per session, plus the IPv6 ageing one.
fn scan_next_deadline<I: SessionIds>(core: &Core<I>, now: i64) -> Option<i64> {
    if !core.duplicates.is_empty() {
        return Some(now);
    }
    let timers = &core.timers;
    core.sessions
        .values()
        .flat_map(|session| {
            let heard = session.heard_ms;
            let offline = (session.record.reachability.state == Liveness::Online)
                .then(|| timers.offline_at(session.id, heard));
            [
                Some(timers.gone_at(heard)),
                offline,
                Some(timers.next_round(session.id, now)),
                Some(timers.next_snapshot_slot(session.id, now)),
                session.ipv6_age_at(timers),
            ]
        })
        .flatten()
        .min()
        .map(|deadline| deadline.max(now))
}

impl<I: SessionIds> Core<I> {
    /// The old `tick`: every session visited.
    fn scan_tick(&mut self, now_ms: i64) -> Vec<Change> {
        let mut out = self.close_duplicates(now_ms);
        let macs: Vec<Mac> = self.sessions.keys().copied().collect();
        for mac in macs {
            self.expire(mac, now_ms, &mut out);
        }
        if let Some(cursor) = self.tick_cursor.filter(|cursor| *cursor < now_ms) {
            for session in self.sessions.values_mut() {
                periodic_snapshot(&self.timers, session, cursor, now_ms, now_ms, &mut out);
            }
        }
        self.tick_cursor = Some(self.tick_cursor.map_or(now_ms, |c| c.max(now_ms)));
        out
    }

    /// The old `due_probes`: every session visited.
    fn scan_due_probes(&mut self, now_ms: i64) -> Vec<ProbeRequest> {
        let from = self.probe_from(now_ms);
        let probes = self
            .sessions
            .values()
            .filter_map(|session| self.probe(session, from, now_ms))
            .collect();
        self.probe_cursor = Some(from.max(now_ms));
        probes
    }

    /// The old `mac_for_ip`.
    fn scan_mac_for_ip(&self, ip: IpAddr) -> Option<Mac> {
        let holds = |record: &DeviceRecord| match ip {
            IpAddr::V4(v4) => record.ipv4 == Some(v4),
            IpAddr::V6(v6) => record.ipv6.binary_search(&v6).is_ok(),
        };
        self.sessions
            .values()
            .filter(|s| holds(&s.record))
            .max_by_key(|s| {
                let r = &s.record;
                (r.reachability.state == Liveness::Online, s.heard_ms, r.mac)
            })
            .map(|s| s.record.mac)
    }
}

/// The indexes hold what indexes built afresh from the sessions hold, and every contest is
/// over an address two sessions hold (what the old `prune_contests` kept).
fn check_indexes(core: &Core<SeededSessionIds>) -> Result<(), TestCaseError> {
    let rebuilt =
        Core::resume(&config(), core.export(), SeededSessionIds::new(0)).expect("config valid");
    prop_assert_eq!(core.deadlines.entries(), rebuilt.deadlines.entries());
    prop_assert_eq!(core.addresses.holder_map(), rebuilt.addresses.holder_map());
    prop_assert_eq!(&core.by_id, &rebuilt.by_id);
    for ip in core.addresses.contests.keys() {
        let holders = core
            .sessions
            .values()
            .filter(|s| match ip {
                IpAddr::V4(v4) => s.record.ipv4 == Some(*v4),
                IpAddr::V6(v6) => s.record.ipv6.contains(v6),
            })
            .count();
        prop_assert!(holders >= 2, "a contest over {ip} held by {holders}");
    }
    for ip in addresses() {
        prop_assert_eq!(core.mac_for_ip(ip), core.scan_mac_for_ip(ip));
    }
    for session in core.sessions.values() {
        let found = core
            .session(&DeviceRef::Session(session.id))
            .map(|v| v.record.mac);
        prop_assert_eq!(found, Some(session.record.mac));
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Input {
    Observe {
        mac: Mac,
        lag_ms: i64,
        kind: ObservationKind,
    },
    Forget(Mac),
    Tick,
    Probes,
}

fn kind() -> impl Strategy<Value = ObservationKind> {
    let ip4 = select(vec![v4(10), v4(11), v4(12)]);
    let ip6 = select(vec![v6(1), v6(2), v6(3), v6(4)]);
    let ndp = select(vec![
        NdpKind::NeighborAdvert,
        NdpKind::NeighborSolicit,
        NdpKind::DadProbe,
    ]);
    prop_oneof![
        3 => (ip4.clone(), select(vec![ArpKind::Reply, ArpKind::Announcement]))
            .prop_map(|(ip, kind)| ObservationKind::Arp { ip: Some(ip), kind }),
        1 => ip4.clone().prop_map(|ip| ObservationKind::DhcpAck { ip }),
        1 => ip4.prop_map(|ip| ObservationKind::DhcpClient(DhcpClient {
            message: DhcpMessage::Release,
            ciaddr: Some(ip),
            ..DhcpClient::default()
        })),
        3 => (ip6.clone(), ndp).prop_map(|(ip, kind)| ObservationKind::Ndp { ip: Some(ip), kind }),
        1 => (ip6, 100u32..5000).prop_map(|(ip, rtt_us)| ObservationKind::ProbeReply {
            ip: IpAddr::V6(ip),
            rtt_us,
        }),
        2 => any::<bool>().prop_map(|response| ObservationKind::Mdns { response }),
    ]
}

fn step() -> impl Strategy<Value = (i64, Input)> {
    let macs = select((1..7).map(mac).collect::<Vec<_>>());
    let dt = prop_oneof![
        8 => 0i64..1500,
        3 => 1500i64..8000,
        1 => 8000i64..40_000,
    ];
    let input = prop_oneof![
        10 => (macs.clone(), 0i64..800, kind())
            .prop_map(|(mac, lag_ms, kind)| Input::Observe { mac, lag_ms, kind }),
        1 => macs.prop_map(Input::Forget),
        4 => Just(Input::Tick),
        3 => Just(Input::Probes),
    ];
    (dt, input)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_queue_answers_what_a_full_scan_answers(
        steps in proptest::collection::vec(step(), 1..200),
        seed in any::<u64>(),
    ) {
        let mut core = Core::new(&config(), Vec::new(), SeededSessionIds::new(seed))
            .expect("config valid");
        let mut full = Core::new(&config(), Vec::new(), SeededSessionIds::new(seed))
            .expect("config valid");
        full.full_path_only = true;
        let mut now = T0;
        for (dt, input) in steps {
            now += dt;
            prop_assert_eq!(core.next_deadline(now), scan_next_deadline(&core, now));
            match input {
                Input::Observe { mac, lag_ms, kind } => {
                    let obs = Observation { mac, at_ms: now - lag_ms, kind };
                    prop_assert_eq!(core.apply(obs.clone(), now), full.apply(obs, now));
                }
                Input::Forget(mac) => {
                    let forget = Action::Forget { device: DeviceRef::Mac(mac) };
                    // An unknown device is refused, as it should be.
                    let _ = core.act(&forget, "proptest", now);
                    let _ = full.act(&forget, "proptest", now);
                }
                Input::Tick => {
                    let mut twin = Core::resume(&config(), core.export(), core.ids.clone())
                        .expect("config valid");
                    let expected = twin.scan_tick(now);
                    prop_assert_eq!(core.tick(now), expected);
                    prop_assert_eq!(core.export(), twin.export());
                    full.tick(now);
                }
                Input::Probes => {
                    let mut twin = Core::resume(&config(), core.export(), core.ids.clone())
                        .expect("config valid");
                    let expected = twin.scan_due_probes(now);
                    prop_assert_eq!(core.due_probes(now), expected);
                    prop_assert_eq!(core.export(), twin.export());
                    full.due_probes(now);
                }
            }
            check_indexes(&core)?;
            prop_assert_eq!(core.next_deadline(now), scan_next_deadline(&core, now));
            prop_assert_eq!(core.export(), full.export());
        }
    }
}

/// The histories above mean something only if they reach what the indexes must follow.
#[test]
fn random_histories_reach_expiry_snapshots_probes_and_contests() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let (mut probes, mut snapshots, mut gone, mut aged, mut v6_conflicts) = (0, 0, 0, 0, 0);
    for seed in 0..100u64 {
        let steps = proptest::collection::vec(step(), 100..200)
            .new_tree(&mut runner)
            .expect("strategy")
            .current();
        let mut core =
            Core::new(&config(), Vec::new(), SeededSessionIds::new(seed)).expect("config valid");
        let mut now = T0;
        for (dt, input) in steps {
            now += dt;
            let changes = match input {
                Input::Observe { mac, lag_ms, kind } => core.apply(
                    Observation {
                        mac,
                        at_ms: now - lag_ms,
                        kind,
                    },
                    now,
                ),
                Input::Forget(_) => Vec::new(),
                Input::Tick => core.tick(now),
                Input::Probes => {
                    probes += core.due_probes(now).len();
                    Vec::new()
                }
            };
            for change in changes {
                match change {
                    Change::Snapshot { .. } => snapshots += 1,
                    Change::Closed { .. } => gone += 1,
                    Change::Updated { cause, .. } if cause.summary.contains("ipv6_expire") => {
                        aged += 1;
                    }
                    Change::Conflict {
                        ip: IpAddr::V6(_), ..
                    } => v6_conflicts += 1,
                    _ => {}
                }
            }
        }
    }
    for (what, count) in [
        ("probes", probes),
        ("periodic snapshots", snapshots),
        ("closed sessions", gone),
        ("aged IPv6 addresses", aged),
        ("IPv6 conflicts", v6_conflicts),
    ] {
        assert!(count > 0, "the histories never produce {what}");
    }
}
