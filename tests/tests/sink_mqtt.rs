//! cloud-sink's MQTT source against a real mosquitto and a real PostgreSQL: what RAEs publish
//! ends up in the Cloud Registry exactly as applying it in order would leave it; messages are
//! acknowledged only after their transaction committed, so a sink restart or a database
//! outage loses nothing.

mod sink_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloud_sink::apply::{Db, DbOptions, RetryPolicy};
use cloud_sink::record::{BatchWriter, Origin, Raw, WriteError, WriteOutcome};
use cloud_sink::source::mqtt::{self, MqttBrokerConfig, MqttMetrics, MqttSourceConfig};
use rae_proto::{AgentState, Serial};
use rae_tests::services::{Mosquitto, Postgres};
use sink_support::{device_events, publish, serials, wait_until, with_duplicates, Message};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(45);

async fn database(pg: &Postgres, name: &str) -> Arc<Db> {
    let url = pg.create_database(name).await.unwrap();
    let options = DbOptions {
        acquire_timeout: Duration::from_secs(1),
        retry: RetryPolicy {
            max_attempts: 3,
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
        },
        ..DbOptions::default()
    };
    let db = Db::connect(&url, options).await.unwrap();
    db.migrate().await.unwrap();
    Arc::new(db)
}

/// The rows in-order application gives: `messages` written in order, 25 per batch.
async fn expected(pg: &Postgres, name: &str, messages: &[Message]) -> Arc<Db> {
    let db = database(pg, name).await;
    for chunk in messages.chunks(25) {
        let batch: Vec<Raw> = chunk
            .iter()
            .map(|m| Raw {
                topic: Some(m.topic.clone()),
                payload: m.payload.clone(),
                origin: Origin::Mqtt {
                    lane: 0,
                    pkid: None,
                },
            })
            .collect();
        db.write(&batch).await.unwrap();
    }
    db
}

/// Every column of the serial's sessions and child rows and its RAE row, but the times the
/// sink stamped on receipt.
async fn rows_of(db: &Db, serial: &Serial) -> Vec<String> {
    let serial = serial.as_str();
    let mut rows: Vec<String> = sqlx::query_scalar(
        "SELECT (to_jsonb(s) - 'received_at')::TEXT FROM device_sessions s \
         WHERE serial = $1 ORDER BY session",
    )
    .bind(serial)
    .fetch_all(db.pool())
    .await
    .unwrap();
    let rae: Vec<String> = sqlx::query_scalar(
        "SELECT (to_jsonb(r) - 'status_changed_at' - 'inventory_received_at' - 'updated_at')::TEXT \
         FROM raes r WHERE serial = $1",
    )
    .bind(serial)
    .fetch_all(db.pool())
    .await
    .unwrap();
    rows.extend(rae);
    rows
}

/// Waits until `sink` holds exactly the rows of `expected` for every serial.
async fn wait_converged(sink: &Db, expected: &Db, serials: &[Serial]) {
    let mut want = Vec::new();
    for serial in serials {
        want.extend(rows_of(expected, serial).await);
    }
    assert!(!want.is_empty(), "the reference database is empty");
    wait_until(
        "the sink's rows equal in-order application",
        WAIT,
        || async {
            let mut got = Vec::new();
            for serial in serials {
                got.extend(rows_of(sink, serial).await);
            }
            if got == want {
                return Ok(());
            }
            let differing = got.iter().zip(&want).filter(|(g, w)| g != w).count();
            Err(format!(
                "{} rows, {} expected; {differing} of the common ones differ",
                got.len(),
                want.len()
            ))
        },
    )
    .await;
}

fn config(mosquitto: &Mosquitto, client_id: &str) -> MqttSourceConfig {
    MqttSourceConfig {
        broker: MqttBrokerConfig {
            host: mosquitto.host().into(),
            port: mosquitto.port(),
            client_id: client_id.into(),
            reconnect_min_ms: 100,
            reconnect_max_ms: 1000,
            ..MqttBrokerConfig::default()
        },
        lanes: 4,
        batch_max_records: 100,
        batch_max_wait_ms: 200,
        write_retry_min_ms: 50,
        write_retry_max_ms: 500,
        shutdown_deadline_ms: 5000,
        ..MqttSourceConfig::default()
    }
}

/// The real writer, which a test can make fail as if the database were gone.
struct Switchable {
    db: Arc<Db>,
    failing: AtomicBool,
}

impl BatchWriter for Switchable {
    async fn write(&self, batch: &[Raw]) -> Result<WriteOutcome, WriteError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(WriteError::Unavailable {
                attempts: 1,
                message: "test: database switched off".into(),
            });
        }
        self.db.write(batch).await
    }
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), mqtt::MqttSourceError>>,
    metrics: Arc<MqttMetrics>,
}

