//! The real agent's wall clock stepped by +1 h and then back by 2 h (to -1 h) while it tracks a
//! DUT: no session closes and no liveness decision changes; after the steps the agent still
//! probes, and an unplugged DUT still goes offline and is closed on its timers.
//!
//! The step is made by libfaketime (Debian's `faketime`, installed by `scripts/setup`) with
//! `FAKETIME_DONT_FAKE_MONOTONIC=1`: the agent's wall clock (CLOCK_REALTIME) moves as an NTP
//! step would move it, CLOCK_MONOTONIC and CLOCK_BOOTTIME do not. Before the core ran on its
//! own clock, the +1 h step closed every session at the next tick and the -1 h step stopped
//! probing and liveness for an hour.
//!
//! Needs root, iproute2, dnsmasq, mosquitto and libfaketime, and the workspace built.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rae_proto::{Envelope, Event, Liveness, Mac, SessionId};
use rae_tests::agent::{raectl, Agent, AgentSpec};
use rae_tests::mqtt_watch::MqttWatch;
use rae_tests::netlab::{wait_until, DutKind, DutSpec, Lab, LabConfig};
use rae_tests::services::Mosquitto;
use rae_tests::stream_check::Stream;

const WAIT: Duration = Duration::from_secs(60);
const SERIAL: &str = "LAB-RAE-CLOCK";
const HOUR_MS: i64 = 3_600_000;

/// libfaketime's preload library, where Debian puts it.
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path().join("faketime/libfaketime.so.1"))
        .find(|path| path.exists());
    found.unwrap_or_else(|| {
        panic!("libfaketime.so.1 not found under /usr/lib/*/faketime: install Debian's `faketime` (scripts/setup test)")
    })
}

fn set_offset(file: &Path, offset: &str) {
    std::fs::write(file, format!("{offset}\n"))
        .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
}

fn real_wall_ms() -> i64 {
    rae_agent::wall_ms()
}

