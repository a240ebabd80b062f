//! `cloud-sink mqtt` (the real binary) under a burst, against a real mosquitto and a real
//! PostgreSQL: 3,000 sessions publish 51,000 events at full speed while the sink runs, then
//! 51,000 more while it is SIGKILLed halfway, so that a backlog waits at the broker when it
//! restarts. Every message is acknowledged (the broker holds nothing afterwards), no
//! acknowledgement is ever given up, and every session ends as it was sent.
//!
//! mosquitto 2.0 can send far more than our receive maximum at once; the sink must still
//! acknowledge everything, or the broker's send quota runs out and delivery stops for good.

mod sink_support;

use std::time::{Duration, Instant};

use rae_proto::topic::filter::ALL_FROM_RAES;
use rae_proto::Serial;
use rae_tests::services::{BrokerSetup, Mosquitto, MosquittoOptions, Postgres};
use rae_tests::sink::{Samples, Sink};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
use sink_support::{device_events, serials, wait_until, Message};
use uuid::Uuid;

const SESSIONS: usize = 3000;
/// Rounds of events per session; half of them in each burst.
const ROUNDS: u64 = 34;
/// Publishing clients; each session's events come from one of them, in order.
const PUBLISHERS: usize = 4;
const SALT: u8 = 9;
const CLIENT_ID: &str = "sink-burst";
const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
struct SessionRow {
    session: Uuid,
    seq_hw: i64,
    contiguous_seq: i64,
    ipv4: Option<String>,
    esn: Option<String>,
    closed_seq: Option<i64>,
    close_reason: Option<String>,
    needs_resync: bool,
    pending: i64,
}

/// The session ids `device_events(SALT, .., SESSIONS, ..)` uses, by index.
fn session_id(i: usize) -> Uuid {
    let mut bytes = [SALT; 16];
    bytes[14] = (i >> 8) as u8;
    bytes[15] = i as u8;
    bytes[6] = 0x40 | (bytes[6] & 0x0f);
    bytes[8] = 0x80 | (bytes[8] & 0x3f);
    Uuid::from_bytes(bytes)
}

/// Every session's row after `rounds` rounds of `device_events` were applied in order.
fn expected(rounds: u64) -> Vec<SessionRow> {
    let mut rows: Vec<SessionRow> = (0..SESSIONS)
        .map(|i| {
            let closed = rounds == ROUNDS && i % 5 == 0;
            // The round of the last Delta: the Closed one carries no fields.
            let last_delta = if closed { rounds - 2 } else { rounds - 1 };
            SessionRow {
                session: session_id(i),
                seq_hw: rounds as i64,
                contiguous_seq: rounds as i64,
                ipv4: Some(format!("198.18.{}.{}", last_delta % 250, i as u8)),
                esn: Some(format!("ESN-{SALT}-{i}-{last_delta}")),
                closed_seq: closed.then_some(rounds as i64),
                close_reason: closed.then(|| "gone".to_owned()),
                needs_resync: false,
                pending: 0,
            }
        })
        .collect();
    rows.sort_by_key(|r| r.session);
    rows
}

/// The columns `stored` reads, in `SessionRow`'s order.
type StoredRow = (
    Uuid,
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    bool,
    i64,
);

async fn stored(pool: &sqlx::PgPool) -> Result<Vec<SessionRow>, sqlx::Error> {
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT session, seq_hw, contiguous_seq, ipv4, esn, closed_seq, close_reason, \
           needs_resync, cardinality(pending_seqs)::INT8 \
         FROM device_sessions ORDER BY session",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| SessionRow {
            session: r.0,
            seq_hw: r.1,
            contiguous_seq: r.2,
            ipv4: r.3,
            esn: r.4,
            closed_seq: r.5,
            close_reason: r.6,
            needs_resync: r.7,
            pending: r.8,
        })
        .collect())
}

/// Waits until the database holds exactly `want`.
async fn wait_rows(pool: &sqlx::PgPool, want: &[SessionRow], what: &str) {
    wait_until(what, WAIT, || async {
        let got = stored(pool).await.map_err(|e| e.to_string())?;
        if got == want {
            return Ok(());
        }
        let differing = got.iter().zip(want).filter(|(g, w)| g != w).count();
        let example = got.iter().zip(want).find(|(g, w)| g != w);
        Err(format!(
            "{} sessions ({} expected), {differing} differ, e.g. {example:?}",
            got.len(),
            want.len()
        ))
    })
    .await;
}

