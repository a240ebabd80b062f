//! The records the pipeline moves, and the boundary to the database.
//!
//! A source delivers [`Raw`] records in order per partition (Kafka) or lane (MQTT). A worker
//! groups them into batches and hands each batch to a [`BatchWriter`], which decodes,
//! validates, folds and writes it in one transaction, dead-lettering what does not decode or
//! validate. Only after `write` returned `Ok` may the source commit the batch's offsets (or
//! ack its MQTT messages).

use std::future::Future;

/// Where a record came from: enough to commit it and to name it in a dead letter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
    Mqtt {
        /// The lane (hash of the MQTT topic) the record was routed to.
        lane: u32,
        /// The MQTT packet id, when it was QoS 1 or 2.
        pkid: Option<u16>,
    },
}

/// One record as the source delivered it, undecoded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Raw {
    /// The MQTT topic (for Kafka, the record key the bridge set), e.g.
    /// `rae/v1/RAE-1/devices/<session>`. `None` when a Kafka record had no key.
    pub topic: Option<String>,
    pub payload: Vec<u8>,
    pub origin: Origin,
}

/// What one batch write did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Records applied (device events, inventories, statuses).
    pub applied: usize,
    /// Records written to `dead_letters` instead.
    pub dead_lettered: usize,
    /// Transaction attempts beyond the first (serialization failures, lost connections).
    pub retries: u32,
    /// Of `dead_lettered`, the records the database refused with a permanent error.
    pub permanent_rejections: usize,
    /// Sessions whose gap record reached its cap in this write (runs were forgotten).
    pub gap_overflows: usize,
}

/// Why a batch could not be written. Every variant means "nothing of this batch is committed;
/// do not commit its offsets".
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The database stayed unavailable or kept failing beyond the retry budget.
    #[error("database unavailable after {attempts} attempts: {message}")]
    Unavailable { attempts: u32, message: String },
    /// The writer is shutting down.
    #[error("writer stopped")]
    Stopped,
}

/// Writes one batch atomically: all of it (applied or dead-lettered) or nothing.
pub trait BatchWriter: Send + Sync + 'static {
    fn write(&self, batch: &[Raw])
        -> impl Future<Output = Result<WriteOutcome, WriteError>> + Send;
}
