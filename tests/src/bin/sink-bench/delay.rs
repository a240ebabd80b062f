//! A [`BatchWriter`] that adds a fixed latency to every batch before the real write.
//!
//! The source calls `write` once per batch and [`Db`] writes a batch in one transaction
//! (more only when it retries a serialization failure or isolates a rejected record; the
//! bench reports the retries, whose extra attempts get no added delay), so a delay per call
//! is a delay per transaction: it stands for a database (CockroachDB across zones) that takes 5 ms longer
//! to commit. It is spent before the transaction opens, so it holds no locks.

use std::time::Duration;

use cloud_sink::apply::Db;
use cloud_sink::record::{BatchWriter, Raw, WriteError, WriteOutcome};

pub struct Delayed {
    pub db: Db,
    pub delay: Duration,
}

impl BatchWriter for Delayed {
    async fn write(&self, batch: &[Raw]) -> Result<WriteOutcome, WriteError> {
        tokio::time::sleep(self.delay).await;
        self.db.write(batch).await
    }
}
