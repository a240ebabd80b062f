//! cloud-sink's writer against a real PostgreSQL at SERIALIZABLE: the convergence rule
//! (any order, duplicates and batching give the rows of in-order application), gaps and
//! resyncs, dead letters, inventories, statuses, and retries of serialization failures and
//! lost connections.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cloud_sink::apply::{Db, DbOptions, RetryPolicy};
use cloud_sink::record::{Origin, Raw};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rae_proto::strategy::{close_reason, delta_fields, device_record, session};
use rae_proto::{
    AgentState, CloseReason, DeviceRecord, Envelope, Event, Evidence, Field, Inventory, Mac,
    Serial, SessionId, SessionSeq, Status,
};
use rae_tests::services::Postgres;
use sqlx::{Connection, Row};

const WAIT: Duration = Duration::from_secs(20);

async fn database(pg: &Postgres, name: &str) -> Db {
    let url = pg.create_database(name).await.unwrap();
    let options = DbOptions {
        acquire_timeout: Duration::from_secs(1),
        retry: RetryPolicy {
            max_attempts: 40,
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
        },
        ..DbOptions::default()
    };
    let db = Db::connect(&url, options).await.unwrap();
    db.migrate().await.unwrap();
    db
}

static OFFSET: AtomicUsize = AtomicUsize::new(0);

fn kafka() -> Origin {
    Origin::Kafka {
        topic: "rae-events".into(),
        partition: 3,
        offset: OFFSET.fetch_add(1, Ordering::Relaxed) as i64,
    }
}

fn raw(envelope: &Envelope) -> Raw {
    Raw {
        topic: Some(envelope.topic().to_string()),
        payload: envelope.encode().unwrap(),
        origin: kafka(),
    }
}

fn envelope(serial: &Serial, session: SessionId, seq: u64, at_ms: i64, event: Event) -> Envelope {
    Envelope {
        serial: serial.clone(),
        session,
        seq,
        at_ms,
        event,
    }
}

fn snapshot(record: &DeviceRecord) -> Event {
    Event::Snapshot {
        record: Box::new(record.clone()),
    }
}

fn record(last_byte: u8) -> DeviceRecord {
    DeviceRecord::new(
        Mac([2, 0, 0, 0, 0, last_byte]),
        Evidence::DhcpRequest,
        1_000,
    )
}

/// Every column of the serial's sessions and their child rows, but `received_at`.
async fn rows_of(db: &Db, serial: &str) -> Vec<String> {
    let mut rows: Vec<String> = sqlx::query_scalar(
        "SELECT (to_jsonb(s) - 'received_at')::TEXT FROM device_sessions s \
         WHERE serial = $1 ORDER BY session",
    )
    .bind(serial)
    .fetch_all(db.pool())
    .await
    .unwrap();
    for table in ["device_mdns_services", "device_dial_apps"] {
        let children: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT to_jsonb(c)::TEXT FROM {table} c JOIN device_sessions s USING (session) \
             WHERE s.serial = $1 ORDER BY c.session, c.position"
        ))
        .bind(serial)
        .fetch_all(db.pool())
        .await
        .unwrap();
        rows.extend(children);
    }
    rows
}

async fn session_row(db: &Db, session: SessionId) -> sqlx::postgres::PgRow {
    sqlx::query("SELECT * FROM device_sessions WHERE session = $1")
        .bind(*session.as_uuid())
        .fetch_one(db.pool())
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// The convergence property.

/// One session's history as the RAE sent it, and which events reach the sink at all.
#[derive(Debug, Clone)]
struct History {
    session: SessionId,
    first: DeviceRecord,
    /// Events after the first Snapshot, with whether each is delivered.
    later: Vec<(Event, bool)>,
    closed: Option<CloseReason>,
}

fn later_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        1 => device_record().prop_map(|record| Event::Snapshot { record: Box::new(record) }),
        4 => delta_fields().prop_map(|fields| Event::Delta { fields }),
    ]
}

fn history() -> impl Strategy<Value = History> {
    (
        session(),
        device_record(),
        vec((later_event(), prop::bool::weighted(0.85)), 0..8),
        option::weighted(0.3, close_reason()),
    )
        .prop_map(|(session, first, later, closed)| History {
            session,
            first,
            later,
            closed,
        })
}

