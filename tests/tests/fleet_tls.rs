//! The fleet broker as shipped in `deploy/mosquitto/` (TLS listener, `require_certificate`,
//! `use_identity_as_username`, the per-RAE ACL), with certificates the test makes
//! (`rae_tests::certs`), the real `rae-agent` and `cloud-sink` binaries and the virtual lab:
//!
//! - an agent over TLS publishes its DUT's events (a valid stream) and its status;
//! - an agent holding RAE-A's certificate but configured as RAE-B is refused by the broker,
//!   keeps its rows and says so in `raectl status`, while RAE-B's own agent publishes;
//! - RAE-A never receives RAE-B's commands (whatever its SUBACK said), nor sends one, while the cloud's
//!   command to RAE-B reaches RAE-B;
//! - a client without a certificate, or with one of another CA, cannot connect;
//! - `cloud-sink mqtt` over TLS as the cloud identity dead-letters a payload whose serial is
//!   not its topic's;
//! - an agent that trusts the wrong CA logs one clear line per attempt, backs off, and keeps
//!   its outbox.
//!
//! Needs root, iproute2, dnsmasq, mosquitto and PostgreSQL; and the workspace built.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloud_sink::mqtt_connect::{connect_options, MqttTls};
use cloud_sink::source::mqtt::MqttBrokerConfig;
use rae_proto::{CloseReason, Envelope, Event, Serial, SessionId};
use rae_tests::agent::{raectl, workspace_binary, Agent, AgentSpec};
use rae_tests::certs::{FleetPki, Identity, CLOUD_IDENTITY};
use rae_tests::mqtt_watch::MqttWatch;
use rae_tests::netlab::{wait_until, Dut, DutKind, DutSpec, Lab, LabConfig};
use rae_tests::services::mosquitto::FleetTls;
use rae_tests::services::{Mosquitto, Postgres};
use rae_tests::sink::Sink;
use rae_tests::stream_check::Stream;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, EventLoop, MqttOptions};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const RAE_A: &str = "RAE-A";
const RAE_B: &str = "RAE-B";
/// What the cloud reads (deploy/mosquitto/rae-fleet.acl grants these, not `#`).
const CLOUD_FILTERS: [&str; 3] = [
    "rae/v1/+/devices/#",
    "rae/v1/+/status",
    "rae/v1/+/inventory",
];

/// The PKI and the fleet broker that trusts it.
fn fleet() -> (FleetPki, Mosquitto) {
    let pki = FleetPki::generate(&[]).unwrap_or_else(|e| panic!("making certificates: {e}"));
    let broker = pki.broker();
    let mosquitto = Mosquitto::start_fleet(&FleetTls {
        ca_file: pki.ca_file(),
        cert_file: broker.cert,
        key_file: broker.key,
    })
    .unwrap_or_else(|e| panic!("starting the fleet broker: {e}"));
    (pki, mosquitto)
}

/// Client options for `broker` trusting `ca`, with `identity` as the client certificate.
fn client_options(
    broker: &Mosquitto,
    client_id: &str,
    ca: &Path,
    identity: Option<&Identity>,
) -> MqttOptions {
    let config = MqttBrokerConfig {
        host: broker.host().to_owned(),
        port: broker.port(),
        client_id: client_id.to_owned(),
        keep_alive_secs: 5,
        tls: Some(MqttTls {
            ca_file: ca.to_path_buf(),
            cert_file: identity.map(|i| i.cert.clone()),
            key_file: identity.map(|i| i.key.clone()),
            server_name: None,
        }),
        ..MqttBrokerConfig::default()
    };
    connect_options(&config).unwrap_or_else(|e| panic!("client options: {e}"))
}

