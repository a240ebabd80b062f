//! cloud-sink's Kafka source against a real Kafka (KRaft): every record reaches the writer
//! in per-key order, offsets are committed only for what the writer acknowledged, and
//! back-pressure, failing writers, a second group member, shutdown, a fenced member and a
//! killed static member behave.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloud_sink::record::{BatchWriter, Origin, Raw, WriteError, WriteOutcome};
use cloud_sink::source::kafka::{self, KafkaMetrics, KafkaSourceConfig};
use rae_tests::services::{Kafka, Postgres};
use rae_tests::sink::{sum, KafkaSinkSpec, Sink};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);

/// One record as the writer saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    key: String,
    seq: u32,
    partition: i32,
    offset: i64,
}

/// The in-memory writer: records acknowledged batches, can be told to fail or be slow.
#[derive(Default)]
struct TestWriter {
    acked: Mutex<Vec<Seen>>,
    failing: AtomicBool,
    failures: AtomicUsize,
    delay: Mutex<Duration>,
}

impl TestWriter {
    fn slow(delay: Duration) -> Arc<TestWriter> {
        let w = TestWriter::default();
        *w.delay.lock().unwrap() = delay;
        Arc::new(w)
    }

    fn acked(&self) -> Vec<Seen> {
        self.acked.lock().unwrap().clone()
    }

    fn acked_len(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

impl BatchWriter for TestWriter {
    async fn write(&self, batch: &[Raw]) -> Result<WriteOutcome, WriteError> {
        if self.failing.load(Ordering::SeqCst) {
            let attempts = self.failures.fetch_add(1, Ordering::SeqCst) + 1;
            return Err(WriteError::Unavailable {
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                message: "test writer told to fail".into(),
            });
        }
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let seen: Vec<Seen> = batch.iter().map(decode).collect();
        self.acked.lock().unwrap().extend(seen);
        Ok(WriteOutcome {
            applied: batch.len(),
            ..Default::default()
        })
    }
}

fn decode(raw: &Raw) -> Seen {
    let key = raw.topic.clone().expect("record without key");
    let payload = String::from_utf8(raw.payload.clone()).expect("payload not UTF-8");
    let (payload_key, seq) = payload.rsplit_once('#').expect("payload without #seq");
    assert_eq!(payload_key, key, "payload of another key");
    let Origin::Kafka {
        partition, offset, ..
    } = raw.origin
    else {
        panic!("record not from Kafka: {:?}", raw.origin)
    };
    Seen {
        key,
        seq: seq.parse().expect("seq not a number"),
        partition,
        offset,
    }
}

fn key(i: usize) -> String {
    format!(
        "rae/v1/RAE-{}/devices/00000000-0000-4000-8000-{i:012}",
        i % 3
    )
}

/// Produces `per_key` records for each of `keys` keys, interleaved, `key#seq` as payload,
/// and waits for every acknowledgement.
async fn produce(kafka: &Kafka, topic: &str, keys: usize, seqs: std::ops::Range<u32>) {
    let producer: FutureProducer = kafka
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for seq in seqs {
        for k in 0..keys {
            let key = key(k);
            let payload = format!("{key}#{seq}");
            let delivery = producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&payload))
                .unwrap_or_else(|(e, _)| panic!("record {payload} not enqueued: {e}"));
            deliveries.push(delivery);
        }
    }
    for delivery in deliveries {
        tokio::time::timeout(WAIT, delivery)
            .await
            .expect("record not acknowledged in time")
            .expect("producer dropped the delivery")
            .unwrap_or_else(|(e, _)| panic!("record refused: {e}"));
    }
}

fn config(kafka: &Kafka, topic: &str, group: &str) -> KafkaSourceConfig {
    let mut c = KafkaSourceConfig {
        brokers: kafka.bootstrap_servers(),
        group_id: group.into(),
        topics: vec![topic.into()],
        batch_max_wait_ms: 100,
        commit_interval_ms: 200,
        statistics_interval_ms: 1000,
        write_retry_min_ms: 50,
        write_retry_max_ms: 200,
        ..Default::default()
    };
    c.librdkafka
        .insert("session.timeout.ms".into(), "6000".into());
    c.librdkafka
        .insert("heartbeat.interval.ms".into(), "500".into());
    c
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), kafka::SourceError>>,
    metrics: Arc<KafkaMetrics>,
}

