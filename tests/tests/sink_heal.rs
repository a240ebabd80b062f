//! Gap repair in the real `cloud-sink mqtt` against a real mosquitto and PostgreSQL, with
//! stand-ins for RAEs (the whole system with the real agent is in `control_plane.rs`):
//!
//! - a session whose seq 3 never arrives gets exactly one `resync` request for that session;
//!   the stand-in answers with a Snapshot and the row's `needs_resync` goes back to false;
//! - an RAE that never answers gets the request again after the backoff, with the same
//!   correlation data (so a real agent would answer the retry from its duplicate cache), and
//!   the timeouts are counted.

mod sink_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rae_proto::topic::filter;
use rae_proto::{
    CommandReply, CommandRequest, DeviceRecord, DeviceRef, Envelope, Event, Evidence, Field, Mac,
    ReplyBody, Serial, SessionId, SessionSeq, Topic,
};
use rae_tests::services::{Mosquitto, Postgres};
use rae_tests::sink::{sum, Sink};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
use sink_support::{publish, wait_until, Message};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(30);

fn session(n: u8) -> SessionId {
    let mut bytes = [0x5a; 16];
    bytes[15] = n;
    bytes[6] = 0x40 | (bytes[6] & 0x0f);
    bytes[8] = 0x80 | (bytes[8] & 0x3f);
    SessionId::from_bytes(bytes)
}

fn snapshot(serial: &Serial, session: SessionId, seq: u64, n: u8) -> Envelope {
    Envelope {
        serial: serial.clone(),
        session,
        seq,
        at_ms: 1_000 + seq as i64,
        event: Event::Snapshot {
            record: Box::new(DeviceRecord::new(
                Mac([2, 0x5a, 0, 0, 0, n]),
                Evidence::DhcpRequest,
                1_000,
            )),
        },
    }
}

fn delta(serial: &Serial, session: SessionId, seq: u64) -> Envelope {
    Envelope {
        serial: serial.clone(),
        session,
        seq,
        at_ms: 1_000 + seq as i64,
        event: Event::Delta {
            fields: vec![Field::Esn(Some(format!("ESN-{seq}")))],
        },
    }
}

/// Every command a stand-in RAE received: its correlation data and the request.
type Received = Arc<Mutex<Vec<(Vec<u8>, CommandRequest)>>>;