/// The delivered events of every history, in seq order per session.
fn delivered(serial: &Serial, histories: &[History]) -> Vec<Envelope> {
    let mut out = Vec::new();
    for h in histories {
        let mut seq = 1;
        out.push(envelope(serial, h.session, seq, 10, snapshot(&h.first)));
        for (event, delivered) in &h.later {
            seq += 1;
            if *delivered {
                out.push(envelope(
                    serial,
                    h.session,
                    seq,
                    10 + seq as i64,
                    event.clone(),
                ));
            }
        }
        if let Some(reason) = h.closed {
            seq += 1;
            out.push(envelope(
                serial,
                h.session,
                seq,
                10 + seq as i64,
                Event::Closed { reason },
            ));
        }
    }
    out
}

/// What a user expects of a session after all its delivered events: its record, and
/// whether the sink can tell that an event after the latest Snapshot is missing (one
/// missing after the last delivered event is invisible to it).
fn expected(history: &History) -> (DeviceRecord, bool) {
    let mut record = history.first.clone();
    let mut last_snapshot = 1;
    let mut highest = 1;
    let mut missing = BTreeSet::new();
    for (i, (event, delivered)) in history.later.iter().enumerate() {
        let seq = i as u64 + 2;
        if !delivered {
            missing.insert(seq);
            continue;
        }
        highest = seq;
        match event {
            Event::Snapshot { record: full } => {
                record = (**full).clone();
                last_snapshot = seq;
            }
            Event::Delta { fields } => fields.iter().for_each(|f| record.apply(f.clone())),
            Event::Closed { .. } => {}
        }
    }
    if history.closed.is_some() {
        highest = history.later.len() as u64 + 2;
    }
    let gap = missing
        .iter()
        .any(|&seq| seq > last_snapshot && seq < highest);
    (record, gap)
}

#[derive(Debug, Clone)]
struct Case {
    histories: Vec<History>,
    /// Extra copies of each delivered event.
    copies: Vec<usize>,
    /// Drives the shuffle and the batch cuts.
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (vec(history(), 1..=3), vec(0..3usize, 64), any::<u64>()).prop_map(
        |(histories, copies, seed)| Case {
            histories,
            copies,
            seed,
        },
    )
}

/// xorshift64*: enough to shuffle, and the seed is what proptest shrinks.
struct Shuffler(u64);

impl Shuffler {
    fn next(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % bound.max(1)
    }
}

static CASE: AtomicUsize = AtomicUsize::new(0);

async fn check(in_order: &Db, shuffled: &Db, case: Case) -> Result<(), TestCaseError> {
    let serial = Serial::new(format!("PROP-{}", CASE.fetch_add(1, Ordering::Relaxed))).unwrap();
    // Shrinking replays a case's sessions; each run needs sessions of its own serial.
    let mut case = case;
    for history in &mut case.histories {
        history.session = SessionId::from_uuid(uuid::Uuid::new_v4());
    }
    let events = delivered(&serial, &case.histories);
    for event in &events {
        let outcome = in_order.write(&[raw(event)]).await.unwrap();
        if outcome.applied != 1 {
            let reasons: Vec<String> = sqlx::query_scalar("SELECT reason FROM dead_letters")
                .fetch_all(in_order.pool())
                .await
                .unwrap();
            return Err(TestCaseError::fail(format!("{outcome:?}: {reasons:?}")));
        }
    }
    let mut mixed: Vec<Raw> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        for _ in 0..=case.copies[i % case.copies.len()] {
            mixed.push(raw(event));
        }
    }
    let mut rng = Shuffler(case.seed | 1);
    for i in (1..mixed.len()).rev() {
        mixed.swap(i, rng.next(i + 1));
    }
    let mut rest = &mixed[..];
    while !rest.is_empty() {
        let take = 1 + rng.next(rest.len().min(6));
        let (batch, tail) = rest.split_at(take);
        let outcome = shuffled.write(batch).await.unwrap();
        prop_assert_eq!((outcome.applied, outcome.dead_lettered), (batch.len(), 0));
        rest = tail;
    }
    let want = rows_of(in_order, serial.as_str()).await;
    let got = rows_of(shuffled, serial.as_str()).await;
    prop_assert_eq!(&want, &got, "rows differ from in-order application");

    for history in &case.histories {
        let (record, gap) = expected(history);
        let row = session_row(shuffled, history.session).await;
        prop_assert_eq!(row.get::<String, _>("mac"), record.mac.to_string());
        prop_assert_eq!(
            row.get::<Option<String>, _>("ipv4"),
            record.ipv4.map(|ip| ip.to_string())
        );
        prop_assert_eq!(row.get::<i64, _>("last_seen_ms"), record.last_seen_ms);
        prop_assert_eq!(
            row.get::<Option<Vec<u8>>, _>("hostname"),
            record.hostname.as_ref().map(|h| h.as_bytes().to_vec())
        );
        prop_assert_eq!(row.get::<bool, _>("needs_resync"), gap);
        prop_assert_eq!(
            row.get::<Option<String>, _>("close_reason"),
            history.closed.map(|r| r.as_str().to_owned())
        );
        let services: Vec<String> = sqlx::query_scalar(
            "SELECT instance FROM device_mdns_services WHERE session = $1 ORDER BY position",
        )
        .bind(*history.session.as_uuid())
        .fetch_all(shuffled.pool())
        .await
        .unwrap();
        let want: Vec<String> = record
            .mdns_services
            .iter()
            .map(|s| s.instance.clone())
            .collect();
        prop_assert_eq!(services, want);
    }
    Ok(())
}

