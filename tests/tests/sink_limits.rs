//! cloud-sink's writer at its limits, against a real PostgreSQL at SERIALIZABLE: a session
//! whose gap never fills keeps a bounded gap record, and a record the database refuses with
//! a permanent error is dead-lettered instead of stopping its partition (through the writer,
//! and through the `cloud-sink` binary on real Kafka).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cloud_sink::apply::{Db, DbOptions, RetryPolicy};
use cloud_sink::record::{Origin, Raw};
use rae_proto::{
    CloseReason, DeviceRecord, Envelope, Event, Evidence, Field, Mac, Serial, SessionId,
};
use rae_tests::services::{Kafka, Postgres};
use rae_tests::sink::{sum, KafkaSinkSpec, Sink};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::Row;

mod sink_support;
use sink_support::wait_until;

const CAP: usize = 8;
const WAIT: Duration = Duration::from_secs(120);

async fn database(pg: &Postgres, name: &str, options: DbOptions) -> Db {
    let url = pg.create_database(name).await.unwrap();
    let db = Db::connect(&url, options).await.unwrap();
    db.migrate().await.unwrap();
    db
}

fn options() -> DbOptions {
    DbOptions {
        acquire_timeout: Duration::from_secs(1),
        retry: RetryPolicy {
            max_attempts: 40,
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
        },
        max_pending_runs: CAP,
        permanent_strikes: 3,
        ..DbOptions::default()
    }
}

static OFFSET: AtomicUsize = AtomicUsize::new(0);

fn raw(envelope: &Envelope) -> Raw {
    Raw {
        topic: Some(envelope.topic().to_string()),
        payload: envelope.encode().unwrap(),
        origin: Origin::Kafka {
            topic: "rae-events".into(),
            partition: 5,
            offset: OFFSET.fetch_add(1, Ordering::Relaxed) as i64,
        },
    }
}

fn envelope(serial: &Serial, session: SessionId, seq: u64, event: Event) -> Envelope {
    Envelope {
        serial: serial.clone(),
        session,
        seq,
        at_ms: 1_000 + seq as i64,
        event,
    }
}

fn record(last_byte: u8) -> DeviceRecord {
    DeviceRecord::new(
        Mac([2, 0, 0, 0, 0, last_byte]),
        Evidence::DhcpRequest,
        1_000,
    )
}

fn snapshot(record: &DeviceRecord) -> Event {
    Event::Snapshot {
        record: Box::new(record.clone()),
    }
}

fn seen(seq: u64) -> Event {
    Event::Delta {
        fields: vec![Field::LastSeen(1_000 + seq as i64)],
    }
}

/// What a user reads of a session's gap record.
#[derive(Debug)]
struct GapRecord {
    runs: Vec<i64>,
    legacy: Vec<i64>,
    overflow: bool,
    needs_resync: bool,
    contiguous: i64,
    seq_hw: i64,
    last_seen: Option<i64>,
}

async fn gap_record(db: &Db, session: SessionId) -> GapRecord {
    let row = sqlx::query(
        "SELECT pending_runs, pending_seqs, pending_overflow, needs_resync, contiguous_seq, \
         seq_hw, last_seen_ms FROM device_sessions WHERE session = $1",
    )
    .bind(*session.as_uuid())
    .fetch_one(db.pool())
    .await
    .unwrap();
    GapRecord {
        runs: row.get("pending_runs"),
        legacy: row.get("pending_seqs"),
        overflow: row.get("pending_overflow"),
        needs_resync: row.get("needs_resync"),
        contiguous: row.get("contiguous_seq"),
        seq_hw: row.get("seq_hw"),
        last_seen: row.get("last_seen_ms"),
    }
}

