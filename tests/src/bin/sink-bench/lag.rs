//! `lag`: with the source running and idle, a burst of events from many sessions is
//! produced; the time until the group's committed offsets equal the high watermarks on
//! every partition (the broker's view, not the sink's own metrics).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::events::Workload;
use crate::kafkaio::{poll_until, produce, source_config, LagProbe, Running};
use crate::throughput::ms;
use crate::Bench;

pub struct Params {
    pub events: usize,
    pub sessions: usize,
    pub bursts: usize,
}

pub async fn run(bench: &Bench, params: &Params) -> Result<()> {
    let p = bench.partitions;
    let topic = "bench-burst";
    let group = "bench-burst";
    bench.kafka.create_topic(topic, p).await?;
    let db = Arc::new(bench.database("bench_burst").await?);
    let running = Running::start(
        source_config(&bench.brokers, topic, group, bench.channel_capacity),
        db,
    );
    poll_until(
        "the source was assigned every partition",
        ms(60_000),
        ms(50),
        || {
            let assigned = running.snapshot().partitions.len() as i32;
            async move { Ok((assigned >= p).then_some(())) }
        },
    )
    .await?;
    let probe = LagProbe::new(&bench.brokers, group, topic, p)?;
    for burst in 0..params.bursts {
        // New sessions every burst: each opens with a Snapshot, as after a fleet-wide restart.
        let workload = Workload::new(params.sessions, p, 100 + burst as u64);
        let before = running.snapshot().records_applied;
        let t0 = Instant::now();
        let last_ack = produce(&bench.brokers, topic, &workload, 0..params.events).await?;
        let zero = poll_until("lag back to 0", ms(120_000), ms(20), || {
            let r = probe.lag().map(|lag| (lag == 0).then(Instant::now));
            async move { r }
        })
        .await?;
        let applied = running.snapshot().records_applied - before;
        println!(
            "RESULT burst {}: {} events from {} sessions produced in {:.2} s; lag 0 {:.2} s after \
             the last acknowledgement ({:.2} s after the first send); {applied} applied",
            burst + 1,
            params.events,
            params.sessions,
            (last_ack - t0).as_secs_f64(),
            (zero - last_ack).as_secs_f64(),
            (zero - t0).as_secs_f64(),
        );
        // Idle again before the next burst.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let s = running.snapshot();
    println!(
        "source: {} applied, {} batches, {} commits, {} retries",
        s.records_applied, s.batches_written, s.commits, s.write_retries
    );
    running.shutdown().await
}
