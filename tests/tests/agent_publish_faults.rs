//! The real `rae-agent` binary against a real mosquitto that misbehaves: a broker whose ACL
//! refuses device events (then is fixed and reloaded), a broker whose Maximum Packet Size is
//! below a Snapshot, a broker frozen with rows in flight and then replaced, a broker in a
//! namespace whose path from the agent is cut without a RST (half-open). The subscriber
//! checks what a QoS 1 consumer may rely on (`Stream::check`: no gap, no reorder, duplicates
//! only byte-identical) and the folded state against `raectl devices --all --json`; each
//! test asserts the counter of the mechanism it aims at.
//!
//! Needs root, iproute2, dnsmasq and mosquitto; and the workspace built (`cargo build`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use nix::sys::signal::Signal;
use rae_proto::{Event, Mac};
use rae_tests::agent::{raectl, Agent, AgentSpec};
use rae_tests::inject::{arp_announcement, Injector};
use rae_tests::mqtt_watch::{MqttWatch, Received};
use rae_tests::netlab::{wait_until, DutKind, DutSpec, Lab, LabConfig};
use rae_tests::services::{Acl, BrokerSetup, Mosquitto, MosquittoOptions};
use rae_tests::stream_check::Stream;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
/// The agent retries refused rows with a backoff of up to 60 s.
const RETRY_WAIT: Duration = Duration::from_secs(100);

/// `raectl status --json`, parsed.
fn status(spec: &AgentSpec) -> Result<Value, String> {
    let (code, out, err) = raectl(spec, &["status", "--json"]).map_err(|e| e.to_string())?;
    if !code.success() {
        return Err(format!("raectl status: {code}: {err}"));
    }
    serde_json::from_str(&out).map_err(|e| format!("raectl status --json: {e}: {out}"))
}

/// A counter of `raectl status --json`, e.g. `("publish", "refused")`; numbers may be strings.
fn counter(json: &Value, section: &str, name: &str) -> Option<u64> {
    let value = &json["status"][section][name];
    value.as_u64().or_else(|| value.as_str()?.parse().ok())
}

fn outbox_rows(json: &Value) -> Option<u64> {
    json["outbox"]["rows"].as_u64()
}

/// The counters a fault test reports when it fails.
fn summary(json: &Value) -> String {
    format!(
        "publish {} broker {} outbox {}",
        json["status"]["publish"], json["status"]["broker"], json["outbox"]
    )
}

/// The lab, a broker, a subscriber for the cloud and the agent on the lab's bridge.
struct Bed {
    lab: Lab,
    broker: Mosquitto,
    watch: MqttWatch,
    spec: AgentSpec,
    agent: Agent,
}