/// A long random string: no compression brings it under the 2,704-byte B-tree row limit.
fn incompressible(len: usize, mut x: u64) -> String {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

/// An index an operator adds for look-ups by vendor: PostgreSQL then refuses a vendor too
/// long for a B-tree entry with SQLSTATE 54000 (program limit exceeded), a permanent error
/// the decoder cannot foresee.
const VENDOR_INDEX: &str = "CREATE INDEX device_sessions_by_vendor ON device_sessions (vendor)";

fn poisoned(last_byte: u8) -> DeviceRecord {
    let mut r = record(last_byte);
    r.vendor = Some(incompressible(8_000, u64::from(last_byte) + 1));
    r
}

// ---------------------------------------------------------------------------------------
// The bounded gap record.

#[tokio::test]
async fn a_session_with_a_permanent_gap_keeps_a_bounded_gap_record_until_a_snapshot() {
    let pg = Postgres::start().unwrap();
    let db = database(&pg, "gap_bound", options()).await;
    let serial = Serial::new("RAE-GAP").unwrap();
    let id = SessionId::from_bytes([0x51; 16]);
    db.write(&[raw(&envelope(&serial, id, 1, snapshot(&record(1))))])
        .await
        .unwrap();
    // Seq 2 never arrives, and every other event after it is lost too: 10,000 events,
    // each its own run, in 50 batches.
    let mut overflows = 0;
    let mut seq = 1;
    for batch in 0..50 {
        let events: Vec<Raw> = (0..200)
            .map(|_| {
                seq += 2;
                raw(&envelope(&serial, id, seq, seen(seq)))
            })
            .collect();
        let outcome = db.write(&events).await.unwrap();
        assert_eq!(outcome.applied, 200);
        overflows += outcome.gap_overflows;
        let stored = gap_record(&db, id).await;
        assert!(
            stored.runs.len() <= 2 * CAP,
            "batch {batch}: {} stored run bounds, cap {CAP} runs",
            stored.runs.len()
        );
        assert!(
            stored.needs_resync && stored.overflow,
            "batch {batch}: {stored:?}"
        );
    }
    let stored = gap_record(&db, id).await;
    assert_eq!(stored.runs.len(), 2 * CAP, "{stored:?}");
    assert_eq!((stored.contiguous, stored.seq_hw), (1, seq as i64));
    assert_eq!(
        stored.last_seen,
        Some(1_000 + seq as i64),
        "fields still converge"
    );
    assert_eq!(overflows, 1, "one overflow episode, counted once");

    // Closed with the gap still open: the record stays as bounded as it is.
    seq += 2;
    db.write(&[raw(&envelope(
        &serial,
        id,
        seq,
        Event::Closed {
            reason: CloseReason::Gone,
        },
    ))])
    .await
    .unwrap();
    let closed = gap_record(&db, id).await;
    assert!(closed.runs.len() <= 2 * CAP && closed.overflow && closed.needs_resync);

    // The Snapshot the gap healer asks for (the RAE's seq is above all it sent) resets it.
    seq += 1;
    let outcome = db
        .write(&[raw(&envelope(&serial, id, seq, snapshot(&record(1))))])
        .await
        .unwrap();
    assert_eq!(outcome.gap_overflows, 0);
    let reset = gap_record(&db, id).await;
    assert!(
        reset.runs.is_empty() && !reset.overflow && !reset.needs_resync,
        "{reset:?}"
    );
    assert_eq!(reset.contiguous, seq as i64);
}

#[tokio::test]
async fn a_gap_record_written_before_runs_existed_is_read_and_rewritten_as_runs() {
    let pg = Postgres::start().unwrap();
    let db = database(&pg, "gap_legacy", options()).await;
    let serial = Serial::new("RAE-LEGACY").unwrap();
    let id = SessionId::from_bytes([0x52; 16]);
    db.write(&[raw(&envelope(&serial, id, 1, snapshot(&record(2))))])
        .await
        .unwrap();
    // As the sink before migration 0002 left it: seqs 4, 5 and 7 received, 2, 3, 6 missing.
    sqlx::query(
        "UPDATE device_sessions SET pending_seqs = ARRAY[4, 5, 7]::INT8[], seq_hw = 7, \
         needs_resync = true WHERE session = $1",
    )
    .bind(*id.as_uuid())
    .execute(db.pool())
    .await
    .unwrap();
    for seq in [2, 3] {
        db.write(&[raw(&envelope(&serial, id, seq, seen(seq)))])
            .await
            .unwrap();
    }
    let stored = gap_record(&db, id).await;
    assert_eq!((stored.contiguous, stored.runs.clone()), (5, vec![7, 7]));
    assert!(
        stored.legacy.is_empty() && stored.needs_resync,
        "{stored:?}"
    );
    db.write(&[raw(&envelope(&serial, id, 6, seen(6)))])
        .await
        .unwrap();
    let closed = gap_record(&db, id).await;
    assert_eq!(closed.contiguous, 7);
    assert!(closed.runs.is_empty() && !closed.needs_resync, "{closed:?}");
}

// ---------------------------------------------------------------------------------------
// Permanent errors, through the writer.

async fn dead_letter_reasons(db: &Db) -> Vec<String> {
    sqlx::query_scalar("SELECT reason FROM dead_letters ORDER BY received_at")
        .fetch_all(db.pool())
        .await
        .unwrap()
}

async fn stored_sessions(db: &Db, serial: &Serial) -> BTreeSet<uuid::Uuid> {
    sqlx::query_scalar("SELECT session FROM device_sessions WHERE serial = $1")
        .bind(serial.as_str())
        .fetch_all(db.pool())
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn a_record_refused_permanently_is_isolated_dead_lettered_and_counted() {
    let pg = Postgres::start().unwrap();
    let db = database(&pg, "permanent", options()).await;
    sqlx::raw_sql(VENDOR_INDEX)
        .execute(db.pool())
        .await
        .unwrap();
    let serial = Serial::new("RAE-PERM").unwrap();
    let ids: Vec<SessionId> = (0..6)
        .map(|n| SessionId::from_bytes([0x60 + n; 16]))
        .collect();

    // Among others: isolated by halving, proven by the others committing, dead-lettered.
    let mut batch: Vec<Raw> = ids
        .iter()
        .map(|&id| raw(&envelope(&serial, id, 1, snapshot(&record(3)))))
        .collect();
    batch[2] = raw(&envelope(&serial, ids[2], 1, snapshot(&poisoned(3))));
    let outcome = db.write(&batch).await.expect("the batch goes through");
    assert_eq!(
        (
            outcome.applied,
            outcome.dead_lettered,
            outcome.permanent_rejections
        ),
        (5, 1, 1)
    );
    let stored = stored_sessions(&db, &serial).await;
    let want: BTreeSet<uuid::Uuid> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, id)| *id.as_uuid())
        .collect();
    assert_eq!(stored, want);
    let reasons = dead_letter_reasons(&db).await;
    assert_eq!(reasons.len(), 1);
    assert!(
        reasons[0].contains("device_sessions_by_vendor"),
        "{reasons:?}"
    );

    // Alone in its batch nothing proves the database healthy: it is retried, and
    // dead-lettered on its third failure in a row.
    let alone = [raw(&envelope(
        &serial,
        SessionId::from_bytes([0x70; 16]),
        1,
        snapshot(&poisoned(4)),
    ))];
    for attempt in 1..=2 {
        let err = db
            .write(&alone)
            .await
            .expect_err("not yet proven the record's fault");
        assert!(
            err.to_string().contains("device_sessions_by_vendor"),
            "{attempt}: {err}"
        );
        assert_eq!(dead_letter_reasons(&db).await.len(), 1, "attempt {attempt}");
    }
    let outcome = db.write(&alone).await.expect("third strike");
    assert_eq!(
        (outcome.dead_lettered, outcome.permanent_rejections),
        (1, 1)
    );
    assert_eq!(dead_letter_reasons(&db).await.len(), 2);

    // Two refused first, nothing committed yet: it looks like the database until the first
    // is convicted; then the others commit, which proves the second the record's fault too.
    let ids: Vec<SessionId> = (0..6)
        .map(|n| SessionId::from_bytes([0x78 + n; 16]))
        .collect();
    let mut batch: Vec<Raw> = ids
        .iter()
        .map(|&id| raw(&envelope(&serial, id, 1, snapshot(&record(6)))))
        .collect();
    batch[0] = raw(&envelope(&serial, ids[0], 1, snapshot(&poisoned(6))));
    batch[1] = raw(&envelope(&serial, ids[1], 1, snapshot(&poisoned(7))));
    for attempt in 1..=2 {
        let err = db
            .write(&batch)
            .await
            .expect_err("two refused, nothing committed");
        assert!(
            err.to_string().contains("nothing committed"),
            "{attempt}: {err}"
        );
    }
    let outcome = db.write(&batch).await.expect("the first is convicted");
    assert_eq!(
        (
            outcome.applied,
            outcome.dead_lettered,
            outcome.permanent_rejections
        ),
        (4, 2, 2)
    );
    assert_eq!(dead_letter_reasons(&db).await.len(), 4);
    let stored = stored_sessions(&db, &serial).await;
    assert!(ids[2..].iter().all(|id| stored.contains(id.as_uuid())));
    assert!(!stored.contains(ids[0].as_uuid()) && !stored.contains(ids[1].as_uuid()));
}

