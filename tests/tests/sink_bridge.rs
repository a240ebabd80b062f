//! `cloud-sink bridge` against a real mosquitto and a real Kafka: every device event,
//! inventory and status an RAE publishes lands in the Kafka topic keyed by its MQTT topic,
//! payload unchanged and in per-topic order; a message is acknowledged to the broker only
//! after Kafka stored it, so stopping the bridge or Kafka loses nothing.

mod sink_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cloud_sink::bridge::{self, BridgeConfig, BridgeMetrics, BridgeMetricsSnapshot};
use cloud_sink::source::mqtt::MqttBrokerConfig;
use rae_proto::{AgentState, Serial, SessionId};
use rae_tests::services::{Kafka, Mosquitto};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message as _;
use sink_support::{device_events, publish, serials, wait_until, Message};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(45);
const TOPIC: &str = "rae-events";
const PARTITIONS: i32 = 3;

fn config(mosquitto: &Mosquitto, kafka: &Kafka) -> BridgeConfig {
    let mut c = BridgeConfig {
        broker: MqttBrokerConfig {
            host: mosquitto.host().into(),
            port: mosquitto.port(),
            client_id: "bridge-test".into(),
            reconnect_min_ms: 100,
            reconnect_max_ms: 1000,
            ..MqttBrokerConfig::default()
        },
        kafka_brokers: kafka.bootstrap_servers(),
        kafka_topic: TOPIC.into(),
        delivery_timeout_ms: 5000,
        retry_min_ms: 200,
        retry_max_ms: 1000,
        shutdown_deadline_ms: 10_000,
        ..BridgeConfig::default()
    };
    c.librdkafka.insert("linger.ms".into(), "5".into());
    c
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), bridge::BridgeError>>,
    metrics: Arc<BridgeMetrics>,
}

impl Running {
    async fn start(config: BridgeConfig) -> Running {
        let metrics = Arc::new(BridgeMetrics::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bridge::run(config, metrics.clone(), async move {
            let _ = stopped.await;
        }));
        let running = Running {
            stop: Some(stop),
            task,
            metrics,
        };
        let s = running
            .wait_metrics("the bridge subscribed", |s| s.subscribed > 0)
            .await;
        assert_eq!(s.subscriptions_refused, 0);
        running
    }

    async fn wait_metrics(
        &self,
        what: &str,
        ok: impl Fn(&BridgeMetricsSnapshot) -> bool,
    ) -> BridgeMetricsSnapshot {
        let m = self.metrics.clone();
        wait_until(what, WAIT, || {
            let s = m.snapshot();
            let done = ok(&s);
            async move {
                if done {
                    Ok(s)
                } else {
                    Err(format!("{s:?}"))
                }
            }
        })
        .await
    }

    async fn shutdown(mut self) -> BridgeMetricsSnapshot {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("bridge did not stop")
            .expect("bridge task panicked")
            .expect("bridge ended with an error");
        self.metrics.snapshot()
    }
}

/// Device events, an inventory and statuses of two RAEs, interleaved.
fn traffic(salt: u8, serials: &[Serial]) -> Vec<Message> {
    let mut out = Vec::new();
    for (i, serial) in serials.iter().enumerate() {
        out.push(Message::status(serial, AgentState::Online, 100 + i as i64));
    }
    let events = device_events(salt, serials, 10, 6);
    for (i, m) in events.into_iter().enumerate() {
        out.push(m);
        if i % 25 == 24 {
            let serial = &serials[i % serials.len()];
            let session = SessionId::from_bytes([salt; 16]);
            out.push(Message::inventory(
                serial,
                1_000 + i as i64,
                &[(session, 1)],
            ));
            out.push(Message::status(
                serial,
                AgentState::Online,
                1_000 + i as i64,
            ));
        }
    }
    out
}

/// Reads the whole topic (up to its current end): per key, the payloads in offset order.
async fn topic_contents(kafka: &Kafka, group: &str) -> BTreeMap<String, Vec<Vec<u8>>> {
    let meta: BaseConsumer = kafka.client_config().create().unwrap();
    let expected: i64 = (0..PARTITIONS)
        .map(|p| {
            let (low, high) = meta
                .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
                .expect("watermark query failed");
            high - low
        })
        .sum();
    let expected = usize::try_from(expected).unwrap();
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    let consumer = Arc::new(consumer);
    let mut seen: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let mut count = 0;
    let deadline = std::time::Instant::now() + WAIT;
    while count < expected {
        assert!(
            std::time::Instant::now() < deadline,
            "only {count} of {expected} records in Kafka within {WAIT:?}"
        );
        let c = consumer.clone();
        let polled = tokio::task::spawn_blocking(move || {
            c.poll(Duration::from_millis(200)).map(|r| {
                r.map(|m| {
                    (
                        m.key().map(|k| String::from_utf8(k.to_vec()).unwrap()),
                        m.payload().unwrap_or_default().to_vec(),
                    )
                })
            })
        })
        .await
        .unwrap();
        match polled {
            None => {}
            Some(Ok((key, payload))) => {
                let key = key.expect("a record without key");
                seen.entry(key).or_default().push(payload);
                count += 1;
            }
            Some(Err(e)) => panic!("consuming {TOPIC}: {e}"),
        }
    }
    seen
}