impl Bed {
    fn start(serial: &str, setup: BrokerSetup) -> Bed {
        let lab =
            Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("starting the lab: {e}"));
        let broker = Mosquitto::start_setup(MosquittoOptions::default(), setup)
            .unwrap_or_else(|e| panic!("starting mosquitto: {e}"));
        let watch_host = broker.host().to_owned();
        Bed::start_on(lab, broker, &watch_host, serial, |_| {})
    }

    /// With the lab and broker given; the subscriber connects to `watch_host`, the agent to
    /// the broker's host, with `tweak` applied to its spec.
    fn start_on(
        lab: Lab,
        broker: Mosquitto,
        watch_host: &str,
        serial: &str,
        tweak: impl FnOnce(&mut AgentSpec),
    ) -> Bed {
        let watch = MqttWatch::start(watch_host, broker.port(), "cloud-watch", &["rae/v1/#"])
            .unwrap_or_else(|e| panic!("subscribing: {e}"));
        let mut spec = AgentSpec::for_lab(
            serial,
            lab.bridge_name(),
            &lab.dir().join("agent"),
            broker.host(),
            broker.port(),
        );
        tweak(&mut spec);
        let (agent, _) = Agent::start_online(&spec, &watch, WAIT)
            .unwrap_or_else(|e| panic!("starting rae-agent: {e}"));
        Bed {
            lab,
            broker,
            watch,
            spec,
            agent,
        }
    }

    /// A DUT that speaks (one ping), with an injector for frames of other devices behind it.
    fn injector(&self, name: &str, host: u8) -> (rae_tests::netlab::Dut, Injector) {
        let ip = self.lab.net().host_v4(host);
        let dut = self
            .lab
            .add_dut(DutSpec::new(name, DutKind::StaticV4 { addr: ip }))
            .unwrap_or_else(|e| panic!("adding the DUT: {e}"));
        let _ = dut.ping(IpAddr::V4(self.lab.router_v4()));
        let injector = Injector::open(dut.ns_name(), "eth0")
            .unwrap_or_else(|e| panic!("opening the injector in {}: {e}", dut.ns_name()));
        (dut, injector)
    }

    /// Each of `macs` announces address `first_host + round * macs.len() + k`: one change
    /// per device and round (a Snapshot in the first round, an IPv4 Delta after).
    fn announce(&self, injector: &Injector, macs: &[Mac], round: usize, first_host: usize) {
        for (k, mac) in macs.iter().enumerate() {
            let host = first_host + round * macs.len() + k;
            let host = u8::try_from(host).unwrap_or_else(|_| panic!("host {host} above 255"));
            injector
                .send(&arp_announcement(*mac, self.lab.net().host_v4(host)))
                .unwrap_or_else(|e| panic!("injecting an ARP announcement: {e}"));
        }
    }

    /// Waits until the outbox is empty and the subscriber's stream is valid and folds to what
    /// `raectl devices --all --json` shows; returns the stream.
    /// Also waits for every one of `devices` to have reached seq `seq` at the subscriber.
    fn wait_delivered(
        &mut self,
        what: &str,
        within: Duration,
        devices: &[Mac],
        seq: u64,
    ) -> Stream {
        let watch = &self.watch;
        self.wait_delivered_to(what, within, devices, seq, || watch.messages())
    }

    /// [`Bed::wait_delivered`], for what `messages` returns (e.g. of two subscribers).
    fn wait_delivered_to(
        &self,
        what: &str,
        within: Duration,
        devices: &[Mac],
        seq: u64,
        messages: impl Fn() -> Vec<Received>,
    ) -> Stream {
        let spec = self.spec.clone();
        let result = wait_until(what, within, || {
            let json = match status(&spec) {
                Ok(json) => json,
                Err(e) => return Ok(Err(e)),
            };
            if outbox_rows(&json) != Some(0) {
                return Ok(Err(format!("outbox not empty: {}", summary(&json))));
            }
            let stream = match Stream::check(&messages()) {
                Ok(stream) => stream,
                Err(problems) => return Ok(Err(format!("STREAM INVALID: {problems}"))),
            };
            let behind: Vec<String> = devices
                .iter()
                .filter(|mac| {
                    !stream
                        .sessions
                        .values()
                        .any(|s| s.record.mac == **mac && s.last_seq >= seq)
                })
                .map(|mac| mac.to_string())
                .collect();
            if !behind.is_empty() {
                return Ok(Err(format!("not yet at seq {seq}: {}", behind.join(" "))));
            }
            let (_, devices, _) = raectl(&spec, &["devices", "--all", "--json"])?;
            match stream.matches_registry(&devices) {
                Ok(()) => Ok(Ok(stream)),
                Err(diff) => Ok(Err(format!("subscriber and registry differ: {diff}"))),
            }
        });
        match result {
            Ok(stream) => stream,
            Err(e) => panic!("{e}\nagent log:\n{}", self.agent.log_tail()),
        }
    }

    /// Waits for `raectl status --json` to satisfy `probe`; returns that status.
    fn wait_status(&self, what: &str, within: Duration, probe: impl Fn(&Value) -> bool) -> Value {
        let result = wait_until(what, within, || {
            let json = match status(&self.spec) {
                Ok(json) => json,
                Err(e) => return Ok(Err(e)),
            };
            if probe(&json) {
                Ok(Ok(json))
            } else {
                Ok(Err(summary(&json)))
            }
        });
        result.unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", self.agent.log_tail()))
    }

    fn stop(mut self) {
        self.agent
            .ensure_running()
            .unwrap_or_else(|e| panic!("the agent died: {e}\n{}", self.agent.log_tail()));
        let status = self
            .agent
            .terminate(Duration::from_secs(15))
            .expect("SIGTERM");
        assert!(status.success(), "exit status {status}");
        drop(self.broker);
    }
}

