//! `throughput`: sustained events/s into PostgreSQL through the Kafka source, against
//! (a) a bare loop writing the same batches with no Kafka (the ceiling) and (b) a
//! record-at-a-time consumer, one transaction and one synchronous offset commit per record
//! (the design the sink replaces).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cloud_sink::apply::Db;
use cloud_sink::record::{Origin, Raw};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::events::Workload;
use crate::kafkaio::{client, poll_until, produce, source_config, LagProbe, Running};
use crate::Bench;

pub struct Params {
    pub events: usize,
    pub sessions: usize,
    pub baseline_events: usize,
    pub baseline_seconds: u64,
}

const BATCH: usize = 1000;

pub async fn run(bench: &Bench, params: &Params) -> Result<()> {
    let p = bench.partitions;
    let workload = Workload::new(params.sessions, p, 1);
    let topic = "bench-throughput";
    bench.kafka.create_topic(topic, p).await?;
    println!(
        "workload: {} events, {} sessions ({} events each, Snapshot then Deltas), {p} partitions",
        params.events,
        params.sessions,
        params.events.div_ceil(params.sessions)
    );
    let started = Instant::now();
    produce(&bench.brokers, topic, &workload, 0..params.events).await?;
    println!(
        "produced {} events in {:.1} s",
        params.events,
        started.elapsed().as_secs_f64()
    );

    let source = source_rate(bench, topic, params, &workload).await?;
    let bare = bare_rate(bench, params, &workload).await?;
    let single = single_rate(bench, topic, params).await?;

    println!();
    println!("RESULT source (Kafka -> worker -> Db, batches <= {BATCH}): {source:.0} events/s");
    println!(
        "RESULT bare loop ({p} lanes of {BATCH}-record Db::write, no Kafka): {bare:.0} events/s"
    );
    println!("RESULT record-at-a-time (1 tx + 1 sync commit per record): {single:.0} events/s");
    println!("RESULT source / bare loop = {:.2}", source / bare);
    println!("RESULT source / record-at-a-time = {:.1}", source / single);
    Ok(())
}

async fn source_rate(bench: &Bench, topic: &str, params: &Params, w: &Workload) -> Result<f64> {
    let db = Arc::new(bench.database("bench_source").await?);
    let group = "bench-source";
    let start = Instant::now();
    let running = Running::start(
        source_config(&bench.brokers, topic, group, bench.channel_capacity),
        db.clone(),
    );
    let n = params.events as u64;
    let mut first = None;
    let within = Duration::from_secs(900);
    let done = poll_until("source applied every event", within, ms(10), || {
        let s = running.snapshot();
        if first.is_none() && s.records_received > 0 {
            first = Some(Instant::now());
        }
        let r = if s.records_applied + s.records_dead_lettered >= n {
            Some((Instant::now(), s))
        } else {
            None
        };
        async move { Ok(r) }
    })
    .await?;
    let (end, snap) = done;
    let first = first.context("no record was received")?;
    let probe = LagProbe::new(&bench.brokers, group, topic, w.partitions)?;
    let committed = poll_until(
        "committed offsets reach the end",
        ms(30_000),
        ms(20),
        || {
            let r = probe.lag().map(|lag| (lag == 0).then(Instant::now));
            async move { r }
        },
    )
    .await?;
    running.shutdown().await?;
    let secs = (end - first).as_secs_f64();
    println!(
        "source: {} applied, {} dead-lettered, {} batches, {} write retries, {} pauses, channel \
         {}; first record {:.2} s after start, last applied {secs:.2} s after the first record, offsets all committed \
         {:.2} s after that",
        snap.records_applied,
        snap.records_dead_lettered,
        snap.batches_written,
        snap.write_retries,
        snap.pauses,
        bench.channel_capacity,
        (first - start).as_secs_f64(),
        (committed - end).as_secs_f64()
    );
    check_rows(&db, params.sessions.min(params.events)).await?;
    if snap.records_dead_lettered > 0 {
        bail!("the source dead-lettered records of a valid workload");
    }
    Ok(n as f64 / secs)
}

async fn bare_rate(bench: &Bench, params: &Params, w: &Workload) -> Result<f64> {
    let db = Arc::new(bench.database("bench_bare").await?);
    let lanes = w.lanes(params.events)?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for lane in lanes {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut retries = 0;
            for chunk in lane.chunks(BATCH) {
                let outcome = db.write(chunk).await?;
                retries += outcome.retries;
            }
            anyhow::Ok(retries)
        }));
    }
    let mut retries = 0;
    for task in tasks {
        retries += task.await.context("a bare-loop lane panicked")??;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "bare loop: {} events in {secs:.2} s over {} concurrent lanes, {retries} transaction retries",
        params.events, w.partitions
    );
    check_rows(&db, params.sessions.min(params.events)).await?;
    Ok(params.events as f64 / secs)
}

/// One thread, one consumer: poll a record, write it in its own transaction, commit its
/// offset synchronously, next.
async fn single_rate(bench: &Bench, topic: &str, params: &Params) -> Result<f64> {
    let db = Arc::new(bench.database("bench_single").await?);
    let consumer: BaseConsumer = client(&bench.brokers)
        .set("group.id", "bench-record-at-a-time")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("creating the record-at-a-time consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..bench.partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .context("assigning a partition")?;
    }
    consumer.assign(&tpl).context("assigning the partitions")?;
    let limit = params.baseline_events.min(params.events);
    let budget = Duration::from_secs(params.baseline_seconds);
    let runtime = tokio::runtime::Handle::current();
    let (count, secs) = tokio::task::spawn_blocking(move || -> Result<(usize, f64)> {
        let mut count = 0;
        let mut first = None;
        let deadline = Instant::now() + budget + Duration::from_secs(30);
        while count < limit {
            let now = Instant::now();
            if now >= deadline || first.is_some_and(|f: Instant| now - f >= budget) {
                break;
            }
            let message = match consumer.poll(Duration::from_millis(500)) {
                None => continue,
                Some(m) => m.context("consuming")?,
            };
            first.get_or_insert_with(Instant::now);
            let raw = Raw {
                topic: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: message.payload().unwrap_or_default().to_vec(),
                origin: Origin::Kafka {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                },
            };
            runtime.block_on(db.write(std::slice::from_ref(&raw)))?;
            consumer
                .commit_message(&message, CommitMode::Sync)
                .context("committing an offset")?;
            count += 1;
        }
        let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        Ok((count, secs))
    })
    .await
    .context("the record-at-a-time thread panicked")??;
    if count == 0 || secs <= 0.0 {
        bail!("the record-at-a-time consumer wrote nothing");
    }
    println!(
        "record-at-a-time: {count} events (the first of the topic) in {secs:.2} s, one \
         transaction and one synchronous commit each"
    );
    Ok(count as f64 / secs)
}

/// Every session has its row and nothing was dead-lettered.
async fn check_rows(db: &Db, sessions: usize) -> Result<()> {
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM device_sessions")
        .fetch_one(db.pool())
        .await
        .context("counting sessions")?;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(db.pool())
        .await
        .context("counting dead letters")?;
    if rows != sessions as i64 || dead != 0 {
        bail!("expected {sessions} session rows and no dead letters, found {rows} and {dead}");
    }
    Ok(())
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
