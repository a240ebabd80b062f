//! Decoding and validation, the per-session fold, and the SQL that writes it.
//!
//! - [`mod@decode`]: topic + payload -> [`SinkEvent`], or the [`Rejection`] a dead letter records.
//! - [`mod@fold`]: pure: a batch -> one change per session and per RAE; the convergence rule and
//!   the exact meaning of `needs_resync` are documented there.
//! - `columns`, `statements`: how the record maps onto columns; the statements of a write.
//! - [`sql`]: [`Db`], the [`BatchWriter`](crate::record::BatchWriter): one transaction per
//!   batch, retried on SQLSTATE 40001/40P01/40003 and lost connections with capped backoff.
//!
//! Limitations: a record that only the database rejects (SQLSTATE class 22/23, or a permanent
//! error once proven to be the record's) is isolated by halving the batch into separately
//! committed parts; a permanent error of the database itself (a dropped table) is told apart
//! from a record's only by whether anything else commits, so one that lasts drains a batch
//! into `dead_letters` at about one record per `permanent_strikes - 1` failed writes; a session's gap record keeps at most
//! [`DbOptions::max_pending_runs`] runs, beyond which its bookkeeping under-reports what was
//! received until a Snapshot (see [`mod@fold`]); MQTT-origin dead letters have no stable
//! identity, so an attempt whose commit outcome was lost may record one twice (Kafka-origin
//! ones are unique by topic/partition/offset).

mod columns;
pub mod decode;
pub mod fold;
pub mod sql;
mod statements;

pub use decode::{decode, Rejection, SinkEvent};
pub use fold::{fold, Folded, DEFAULT_MAX_PENDING_RUNS};
pub use sql::{Db, DbError, DbOptions, RetryPolicy, DEFAULT_PERMANENT_STRIKES};

use crate::record::Raw;

/// Decodes every record of `batch` and folds the batch (positions are into `batch`).
pub fn prepare(batch: &[Raw]) -> Folded {
    fold(batch.iter().enumerate().map(|(i, raw)| (i, decode(raw))))
}
