//! The real `rae-agent` under crashes and outages, checked by a subscriber that was on all
//! along (byte-identical QoS 1 duplicates allowed, no gap, no reorder, no seq reused with
//! other bytes) and whose folded state must equal `raectl devices --all --json`:
//!
//! - `kill -9` at 20 random instants (seeded; the seed is printed, `RAE_TEST_SEED` replays
//!   one) during a stream of 5,000 changes: 50 MACs behind one DUT's port announcing changing
//!   IPv4 addresses with ARP announcements, the agent restarted after each kill.
//! - The broker down for 60 s while real udhcpc DUTs join, change their address and leave
//!   (unplugged, closed after a short `gone_after` within the outage).
//!
//! Needs root, iproute2, dnsmasq, busybox (udhcpc) and mosquitto; and the workspace built.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rae_proto::{CloseReason, Mac};
use rae_tests::agent::{raectl, Agent, AgentSpec};
use rae_tests::inject::{arp_announcement, Injector};
use rae_tests::mqtt_watch::MqttWatch;
use rae_tests::netlab::{wait_until, DutKind, DutSpec, Lab, LabConfig, LabError};
use rae_tests::services::{Mosquitto, MosquittoOptions};
use rae_tests::stream_check::Stream;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

const MACS: usize = 50;
const CHANGES: usize = 5_000;
const KILLS: usize = 20;
/// Frames per second of the generator: fast enough that commits and acks are in progress at
/// most instants, slow enough that the capture keeps every frame.
const FRAMES_PER_SEC: u64 = 1_000;

fn status(spec: &AgentSpec) -> Option<Value> {
    let (_, out, _) = raectl(spec, &["status", "--json"]).ok()?;
    serde_json::from_str(&out).ok()
}

