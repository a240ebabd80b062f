//! The `cloud-sink` binary end to end: real Kafka (KRaft), real PostgreSQL at SERIALIZABLE,
//! the sink started as an operator starts it (flags plus `CLOUD_SINK_*` environment) and
//! observed through `/metrics`, `/readyz`, the database and the group's committed offsets.
//!
//! The expected database state is computed here by folding the same events in seq order
//! (per field, the value of the highest-seq event that carried it), independently of the
//! sink's SQL.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rae_proto::{DeviceRecord, Envelope, Event, Evidence, Field, Mac, Serial, SessionId, Text};
use rae_tests::services::{Kafka, Postgres};
use rae_tests::sink::{sum, KafkaSinkSpec, Sink};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use uuid::Uuid;

const TOPIC: &str = "rae.events";
const PARTITIONS: i32 = 12;
const WAIT: Duration = Duration::from_secs(120);
const SHUTDOWN_DEADLINE_SECS: u64 = 10;

/// A deterministic generator (splitmix64): the same run every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The fields this test checks, as one event sets them (`None`: the event does not carry it).
#[derive(Clone, Debug, Default)]
struct Carried {
    ipv4: Option<Option<String>>,
    hostname: Option<Option<Vec<u8>>>,
    last_seen_ms: Option<i64>,
}

/// One produced event.
#[derive(Clone, Debug)]
struct Ev {
    session: Uuid,
    seq: u64,
    key: String,
    payload: Vec<u8>,
    carried: Carried,
}

/// The columns compared with `device_sessions`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row3 {
    ipv4: Option<String>,
    hostname: Option<Vec<u8>>,
    last_seen_ms: Option<i64>,
    seq_hw: i64,
}

fn session_id(i: u64) -> Uuid {
    Uuid::from_u128(0x5e55_0000_0000_4000_8000_0000_0000_0000 | u128::from(i))
}

fn event(i: u64, seq: u64, rng: &mut Rng) -> Ev {
    let session = session_id(i);
    let ipv4 = format!("198.18.{}.{}", seq % 256, i % 256);
    let hostname = format!("dut-{i}-{seq}");
    let last_seen_ms = 1_700_000_000_000 + (seq as i64) * 1000;
    let (event, carried) = if seq == 1 || seq % 17 == 0 {
        let b = i.to_be_bytes();
        let mut record = DeviceRecord::new(
            Mac([0x02, 0, b[4], b[5], b[6], b[7]]),
            Evidence::DhcpRequest,
            last_seen_ms,
        );
        record.ipv4 = Some(ipv4.parse().unwrap());
        record.hostname = Some(Text::from(hostname.clone()));
        record.last_seen_ms = last_seen_ms;
        let carried = Carried {
            ipv4: Some(Some(ipv4)),
            hostname: Some(Some(hostname.into_bytes())),
            last_seen_ms: Some(last_seen_ms),
        };
        let record = Box::new(record);
        (Event::Snapshot { record }, carried)
    } else {
        let mut fields = Vec::new();
        let mut carried = Carried::default();
        if rng.chance(35) {
            fields.push(Field::Ipv4(Some(ipv4.parse().unwrap())));
            carried.ipv4 = Some(Some(ipv4));
        }
        if rng.chance(10) {
            fields.push(Field::Hostname(None));
            carried.hostname = Some(None);
        } else if rng.chance(30) {
            fields.push(Field::Hostname(Some(Text::from(hostname.clone()))));
            carried.hostname = Some(Some(hostname.into_bytes()));
        }
        if fields.is_empty() || rng.chance(50) {
            fields.push(Field::LastSeen(last_seen_ms));
            carried.last_seen_ms = Some(last_seen_ms);
        }
        (Event::Delta { fields }, carried)
    };
    let envelope = Envelope {
        serial: Serial::new(format!("RAE-{}", i % 40)).unwrap(),
        session: SessionId::from(session),
        seq,
        at_ms: last_seen_ms,
        event,
    };
    Ev {
        session,
        seq,
        key: envelope.topic().to_string(),
        payload: envelope.encode().unwrap(),
        carried,
    }
}

/// Events `seqs` of sessions `0..sessions`, in rounds (every session's seq k before any
/// seq k+1), with `dup_percent` of them sent again right away or some rounds later.
fn plan(
    sessions: u64,
    seqs: std::ops::RangeInclusive<u64>,
    dup_percent: u64,
    seed: u64,
) -> Vec<Ev> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut later: Vec<Ev> = Vec::new();
    for seq in seqs {
        // Duplicates held back from earlier rounds go out now, behind newer events.
        out.append(&mut later);
        for i in 0..sessions {
            let ev = event(i, seq, &mut rng);
            if rng.chance(dup_percent) {
                if rng.chance(50) {
                    out.push(ev.clone());
                } else {
                    later.push(ev.clone());
                }
            }
            out.push(ev);
        }
    }
    out.append(&mut later);
    out
}