/// Locally administered MACs of injected devices, distinct per test (`tag`).
fn macs(tag: u8, count: usize) -> Vec<Mac> {
    (0..count)
        .map(|k| Mac([0x02, 0xfa, tag, 0, 0, u8::try_from(k).unwrap_or(u8::MAX)]))
        .collect()
}

fn device_events(watch: &MqttWatch) -> usize {
    watch
        .messages()
        .iter()
        .filter(|m| m.topic.contains("/devices/"))
        .count()
}

#[test]
fn refused_rows_wait_in_the_outbox_and_are_not_overtaken_once_the_acl_is_fixed() {
    const SERIAL: &str = "LAB-RAE-ACL";
    let refusing = Acl::from_text(format!(
        "topic write rae/v1/{SERIAL}/status\n\
         topic write rae/v1/{SERIAL}/inventory\n\
         topic read #\n"
    ));
    let fixed = Acl::from_text(format!(
        "{}topic write rae/v1/{SERIAL}/devices/#\n",
        refusing.text()
    ));
    let mut bed = Bed::start(
        SERIAL,
        BrokerSetup {
            anonymous_acl: Some(refusing),
            ..BrokerSetup::default()
        },
    );
    let (_dut, injector) = bed.injector("acl-day", 10);
    // Three devices, four changes each: several rows per session queued behind refusals.
    let devices = macs(1, 3);
    for round in 0..4 {
        bed.announce(&injector, &devices, round, 100);
    }
    let json = bed.wait_status(
        "device events refused (publish.refused > 0) with rows of several changes per device in the outbox",
        WAIT,
        |json| {
            counter(json, "publish", "refused").unwrap_or(0) > 0
                && outbox_rows(json).unwrap_or(0) >= 12
        },
    );
    assert_eq!(
        counter(&json, "publish", "acked"),
        Some(0),
        "a refused row is not acknowledged: {}",
        summary(&json)
    );
    assert_eq!(
        device_events(&bed.watch),
        0,
        "the broker delivered a refused event"
    );

    bed.broker
        .replace_acl(&fixed)
        .unwrap_or_else(|e| panic!("reloading the ACL: {e}"));
    let stream = bed.wait_delivered(
        "every event delivered once the ACL allows it, in order, the outbox empty",
        RETRY_WAIT,
        &devices,
        4,
    );
    for mac in &devices {
        assert!(
            stream
                .sessions
                .values()
                .any(|s| s.record.mac == *mac && s.last_seq >= 4),
            "device {mac} and its four changes reached the subscriber"
        );
    }
    // The status the daemon writes every second catches up with the delivery.
    bed.wait_status(
        "publish.waited_for_session > 0 (rows held back behind their session's row in flight) \
         and publish.resent > 0 (the refused rows sent again)",
        WAIT,
        |json| {
            counter(json, "publish", "waited_for_session").unwrap_or(0) > 0
                && counter(json, "publish", "resent").unwrap_or(0) > 0
        },
    );
    bed.stop();
}

/// The sessions whose Snapshot at the subscriber is of one of `macs`, and the messages of
/// those sessions only.
fn messages_of(watch: &MqttWatch, macs: &[Mac]) -> Vec<Received> {
    let messages = watch.messages();
    let sessions: Vec<_> = messages
        .iter()
        .filter_map(|m| m.event())
        .filter(|e| matches!(&e.event, Event::Snapshot { record } if macs.contains(&record.mac)))
        .map(|e| e.session)
        .collect();
    messages
        .into_iter()
        .filter(|m| m.event().is_some_and(|e| sessions.contains(&e.session)))
        .collect()
}

