//! What an operator sees and does to a running sink (DESIGN section 5, "Observability"):
//!
//! - [`metrics`]: Prometheus text for the Kafka source's counters and per-partition gauges,
//!   and [`metrics::MeteredWriter`], which times every batch write (size and latency
//!   histograms) around the real [`BatchWriter`](crate::record::BatchWriter).
//! - [`health`]: `/healthz` (the process loop is alive) and `/readyz` (the database answers
//!   and the source runs), with the task that probes the database.
//! - [`http`]: a tiny HTTP/1.1 responder on a `TcpListener` for `/metrics`, `/healthz` and
//!   `/readyz`: one request per connection, bounded request size and time.
//! - [`shutdown`]: SIGTERM/SIGINT as a future.
//!
//! Limitations: no TLS or authentication on the endpoint (bind it to a pod-local address);
//! GET and HEAD only.

pub mod health;
pub mod http;
pub mod metrics;
pub mod shutdown;

use std::sync::Arc;
use std::time::Instant;

use crate::source::kafka::KafkaMetrics;
use health::Health;
use http::{Response, Routes};
use metrics::WriterStats;

/// The endpoints of a Kafka-mode sink.
pub struct KafkaEndpoints {
    pub metrics: Arc<KafkaMetrics>,
    pub writer: Arc<WriterStats>,
    pub health: Arc<Health>,
}

impl Routes for KafkaEndpoints {
    fn respond(&self, path: &str) -> Response {
        let now = Instant::now();
        let verdict = |v: health::Verdict| {
            Response::text(if v.ok { 200 } else { 503 }, format!("{}\n", v.reason))
        };
        match path {
            "/metrics" => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: metrics::render_kafka(
                    &self.metrics.snapshot(),
                    &self.writer,
                    self.health.db_up(),
                ),
            },
            "/healthz" => verdict(self.health.live(now)),
            "/readyz" => verdict(self.health.ready(now)),
            _ => Response::text(404, "not found; try /metrics, /healthz, /readyz\n"),
        }
    }
}

/// The endpoints of an MQTT-mode sink.
pub struct MqttEndpoints {
    pub metrics: Arc<crate::source::mqtt::MqttMetrics>,
    pub writer: Arc<WriterStats>,
    pub health: Arc<Health>,
}

impl Routes for MqttEndpoints {
    fn respond(&self, path: &str) -> Response {
        let now = Instant::now();
        let verdict = |v: health::Verdict| {
            Response::text(if v.ok { 200 } else { 503 }, format!("{}\n", v.reason))
        };
        match path {
            "/metrics" => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: metrics::render_mqtt(
                    &self.metrics.snapshot(),
                    &self.writer,
                    self.health.db_up(),
                ),
            },
            "/healthz" => verdict(self.health.live(now)),
            "/readyz" => verdict(self.health.ready(now)),
            _ => Response::text(404, "not found; try /metrics, /healthz, /readyz\n"),
        }
    }
}

/// The endpoints of the MQTT-to-Kafka bridge (no database: ready while it runs).
pub struct BridgeEndpoints {
    pub metrics: Arc<crate::bridge::BridgeMetrics>,
    pub health: Arc<Health>,
}

impl Routes for BridgeEndpoints {
    fn respond(&self, path: &str) -> Response {
        let now = Instant::now();
        let verdict = |v: health::Verdict| {
            Response::text(if v.ok { 200 } else { 503 }, format!("{}\n", v.reason))
        };
        match path {
            "/metrics" => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: metrics::render_bridge(&self.metrics.snapshot()),
            },
            "/healthz" | "/readyz" => verdict(self.health.live(now)),
            _ => Response::text(404, "not found; try /metrics, /healthz, /readyz\n"),
        }
    }
}
