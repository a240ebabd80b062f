//! The control plane end to end: the real `rae-agent` on the lab bridge with a DUT, a real
//! mosquitto, the real `cloud-sink mqtt` writing PostgreSQL, and `cloud-sink command` as
//! the operator's tool.
//!
//! - Every command round-trips: the reply carries the request's correlation data, and its
//!   effect shows as an event at a subscriber, in `raectl show`, and in the Cloud Registry
//!   row; `ping` and `inventory` answer; a refused command and a timeout have their own exit
//!   status.
//! - A gap made on purpose (an event published while no sink session exists for it) is
//!   healed by a resync the sink asks for, long before any periodic Snapshot.
//!
//! Needs root, the lab's tools, mosquitto, PostgreSQL, and the workspace built.

use std::time::Duration;

use rae_proto::{Event, Field, SessionId};
use rae_tests::agent::{raectl, Agent, AgentSpec};
use rae_tests::cloud_command::{cloud_command, CommandRun};
use rae_tests::mqtt_watch::MqttWatch;
use rae_tests::netlab::{wait_until, Dut, DutKind, DutSpec, Lab, LabConfig};
use rae_tests::services::{Mosquitto, Postgres};
use rae_tests::sink::{sum, Sink};
use sqlx::Row;

const WAIT: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT_MS: u64 = 10_000;

/// The columns of a session row the commands change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CloudRow {
    session: SessionId,
    availability: Option<String>,
    availability_seq: Option<i64>,
    esn: Option<String>,
    closed_seq: Option<i64>,
    close_reason: Option<String>,
    needs_resync: bool,
    seq_hw: i64,
    snapshot_seq: i64,
}

/// The latest session row of `mac` (open or closed), if there is one.
fn cloud_row(runtime: &tokio::runtime::Runtime, url: &str, mac: &str) -> Option<CloudRow> {
    runtime.block_on(async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .ok()?;
        let row = sqlx::query(
            "SELECT session, availability, availability_seq, esn, closed_seq, close_reason, \
             needs_resync, seq_hw, snapshot_seq FROM device_sessions WHERE mac = $1 \
             ORDER BY received_at DESC LIMIT 1",
        )
        .bind(mac)
        .fetch_optional(&pool)
        .await
        .ok()??;
        pool.close().await;
        let session: uuid::Uuid = row.get("session");
        Some(CloudRow {
            session: SessionId::from(session),
            availability: row.get("availability"),
            availability_seq: row.get("availability_seq"),
            esn: row.get("esn"),
            closed_seq: row.get("closed_seq"),
            close_reason: row.get("close_reason"),
            needs_resync: row.get("needs_resync"),
            seq_hw: row.get("seq_hw"),
            snapshot_seq: row.get("snapshot_seq"),
        })
    })
}

/// Waits until the Cloud Registry row of `mac` satisfies `wanted`.
fn wait_row(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    mac: &str,
    what: &str,
    sink: &mut Sink,
    wanted: impl Fn(&CloudRow) -> bool,
) -> CloudRow {
    wait_until(format!("Cloud Registry row of {mac}: {what}"), WAIT, || {
        sink.ensure_running()?;
        Ok(match cloud_row(runtime, url, mac) {
            Some(row) if wanted(&row) => Ok(row),
            other => Err(format!("row so far: {other:?}")),
        })
    })
    .unwrap_or_else(|e| panic!("{e}\nsink log:\n{}", sink.log_tail()))
}

