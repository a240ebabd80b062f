//! cloud-sink: ingests RAE device events into the Cloud Registry (CockroachDB; PostgreSQL at
//! SERIALIZABLE stands in for tests), and bridges MQTT into Kafka.
//!
//! Parts (DESIGN section 5):
//! - [`record`]: what a source delivers ([`record::Raw`]: topic, payload, where it came from)
//!   and the boundary between the ordered pipeline and the database ([`record::BatchWriter`]).
//! - [`apply`]: decoding and validation of raw records (bad ones become dead letters), the
//!   pure per-session fold of a batch, and the one place that writes SQL.
//! - [`worker`]: ordered batching per partition or lane and offset tracking (takes `now`).
//! - [`source`]: the Kafka consumer and the MQTT subscriber that feed workers.
//!
//! Limitations: under construction (issue 4); the binary does not ingest yet.

pub mod apply;
pub mod record;
pub mod source;
pub mod worker;
