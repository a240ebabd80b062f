//! Kafka plumbing of the bench: producing a workload, the broker's view of a group's lag,
//! and the sink's source running in-process.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cloud_sink::record::BatchWriter;
use cloud_sink::source::kafka::{self, KafkaMetrics, KafkaMetricsSnapshot, KafkaSourceConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::events::Workload;

/// Deliveries awaited at once: bounds the producer's memory for a large backlog.
const IN_FLIGHT: usize = 20_000;
const DELIVERY_WITHIN: Duration = Duration::from_secs(60);
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

pub fn client(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

/// Produces events `range` of `workload` and waits for every acknowledgement; returns the
/// time of the last acknowledgement.
pub async fn produce(
    brokers: &str,
    topic: &str,
    workload: &Workload,
    range: std::ops::Range<usize>,
) -> Result<Instant> {
    let producer: FutureProducer = client(brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "100000")
        .create()
        .context("creating the producer")?;
    let mut pending = VecDeque::new();
    let mut last = Instant::now();
    for i in range {
        let e = workload.event(i)?;
        let record = FutureRecord::to(topic)
            .key(&e.key)
            .payload(&e.payload)
            .partition(e.partition);
        let delivery = producer
            .send_result(record)
            .map_err(|(err, _)| err)
            .with_context(|| format!("enqueueing event {i}"))?;
        pending.push_back(delivery);
        if pending.len() >= IN_FLIGHT {
            if let Some(oldest) = pending.pop_front() {
                last = acknowledged(oldest).await?;
            }
        }
    }
    while let Some(delivery) = pending.pop_front() {
        last = acknowledged(delivery).await?;
    }
    Ok(last)
}

async fn acknowledged(delivery: rdkafka::producer::DeliveryFuture) -> Result<Instant> {
    match tokio::time::timeout(DELIVERY_WITHIN, delivery).await {
        Err(_) => bail!("a record was not acknowledged within {DELIVERY_WITHIN:?}"),
        Ok(Err(_)) => bail!("the producer dropped a delivery"),
        Ok(Ok(Err((e, _)))) => Err(e).context("Kafka refused a record"),
        Ok(Ok(Ok(_))) => Ok(Instant::now()),
    }
}

/// The broker's view of `group` on `topic`: high watermark minus committed offset, summed
/// over partitions (a partition without a committed offset counts from its low watermark).
pub struct LagProbe {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl LagProbe {
    pub fn new(brokers: &str, group: &str, topic: &str, partitions: i32) -> Result<LagProbe> {
        // Never subscribes: it only asks the group coordinator for committed offsets.
        let consumer: BaseConsumer = client(brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .context("creating the lag probe")?;
        Ok(LagProbe {
            consumer,
            topic: topic.to_owned(),
            partitions,
        })
    }

    pub fn lag(&self) -> Result<i64> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, BROKER_TIMEOUT)
            .context("fetching committed offsets")?;
        let mut total = 0;
        for p in 0..self.partitions {
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, p, BROKER_TIMEOUT)
                .with_context(|| format!("fetching watermarks of partition {p}"))?;
            let done = match committed.find_partition(&self.topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => low,
            };
            total += high - done;
        }
        Ok(total)
    }
}

pub fn source_config(
    brokers: &str,
    topic: &str,
    group: &str,
    channel_capacity: usize,
) -> KafkaSourceConfig {
    KafkaSourceConfig {
        brokers: brokers.to_owned(),
        channel_capacity,
        group_id: group.to_owned(),
        topics: vec![topic.to_owned()],
        statistics_interval_ms: 1000,
        ..KafkaSourceConfig::default()
    }
}

/// `cloud_sink::source::kafka::run` on a task, with its stop switch.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::result::Result<(), kafka::SourceError>>,
    pub metrics: Arc<KafkaMetrics>,
}

impl Running {
    pub fn start<W: BatchWriter>(config: KafkaSourceConfig, writer: Arc<W>) -> Running {
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

    pub fn snapshot(&self) -> KafkaMetricsSnapshot {
        self.metrics.snapshot()
    }

    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .context("the source did not stop within 60 s")?
            .context("the source task panicked")?
            .context("the source ended with an error")
    }
}

/// Polls `check` every `every` until it returns `Some`, failing after `within`.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not reached within {within:?}");
        }
        tokio::time::sleep(every).await;
    }
}
