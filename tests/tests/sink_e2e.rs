//! The whole system in the virtual lab: a DUT joins the lab LAN, the real `rae-agent` on the
//! bridge publishes it to mosquitto, and the real `cloud-sink` puts it into PostgreSQL, either
//! straight from MQTT (`cloud-sink mqtt`, one lab) or through Kafka (`cloud-sink bridge` then
//! `cloud-sink kafka`).
//!
//! Needs root, the lab's tools (iproute2, dnsmasq, busybox udhcpc), mosquitto, PostgreSQL 15,
//! the Kafka jars (`scripts/setup`), and the workspace built (`cargo build`).

use std::time::Duration;

use rae_tests::agent::{Agent, AgentSpec};
use rae_tests::netlab::{wait_until, DutKind, DutSpec, Lab, LabConfig};
use rae_tests::services::{Kafka, Mosquitto, Postgres};
use rae_tests::sink::Sink;
use sqlx::Row;

const WAIT: Duration = Duration::from_secs(90);
const SERIAL: &str = "E2E-RAE-1";

/// The row `device_sessions` holds for `mac`: (serial, hostname, ipv4), once it is there.
async fn session_row(url: &str, mac: &str) -> Option<(String, Option<Vec<u8>>, Option<String>)> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .ok()?;
    let row = sqlx::query(
        "SELECT serial, hostname, ipv4 FROM device_sessions WHERE mac = $1 AND closed_seq IS NULL",
    )
    .bind(mac)
    .fetch_optional(&pool)
    .await
    .ok()??;
    pool.close().await;
    Some((row.get("serial"), row.get("hostname"), row.get("ipv4")))
}

/// Plugs in a udhcpc DUT and waits until its session row has its hostname and address.
fn dut_reaches_the_database(
    lab: &Lab,
    url: &str,
    agent: &mut Agent,
    sinks: &mut [&mut Sink],
    name: &str,
) {
    let dut = lab
        .add_dut(DutSpec::new(
            name,
            DutKind::Udhcpc {
                hostname: Some(name.to_owned()),
                vendor_class: Some("e2e/1.0".into()),
                client_id: None,
            },
        ))
        .unwrap_or_else(|e| panic!("adding DUT: {e}"));
    let mac = dut.mac().to_string();
    let ip = dut
        .ipv4()
        .ok()
        .flatten()
        .expect("the DUT has a lease")
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    wait_until(
        format!("device_sessions row for {mac} with hostname and {ip}"),
        WAIT,
        || {
            agent.ensure_running()?;
            for sink in sinks.iter_mut() {
                sink.ensure_running()?;
            }
            let row = runtime.block_on(session_row(url, &mac));
            Ok(match row {
                Some((serial, Some(hostname), Some(ipv4)))
                    if serial == SERIAL && hostname == name.as_bytes() && ipv4.starts_with(&ip) =>
                {
                    Ok(())
                }
                other => Err(format!("row so far: {other:?}")),
            })
        },
    )
    .unwrap_or_else(|e| {
        let logs: Vec<String> = sinks.iter().map(|s| s.log_tail()).collect();
        panic!(
            "{e}\nagent log:\n{}\nsink logs:\n{}",
            agent.log_tail(),
            logs.join("\n---\n")
        )
    });
}

#[test]
fn a_dut_that_joins_reaches_the_database_through_the_mqtt_source() {
    let lab = Lab::start(LabConfig::default()).expect("lab");
    let broker = Mosquitto::start().expect("mosquitto");
    let pg = Postgres::start().expect("postgres");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let url = runtime
        .block_on(pg.create_database("e2e_mqtt"))
        .expect("database");
    let spec = AgentSpec::for_lab(
        SERIAL,
        lab.bridge_name(),
        &lab.dir().join("agent"),
        broker.host(),
        broker.port(),
    );
    let mut agent = Agent::start(&spec).expect("agent");
    let args: Vec<String> = [
        "mqtt",
        "--migrate",
        "--mqtt-port",
        &broker.port().to_string(),
        "--batch-max-wait-ms",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut sink = Sink::start_mode(
        "sink-mqtt",
        lab.dir(),
        &args,
        &[
            ("CLOUD_SINK_MQTT_HOST", broker.host().to_string()),
            ("CLOUD_SINK_DATABASE_URL", url.clone()),
        ],
    )
    .expect("cloud-sink mqtt");
    sink.wait_ready(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", sink.log_tail()));
    dut_reaches_the_database(&lab, &url, &mut agent, &mut [&mut sink], "e2e-mqtt-tv");
    let (status, took) = sink.terminate(Duration::from_secs(20)).expect("SIGTERM");
    assert!(
        status.success(),
        "cloud-sink mqtt exit status {status} after {took:?}"
    );
}

#[test]
fn a_dut_that_joins_reaches_the_database_through_the_bridge_and_kafka() {
    let lab = Lab::start(LabConfig::default()).expect("lab");
    let broker = Mosquitto::start().expect("mosquitto");
    let pg = Postgres::start().expect("postgres");
    let kafka = Kafka::start().expect("kafka");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let url = runtime
        .block_on(pg.create_database("e2e_bridge"))
        .expect("database");
    runtime
        .block_on(kafka.create_topic("rae-events", 3))
        .expect("topic");
    let spec = AgentSpec::for_lab(
        SERIAL,
        lab.bridge_name(),
        &lab.dir().join("agent"),
        broker.host(),
        broker.port(),
    );
    let mut agent = Agent::start(&spec).expect("agent");
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let mut bridge = Sink::start_mode(
        "bridge",
        lab.dir(),
        &strings(&[
            "bridge",
            "--mqtt-port",
            &broker.port().to_string(),
            "--topic",
            "rae-events",
        ]),
        &[
            ("CLOUD_SINK_MQTT_HOST", broker.host().to_string()),
            ("CLOUD_SINK_BROKERS", kafka.bootstrap_servers()),
        ],
    )
    .expect("cloud-sink bridge");
    let mut sink = Sink::start_mode(
        "sink-kafka",
        lab.dir(),
        &strings(&[
            "kafka",
            "--migrate",
            "--topic",
            "rae-events",
            "--group",
            "e2e",
            "--batch-max-wait-ms",
            "200",
        ]),
        &[
            ("CLOUD_SINK_BROKERS", kafka.bootstrap_servers()),
            ("CLOUD_SINK_DATABASE_URL", url.clone()),
        ],
    )
    .expect("cloud-sink kafka");
    bridge
        .wait_ready(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", bridge.log_tail()));
    sink.wait_ready(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", sink.log_tail()));
    dut_reaches_the_database(
        &lab,
        &url,
        &mut agent,
        &mut [&mut bridge, &mut sink],
        "e2e-bridge-tv",
    );
    for (what, s) in [("bridge", bridge), ("kafka sink", sink)] {
        let (status, took) = s.terminate(Duration::from_secs(20)).expect("SIGTERM");
        assert!(
            status.success(),
            "cloud-sink {what} exit status {status} after {took:?}"
        );
    }
}