#[test]
fn a_row_above_the_brokers_maximum_packet_size_is_dropped_counted_and_does_not_block_the_rest() {
    // Above the CONNECT with its Will, the status, the inventory and a small device's events;
    // below the Snapshot of a DHCP client with a long host name and vendor class.
    const MAX_PACKET: usize = 400;
    let bed = Bed::start(
        "LAB-RAE-BIG",
        BrokerSetup {
            extra_config: format!("max_packet_size {MAX_PACKET}\n"),
            ..BrokerSetup::default()
        },
    );
    let hostname = format!("big-{}", "h".repeat(200));
    let big = bed
        .lab
        .add_dut(DutSpec::new(
            "big-day",
            DutKind::Dhclient {
                hostname: Some(hostname),
                vendor_class: Some(format!("vendor-{}", "v".repeat(200))),
            },
        ))
        .unwrap_or_else(|e| panic!("adding the DHCP DUT: {e}"));
    let json = bed.wait_status(
        "the big Snapshot dropped as oversize (publish.oversize > 0)",
        WAIT,
        |json| counter(json, "publish", "oversize").unwrap_or(0) > 0,
    );
    assert_eq!(
        counter(&json, "broker", "reconnects"),
        Some(0),
        "the oversize row did not cost the connection: {}",
        summary(&json)
    );

    // Rows after it still flow.
    let (_dut, injector) = bed.injector("small-day", 11);
    let devices = macs(2, 3);
    for round in 0..2 {
        bed.announce(&injector, &devices, round, 120);
    }
    let watch = &bed.watch;
    let delivered = wait_until("the small devices' events at the subscriber", WAIT, || {
        let messages = messages_of(watch, &devices);
        let stream = match Stream::check(&messages) {
            Ok(stream) => stream,
            Err(problems) => return Ok(Err(format!("STREAM INVALID: {problems}"))),
        };
        let done = devices.iter().all(|mac| {
            stream
                .sessions
                .values()
                .any(|s| s.record.mac == *mac && s.last_seq >= 2)
        });
        Ok(if done {
            Ok(stream)
        } else {
            Err(format!("{} sessions so far", stream.sessions.len()))
        })
    });
    delivered.unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", bed.agent.log_tail()));
    let json = bed.wait_status("an empty outbox", WAIT, |json| outbox_rows(json) == Some(0));
    assert_eq!(
        counter(&json, "broker", "reconnects"),
        Some(0),
        "no reconnect: {}",
        summary(&json)
    );
    let big_mac = Mac(big.mac().0);
    assert!(
        !bed.watch
            .events()
            .iter()
            .any(|e| matches!(&e.event, Event::Snapshot { record } if record.mac == big_mac)),
        "the oversize Snapshot never reached the broker"
    );
    let warnings = bed
        .agent
        .log()
        .matches("exceeds the broker's Maximum Packet Size")
        .count();
    assert_eq!(
        warnings,
        1,
        "logged once per kind:\n{}",
        bed.agent.log_tail()
    );
    bed.stop();
}

/// Rows handed to the broker and not answered yet, from `raectl status --json`.
fn unanswered(json: &Value) -> u64 {
    let published = counter(json, "publish", "published").unwrap_or(0);
    let answered = counter(json, "publish", "acked").unwrap_or(0)
        + counter(json, "publish", "refused").unwrap_or(0);
    published.saturating_sub(answered)
}

#[test]
fn a_frozen_then_replaced_broker_loses_nothing_and_the_rows_in_flight_are_resent() {
    let mut bed = Bed::start("LAB-RAE-FREEZE", BrokerSetup::default());
    let (_dut, injector) = bed.injector("freeze-day", 12);
    // One row in flight per session: 30 devices for more than 20 rows in flight.
    let devices = macs(4, 30);
    bed.announce(&injector, &devices, 0, 100);
    bed.wait_delivered("the first Snapshots delivered", WAIT, &devices, 1);

    bed.broker
        .signal(Signal::SIGSTOP)
        .unwrap_or_else(|e| panic!("SIGSTOP mosquitto: {e}"));
    for round in 1..4 {
        bed.announce(&injector, &devices, round, 100);
    }
    let json = bed.wait_status(
        "at least 20 rows published and unacknowledged while the broker is frozen",
        WAIT,
        |json| unanswered(json) >= 20,
    );
    let in_flight = unanswered(&json);
    let resent_before = counter(&json, "publish", "resent").unwrap_or(0);

    bed.broker
        .kill()
        .unwrap_or_else(|e| panic!("SIGKILL mosquitto: {e}"));
    // The new broker has no sessions: the agent stays frozen until a new subscriber is
    // there, so that nothing it re-sends is missed by the cloud.
    let agent_pid = nix::unistd::Pid::from_raw(bed.agent.pid() as i32);
    nix::sys::signal::kill(agent_pid, Signal::SIGSTOP).expect("SIGSTOP the agent");
    let restarted = bed.broker.start_again().map_err(|e| e.to_string());
    let watch2 = restarted.and_then(|()| {
        MqttWatch::start(
            bed.broker.host(),
            bed.broker.port(),
            "cloud-watch-2",
            &["rae/v1/#"],
        )
        .map_err(|e| e.to_string())
    });
    nix::sys::signal::kill(agent_pid, Signal::SIGCONT).expect("SIGCONT the agent");
    let watch2 = watch2.unwrap_or_else(|e| panic!("starting the new broker: {e}"));

    let first = &bed.watch;
    let stream = bed.wait_delivered_to(
        "every event at the subscribers of the old and the new broker, the outbox empty",
        WAIT,
        &devices,
        4,
        || {
            let mut all = first.messages();
            all.extend(watch2.messages());
            all
        },
    );
    for mac in &devices {
        assert!(
            stream
                .sessions
                .values()
                .any(|s| s.record.mac == *mac && s.last_seq >= 4),
            "device {mac}: all four changes arrived"
        );
    }
    // The status the daemon writes every second catches up with the delivery.
    let json = bed.wait_status(
        &format!(
            "publish.resent above {resent_before} (the {in_flight} rows in flight at the \
             freeze sent again) and a reconnect counted"
        ),
        WAIT,
        |json| {
            counter(json, "publish", "resent").unwrap_or(0) > resent_before
                && counter(json, "broker", "reconnects").unwrap_or(0) >= 1
        },
    );
    let resent = counter(&json, "publish", "resent").unwrap_or(0);
    println!(
        "frozen with {in_flight} rows in flight; resent {resent}, duplicates at the subscriber {}",
        stream.duplicates
    );
    bed.stop();
}