/// The fold: per session, in seq order, each field from the highest seq that carried it.
fn expected<'a>(events: impl IntoIterator<Item = &'a Ev>) -> BTreeMap<Uuid, Row3> {
    let mut by_session: BTreeMap<Uuid, BTreeMap<u64, &Ev>> = BTreeMap::new();
    for ev in events {
        by_session.entry(ev.session).or_default().insert(ev.seq, ev);
    }
    by_session
        .into_iter()
        .map(|(session, evs)| {
            let mut row = Row3 {
                ipv4: None,
                hostname: None,
                last_seen_ms: None,
                seq_hw: 0,
            };
            for (seq, ev) in evs {
                if let Some(v) = &ev.carried.ipv4 {
                    row.ipv4 = v.clone();
                }
                if let Some(v) = &ev.carried.hostname {
                    row.hostname = v.clone();
                }
                if let Some(v) = ev.carried.last_seen_ms {
                    row.last_seen_ms = Some(v);
                }
                row.seq_hw = seq as i64;
            }
            (session, row)
        })
        .collect()
}

async fn stored(url: &str) -> BTreeMap<Uuid, Row3> {
    let pool = pool(url).await;
    let rows =
        sqlx::query("SELECT session, ipv4, hostname, last_seen_ms, seq_hw FROM device_sessions")
            .fetch_all(&pool)
            .await
            .expect("reading device_sessions");
    pool.close().await;
    rows.into_iter()
        .map(|r| {
            (
                r.get("session"),
                Row3 {
                    ipv4: r.get("ipv4"),
                    hostname: r.get("hostname"),
                    last_seen_ms: r.get("last_seen_ms"),
                    seq_hw: r.get("seq_hw"),
                },
            )
        })
        .collect()
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("test connection to PostgreSQL")
}

fn assert_state(want: &BTreeMap<Uuid, Row3>, got: &BTreeMap<Uuid, Row3>, what: &str) {
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(3)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(3)
        .collect();
    let wrong: Vec<_> = want
        .iter()
        .filter_map(|(k, w)| got.get(k).filter(|g| *g != w).map(|g| (k, w, g)))
        .take(3)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && wrong.is_empty(),
        "{what}: {} sessions expected, {} stored; missing {missing:?}; unexpected {extra:?}; \
         differing (session, expected, stored) {wrong:?}",
        want.len(),
        got.len()
    );
}

/// Where each record landed.
type Placed = Vec<(i32, i64)>;

fn producer(kafka: &Kafka) -> FutureProducer {
    kafka
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("creating the producer")
}

/// Produces `records` (key, payload, partition) and returns where each landed.
async fn produce(kafka: &Kafka, records: Vec<(String, Vec<u8>, Option<i32>)>) -> Placed {
    let producer = producer(kafka);
    let mut deliveries = Vec::with_capacity(records.len());
    for (key, payload, partition) in &records {
        let mut record = FutureRecord::to(TOPIC).key(key).payload(payload);
        if let Some(p) = partition {
            record = record.partition(*p);
        }
        let delivery = producer
            .send_result(record)
            .unwrap_or_else(|(e, _)| panic!("record for {key} not enqueued: {e}"));
        deliveries.push(delivery);
    }
    let mut placed = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        let d = tokio::time::timeout(WAIT, delivery)
            .await
            .expect("record not acknowledged in time")
            .expect("producer dropped the delivery")
            .unwrap_or_else(|(e, _)| panic!("record refused: {e}"));
        placed.push((d.partition, d.offset));
    }
    placed
}

fn records(events: &[Ev]) -> Vec<(String, Vec<u8>, Option<i32>)> {
    events
        .iter()
        .map(|e| (e.key.clone(), e.payload.clone(), None))
        .collect()
}

/// One undecodable record per partition, with a well-formed key.
fn poison() -> Vec<(String, Vec<u8>, Option<i32>)> {
    (0..PARTITIONS)
        .map(|p| {
            let session = Uuid::from_u128(0xdead_0000_0000_4000_8000_0000_0000_0000 | p as u128);
            let key = format!("rae/v1/RAE-poison/devices/{session}");
            (key, vec![0xff, 0x13, 0x37, p as u8], Some(p))
        })
        .collect()
}