#[test]
fn any_order_duplicates_and_batching_give_the_rows_of_in_order_application() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pg = Postgres::start().unwrap();
    let (in_order, shuffled) = runtime.block_on(async {
        (
            database(&pg, "in_order").await,
            database(&pg, "shuffled").await,
        )
    });
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        runtime.block_on(check(&in_order, &shuffled, case))
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

// ---------------------------------------------------------------------------------------
// Focused behaviour.

#[tokio::test]
async fn a_gap_sets_needs_resync_and_a_snapshot_clears_it_even_with_a_repeated_seq() {
    let pg = Postgres::start().unwrap();
    let db = database(&pg, "gaps").await;
    let serial = Serial::new("RAE-GAP").unwrap();
    let id = SessionId::from_bytes([1; 16]);
    let mut device = record(1);
    let ipv4 = |last| Field::Ipv4(Some(std::net::Ipv4Addr::new(198, 18, 0, last)));
    db.write(&[raw(&envelope(&serial, id, 1, 1, snapshot(&device)))])
        .await
        .unwrap();
    db.write(&[raw(&envelope(
        &serial,
        id,
        2,
        2,
        Event::Delta {
            fields: vec![ipv4(2)],
        },
    ))])
    .await
    .unwrap();
    assert!(!session_row(&db, id).await.get::<bool, _>("needs_resync"));

    // seq 3 never arrives.
    db.write(&[raw(&envelope(
        &serial,
        id,
        4,
        4,
        Event::Delta {
            fields: vec![ipv4(4)],
        },
    ))])
    .await
    .unwrap();
    let row = session_row(&db, id).await;
    assert!(row.get::<bool, _>("needs_resync"), "seq 3 is missing");
    assert_eq!(
        row.get::<Option<String>, _>("ipv4").as_deref(),
        Some("198.18.0.4")
    );

    // After a power loss the agent coalesces into a Snapshot that repeats seq 4.
    device.apply(ipv4(4));
    db.write(&[raw(&envelope(&serial, id, 4, 5, snapshot(&device)))])
        .await
        .unwrap();
    let row = session_row(&db, id).await;
    assert!(
        !row.get::<bool, _>("needs_resync"),
        "the Snapshot at seq 4 closes the gap"
    );
    assert_eq!(row.get::<i64, _>("seq_hw"), 4);
    assert_eq!(row.get::<i64, _>("snapshot_seq"), 4);

    // An old Delta arriving late changes nothing.
    db.write(&[raw(&envelope(
        &serial,
        id,
        3,
        3,
        Event::Delta {
            fields: vec![ipv4(3)],
        },
    ))])
    .await
    .unwrap();
    let row = session_row(&db, id).await;
    assert_eq!(
        row.get::<Option<String>, _>("ipv4").as_deref(),
        Some("198.18.0.4")
    );
    assert!(!row.get::<bool, _>("needs_resync"));
}

