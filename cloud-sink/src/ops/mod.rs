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

/// What `/metrics` shows: rendered on each request from the mode's live counters.
pub type Render = Box<dyn Fn() -> String + Send + Sync>;

/// The endpoints of a running sink: `/metrics` from `render`, `/healthz` from the heartbeat,
/// `/readyz` from the database probe too when the mode writes a database (the bridge does not:
/// it is ready while it runs).
pub struct Endpoints {
    pub render: Render,
    pub health: Arc<Health>,
    pub needs_database: bool,
}

impl Endpoints {
    /// A Kafka-mode sink's endpoints.
    pub fn kafka(
        metrics: Arc<KafkaMetrics>,
        writer: Arc<WriterStats>,
        health: Arc<Health>,
    ) -> Endpoints {
        let probe = health.clone();
        Endpoints {
            render: Box::new(move || {
                metrics::render_kafka(&metrics.snapshot(), &writer, probe.db_up())
            }),
            health,
            needs_database: true,
        }
    }

    /// An MQTT-mode sink's endpoints.
    pub fn mqtt(
        metrics: Arc<crate::source::mqtt::MqttMetrics>,
        writer: Arc<WriterStats>,
        health: Arc<Health>,
    ) -> Endpoints {
        let probe = health.clone();
        Endpoints {
            render: Box::new(move || {
                metrics::render_mqtt(&metrics.snapshot(), &writer, probe.db_up())
            }),
            health,
            needs_database: true,
        }
    }

    /// Adds the gap healer's counters to `/metrics`.
    pub fn with_heal(mut self, heal: Arc<crate::heal::HealMetrics>) -> Endpoints {
        let render = self.render;
        self.render = Box::new(move || render() + &heal.render());
        self
    }

    /// The bridge's endpoints.
    pub fn bridge(metrics: Arc<crate::bridge::BridgeMetrics>, health: Arc<Health>) -> Endpoints {
        Endpoints {
            render: Box::new(move || metrics::render_bridge(&metrics.snapshot())),
            health,
            needs_database: false,
        }
    }
}

impl Routes for Endpoints {
    fn respond(&self, path: &str) -> Response {
        let now = Instant::now();
        let verdict = |v: health::Verdict| {
            Response::text(if v.ok { 200 } else { 503 }, format!("{}\n", v.reason))
        };
        match path {
            "/metrics" => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: (self.render)(),
            },
            "/healthz" => verdict(self.health.live(now)),
            "/readyz" if self.needs_database => verdict(self.health.ready(now)),
            "/readyz" => verdict(self.health.live(now)),
            _ => Response::text(404, "not found; try /metrics, /healthz, /readyz\n"),
        }
    }
}
