//! Prometheus text exposition (format 0.0.4), written by hand: a few dozen series do not
//! need a metrics framework.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::record::{BatchWriter, Raw, WriteError, WriteOutcome};
use crate::source::kafka::KafkaMetricsSnapshot;

/// Upper bounds of the batch-size histogram, in records.
const SIZE_BUCKETS: [f64; 8] = [1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];
/// Upper bounds of the write-latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// A cumulative histogram with fixed buckets; the sum is kept in micro-units so that it can
/// live in an atomic.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            if value <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        // Negative or NaN values cannot occur (sizes and durations); `as` saturates anyway.
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// What [`MeteredWriter`] measured.
#[derive(Debug)]
pub struct WriterStats {
    pub batch_records: Histogram,
    pub write_seconds: Histogram,
    pub write_errors: AtomicU64,
    /// Records dead-lettered because the database refused them with a permanent error.
    pub permanent_rejections: AtomicU64,
    /// Sessions whose gap record reached its cap (each episode once, until a Snapshot).
    pub gap_overflows: AtomicU64,
}

impl Default for WriterStats {
    fn default() -> Self {
        WriterStats {
            batch_records: Histogram::new(&SIZE_BUCKETS),
            write_seconds: Histogram::new(&LATENCY_BUCKETS),
            write_errors: AtomicU64::new(0),
            permanent_rejections: AtomicU64::new(0),
            gap_overflows: AtomicU64::new(0),
        }
    }
}

/// The real writer, timed: every call is one batch (or one retry of it).
pub struct MeteredWriter<W> {
    inner: W,
    stats: Arc<WriterStats>,
}

impl<W> MeteredWriter<W> {
    pub fn new(inner: W, stats: Arc<WriterStats>) -> MeteredWriter<W> {
        MeteredWriter { inner, stats }
    }

    pub fn inner(&self) -> &W {
        &self.inner
    }
}

