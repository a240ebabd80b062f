//! deploy/monitoring against the real thing: promtool accepts the alert rules and their unit
//! tests; a real Prometheus (Debian's, on a loopback port) scrapes a running `cloud-sink mqtt`
//! and a running `cloud-sink kafka` and holds the series the test moved, loads the rules and
//! fires the dead-letter alert; and every metric name the dashboard and the rules use is one
//! a running sink exposes (each name is scraped from the MQTT or the Kafka sink), so a
//! renamed metric fails here.

mod sink_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rae_tests::services::{promtool, Kafka, Mosquitto, Postgres, Prometheus, ScrapeJob};
use rae_tests::sink::{KafkaSinkSpec, Sink};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sink_support::{device_events, publish, serials, wait_until, Message};

const WAIT: Duration = Duration::from_secs(60);
/// The scrape job name the rules expect (deploy/monitoring/README.md).
const JOB: &str = "cloud-sink";
const RULES: &str = "cloud-sink-alerts.yml";
const RULE_TESTS: &str = "cloud-sink-alerts.test.yml";
const DASHBOARD: &str = "cloud-sink-dashboard.json";

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

/// Metric names in a PromQL expression: identifiers starting with `cloud_sink_`, plus `up`
/// when the expression selects it.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut rest = expr;
    while let Some(start) = rest.find(|c: char| ident(c)) {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        let word = &tail[..end];
        // `up` only as a selector (followed by `{` or the end), not inside a label value.
        let before = rest[..start].chars().last();
        if word.starts_with("cloud_sink_")
            || (word == "up" && before != Some('"') && tail[end..].starts_with('{'))
        {
            into.insert(word.to_owned());
        }
        rest = &tail[end..];
    }
}

/// Every PromQL expression of the dashboard: panel targets and template variable queries.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let panels = dashboard["panels"].as_array().expect("dashboard panels");
    for panel in panels {
        if let Some(targets) = panel["targets"].as_array() {
            for t in targets {
                out.push(t["expr"].as_str().expect("target expr").to_owned());
            }
        }
    }
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    for v in vars {
        out.push(v["definition"].as_str().expect("variable query").to_owned());
    }
    out
}

