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
//!   ordered worker per partition, pause/resume, offsets committed only after the batch's
//!   transaction, revocation within a deadline, a supervisor that rebuilds the consumer),
//!   with [`source::kafka::KafkaMetrics`].
//!
//! Limitations (issue 4 in progress): the binary does not ingest yet (no CLI wiring of the
//! Kafka source to [`apply::Db`]); no MQTT source, no bridge, no Prometheus endpoint or health
//! checks, no Dockerfile. The SQL keeps to what CockroachDB documents but has only run on
//! PostgreSQL.

pub mod apply;
pub mod record;
pub mod source;
pub mod worker;