fn committed(kafka: &Kafka, group: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets query failed");
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => (e.partition(), o),
            _ => (e.partition(), 0),
        })
        .collect()
}

fn high_watermarks(kafka: &Kafka) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = kafka.client_config().create().unwrap();
    (0..PARTITIONS)
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
                .expect("watermark query failed");
            (p, high)
        })
        .collect()
}

async fn wait_for<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not reached within {within:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The group's lag is 0 in Kafka (committed offsets at the high watermarks) and in the
/// sink's own `/metrics` (every partition's lag gauge).
async fn wait_lag_zero(kafka: &Kafka, group: &str, sink: &Sink) {
    let end = high_watermarks(kafka);
    wait_for(
        "committed offsets at the end of every partition",
        WAIT,
        || {
            let got = committed(kafka, group);
            (got == end)
                .then_some(())
                .ok_or(format!("committed {got:?}, end {end:?}"))
        },
    )
    .await;
    wait_for(
        "/metrics shows lag 0 on every assigned partition",
        Duration::from_secs(30),
        || {
            let m = sink.metrics().map_err(|e| e.to_string())?;
            let lags: Vec<_> = m
                .iter()
                .filter(|(k, _)| k.starts_with("cloud_sink_kafka_partition_lag{"))
                .collect();
            let assigned = sum(&m, "cloud_sink_kafka_assigned_partitions") as usize;
            if lags.len() == assigned && assigned > 0 && lags.iter().all(|(_, v)| **v == 0.0) {
                Ok(())
            } else {
                Err(format!("{assigned} assigned, lag gauges {lags:?}"))
            }
        },
    )
    .await;
}

fn spec(kafka: &Kafka, url: &str, dir: &std::path::Path, name: &str, group: &str) -> KafkaSinkSpec {
    let flags = [
        "--batch-max-wait-ms=200",
        "--commit-interval-ms=200",
        "--statistics-interval-ms=500",
        "--channel-capacity=500",
        "--prefetch-kbytes=2048",
        "--write-retry-min-ms=100",
        "--write-retry-max-ms=1000",
        "--db-acquire-timeout-ms=1000",
        "--db-max-attempts=5",
        "--librdkafka=session.timeout.ms=6000",
        "--librdkafka=heartbeat.interval.ms=500",
    ];
    KafkaSinkSpec {
        name: name.into(),
        dir: dir.to_path_buf(),
        brokers: kafka.bootstrap_servers(),
        topic: TOPIC.into(),
        group: group.into(),
        database_url: url.into(),
        shutdown_deadline_secs: SHUTDOWN_DEADLINE_SECS,
        extra: flags.iter().map(|s| s.to_string()).collect(),
    }
}

fn applied(sink: &Sink) -> f64 {
    sink.metrics()
        .map(|m| sum(&m, "cloud_sink_records_applied_total"))
        .unwrap_or(0.0)
}

async fn dead_letters(url: &str) -> Vec<(i64, i64, String)> {
    let pool = pool(url).await;
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT kafka_partition, kafka_offset, reason FROM dead_letters ORDER BY kafka_partition",
    )
    .fetch_all(&pool)
    .await
    .expect("reading dead_letters");
    pool.close().await;
    rows
}

/// `--log-format json`: every line is one JSON object with a level and a message.
fn assert_json_log(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).expect("reading the sink's log");
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(value["level"].is_string(), "log line without level: {line}");
        lines += 1;
    }
    assert!(lines > 0, "the sink logged nothing to {}", path.display());
}