fn status_json(spec: &AgentSpec) -> serde_json::Value {
    let (status, out, err) = raectl(spec, &["status", "--json"]).expect("raectl status");
    assert!(status.success(), "raectl status: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("raectl status --json: {e}\n{out}"))
}

fn answered(spec: &AgentSpec) -> u64 {
    let json = status_json(spec);
    let value = &json["status"]["probe"]["answered"];
    value
        .as_u64()
        .or_else(|| value.as_str()?.parse().ok())
        .unwrap_or(0)
}

/// The DUT's row in `raectl devices --all --json`.
fn device_row(spec: &AgentSpec, session: SessionId) -> Option<serde_json::Value> {
    let (_, out, _) = raectl(spec, &["devices", "--all", "--json"]).ok()?;
    let json: serde_json::Value = serde_json::from_str(&out).ok()?;
    json["devices"]
        .as_array()?
        .iter()
        .find(|row| row["session"] == session.to_string())
        .cloned()
}

/// Waits until the registry stamps the DUT's `last_seen` within 30 s of `expected_wall_ms`
/// (so the agent's wall clock took the step), then until `rounds` more probes were answered.
fn wait_stepped(agent: &Agent, session: SessionId, expected_wall_ms: i64, rounds: u64, what: &str) {
    let spec = agent.spec();
    wait_until(
        format!("last_seen stamped on the {what} wall clock"),
        WAIT,
        || {
            let Some(row) = device_row(spec, session) else {
                return Ok(Err("the session is not in the registry".to_owned()));
            };
            let seen = row["last_seen_ms"].as_i64().unwrap_or(0);
            Ok(if (seen - expected_wall_ms).abs() < 30_000 {
                Ok(())
            } else {
                Err(format!(
                    "last_seen_ms {seen}, expected about {expected_wall_ms}\n{}",
                    agent.log_tail()
                ))
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let before = answered(spec);
    wait_until(
        format!("{rounds} more probes answered after the {what} step"),
        WAIT,
        || {
            let now = answered(spec);
            Ok(if now >= before + rounds {
                Ok(())
            } else {
                Err(format!("{} answered since the step", now - before))
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail()));
}

/// The events of `session` at the subscriber.
fn events_of(watch: &MqttWatch, session: SessionId) -> Vec<Envelope> {
    watch
        .events()
        .into_iter()
        .filter(|e| e.session == session)
        .collect()
}

fn assert_still_online(agent: &Agent, watch: &MqttWatch, session: SessionId, after: &str) {
    let events = events_of(watch, session);
    let offline_or_closed: Vec<&Envelope> = events
        .iter()
        .filter(|e| match &e.event {
            Event::Closed { .. } => true,
            Event::Delta { fields } => fields.iter().any(
                |f| matches!(f, rae_proto::Field::Reachability(r) if r.state == Liveness::Offline),
            ),
            _ => false,
        })
        .collect();
    assert!(
        offline_or_closed.is_empty(),
        "after the {after} step the session went offline or closed: {offline_or_closed:?}\n{}",
        agent.log_tail()
    );
    let row = device_row(agent.spec(), session).expect("the session in the registry");
    assert_eq!(
        row["reachability"], "online",
        "after the {after} step: {row}"
    );
    assert!(row["closed_ms"].is_null(), "after the {after} step: {row}");
}

#[test]
fn wall_clock_steps_close_no_session_and_stop_no_liveness() {
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
    let offset_file = lab.dir().join("faketime.rc");
    set_offset(&offset_file, "+0");
    spec.env = vec![
        ("LD_PRELOAD".into(), libfaketime().display().to_string()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            offset_file.display().to_string(),
        ),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        // Re-read the file at most once a second.
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
    ];
    let ip = lab.net().host_v4(70);
    let dut = lab
        .add_dut(DutSpec::new("clocked", DutKind::StaticV4 { addr: ip }))
        .unwrap_or_else(|e| panic!("adding the DUT: {e}"));
    let device = Mac(dut.mac().0);
    let (agent, started) =
        Agent::start_online(&spec, &watch, WAIT).unwrap_or_else(|e| panic!("{e}"));
    let _ = dut.ping(lab.router_v4().into());
    let session = watch
        .wait_for(format!("a Snapshot of {device}"), WAIT, |messages| {
            messages
                .iter()
                .filter(|m| m.at >= started)
                .filter_map(|m| m.event())
                .find(|e| matches!(&e.event, Event::Snapshot { record } if record.mac == device))
                .map(|e| e.session)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail()));
    // Probing runs before any step: the DUT answers the agent's ARP probes.
    wait_stepped(&agent, session, real_wall_ms(), 3, "unstepped");

    // +1 h, as a first NTP sync of a router without an RTC would do; gone_after is 20 s.
    set_offset(&offset_file, "+1h");
    wait_stepped(&agent, session, real_wall_ms() + HOUR_MS, 5, "+1 h");
    assert_still_online(&agent, &watch, session, "+1 h");

    // Back to -1 h: a step of -2 h.
    set_offset(&offset_file, "-1h");
    wait_stepped(&agent, session, real_wall_ms() - HOUR_MS, 5, "-1 h");
    assert_still_online(&agent, &watch, session, "-1 h");

    // Liveness still decides on its timers: unplugged, the DUT goes offline after its missed
    // rounds, then is Closed after gone_after.
    let unplugged = Instant::now();
    dut.unplug().unwrap_or_else(|e| panic!("unplugging: {e}"));
    let closed = watch
        .wait_for("the unplugged DUT's session Closed", WAIT, |messages| {
            messages
                .iter()
                .filter_map(|m| m.event())
                .find(|e| e.session == session && matches!(e.event, Event::Closed { .. }))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail()));
    let waited = unplugged.elapsed();
    assert!(
        waited >= Duration::from_secs(spec.gone_after_secs - 2),
        "Closed {waited:?} after the unplug, before gone_after ({} s)",
        spec.gone_after_secs
    );
    assert!(
        (closed.at_ms - (real_wall_ms() - HOUR_MS)).abs() < 30_000,
        "the Closed event is stamped on the stepped wall clock: at_ms {}",
        closed.at_ms
    );
    let events = events_of(&watch, session);
    let offline = events.iter().any(|e| match &e.event {
        Event::Delta { fields } => fields.iter().any(
            |f| matches!(f, rae_proto::Field::Reachability(r) if r.state == Liveness::Offline),
        ),
        _ => false,
    });
    assert!(offline, "an offline Delta came before Closed: {events:?}");

    // The whole stream is what a subscriber may rely on, and matches the registry.
    let stream = Stream::check(&watch.messages()).unwrap_or_else(|e| panic!("{e}"));
    let (_, devices, _) = raectl(&spec, &["devices", "--all", "--json"]).expect("raectl devices");
    stream
        .matches_registry(&devices)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut agent = agent;
    agent.ensure_running().expect("the agent runs on");
}