fn read_dashboard() -> serde_json::Value {
    let path = monitoring_dir().join(DASHBOARD);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Series only a Kafka-mode sink exposes.
fn kafka_only(name: &str) -> bool {
    name.starts_with("cloud_sink_kafka_") || name == "cloud_sink_in_flight_records"
}

/// Series only an MQTT-mode sink exposes.
fn mqtt_only(name: &str) -> bool {
    name.starts_with("cloud_sink_mqtt_") || name == "cloud_sink_in_flight"
}

/// Starts Prometheus scraping `sink` every second with the alert rules loaded.
fn prometheus_for(sink: &Sink) -> Prometheus {
    let rules = monitoring_dir().join(RULES);
    Prometheus::start(
        &[ScrapeJob {
            name: JOB.into(),
            targets: vec![sink.metrics_addr()],
        }],
        Duration::from_secs(1),
        &[&rules],
    )
    .expect("prometheus")
}

/// The value of a query that yields one sample.
fn value(prom: &Prometheus, promql: &str) -> Result<f64, String> {
    let samples = prom.query(promql)?;
    match samples.as_slice() {
        [(_, v)] => Ok(*v),
        other => Err(format!("{promql}: {} samples: {other:?}", other.len())),
    }
}

/// Waits for a scrape of the idle sink: its counters' first samples are zero, so the
/// increases after it are what the test did.
async fn wait_idle_scrape(prom: &Prometheus) {
    wait_until("Prometheus scraped the idle sink", WAIT, || async {
        let up = value(prom, &format!("up{{job=\"{JOB}\"}}"))?;
        let applied = value(prom, "cloud_sink_records_applied_total")?;
        let dead = value(prom, "cloud_sink_dead_letters_total")?;
        if (up, applied, dead) == (1.0, 0.0, 0.0) {
            Ok(())
        } else {
            Err(format!("up {up}, applied {applied}, dead letters {dead}"))
        }
    })
    .await;
}

/// Waits until every loaded rule evaluates without error and the dead-letter alert fires;
/// checks it is the only one firing; returns each rule's name and query as Prometheus
/// parsed them.
async fn wait_dead_letter_alert(prom: &Prometheus) -> Vec<(String, String)> {
    let loaded = wait_until("the dead-letter alert fires", WAIT, || async {
        let data = prom.api("rules", &[])?;
        let mut loaded = Vec::new();
        let mut firing = false;
        let groups = data["groups"].as_array().ok_or("no rule groups")?;
        for g in groups {
            for r in g["rules"].as_array().ok_or("no rules")? {
                let name = r["name"].as_str().unwrap_or_default().to_owned();
                if r["health"] != "ok" && r["health"] != "unknown" {
                    return Err(format!("rule {name}: {} {}", r["health"], r["lastError"]));
                }
                if name == "CloudSinkDeadLetters" && r["state"] == "firing" {
                    firing = true;
                }
                loaded.push((name, r["query"].as_str().unwrap_or_default().to_owned()));
            }
        }
        if firing {
            Ok(loaded)
        } else {
            Err(format!(
                "{} rules loaded, CloudSinkDeadLetters not firing",
                loaded.len()
            ))
        }
    })
    .await;
    assert_eq!(loaded.len(), 11, "every rule of {RULES} loaded: {loaded:?}");
    let alerts = prom.api("alerts", &[]).expect("alerts");
    let firing: Vec<&str> = alerts["alerts"]
        .as_array()
        .expect("alerts list")
        .iter()
        .filter(|a| a["state"] == "firing")
        .filter_map(|a| a["labels"]["alertname"].as_str())
        .collect();
    assert_eq!(
        firing,
        ["CloudSinkDeadLetters"],
        "only the dead-letter alert fires"
    );
    loaded
}

/// Every metric name the rules (as Prometheus parsed them) and the dashboard use is in
/// Prometheus's scraped data, but the names only the other mode has (`elsewhere`).
fn assert_names_scraped(
    prom: &Prometheus,
    rules: &[(String, String)],
    elsewhere: fn(&str) -> bool,
) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (_, query) in rules {
        metric_names(query, &mut used);
    }
    for name in [
        "up",
        "cloud_sink_dead_letters_total",
        "cloud_sink_kafka_partition_lag",
        "cloud_sink_kafka_partition_committed_offset",
    ] {
        assert!(used.contains(name), "the rules use {name}: {used:?}");
    }
    for e in dashboard_exprs(&read_dashboard()) {
        metric_names(&e, &mut used);
    }
    let scraped: BTreeSet<String> = prom
        .api("label/__name__/values", &[])
        .expect("metric names")
        .as_array()
        .expect("name list")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| !scraped.contains(*n) && !elsewhere(n))
        .collect();
    assert!(
        missing.is_empty(),
        "names the dashboard or the rules use that the running sink does not expose: \
         {missing:?}\nscraped: {scraped:?}"
    );
    used
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let dir = monitoring_dir();
    promtool(&dir, &["check", "rules", RULES]).unwrap_or_else(|e| panic!("{e}"));
    promtool(&dir, &["test", "rules", RULE_TESTS]).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_dashboard_is_an_importable_grafana_dashboard() {
    let d = read_dashboard();
    assert_eq!(d["uid"], "rae-cloud-sink");
    assert!(d["title"].is_string() && d["schemaVersion"].is_u64());
    // Import asks for the Prometheus data source every panel names.
    assert_eq!(d["__inputs"][0]["name"], "DS_PROMETHEUS");
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let pos = &p["gridPos"];
        let (x, w) = (pos["x"].as_u64().unwrap(), pos["w"].as_u64().unwrap());
        assert!(x + w <= 24, "panel {id} is wider than the grid: {pos}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {id}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id} shows nothing");
    }
    let mut names = BTreeSet::new();
    for e in dashboard_exprs(&d) {
        metric_names(&e, &mut names);
    }
    assert!(names.len() >= 20, "the dashboard uses only {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_running_mqtt_sink_and_sees_every_metric_the_dashboard_and_rules_use()
{
    let broker = Mosquitto::start().expect("mosquitto");
    let pg = Postgres::start().expect("postgres");
    let url = pg
        .create_database("sink_monitoring")
        .await
        .expect("database");
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = [
        "mqtt",
        "--migrate",
        "--mqtt-port",
        &broker.port().to_string(),
        "--mqtt-client-id",
        "monitoring-sink",
        "--batch-max-wait-ms",
        "100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut sink = Sink::start_mode(
        "sink-monitoring",
        dir.path(),
        &args,
        &[
            ("CLOUD_SINK_MQTT_HOST", broker.host().to_owned()),
            ("CLOUD_SINK_DATABASE_URL", url.clone()),
        ],
    )
    .expect("cloud-sink mqtt");
    sink.wait_ready(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", sink.log_tail()));

    let prom = prometheus_for(&sink);
    wait_idle_scrape(&prom).await;

    let mut messages = device_events(0x4d, &serials(&["MON-RAE-1", "MON-RAE-2"]), 6, 4);
    let applied_expected = messages.len() as f64;
    // One message the sink cannot decode, on a device-event topic: a dead letter.
    messages.push(Message {
        topic: messages[0].topic.clone(),
        payload: b"not a protobuf envelope".to_vec(),
    });
    publish(
        broker.host(),
        broker.port(),
        "monitoring-publisher",
        &messages,
    )
    .await;

    wait_until(
        "Prometheus holds the series the test moved",
        WAIT,
        || async {
            let applied = value(&prom, "cloud_sink_records_applied_total")?;
            let dead = value(&prom, "cloud_sink_dead_letters_total")?;
            let received = value(&prom, "cloud_sink_mqtt_messages_received_total")?;
            let acked = value(&prom, "cloud_sink_mqtt_acks_sent_total")?;
            let up = value(&prom, &format!("up{{job=\"{JOB}\"}}"))?;
            let db = value(&prom, "cloud_sink_database_up")?;
            let want = (applied_expected, 1.0, 1.0, 1.0);
            if (applied, dead, up, db) == want && received >= messages.len() as f64 && acked >= 1.0
            {
                Ok(())
            } else {
                Err(format!(
                    "applied {applied}, dead letters {dead}, up {up}, database_up {db}, \
                 received {received}, acks {acked}; want applied {applied_expected}, 1 dead letter"
                ))
            }
        },
    )
    .await;

    let rules = wait_dead_letter_alert(&prom).await;
    let used = assert_names_scraped(&prom, &rules, kafka_only);
    for n in [
        "cloud_sink_records_applied_total",
        "cloud_sink_heal_tracked_sessions",
        "cloud_sink_batch_write_seconds_bucket",
        "cloud_sink_in_flight",
        "cloud_sink_mqtt_acks_sent_total",
    ] {
        assert!(used.contains(n), "the dashboard or the rules use {n}");
    }

    let (exit, _) = sink.terminate(Duration::from_secs(20)).expect("SIGTERM");
    assert!(exit.success(), "cloud-sink exit status {exit}");
    drop(prom);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_running_kafka_sink_and_sees_every_kafka_series_the_dashboard_and_rules_use(
) {
    const TOPIC: &str = "rae-events";
    const PARTITIONS: i32 = 2;
    let kafka = Kafka::start().expect("kafka");
    kafka.create_topic(TOPIC, PARTITIONS).await.expect("topic");
    let pg = Postgres::start().expect("postgres");
    let url = pg
        .create_database("sink_monitoring_kafka")
        .await
        .expect("database");
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = [
        "--batch-max-wait-ms=100",
        "--commit-interval-ms=200",
        "--statistics-interval-ms=500",
        "--librdkafka=session.timeout.ms=6000",
        "--librdkafka=heartbeat.interval.ms=500",
    ];
    let mut sink = Sink::start_kafka(&KafkaSinkSpec {
        name: "sink-monitoring-kafka".into(),
        dir: dir.path().to_path_buf(),
        brokers: kafka.bootstrap_servers(),
        topic: TOPIC.into(),
        group: "monitoring".into(),
        database_url: url,
        shutdown_deadline_secs: 10,
        extra: flags.iter().map(|s| s.to_string()).collect(),
    })
    .expect("cloud-sink kafka");
    sink.wait_ready(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", sink.log_tail()));
    let prom = prometheus_for(&sink);
    wait_idle_scrape(&prom).await;

    // Records keyed by their MQTT topic, as the bridge produces them, and one the sink
    // cannot decode.
    let mut messages = device_events(0x4b, &serials(&["MON-KRAE-1", "MON-KRAE-2"]), 6, 4);
    let applied_expected = messages.len() as f64;
    messages.push(Message {
        topic: messages[0].topic.clone(),
        payload: b"not a protobuf envelope".to_vec(),
    });
    let producer: FutureProducer = kafka
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let mut deliveries = Vec::new();
    for m in &messages {
        let record = FutureRecord::to(TOPIC).key(&m.topic).payload(&m.payload);
        let delivery = producer
            .send_result(record)
            .unwrap_or_else(|(e, _)| panic!("record for {} not enqueued: {e}", m.topic));
        deliveries.push(delivery);
    }
    for delivery in deliveries {
        tokio::time::timeout(WAIT, delivery)
            .await
            .expect("record not acknowledged in time")
            .expect("producer dropped the delivery")
            .unwrap_or_else(|(e, _)| panic!("record refused: {e}"));
    }

    wait_until(
        "Prometheus holds the Kafka series the test moved",
        WAIT,
        || async {
            let applied = value(&prom, "cloud_sink_records_applied_total")?;
            let dead = value(&prom, "cloud_sink_dead_letters_total")?;
            let received = value(&prom, "cloud_sink_kafka_records_received_total")?;
            let committed = prom.query("sum(cloud_sink_kafka_partition_committed_offset)")?;
            let committed = committed.first().map_or(0.0, |(_, v)| *v);
            let lag = prom.query("cloud_sink_kafka_partition_lag")?;
            let assigned = value(&prom, "cloud_sink_kafka_assigned_partitions")?;
            let all = messages.len() as f64;
            if (applied, dead, committed) == (applied_expected, 1.0, all)
                && received >= all
                && lag.len() == PARTITIONS as usize
                && assigned == f64::from(PARTITIONS)
            {
                Ok(())
            } else {
                Err(format!(
                    "applied {applied}, dead letters {dead}, received {received}, \
                 committed offsets sum {committed} (want {all}), lag series {}, \
                 assigned {assigned}",
                    lag.len()
                ))
            }
        },
    )
    .await;

    let rules = wait_dead_letter_alert(&prom).await;
    let used = assert_names_scraped(&prom, &rules, mqtt_only);
    for n in [
        "cloud_sink_kafka_partition_lag",
        "cloud_sink_kafka_partition_committed_offset",
        "cloud_sink_kafka_stalls_total",
        "cloud_sink_in_flight_records",
    ] {
        assert!(used.contains(n), "the dashboard or the rules use {n}");
    }

    let (exit, _) = sink.terminate(Duration::from_secs(20)).expect("SIGTERM");
    assert!(exit.success(), "cloud-sink exit status {exit}");
    drop(prom);
}
