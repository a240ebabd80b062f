//! IPv6 addresses in the whole agent: the real `rae-agent` on the lab bridge, DUTs whose
//! kernels do Duplicate Address Detection, a real mosquitto with a subscriber standing in
//! for the cloud, and `raectl` reading the agent's database as an operator would.
//!
//! - A DUT that forms a global SLAAC address and speaks only from its link-local address
//!   shows the global one on the wire in its DAD probe alone (a Neighbor Solicitation from
//!   `::` for the tentative address, RFC 4862 5.4); the agent must record it anyway. A
//!   tcpdump on the DUT's bridge port checks that the DUT really never volunteered it.
//! - Two live DUTs using one static IPv6 address are a conflict, recorded like an IPv4 one:
//!   both records keep the address and each session's history notes the other MAC.
//!
//! Needs root, iproute2, busybox, dnsmasq, mosquitto and tcpdump; and the agent built
//! (`cargo build -p rae-agent --bins`).

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::time::Duration;

use rae_proto::{DeviceRecord, Envelope, Event, Mac, SessionId};
use rae_tests::agent::{raectl, Agent, AgentSpec};
use rae_tests::mqtt_watch::{MqttWatch, Received};
use rae_tests::netlab::{wait_until, Dut, DutKind, DutSpec, Lab, LabConfig, MacAddr, Wire};
use rae_tests::services::Mosquitto;

const WAIT: Duration = Duration::from_secs(60);
const SERIAL: &str = "LAB-RAE-V6";

struct Bed {
    lab: Lab,
    // Kept for the test's length: the agent and the subscriber talk through it.
    _broker: Mosquitto,
    watch: MqttWatch,
    spec: AgentSpec,
}

fn bed() -> Bed {
    let lab = Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("starting the lab: {e}"));
    let broker = Mosquitto::start().unwrap_or_else(|e| panic!("starting mosquitto: {e}"));
    let watch = MqttWatch::start(broker.host(), broker.port(), "cloud-watch", &["rae/v1/#"])
        .unwrap_or_else(|e| panic!("subscribing: {e}"));
    let mut spec = AgentSpec::for_lab(
        SERIAL,
        lab.bridge_name(),
        &lab.dir().join("agent"),
        broker.host(),
        broker.port(),
    );
    // Nothing here answers SSDP or mDNS; their queries would only add traffic to read past.
    spec.ssdp = false;
    spec.mdns = false;
    spec.gone_after_secs = 600;
    Bed {
        lab,
        _broker: broker,
        watch,
        spec,
    }
}

fn add(lab: &Lab, spec: DutSpec) -> Dut {
    let name = spec.name.clone();
    lab.add_dut(spec).unwrap_or_else(|e| {
        panic!(
            "adding DUT {name}: {e}\ndnsmasq log:\n{}",
            lab.dnsmasq_log()
        )
    })
}

fn mac(m: MacAddr) -> Mac {
    Mac(m.0)
}

/// The record of `device`'s open session as a cloud consumer has it from the events so
/// far: its Snapshot with every Delta after it applied, in seq order.
fn open_record(events: &[Envelope], device: Mac) -> Option<(SessionId, DeviceRecord)> {
    let mut sessions: BTreeMap<SessionId, (Option<DeviceRecord>, bool)> = BTreeMap::new();
    let mut ordered: Vec<&Envelope> = events.iter().collect();
    ordered.sort_by_key(|e| (e.session, e.seq));
    for e in ordered {
        let (record, closed) = sessions.entry(e.session).or_default();
        match &e.event {
            Event::Snapshot { record: r } => *record = Some((**r).clone()),
            Event::Delta { fields } => {
                if let Some(record) = record.as_mut() {
                    for f in fields {
                        record.apply(f.clone());
                    }
                }
            }
            Event::Closed { .. } => *closed = true,
        }
    }
    sessions
        .into_iter()
        .filter(|(_, (_, closed))| !closed)
        .find_map(|(id, (record, _))| record.filter(|r| r.mac == device).map(|r| (id, r)))
}

/// Waits until the subscriber's record of `device` satisfies `check`; on timeout the
/// message shows the record as the subscriber had it.
fn wait_record(
    bed: &Bed,
    agent: &mut Agent,
    device: Mac,
    what: &str,
    check: impl Fn(&DeviceRecord) -> bool,
) -> (SessionId, DeviceRecord) {
    let found = wait_until(format!("{device} at the subscriber: {what}"), WAIT, || {
        agent.ensure_running()?;
        let events: Vec<Envelope> = bed
            .watch
            .messages()
            .iter()
            .filter_map(Received::event)
            .collect();
        Ok(match open_record(&events, device) {
            Some((id, record)) if check(&record) => Ok((id, record)),
            Some((_, record)) => Err(format!("record ipv6 {:?}", record.ipv6)),
            None => Err("no open session".to_owned()),
        })
    });
    found.unwrap_or_else(|e| panic!("{e}\nagent log tail:\n{}", agent.log_tail()))
}