/// Publishes `messages` at QoS 1 from `PUBLISHERS` clients at once (a session always from
/// the same one, in order) and returns once the broker acknowledged every one.
async fn publish_burst(host: &str, port: u16, name: &str, messages: &[Message]) {
    let mut parts: Vec<Vec<Message>> = vec![Vec::new(); PUBLISHERS];
    for (position, m) in messages.iter().enumerate() {
        parts[position % SESSIONS % PUBLISHERS].push(m.clone());
    }
    let mut tasks = Vec::new();
    for (k, part) in parts.into_iter().enumerate() {
        let host = host.to_owned();
        let id = format!("{name}-{k}");
        tasks.push(tokio::spawn(async move {
            sink_support::publish(&host, port, &id, &part).await;
        }));
    }
    for task in tasks {
        task.await.expect("a publisher panicked");
    }
}

fn client_options(host: &str, port: u16, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(Duration::from_secs(10))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_receive_maximum(Some(u16::MAX))
        .set_max_packet_size(Some(1024 * 1024));
    o
}

/// Creates the sink's session at the broker (its filters subscribed), so that nothing
/// published before the sink first connects is lost.
async fn create_session(host: &str, port: u16) {
    let (client, mut eventloop) = AsyncClient::new(client_options(host, port, CLIENT_ID), 16);
    let filters: Vec<Filter> = ALL_FROM_RAES
        .iter()
        .map(|f| Filter::new(*f, QoS::AtLeastOnce))
        .collect();
    client.subscribe_many(filters).await.expect("subscribe");
    tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::SubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("creating the sink's session: {e}"),
            }
        }
    })
    .await
    .expect("no SUBACK for the sink's session");
    client.disconnect().await.expect("disconnect");
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
}

/// Resumes the sink's session and counts what the broker still holds for it: every message
/// it delivers before a marker published now (a session's queue is delivered in order).
async fn held_for_sink(host: &str, port: u16) -> usize {
    let (client, mut eventloop) = AsyncClient::new(client_options(host, port, CLIENT_ID), 16);
    let marker = "rae/v1/RAE-PROBE/status";
    let mut held = 0;
    let mut marker_sent = false;
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                    assert!(ack.session_present, "the broker lost the sink's session");
                    // From another client, so that it queues behind what is held.
                    let host = host.to_owned();
                    tokio::spawn(async move {
                        let m = Message {
                            topic: marker.to_owned(),
                            payload: b"marker".to_vec(),
                        };
                        sink_support::publish(&host, port, "burst-marker", &[m]).await;
                    });
                    marker_sent = true;
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    if p.topic.as_ref() == marker.as_bytes() {
                        return;
                    }
                    held += 1;
                }
                Ok(_) => {}
                Err(e) => panic!("resuming the sink's session: {e}"),
            }
        }
    })
    .await;
    assert!(marker_sent, "the probe never connected");
    assert!(
        outcome.is_ok(),
        "the marker did not arrive within {WAIT:?} ({held} held messages before it)"
    );
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    held
}