fn cloud_watch(pki: &FleetPki, broker: &Mosquitto) -> MqttWatch {
    let cloud = pki.client(CLOUD_IDENTITY).expect("cloud certificate");
    let options = client_options(broker, "cloud-watch", &pki.ca_file(), Some(&cloud));
    MqttWatch::start_with_options(options, &CLOUD_FILTERS)
        .unwrap_or_else(|e| panic!("the cloud's subscription: {e}"))
}

/// `[mqtt.tls]` lines for an agent trusting `ca` with `identity`.
fn tls_table(ca: &Path, identity: &Identity) -> String {
    format!(
        "[mqtt.tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        ca, identity.cert, identity.key
    )
}

fn agent_spec(lab: &Lab, broker: &Mosquitto, name: &str, serial: &str) -> AgentSpec {
    AgentSpec::for_lab(
        serial,
        lab.bridge_name(),
        &lab.dir().join(name),
        broker.host(),
        broker.port(),
    )
}

/// A DUT with a static address that talks (one ping), so that every agent on the bridge sees it.
fn talking_dut(lab: &Lab, name: &str, host: u8) -> Dut {
    let dut = lab
        .add_dut(DutSpec::new(
            name,
            DutKind::StaticV4 {
                addr: lab.net().host_v4(host),
            },
        ))
        .unwrap_or_else(|e| panic!("adding the DUT: {e}"));
    let _ = dut.ping(IpAddr::V4(lab.router_v4()));
    dut
}

fn status(spec: &AgentSpec) -> Result<Value, String> {
    let (code, out, err) = raectl(spec, &["status", "--json"]).map_err(|e| e.to_string())?;
    if !code.success() {
        return Err(format!("raectl status: {code}: {err}"));
    }
    serde_json::from_str(&out).map_err(|e| format!("raectl status --json: {e}: {out}"))
}

fn counter(json: &Value, section: &str, name: &str) -> u64 {
    let value = &json["status"][section][name];
    value
        .as_u64()
        .or_else(|| value.as_str()?.parse().ok())
        .unwrap_or(0)
}

fn entry<'a>(json: &'a Value, section: &str, name: &str) -> &'a str {
    json["status"][section][name].as_str().unwrap_or_default()
}

fn outbox_rows(json: &Value) -> u64 {
    json["outbox"]["rows"].as_u64().unwrap_or(0)
}

fn wait_status(agent: &Agent, what: &str, probe: impl Fn(&Value) -> bool) -> Value {
    wait_until(what, WAIT, || {
        let json = match status(agent.spec()) {
            Ok(json) => json,
            Err(e) => return Ok(Err(e)),
        };
        if probe(&json) {
            Ok(Ok(json))
        } else {
            Ok(Err(format!(
                "broker {} publish {} outbox {}",
                json["status"]["broker"], json["status"]["publish"], json["outbox"]
            )))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()))
}

fn snapshot_of(watch: &MqttWatch, serial: &str, dut: &Dut) -> Option<SessionId> {
    let mac = dut.mac().to_string().to_lowercase();
    watch.events().into_iter().find_map(|e| match &e.event {
        Event::Snapshot { record }
            if e.serial.as_str() == serial && record.mac.to_string().to_lowercase() == mac =>
        {
            Some(e.session)
        }
        _ => None,
    })
}

#[test]
fn an_agent_over_tls_publishes_its_duts_events_and_status() {
    let (pki, broker) = fleet();
    let watch = cloud_watch(&pki, &broker);
    let lab = Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("the lab: {e}"));
    let mut spec = agent_spec(&lab, &broker, "agent-a", RAE_A);
    // The serial the config gives agrees with the certificate's CN, which is checked.
    spec.agent_extra = "serial_from_certificate = true".into();
    spec.mqtt_extra = tls_table(&pki.ca_file(), &pki.client(RAE_A).expect("RAE-A cert"));
    let (mut agent, _) = Agent::start_online(&spec, &watch, WAIT)
        .unwrap_or_else(|e| panic!("rae-agent over TLS: {e}"));
    let dut = talking_dut(&lab, "tls-tv", 20);
    watch
        .wait_for("the DUT's Snapshot from RAE-A over TLS", WAIT, |_| {
            snapshot_of(&watch, RAE_A, &dut)
        })
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    let json = wait_status(&agent, "the outbox drained over TLS", |json| {
        outbox_rows(json) == 0 && counter(json, "publish", "acked") > 0
    });
    assert_eq!(entry(&json, "broker", "connected"), "yes");
    let stream = Stream::check(&watch.messages())
        .unwrap_or_else(|problems| panic!("the stream over TLS is not valid: {problems}"));
    assert!(!stream.sessions.is_empty());
    let rss = rae_tests::procstat::memory(agent.pid()).expect("agent memory");
    println!("agent RSS connected over TLS: {} KiB", rss.rss_kib);
    agent.ensure_running().expect("agent running");
    let exit = agent.terminate(Duration::from_secs(15)).expect("SIGTERM");
    assert!(exit.success(), "exit status {exit}");
}