/// `raectl show <mac> --json` with enough history to hold every row of a short test.
fn show_json(spec: &AgentSpec, device: MacAddr) -> serde_json::Value {
    let mac = device.to_string();
    let (status, out, err) = raectl(spec, &["show", &mac, "--limit", "500", "--json"])
        .unwrap_or_else(|e| panic!("running raectl show {mac}: {e}"));
    assert!(status.success(), "raectl show {mac} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("raectl show --json: {e}\n{out}"))
}

fn shown_ipv6(show: &serde_json::Value) -> Vec<Ipv6Addr> {
    show["record"]["ipv6"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect()
}

/// The history rows of kind `conflict` as `summary | fields`.
fn conflict_rows(show: &serde_json::Value) -> Vec<String> {
    show["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["kind"] == "conflict")
        .map(|row| {
            format!(
                "{} | {}",
                row["summary"].as_str().unwrap_or_default(),
                row["fields"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// What the DUT's bridge port shows about `global` and the DUT's IPv6 sources: the
/// frames the DUT sent that vouch for `global` before anyone asked for it, and the
/// sources other than `::` and its link-local address it used in that time.
fn volunteered(wire: &Wire, dut: MacAddr, global: Ipv6Addr, link_local: Ipv6Addr) -> Vec<String> {
    let mut found = Vec::new();
    for (n, frame) in wire.frames.iter().enumerate() {
        if frame.src != dut {
            if frame.asks_for(global) {
                // Answers from here on were asked for (the agent probing what it learned).
                break;
            }
            continue;
        }
        let Some(src) = frame.ipv6_src() else {
            continue;
        };
        if frame.vouches_for(global) || !(src.is_unspecified() || src == link_local) {
            found.push(format!("frame {n}: {frame:?}"));
        }
    }
    found
}

#[test]
fn a_slaac_dut_that_speaks_only_from_its_link_local_address_appears_with_its_global_one() {
    let bed = bed();
    let mut agent = Agent::start_online(&bed.spec, &bed.watch, WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
        .0;
    // DAD as kernels do it by default, no unsolicited advertisements, and a tcpdump on its
    // bridge port from before its link comes up.
    let mut dut = add(
        &bed.lab,
        DutSpec::new("v6-quiet", DutKind::Slaac)
            .with_dad(true)
            .with_wire_record(),
    );
    let global = dut
        .slaac_addr()
        .ok()
        .flatten()
        .expect("the DUT formed a SLAAC address from the lab's prefix");
    let link_local = dut
        .link_local_v6()
        .ok()
        .flatten()
        .expect("the DUT has a link-local address");
    // It talks, to link-local destinations only: the source is its link-local address.
    // The first ping may go unanswered while the DUT's neighbour entry for the router
    // still has the MAC the bridge had before this DUT's port joined it.
    wait_until(
        "the DUT reaching the router's link-local address",
        WAIT,
        || {
            Ok(match dut.ping_router_link_local()? {
                true => Ok(()),
                false => Err("no reply".to_owned()),
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let device = mac(dut.mac());
    let (session, record) = wait_record(&bed, &mut agent, device, "its global address", |r| {
        r.ipv6.contains(&global)
    });
    assert!(
        record.ipv4.is_none(),
        "an IPv6-only DUT has no IPv4 in its record: {record:?}"
    );

    // raectl shows the same from the database.
    let show = wait_until("raectl show lists the global address", WAIT, || {
        let show = show_json(&bed.spec, dut.mac());
        Ok(match shown_ipv6(&show).contains(&global) {
            true => Ok(show),
            false => Err(format!("record ipv6 {:?}", shown_ipv6(&show))),
        })
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(show["session"], session.to_string(), "the same session");
    let (status, text, err) =
        raectl(&bed.spec, &["show", &dut.mac().to_string()]).expect("raectl show");
    assert!(status.success(), "raectl show failed: {err}");
    assert!(
        text.contains(&global.to_string()),
        "raectl show names {global}:\n{text}"
    );

    // The wire: the address was there only in the DUT's DAD probe, so the agent cannot
    // have learned it from anything else the DUT sent.
    let wire = dut
        .take_wire_record()
        .expect("the DUT was recorded")
        .finish()
        .unwrap_or_else(|e| panic!("reading the DUT's wire record: {e}"));
    let ours = |f: &&rae_tests::netlab::WireFrame| f.src == dut.mac();
    assert_eq!(
        wire.dropped_by_kernel,
        Some(0),
        "tcpdump lost no frame ({})",
        wire.path.display()
    );
    assert!(
        wire.frames
            .iter()
            .filter(ours)
            .any(|f| f.is_dad_probe_for(global)),
        "the DUT sent a DAD probe for {global} ({} frames in {})",
        wire.frames.len(),
        wire.path.display()
    );
    assert!(
        wire.frames
            .iter()
            .filter(ours)
            .any(|f| f.ipv6_src() == Some(link_local)),
        "the DUT spoke from {link_local}"
    );
    let leaks = volunteered(&wire, dut.mac(), global, link_local);
    assert!(
        leaks.is_empty(),
        "before anyone asked for {global} the DUT sent only from :: and {link_local}, \
         and never vouched for {global}; but:\n{}",
        leaks.join("\n")
    );
}

#[test]
fn two_duts_claiming_one_ipv6_address_are_recorded_as_a_conflict() {
    let bed = bed();
    let lab = &bed.lab;
    let mut agent = Agent::start_online(&bed.spec, &bed.watch, WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
        .0;
    let shared = lab.net().host_v6(0x100);
    let router = lab.router_v6().into();

    // The first device takes the address properly: its DAD probe finds nobody on it.
    let first = add(
        lab,
        DutSpec::new("v6-first", DutKind::StaticV6 { addr: shared }).with_dad(true),
    );
    assert!(
        first.ping(router).expect("ping from the first DUT"),
        "the first DUT reaches the router from {shared}"
    );
    let first_mac = mac(first.mac());
    let (first_session, _) = wait_record(&bed, &mut agent, first_mac, "the address", |r| {
        r.ipv6.contains(&shared)
    });

    // The second is configured with the same address and skips DAD (`nodad`, as stacks
    // without DAD or an operator's static configuration do). With DAD it would hear the
    // first device defend the address and give it up without ever using it: DAD doing its
    // job, no duplicate on the LAN. Without, both use it, the case an operator must see.
    let second = add(
        lab,
        DutSpec::new("v6-second", DutKind::StaticV6 { addr: shared }),
    );
    // Its solicitation for the router comes from the shared address: its claim. Which of
    // the two gets the router's answers is the neighbour cache's choice, so the reply
    // does not matter.
    let _ = second.ping(router).expect("ping from the second DUT");
    let second_mac = mac(second.mac());
    let (second_session, _) = wait_record(&bed, &mut agent, second_mac, "the address", |r| {
        r.ipv6.contains(&shared)
    });
    assert_ne!(first_session, second_session, "two devices, two sessions");

    // Each session's history notes the conflict with the other MAC, as for IPv4.
    let shared_text = shared.to_string();
    for (dut, other) in [(&first, &second), (&second, &first)] {
        let other_mac = other.mac().to_string();
        let what = format!(
            "raectl show {}: a conflict over {shared} naming {other_mac}",
            dut.mac()
        );
        wait_until(what, WAIT, || {
            agent.ensure_running()?;
            let rows = conflict_rows(&show_json(&bed.spec, dut.mac()));
            Ok(
                match rows
                    .iter()
                    .any(|r| r.contains(&shared_text) && r.contains(&other_mac))
                {
                    true => Ok(()),
                    false => Err(format!("conflict rows {rows:?}")),
                },
            )
        })
        .unwrap_or_else(|e| panic!("{e}\nagent log tail:\n{}", agent.log_tail()));
    }

    // The note names the address for what it is: an operator reading `ipv4=` would look
    // for an IPv4 conflict.
    for dut in [&first, &second] {
        let rows = conflict_rows(&show_json(&bed.spec, dut.mac()));
        let mislabelled: Vec<&String> = rows
            .iter()
            .filter(|r| r.contains(&format!("ipv4={shared}")))
            .collect();
        assert!(
            mislabelled.is_empty(),
            "{}'s conflict notes call {shared} an IPv4 address: {mislabelled:?}",
            dut.mac()
        );
    }

    // Both live devices keep the address in their records: neither takes it from the
    // other, at the subscriber and in the database.
    let events: Vec<Envelope> = bed.watch.events();
    for device in [first_mac, second_mac] {
        let (_, record) = open_record(&events, device).expect("an open session");
        assert!(
            record.ipv6.contains(&shared),
            "{device} keeps {shared} at the subscriber: {:?}",
            record.ipv6
        );
    }
    for dut in [&first, &second] {
        let show = show_json(&bed.spec, dut.mac());
        assert!(
            shown_ipv6(&show).contains(&shared),
            "raectl show {} keeps {shared}: {:?}",
            dut.mac(),
            shown_ipv6(&show)
        );
        let (status, text, err) =
            raectl(&bed.spec, &["show", &dut.mac().to_string()]).expect("raectl show");
        assert!(status.success(), "raectl show failed: {err}");
        assert!(
            text.lines()
                .any(|l| l.contains("conflict") && l.contains(&shared_text)),
            "raectl show {} has a conflict line for {shared}:\n{text}",
            dut.mac()
        );
    }
}