/// 100,000 events of 2,000 sessions over 12 partitions with duplicates and one poison
/// record per partition; a SIGTERM mid-burst (exit within the deadline, committed offsets
/// exactly what was written), a SIGKILL mid-stream, then a restart that converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_duplicates_and_poison_survives_sigterm_and_sigkill() {
    const SESSIONS: u64 = 2000;
    let started = Instant::now();
    let kafka = Kafka::start().unwrap();
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("sink_stream").await.unwrap();
    kafka.create_topic(TOPIC, PARTITIONS).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let group = "sink-stream";

    // Seqs 1..=30 first, with the poison records among them; 31..=50 later.
    let first = plan(SESSIONS, 1..=30, 3, 1);
    let second = plan(SESSIONS, 31..=50, 3, 2);
    let mut batch = records(&first[..first.len() / 2]);
    batch.extend(poison());
    batch.extend(records(&first[first.len() / 2..]));
    let placed_first = produce(&kafka, batch).await;
    let (mut placed_events, placed_poison) = {
        let half = first.len() / 2;
        let poison: Placed = placed_first[half..half + PARTITIONS as usize].to_vec();
        let mut events: Placed = placed_first[..half].to_vec();
        events.extend_from_slice(&placed_first[half + PARTITIONS as usize..]);
        (events, poison)
    };
    eprintln!(
        "produced {} records in {:?}",
        placed_first.len(),
        started.elapsed()
    );

    // SIGTERM while the sink is in the middle of the burst.
    let mut sink = Sink::start_kafka(&spec(&kafka, &url, dir.path(), "first", group)).unwrap();
    sink.wait_ready(WAIT).unwrap();
    wait_for("the first sink applied 15,000 records", WAIT, || {
        let n = applied(&sink);
        (n >= 15_000.0).then_some(()).ok_or(format!("{n} applied"))
    })
    .await;
    let (status, took) = sink
        .terminate(Duration::from_secs(SHUTDOWN_DEADLINE_SECS + 5))
        .unwrap();
    assert!(status.success(), "SIGTERM exit status {status}");
    assert!(
        took <= Duration::from_secs(SHUTDOWN_DEADLINE_SECS),
        "SIGTERM took {took:?}, deadline {SHUTDOWN_DEADLINE_SECS} s"
    );
    eprintln!("SIGTERM: exited in {took:?}");
    let cut = committed(&kafka, group);
    let before_cut = |(p, o): &(i32, i64)| *o < cut.get(p).copied().unwrap_or(0);
    let written: Vec<&Ev> = first
        .iter()
        .zip(&placed_events)
        .filter(|(_, at)| before_cut(at))
        .map(|(e, _)| e)
        .collect();
    assert!(
        written.len() < first.len(),
        "the SIGTERM came after the whole burst was written; the test proves nothing"
    );
    assert_state(
        &expected(written.iter().copied()),
        &stored(&url).await,
        "after SIGTERM, the database holds exactly the records below the committed offsets",
    );
    let poison_written = placed_poison.iter().filter(|at| before_cut(at)).count();
    assert_eq!(
        dead_letters(&url).await.len(),
        poison_written,
        "dead letters below the cut"
    );

    // SIGKILL mid-stream, while more events arrive.
    let mut sink = Sink::start_kafka(&spec(&kafka, &url, dir.path(), "second", group)).unwrap();
    sink.wait_ready(WAIT).unwrap();
    let base = applied(&sink);
    let placed_second = produce(&kafka, records(&second)).await;
    wait_for("the second sink applied 20,000 more records", WAIT, || {
        let n = applied(&sink) - base;
        (n >= 20_000.0).then_some(()).ok_or(format!("{n} applied"))
    })
    .await;
    sink.kill().unwrap();
    placed_events.extend(placed_second);

    // A fresh instance finishes the job.
    let sink = Sink::start_kafka(&spec(&kafka, &url, dir.path(), "third", group)).unwrap();
    wait_lag_zero(&kafka, group, &sink).await;
    let all: Vec<&Ev> = first.iter().chain(&second).collect();
    assert_eq!(all.len(), placed_events.len());
    let want = expected(all.iter().copied());
    assert_eq!(want.len(), SESSIONS as usize);
    assert_state(&want, &stored(&url).await, "after SIGKILL and restart");
    let letters = dead_letters(&url).await;
    let partitions: BTreeSet<i64> = letters.iter().map(|(p, _, _)| *p).collect();
    assert_eq!(
        letters.len(),
        PARTITIONS as usize,
        "one dead letter per poison record: {letters:?}"
    );
    assert_eq!(partitions, (0..PARTITIONS as i64).collect(), "{letters:?}");
    for (p, offset, reason) in &letters {
        assert_eq!(
            (*p as i32, *offset),
            placed_poison[*p as usize],
            "dead letter position"
        );
        assert!(
            !reason.trim().is_empty(),
            "dead letter of partition {p} has no reason"
        );
    }
    let m = sink.metrics().unwrap();
    assert!(
        sum(&m, "cloud_sink_batch_records_count") > 0.0,
        "batch size histogram empty"
    );
    assert!(
        sum(&m, "cloud_sink_batch_write_seconds_count") > 0.0,
        "latency histogram empty"
    );
    let log = sink.log_path().to_path_buf();
    let (status, _) = sink
        .terminate(Duration::from_secs(SHUTDOWN_DEADLINE_SECS + 5))
        .unwrap();
    assert!(status.success(), "final SIGTERM exit status {status}");
    assert_json_log(&log);
    eprintln!(
        "total events {}, test took {:?}",
        all.len(),
        started.elapsed()
    );
}

