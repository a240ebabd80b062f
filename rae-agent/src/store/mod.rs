//! The store: the only owner of the registry database (`/var/lib/rae-agent/registry.db`).
//!
//! Parts:
//! - [`Store`] (`registry.rs`): the read-write SQLite connection. [`Store::commit`] applies a
//!   batch of registry [`Change`]s in one transaction: session rows, the event history and the
//!   outbox rows the publisher sends (transactional outbox). Also restores open sessions for
//!   the registry core after a restart.
//! - `outbox.rs`: the publisher's drain API (peek in order, ack after PUBACK, stats) and the
//!   byte quota, enforced by coalescing a session's pending events into one Snapshot.
//! - [`floor`]: the free-disk floor (statvfs of the database's directory): below it the
//!   outbox quota drops to `disk.low_outbox_max_bytes`, warned and counted.
//! - [`quota`]: the pure coalescing policy; [`CommitBatcher`] (`batch.rs`): the pure grouped
//!   commit policy (`now` is an argument): a quiet event commits at once, events under load
//!   are batched for a hold-off that grows up to [`CommitPolicy::max_delay`].
//! - `apply.rs`: the pure rules that turn a Change into a session update, a history entry and
//!   an encoded event; shared by [`Store`] and its in-memory twin [`MemoryStore`].
//! - [`StoreReader`] (`reader.rs`): read-only queries for `raectl` (devices, one device with its
//!   history, the latest events and events since an id, outbox depth, the status the daemon
//!   writes).
//! - [`StoreHandle`] (`thread.rs`): runs a [`RegistryStore`] on its own thread behind a bounded
//!   channel, so blocking SQLite work stays off the async workers.
//! - `schema.rs`: the schema and its migrations, versioned by `PRAGMA user_version`.
//! - [`open_checked`] (`integrity.rs`): `PRAGMA quick_check` at start; a damaged database
//!   (and only a damaged one, never one behind a transient I/O, permission or lock error) is
//!   moved aside with a UTC timestamp, replaced by a fresh one, and the recovery counted.
//!
//! # Durability: a published seq is never reused, a session's events never reorder
//!
//! What carries it, step by step (SQLite in WAL mode; `synchronous` set per transaction):
//!
//! 1. **A seq is stored before anyone can see it.** The core assigns seqs in memory; the store
//!    thread commits them, session `last_seq` and outbox row in one transaction, with
//!    `synchronous=FULL` (the WAL is fsynced before `commit` returns). The publisher only
//!    sees rows through `outbox_peek` on the same connection, after that return, and the
//!    inventory ([`StoreHandle::inventory_watch`]) is folded from committed Changes only. So
//!    nothing outside the process (broker, inventory) ever holds a seq a crash can take back.
//! 2. **kill -9 / panic / OOM** (the OS survives): every write(2) SQLite made is in the page
//!    cache, NORMAL transactions included, so the database is exactly the last committed
//!    transaction. Changes that were queued or being committed are lost *unpublished*; the
//!    next run resumes each session from its committed `last_seq` and reassigns the lost
//!    seqs, which nobody saw. Unacked rows are re-sent with their stored bytes
//!    (byte-identical duplicates, which QoS 1 allows).
//! 3. **Power loss / kernel crash.** WAL recovery keeps a checksummed prefix of the log: at
//!    least everything up to the last fsync, possibly some frames after it, never a frame
//!    without the ones before it. Every FULL commit is in that prefix, so no seq that could
//!    have been published rolls back (1). What may roll back: NORMAL transactions after the
//!    last fsync, which are `Seen`-only commits (`last_seen` goes back a little), acks (their
//!    rows are re-sent with the same bytes), status writes, and coalescings made in a
//!    `Seen`-only commit (their rows were never peeked: see 4).
//! 4. **The quota never rewrites a row the broker may have.** Coalescing replaces rows above
//!    the `outbox_peeked_through` mark by a Snapshot at the highest replaced seq. The mark is
//!    written with `synchronous=FULL` before `outbox_peek` returns the rows, so after any
//!    crash it covers every row that reached the publisher. It reaches up to 1,024 rows
//!    past the rows handed over (those go out next anyway), so one fsync covers the
//!    publisher's peeks of a whole commit's rows rather than one fsync per peek (measured:
//!    0.141 fsyncs per event with one per peek, 0.022 with the reach, see BENCHMARKS); were it NORMAL, a power loss
//!    could roll it back and the next run could coalesce delivered rows into a Snapshot
//!    carrying a delivered seq with other bytes (`tests/store_power_loss.rs` shows exactly
//!    that with the mark at NORMAL). The same fsync makes durable any coalescing a NORMAL
//!    commit made before the rows are handed out.
//! 5. **Order.** Outbox ids come from AUTOINCREMENT (never reused, also across deletes and
//!    rollbacks of uncommitted work); the publisher sends in id order and rewinds to the
//!    oldest unacked row after a reconnect or restart. A session's rows get increasing ids
//!    in seq order (one writer, one transaction at a time), and a coalesced Snapshot takes
//!    the place of the oldest row it replaces, so no session's events reorder.
//! 6. **The adaptive commit** ([`CommitBatcher`]) only moves commits in time: an event waits
//!    at most `max_delay` before its (FULL) commit, and it is invisible until then. Holding
//!    events longer costs latency, never durability; a crash inside the hold-off loses only
//!    unpublished seqs (2).
//!
//! Cost: one fsync per commit with events (grouped by the adaptive policy) and one per
//! `outbox_peek` that moves the mark past its reach, about one per commit when the
//! publisher keeps up; figures in `docs/BENCHMARKS.md` ("rae-agent
//! durability"). Tested by `tests/store_power_loss.rs` (only the files as of the last fsync
//! survive), `tests/store_inventory.rs`, and the lab's `agent_crash.rs` (kill -9 at 20 random
//! instants in a stream of 5,000 changes; a 60 s broker outage).
//!
//! Not covered: a disk that lies about fsync (write cache without power-loss protection),
//! and a database lost or replaced whole (`open_checked` then starts fresh sessions with new
//! ids, so old seqs are not reused either: a new session id is a new seq space).
//!
//! Limitations:
//! - A session row of a closed session is kept until [`StoreOptions::closed_sessions_max`]
//!   newer closed sessions exist, then deleted with its history.
//! - Coalescing cannot shrink the outbox below one Snapshot plus one Closed per session with
//!   pending events that the cloud heard of (closed sessions it never heard of vanish whole),
//!   nor touch rows already handed to the publisher; when that is still over the quota the
//!   overrun is counted (`outbox_quota_unmet`) and reported, not hidden. [`quota`] has the
//!   bound that holds with the session cap.
//! - A read-only open may create empty `-wal`/`-shm` files next to the database (SQLite's rule
//!   for WAL readers); on a read-only filesystem a cleanly closed database is opened
//!   `immutable` instead.

