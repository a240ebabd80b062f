//! Property tests of the registry core over random streams of observations, actions, ticks
//! and probe polls, on short timers so that sessions open, go offline, close and reopen.

mod registry_support;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::select;
use rae_agent::registry::{
    Action, ArpKind, Change, Core, CoreConfig, CoreState, DhcpClient, DhcpMessage, NdpKind,
    Observation, ObservationKind, SeededSessionIds, SessionIds, SsdpKind,
};
use rae_proto::{Availability, DeviceRef, Mac, SessionId, Text};
use registry_support::{mac, v4, v6, OWN, T0};

fn short_config() -> CoreConfig {
    CoreConfig {
        probe_interval: Duration::from_millis(1000),
        probe_timeout: Duration::from_millis(300),
        offline_after_misses: 2,
        gone_after: Duration::from_secs(30),
        snapshot_interval: Duration::from_secs(10),
        ipv6_expire_after: Duration::from_secs(5),
        conflict_note_interval: Duration::from_secs(4),
        max_ipv6_per_device: 3,
        own_macs: vec![OWN],
        max_sessions: 4096,
    }
}

/// The MACs the streams use: three devices, the RAE itself and a randomized one.
fn macs() -> Vec<Mac> {
    vec![
        mac(1),
        mac(2),
        mac(3),
        OWN,
        Mac([0x06, 0x11, 0x22, 0x33, 0x44, 0x55]),
    ]
}

#[derive(Clone, Debug)]
enum Input {
    Observe {
        mac: Mac,
        lag_ms: i64,
        kind: ObservationKind,
    },
    Act(Action),
    Tick,
    Probes,
}

#[derive(Clone, Debug)]
struct Step {
    dt_ms: i64,
    input: Input,
}