#[test]
fn an_agent_with_another_raes_certificate_is_refused_and_keeps_its_rows() {
    let (pki, broker) = fleet();
    let watch = cloud_watch(&pki, &broker);
    let lab = Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("the lab: {e}"));
    let cert_a = pki.client(RAE_A).expect("RAE-A cert");
    let cert_b = pki.client(RAE_B).expect("RAE-B cert");

    // RAE-B's own agent: publishes.
    let mut spec_b = agent_spec(&lab, &broker, "agent-b", RAE_B);
    spec_b.mqtt_extra = tls_table(&pki.ca_file(), &cert_b);
    let (mut agent_b, _) =
        Agent::start_online(&spec_b, &watch, WAIT).unwrap_or_else(|e| panic!("RAE-B's agent: {e}"));

    // A's certificate, B's serial (and a client id of its own, or the two would take turns).
    let mut imposter = agent_spec(&lab, &broker, "imposter", RAE_B);
    imposter.mqtt_extra = format!(
        "client_id = \"RAE-B-imposter\"\n{}",
        tls_table(&pki.ca_file(), &cert_a)
    );
    let mut imposter = Agent::start(&imposter).unwrap_or_else(|e| panic!("imposter: {e}"));

    let dut = talking_dut(&lab, "acl-tv", 21);
    watch
        .wait_for("the DUT's Snapshot from RAE-B's own agent", WAIT, |_| {
            snapshot_of(&watch, RAE_B, &dut)
        })
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent_b.log_tail()));
    let json = wait_status(
        &imposter,
        "the imposter's publishes refused (publish.refused > 0) and its rows in the outbox",
        |json| counter(json, "publish", "refused") > 0 && outbox_rows(json) > 0,
    );
    assert_eq!(
        counter(&json, "publish", "acked"),
        0,
        "nothing of the imposter's was accepted"
    );
    let log = imposter.log();
    assert!(
        log.contains("0x87 NotAuthorized"),
        "the imposter logs the broker's reason:\n{log}"
    );
    // Only RAE-B's own agent's events reached the cloud: each session once, from one agent.
    let stream = Stream::check(&watch.messages())
        .unwrap_or_else(|problems| panic!("the cloud's stream is not valid: {problems}"));
    assert_eq!(
        stream.sessions.len(),
        1,
        "one session (RAE-B's agent's), none from the imposter"
    );
    let json_b = status(agent_b.spec()).expect("RAE-B status");
    assert_eq!(
        counter(&json_b, "publish", "refused"),
        0,
        "RAE-B is not refused"
    );
    imposter
        .ensure_running()
        .expect("the refused agent keeps running");
    agent_b.ensure_running().expect("RAE-B running");
}