impl Running {
    fn start(config: KafkaSourceConfig, writer: Arc<TestWriter>) -> Running {
        let metrics = Arc::new(KafkaMetrics::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(kafka::run(config, writer, metrics.clone(), async move {
            let _ = stopped.await;
        }));
        Running {
            stop: Some(stop),
            task,
            metrics,
        }
    }

    /// Signals shutdown and returns how long `run` took to return.
    async fn shutdown(mut self) -> Duration {
        let started = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("source did not stop")
            .expect("source task panicked")
            .expect("source ended with an error");
        started.elapsed()
    }
}

/// Polls `check` until it returns `Ok`, failing with its last message after `within`.
async fn wait_until<T>(
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
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Per partition, the group's committed next offset (`None`: nothing committed).
fn committed(
    kafka: &Kafka,
    topic: &str,
    group: &str,
    partitions: i32,
) -> BTreeMap<i32, Option<i64>> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets query failed");
    got.elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), offset)
        })
        .collect()
}

fn high_watermarks(kafka: &Kafka, topic: &str, partitions: i32) -> BTreeMap<i32, Option<i64>> {
    let consumer: BaseConsumer = kafka.client_config().create().unwrap();
    (0..partitions)
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermark query failed");
            (p, (high > 0).then_some(high))
        })
        .collect()
}

async fn wait_committed_to_end(kafka: &Kafka, topic: &str, group: &str, partitions: i32) {
    let end = high_watermarks(kafka, topic, partitions);
    wait_until(
        "committed offsets reach the end of every partition",
        WAIT,
        || {
            let got = committed(kafka, topic, group, partitions);
            if got == end {
                Ok(())
            } else {
                Err(format!("committed {got:?}, end {end:?}"))
            }
        },
    )
    .await;
}

/// Every key's records in the order one consumer saw them must be strictly increasing.
fn assert_per_key_order(seen: &[Seen], who: &str) {
    let mut last: HashMap<&str, u32> = HashMap::new();
    for s in seen {
        if let Some(prev) = last.insert(&s.key, s.seq) {
            assert!(
                s.seq > prev,
                "{who}: key {} went from seq {prev} to {} (offset {})",
                s.key,
                s.seq,
                s.offset
            );
        }
    }
}