mod apply;
mod batch;
mod error;
pub mod floor;
mod integrity;
mod memory;
mod outbox;
pub mod quota;
mod reader;
mod registry;
mod schema;
mod thread;

use std::time::Duration;

use rae_proto::{CloseReason, DeviceRecord, Mac, Serial, SessionId};

use crate::registry::Change;

pub use apply::{describe_field, HistoryKind};
pub use batch::{CommitBatcher, CommitPolicy, LastCommit};
pub use error::{ChangeError, StoreError};
pub use integrity::{is_corruption, open_checked, Recovery, INTEGRITY_RECOVERIES};
pub use memory::MemoryStore;
pub use outbox::{
    COALESCED_EVENTS, COALESCED_SESSIONS, QUOTA_UNMET, VANISHED_EVENTS, VANISHED_SESSIONS,
};
pub use reader::{
    DeviceQuery, DeviceQueryParseError, DeviceRow, HistoryRow, StatusEntry, StoreReader,
};
pub use registry::Store;
pub use registry::DISK_FLOOR_REACHED;
pub use schema::SCHEMA_VERSION;
pub use thread::{StoreHandle, StoreThreadOptions};

/// The registry's persistence, as the daemon's store thread uses it: the SQLite [`Store`], or
/// the [`MemoryStore`] twin in tests of the logic above it.
pub trait RegistryStore {
    /// Applies `changes` in order, all or nothing, with `now_ms` as the RAE wall clock.
    fn commit(
        &mut self,
        changes: &[Change],
        serial: &Serial,
        now_ms: i64,
    ) -> Result<CommitReport, StoreError>;