#[tokio::test]
async fn bad_records_become_dead_letters_with_their_origin() {
    let pg = Postgres::start().unwrap();
    let db = database(&pg, "dead").await;
    let serial = Serial::new("RAE-DL").unwrap();
    let id = SessionId::from_bytes([2; 16]);
    let good = raw(&envelope(&serial, id, 1, 1, snapshot(&record(2))));
    let undecodable = Raw {
        topic: Some(format!("rae/v1/RAE-DL/devices/{id}")),
        payload: vec![1, 0xff, 0xff],
        origin: Origin::Kafka {
            topic: "rae-events".into(),
            partition: 7,
            offset: 42,
        },
    };
    let mut foreign = raw(&envelope(
        &Serial::new("RAE-OTHER").unwrap(),
        id,
        2,
        2,
        snapshot(&record(2)),
    ));
    foreign.topic = Some(format!("rae/v1/RAE-DL/devices/{id}"));
    let unknown_topic = Raw {
        topic: Some("rae/v1/RAE-DL/weather".into()),
        payload: vec![1, 2, 3],
        origin: Origin::Mqtt {
            lane: 5,
            pkid: Some(9),
        },
    };
    let batch = vec![good, undecodable, foreign, unknown_topic];
    let outcome = db.write(&batch).await.unwrap();
    assert_eq!((outcome.applied, outcome.dead_lettered), (1, 3));

    let rows = sqlx::query(
        "SELECT topic, source, kafka_topic, kafka_partition, kafka_offset, mqtt_lane, mqtt_pkid, \
         payload, reason FROM dead_letters ORDER BY reason",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    let reasons: Vec<String> = rows.iter().map(|r| r.get("reason")).collect();
    assert!(
        reasons.iter().any(|r| r.contains("undecodable payload")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("differs from the topic")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unknown topic kind `weather`")),
        "{reasons:?}"
    );
    let kafka = rows
        .iter()
        .find(|r| r.get::<Option<i64>, _>("kafka_offset") == Some(42))
        .expect("the undecodable record's dead letter names its Kafka offset");
    assert_eq!(kafka.get::<String, _>("source"), "kafka");
    assert_eq!(kafka.get::<Option<i64>, _>("kafka_partition"), Some(7));
    assert_eq!(kafka.get::<Vec<u8>, _>("payload"), vec![1, 0xff, 0xff]);
    let mqtt = rows
        .iter()
        .find(|r| r.get::<String, _>("source") == "mqtt")
        .expect("the unknown topic's dead letter");
    assert_eq!(mqtt.get::<Option<i64>, _>("mqtt_lane"), Some(5));
    assert_eq!(mqtt.get::<Option<i64>, _>("mqtt_pkid"), Some(9));
    assert_eq!(
        mqtt.get::<Option<String>, _>("topic").as_deref(),
        Some("rae/v1/RAE-DL/weather")
    );

    // A Kafka batch replayed after a crash records its dead letters once.
    db.write(&batch[..3]).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE source = 'kafka'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(count, 2);
    assert_eq!(
        session_row(&db, id).await.get::<String, _>("serial"),
        "RAE-DL"
    );
}

fn inventory(serial: &Serial, at_ms: i64, sessions: &[(SessionId, u64)]) -> Raw {
    let inventory = Inventory {
        serial: serial.clone(),
        at_ms,
        sessions: sessions
            .iter()
            .map(|&(session, seq)| SessionSeq { session, seq })
            .collect(),
    };
    Raw {
        topic: Some(inventory.topic().to_string()),
        payload: inventory.encode().unwrap(),
        origin: kafka(),
    }
}

fn status(serial: &Serial, state: AgentState, at_ms: i64) -> Raw {
    let status = Status {
        serial: serial.clone(),
        state,
        agent_version: "0.1.0".into(),
        at_ms,
    };
    Raw {
        topic: Some(status.topic().to_string()),
        payload: status.encode().unwrap(),
        origin: kafka(),
    }
}

#[tokio::test]
async fn an_inventory_closes_only_its_own_unlisted_sessions_and_status_updates_the_rae() {
    let pg = Postgres::start().unwrap();
    let db = database(&pg, "inventory").await;
    let a = Serial::new("RAE-A").unwrap();
    let b = Serial::new("RAE-B").unwrap();
    let [listed, gone, later, other] = [11, 12, 13, 14].map(|n| SessionId::from_bytes([n; 16]));
    db.write(&[
        raw(&envelope(&a, listed, 1, 100, snapshot(&record(11)))),
        raw(&envelope(&a, gone, 1, 100, snapshot(&record(12)))),
        raw(&envelope(&a, later, 1, 300, snapshot(&record(13)))),
        raw(&envelope(&b, other, 1, 100, snapshot(&record(14)))),
    ])
    .await
    .unwrap();

    // Taken at 200, before `later` opened; it knows of seq 5 of `listed`.
    let outcome = db
        .write(&[inventory(&a, 200, &[(listed, 5)])])
        .await
        .unwrap();
    assert_eq!(outcome.applied, 1);
    let closed = |row: &sqlx::postgres::PgRow| row.get::<Option<String>, _>("close_reason");
    assert_eq!(
        closed(&session_row(&db, gone).await).as_deref(),
        Some("unlisted")
    );
    assert_eq!(
        session_row(&db, gone)
            .await
            .get::<Option<i64>, _>("closed_at_ms"),
        Some(200)
    );
    let row = session_row(&db, listed).await;
    assert_eq!(closed(&row), None);
    assert!(
        row.get::<bool, _>("needs_resync"),
        "seqs 2..5 were not received"
    );
    assert_eq!(
        closed(&session_row(&db, later).await),
        None,
        "opened after the inventory"
    );
    assert_eq!(
        closed(&session_row(&db, other).await),
        None,
        "another RAE's session"
    );

    // The RAE's own Closed event overrides the inventory's closing.
    db.write(&[raw(&envelope(
        &a,
        gone,
        2,
        150,
        Event::Closed {
            reason: CloseReason::Gone,
        },
    ))])
    .await
    .unwrap();
    assert_eq!(
        closed(&session_row(&db, gone).await).as_deref(),
        Some("gone")
    );

    let rae = |serial: &'static str| {
        let db = &db;
        async move {
            sqlx::query("SELECT *, status_changed_at::TEXT AS changed FROM raes WHERE serial = $1")
                .bind(serial)
                .fetch_one(db.pool())
                .await
                .unwrap()
        }
    };
    let row = rae("RAE-A").await;
    assert_eq!(row.get::<Option<i64>, _>("inventory_at_ms"), Some(200));
    assert_eq!(row.get::<Option<i64>, _>("inventory_sessions"), Some(1));
    assert_eq!(row.get::<Option<String>, _>("status"), None);

    db.write(&[status(&a, AgentState::Online, 1_000)])
        .await
        .unwrap();
    let online = rae("RAE-A").await;
    assert_eq!(
        online.get::<Option<String>, _>("status").as_deref(),
        Some("online")
    );
    assert_eq!(
        online.get::<Option<String>, _>("agent_version").as_deref(),
        Some("0.1.0")
    );
    // The Last Will carries the time of the connect it belongs to, and comes after it.
    db.write(&[status(&a, AgentState::Offline, 1_000)])
        .await
        .unwrap();
    let offline = rae("RAE-A").await;
    assert_eq!(
        offline.get::<Option<String>, _>("status").as_deref(),
        Some("offline")
    );
    let changed = |row: &sqlx::postgres::PgRow| row.get::<Option<String>, _>("changed");
    assert!(changed(&online).is_some());
    assert_ne!(
        changed(&online),
        changed(&offline),
        "the change to offline is dated"
    );
    // A stale online (an older connect) does not undo it.
    db.write(&[status(&a, AgentState::Online, 500)])
        .await
        .unwrap();
    let stale = rae("RAE-A").await;
    assert_eq!(
        stale.get::<Option<String>, _>("status").as_deref(),
        Some("offline")
    );
    assert_eq!(changed(&stale), changed(&offline));
}

#[tokio::test]
async fn a_serialization_failure_is_retried_to_success() {
    let pg = Postgres::start().unwrap();
    let db = database(&pg, "conflict").await;
    let url = pg.url("conflict");
    let serial = Serial::new("RAE-SER").unwrap();
    let id = SessionId::from_bytes([3; 16]);
    db.write(&[raw(&envelope(&serial, id, 1, 1, snapshot(&record(3))))])
        .await
        .unwrap();

    // Another writer holds the session row while the batch starts.
    let mut blocker = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("UPDATE device_sessions SET esn = 'held' WHERE session = $1")
        .bind(*id.as_uuid())
        .execute(&mut blocker)
        .await
        .unwrap();
    let delta = raw(&envelope(
        &serial,
        id,
        2,
        2,
        Event::Delta {
            fields: vec![Field::Esn(Some("ESN-42".into()))],
        },
    ));
    let write = {
        let batch = vec![delta];
        let db = &db;
        async move { db.write(&batch).await }
    };
    let wait_for_block = async {
        let mut watcher = sqlx::PgConnection::connect(&url).await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = 'conflict' AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut watcher)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the batch never waited for the held row within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
    };
    let (outcome, ()) = tokio::join!(write, wait_for_block);
    let outcome = outcome.expect("the batch commits after retrying");
    assert!(outcome.retries >= 1, "{outcome:?}");
    assert_eq!(outcome.applied, 1);
    assert_eq!(
        session_row(&db, id)
            .await
            .get::<Option<String>, _>("esn")
            .as_deref(),
        Some("ESN-42")
    );
}