/// A stand-in RAE: records every command; when `answer`, a `resync` of a session publishes
/// a Snapshot with seq `next_seq` and replies with it.
async fn stand_in(broker: &Mosquitto, serial: &Serial, answer: bool, next_seq: u64) -> Received {
    let mut options = MqttOptions::new(format!("stand-in-{serial}"), broker.host(), broker.port());
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let received: Received = Arc::default();
    let log = received.clone();
    let serial = serial.clone();
    let (ready_tx, ready_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            let event = match eventloop.poll().await {
                Ok(event) => event,
                Err(e) => panic!("stand-in {serial} lost the broker: {e}"),
            };
            match event {
                MqttEvent::Incoming(Packet::ConnAck(_)) => client
                    .subscribe(filter::commands_for(&serial), QoS::AtLeastOnce)
                    .await
                    .expect("stand-in subscribe queued"),
                MqttEvent::Incoming(Packet::SubAck(_)) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                MqttEvent::Incoming(Packet::Publish(p)) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let Ok(Topic::Command { command, .. }) = Topic::parse(&topic) else {
                        panic!("stand-in got {topic}");
                    };
                    let props = p.properties.clone().expect("request properties");
                    let correlation = props.correlation_data.expect("correlation").to_vec();
                    let request =
                        CommandRequest::decode_for(command, &p.payload).expect("request decodes");
                    log.lock()
                        .expect("log")
                        .push((correlation.clone(), request.clone()));
                    let CommandRequest::Resync {
                        device: Some(DeviceRef::Session(id)),
                    } = request
                    else {
                        panic!("the sink asked for something else: {request:?}");
                    };
                    if !answer {
                        continue;
                    }
                    let envelope = snapshot(&serial, id, next_seq, 1);
                    client
                        .publish(
                            envelope.topic().to_string(),
                            QoS::AtLeastOnce,
                            false,
                            envelope.encode().expect("encodes"),
                        )
                        .await
                        .expect("snapshot queued");
                    let reply = CommandReply::Ok(ReplyBody::Sessions(vec![SessionSeq {
                        session: id,
                        seq: next_seq,
                    }]));
                    let properties = PublishProperties {
                        correlation_data: Some(correlation.into()),
                        ..PublishProperties::default()
                    };
                    client
                        .publish_with_properties(
                            props.response_topic.expect("a response topic"),
                            QoS::AtLeastOnce,
                            false,
                            reply.encode().expect("encodes"),
                            properties,
                        )
                        .await
                        .expect("reply queued");
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(WAIT, ready_rx)
        .await
        .expect("stand-in subscribed in time")
        .expect("stand-in runs");
    received
}

async fn needs_resync(pool: &sqlx::PgPool, session: SessionId) -> Result<(bool, i64), String> {
    sqlx::query_as::<_, (bool, i64)>(
        "SELECT needs_resync, snapshot_seq FROM device_sessions WHERE session = $1",
    )
    .bind(uuid::Uuid::from(session))
    .fetch_optional(pool)
    .await
    .map_err(|e| e.to_string())?
    .ok_or_else(|| "no row yet".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_gets_one_resync_request_and_closes_when_the_snapshot_lands() {
    let broker = Mosquitto::start().expect("mosquitto");
    let pg = Postgres::start().expect("postgres");
    let url = pg.create_database("sink_heal").await.expect("database");
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    let answering = Serial::new("HEAL-RAE-1").expect("serial");
    let mute = Serial::new("HEAL-RAE-MUTE").expect("serial");
    let to_answering = stand_in(&broker, &answering, true, 5).await;
    let to_mute = stand_in(&broker, &mute, false, 0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = [
        "mqtt",
        "--migrate",
        "--mqtt-port",
        &broker.port().to_string(),
        "--mqtt-client-id",
        "heal-sink",
        "--batch-max-wait-ms",
        "100",
        "--heal-backoff-ms",
        "1000",
        "--heal-reply-timeout-ms",
        "300",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut sink = Sink::start_mode(
        "sink-heal",
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

    // Seq 3 of each session never arrives.
    let (a, m) = (session(1), session(2));
    let mut messages = Vec::new();
    for (serial, id) in [(&answering, a), (&mute, m)] {
        messages.push(Message::event(&snapshot(serial, id, 1, 1)));
        messages.push(Message::event(&delta(serial, id, 2)));
        messages.push(Message::event(&delta(serial, id, 4)));
    }
    publish(broker.host(), broker.port(), "heal-publisher", &messages).await;

    let (gap, snapshot_seq) = wait_until("the answered gap closed", WAIT, || async {
        match needs_resync(&pool, a).await? {
            (false, seq) if seq == 5 => Ok((false, seq)),
            other => Err(format!("(needs_resync, snapshot_seq) = {other:?}")),
        }
    })
    .await;
    assert!(!gap && snapshot_seq == 5);
    let asked = to_answering.lock().expect("log").clone();
    assert_eq!(asked.len(), 1, "one request for the one gap: {asked:?}");
    assert_eq!(
        asked[0].1,
        CommandRequest::Resync {
            device: Some(DeviceRef::Session(a))
        }
    );

    // The mute RAE: asked again after the backoff, with the same correlation data.
    let retries = wait_until("a retry to the mute RAE", WAIT, || async {
        let seen = to_mute.lock().expect("log").clone();
        if seen.len() >= 2 {
            Ok(seen)
        } else {
            Err(format!("{} requests so far", seen.len()))
        }
    })
    .await;
    assert_eq!(
        retries[0].0, retries[1].0,
        "a retry after no reply re-sends the same correlation data"
    );
    assert!(needs_resync(&pool, m).await.expect("row").0, "still open");

    let metrics = wait_until("the counters", WAIT, || async {
        let m = sink.metrics().map_err(|e| e.to_string())?;
        let closed = sum(&m, "cloud_sink_heal_gaps_closed_total");
        let timeouts = sum(&m, "cloud_sink_heal_timeouts_total");
        if closed >= 1.0 && timeouts >= 2.0 {
            Ok(m)
        } else {
            Err(format!("closed {closed}, timeouts {timeouts}"))
        }
    })
    .await;
    assert!(sum(&metrics, "cloud_sink_heal_resync_requests_sent_total") >= 3.0);
    assert_eq!(
        metrics.get("cloud_sink_heal_replies_total{outcome=\"ok\"}"),
        Some(&1.0),
        "{metrics:?}"
    );
    assert_eq!(
        sum(&metrics, "cloud_sink_heal_tracked_sessions"),
        1.0,
        "only the mute RAE's gap"
    );
    let (status, _) = sink.terminate(Duration::from_secs(20)).expect("SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// Kafka mode: the bridge moves the events into Kafka, `cloud-sink kafka` writes them, and
/// with `--command-mqtt-host` it asks the RAE for the resync through that broker. Without the
/// flag it says at start-up that repair is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_mode_heals_through_the_command_broker_when_one_is_given() {
    let broker = Mosquitto::start().expect("mosquitto");
    let pg = Postgres::start().expect("postgres");
    let kafka = rae_tests::services::Kafka::start().expect("kafka");
    kafka
        .create_topic("rae-events", 2)
        .await
        .expect("kafka topic");
    let url = pg
        .create_database("sink_heal_kafka")
        .await
        .expect("database");
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    let serial = Serial::new("HEAL-RAE-K").expect("serial");
    let asked = stand_in(&broker, &serial, true, 5).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let mut bridge = Sink::start_mode(
        "bridge",
        dir.path(),
        &strings(&[
            "bridge",
            "--mqtt-port",
            &broker.port().to_string(),
            "--topic",
            "rae-events",
        ]),
        &[
            ("CLOUD_SINK_MQTT_HOST", broker.host().to_owned()),
            ("CLOUD_SINK_BROKERS", kafka.bootstrap_servers()),
        ],
    )
    .expect("cloud-sink bridge");
    let kafka_sink = |name: &str, group: &str, extra: &[&str]| {
        let mut args = strings(&[
            "kafka",
            "--migrate",
            "--topic",
            "rae-events",
            "--group",
            group,
            "--batch-max-wait-ms",
            "100",
        ]);
        args.extend(strings(extra));
        Sink::start_mode(
            name,
            dir.path(),
            &args,
            &[
                ("CLOUD_SINK_BROKERS", kafka.bootstrap_servers()),
                ("CLOUD_SINK_DATABASE_URL", url.clone()),
            ],
        )
        .expect("cloud-sink kafka")
    };
    // Without a command broker: repair is off, and it says so.
    let mut plain = kafka_sink("sink-kafka-plain", "heal-plain", &[]);
    plain
        .wait_ready(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", plain.log_tail()));
    wait_until("the start-up line saying repair is off", WAIT, || async {
        let log = std::fs::read_to_string(plain.log_path()).unwrap_or_default();
        if log.contains("gap repair off") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    let (status, _) = plain.terminate(Duration::from_secs(20)).expect("SIGTERM");
    assert!(status.success(), "plain kafka sink exit status {status}");

    let mut sink = kafka_sink(
        "sink-kafka",
        "heal",
        &[
            "--command-mqtt-host",
            broker.host(),
            "--command-mqtt-port",
            &broker.port().to_string(),
        ],
    );
    bridge
        .wait_ready(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", bridge.log_tail()));
    sink.wait_ready(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", sink.log_tail()));

    let id = session(3);
    let messages: Vec<Message> = [
        snapshot(&serial, id, 1, 3),
        delta(&serial, id, 2),
        delta(&serial, id, 4),
    ]
    .iter()
    .map(Message::event)
    .collect();
    publish(broker.host(), broker.port(), "heal-publisher-k", &messages).await;
    wait_until(
        "the gap closed through Kafka",
        Duration::from_secs(60),
        || async {
            match needs_resync(&pool, id).await? {
                (false, 5) => Ok(()),
                other => Err(format!("(needs_resync, snapshot_seq) = {other:?}")),
            }
        },
    )
    .await;
    assert_eq!(asked.lock().expect("log").len(), 1, "one resync request");
    let metrics = sink.metrics().expect("/metrics");
    assert!(sum(&metrics, "cloud_sink_heal_resync_requests_sent_total") >= 1.0);
    for (what, s) in [("kafka sink", sink), ("bridge", bridge)] {
        let (status, _) = s.terminate(Duration::from_secs(20)).expect("SIGTERM");
        assert!(status.success(), "{what} exit status {status}");
    }
}