#[tokio::test]
async fn a_batch_the_database_refuses_whole_is_not_emptied_into_dead_letters() {
    let pg = Postgres::start().unwrap();
    let db = database(&pg, "permanent_whole", options()).await;
    let serial = Serial::new("RAE-SYSTEMIC").unwrap();
    // The database's fault, not the records': the table is gone.
    sqlx::raw_sql("DROP TABLE device_mdns_services, device_dial_apps, device_sessions")
        .execute(db.pool())
        .await
        .unwrap();
    let batch: Vec<Raw> = (0..8)
        .map(|n| {
            let id = SessionId::from_bytes([0x80 + n; 16]);
            raw(&envelope(&serial, id, 1, snapshot(&record(5))))
        })
        .collect();
    for attempt in 1..=5 {
        let err = db.write(&batch).await.expect_err("nothing can be written");
        assert!(
            err.to_string().contains("nothing committed"),
            "{attempt}: {err}"
        );
    }
    assert!(dead_letter_reasons(&db).await.is_empty());
}

// ---------------------------------------------------------------------------------------
// Permanent errors, through the binary on Kafka.

const TOPIC: &str = "rae.events";

fn committed(kafka: &Kafka, group: &str) -> i64 {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(TOPIC, 0);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets query failed");
    got.elements()
        .first()
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .unwrap_or(0)
}