/// Runs `ip` with `args`; panics with its stderr on failure.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A second link to a DUT's namespace (a veth pair, `198.19.N.0/30` of the lab's slot `N`,
/// which no lab uses), for a broker there: the test can cut it without a RST or FIN (a
/// blackhole route on each side), while the lab bridge stays a path for the subscriber.
struct UplinkPath {
    ns: String,
    host_link: String,
    host_ip: Ipv4Addr,
    broker_ip: Ipv4Addr,
    cut: bool,
}

impl UplinkPath {
    fn create(lab: &Lab, ns: &str) -> UplinkPath {
        let n = u8::try_from(lab.slot()).unwrap_or_else(|_| panic!("slot {}", lab.slot()));
        // `rlab<slot>...`: guarded by the lab's slot lock, so another run's sweep of
        // leftovers leaves it alone (a slot-less `rlab` name would be swept mid-test).
        let host_link = format!("rlab{n}upa");
        let ns_link = format!("rlab{n}upb");
        let path = UplinkPath {
            ns: ns.to_owned(),
            host_link: host_link.clone(),
            host_ip: Ipv4Addr::new(198, 19, n, 1),
            broker_ip: Ipv4Addr::new(198, 19, n, 2),
            cut: false,
        };
        // Should the link vanish, nothing to these addresses may take the default route off
        // the machine: a fallback that drops them.
        ip(&[
            "route",
            "add",
            "unreachable",
            &path.subnet(),
            "metric",
            "4000",
        ]);
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &ns_link,
        ]);
        ip(&["link", "set", &ns_link, "netns", ns]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", path.host_ip),
            "dev",
            &host_link,
        ]);
        ip(&["link", "set", &host_link, "up"]);
        let broker_cidr = format!("{}/30", path.broker_ip);
        ip(&["-n", ns, "addr", "add", &broker_cidr, "dev", &ns_link]);
        ip(&["-n", ns, "link", "set", &ns_link, "up"]);
        path
    }

    fn subnet(&self) -> String {
        let [a, b, c, _] = self.host_ip.octets();
        format!("{a}.{b}.{c}.0/30")
    }

    /// Both directions dropped silently: the TCP connection goes half-open.
    fn cut(&mut self) {
        ip(&[
            "route",
            "add",
            "blackhole",
            &format!("{}/32", self.broker_ip),
        ]);
        let host = format!("{}/32", self.host_ip);
        ip(&["-n", &self.ns, "route", "add", "blackhole", &host]);
        self.cut = true;
    }

    fn restore(&mut self) {
        if !std::mem::take(&mut self.cut) {
            return;
        }
        ip(&[
            "route",
            "del",
            "blackhole",
            &format!("{}/32", self.broker_ip),
        ]);
        let host = format!("{}/32", self.host_ip);
        ip(&["-n", &self.ns, "route", "del", "blackhole", &host]);
    }
}