/// `raectl show <mac> --json`.
fn show(spec: &AgentSpec, mac: &str) -> serde_json::Value {
    let (status, out, err) = raectl(spec, &["show", mac, "--json"]).expect("raectl runs");
    assert!(status.success(), "raectl show {mac}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("raectl show --json: {e}\n{out}"))
}

/// Waits for the device event of `session` with `seq` and returns it.
fn event_at(watch: &MqttWatch, session: SessionId, seq: u64) -> Event {
    watch
        .wait_for(
            format!("event seq {seq} of session {session}"),
            WAIT,
            |messages| {
                messages
                    .iter()
                    .filter_map(|m| m.event())
                    .find(|e| e.session == session && e.seq == seq)
                    .map(|e| e.event)
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A run that succeeded, with its correlation data checked.
fn done(run: CommandRun, what: &str) -> CommandRun {
    assert_eq!(run.code, 0, "{what}: exit status\n{run:?}");
    assert_eq!(run.json["outcome"], "ok", "{what}: {run:?}");
    let sent = run.json["correlation"].as_str().unwrap_or_default();
    assert_eq!(
        sent.len(),
        32,
        "{what}: 16 bytes of correlation data: {run:?}"
    );
    assert_eq!(
        run.json["reply_correlation"].as_str(),
        Some(sent),
        "{what}: the reply carries the request's correlation data"
    );
    run
}

fn seq_of(run: &CommandRun) -> u64 {
    run.reply("device")["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("a device reply with a seq: {run:?}"))
}

struct Bed {
    lab: Lab,
    broker: Mosquitto,
    _pg: Postgres,
    runtime: tokio::runtime::Runtime,
    url: String,
    spec: AgentSpec,
    agent: Agent,
    watch: MqttWatch,
}

fn bed(serial: &str, database: &str) -> Bed {
    let lab = Lab::start(LabConfig::default()).expect("lab");
    let broker = Mosquitto::start().expect("mosquitto");
    let pg = Postgres::start().expect("postgres");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let url = runtime
        .block_on(pg.create_database(database))
        .expect("database");
    let mut spec = AgentSpec::for_lab(
        serial,
        lab.bridge_name(),
        &lab.dir().join("agent"),
        broker.host(),
        broker.port(),
    );
    // No periodic Snapshot can close a gap during the test: only a resync can.
    spec.snapshot_interval_secs = 3600;
    let devices = format!("rae/v1/{serial}/devices/+");
    let watch = MqttWatch::start(
        broker.host(),
        broker.port(),
        &format!("{database}-watch"),
        &[&devices],
    )
    .expect("subscriber");
    let (agent, _) = Agent::start_online(
        &spec,
        &MqttWatch::start(
            broker.host(),
            broker.port(),
            &format!("{database}-status"),
            &[&format!("rae/v1/{serial}/status")],
        )
        .expect("status subscriber"),
        WAIT,
    )
    .expect("agent online");
    Bed {
        lab,
        broker,
        _pg: pg,
        runtime,
        url,
        spec,
        agent,
        watch,
    }
}

fn start_sink(bed: &Bed, name: &str, client_id: &str) -> Sink {
    let args: Vec<String> = [
        "mqtt",
        "--migrate",
        "--mqtt-port",
        &bed.broker.port().to_string(),
        "--mqtt-client-id",
        client_id,
        "--batch-max-wait-ms",
        "100",
        "--heal-backoff-ms",
        "2000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut sink = Sink::start_mode(
        name,
        bed.lab.dir(),
        &args,
        &[
            ("CLOUD_SINK_MQTT_HOST", bed.broker.host().to_string()),
            ("CLOUD_SINK_DATABASE_URL", bed.url.clone()),
        ],
    )
    .expect("cloud-sink mqtt");
    sink.wait_ready(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", sink.log_tail()));
    sink
}

fn add_dut(bed: &Bed, name: &str) -> Dut {
    bed.lab
        .add_dut(DutSpec::new(
            name,
            DutKind::Udhcpc {
                hostname: Some(name.to_owned()),
                vendor_class: None,
                client_id: None,
            },
        ))
        .unwrap_or_else(|e| panic!("adding DUT {name}: {e}"))
}

#[test]
fn every_command_round_trips_from_cloud_sink_command() {
    const SERIAL: &str = "CP-RAE-1";
    let mut bed = bed(SERIAL, "control_plane");
    let mut sink = start_sink(&bed, "sink", "cp-sink");
    let dut = add_dut(&bed, "cp-tv");
    let mac = dut.mac().to_string();
    let command = |args: &[&str]| {
        cloud_command(
            bed.broker.host(),
            bed.broker.port(),
            SERIAL,
            COMMAND_TIMEOUT_MS,
            args,
        )
        .expect("cloud-sink command runs")
    };
    let row = wait_row(
        &bed.runtime,
        &bed.url,
        &mac,
        "an open session",
        &mut sink,
        |r| r.closed_seq.is_none(),
    );
    let session = row.session;

    let ping = done(command(&["ping"]), "ping");
    assert!(
        ping.reply("pong")["sessions_open"].as_u64() >= Some(1),
        "ping: {ping:?}"
    );

    // set-availability: a Delta with the next seq, raectl, the cloud row.
    let run = done(
        command(&["set-availability", &mac, "maintenance"]),
        "set-availability",
    );
    let seq = seq_of(&run);
    assert_eq!(run.reply("device")["session"], session.to_string());
    match event_at(&bed.watch, session, seq) {
        Event::Delta { fields } => assert!(
            fields.contains(&Field::Availability(rae_proto::Availability::Maintenance)),
            "the Delta carries the availability: {fields:?}"
        ),
        other => panic!("set-availability made {other:?}"),
    }
    assert_eq!(
        show(&bed.spec, &mac)["record"]["availability"],
        "maintenance"
    );
    wait_row(
        &bed.runtime,
        &bed.url,
        &mac,
        "maintenance",
        &mut sink,
        |r| {
            r.availability.as_deref() == Some("maintenance")
                && r.availability_seq == Some(seq as i64)
        },
    );

    // set-esn, then --clear.
    let run = done(command(&["set-esn", &mac, "CP-ESN-0001"]), "set-esn");
    let seq = seq_of(&run);
    assert!(matches!(
        event_at(&bed.watch, session, seq),
        Event::Delta { .. }
    ));
    assert_eq!(show(&bed.spec, &mac)["record"]["esn"], "CP-ESN-0001");
    wait_row(&bed.runtime, &bed.url, &mac, "ESN set", &mut sink, |r| {
        r.esn.as_deref() == Some("CP-ESN-0001")
    });
    let run = done(command(&["set-esn", &mac, "--clear"]), "set-esn --clear");
    let seq = seq_of(&run);
    assert!(matches!(
        event_at(&bed.watch, session, seq),
        Event::Delta { .. }
    ));
    assert!(show(&bed.spec, &mac)["record"]["esn"].is_null());
    wait_row(
        &bed.runtime,
        &bed.url,
        &mac,
        "ESN cleared",
        &mut sink,
        |r| r.esn.is_none() && r.seq_hw >= seq as i64,
    );

    // resync of one device: a Snapshot with the seq the reply names.
    let run = done(command(&["resync", &mac]), "resync");
    let sessions = run
        .reply("sessions")
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(sessions.len(), 1, "one session resynced: {run:?}");
    let seq = sessions[0]["seq"].as_u64().expect("a seq");
    assert!(matches!(
        event_at(&bed.watch, session, seq),
        Event::Snapshot { .. }
    ));

    let run = done(command(&["inventory"]), "inventory");
    let listed = run.reply("inventory")["sessions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        listed.iter().any(|s| s["session"] == session.to_string()),
        "the inventory lists the DUT's session: {run:?}"
    );

    // Refused: an unknown device. Timeout: a serial nobody serves.
    let refused = command(&["set-availability", "02:00:00:00:00:99", "available"]);
    assert_eq!(refused.code, 1, "a refused command exits 1: {refused:?}");
    assert_eq!(refused.json["reply"]["error"]["kind"], "unknown_device");
    let timeout = cloud_command(
        bed.broker.host(),
        bed.broker.port(),
        "CP-NOBODY",
        500,
        &["ping"],
    )
    .expect("cloud-sink command runs");
    assert_eq!(timeout.code, 3, "a timeout exits 3: {timeout:?}");
    assert_eq!(timeout.json["outcome"], "timeout");

    // forget: a Closed event, the cloud row closed as forgotten.
    let run = done(command(&["forget", &mac]), "forget");
    let seq = seq_of(&run);
    assert!(matches!(
        event_at(&bed.watch, session, seq),
        Event::Closed { .. }
    ));
    wait_row(
        &bed.runtime,
        &bed.url,
        &mac,
        "closed as forgotten",
        &mut sink,
        |r| {
            r.session == session
                && r.closed_seq == Some(seq as i64)
                && r.close_reason.as_deref() == Some("forgotten")
        },
    );
    bed.agent.ensure_running().expect("the agent still runs");
}

#[test]
fn a_gap_is_healed_by_a_resync_the_sink_asks_for() {
    const SERIAL: &str = "CP-RAE-2";
    let mut bed = bed(SERIAL, "control_plane_gap");
    let mut sink = start_sink(&bed, "sink-a", "gap-sink-a");
    let dut = add_dut(&bed, "gap-tv");
    let mac = dut.mac().to_string();
    let command = |args: &[&str]| {
        cloud_command(
            bed.broker.host(),
            bed.broker.port(),
            SERIAL,
            COMMAND_TIMEOUT_MS,
            args,
        )
        .expect("cloud-sink command runs")
    };
    let row = wait_row(
        &bed.runtime,
        &bed.url,
        &mac,
        "an open session",
        &mut sink,
        |r| r.closed_seq.is_none() && !r.needs_resync,
    );
    let session = row.session;
    let (status, _) = sink.terminate(Duration::from_secs(20)).expect("SIGTERM");
    assert!(status.success(), "sink A stopped cleanly: {status}");

    // While no sink session exists for it, the agent publishes one event of the session.
    let missed = seq_of(&done(
        command(&["set-availability", &mac, "maintenance"]),
        "set-availability while the sink is away",
    ));
    event_at(&bed.watch, session, missed);

    // A sink under a new client id: the broker kept nothing for it, so `missed` never
    // reaches it. The next event (or an inventory listing `missed`) makes a gap.
    let mut sink = start_sink(&bed, "sink-b", "gap-sink-b");
    let next = seq_of(&done(
        command(&["set-availability", &mac, "in-test"]),
        "set-availability after the sink is back",
    ));
    assert!(next > missed);
    // The heal: a Snapshot after the missed event, which only a resync makes (the periodic
    // one is an hour away). It may come before `next` when an inventory listing `missed`
    // showed the gap first.
    let healed = wait_row(&bed.runtime, &bed.url, &mac, "gap healed", &mut sink, |r| {
        r.snapshot_seq > missed as i64 && r.seq_hw >= next as i64 && !r.needs_resync
    });
    assert_eq!(healed.availability.as_deref(), Some("in_test"));
    let snapshot = bed
        .watch
        .wait_for("a Snapshot after the gap", WAIT, |messages| {
            messages
                .iter()
                .filter_map(|m| m.event())
                .find(|e| {
                    e.session == session
                        && e.seq > missed
                        && matches!(e.event, Event::Snapshot { .. })
                })
                .map(|e| e.seq)
        })
        .expect("the resync's Snapshot at the subscriber");
    assert!(snapshot as i64 <= healed.snapshot_seq);
    let metrics = sink.metrics().expect("/metrics");
    assert!(
        sum(&metrics, "cloud_sink_heal_gaps_reported_total") >= 1.0,
        "the writer reported the gap: {metrics:?}"
    );
    assert!(
        sum(&metrics, "cloud_sink_heal_resync_requests_sent_total") >= 1.0,
        "the sink sent a resync request: {metrics:?}"
    );
    assert!(
        metrics
            .get("cloud_sink_heal_replies_total{outcome=\"ok\"}")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "the RAE answered the resync: {metrics:?}"
    );
    wait_until("the healer saw the gap close", WAIT, || {
        let m = sink
            .metrics()
            .map_err(|e| rae_tests::netlab::LabError::Timeout {
                what: "/metrics".into(),
                waited: Duration::ZERO,
                last: e.to_string(),
            })?;
        Ok(
            if sum(&m, "cloud_sink_heal_gaps_closed_total") >= 1.0
                && sum(&m, "cloud_sink_heal_tracked_sessions") == 0.0
            {
                Ok(())
            } else {
                Err(format!("{m:?}"))
            },
        )
    })
    .unwrap_or_else(|e| panic!("{e}\nsink log:\n{}", sink.log_tail()));
    bed.agent.ensure_running().expect("the agent still runs");
}
