//! A registry database damaged between two runs of the real agent: the agent starts, moves the
//! damaged file aside, starts a fresh database, tracks the lab's DUT again as a new session
//! from seq 1, publishes an inventory without the old session (so the sink closes it), shows
//! the recovery in `raectl status`, and logs it once.
//!
//! Two kinds of damage, both written the way a failing flash or a bad copy leaves them:
//! garbage pages in the middle of the file with the header intact (found by `quick_check`),
//! and a garbage header (SQLite: "file is not a database").
//!
//! Needs root, iproute2, dnsmasq and mosquitto, and the agent built (`cargo build -p rae-agent
//! --bins`).

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rae_proto::{Envelope, Event, Inventory, Mac, SessionId, Topic};
use rae_tests::agent::{raectl, Agent, AgentSpec};
use rae_tests::mqtt_watch::{MqttWatch, Received};
use rae_tests::netlab::{DutKind, DutSpec, Lab, LabConfig};
use rae_tests::services::Mosquitto;

const WAIT: Duration = Duration::from_secs(60);
const SERIAL: &str = "LAB-RAE-INTEGRITY";
const PAGE: u64 = 4096;
/// The agent's one log line for a recovery.
const RECOVERY_LINE: &str = "registry database damaged: moved aside and replaced";

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Pages from the middle of the file overwritten; page 1 (header, schema) intact.
    MiddlePages,
    /// The first 100 bytes (the SQLite header) overwritten.
    Header,
}

fn damage(path: &Path, damage: Damage) {
    let len = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len();
    let pages = len / PAGE;
    let (at, bytes) = match damage {
        Damage::MiddlePages => {
            assert!(pages >= 6, "{pages} pages are too few to damage the middle");
            (pages / 2 * PAGE, 2 * PAGE)
        }
        Damage::Header => (0, 100),
    };
    let garbage: Vec<u8> = (0..bytes)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.seek(SeekFrom::Start(at)).expect("seek");
    file.write_all(&garbage).expect("write garbage");
    file.sync_all().expect("sync");
}

/// The first Snapshot of `device` that arrived after `since`: its session and seq.
fn wait_snapshot(watch: &MqttWatch, agent: &Agent, device: Mac, since: Instant) -> Envelope {
    watch
        .wait_for(format!("a Snapshot of {device}"), WAIT, |messages| {
            messages
                .iter()
                .filter(|m| m.at >= since)
                .filter_map(Received::event)
                .find(|e| matches!(&e.event, Event::Snapshot { record } if record.mac == device))
        })
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", notable_log(agent)))
}

/// The agent's log without its debug lines.
fn notable_log(agent: &Agent) -> String {
    agent
        .log()
        .lines()
        .filter(|line| !line.contains(" DEBUG ") && !line.contains(" TRACE "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first inventory that arrived after `since` and satisfies `check`.
fn wait_inventory(
    watch: &MqttWatch,
    agent: &Agent,
    since: Instant,
    what: &str,
    check: impl Fn(&Inventory) -> bool,
) -> Inventory {
    watch
        .wait_for(what, WAIT, |messages| {
            messages
                .iter()
                .filter(|m| m.at >= since)
                .filter(|m| matches!(Topic::parse(&m.topic), Ok(Topic::Inventory { .. })))
                .filter_map(|m| Inventory::decode(&m.payload).ok())
                .find(|inventory| check(inventory))
        })
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", notable_log(agent)))
}

fn lists(inventory: &Inventory, session: SessionId) -> bool {
    inventory.sessions.iter().any(|s| s.session == session)
}

fn moved_aside(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("registry.db.corrupt-")
                    && !n.ends_with("-wal")
                    && !n.ends_with("-shm")
            })
        })
        .collect();
    found.sort();
    found
}