fn start_sink(mosquitto: &Mosquitto, url: &str, dir: &std::path::Path, name: &str) -> Sink {
    let args: Vec<String> = [
        "--shutdown-deadline-secs",
        "20",
        "mqtt",
        "--migrate",
        "--mqtt-port",
        &mosquitto.port().to_string(),
        "--mqtt-client-id",
        CLIENT_ID,
        "--batch-max-wait-ms",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut sink = Sink::start_mode(
        name,
        dir,
        &args,
        &[
            ("CLOUD_SINK_MQTT_HOST", mosquitto.host().to_string()),
            ("CLOUD_SINK_DATABASE_URL", url.to_owned()),
        ],
    )
    .expect("cloud-sink mqtt");
    sink.wait_ready(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", sink.log_tail()));
    sink
}

fn value(samples: &Samples, name: &str) -> u64 {
    samples.get(name).copied().unwrap_or(0.0) as u64
}

/// The sink's acknowledgement counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Acks {
    received: u64,
    acked: u64,
    not_queued: u64,
    deferred: u64,
    in_flight: u64,
}

fn acks(sink: &Sink) -> Result<Acks, String> {
    let s = sink.metrics().map_err(|e| e.to_string())?;
    Ok(Acks {
        received: value(&s, "cloud_sink_mqtt_messages_received_total"),
        acked: value(&s, "cloud_sink_mqtt_acks_sent_total"),
        not_queued: value(&s, "cloud_sink_mqtt_acks_not_queued_total"),
        deferred: value(&s, "cloud_sink_mqtt_acks_deferred_total"),
        in_flight: value(&s, "cloud_sink_in_flight"),
    })
}

/// Waits until the sink received at least `at_least` messages and acknowledged every one.
async fn wait_all_acked(sink: &mut Sink, at_least: u64, what: &str) -> Acks {
    let outcome = wait_until(what, WAIT, || {
        let state = sink
            .ensure_running()
            .map_err(|e| e.to_string())
            .and_then(|()| acks(sink));
        async move {
            let a = state?;
            if a.received >= at_least && a.acked == a.received && a.in_flight == 0 {
                Ok(a)
            } else {
                Err(format!("{a:?}"))
            }
        }
    });
    outcome.await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_receive_window_is_all_acknowledged_before_and_after_a_sigkill() {
    let mosquitto = Mosquitto::start_setup(
        MosquittoOptions::default(),
        BrokerSetup {
            // The whole backlog waits for the killed sink (the default drops past 1000).
            extra_config: "max_queued_messages 0\n".into(),
            ..BrokerSetup::default()
        },
    )
    .expect("mosquitto");
    let pg = Postgres::start().expect("postgres");
    let url = pg.create_database("burst").await.expect("database");
    let pool = sqlx::PgPool::connect(&url).await.expect("database pool");
    let dir = mosquitto.dir().to_path_buf();
    let names: Vec<String> = (0..10).map(|i| format!("RAE-B{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let serials: Vec<Serial> = serials(&names);
    let all = device_events(SALT, &serials, SESSIONS, ROUNDS);
    let (first, second) = all.split_at(all.len() / 2);
    let (host, port) = (mosquitto.host().to_owned(), mosquitto.port());
    create_session(&host, port).await;

    // Burst 1 while the sink runs.
    let mut sink = start_sink(&mosquitto, &url, &dir, "sink-burst-1");
    let started = Instant::now();
    publish_burst(&host, port, "burst-1", first).await;
    let published = started.elapsed();
    let n1 = first.len() as u64;
    let a1 = wait_all_acked(&mut sink, n1, "burst 1 received and acknowledged").await;
    let took = started.elapsed();
    println!(
        "burst 1: {n1} events published in {:.2} s, all acknowledged {:.2} s after the first \
         publish ({:.0} events/s), {:.2} s after the last; {a1:?}",
        published.as_secs_f64(),
        took.as_secs_f64(),
        n1 as f64 / took.as_secs_f64(),
        (took - published).as_secs_f64(),
    );
    assert_eq!(
        a1.received, n1,
        "no redelivery on a live connection: {a1:?}"
    );
    assert_eq!(a1.not_queued, 0, "no acknowledgement given up: {a1:?}");
    wait_rows(&pool, &expected(ROUNDS / 2), "burst 1 in the database").await;

    // Burst 2: the sink is SIGKILLed while it takes it; the rest waits at the broker.
    let publisher = {
        let (host, second) = (host.clone(), second.to_vec());
        tokio::spawn(async move { publish_burst(&host, port, "burst-2", &second).await })
    };
    let busy = wait_until("the sink busy with burst 2", WAIT, || {
        let state = acks(&sink);
        async move {
            let a = state?;
            if a.received >= n1 + 5000 {
                Ok(a)
            } else {
                Err(format!("{a:?}"))
            }
        }
    })
    .await;
    assert_eq!(busy.not_queued, 0, "no acknowledgement given up: {busy:?}");
    sink.kill().expect("SIGKILL");
    publisher.await.expect("burst 2 publisher");
    let restarted = Instant::now();
    let mut sink = start_sink(&mosquitto, &url, &dir, "sink-burst-2");
    wait_rows(&pool, &expected(ROUNDS), "both bursts in the database").await;
    let a2 = wait_all_acked(&mut sink, 1, "the backlog acknowledged").await;
    let took = restarted.elapsed();
    println!(
        "backlog after SIGKILL: {} messages received by the restarted sink, all acknowledged \
         {:.2} s after its start ({:.0} events/s); {a2:?}",
        a2.received,
        took.as_secs_f64(),
        a2.received as f64 / took.as_secs_f64(),
    );
    assert_eq!(a2.not_queued, 0, "no acknowledgement given up: {a2:?}");

    let (status, _) = sink.terminate(WAIT).expect("SIGTERM");
    assert!(status.success(), "cloud-sink mqtt exited with {status}");
    assert_eq!(
        held_for_sink(&host, port).await,
        0,
        "the broker still holds messages for the sink"
    );
}
