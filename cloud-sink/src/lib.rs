//! cloud-sink: ingests RAE device events into the Cloud Registry (CockroachDB; PostgreSQL at
//! SERIALIZABLE stands in for tests), and bridges MQTT into Kafka.
//!
//! Parts (DESIGN section 5):
//! - [`record`]: what a source delivers ([`record::Raw`]: topic, payload, where it came from)
//!   and the boundary between the ordered pipeline and the database ([`record::BatchWriter`]).
//! - [`apply`]: decoding and validation of raw records (bad ones become dead letters), the
//!   pure per-session fold of a batch (the convergence rule of DESIGN section 3), and
//!   [`apply::Db`], the one place that writes SQL: one transaction per batch, one `UNNEST`
//!   upsert per table, retried on 40001/40P01 and lost connections. Migrations in
//!   `migrations/`.
//! - [`worker`]: ordered batching per partition or lane and offset tracking (takes `now`).
//! - [`source`]: [`source::kafka::run`], the Kafka consumer group (cooperative-sticky, one
//!   ordered worker per partition polling its own split-off queue only when it has no write
//!   in flight: back-pressure without pause/resume; optional static membership
//!   (`--group-instance-id`), offsets committed only after the batch's
//!   transaction, revocation within a deadline, a supervisor that rebuilds the consumer), and
//!   [`source::mqtt::run`], the MQTT v5 source (persistent session, topics hashed onto ordered
//!   lanes, acks in arrival order only after the batch committed).
//! - [`bridge`]: MQTT to Kafka with key = MQTT topic, idempotent producer (acks=all), the MQTT
//!   message acked only after Kafka's delivery report.
//! - [`config`]: the command line (`kafka`, `mqtt`, `bridge`, `migrate`, `command`), every flag also an
//!   environment variable (`CLOUD_SINK_*`).
//! - [`command`]: the cloud's requester ([`command::Requester`], a library other cloud
//!   services call: MQTT v5 requests with a Response Topic and Correlation Data, replies
//!   matched by it, typed errors) and the `cloud-sink command` subcommand on top of it.
//! - [`heal`]: gap repair: the writer reports committed gaps over a bounded channel and a
//!   task asks the RAE for a `resync` of that session (one outstanding per session,
//!   backoff, a token bucket per RAE, a cap on tracked sessions).
//! - [`mqtt_connect`]: the one place MQTT options are built (address, credentials, TLS with
//!   rustls and ring), for the source, the bridge and the command requester.
//! - [`ops`]: Prometheus `/metrics`, `/healthz`, `/readyz` on a tiny HTTP responder, and the
//!   SIGTERM/SIGINT handling.
//!
//! Limitations: the SQL keeps to what CockroachDB documents but has only run on PostgreSQL;
//! the Dockerfile is checked by a parser test, never built here (no Docker engine).
//! `--migrate` takes no lock: every step is idempotent and runs in a transaction of its own
//! (one schema change per transaction, as CockroachDB wants), so instances starting together
//! end in one schema (see `docs/cockroachdb.md`).

pub mod apply;
pub mod bridge;
pub mod command;
pub mod config;
pub mod heal;
pub mod mqtt_connect;
pub mod ops;
pub mod record;
pub mod source;
pub mod worker;