fn status_json(spec: &AgentSpec) -> serde_json::Value {
    let (status, out, err) = raectl(spec, &["status", "--json"]).expect("raectl status");
    assert!(status.success(), "raectl status: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("raectl status --json: {e}\n{out}"))
}

fn recovers_from(kind: Damage) {
    let lab = Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("starting the lab: {e}"));
    let broker = Mosquitto::start().unwrap_or_else(|e| panic!("starting mosquitto: {e}"));
    let watch = MqttWatch::start(broker.host(), broker.port(), "cloud-watch", &["rae/v1/#"])
        .unwrap_or_else(|e| panic!("subscribing: {e}"));
    let spec = AgentSpec::for_lab(
        SERIAL,
        lab.bridge_name(),
        &lab.dir().join("agent"),
        broker.host(),
        broker.port(),
    );
    let ip = lab.net().host_v4(60);
    let dut = lab
        .add_dut(DutSpec::new("keeper", DutKind::StaticV4 { addr: ip }))
        .unwrap_or_else(|e| panic!("adding the DUT: {e}"));
    let device = Mac(dut.mac().0);

    // First run: the DUT is tracked, then the agent stops cleanly (its WAL checkpointed).
    let (agent, started) =
        Agent::start_online(&spec, &watch, WAIT).unwrap_or_else(|e| panic!("{e}"));
    let _ = dut.ping(lab.router_v4().into());
    let old = wait_snapshot(&watch, &agent, device, started).session;
    wait_inventory(
        &watch,
        &agent,
        started,
        "an inventory with the session",
        |inv| lists(inv, old),
    );
    let status = agent.terminate(Duration::from_secs(15)).expect("SIGTERM");
    assert!(status.success(), "first run's exit status {status}");
    let db = spec.database();
    let size = std::fs::metadata(&db).expect("the database").len();
    damage(&db, kind);

    // Second run on the damaged file.
    let (mut agent, restarted) =
        Agent::start_online(&spec, &watch, WAIT).unwrap_or_else(|e| panic!("{e}"));
    let moved = moved_aside(&spec.state_dir);
    assert_eq!(moved.len(), 1, "one moved-aside database: {moved:?}");
    assert_eq!(
        std::fs::metadata(&moved[0]).expect("moved file").len(),
        size,
        "the damaged file is kept whole"
    );
    // The DUT speaks ARP again (as it does whenever its neighbour entry expires); the fresh
    // registry learns it from that, as from any new device.
    dut.exec(["ip", "neigh", "flush", "all"])
        .expect("flushing the DUT's neighbours");
    let _ = dut.ping(lab.router_v4().into());
    let new = wait_snapshot(&watch, &agent, device, restarted);
    assert_ne!(
        new.session, old,
        "the DUT is tracked again as a new session"
    );
    assert_eq!(new.seq, 1, "the new session starts at seq 1");
    let inventory = wait_inventory(
        &watch,
        &agent,
        restarted,
        "an inventory listing the new session",
        |inv| lists(inv, new.session),
    );
    assert!(
        !lists(&inventory, old),
        "the inventory no longer lists the old session {old}: {inventory:?}"
    );
    // No inventory of this run lists the old session (the sink closes it as `unlisted`).
    let stale: Vec<Received> = watch
        .messages()
        .into_iter()
        .filter(|m| m.at >= restarted)
        .filter(|m| matches!(Topic::parse(&m.topic), Ok(Topic::Inventory { .. })))
        .filter(|m| Inventory::decode(&m.payload).is_ok_and(|inv| lists(&inv, old)))
        .collect();
    assert!(
        stale.is_empty(),
        "{} inventories still list {old}",
        stale.len()
    );

    // What the operator sees: the counter, the moved file, the old session gone.
    let json = status_json(&spec);
    assert_eq!(json["counters"]["integrity_recoveries"], 1, "{json:#}");
    assert_eq!(
        json["status"]["store"]["recovered_moved_to"],
        moved[0].display().to_string(),
        "{json:#}"
    );
    let (_, text, _) = raectl(&spec, &["status"]).expect("raectl status");
    assert!(text.contains("integrity_recoveries"), "{text}");
    let (_, devices, _) = raectl(&spec, &["devices", "--all"]).expect("raectl devices");
    assert!(!devices.contains(&old.to_string()), "{devices}");
    assert!(devices.contains(&new.session.to_string()), "{devices}");

    agent.ensure_running().expect("the agent keeps running");
    let log = agent.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(RECOVERY_LINE)).collect();
    assert_eq!(lines.len(), 1, "the recovery is logged once:\n{log}");
    assert!(lines[0].contains("ERROR"), "{}", lines[0]);
    assert!(
        lines[0].contains("corrupt-"),
        "names the moved file: {}",
        lines[0]
    );

    // A clean restart on the fresh database is no new incident.
    let status = agent.terminate(Duration::from_secs(15)).expect("SIGTERM");
    assert!(status.success(), "second run's exit status {status}");
    let (agent, _) = Agent::start_online(&spec, &watch, WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(moved_aside(&spec.state_dir).len(), 1, "nothing else moved");
    let log = agent.log();
    assert_eq!(
        log.lines().filter(|l| l.contains(RECOVERY_LINE)).count(),
        1,
        "still one recovery line after a clean restart"
    );
    assert_eq!(status_json(&spec)["counters"]["integrity_recoveries"], 1);
}

#[test]
fn a_database_with_garbage_pages_in_the_middle_is_moved_aside_and_replaced() {
    recovers_from(Damage::MiddlePages);
}

#[test]
fn a_database_with_a_garbage_header_is_moved_aside_and_replaced() {
    recovers_from(Damage::Header);
}