fn status_value(spec: &AgentSpec, section: &str, name: &str) -> Option<String> {
    let json = status(spec)?;
    match &json["status"][section][name] {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn outbox_rows(spec: &AgentSpec) -> Option<u64> {
    status(spec)?["outbox"]["rows"].as_u64()
}

fn devices_json(spec: &AgentSpec) -> String {
    let (ok, out, err) =
        raectl(spec, &["devices", "--all", "--json"]).expect("raectl devices runs");
    assert!(ok.success(), "raectl devices --all --json failed: {err}");
    out
}

/// Rows of `raectl devices --all --json` by MAC.
fn devices_by_mac(spec: &AgentSpec) -> BTreeMap<String, Vec<Value>> {
    let doc: Value = serde_json::from_str(&devices_json(spec)).unwrap_or(Value::Null);
    let mut by_mac: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for row in doc["devices"].as_array().cloned().unwrap_or_default() {
        let mac = row["mac"].as_str().unwrap_or_default().to_owned();
        by_mac.entry(mac).or_default().push(row);
    }
    by_mac
}

/// splitmix64: a seeded generator, enough to pick instants.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    match std::env::var("RAE_TEST_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("RAE_TEST_SEED={text:?} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

/// Waits until the subscriber's checked stream equals the registry and the outbox is empty.
/// A violation of the stream's rules cannot heal and fails at once.
fn wait_converged(watch: &MqttWatch, agent: &mut Agent, what: &str) -> Stream {
    let spec = agent.spec().clone();
    wait_until(what, WAIT, || {
        agent.ensure_running()?;
        let stream = Stream::check(&watch.messages()).map_err(|problems| LabError::Parse {
            what: "the subscriber's stream".into(),
            detail: problems,
        })?;
        let rows = outbox_rows(&spec);
        if rows != Some(0) {
            return Ok(Err(format!("outbox rows {rows:?}")));
        }
        Ok(match stream.matches_registry(&devices_json(&spec)) {
            Ok(()) => Ok(stream),
            Err(diff) => Err(diff),
        })
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()))
}

#[test]
fn kill_9_at_20_random_instants_during_5000_changes_reuses_and_loses_nothing() {
    let seed = seed();
    println!("seed {seed} (replay with RAE_TEST_SEED={seed})");
    let mut rng = Rng(seed);

    let lab = Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("starting the lab: {e}"));
    let broker = Mosquitto::start().unwrap_or_else(|e| panic!("starting mosquitto: {e}"));
    let watch = MqttWatch::start(broker.host(), broker.port(), "cloud-watch", &["rae/v1/#"])
        .unwrap_or_else(|e| panic!("subscribing: {e}"));
    let mut spec = AgentSpec::for_lab(
        "LAB-RAE-CRASH",
        lab.bridge_name(),
        &lab.dir().join("agent"),
        broker.host(),
        broker.port(),
    );
    // The injected MACs never answer probes; they go offline (an event too) but stay open.
    spec.gone_after_secs = 3600;
    spec.ssdp = false;
    spec.mdns = false;
    let (mut agent, _) = Agent::start_online(&spec, &watch, WAIT)
        .unwrap_or_else(|e| panic!("starting rae-agent: {e}"));

    let dut = lab
        .add_dut(DutSpec::new(
            "generator",
            DutKind::StaticV4 {
                addr: lab.net().host_v4(2),
            },
        ))
        .unwrap_or_else(|e| panic!("adding the generator DUT: {e}"));
    let injector = Injector::open(dut.ns_name(), "eth0")
        .unwrap_or_else(|e| panic!("opening the injector: {e}"));
    let slot = (lab.slot() & 0xff) as u8;
    let mac = |k: usize| Mac([0x02, 0xc5, slot, 0, 0, k as u8]);
    // Each MAC alternates between two addresses of its own: every frame is a change, and no
    // two MACs ever claim one address.
    let address = |k: usize, round: usize| -> Ipv4Addr {
        let host = if round % 2 == 0 {
            12 + k
        } else {
            12 + MACS + k
        };
        lab.net().host_v4(host as u8)
    };
    let frame = |i: usize| {
        let (k, round) = (i % MACS, i / MACS);
        arp_announcement(mac(k), address(k, round))
    };

    // Kill instants: frames after the first two rounds (every session opened), distinct.
    let mut kill_at: Vec<usize> = Vec::new();
    while kill_at.len() < KILLS {
        let at = 2 * MACS + rng.below((CHANGES - 2 * MACS) as u64) as usize;
        if !kill_at.contains(&at) {
            kill_at.push(at);
        }
    }
    kill_at.sort_unstable();
    println!("kills before frames {kill_at:?}");

    let pace = Duration::from_micros(1_000_000 / FRAMES_PER_SEC);
    let started = Instant::now();
    let mut next_send = Instant::now();
    let mut pending_at_kill = Vec::new();
    for i in 0..CHANGES {
        if kill_at.contains(&i) {
            // A random sub-millisecond offset inside the frame gap, so kills do not line up
            // with sends.
            std::thread::sleep(Duration::from_micros(rng.below(1_000)));
            agent
                .ensure_running()
                .unwrap_or_else(|e| panic!("the agent died by itself before kill: {e}"));
            agent.kill().expect("SIGKILL");
            // What the killed run left committed but unacknowledged: the next run sends it.
            pending_at_kill.push(outbox_rows(&spec).unwrap_or(0));
            let (restarted, _) = Agent::start_online(&spec, &watch, WAIT)
                .unwrap_or_else(|e| panic!("restarting rae-agent after kill {i}: {e}"));
            agent = restarted;
            next_send = Instant::now();
        }
        let now = Instant::now();
        if next_send > now {
            // The generator's rate, not a wait for an effect.
            std::thread::sleep(next_send - now);
        }
        next_send += pace;
        injector
            .send(&frame(i))
            .unwrap_or_else(|e| panic!("sending frame {i}: {e}"));
    }
    println!(
        "{CHANGES} frames and {KILLS} kills in {:.1} s; outbox rows left by each kill: {pending_at_kill:?}",
        started.elapsed().as_secs_f64()
    );

    // The last round is the final state of the LAN; frames the agent missed while it was down
    // are announced again until the registry has them.
    let last_round = (CHANGES - 1) / MACS;
    let mut last_resend: Option<Instant> = None;
    wait_until(
        "every MAC at its last announced address in raectl devices",
        WAIT,
        || {
            agent.ensure_running()?;
            let rows = devices_by_mac(&spec);
            let missing: Vec<usize> = (0..MACS)
                .filter(|&k| {
                    let want = address(k, last_round).to_string();
                    !rows.get(&mac(k).to_string()).is_some_and(|rows| {
                        rows.iter()
                            .any(|r| r["ipv4"].as_str() == Some(want.as_str()))
                    })
                })
                .collect();
            if missing.is_empty() {
                return Ok(Ok(()));
            }
            if last_resend.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
                for &k in &missing {
                    injector
                        .send(&arp_announcement(mac(k), address(k, last_round)))
                        .map_err(|e| LabError::Parse {
                            what: "a re-sent announcement".into(),
                            detail: format!("{e:#}"),
                        })?;
                }
                last_resend = Some(Instant::now());
            }
            Ok(Err(format!(
                "{} MACs not at their last address",
                missing.len()
            )))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));

    let stream = wait_converged(
        &watch,
        &mut agent,
        "the subscriber's stream to equal raectl devices --all --json with an empty outbox",
    );
    println!(
        "{} device events received, {} byte-identical duplicates, {} sessions",
        stream.events,
        stream.duplicates,
        stream.sessions.len()
    );
    // Every MAC kept its session through the 20 crashes (restored, not reopened).
    for k in 0..MACS {
        let sessions = stream
            .sessions
            .values()
            .filter(|s| s.record.mac == mac(k))
            .count();
        assert_eq!(sessions, 1, "MAC {} has {sessions} sessions", mac(k));
    }
    let changes_seen: u64 = stream
        .sessions
        .values()
        .filter(|s| (0..MACS).any(|k| s.record.mac == mac(k)))
        .map(|s| s.last_seq)
        .sum();
    assert!(
        changes_seen >= (CHANGES / 2) as u64,
        "most of the stream reached the subscriber: {changes_seen} events"
    );
    assert!(
        pending_at_kill.iter().any(|&rows| rows > 0),
        "no kill left unacknowledged rows, so no kill hit the re-send path: {pending_at_kill:?}"
    );
    let status = agent.terminate(Duration::from_secs(15)).expect("SIGTERM");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_60_s_broker_outage_while_duts_join_change_and_leave_ends_in_the_registry_state() {
    const OUTAGE: Duration = Duration::from_secs(60);
    let lab = Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("starting the lab: {e}"));
    let mut broker = Mosquitto::start_with(MosquittoOptions {
        persistence: true,
        auth: None,
    })
    .unwrap_or_else(|e| panic!("starting mosquitto: {e}"));
    // A persistent session: the broker keeps the subscription across its restart.
    let watch =
        MqttWatch::start_persistent(broker.host(), broker.port(), "cloud-watch", &["rae/v1/#"])
            .unwrap_or_else(|e| panic!("subscribing: {e}"));
    let mut spec = AgentSpec::for_lab(
        "LAB-RAE-OUTAGE",
        lab.bridge_name(),
        &lab.dir().join("agent"),
        broker.host(),
        broker.port(),
    );
    // Unplugged DUTs close well within the outage.
    spec.gone_after_secs = 12;
    spec.ssdp = false;
    spec.mdns = false;
    let (mut agent, _) = Agent::start_online(&spec, &watch, WAIT)
        .unwrap_or_else(|e| panic!("starting rae-agent: {e}"));
    let udhcpc = |name: &str| {
        DutSpec::new(
            name,
            DutKind::Udhcpc {
                hostname: Some(name.to_owned()),
                vendor_class: None,
                client_id: None,
            },
        )
    };
    let add = |name: &str| {
        lab.add_dut(udhcpc(name))
            .unwrap_or_else(|e| panic!("adding DUT {name}: {e}"))
    };
    let listed = |agent: &mut Agent, dut: &rae_tests::netlab::Dut| {
        let want = dut.mac().to_string();
        let name = dut.name().to_owned();
        wait_until(format!("raectl devices listing {name}"), WAIT, || {
            agent.ensure_running()?;
            Ok(match devices_by_mac(&spec).contains_key(&want) {
                true => Ok(()),
                false => Err(format!("{want} not listed")),
            })
        })
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    };

    // Before the outage: a DUT the subscriber knows.
    let mut early = add("early");
    listed(&mut agent, &early);
    wait_converged(&watch, &mut agent, "the early DUT published");

    broker
        .stop()
        .unwrap_or_else(|e| panic!("stopping mosquitto: {e}"));
    let down_at = Instant::now();
    wait_until("raectl status broker.connected = no", WAIT, || {
        Ok(
            match status_value(&spec, "broker", "connected").as_deref() {
                Some("no") => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    let reconnects_before = status_value(&spec, "broker", "reconnects")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);

    // During the outage: one joins and stays, one joins and changes, one joins and leaves,
    // the early one changes and leaves.
    let stayer = add("stayer");
    let mut changer = add("changer");
    let leaver = add("leaver");
    for dut in [&stayer, &changer, &leaver] {
        listed(&mut agent, dut);
    }
    let new_early = lab.net().host_v4(240);
    let new_changer = lab.net().host_v4(241);
    // udhcpc unicasts its DHCPRELEASE to dnsmasq, and `set_ipv4` flushes the address right
    // after: without a neighbour entry for the router (udhcpc's own traffic is raw) the
    // release dies waiting for ARP and dnsmasq offers the old address again. One ping first.
    for dut in [&early, &changer] {
        let _ = dut.ping(lab.router_v4().into());
    }
    early
        .set_ipv4(new_early)
        .unwrap_or_else(|e| panic!("changing early's address: {e}"));
    changer
        .set_ipv4(new_changer)
        .unwrap_or_else(|e| panic!("changing changer's address: {e}\n{}", lab.dnsmasq_log()));
    let ipv4_of = |rows: &BTreeMap<String, Vec<Value>>, dut: &rae_tests::netlab::Dut| {
        rows.get(&dut.mac().to_string())
            .and_then(|r| r.iter().find(|r| r["close_reason"].is_null()))
            .and_then(|r| r["ipv4"].as_str().map(str::to_owned))
    };
    wait_until("both address changes in raectl devices", WAIT, || {
        let rows = devices_by_mac(&spec);
        let got = (ipv4_of(&rows, &early), ipv4_of(&rows, &changer));
        let want = (Some(new_early.to_string()), Some(new_changer.to_string()));
        Ok(match got == want {
            true => Ok(()),
            false => Err(format!("{got:?}")),
        })
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    early.unplug().expect("unplugging early");
    leaver.unplug().expect("unplugging leaver");
    let closed = |rows: &BTreeMap<String, Vec<Value>>, dut: &rae_tests::netlab::Dut| {
        rows.get(&dut.mac().to_string())
            .is_some_and(|r| r.iter().all(|r| !r["close_reason"].is_null()))
    };
    wait_until("early and leaver closed in raectl devices", WAIT, || {
        agent.ensure_running()?;
        let rows = devices_by_mac(&spec);
        Ok(match (closed(&rows, &early), closed(&rows, &leaver)) {
            (true, true) => Ok(()),
            other => Err(format!("closed (early, leaver) = {other:?}")),
        })
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    assert!(
        down_at.elapsed() < OUTAGE,
        "the DUTs' story took longer than the outage ({:?})",
        down_at.elapsed()
    );
    let queued = outbox_rows(&spec).unwrap_or(0);
    assert!(queued > 0, "events wait in the outbox during the outage");
    // The rest of the outage: the agent keeps running and keeps trying.
    wait_until("the end of the 60 s outage", OUTAGE + WAIT, || {
        agent.ensure_running()?;
        Ok(match down_at.elapsed() >= OUTAGE {
            true => Ok(()),
            false => Err(format!("{:?} of {OUTAGE:?}", down_at.elapsed())),
        })
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    assert_eq!(
        status_value(&spec, "broker", "connected").as_deref(),
        Some("no"),
        "still disconnected at the end of the outage"
    );

    broker
        .start_again()
        .unwrap_or_else(|e| panic!("restarting mosquitto: {e}"));
    let stream = wait_converged(
        &watch,
        &mut agent,
        "after the outage, the subscriber's stream equal to raectl devices --all --json",
    );
    // The daemon writes the publisher's status every `status_interval_secs`.
    wait_until("raectl status counting the reconnect", WAIT, || {
        let reconnects = status_value(&spec, "broker", "reconnects")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(match reconnects > reconnects_before {
            true => Ok(()),
            false => Err(format!(
                "broker.reconnects {reconnects_before} -> {reconnects}"
            )),
        })
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    let by_mac = |dut: &rae_tests::netlab::Dut| {
        let mac = Mac(dut.mac().0);
        stream
            .sessions
            .values()
            .filter(|s| s.record.mac == mac)
            .cloned()
            .collect::<Vec<_>>()
    };
    for (dut, reason) in [
        (&early, Some(CloseReason::Gone)),
        (&leaver, Some(CloseReason::Gone)),
    ] {
        let sessions = by_mac(dut);
        assert!(
            sessions.iter().all(|s| s.closed == reason),
            "{} closed as {reason:?} at the subscriber: {sessions:?}",
            dut.name()
        );
    }
    let changer_sessions = by_mac(&changer);
    assert!(
        changer_sessions
            .iter()
            .any(|s| s.closed.is_none() && s.record.ipv4 == Some(new_changer)),
        "changer at {new_changer} at the subscriber: {changer_sessions:?}"
    );
    assert!(
        by_mac(&stayer).iter().any(|s| s.closed.is_none()),
        "stayer open at the subscriber"
    );
    println!(
        "{queued} rows queued during the outage; {} events, {} duplicates at the subscriber",
        stream.events, stream.duplicates
    );
    let status = agent.terminate(Duration::from_secs(15)).expect("SIGTERM");
    assert!(status.success(), "exit status {status}");
}
