//! `rss`: peak and steady RSS of the sink while it drains a backlog with 5 ms of extra
//! database latency per transaction.
//!
//! The backlog is produced first; then this executable runs itself as `drain` (the Kafka
//! source writing through [`Delayed`](crate::delay::Delayed) into PostgreSQL, nothing else),
//! so the figures are the sink's alone, not the producer's. The parent samples the child's
//! VmRSS once a second; the child reports its own VmHWM (the kernel's exact peak) at the end.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cloud_sink::apply::{Db, DbOptions};

use crate::delay::Delayed;
use crate::events::Workload;
use crate::kafkaio::{poll_until, produce, source_config, LagProbe, Running};
use crate::throughput::ms;
use crate::Bench;
use rae_tests::procstat::{memory, mib};

pub struct Params {
    pub backlog: usize,
    pub sessions: usize,
    pub delay_ms: u64,
    pub within_s: u64,
}

pub async fn run(bench: &Bench, params: &Params) -> Result<()> {
    let p = bench.partitions;
    let topic = "bench-backlog";
    let group = "bench-drain";
    bench.kafka.create_topic(topic, p).await?;
    let workload = Workload::new(params.sessions, p, 2);
    let started = Instant::now();
    produce(&bench.brokers, topic, &workload, 0..params.backlog).await?;
    println!(
        "backlog: produced {} events ({} sessions) in {:.1} s",
        params.backlog,
        params.sessions,
        started.elapsed().as_secs_f64()
    );
    let url = bench.pg.create_database("bench_drain").await?;
    Db::connect(&url, DbOptions::default())
        .await
        .context("connecting to the drain database")?
        .migrate()
        .await
        .context("migrating the drain database")?;

    let exe = std::env::current_exe().context("finding this executable")?;
    let mut child = Command::new(exe)
        .args(["drain", "--brokers", &bench.brokers, "--topic", topic])
        .args(["--group", group, "--db-url", &url])
        .args(["--expect", &params.backlog.to_string()])
        .args(["--delay-ms", &params.delay_ms.to_string()])
        .args(["--within-s", &params.within_s.to_string()])
        .args(["--channel-capacity", &bench.channel_capacity.to_string()])
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the drain child")?;
    let pid = child.id();
    let start = Instant::now();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let deadline = start + Duration::from_secs(params.within_s + 60);
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for the drain child")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!(
                "the drain child did not finish within {} s",
                params.within_s + 60
            );
        }
        if let Ok(m) = memory(pid) {
            let t = start.elapsed().as_secs_f64();
            if samples.len() % 10 == 0 {
                println!("  t={t:5.0} s  VmRSS {:.1} MiB", mib(m.rss_kib));
            }
            samples.push((t, m.rss_kib));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if !status.success() {
        bail!("the drain child failed: {status}");
    }
    let total = start.elapsed().as_secs_f64();
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    // Steady: the middle of the drain, past start-up and before the tail.
    let mut mid: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= total * 0.25 && *t <= total * 0.9)
        .map(|s| s.1)
        .collect();
    mid.sort_unstable();
    let steady = mid.get(mid.len() / 2).copied().unwrap_or(0);
    println!(
        "RESULT rss: {} samples over {total:.0} s; peak sampled VmRSS {:.1} MiB, steady (median \
         of 25%..90% of the drain) {:.1} MiB",
        samples.len(),
        mib(peak),
        mib(steady)
    );
    let probe = LagProbe::new(&bench.brokers, group, topic, p)?;
    let lag = probe.lag()?;
    if lag != 0 {
        bail!("after the drain the group still lags by {lag}");
    }
    println!("after the drain: the group's committed offsets equal the high watermarks");
    Ok(())
}

pub struct DrainArgs {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub db_url: String,
    pub expect: u64,
    pub delay_ms: u64,
    pub within_s: u64,
    pub channel_capacity: usize,
}

/// The child: the source and the delayed writer until `expect` records are applied.
pub async fn drain(args: DrainArgs) -> Result<()> {
    let pid = std::process::id();
    let before = memory(pid)?;
    let db = Db::connect(&args.db_url, DbOptions::default())
        .await
        .context("connecting to the database")?;
    let writer = Arc::new(Delayed {
        db,
        delay: ms(args.delay_ms),
    });
    let start = Instant::now();
    let running = Running::start(
        source_config(
            &args.brokers,
            &args.topic,
            &args.group,
            args.channel_capacity,
        ),
        writer,
    );
    let mut next_report = Instant::now();
    let (end, snap) = poll_until(
        "the drain applied every record",
        Duration::from_secs(args.within_s),
        ms(50),
        || {
            let s = running.snapshot();
            let r = if s.records_applied + s.records_dead_lettered >= args.expect {
                Some((Instant::now(), s))
            } else {
                if Instant::now() >= next_report {
                    println!(
                        "  drain: {} applied, {} in flight, buffered high water {}",
                        s.records_applied, s.in_flight, s.buffered_high_water
                    );
                    next_report += Duration::from_secs(10);
                }
                None
            };
            async move { Ok(r) }
        },
    )
    .await?;
    running.shutdown().await?;
    let after = memory(pid)?;
    let secs = (end - start).as_secs_f64();
    println!(
        "RESULT drain: {} events in {secs:.1} s ({:.0} events/s) with {} ms per transaction; \
         {} batches (mean {:.0} records), {} retries, {} dead letters, {} pauses, buffered \
         high water {} records per partition",
        snap.records_applied,
        snap.records_applied as f64 / secs,
        args.delay_ms,
        snap.batches_written,
        snap.records_applied as f64 / snap.batches_written.max(1) as f64,
        snap.write_retries,
        snap.records_dead_lettered,
        snap.pauses,
        snap.buffered_high_water
    );
    println!(
        "RESULT drain process: VmRSS before start {:.1} MiB, VmHWM (peak) {:.1} MiB",
        mib(before.rss_kib),
        mib(after.hwm_kib)
    );
    if snap.records_dead_lettered > 0 {
        bail!("the drain dead-lettered records of a valid workload");
    }
    if snap.write_retries > 0 {
        // A retry happens inside one `write` call, so its extra attempts had no added delay.
        println!(
            "note: {} transaction attempts were retries without the extra {} ms",
            snap.write_retries, args.delay_ms
        );
    }
    Ok(())
}