impl Running {
    /// Starts the source and waits until its subscriptions are in place.
    async fn start<W: BatchWriter>(config: MqttSourceConfig, writer: Arc<W>) -> Running {
        let metrics = Arc::new(MqttMetrics::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(mqtt::run(config, writer, metrics.clone(), async move {
            let _ = stopped.await;
        }));
        let m = metrics.clone();
        wait_until("the source subscribed", WAIT, || {
            let s = m.snapshot();
            async move {
                if s.subscribed > 0 {
                    Ok(())
                } else {
                    Err(format!("{s:?}"))
                }
            }
        })
        .await;
        assert_eq!(metrics.snapshot().subscriptions_refused, 0);
        Running {
            stop: Some(stop),
            task,
            metrics,
        }
    }

    async fn shutdown(mut self) -> mqtt::MqttMetricsSnapshot {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("source did not stop")
            .expect("source task panicked")
            .expect("source ended with an error");
        self.metrics.snapshot()
    }

    async fn wait_metrics(
        &self,
        what: &str,
        ok: impl Fn(&mqtt::MqttMetricsSnapshot) -> bool,
    ) -> mqtt::MqttMetricsSnapshot {
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
}

fn traffic(salt: u8, serials: &[Serial]) -> Vec<Message> {
    let mut messages = vec![];
    for serial in serials {
        messages.push(Message::status(serial, AgentState::Online, 500));
    }
    messages.extend(with_duplicates(device_events(salt, serials, 20, 15), 7));
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_reach_postgres_as_in_order_application_would_leave_them() {
    let mosquitto = Mosquitto::start().unwrap();
    let pg = Postgres::start().unwrap();
    let serials = serials(&["RAE-M1", "RAE-M2"]);
    let messages = traffic(1, &serials);
    assert!(messages.len() > 300, "{} messages", messages.len());
    let reference = expected(&pg, "reference", &messages).await;
    let sink = database(&pg, "sink").await;
    let writer = Arc::new(Switchable {
        db: sink.clone(),
        failing: AtomicBool::new(false),
    });
    let running = Running::start(config(&mosquitto, "sink-in-order"), writer).await;
    publish(mosquitto.host(), mosquitto.port(), "lab-1", &messages).await;
    wait_converged(&sink, &reference, &serials).await;
    let n = messages.len() as u64;
    let m = running
        .wait_metrics("every message acknowledged", |s| s.acks_sent == n)
        .await;
    assert_eq!(m.received, n);
    assert_eq!(m.applied, n, "nothing dead-lettered: {m:?}");
    assert_eq!(m.in_flight, 0);
    assert!(m.batches_written >= 2, "{m:?}");
    let m = running.shutdown().await;
    assert_eq!(m.left_at_shutdown, 0, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sink_gets_what_was_published_while_it_was_away_and_what_it_had_not_acked() {
    let mosquitto = Mosquitto::start().unwrap();
    let pg = Postgres::start().unwrap();
    let serials = serials(&["RAE-R1", "RAE-R2"]);
    let all = traffic(2, &serials);
    let (a, rest) = all.split_at(all.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let reference = expected(&pg, "reference", &all).await;
    let sink = database(&pg, "sink").await;
    let writer = Arc::new(Switchable {
        db: sink.clone(),
        failing: AtomicBool::new(false),
    });
    let client_id = "sink-restart";

    // First run: A is written and acknowledged; B arrives while writes fail, so it is
    // received but never acknowledged when the sink stops.
    let running = Running::start(config(&mosquitto, client_id), writer.clone()).await;
    publish(mosquitto.host(), mosquitto.port(), "lab-a", a).await;
    let na = a.len() as u64;
    running
        .wait_metrics("A acknowledged", |s| s.acks_sent == na)
        .await;
    writer.failing.store(true, Ordering::SeqCst);
    publish(mosquitto.host(), mosquitto.port(), "lab-b", b).await;
    let nb = b.len() as u64;
    running
        .wait_metrics("B received while writes fail", |s| {
            s.received == na + nb && s.write_failures > 0
        })
        .await;
    let first = running.shutdown().await;
    assert_eq!(first.acks_sent, na, "nothing of B acknowledged: {first:?}");
    assert_eq!(first.left_at_shutdown, nb, "{first:?}");

    // Away: C waits in the broker's session.
    publish(mosquitto.host(), mosquitto.port(), "lab-c", c).await;

    // Second run, same client id: B comes back, C arrives, everything converges.
    writer.failing.store(false, Ordering::SeqCst);
    let running = Running::start(config(&mosquitto, client_id), writer).await;
    wait_converged(&sink, &reference, &serials).await;
    let nc = c.len() as u64;
    let second = running
        .wait_metrics("B and C acknowledged", |s| s.acks_sent == nb + nc)
        .await;
    assert_eq!(
        second.sessions_lost, 0,
        "the broker kept the session: {second:?}"
    );
    assert_eq!(second.received, nb + nc, "{second:?}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_nothing_is_acknowledged_and_afterwards_everything_is_applied() {
    let mosquitto = Mosquitto::start().unwrap();
    let mut pg = Postgres::start().unwrap();
    let serials = serials(&["RAE-P1"]);
    let all = traffic(3, &serials);
    let (a, b) = all.split_at(all.len() / 2);
    let reference = expected(&pg, "reference", &all).await;
    let sink = database(&pg, "sink").await;
    let running = Running::start(config(&mosquitto, "sink-pg-down"), sink.clone()).await;
    publish(mosquitto.host(), mosquitto.port(), "lab-a", a).await;
    let na = a.len() as u64;
    running
        .wait_metrics("A acknowledged", |s| s.acks_sent == na)
        .await;

    pg.stop().unwrap();
    publish(mosquitto.host(), mosquitto.port(), "lab-b", b).await;
    let nb = b.len() as u64;
    let down = running
        .wait_metrics("B received and its writes failing", |s| {
            s.received == na + nb && s.write_failures >= 2
        })
        .await;
    assert_eq!(
        down.acks_sent, na,
        "no acknowledgement while PostgreSQL is down: {down:?}"
    );
    assert_eq!(down.in_flight, nb, "{down:?}");

    pg.start_again().unwrap();
    wait_converged(&sink, &reference, &serials).await;
    let up = running
        .wait_metrics("B acknowledged", |s| s.acks_sent == na + nb)
        .await;
    assert_eq!(up.in_flight, 0, "{up:?}");
    running.shutdown().await;
}