/// Every (key, seq) of `keys` x `seqs` is present.
fn assert_complete(seen: &[Seen], keys: usize, seqs: u32) {
    let mut by_key: HashMap<&str, Vec<u32>> = HashMap::new();
    for s in seen {
        by_key.entry(&s.key).or_default().push(s.seq);
    }
    for k in 0..keys {
        let key = key(k);
        let mut got = by_key.get(key.as_str()).cloned().unwrap_or_default();
        got.sort_unstable();
        got.dedup();
        assert_eq!(got, (0..seqs).collect::<Vec<_>>(), "records of {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_the_writer_once_in_key_order_and_is_committed() {
    const PARTITIONS: i32 = 4;
    const KEYS: usize = 24;
    const SEQS: u32 = 50;
    let kafka = Kafka::start().unwrap();
    kafka.create_topic("rae.events", PARTITIONS).await.unwrap();
    produce(&kafka, "rae.events", KEYS, 0..SEQS).await;

    let writer = Arc::new(TestWriter::default());
    let source = Running::start(config(&kafka, "rae.events", "sink-once"), writer.clone());
    let total = KEYS * SEQS as usize;
    wait_until("the writer acknowledged every record", WAIT, || {
        let n = writer.acked_len();
        (n >= total).then_some(()).ok_or(format!("{n} of {total}"))
    })
    .await;
    wait_committed_to_end(&kafka, "rae.events", "sink-once", PARTITIONS).await;
    let metrics = source.metrics.snapshot();
    source.shutdown().await;

    let seen = writer.acked();
    assert_eq!(seen.len(), total, "every record exactly once");
    assert_per_key_order(&seen, "the consumer");
    assert_complete(&seen, KEYS, SEQS);
    let mut partitions_by_key: HashMap<&str, i32> = HashMap::new();
    for s in &seen {
        let p = *partitions_by_key.entry(&s.key).or_insert(s.partition);
        assert_eq!(p, s.partition, "key {} in two partitions", s.key);
    }
    assert_eq!(metrics.records_received, total as u64);
    assert_eq!(metrics.records_applied, total as u64);
    assert_eq!(metrics.in_flight, 0);
    assert!(metrics.commits > 0);
    assert_eq!(metrics.partitions_assigned, PARTITIONS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_committed_while_the_writer_fails_and_nothing_is_lost() {
    const PARTITIONS: i32 = 2;
    const KEYS: usize = 6;
    const SEQS: u32 = 30;
    const FAILURES: usize = 6;
    let kafka = Kafka::start().unwrap();
    kafka.create_topic("rae.failing", PARTITIONS).await.unwrap();
    produce(&kafka, "rae.failing", KEYS, 0..SEQS).await;

    let writer = Arc::new(TestWriter::default());
    writer.failing.store(true, Ordering::SeqCst);
    let source = Running::start(config(&kafka, "rae.failing", "sink-fail"), writer.clone());
    wait_until("the writer failed enough times", WAIT, || {
        let n = writer.failures.load(Ordering::SeqCst);
        (n >= FAILURES).then_some(()).ok_or(format!("{n} failures"))
    })
    .await;
    // Longer than the commit interval: a wrong commit would have gone out by now.
    let quiet_until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < quiet_until {
        let got = committed(&kafka, "rae.failing", "sink-fail", PARTITIONS);
        assert!(
            got.values().all(Option::is_none),
            "offsets committed while the writer failed: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(writer.acked_len(), 0);
    writer.failing.store(false, Ordering::SeqCst);

    let total = KEYS * SEQS as usize;
    wait_until("the writer acknowledged every record", WAIT, || {
        let n = writer.acked_len();
        (n >= total).then_some(()).ok_or(format!("{n} of {total}"))
    })
    .await;
    wait_committed_to_end(&kafka, "rae.failing", "sink-fail", PARTITIONS).await;
    let metrics = source.metrics.snapshot();
    source.shutdown().await;
    let seen = writer.acked();
    assert_eq!(seen.len(), total, "every record exactly once");
    assert_per_key_order(&seen, "the consumer");
    assert_complete(&seen, KEYS, SEQS);
    assert!(metrics.write_failures >= FAILURES as u64, "{metrics:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_writer_holds_records_back_in_the_bounded_prefetch_without_pausing() {
    const PARTITIONS: i32 = 2;
    const KEYS: usize = 8;
    const SEQS: u32 = 100;
    const BATCH: usize = 10;
    const PREFETCH: u32 = 10;
    let kafka = Kafka::start().unwrap();
    kafka.create_topic("rae.slow", PARTITIONS).await.unwrap();
    produce(&kafka, "rae.slow", KEYS, 0..SEQS).await;

    let writer = TestWriter::slow(Duration::from_millis(15));
    let mut c = config(&kafka, "rae.slow", "sink-slow");
    c.batch_max_records = BATCH;
    c.prefetch_messages = PREFETCH;
    c.prefetch_kbytes = 64;
    let started = Instant::now();
    let source = Running::start(c, writer.clone());
    let total = KEYS * SEQS as usize;
    wait_until("the writer acknowledged every record", WAIT, || {
        let n = writer.acked_len();
        (n >= total).then_some(()).ok_or(format!("{n} of {total}"))
    })
    .await;
    wait_committed_to_end(&kafka, "rae.slow", "sink-slow", PARTITIONS).await;
    let metrics = source.metrics.snapshot();
    source.shutdown().await;

    let seen = writer.acked();
    assert_eq!(seen.len(), total, "every record exactly once");
    assert_per_key_order(&seen, "the consumer");
    assert_complete(&seen, KEYS, SEQS);
    eprintln!("slow writer: {:?} {metrics:?}", started.elapsed());
    // Back-pressure is not polling: nothing is paused (a pause purges the prefetch), a
    // worker never holds more than one batch, the rest waits in librdkafka's bounded
    // prefetch.
    assert_eq!(metrics.pauses, 0, "{metrics:?}");
    assert!(
        metrics.buffered_high_water <= BATCH as u64,
        "a partition held {} records, more than a batch of {BATCH}",
        metrics.buffered_high_water
    );
    // Under load the batches fill: far fewer writes than records.
    assert!(
        metrics.batches_written <= (total / 2) as u64,
        "{} writes for {total} records",
        metrics.batches_written
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_member_takes_over_when_the_first_stops() {
    const PARTITIONS: i32 = 4;
    const KEYS: usize = 16;
    const SEQS: u32 = 120;
    let kafka = Kafka::start().unwrap();
    kafka.create_topic("rae.group", PARTITIONS).await.unwrap();
    produce(&kafka, "rae.group", KEYS, 0..SEQS / 2).await;

    let (first_writer, second_writer) = (
        TestWriter::slow(Duration::from_millis(50)),
        TestWriter::slow(Duration::from_millis(10)),
    );
    let mut c = config(&kafka, "rae.group", "sink-group");
    c.batch_max_records = 20;
    let first = Running::start(c.clone(), first_writer.clone());
    wait_until("the first member writes records", WAIT, || {
        let n = first_writer.acked_len();
        (n > 0).then_some(()).ok_or(format!("{n} records"))
    })
    .await;
    let second = Running::start(c, second_writer.clone());
    let second_metrics = second.metrics.clone();
    wait_until("the second member is assigned partitions", WAIT, || {
        let m = second_metrics.snapshot();
        (!m.partitions.is_empty())
            .then_some(())
            .ok_or(format!("{m:?}"))
    })
    .await;
    let stopped_in = first.shutdown().await;
    eprintln!("first member stopped in {stopped_in:?}");
    produce(&kafka, "rae.group", KEYS, SEQS / 2..SEQS).await;

    let total = KEYS * SEQS as usize;
    wait_until(
        "the two members together acknowledged every record",
        WAIT,
        || {
            let mut all = first_writer.acked();
            all.extend(second_writer.acked());
            let mut distinct: Vec<(String, u32)> =
                all.into_iter().map(|s| (s.key, s.seq)).collect();
            distinct.sort();
            distinct.dedup();
            (distinct.len() >= total)
                .then_some(())
                .ok_or(format!("{} of {total}", distinct.len()))
        },
    )
    .await;
    wait_committed_to_end(&kafka, "rae.group", "sink-group", PARTITIONS).await;
    let metrics = second.metrics.snapshot();
    second.shutdown().await;

    let (a, b) = (first_writer.acked(), second_writer.acked());
    assert_per_key_order(&a, "the first member");
    assert_per_key_order(&b, "the second member");
    let mut all = a.clone();
    all.extend(b.iter().cloned());
    assert_complete(&all, KEYS, SEQS);
    assert_eq!(
        metrics.partitions_assigned - metrics.partitions_revoked,
        PARTITIONS as u64,
        "the second member ends up owning every partition: {metrics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_burst_commits_exactly_what_the_writer_acknowledged() {
    const PARTITIONS: i32 = 3;
    const KEYS: usize = 12;
    const SEQS: u32 = 100;
    const DEADLINE: Duration = Duration::from_secs(3);
    let kafka = Kafka::start().unwrap();
    kafka.create_topic("rae.burst", PARTITIONS).await.unwrap();
    produce(&kafka, "rae.burst", KEYS, 0..SEQS).await;

    let writer = TestWriter::slow(Duration::from_millis(300));
    let mut c = config(&kafka, "rae.burst", "sink-burst");
    c.batch_max_records = 20;
    c.shutdown_deadline_ms = DEADLINE.as_millis() as u64;
    let source = Running::start(c.clone(), writer.clone());
    wait_until("the writer acknowledged a few batches", WAIT, || {
        let n = writer.acked_len();
        (n >= 60).then_some(()).ok_or(format!("{n} records"))
    })
    .await;
    let took = source.shutdown().await;
    eprintln!("shutdown mid-burst took {took:?}");
    assert!(
        took <= DEADLINE,
        "shutdown took {took:?}, deadline {DEADLINE:?}"
    );

    let acked = writer.acked();
    let total = KEYS * SEQS as usize;
    assert!(
        acked.len() < total,
        "the burst was not interrupted: raise SEQS"
    );
    let mut expected: BTreeMap<i32, Option<i64>> = (0..PARTITIONS).map(|p| (p, None)).collect();
    for s in &acked {
        let next = expected.entry(s.partition).or_default();
        *next = Some(next.map_or(s.offset + 1, |n: i64| n.max(s.offset + 1)));
    }
    assert_eq!(
        committed(&kafka, "rae.burst", "sink-burst", PARTITIONS),
        expected,
        "committed offsets are exactly the acknowledged ones"
    );

    // A new consumer in the group continues where the acknowledged records end.
    let rest = Arc::new(TestWriter::default());
    let again = Running::start(c, rest.clone());
    wait_until("the restarted consumer acknowledged the rest", WAIT, || {
        let n = acked.len() + rest.acked_len();
        (n >= total).then_some(()).ok_or(format!("{n} of {total}"))
    })
    .await;
    wait_committed_to_end(&kafka, "rae.burst", "sink-burst", PARTITIONS).await;
    again.shutdown().await;
    let rest = rest.acked();
    assert_per_key_order(&rest, "the restarted consumer");
    let mut all = acked.clone();
    all.extend(rest);
    assert_eq!(all.len(), total, "no record twice, none lost");
    assert_complete(&all, KEYS, SEQS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_consumer_is_rebuilt_by_the_supervisor() {
    const PARTITIONS: i32 = 2;
    const KEYS: usize = 4;
    const SEQS: u32 = 50;
    let kafka = Kafka::start().unwrap();
    kafka.create_topic("rae.fenced", PARTITIONS).await.unwrap();
    produce(&kafka, "rae.fenced", KEYS, 0..SEQS).await;

    // Two members claiming one static identity: the broker fences the older one, which
    // librdkafka reports as a fatal error; only a new consumer can recover from it.
    let mut c = config(&kafka, "rae.fenced", "sink-fenced");
    c.group_instance_id = Some("sink-1".into());
    c.rebuild_backoff_min_ms = 200;
    c.rebuild_backoff_max_ms = 400;
    let (first_writer, second_writer) = (
        Arc::new(TestWriter::default()),
        Arc::new(TestWriter::default()),
    );
    let first = Running::start(c.clone(), first_writer.clone());
    wait_until("the first member writes records", WAIT, || {
        let n = first_writer.acked_len();
        (n > 0).then_some(()).ok_or(format!("{n} records"))
    })
    .await;
    let second = Running::start(c, second_writer.clone());
    let first_metrics = first.metrics.clone();
    wait_until("the fenced member was rebuilt", WAIT, || {
        let m = first_metrics.snapshot();
        (m.rebuilds > 0 && m.fatal_errors > 0)
            .then_some(())
            .ok_or(format!("{m:?}"))
    })
    .await;
    // The identity's other claimant goes away; only the rebuilt consumer is left.
    second.shutdown().await;
    let rebuilds = first_metrics.snapshot().rebuilds;
    let before = first_writer.acked_len();

    // Records produced only now can reach nobody but the rebuilt consumer.
    produce(&kafka, "rae.fenced", KEYS, SEQS..2 * SEQS).await;
    wait_until(
        "the rebuilt consumer writes the records produced after the rebuild",
        WAIT,
        || {
            let late = first_writer
                .acked()
                .into_iter()
                .filter(|s| s.seq >= SEQS)
                .count();
            let want = KEYS * SEQS as usize;
            (late >= want)
                .then_some(())
                .ok_or(format!("{late} of {want}"))
        },
    )
    .await;
    wait_committed_to_end(&kafka, "rae.fenced", "sink-fenced", PARTITIONS).await;
    let metrics = first.metrics.snapshot();
    first.shutdown().await;
    assert!(metrics.rebuilds >= rebuilds, "{metrics:?}");
    assert!(first_writer.acked_len() > before);
    let mut all = first_writer.acked();
    all.extend(second_writer.acked());
    assert_complete(&all, KEYS, 2 * SEQS);
    let late: Vec<Seen> = first_writer
        .acked()
        .into_iter()
        .filter(|s| s.seq >= SEQS)
        .collect();
    assert_per_key_order(&late, "the rebuilt consumer");
    assert!(
        second_writer.acked().iter().all(|s| s.seq < SEQS),
        "the stopped member saw records produced after it stopped"
    );
}

/// Sums one counter or gauge of a running `cloud-sink` (0 while `/metrics` does not answer).
fn sink_metric(sink: &Sink, name: &str) -> f64 {
    sink.metrics().map(|m| sum(&m, name)).unwrap_or(0.0)
}

fn static_sink(kafka: &Kafka, url: &str, dir: &std::path::Path, name: &str) -> KafkaSinkSpec {
    let flags = [
        "--group-instance-id=sink-static-0",
        "--commit-interval-ms=200",
        "--statistics-interval-ms=500",
        // The default session timeout, stated: a dynamic member's partitions would wait
        // this long after a SIGKILL.
        "--librdkafka=session.timeout.ms=45000",
    ];
    KafkaSinkSpec {
        name: name.into(),
        dir: dir.to_path_buf(),
        brokers: kafka.bootstrap_servers(),
        topic: "rae.static".into(),
        group: "sink-static".into(),
        database_url: url.into(),
        shutdown_deadline_secs: 10,
        extra: flags.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_static_member_consumes_again_within_seconds_of_its_restart() {
    const PARTITIONS: i32 = 2;
    const KEYS: usize = 4;
    const SEQS: u32 = 25;
    const SESSION_TIMEOUT: Duration = Duration::from_secs(45);
    const BACK_WITHIN: Duration = Duration::from_secs(15);
    let kafka = Kafka::start().unwrap();
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("sink_static").await.unwrap();
    kafka.create_topic("rae.static", PARTITIONS).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let received = "cloud_sink_kafka_records_received_total";
    let assigned = "cloud_sink_kafka_assigned_partitions";

    let mut first = Sink::start_kafka(&static_sink(&kafka, &url, dir.path(), "first")).unwrap();
    first.wait_ready(WAIT).unwrap();
    wait_until("the first sink owns every partition", WAIT, || {
        let n = sink_metric(&first, assigned);
        (n == f64::from(PARTITIONS))
            .then_some(())
            .ok_or(format!("{n} partitions"))
    })
    .await;
    // The payloads are not device events: the sink dead-letters them, which is consuming.
    produce(&kafka, "rae.static", KEYS, 0..SEQS).await;
    let half = (KEYS * SEQS as usize) as f64;
    wait_until("the first sink received the first half", WAIT, || {
        let n = sink_metric(&first, received);
        (n >= half).then_some(()).ok_or(format!("{n} of {half}"))
    })
    .await;
    first.kill().unwrap();

    produce(&kafka, "rae.static", KEYS, SEQS..2 * SEQS).await;
    let restarted = Instant::now();
    let again = Sink::start_kafka(&static_sink(&kafka, &url, dir.path(), "again")).unwrap();
    // The first half may come again (its commit may not have gone out before the kill);
    // the second half is what the restarted member must reach.
    wait_until(
        "the restarted static member consumes the records produced after the kill",
        BACK_WITHIN,
        || {
            let n = sink_metric(&again, received);
            let parts = sink_metric(&again, assigned);
            (n >= half && parts == f64::from(PARTITIONS))
                .then_some(())
                .ok_or(format!("{n} received, {parts} partitions"))
        },
    )
    .await;
    let took = restarted.elapsed();
    eprintln!("restarted static member consuming after {took:?}");
    assert!(took < SESSION_TIMEOUT / 3, "{took:?}");
    wait_committed_to_end(&kafka, "rae.static", "sink-static", PARTITIONS).await;
    let (status, _) = again.terminate(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{status:?}");
}