/// Two members of one group; one is killed and the other takes over its partitions. Then
/// PostgreSQL is stopped for 30 s under load: the sink reports not ready, retries, keeps
/// its memory flat, and resumes with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_takes_over_and_the_sink_rides_out_a_database_outage() {
    const SESSIONS: u64 = 400;
    let started = Instant::now();
    let kafka = Kafka::start().unwrap();
    let mut pg = Postgres::start().unwrap();
    let url = pg.create_database("sink_group").await.unwrap();
    kafka.create_topic(TOPIC, PARTITIONS).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let group = "sink-group";

    let a = plan(SESSIONS, 1..=20, 3, 3);
    let b = plan(SESSIONS, 21..=30, 3, 4);
    let c = plan(SESSIONS, 31..=60, 3, 5);
    let mut one = Sink::start_kafka(&spec(&kafka, &url, dir.path(), "one", group)).unwrap();
    one.wait_ready(WAIT).unwrap();
    let two = Sink::start_kafka(&spec(&kafka, &url, dir.path(), "two", group)).unwrap();
    let assigned = |s: &Sink| {
        s.metrics()
            .map(|m| sum(&m, "cloud_sink_kafka_assigned_partitions"))
            .unwrap_or(0.0)
    };
    wait_for("both members hold partitions", WAIT, || {
        let (x, y) = (assigned(&one), assigned(&two));
        (x > 0.0 && y > 0.0 && x + y == PARTITIONS as f64)
            .then_some(())
            .ok_or(format!("{x} + {y} partitions"))
    })
    .await;
    produce(&kafka, records(&a)).await;
    wait_for("the first member applied records", WAIT, || {
        let n = applied(&one);
        (n > 0.0).then_some(()).ok_or(format!("{n} applied"))
    })
    .await;
    one.ensure_running().unwrap();
    one.kill().unwrap();
    wait_for("the survivor holds every partition", WAIT, || {
        let n = assigned(&two);
        (n == PARTITIONS as f64)
            .then_some(())
            .ok_or(format!("{n} partitions"))
    })
    .await;
    produce(&kafka, records(&b)).await;
    wait_lag_zero(&kafka, group, &two).await;
    let ab: Vec<&Ev> = a.iter().chain(&b).collect();
    assert_state(
        &expected(ab.iter().copied()),
        &stored(&url).await,
        "after the takeover",
    );
    eprintln!("takeover verified at {:?}", started.elapsed());

    // The outage: stop PostgreSQL, push a burst, watch memory and readiness for 30 s.
    wait_for("the sink ready before the outage", WAIT, || {
        match two.get("/readyz") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let rss_before = two.rss_kib().unwrap();
    let retries_before = two
        .metrics()
        .map(|m| sum(&m, "cloud_sink_write_retries_total"))
        .unwrap();
    tokio::task::block_in_place(|| pg.stop()).unwrap();
    let outage = Instant::now();
    produce(&kafka, records(&c)).await;
    let (mut rss_max, mut saw_unready, mut healthy) = (rss_before, false, true);
    while outage.elapsed() < Duration::from_secs(30) {
        rss_max = rss_max.max(two.rss_kib().unwrap());
        if let Ok((status, _)) = two.get("/readyz") {
            saw_unready |= status == 503;
        }
        healthy &= matches!(two.get("/healthz"), Ok((200, _)));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::task::block_in_place(|| pg.start_again()).unwrap();
    eprintln!("RSS before the outage {rss_before} KiB, peak during it {rss_max} KiB");
    assert!(saw_unready, "/readyz never reported the database outage");
    assert!(
        healthy,
        "/healthz failed during the database outage (the sink must not be restarted for it)"
    );
    let bound = rss_before * 3 / 2 + 32 * 1024;
    assert!(
        rss_max <= bound,
        "RSS grew from {rss_before} KiB to {rss_max} KiB during the outage (bound {bound} KiB)"
    );
    wait_lag_zero(&kafka, group, &two).await;
    let all: Vec<&Ev> = a.iter().chain(&b).chain(&c).collect();
    assert_state(
        &expected(all.iter().copied()),
        &stored(&url).await,
        "after the outage",
    );
    let m = two.metrics().unwrap();
    assert!(
        sum(&m, "cloud_sink_write_retries_total") > retries_before
            || sum(&m, "cloud_sink_write_failures_total") > 0.0,
        "no retries were counted during the outage"
    );
    let (status, took) = two
        .terminate(Duration::from_secs(SHUTDOWN_DEADLINE_SECS + 5))
        .unwrap();
    assert!(status.success(), "exit status {status}");
    eprintln!("shutdown {took:?}; test took {:?}", started.elapsed());
}