    /// The sessions that are open, for the registry core to resume with.
    fn open_sessions(&self) -> Result<Vec<RestoredSession>, StoreError>;

    /// Up to `limit` outbox rows with an id above `after_id`, oldest first. The rows returned
    /// are in flight from now on: the quota never coalesces them (nor the next 1,024 rows
    /// behind them, which one fsync of the mark covers with them), so peek only what is
    /// about to be sent.
    fn outbox_peek(&mut self, after_id: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError>;

    /// Deletes the acknowledged rows; unknown ids are ignored (an ack may repeat after a
    /// reconnect). Returns how many rows were deleted.
    fn outbox_ack(&mut self, ids: &[i64]) -> Result<usize, StoreError>;

    fn outbox_stats(&self) -> Result<OutboxStats, StoreError>;

    /// Sets status entries for `raectl status` (capture counters, drops, broker connection).
    fn write_status(&mut self, entries: &[(String, String)], now_ms: i64)
        -> Result<(), StoreError>;
}

/// Limits of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Over this many payload bytes pending, sessions' events coalesce into Snapshots.
    pub outbox_max_bytes: u64,
    /// The history keeps about this many newest rows (at most an eighth more between trims).
    pub history_max_rows: u64,
    /// Closed sessions kept for `raectl devices --all`; older ones are deleted.
    pub closed_sessions_max: u64,
    /// How long a statement waits for a lock held by another connection.
    pub busy_timeout: Duration,
    /// Short of disk, the quota drops (see [`floor`]).
    pub disk_floor: floor::DiskFloor,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            outbox_max_bytes: 16 * 1024 * 1024,
            history_max_rows: 10_000,
            closed_sessions_max: 10_000,
            busy_timeout: Duration::from_secs(5),
            disk_floor: floor::DiskFloor::from_config(&crate::config::DiskConfig::default()),
        }
    }
}

impl StoreOptions {
    /// The defaults with the configured outbox quota.
    pub fn from_config(config: &crate::config::Config) -> Self {
        StoreOptions {
            outbox_max_bytes: config.publish.outbox_max_bytes,
            disk_floor: floor::DiskFloor::from_config(&config.disk),
            ..StoreOptions::default()
        }
    }
}

/// What one commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Outbox rows appended (events to publish).
    pub events: usize,
    /// History rows appended, coalescing records included.
    pub history_rows: usize,
    /// Sessions whose pending events were coalesced because the outbox was over its quota.
    pub coalesced: Vec<Coalescing>,
    /// Closed sessions the cloud never heard of, dropped whole to hold the quota.
    pub vanished: Vanished,
    /// The outbox is still over its quota after coalescing everything it may.
    pub quota_unmet: bool,
    /// The outbox after the commit.
    pub outbox: OutboxStats,
}

/// One session's pending events replaced by one Snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coalescing {
    pub session: SessionId,
    /// How many pending events the Snapshot replaced.
    pub events: u64,
    /// The lowest and highest seq replaced; the Snapshot carries `last_seq`.
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Sessions dropped whole from the outbox and the registry (see [`quota`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vanished {
    pub sessions: u64,
    /// Their pending events (Closed included).
    pub events: u64,
}

/// Depth of the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub rows: u64,
    pub bytes: u64,
    /// When the row at the head of the queue was created (RAE wall clock, unix ms).
    pub oldest_created_ms: Option<i64>,
}

/// One event waiting for its PUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Queue position; ack with it.
    pub id: i64,
    pub session: SessionId,
    pub seq: u64,
    pub topic: String,
    /// The encoded rae-proto Envelope, ready to publish.
    pub payload: Vec<u8>,
    pub created_ms: i64,
}

/// An open session as it was last committed, for the registry core to resume with the same
/// session id and seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredSession {
    pub session: SessionId,
    pub mac: Mac,
    pub record: DeviceRecord,
    /// The seq of the session's latest event; the next one is `last_seq + 1`.
    pub last_seq: u64,
    pub opened_ms: i64,
}

/// How a session ended, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closure {
    pub at_ms: i64,
    pub reason: CloseReason,
}
