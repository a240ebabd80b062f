//! The whole agent in the virtual lab: the real `rae-agent` binary on the lab bridge (the
//! RAE's LAN port), real DHCP clients, mDNS and SSDP/DIAL responders in DUT namespaces, a real
//! mosquitto, and a subscriber that sees what the cloud would. `raectl` reads the agent's
//! database as an operator would.
//!
//! Timers are short: probes every second, offline after 3 misses, gone after `GONE` seconds.
//!
//! Needs root, iproute2, busybox (udhcpc), isc-dhcp-client, dnsmasq, mosquitto, and Debian's
//! `/usr/bin/python3` with python3-zeroconf; and the workspace built (`cargo build`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rae_proto::{DeviceRecord, Envelope, Event, Liveness, Mac, SessionId};
use rae_tests::agent::{raectl, Agent, AgentSpec};
use rae_tests::mqtt_watch::{MqttWatch, Received};
use rae_tests::netlab::{Dut, DutKind, DutSpec, Lab, LabConfig, LabProcess, MacAddr};
use rae_tests::services::Mosquitto;

const WAIT: Duration = Duration::from_secs(60);
const PYTHON: &str = "/usr/bin/python3";
const SERIAL: &str = "LAB-RAE-1";

struct Bed {
    lab: Lab,
    broker: Mosquitto,
    watch: MqttWatch,
    spec: AgentSpec,
}

fn bed(gone_after_secs: u64) -> Bed {
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
    spec.gone_after_secs = gone_after_secs;
    Bed {
        lab,
        broker,
        watch,
        spec,
    }
}