impl<W: BatchWriter> BatchWriter for MeteredWriter<W> {
    async fn write(&self, batch: &[Raw]) -> Result<WriteOutcome, WriteError> {
        let started = Instant::now();
        let result = self.inner.write(batch).await;
        self.stats
            .write_seconds
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(outcome) => {
                self.stats.batch_records.observe(batch.len() as f64);
                let s = &self.stats;
                s.permanent_rejections
                    .fetch_add(outcome.permanent_rejections as u64, Ordering::Relaxed);
                s.gap_overflows
                    .fetch_add(outcome.gap_overflows as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// Label values in the exposition format escape backslash, quote and newline.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Everything `/metrics` shows for a Kafka-mode sink.
pub fn render_kafka(k: &KafkaMetricsSnapshot, writer: &WriterStats, db_up: bool) -> String {
    let mut out = String::with_capacity(4096);
    let p = "cloud_sink_kafka";
    counter(
        &mut out,
        &format!("{p}_records_received_total"),
        "Records polled from Kafka.",
        k.records_received,
    );
    counter(
        &mut out,
        "cloud_sink_records_applied_total",
        "Records the database applied.",
        k.records_applied,
    );
    counter(
        &mut out,
        "cloud_sink_dead_letters_total",
        "Records written to dead_letters.",
        k.records_dead_lettered,
    );
    counter(
        &mut out,
        "cloud_sink_batches_written_total",
        "Batches committed to the database.",
        k.batches_written,
    );
    counter(
        &mut out,
        "cloud_sink_write_retries_total",
        "Transaction retries and whole-batch retries.",
        k.write_retries,
    );
    counter(
        &mut out,
        "cloud_sink_write_failures_total",
        "Batch writes that gave up (retried later; offsets wait).",
        k.write_failures,
    );
    counter(
        &mut out,
        &format!("{p}_stale_dropped_total"),
        "Records dropped because their partition was revoked.",
        k.stale_dropped,
    );
    counter(
        &mut out,
        &format!("{p}_pauses_total"),
        "Partitions paused for back-pressure.",
        k.pauses,
    );
    counter(
        &mut out,
        &format!("{p}_resumes_total"),
        "Partitions resumed.",
        k.resumes,
    );
    counter(
        &mut out,
        &format!("{p}_commits_total"),
        "Offset commits sent.",
        k.commits,
    );
    counter(
        &mut out,
        &format!("{p}_commit_failures_total"),
        "Offset commits that failed.",
        k.commit_failures,
    );
    counter(
        &mut out,
        &format!("{p}_partitions_assigned_total"),
        "Partitions assigned to this member.",
        k.partitions_assigned,
    );
    counter(
        &mut out,
        &format!("{p}_partitions_revoked_total"),
        "Partitions revoked from this member.",
        k.partitions_revoked,
    );
    counter(
        &mut out,
        &format!("{p}_consumer_rebuilds_total"),
        "Consumers rebuilt by the supervisor.",
        k.rebuilds,
    );
    counter(
        &mut out,
        &format!("{p}_stalls_total"),
        "Stalls detected (lag without progress).",
        k.stalls,
    );
    counter(
        &mut out,
        &format!("{p}_fatal_errors_total"),
        "Fatal client errors.",
        k.fatal_errors,
    );
    gauge(
        &mut out,
        "cloud_sink_in_flight_records",
        "Records polled and not yet written or dropped.",
        k.in_flight,
    );
    gauge(
        &mut out,
        &format!("{p}_buffered_high_water_records"),
        "Most records ever buffered for one partition.",
        k.buffered_high_water,
    );
    gauge(
        &mut out,
        &format!("{p}_assigned_partitions"),
        "Partitions currently assigned.",
        k.partitions.len() as u64,
    );
    render_writer(&mut out, writer, db_up);

    let series: [(&str, &str, &str); 4] = [
        (
            "lag",
            "gauge",
            "Consumer lag (high watermark minus committed offset) from librdkafka statistics.",
        ),
        (
            "buffered",
            "gauge",
            "Records between the poll loop and the partition worker.",
        ),
        (
            "paused",
            "gauge",
            "1 while the partition is paused for back-pressure.",
        ),
        (
            "committed_offset",
            "gauge",
            "The next offset last committed.",
        ),
    ];
    for (what, kind, help) in series {
        let name = format!("{p}_partition_{what}");
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (id, g) in &k.partitions {
            let value = match what {
                "lag" => g.lag,
                "buffered" => i64::try_from(g.buffered).ok(),
                "paused" => Some(i64::from(g.paused)),
                _ => g.committed,
            };
            if let Some(v) = value {
                let _ = writeln!(
                    out,
                    "{name}{{topic=\"{}\",partition=\"{}\"}} {v}",
                    label(&id.topic),
                    id.partition
                );
            }
        }
    }
    out
}

/// The database side every writing mode shows: reachability, write errors, batch size and
/// write latency histograms.
fn render_writer(out: &mut String, writer: &WriterStats, db_up: bool) {
    gauge(
        out,
        "cloud_sink_database_up",
        "1 when the last database probe answered.",
        u64::from(db_up),
    );
    counter(
        out,
        "cloud_sink_write_errors_total",
        "Batch write calls that returned an error.",
        writer.write_errors.load(Ordering::Relaxed),
    );
    counter(
        out,
        "cloud_sink_permanent_rejections_total",
        "Records the database refused with a permanent error, isolated and dead-lettered.",
        writer.permanent_rejections.load(Ordering::Relaxed),
    );
    counter(
        out,
        "cloud_sink_gap_overflows_total",
        "Sessions whose gap record reached its run cap and forgot runs (needs_resync stays).",
        writer.gap_overflows.load(Ordering::Relaxed),
    );
    writer.batch_records.render(
        out,
        "cloud_sink_batch_records",
        "Records per written batch.",
    );
    writer.write_seconds.render(
        out,
        "cloud_sink_batch_write_seconds",
        "Time to write one batch, retries inside the writer included.",
    );
}

/// Everything `/metrics` shows for an MQTT-mode sink.
pub fn render_mqtt(
    m: &crate::source::mqtt::MqttMetricsSnapshot,
    writer: &WriterStats,
    db_up: bool,
) -> String {
    let mut out = String::with_capacity(4096);
    let p = "cloud_sink_mqtt";
    for (name, help, value) in [
        (
            "messages_received_total",
            "Messages received from the broker (redeliveries included).",
            m.received,
        ),
        (
            "acks_sent_total",
            "PUBACKs sent, each after its batch committed.",
            m.acks_sent,
        ),
        (
            "acks_not_queued_total",
            "PUBACKs given up with their lost connection (the broker redelivers).",
            m.acks_not_queued,
        ),
        (
            "acks_deferred_total",
            "PUBACKs the client could not take at once (kept in order and offered again).",
            m.acks_deferred,
        ),
        (
            "stale_unacked_total",
            "Messages of a lost connection left for redelivery.",
            m.stale_unacked,
        ),
        ("connects_total", "Connections to the broker.", m.connects),
        (
            "subscriptions_refused_total",
            "Filters the broker refused.",
            m.subscriptions_refused,
        ),
    ] {
        counter(&mut out, &format!("{p}_{name}"), help, value);
    }
    counter(
        &mut out,
        "cloud_sink_records_applied_total",
        "Records the database applied.",
        m.applied,
    );
    counter(
        &mut out,
        "cloud_sink_dead_letters_total",
        "Records written to dead_letters.",
        m.dead_lettered,
    );
    counter(
        &mut out,
        "cloud_sink_batches_written_total",
        "Batches committed to the database.",
        m.batches_written,
    );
    counter(
        &mut out,
        "cloud_sink_write_retries_total",
        "Transaction retries and whole-batch retries.",
        m.write_retries,
    );
    counter(
        &mut out,
        "cloud_sink_write_failures_total",
        "Batch writes that failed (retried; acks wait).",
        m.write_failures,
    );
    gauge(
        &mut out,
        "cloud_sink_in_flight",
        "Messages received and not yet acknowledged.",
        m.in_flight,
    );
    render_writer(&mut out, writer, db_up);
    out
}

/// Everything `/metrics` shows for the bridge.
pub fn render_bridge(b: &crate::bridge::BridgeMetricsSnapshot) -> String {
    let mut out = String::with_capacity(2048);
    let p = "cloud_sink_bridge";
    for (name, help, value) in [
        (
            "messages_received_total",
            "Messages received from the broker (redeliveries included).",
            b.received,
        ),
        (
            "records_produced_total",
            "Records Kafka acknowledged.",
            b.produced,
        ),
        (
            "delivery_failures_total",
            "Deliveries that failed (produced again).",
            b.delivery_failures,
        ),
        (
            "acks_sent_total",
            "PUBACKs sent, each after Kafka's delivery report.",
            b.acks_sent,
        ),
        (
            "stale_unacked_total",
            "Messages of a lost connection left for redelivery.",
            b.stale_unacked,
        ),
        ("connects_total", "Connections to the broker.", b.connects),
        (
            "connection_losses_total",
            "Connections to the broker lost.",
            b.connection_losses,
        ),
    ] {
        counter(&mut out, &format!("{p}_{name}"), help, value);
    }
    gauge(
        &mut out,
        &format!("{p}_in_flight"),
        "Messages received and not yet acknowledged.",
        b.in_flight,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kafka::{PartitionGauge, PartitionId};

    #[test]
    fn renders_counters_histograms_and_per_partition_lag() {
        let mut k = KafkaMetricsSnapshot {
            records_applied: 7,
            records_dead_lettered: 2,
            ..Default::default()
        };
        k.partitions.insert(
            PartitionId {
                topic: "rae\"x".into(),
                partition: 3,
            },
            PartitionGauge {
                lag: Some(12),
                committed: Some(40),
                ..Default::default()
            },
        );
        let w = WriterStats::default();
        w.batch_records.observe(3.0);
        w.write_seconds.observe(0.02);
        let text = render_kafka(&k, &w, true);
        for line in [
            "cloud_sink_records_applied_total 7",
            "cloud_sink_dead_letters_total 2",
            "cloud_sink_database_up 1",
            "cloud_sink_kafka_partition_lag{topic=\"rae\\\"x\",partition=\"3\"} 12",
            "cloud_sink_kafka_partition_committed_offset{topic=\"rae\\\"x\",partition=\"3\"} 40",
            "cloud_sink_batch_records_bucket{le=\"1\"} 0",
            "cloud_sink_batch_records_bucket{le=\"10\"} 1",
            "cloud_sink_batch_records_count 1",
            "cloud_sink_batch_write_seconds_bucket{le=\"0.025\"} 1",
            "cloud_sink_batch_write_seconds_bucket{le=\"0.01\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line is `name{labels} value` with a numeric value.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample {l:?}");
        }
    }
}