fn per_key(messages: &[Message]) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut out: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for m in messages {
        out.entry(m.topic.clone())
            .or_default()
            .push(m.payload.clone());
    }
    out
}

fn assert_same(got: &BTreeMap<String, Vec<Vec<u8>>>, want: &BTreeMap<String, Vec<Vec<u8>>>) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "keys in Kafka differ from the MQTT topics published"
    );
    for (key, payloads) in want {
        assert!(
            got[key] == *payloads,
            "key {key}: {} records in Kafka, {} published, or their order or bytes differ",
            got[key].len(),
            payloads.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_reaches_kafka_keyed_by_topic_in_order_across_a_bridge_restart() {
    let mosquitto = Mosquitto::start().unwrap();
    let kafka = Kafka::start().unwrap();
    kafka.create_topic(TOPIC, PARTITIONS).await.unwrap();
    let serials = serials(&["RAE-B1", "RAE-B2"]);
    let all = traffic(4, &serials);
    let kinds = ["/devices/", "/inventory", "/status"];
    for kind in kinds {
        assert!(
            all.iter().any(|m| m.topic.contains(kind)),
            "no {kind} traffic"
        );
    }
    let (first, second) = all.split_at(all.len() / 2);

    let running = Running::start(config(&mosquitto, &kafka)).await;
    publish(mosquitto.host(), mosquitto.port(), "lab-1", first).await;
    let n1 = first.len() as u64;
    running
        .wait_metrics("the first half stored and acknowledged", |s| {
            s.produced == n1 && s.acks_sent == n1
        })
        .await;
    let stopped = running.shutdown().await;
    assert_eq!(stopped.left_at_shutdown, 0, "{stopped:?}");

    // Published while the bridge is away: kept in its session.
    publish(mosquitto.host(), mosquitto.port(), "lab-2", second).await;
    let running = Running::start(config(&mosquitto, &kafka)).await;
    let n2 = second.len() as u64;
    let m = running
        .wait_metrics("the second half stored and acknowledged", |s| {
            s.produced == n2 && s.acks_sent == n2
        })
        .await;
    assert_eq!(m.received, n2, "{m:?}");
    running.shutdown().await;

    let got = topic_contents(&kafka, "bridge-check").await;
    assert_eq!(
        got.values().map(Vec::len).sum::<usize>(),
        all.len(),
        "records in Kafka"
    );
    assert_same(&got, &per_key(&all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_kafka_is_down_nothing_is_acknowledged_and_afterwards_everything_arrives() {
    let mosquitto = Mosquitto::start().unwrap();
    let mut kafka = Kafka::start().unwrap();
    kafka.create_topic(TOPIC, PARTITIONS).await.unwrap();
    let serials = serials(&["RAE-K1"]);
    let all = traffic(5, &serials);
    let (first, second) = all.split_at(all.len() / 2);
    let running = Running::start(config(&mosquitto, &kafka)).await;
    publish(mosquitto.host(), mosquitto.port(), "lab-1", first).await;
    let n1 = first.len() as u64;
    running
        .wait_metrics("the first half acknowledged", |s| s.acks_sent == n1)
        .await;

    kafka.stop().unwrap();
    publish(mosquitto.host(), mosquitto.port(), "lab-2", second).await;
    let n2 = second.len() as u64;
    let down = running
        .wait_metrics("the second half received and failing", |s| {
            s.received == n1 + n2 && s.delivery_failures > 0
        })
        .await;
    assert_eq!(
        down.acks_sent, n1,
        "no acknowledgement while Kafka is down: {down:?}"
    );

    kafka.start_again().unwrap();
    let up = running
        .wait_metrics("the second half acknowledged", |s| s.acks_sent == n1 + n2)
        .await;
    assert_eq!(up.in_flight, 0, "{up:?}");
    running.shutdown().await;

    // Retried records may sit behind later ones of their key and appear twice; each
    // published payload is there, and nothing else.
    let got = topic_contents(&kafka, "bridge-check").await;
    let want = per_key(&all);
    for (key, payloads) in &want {
        let stored = got.get(key).map(Vec::as_slice).unwrap_or_default();
        for p in payloads {
            assert!(stored.contains(p), "a payload of {key} is missing in Kafka");
        }
        for s in stored {
            assert!(payloads.contains(s), "an unknown payload under {key}");
        }
    }
}