fn mac(m: MacAddr) -> Mac {
    Mac(m.0)
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

/// What a cloud consumer knows from the events so far: per session, the folded record, the
/// last seq, and whether it was Closed.
#[derive(Clone, Debug, Default)]
struct SessionView {
    record: Option<DeviceRecord>,
    seqs: Vec<u64>,
    closed: bool,
}

fn fold(events: &[Envelope]) -> BTreeMap<SessionId, SessionView> {
    let mut out: BTreeMap<SessionId, SessionView> = BTreeMap::new();
    for e in events {
        let view = out.entry(e.session).or_default();
        view.seqs.push(e.seq);
        match &e.event {
            Event::Snapshot { record } => view.record = Some((**record).clone()),
            Event::Delta { fields } => {
                if let Some(record) = view.record.as_mut() {
                    for f in fields {
                        record.apply(f.clone());
                    }
                }
            }
            Event::Closed { .. } => view.closed = true,
        }
    }
    out
}

fn session_of(events: &[Envelope], device: Mac) -> Option<(SessionId, SessionView)> {
    fold(events)
        .into_iter()
        // One open session per MAC at a time: the one that is not Closed.
        .find(|(_, v)| !v.closed && v.record.as_ref().is_some_and(|r| r.mac == device))
}

/// Waits until the subscriber's view of `device`'s open session satisfies `check`.
fn wait_record(
    watch: &MqttWatch,
    agent: &mut Agent,
    device: Mac,
    what: &str,
    check: impl Fn(&DeviceRecord) -> bool,
) -> (SessionId, SessionView) {
    let found = watch.wait_for(
        format!("{device}: {what}"),
        WAIT,
        |messages: &[Received]| {
            let events: Vec<Envelope> = messages.iter().filter_map(Received::event).collect();
            session_of(&events, device).filter(|(_, v)| v.record.as_ref().is_some_and(&check))
        },
    );
    match found {
        Ok(found) => found,
        Err(e) => {
            let alive = agent
                .ensure_running()
                .map_or_else(|e| e.to_string(), |()| "running".into());
            panic!("{e}\nagent: {alive}\nagent log tail:\n{}", agent.log_tail())
        }
    }
}

fn responder(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("responders")
        .join(name)
}

fn spawn_responder(dut: &Dut, script: &str, args: &[&str]) -> LabProcess {
    let mut argv = vec![PYTHON.to_string(), responder(script).display().to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let process = dut
        .spawn(&argv)
        .unwrap_or_else(|e| panic!("starting {argv:?} in {}: {e}", dut.name()));
    rae_tests::netlab::wait_until(format!("READY from {script}"), WAIT, || {
        let log = std::fs::read_to_string(process.log_path()).unwrap_or_default();
        Ok(if log.contains("READY") {
            Ok(())
        } else {
            Err(log)
        })
    })
    .unwrap_or_else(|e| panic!("{e}"));
    process
}

fn text(t: &Option<rae_proto::Text>) -> Option<String> {
    t.as_ref()
        .map(|t| String::from_utf8_lossy(t.as_bytes()).into_owned())
}

#[test]
fn eight_mixed_duts_appear_on_the_broker_and_in_raectl_with_their_fields() {
    let bed = bed(600);
    let lab = &bed.lab;
    // The agent watches the LAN before the DUTs join, as on a RAE that was already running.
    let mut agent = Agent::start_online(&bed.spec, &bed.watch, WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
        .0;
    let udhcpc = add(
        lab,
        DutSpec::new(
            "tv-udhcpc",
            DutKind::Udhcpc {
                hostname: Some("living-room-tv".into()),
                vendor_class: Some("AcmeTV/5.1".into()),
                client_id: None,
            },
        ),
    );
    let udhcpc2 = add(
        lab,
        DutSpec::new(
            "stick-udhcpc",
            DutKind::Udhcpc {
                hostname: Some("stick-2".into()),
                vendor_class: None,
                client_id: Some(b"\x00stick-2".to_vec()),
            },
        ),
    );
    let dhclient = add(
        lab,
        DutSpec::new(
            "stb-dhclient",
            DutKind::Dhclient {
                hostname: Some("set-top-box".into()),
                vendor_class: Some("AcmeSTB".into()),
            },
        ),
    );
    let static_ip = lab.net().host_v4(20);
    let fixed = add(
        lab,
        DutSpec::new("fixed", DutKind::StaticV4 { addr: static_ip }),
    );
    let slaac = add(lab, DutSpec::new("v6only", DutKind::Slaac));
    let cast_ip = lab.net().host_v4(21);
    let cast = add(
        lab,
        DutSpec::new("cast", DutKind::StaticV4 { addr: cast_ip }),
    );
    let tv_ip = lab.net().host_v4(22);
    let tv = add(
        lab,
        DutSpec::new("dial-tv", DutKind::StaticV4 { addr: tv_ip }),
    );
    let quiet = add(
        lab,
        DutSpec::new(
            "quiet",
            DutKind::Udhcpc {
                hostname: None,
                vendor_class: None,
                client_id: None,
            },
        ),
    );
    let cast_s = cast_ip.to_string();
    #[rustfmt::skip]
    let _zeroconf = spawn_responder(&cast, "mdns_responder.py", &[
        "--ip", &cast_s, "--type", "_googlecast._tcp.local.", "--instance", "Lab Cast",
        "--host", "lab-cast", "--port", "8009", "--txt", "md=Chromecast Ultra", "--txt", "fn=Lab Cast",
    ]);
    let tv_s = tv_ip.to_string();
    #[rustfmt::skip]
    let _dial = spawn_responder(&tv, "ssdp_dial_responder.py", &[
        "--ip", &tv_s, "--friendly-name", "Lab TV", "--manufacturer", "Acme",
        "--model-name", "Acme Cast", "--model-number", "AC-1", "--serial", "SN-0001",
        "--udn", "uuid:00000000-0000-4000-8000-000000000022", "--netflix-state", "running",
        "--esn", "NFLAB-ESN-0022",
    ]);
    let watch = &bed.watch;

    // The static DUTs and the SLAAC one say nothing unprompted: nudge each to speak once.
    for dut in [&fixed, &cast, &tv] {
        let _ = dut.ping(lab.router_v4().into());
    }
    let _ = slaac.ping(lab.router_v6().into());

    let udhcpc_ip = udhcpc
        .ipv4()
        .ok()
        .flatten()
        .expect("udhcpc DUT has a lease");
    wait_record(
        watch,
        &mut agent,
        mac(udhcpc.mac()),
        "hostname, vendor class, IPv4",
        |r| {
            text(&r.hostname).as_deref() == Some("living-room-tv")
                && text(&r.dhcp_vendor_class).as_deref() == Some("AcmeTV/5.1")
                && r.ipv4 == Some(udhcpc_ip)
                && !r.dhcp_param_request_list.is_empty()
                && r.reachability.state == Liveness::Online
        },
    );
    wait_record(
        watch,
        &mut agent,
        mac(udhcpc2.mac()),
        "client id and hostname",
        |r| {
            r.dhcp_client_id.as_deref() == Some(b"\x00stick-2".as_slice())
                && text(&r.hostname).as_deref() == Some("stick-2")
                && r.ipv4.is_some()
        },
    );
    let dhclient_ip = dhclient
        .ipv4()
        .ok()
        .flatten()
        .expect("dhclient DUT has a lease");
    wait_record(
        watch,
        &mut agent,
        mac(dhclient.mac()),
        "dhclient hostname, IPv4",
        |r| text(&r.hostname).as_deref() == Some("set-top-box") && r.ipv4 == Some(dhclient_ip),
    );
    wait_record(watch, &mut agent, mac(fixed.mac()), "static IPv4", |r| {
        r.ipv4 == Some(static_ip)
    });
    let v6 = slaac
        .slaac_addr()
        .ok()
        .flatten()
        .expect("SLAAC DUT has an address");
    wait_record(
        watch,
        &mut agent,
        mac(slaac.mac()),
        "SLAAC IPv6 only",
        |r| r.ipv4.is_none() && r.ipv6.contains(&v6),
    );
    wait_record(
        watch,
        &mut agent,
        mac(cast.mac()),
        "mDNS service and host name",
        |r| {
            r.mdns_services.iter().any(|s| {
                s.service_type.starts_with("_googlecast._tcp")
                    && s.instance.starts_with("Lab Cast")
                    && s.port == 8009
            }) && text(&r.hostname).as_deref() == Some("lab-cast")
        },
    );
    wait_record(
        watch,
        &mut agent,
        mac(tv.mac()),
        "UPnP description, DIAL app and ESN",
        |r| {
            r.upnp.as_ref().is_some_and(|u| {
                u.friendly_name.as_deref() == Some("Lab TV")
                    && u.serial_number.as_deref() == Some("SN-0001")
            }) && r.dial_apps.iter().any(|a| a.name == "Netflix")
                && r.esn.as_deref() == Some("NFLAB-ESN-0022")
        },
    );
    wait_record(watch, &mut agent, mac(quiet.mac()), "an IPv4 lease", |r| {
        r.ipv4.is_some()
    });

    // Every session opened with a Snapshot at seq 1, and seqs grow by one.
    let events = watch.events();
    for (session, view) in fold(&events) {
        assert_eq!(
            view.seqs.first(),
            Some(&1),
            "session {session} starts at seq 1"
        );
        let expected: Vec<u64> = (1..=view.seqs.len() as u64).collect();
        assert_eq!(
            view.seqs, expected,
            "session {session}: seqs arrive in order, no gap, no repeat"
        );
    }

    // raectl shows the same eight devices from the database.
    let all = [
        &udhcpc, &udhcpc2, &dhclient, &fixed, &slaac, &cast, &tv, &quiet,
    ];
    let listed = rae_tests::netlab::wait_until("raectl devices lists the 8 DUTs", WAIT, || {
        let (status, out, err) = raectl(&bed.spec, &["devices"])?;
        if !status.success() {
            return Ok(Err(format!("raectl failed: {err}")));
        }
        let missing: Vec<String> = all
            .iter()
            .map(|d| d.mac().to_string())
            .filter(|m| !out.contains(m.as_str()))
            .collect();
        Ok(if missing.is_empty() {
            Ok(out)
        } else {
            Err(format!("missing {missing:?} in\n{out}"))
        })
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        listed.contains("living-room-tv"),
        "hostname in the table:\n{listed}"
    );
    assert!(
        listed.contains(&udhcpc_ip.to_string()),
        "IPv4 in the table:\n{listed}"
    );
    let (status, shown, err) =
        raectl(&bed.spec, &["show", &tv.mac().to_string()]).expect("raectl show");
    assert!(status.success(), "raectl show failed: {err}");
    assert!(
        shown.contains("Lab TV") && shown.contains("NFLAB-ESN-0022"),
        "raectl show:\n{shown}"
    );

    let status = agent
        .terminate(Duration::from_secs(15))
        .expect("agent stops on SIGTERM");
    assert!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );
    bed.watch
        .wait_for(
            "retained status offline after the agent stopped",
            WAIT,
            |m| {
                m.iter()
                    .rev()
                    .find(|r| r.topic == format!("rae/v1/{SERIAL}/status"))
                    .filter(|r| {
                        rae_proto::Status::decode(&r.payload)
                            .is_ok_and(|s| s.state == rae_proto::AgentState::Offline)
                    })
                    .map(|_| ())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    drop(bed.broker);
}

/// Unplugged, a DUT goes offline only after the configured misses, is Closed after
/// `gone_after`; replugged in between it keeps its session, and a short outage (one missed
/// probe) changes nothing.
#[test]
fn unplugged_goes_offline_after_misses_closed_after_gone_and_replug_keeps_the_session() {
    let mut bed = bed(20);
    // Offline only after 3 missed rounds of 2 s: a 1-round outage stays well inside it.
    bed.spec.probe_interval_secs = 2;
    let bed = bed;
    let lab = &bed.lab;
    let ip = lab.net().host_v4(30);
    let mut dut = add(
        lab,
        DutSpec::new("unplugged", DutKind::StaticV4 { addr: ip }),
    );
    let mut agent = Agent::start_online(&bed.spec, &bed.watch, WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
        .0;
    let _ = dut.ping(lab.router_v4().into());
    let device = mac(dut.mac());
    let (session, _) = wait_record(
        &bed.watch,
        &mut agent,
        device,
        "online with its IPv4",
        |r| r.ipv4 == Some(ip) && r.reachability.state == Liveness::Online,
    );

    // One probe lost (unplugged for about one probe interval): still online.
    dut.unplug().expect("unplug");
    let unplugged = Instant::now();
    wait_probe_sent(&bed.spec, &mut agent);
    dut.replug().expect("replug");
    let replugged = Instant::now();
    // Wait for an answered probe after the replug, then check no offline was published.
    wait_answered_after(&bed.spec, &mut agent);
    let went_offline = bed
        .watch
        .events()
        .iter()
        .any(|e| e.session == session && is_offline(e));
    assert!(
        !went_offline,
        "a single missed probe ({:?} unplugged) must not make the device offline",
        replugged - unplugged
    );

    // Unplugged for good: offline after 3 misses (not sooner than 2 probe intervals).
    // The outage above must have cost at least one unanswered probe to mean anything.
    dut.unplug().expect("unplug");
    let unplugged = Instant::now();
    let offline_at = bed
        .watch
        .wait_for("offline Delta", WAIT, |messages| {
            messages.iter().find_map(|m| {
                let e = m.event()?;
                let offline = e.session == session && is_offline(&e);
                (offline && m.at > unplugged).then_some(m.at)
            })
        })
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    let after = offline_at - unplugged;
    assert!(
        after >= Duration::from_secs(4),
        "offline after {after:?}: sooner than 3 probe rounds of 2 s allow"
    );

    // Replugged before gone_after: same session, back online, seq one higher each time.
    dut.replug().expect("replug");
    let _ = dut.ping(lab.router_v4().into());
    let (again, view) = wait_record(&bed.watch, &mut agent, device, "online again", |r| {
        r.reachability.state == Liveness::Online
    });
    assert_eq!(
        again, session,
        "a replug within gone_after keeps the session"
    );
    let expected: Vec<u64> = (1..=view.seqs.len() as u64).collect();
    assert_eq!(view.seqs, expected, "seq grows by one per event");

    // Unplugged past gone_after: Closed.
    dut.unplug().expect("unplug");
    bed.watch
        .wait_for("Closed after gone_after", WAIT, |messages| {
            messages
                .iter()
                .filter_map(Received::event)
                .find(|e| e.session == session && matches!(e.event, Event::Closed { .. }))
                .map(|_| ())
        })
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    let (_, listed, _) = raectl(&bed.spec, &["devices", "--all"]).expect("raectl devices --all");
    assert!(
        listed.contains(&session.to_string()),
        "the closed session is listed with --all:\n{listed}"
    );
}

/// A value of `raectl status --json`: `.status.<section>.<name>`.
fn status_value(spec: &AgentSpec, section: &str, name: &str) -> Option<u64> {
    let (_, out, _) = raectl(spec, &["status", "--json"]).ok()?;
    let json: serde_json::Value = serde_json::from_str(&out).ok()?;
    let value = &json["status"][section][name];
    value.as_u64().or_else(|| value.as_str()?.parse().ok())
}

/// Waits until the agent has sent at least one more ARP probe than now.
fn wait_probe_sent(spec: &AgentSpec, agent: &mut Agent) {
    let before = status_value(spec, "probe", "arp_sent").unwrap_or(0);
    rae_tests::netlab::wait_until("one more ARP probe sent", WAIT, || {
        agent.ensure_running()?;
        let now = status_value(spec, "probe", "arp_sent").unwrap_or(0);
        Ok(if now > before {
            Ok(())
        } else {
            Err(format!("probe.arp_sent {now}"))
        })
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

fn wait_answered_after(spec: &AgentSpec, agent: &mut Agent) {
    let before = status_value(spec, "probe", "answered").unwrap_or(0);
    rae_tests::netlab::wait_until("one more probe answered", WAIT, || {
        agent.ensure_running()?;
        let now = status_value(spec, "probe", "answered").unwrap_or(0);
        Ok(if now > before {
            Ok(())
        } else {
            Err(format!("probe.answered {now}"))
        })
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_ip_change_and_a_mac_change_give_deltas_with_seq_one_higher() {
    let bed = bed(600);
    let lab = &bed.lab;
    let first = lab.net().host_v4(40);
    let mut dut = add(
        lab,
        DutSpec::new("mover", DutKind::StaticV4 { addr: first }),
    );
    let mut agent = Agent::start_online(&bed.spec, &bed.watch, WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
        .0;
    let _ = dut.ping(lab.router_v4().into());
    let device = mac(dut.mac());
    let (session, view) = wait_record(&bed.watch, &mut agent, device, "its first IPv4", |r| {
        r.ipv4 == Some(first)
    });
    let before = *view.seqs.last().expect("a seq");

    let second = lab.net().host_v4(41);
    dut.set_ipv4(second).expect("set IPv4");
    let _ = dut.ping(lab.router_v4().into());
    let delta = bed
        .watch
        .wait_for("a Delta with the new IPv4", WAIT, |messages| {
            messages.iter().filter_map(Received::event).find(|e| {
                e.session == session
                    && matches!(&e.event, Event::Delta { fields } if fields.contains(&rae_proto::Field::Ipv4(Some(second))))
            })
        })
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    assert_eq!(
        delta.seq,
        before + 1,
        "the IP change is the next event of the session"
    );

    // A new MAC is a new device: its own session from seq 1 with the address.
    let new_mac = MacAddr([0x02, 0x52, 0x41, 0x45, 0x00, 0x41]);
    dut.set_mac(new_mac).expect("set MAC");
    let _ = dut.ping(lab.router_v4().into());
    let (new_session, view) = wait_record(
        &bed.watch,
        &mut agent,
        mac(new_mac),
        "the new MAC with the IPv4",
        |r| r.ipv4 == Some(second),
    );
    assert_ne!(new_session, session, "a changed MAC opens a new session");
    assert_eq!(view.seqs.first(), Some(&1));
    // The old MAC's session goes offline (it no longer answers) with the next seq.
    let (_, old) = fold(&bed.watch.events())
        .into_iter()
        .find(|(s, _)| *s == session)
        .expect("old session seen");
    let last = *old.seqs.last().expect("seq");
    let offline = bed
        .watch
        .wait_for("the old MAC's session goes offline", WAIT, |messages| {
            messages
                .iter()
                .filter_map(Received::event)
                .find(|e| e.session == session && e.seq >= last && is_offline(e))
        })
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    let all = fold(&bed.watch.events());
    let seqs = &all[&session].seqs;
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs, &expected,
        "the old session's seqs stay contiguous (offline at {})",
        offline.seq
    );
}

#[test]
fn restarting_the_agent_keeps_sessions_and_seq() {
    let bed = bed(600);
    let lab = &bed.lab;
    let ip = lab.net().host_v4(50);
    let mut dut = add(lab, DutSpec::new("steady", DutKind::StaticV4 { addr: ip }));
    let mut agent = Agent::start_online(&bed.spec, &bed.watch, WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
        .0;
    let _ = dut.ping(lab.router_v4().into());
    let device = mac(dut.mac());
    let (session, _) = wait_record(&bed.watch, &mut agent, device, "its IPv4", |r| {
        r.ipv4 == Some(ip)
    });

    // A clean restart, then a crash (SIGKILL) and restart: the session and its seq carry on.
    let status = agent.terminate(Duration::from_secs(15)).expect("SIGTERM");
    assert!(status.success(), "exit status {status}");
    let mut agent = Agent::start_online(&bed.spec, &bed.watch, WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
        .0;
    let ip2 = lab.net().host_v4(51);
    dut.set_ipv4(ip2).expect("set IPv4");
    let _ = dut.ping(lab.router_v4().into());
    let (after, view) = wait_record(
        &bed.watch,
        &mut agent,
        device,
        "the new IPv4 after a restart",
        |r| r.ipv4 == Some(ip2),
    );
    assert_eq!(after, session, "same session after SIGTERM and restart");
    let expected: Vec<u64> = (1..=view.seqs.len() as u64).collect();
    assert_eq!(
        view.seqs, expected,
        "seq carried on without a gap or a repeat"
    );

    agent.kill().expect("SIGKILL");
    let mut agent = Agent::start_online(&bed.spec, &bed.watch, WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
        .0;
    let ip3 = lab.net().host_v4(52);
    dut.set_ipv4(ip3).expect("set IPv4");
    let _ = dut.ping(lab.router_v4().into());
    let (after, _) = wait_record(
        &bed.watch,
        &mut agent,
        device,
        "the new IPv4 after a crash",
        |r| r.ipv4 == Some(ip3),
    );
    assert_eq!(after, session, "same session after SIGKILL and restart");
    // Duplicates are allowed after a crash (QoS 1 re-sends); seq values are never reused
    // for different content: every distinct seq of the session appears, from 1 without gaps.
    let mut seqs = fold(&bed.watch.events())[&session].seqs.clone();
    seqs.sort_unstable();
    seqs.dedup();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "no seq gap across the crash");
    // A re-sent event is the same event: one content per seq.
    let mut by_seq: BTreeMap<u64, Event> = BTreeMap::new();
    for e in bed
        .watch
        .events()
        .into_iter()
        .filter(|e| e.session == session)
    {
        if let Some(seen) = by_seq.get(&e.seq) {
            assert_eq!(
                seen, &e.event,
                "seq {} was reused for different content",
                e.seq
            );
        } else {
            by_seq.insert(e.seq, e.event);
        }
    }
}

fn is_offline(e: &Envelope) -> bool {
    matches!(&e.event, Event::Delta { fields } if fields.iter().any(|f| {
        matches!(f, rae_proto::Field::Reachability(r) if r.state == Liveness::Offline)
    }))
}