/// A connection and its event loop, or why it failed (CONNACK refused, TLS, I/O).
async fn connect(options: MqttOptions) -> Result<(AsyncClient, EventLoop), String> {
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let connack = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => return Ok(ack),
                Ok(_) => {}
                Err(e) => return Err(format!("{e} ({e:?})")),
            }
        }
    })
    .await
    .map_err(|_| "no CONNACK within 10 s".to_string())??;
    if connack.code != rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success {
        return Err(format!("CONNACK {:?}", connack.code));
    }
    Ok((client, eventloop))
}

/// Subscribes and returns the SUBACK's codes.
async fn subscribe(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    filter: &str,
) -> Vec<SubscribeReasonCode> {
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    loop {
        match eventloop
            .poll()
            .await
            .expect("connection while subscribing")
        {
            MqttEvent::Incoming(Packet::SubAck(ack)) => return ack.return_codes,
            _ => continue,
        }
    }
}

/// Publishes at QoS 1 and returns the PUBACK's reason.
async fn publish(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    topic: &str,
    payload: Vec<u8>,
) -> PubAckReason {
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .expect("publish queued");
    loop {
        match eventloop.poll().await.expect("connection while publishing") {
            MqttEvent::Incoming(Packet::PubAck(ack)) => return ack.reason,
            _ => continue,
        }
    }
}

/// Polls `eventloop` in a task, recording the topics of the messages it receives.
fn record(mut eventloop: EventLoop) -> Arc<Mutex<Vec<String>>> {
    let topics = Arc::new(Mutex::new(Vec::new()));
    let sink = topics.clone();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let MqttEvent::Incoming(Packet::Publish(p)) = event {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(topic);
            }
        }
    });
    topics
}

async fn wait_for_topic(topics: &Arc<Mutex<Vec<String>>>, topic: &str, who: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = topics.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if seen.iter().any(|t| t == topic) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who} did not receive {topic} within {WAIT:?}; received {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rae_never_receives_another_raes_commands() {
    let (pki, broker) = fleet();
    let ca = pki.ca_file();
    let cert_a = pki.client(RAE_A).expect("cert");
    let cert_b = pki.client(RAE_B).expect("cert");
    let cloud = pki.client(CLOUD_IDENTITY).expect("cert");

    let (a, mut a_loop) = connect(client_options(&broker, "a-cmd", &ca, Some(&cert_a)))
        .await
        .expect("RAE-A connects");
    // mosquitto 2.0 grants these SUBACKs (a later one may refuse them); either way, it checks
    // every delivery against the ACL, which is what keeps B's commands from A.
    let direct = subscribe(&a, &mut a_loop, "rae/v1/RAE-B/cmd/#").await;
    let wide = subscribe(&a, &mut a_loop, "rae/v1/+/cmd/#").await;
    println!("RAE-A's SUBACKs for RAE-B's commands: {direct:?}, for every RAE's: {wide:?}");
    let own = subscribe(&a, &mut a_loop, "rae/v1/RAE-A/cmd/#").await;
    assert!(
        matches!(own.as_slice(), [SubscribeReasonCode::Success(_)]),
        "RAE-A may subscribe to its own commands: {own:?}"
    );
    // Nor can A send B a command.
    let forged = publish(&a, &mut a_loop, "rae/v1/RAE-B/cmd/forget", vec![1]).await;
    assert_eq!(
        forged,
        PubAckReason::NotAuthorized,
        "RAE-A sends RAE-B no command"
    );
    let a_topics = record(a_loop);

    let (b, mut b_loop) = connect(client_options(&broker, "b-cmd", &ca, Some(&cert_b)))
        .await
        .expect("RAE-B connects");
    let granted = subscribe(&b, &mut b_loop, "rae/v1/RAE-B/cmd/#").await;
    assert!(
        matches!(granted.as_slice(), [SubscribeReasonCode::Success(_)]),
        "RAE-B subscribes to its commands: {granted:?}"
    );
    let b_topics = record(b_loop);

    let (c, mut c_loop) = connect(client_options(&broker, "cloud-cmd", &ca, Some(&cloud)))
        .await
        .expect("the cloud connects");
    for topic in ["rae/v1/RAE-B/cmd/ping", "rae/v1/RAE-A/cmd/ping"] {
        let reason = publish(&c, &mut c_loop, topic, vec![0]).await;
        assert_eq!(
            reason,
            PubAckReason::Success,
            "the cloud may command ({topic})"
        );
    }
    wait_for_topic(&b_topics, "rae/v1/RAE-B/cmd/ping", "RAE-B").await;
    // A's own command, sent after B's, has arrived: B's would have come before it.
    wait_for_topic(&a_topics, "rae/v1/RAE-A/cmd/ping", "RAE-A").await;
    let seen_by_a = a_topics.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        !seen_by_a.iter().any(|t| t.contains("RAE-B")),
        "RAE-A received RAE-B's command (SUBACKs {direct:?} {wide:?}): {seen_by_a:?}"
    );
    let seen_by_b = b_topics.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        !seen_by_b.iter().any(|t| t.contains("forget")),
        "the forged command reached RAE-B: {seen_by_b:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_fleet_certificate_cannot_connect() {
    let (pki, broker) = fleet();
    let ca = pki.ca_file();
    let cases = [
        ("no client certificate", None),
        (
            "a certificate CN=RAE-A from another CA",
            Some(pki.foreign_client(RAE_A).expect("foreign cert")),
        ),
    ];
    for (what, identity) in cases {
        let options = client_options(&broker, "outsider", &ca, identity.as_ref());
        let result = connect(options).await;
        assert!(result.is_err(), "{what}: connected");
        println!("{what}: {}", result.err().unwrap_or_default());
    }
    // A client that trusts another CA does not accept the broker either.
    let a = pki.client(RAE_A).expect("cert");
    let result = connect(client_options(
        &broker,
        "wrong-ca",
        &pki.foreign_ca_file(),
        Some(&a),
    ))
    .await;
    let err = result
        .err()
        .expect("a client trusting another CA connected");
    assert!(err.contains("UnknownIssuer"), "{err}");
    // The fleet's own certificate connects, so the refusals above are the certificates'.
    connect(client_options(&broker, "insider", &ca, Some(&a)))
        .await
        .expect("RAE-A's certificate connects");
}

