//! The real `rae-agent` binary with a publisher made to fail (the test-only fault
//! `RAE_AGENT_TEST_PUBLISHER_FAULT`, read from the environment): the daemon keeps running, the
//! restart shows in `raectl status`, and the device's events still reach the broker.
//!
//! Needs root, iproute2, dnsmasq and mosquitto; and the workspace built (`cargo build`).

use std::time::{Duration, Instant};

use rae_proto::{Envelope, Event, Mac};
use rae_tests::agent::{raectl, Agent, AgentSpec};
use rae_tests::mqtt_watch::MqttWatch;
use rae_tests::netlab::{DutKind, DutSpec, Lab, LabConfig};
use rae_tests::services::Mosquitto;

const WAIT: Duration = Duration::from_secs(60);
const SERIAL: &str = "LAB-RAE-FAULT";

fn status_value(spec: &AgentSpec, section: &str, name: &str) -> Option<u64> {
    let (_, out, _) = raectl(spec, &["status", "--json"]).ok()?;
    let json: serde_json::Value = serde_json::from_str(&out).ok()?;
    let value = &json["status"][section][name];
    value.as_u64().or_else(|| value.as_str()?.parse().ok())
}

#[test]
fn a_failing_publisher_is_restarted_and_shown_not_silent() {
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
    // Fails as soon as a device event is in flight.
    spec.env = vec![(
        "RAE_AGENT_TEST_PUBLISHER_FAULT".to_owned(),
        "error:0".to_owned(),
    )];
    let mut agent = Agent::start(&spec).unwrap_or_else(|e| panic!("starting rae-agent: {e}"));

    let ip = lab.net().host_v4(60);
    let dut = lab
        .add_dut(DutSpec::new("faulty-day", DutKind::StaticV4 { addr: ip }))
        .unwrap_or_else(|e| panic!("adding the DUT: {e}"));
    let device = Mac(dut.mac().0);
    let deadline = Instant::now() + WAIT;
    let restarts = loop {
        let _ = dut.ping(lab.router_v4().into());
        agent
            .ensure_running()
            .unwrap_or_else(|e| panic!("the agent died: {e}\n{}", agent.log_tail()));
        match status_value(&spec, "publish", "restarts") {
            Some(n) if n >= 1 => break n,
            _ if Instant::now() > deadline => panic!(
                "raectl status never showed publish.restarts >= 1 within {WAIT:?}\n{}",
                agent.log_tail()
            ),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert_eq!(restarts, 1, "the fault fires once");

    // The event that was in flight at the failure, and the rest, still arrive.
    watch
        .wait_for("the device's Snapshot after the restart", WAIT, |seen| {
            seen.iter()
                .filter_map(|m| Envelope::decode(&m.payload).ok())
                .find(|e| matches!(&e.event, Event::Snapshot { record } if record.mac == device))
        })
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    let log = agent.log();
    assert!(
        log.contains("restarting it"),
        "the restart is logged with its cause:\n{}",
        agent.log_tail()
    );
    agent
        .ensure_running()
        .unwrap_or_else(|e| panic!("the agent died: {e}"));
    let status = agent.terminate(Duration::from_secs(15)).expect("SIGTERM");
    assert!(status.success(), "exit status {status}");
}