async fn produce(kafka: &Kafka, records: &[Raw]) -> Vec<i64> {
    let producer: FutureProducer = kafka
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .expect("creating the producer");
    let mut offsets = Vec::new();
    for r in records {
        let key = r.topic.clone().unwrap_or_default();
        let record = FutureRecord::to(TOPIC)
            .key(&key)
            .payload(&r.payload)
            .partition(0);
        let delivery = tokio::time::timeout(WAIT, producer.send(record, WAIT))
            .await
            .expect("record not acknowledged in time")
            .unwrap_or_else(|(e, _)| panic!("record refused: {e}"));
        offsets.push(delivery.offset);
    }
    offsets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moves_on_past_a_record_the_database_refuses_permanently() {
    let kafka = Kafka::start().unwrap();
    let pg = Postgres::start().unwrap();
    let db = database(&pg, "permanent_kafka", options()).await;
    sqlx::raw_sql(VENDOR_INDEX)
        .execute(db.pool())
        .await
        .unwrap();
    kafka.create_topic(TOPIC, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let group = "sink-permanent";
    let flags = [
        "--batch-max-wait-ms=200",
        "--commit-interval-ms=200",
        "--write-retry-min-ms=100",
        "--write-retry-max-ms=400",
        "--db-acquire-timeout-ms=1000",
        "--db-max-attempts=5",
        "--db-permanent-strikes=3",
    ];
    let mut sink = Sink::start_kafka(&KafkaSinkSpec {
        name: "permanent".into(),
        dir: dir.path().to_path_buf(),
        brokers: kafka.bootstrap_servers(),
        topic: TOPIC.into(),
        group: group.into(),
        database_url: pg.url("permanent_kafka"),
        shutdown_deadline_secs: 10,
        extra: flags.iter().map(|s| s.to_string()).collect(),
    })
    .unwrap();
    sink.wait_ready(WAIT).unwrap();

    // The refused record first, alone in the partition, then the records behind it.
    let serial = Serial::new("RAE-PART").unwrap();
    let poison_id = SessionId::from_bytes([0x90; 16]);
    let later: Vec<SessionId> = (1..=20)
        .map(|n| SessionId::from_bytes([0x90 + n; 16]))
        .collect();
    let poison_offset = produce(
        &kafka,
        &[raw(&envelope(
            &serial,
            poison_id,
            1,
            snapshot(&poisoned(9)),
        ))],
    )
    .await[0];
    let records: Vec<Raw> = later
        .iter()
        .map(|&id| raw(&envelope(&serial, id, 1, snapshot(&record(9)))))
        .collect();
    let offsets = produce(&kafka, &records).await;
    let end = offsets.last().copied().unwrap_or(poison_offset) + 1;

    let want: BTreeSet<uuid::Uuid> = later.iter().map(|id| *id.as_uuid()).collect();
    wait_until(
        "the records behind the refused one are written",
        WAIT,
        || async {
            let got = stored_sessions(&db, &serial).await;
            (got == want)
                .then_some(())
                .ok_or(format!("{} of {} sessions", got.len(), want.len()))
        },
    )
    .await;
    let letters: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT kafka_partition, kafka_offset, reason FROM dead_letters")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].0, letters[0].1), (0, poison_offset));
    assert!(
        letters[0].2.contains("device_sessions_by_vendor"),
        "{letters:?}"
    );
    wait_until(
        "the partition's offsets committed to its end",
        WAIT,
        || async {
            let at = committed(&kafka, group);
            (at == end)
                .then_some(())
                .ok_or(format!("committed {at}, end {end}"))
        },
    )
    .await;
    let metrics = sink.metrics().expect("reading /metrics");
    assert_eq!(sum(&metrics, "cloud_sink_permanent_rejections_total"), 1.0);
    assert_eq!(sum(&metrics, "cloud_sink_dead_letters_total"), 1.0);
    let log = sink.log_tail();
    assert!(
        log.contains("refused a record permanently"),
        "no log line for the dead letter: {log}"
    );
    let (status, _) = sink.terminate(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "SIGTERM exit status {status}");
}