#[test]
fn a_serial_that_disagrees_with_the_certificate_stops_the_start() {
    let pki = FleetPki::generate(&[]).expect("certificates");
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("config.toml");
    let text = format!(
        "[agent]\nserial = \"RAE-B\"\nserial_from_certificate = true\nlan_interface = \"lan0\"\n\
         [mqtt]\nhost = \"127.0.0.1\"\n{}",
        tls_table(&pki.ca_file(), &pki.client(RAE_A).expect("cert"))
    );
    std::fs::write(&config, text).expect("config");
    let out = std::process::Command::new(workspace_binary("rae-agent").expect("binary"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .expect("rae-agent --check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("agent.serial")
            && stderr.contains("\"RAE-A\"")
            && stderr.contains("disagrees"),
        "{stderr}"
    );
}

#[test]
fn the_sink_over_tls_dead_letters_a_payload_whose_serial_is_not_its_topics() {
    let (pki, broker) = fleet();
    let pg = Postgres::start().expect("postgres");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let url = runtime
        .block_on(pg.create_database("fleet_tls"))
        .expect("database");
    let dir = tempfile::tempdir().expect("dir");
    let cloud = pki.client(CLOUD_IDENTITY).expect("cloud cert");
    let args: Vec<String> = [
        "mqtt",
        "--migrate",
        "--mqtt-port",
        &broker.port().to_string(),
        "--batch-max-wait-ms",
        "100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut sink = Sink::start_mode(
        "sink-tls",
        dir.path(),
        &args,
        &[
            ("CLOUD_SINK_MQTT_HOST", broker.host().to_string()),
            ("CLOUD_SINK_DATABASE_URL", url.clone()),
            (
                "CLOUD_SINK_MQTT_TLS_CA",
                pki.ca_file().display().to_string(),
            ),
            ("CLOUD_SINK_MQTT_TLS_CERT", cloud.cert.display().to_string()),
            ("CLOUD_SINK_MQTT_TLS_KEY", cloud.key.display().to_string()),
        ],
    )
    .expect("cloud-sink mqtt");
    sink.wait_ready(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", sink.log_tail()));

    // RAE-A may publish on its own topic; what it says inside is not trusted.
    let session = SessionId::from_uuid(uuid::Uuid::new_v4());
    let lie = Envelope {
        serial: Serial::new(RAE_B).expect("serial"),
        session,
        seq: 1,
        at_ms: 1_000,
        event: Event::Closed {
            reason: CloseReason::Gone,
        },
    };
    let topic = format!("rae/v1/{RAE_A}/devices/{session}");
    let a = pki.client(RAE_A).expect("cert");
    let reason = runtime.block_on(async {
        let (client, mut eventloop) =
            connect(client_options(&broker, "a-liar", &pki.ca_file(), Some(&a)))
                .await
                .expect("RAE-A connects");
        // The sink is ready once connected; its subscription may follow. Until then the
        // broker acks with 0x10 and drops the message, so it is sent again.
        let deadline = Instant::now() + WAIT;
        loop {
            let payload = lie.encode().expect("encode");
            let reason = publish(&client, &mut eventloop, &topic, payload).await;
            if reason != PubAckReason::NoMatchingSubscribers || Instant::now() > deadline {
                break reason;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(
        reason,
        PubAckReason::Success,
        "RAE-A's own topic is allowed"
    );

    let letters = runtime.block_on(async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("test connection to PostgreSQL");
        let deadline = Instant::now() + WAIT;
        loop {
            let rows: Vec<(Option<String>, String)> =
                sqlx::query_as("SELECT topic, reason FROM dead_letters")
                    .fetch_all(&pool)
                    .await
                    .expect("reading dead_letters");
            if !rows.is_empty() || Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(
        letters,
        vec![(
            Some(topic.clone()),
            format!("payload serial `{RAE_B}` differs from the topic's `{RAE_A}`")
        )],
        "one dead letter with the mismatch as its reason\nsink log:\n{}",
        sink.log_tail()
    );
    let metrics = sink.metrics().expect("/metrics");
    let dead = rae_tests::sink::sum(&metrics, "cloud_sink_dead_letters_total");
    assert!(dead >= 1.0, "the dead letter is counted: {dead}");
    let (exit, _) = sink.terminate(Duration::from_secs(20)).expect("SIGTERM");
    assert!(exit.success(), "cloud-sink exit status {exit}");
}

/// Seconds of the day of a tracing text log line (`2026-12-03T17:30:31.123456Z  WARN ...`).
fn log_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

#[test]
fn an_agent_that_trusts_the_wrong_ca_says_so_per_attempt_backs_off_and_keeps_its_outbox() {
    let (pki, broker) = fleet();
    let lab = Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("the lab: {e}"));
    let mut spec = agent_spec(&lab, &broker, "agent-wrong-ca", RAE_A);
    let foreign_ca = pki.foreign_ca_file();
    spec.mqtt_extra = tls_table(&foreign_ca, &pki.client(RAE_A).expect("cert"));
    let mut agent = Agent::start(&spec).unwrap_or_else(|e| panic!("rae-agent: {e}"));
    let _dut = talking_dut(&lab, "ca-tv", 22);

    let ca_text = foreign_ca.display().to_string();
    let failure_lines = |log: &str| -> Vec<f64> {
        log.lines()
            .filter(|l| {
                l.contains("failed verification against the CA file") && l.contains(&ca_text)
            })
            .filter_map(log_time)
            .collect()
    };
    let times = wait_until("four connection attempts, each logged", WAIT, || {
        let times = failure_lines(&agent.log());
        if times.len() >= 4 {
            Ok(Ok(times))
        } else {
            Ok(Err(format!("{} so far", times.len())))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Backoff from 1 s, doubling, drawn from the upper half of each ceiling: 1, 1-2, 2-4 s.
    assert!(
        gaps.iter().all(|g| *g >= 0.9),
        "one line per attempt, attempts at least the minimum backoff apart: {gaps:?}"
    );
    assert!(
        gaps[2] > gaps[0] * 1.5,
        "the interval between attempts grows: {gaps:?}"
    );
    let json = wait_status(&agent, "the DUT's events waiting in the outbox", |json| {
        outbox_rows(json) > 0
    });
    assert_eq!(entry(&json, "broker", "connected"), "no");
    let why = entry(&json, "broker", "last_error");
    assert!(
        why.contains("certificate") && why.contains(&ca_text),
        "raectl status says why: {why}"
    );
    assert_eq!(counter(&json, "publish", "acked"), 0);
    println!("raectl status broker.last_error: {why}");
    agent.ensure_running().expect("the agent keeps running");

    // The other way round: the agent trusts the broker, the broker not the agent's certificate.
    let mut foreign = agent_spec(&lab, &broker, "agent-foreign-cert", RAE_B);
    let foreign_cert = pki.foreign_client(RAE_B).expect("foreign cert");
    foreign.mqtt_extra = tls_table(&pki.ca_file(), &foreign_cert);
    let mut foreign = Agent::start(&foreign).unwrap_or_else(|e| panic!("rae-agent: {e}"));
    let cert_text = foreign_cert.cert.display().to_string();
    let json = wait_status(
        &foreign,
        "the broker's refusal of the client certificate in raectl status",
        |json| entry(json, "broker", "last_error").contains("refused the handshake"),
    );
    let why = entry(&json, "broker", "last_error");
    assert!(why.contains(&cert_text), "the certificate is named: {why}");
    println!("raectl status broker.last_error: {why}");
    foreign.ensure_running().expect("the agent keeps running");
}

/// The agent's memory connected over TLS against plain TCP, printed for BENCHMARKS.md:
/// `cargo test -p rae-tests --test fleet_tls -- --ignored --nocapture rss`.
#[test]
#[ignore = "a measurement, run by hand"]
fn rss_connected_over_tls_and_plain() {
    let (pki, tls_broker) = fleet();
    let plain_broker = Mosquitto::start().expect("plain mosquitto");
    let lab = Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("the lab: {e}"));
    let tls_watch = cloud_watch(&pki, &tls_broker);
    let plain_watch = MqttWatch::start(
        plain_broker.host(),
        plain_broker.port(),
        "plain-watch",
        &["rae/v1/#"],
    )
    .expect("plain watch");
    let mut tls_spec = agent_spec(&lab, &tls_broker, "rss-tls", RAE_A);
    tls_spec.mqtt_extra = tls_table(&pki.ca_file(), &pki.client(RAE_A).expect("cert"));
    let plain_spec = agent_spec(&lab, &plain_broker, "rss-plain", RAE_B);
    let (tls_agent, _) = Agent::start_online(&tls_spec, &tls_watch, WAIT).expect("TLS agent");
    let (plain_agent, _) =
        Agent::start_online(&plain_spec, &plain_watch, WAIT).expect("plain agent");
    let _dut = talking_dut(&lab, "rss-tv", 23);
    for (agent, what) in [(&tls_agent, "tls"), (&plain_agent, "plain")] {
        wait_status(agent, "the DUT published", |json| {
            counter(json, "publish", "acked") > 0 && outbox_rows(json) == 0
        });
        let m = rae_tests::procstat::memory(agent.pid()).expect("memory");
        println!(
            "agent RSS connected {what}: {} KiB (peak {} KiB)",
            m.rss_kib, m.hwm_kib
        );
    }
}