fn kind() -> impl Strategy<Value = ObservationKind> {
    let ip4 = select(vec![v4(10), v4(11), v4(12)]);
    let ip6 = select(vec![v6(1), v6(2), v6(3), v6(4)]);
    let name = select(vec!["tv", "stb", "stick"]);
    prop_oneof![
        4 => (ip4.clone(), select(vec![ArpKind::Reply, ArpKind::Announcement, ArpKind::Request]))
            .prop_map(|(ip, kind)| ObservationKind::Arp { ip: Some(ip), kind }),
        1 => Just(ObservationKind::Arp { ip: None, kind: ArpKind::Probe }),
        2 => (
            select(vec![DhcpMessage::Discover, DhcpMessage::Request, DhcpMessage::Inform, DhcpMessage::Release]),
            proptest::option::of(ip4.clone()),
            proptest::option::of(name.clone()),
        )
            .prop_map(|(message, ciaddr, hostname)| ObservationKind::DhcpClient(DhcpClient {
                message,
                ciaddr,
                hostname: hostname.map(Text::from),
                param_request_list: Some(vec![1, 3, 6]),
                ..DhcpClient::default()
            })),
        2 => ip4.clone().prop_map(|ip| ObservationKind::DhcpAck { ip }),
        2 => (ip6.clone(), select(vec![NdpKind::NeighborAdvert, NdpKind::NeighborSolicit]))
            .prop_map(|(ip, kind)| ObservationKind::Ndp { ip: Some(ip), kind }),
        2 => (ip4, 100u32..5000).prop_map(|(ip, rtt_us)| ObservationKind::ProbeReply {
            ip: IpAddr::V4(ip),
            rtt_us
        }),
        1 => (ip6, 100u32..5000).prop_map(|(ip, rtt_us)| ObservationKind::ProbeReply {
            ip: IpAddr::V6(ip),
            rtt_us
        }),
        2 => any::<bool>().prop_map(|response| ObservationKind::Mdns { response }),
        1 => name.prop_map(|n| ObservationKind::MdnsHost { hostname: Text::from(format!("{n}.local")) }),
        1 => Just(ObservationKind::Ssdp { kind: SsdpKind::Notify }),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    let device = select(macs()).prop_map(DeviceRef::Mac);
    prop_oneof![
        (device.clone(), select(Availability::ALL.to_vec())).prop_map(|(device, availability)| {
            Action::SetAvailability {
                device,
                availability,
            }
        }),
        (
            device.clone(),
            select(vec![Some("ESN-1"), Some("bad esn"), None])
        )
            .prop_map(|(device, esn)| Action::SetEsn {
                device,
                esn: esn.map(str::to_owned)
            }),
        proptest::option::of(device.clone()).prop_map(|device| Action::Resync { device }),
        device.prop_map(|device| Action::Forget { device }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let dt = prop_oneof![
        8 => 0i64..1500,
        3 => 1500i64..8000,
        1 => 8000i64..40_000,
    ];
    let input = prop_oneof![
        10 => (select(macs()), 0i64..800, kind())
            .prop_map(|(mac, lag_ms, kind)| Input::Observe { mac, lag_ms, kind }),
        1 => action().prop_map(Input::Act),
        4 => Just(Input::Tick),
        2 => Just(Input::Probes),
    ];
    (dt, input).prop_map(|(dt_ms, input)| Step { dt_ms, input })
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(step(), 1..160)
}

/// Ids from one seeded stream, shareable between a core and the one that resumes it.
fn shared_ids(seed: u64) -> impl SessionIds + Clone {
    let ids = Rc::new(RefCell::new(SeededSessionIds::new(seed)));
    move || ids.borrow_mut().next_id()
}

/// Runs `steps` from time `start`; returns every Change and the time reached.
fn run<I: SessionIds>(core: &mut Core<I>, steps: &[Step], start: i64) -> (Vec<Change>, i64) {
    let mut now = start;
    let mut out = Vec::new();
    for step in steps {
        now += step.dt_ms;
        match &step.input {
            Input::Observe { mac, lag_ms, kind } => {
                let obs = Observation {
                    mac: *mac,
                    at_ms: now - lag_ms,
                    kind: kind.clone(),
                };
                out.extend(core.apply(obs, now));
            }
            Input::Act(action) => {
                if let Ok(changes) = core.act(action, "proptest", now) {
                    out.extend(changes);
                }
            }
            Input::Tick => out.extend(core.tick(now)),
            Input::Probes => {
                for probe in core.due_probes(now) {
                    assert!(probe.ipv4.is_some() || !probe.ipv6.is_empty());
                }
            }
        }
    }
    (out, now)
}

/// Checks seq and session invariants over a stream; `open` holds the sessions open before
/// it (session -> (mac, last seq)).
fn check_stream(
    changes: &[Change],
    open: &mut BTreeMap<SessionId, (Mac, u64)>,
) -> Result<(), TestCaseError> {
    let mut closed: BTreeSet<SessionId> = BTreeSet::new();
    for change in changes {
        let session = change.session();
        prop_assert!(
            !closed.contains(&session),
            "a Change after Closed: {change:?}"
        );
        match change {
            Change::Opened { seq, record, .. } => {
                prop_assert_eq!(*seq, 1);
                prop_assert!(!open.contains_key(&session), "session reused: {:?}", change);
                prop_assert!(record.mac != OWN, "the RAE's own MAC opened a session");
                prop_assert!(
                    open.values().all(|(mac, _)| *mac != record.mac),
                    "two open sessions for {}",
                    record.mac
                );
                open.insert(session, (record.mac, 1));
            }
            other => {
                let Some((mac, last)) = open.get_mut(&session) else {
                    return Err(TestCaseError::fail(format!("unknown session: {other:?}")));
                };
                if let Change::Updated { mac: m, .. } | Change::Closed { mac: m, .. } = other {
                    prop_assert_eq!(m, mac);
                }
                if let Some(seq) = other.seq() {
                    prop_assert_eq!(seq, *last + 1, "seq must grow by one: {:?}", other);
                    *last = seq;
                }
                if let Change::Updated { fields, .. } = other {
                    prop_assert!(!fields.is_empty());
                    let only_last_seen = fields
                        .iter()
                        .all(|f| matches!(f, rae_proto::Field::LastSeen(_)));
                    prop_assert!(!only_last_seen, "a Delta of last_seen alone");
                }
                if matches!(other, Change::Closed { .. }) {
                    open.remove(&session);
                    closed.insert(session);
                }
            }
        }
    }
    Ok(())
}

fn fresh_core(seed: u64) -> Core<impl SessionIds + Clone> {
    Core::new(&short_config(), Vec::new(), shared_ids(seed)).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn seq_grows_by_one_and_a_mac_has_at_most_one_open_session(
        steps in steps(),
        seed in any::<u64>(),
    ) {
        let mut core = fresh_core(seed);
        let (changes, _) = run(&mut core, &steps, T0);
        let mut open = BTreeMap::new();
        check_stream(&changes, &mut open)?;
        // The core's own view agrees with the stream.
        let views: BTreeMap<SessionId, (Mac, u64)> = core
            .sessions()
            .map(|s| (s.session, (s.record.mac, s.seq)))
            .collect();
        prop_assert_eq!(views, open);
    }

    #[test]
    fn the_same_inputs_give_the_same_changes(steps in steps(), seed in any::<u64>()) {
        let (first, _) = run(&mut fresh_core(seed), &steps, T0);
        let (second, _) = run(&mut fresh_core(seed), &steps, T0);
        prop_assert_eq!(first, second);
    }

    #[test]
    fn resuming_from_an_export_is_the_same_as_never_stopping(
        steps in steps(),
        split in any::<proptest::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let (whole, _) = run(&mut fresh_core(seed), &steps, T0);

        let split = split.index(steps.len() + 1);
        let ids = shared_ids(seed);
        let mut before = Core::new(&short_config(), Vec::new(), ids.clone()).unwrap();
        let (mut changes, now) = run(&mut before, &steps[..split], T0);
        let state: CoreState = before.export();
        drop(before);
        let mut after = Core::resume(&short_config(), state, ids).unwrap();
        let (rest, _) = run(&mut after, &steps[split..], now);
        changes.extend(rest);
        prop_assert_eq!(changes, whole);
    }

    #[test]
    fn a_restart_from_the_stored_sessions_keeps_sessions_and_seq(
        steps in steps(),
        split in any::<proptest::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let split = split.index(steps.len() + 1);
        let ids = shared_ids(seed);
        let mut before = Core::new(&short_config(), Vec::new(), ids.clone()).unwrap();
        let (mut changes, now) = run(&mut before, &steps[..split], T0);
        let stored = before.export().sessions();
        let mut after = Core::new(&short_config(), stored.clone(), ids).unwrap();
        let kept: Vec<_> = after.inventory();
        let mut expected: Vec<_> = stored
            .iter()
            .map(|s| rae_proto::SessionSeq { session: s.session, seq: s.seq })
            .collect();
        expected.sort();
        prop_assert_eq!(kept, expected);
        let (rest, _) = run(&mut after, &steps[split..], now);
        changes.extend(rest);
        check_stream(&changes, &mut BTreeMap::new())?;
    }

    #[test]
    fn published_events_and_seen_rebuild_every_open_record(
        steps in steps(),
        seed in any::<u64>(),
    ) {
        let mut core = fresh_core(seed);
        let (changes, _) = run(&mut core, &steps, T0);
        for view in core.sessions() {
            let folded = registry_support::fold(&changes, view.session);
            let Some(mut folded) = folded else {
                return Err(TestCaseError::fail("an open session without its Opened"));
            };
            let mut current = view.record.clone();
            // The RTT moves without an event, by design.
            folded.reachability.rtt_us = None;
            current.reachability.rtt_us = None;
            prop_assert_eq!(folded, current);
        }
    }
}

/// The properties above mean something only if the streams reach every kind of transition.
#[test]
fn the_generated_streams_reach_every_transition() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    use rae_agent::registry::ConflictKind;
    use rae_proto::{CloseReason, Evidence, Field};

    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let mut seen = BTreeSet::new();
    for case in 0..300u64 {
        let steps = steps().new_tree(&mut runner).unwrap().current();
        let (changes, _) = run(&mut fresh_core(case), &steps, T0);
        for change in &changes {
            let name = match change {
                Change::Opened { .. } => "opened",
                Change::Updated { fields, .. } => match fields.first() {
                    Some(Field::Reachability(r))
                        if matches!(r.evidence, Evidence::ProbeMissed { .. }) =>
                    {
                        "offline"
                    }
                    Some(Field::Reachability(_)) => "online",
                    _ => "updated",
                },
                Change::Snapshot { .. } => "snapshot",
                Change::Closed {
                    reason: CloseReason::Gone,
                    ..
                } => "gone",
                Change::Closed {
                    reason: CloseReason::Forgotten,
                    ..
                } => "forgotten",
                Change::Seen { .. } => "seen",
                Change::Conflict {
                    kind: ConflictKind::Claimed,
                    ..
                } => "claimed",
                Change::Conflict {
                    kind: ConflictKind::Reassigned,
                    ..
                } => "reassigned",
                Change::Conflict {
                    kind: ConflictKind::FlipFlop { .. },
                    ..
                } => "flip-flop",
            };
            seen.insert(name);
        }
    }
    let all = [
        "opened",
        "offline",
        "online",
        "updated",
        "snapshot",
        "gone",
        "forgotten",
        "seen",
        "claimed",
        "reassigned",
        "flip-flop",
    ];
    let missing: Vec<_> = all.iter().filter(|n| !seen.contains(*n)).collect();
    assert!(missing.is_empty(), "the streams never produce {missing:?}");
}