#[tokio::test]
async fn a_lost_connection_is_retried_without_losing_the_batch() {
    let mut pg = Postgres::start().unwrap();
    let db = database(&pg, "outage").await;
    let serial = Serial::new("RAE-OUT").unwrap();
    let id = SessionId::from_bytes([4; 16]);
    pg.stop().unwrap();
    let batch = vec![raw(&envelope(&serial, id, 1, 1, snapshot(&record(4))))];
    let before = db.retries_total();
    let write = db.write(&batch);
    let restart = async {
        let deadline = tokio::time::Instant::now() + WAIT;
        while db.retries_total() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the writer never retried while the database was down"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pg.start_again().unwrap();
    };
    let (outcome, ()) = tokio::join!(write, restart);
    let outcome = outcome.expect("the batch commits once the database is back");
    assert!(outcome.retries >= 1);
    assert_eq!(outcome.applied, 1);
    assert_eq!(
        session_row(&db, id).await.get::<String, _>("serial"),
        "RAE-OUT"
    );
}

#[tokio::test]
async fn a_record_the_database_rejects_is_isolated_and_dead_lettered_alone() {
    let pg = Postgres::start().unwrap();
    let db = database(&pg, "poison").await;
    // Stands in for any value a future schema or CockroachDB may refuse (SQLSTATE class 23).
    sqlx::raw_sql(
        "ALTER TABLE device_sessions ADD CONSTRAINT no_poison CHECK (vendor IS DISTINCT FROM 'poison')",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let serial = Serial::new("RAE-POISON").unwrap();
    let sessions: Vec<SessionId> = (0..5)
        .map(|n| SessionId::from_bytes([40 + n; 16]))
        .collect();
    let mut batch: Vec<Raw> = sessions
        .iter()
        .map(|&id| raw(&envelope(&serial, id, 1, 1, snapshot(&record(7)))))
        .collect();
    let mut poisoned = record(8);
    poisoned.vendor = Some("poison".into());
    batch[3] = raw(&envelope(&serial, sessions[3], 1, 1, snapshot(&poisoned)));

    let outcome = db.write(&batch).await.unwrap();
    assert_eq!((outcome.applied, outcome.dead_lettered), (4, 1));
    for (i, id) in sessions.iter().enumerate() {
        let stored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM device_sessions WHERE session = $1")
                .bind(*id.as_uuid())
                .fetch_one(db.pool())
                .await
                .unwrap();
        assert_eq!(stored, i64::from(i != 3), "session {i}");
    }
    let reason: String = sqlx::query_scalar("SELECT reason FROM dead_letters")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert!(
        reason.contains("the database rejected the record"),
        "{reason}"
    );
    assert!(reason.contains("no_poison"), "{reason}");
}