impl Drop for UplinkPath {
    fn drop(&mut self) {
        // The host's blackhole route is not tied to the link: it must go even on a panic.
        if self.cut {
            let _ = std::process::Command::new("ip")
                .args([
                    "route",
                    "del",
                    "blackhole",
                    &format!("{}/32", self.broker_ip),
                ])
                .status();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_link])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::process::Command::new("ip")
            .args([
                "route",
                "del",
                "unreachable",
                &self.subnet(),
                "metric",
                "4000",
            ])
            .status();
    }
}

#[test]
fn a_half_open_uplink_is_detected_within_two_keep_alives_and_nothing_is_lost() {
    // AgentSpec's keep-alive (rumqttc's minimum).
    const KEEP_ALIVE: Duration = Duration::from_secs(5);
    // raectl sees the daemon's status once a second; a second more for the reading itself.
    const MARGIN: Duration = Duration::from_secs(2);
    let lab = Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("starting the lab: {e}"));
    let broker_lan_ip = lab.net().host_v4(90);
    let broker_dut = lab
        .add_dut(DutSpec::new(
            "mqtt-day",
            DutKind::StaticV4 {
                addr: broker_lan_ip,
            },
        ))
        .unwrap_or_else(|e| panic!("adding the broker's DUT: {e}"));
    let mut path = UplinkPath::create(&lab, broker_dut.ns_name());
    let broker = Mosquitto::start_setup(
        MosquittoOptions::default(),
        BrokerSetup {
            netns: Some((broker_dut.ns_name().to_owned(), path.broker_ip)),
            ..BrokerSetup::default()
        },
    )
    .unwrap_or_else(|e| panic!("starting mosquitto in {}: {e}", broker_dut.ns_name()));
    // The subscriber reaches the broker over the lab bridge, which is not cut.
    let watch_host = broker_lan_ip.to_string();
    let mut bed = Bed::start_on(lab, broker, &watch_host, "LAB-RAE-HALFOPEN", |spec| {
        // A small send buffer, so that the burst below fills it and rumqttc's writes block.
        spec.mqtt_extra = "tcp_send_buffer_bytes = 2048".to_owned();
    });
    let (_dut, injector) = bed.injector("halfopen-day", 13);
    let devices = macs(5, 20);
    bed.announce(&injector, &devices, 0, 100);
    bed.wait_delivered("the first Snapshots delivered", WAIT, &devices, 1);

    bed.wait_status(
        "the status to show the connection and the first rows acknowledged",
        WAIT,
        |json| {
            json["status"]["broker"]["connected"] == "yes"
                && counter(json, "publish", "acked").unwrap_or(0) >= 20
        },
    );
    path.cut();
    let cut_at = std::time::Instant::now();
    // New devices (Snapshots, the largest rows) fill the pipeline (32 in flight) and the
    // small send buffer behind it; the known devices change on top.
    let newcomers = macs(6, 60);
    bed.announce(&injector, &newcomers, 0, 130);
    for round in 1..3 {
        bed.announce(&injector, &devices, round, 100);
    }
    let limit = KEEP_ALIVE * 2 + MARGIN;
    let json = bed.wait_status(
        &format!(
            "the agent to notice the half-open uplink (broker.connected = no) within two \
             keep-alives of {KEEP_ALIVE:?} plus {MARGIN:?} for the status to show it"
        ),
        limit,
        |json| json["status"]["broker"]["connected"] == "no",
    );
    let noticed = cut_at.elapsed();
    let in_flight = unanswered(&json);
    path.restore();

    let stream = bed.wait_delivered(
        "every event delivered after the path returned, the outbox empty",
        RETRY_WAIT,
        &devices,
        3,
    );
    for mac in &newcomers {
        assert!(
            stream.sessions.values().any(|s| s.record.mac == *mac),
            "device {mac}, announced during the cut, arrived"
        );
    }
    let json = bed.wait_status(
        "publish.resent > 0: the rows in flight at the cut were sent again",
        WAIT,
        |json| counter(json, "publish", "resent").unwrap_or(0) > 0,
    );
    println!(
        "half-open noticed after {noticed:?} with {in_flight} rows unanswered; {}",
        summary(&json)
    );
    bed.stop();
}
