//! [`Store`]: the read-write connection to the registry database and the commit of Changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rae_proto::{Serial, SessionId};
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};

use super::apply::{apply_change, encode_record, HistoryEntry, NewEvent, SessionState};
use super::apply::{decode_record, parse_close_reason, parse_mac, parse_session};
use super::error::{ChangeError, SqlContext, StoreError};
use super::floor::{self, DiskState};
use super::outbox::{self, OutboxTotals};
use super::{schema, Closure, CommitReport, OutboxRow, OutboxStats, RegistryStore};
use super::{RestoredSession, StoreOptions};
use crate::registry::Change;

/// Counter: times the free disk fell below the floor (see [`floor`](super::floor)).
pub const DISK_FLOOR_REACHED: &str = "disk_floor_reached";

/// The meta key that remembers the highest outbox id handed to the publisher.
pub(super) const PEEKED_THROUGH: &str = "outbox_peeked_through";

/// The only read-write connection to the registry database. One thread owns it (see
/// [`StoreHandle`](super::StoreHandle)); `raectl` reads through [`StoreReader`](super::StoreReader).
///
/// # Durability, and why `seq` survives power loss
///
/// The database runs in WAL mode. A commit that appends outbox rows (it assigns seqs to events
/// the publisher may send right after) runs with `synchronous=FULL`: SQLite fsyncs the WAL
/// before the commit returns, so no event can reach the broker unless its row, and the
/// session's `last_seq` written in the same transaction, are on the flash. After a power loss
/// the registry core resumes every session from a `last_seq` at least as high as any seq
/// that was published, and never hands out a published seq again.
///
/// The mark of the rows handed to the publisher (`outbox_peek`) is written with
/// `synchronous=FULL` too, for the same reason: the quota must never coalesce a row the broker
/// may already have, after a power loss included.
///
/// Everything else (`Seen`-only commits, acks, status) runs with `synchronous=NORMAL`: power loss
/// may undo the last of those, which costs a stale `last_seen` or a row published twice (the
/// sink's convergence rule absorbs duplicates), never a corrupt database, and never a reused
/// seq. The next FULL commit fsyncs the WAL and with it every earlier transaction. The whole
/// argument, case by case, is in the store's module documentation ("Durability").
pub struct Store {
    pub(super) conn: Connection,
    path: PathBuf,
    pub(super) options: StoreOptions,
    synchronous: Option<Synchronous>,
    pub(super) outbox: OutboxTotals,
    /// Rows up to this id were handed to the publisher and may be on the wire, or are next
    /// in line behind those (see `MARK_AHEAD_ROWS`): the quota leaves them alone.
    pub(super) peeked_through: i64,
    history_since_trim: u64,
    serial_written: Option<Serial>,
    /// The last free-disk sample and whether it was below the floor.
    disk: DiskState,
    /// The sample at open found the disk short: counted with the first status write.
    disk_crossed_at_open: bool,
    /// Transactions committed with `synchronous=FULL` (each one an fsync of the WAL).
    pub(super) durable_writes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Synchronous {
    Normal,
    Full,
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        let open_error = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(&path, flags).map_err(open_error)?;
        conn.busy_timeout(options.busy_timeout)
            .map_err(open_error)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal { path, mode });
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_error)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_error)?;
        schema::migrate(&mut conn, &path)?;
        let outbox = OutboxTotals::load(&conn)?;
        let peeked_through = conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [PEEKED_THROUGH],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .context("reading the outbox position")?
            .unwrap_or(0);
        Ok(Store {
            conn,
            path,
            synchronous: Some(Synchronous::Normal),
            outbox,
            peeked_through,
            // Trim at the first commit: the limits may have shrunk since the last run.
            history_since_trim: u64::MAX,
            serial_written: None,
            disk: DiskState::default(),
            disk_crossed_at_open: false,
            durable_writes: 0,
            options,
        })
        .map(|mut store| {
            store.disk_crossed_at_open = store.sample_disk();
            store
        })
    }

    /// A counter as `raectl status` shows it (0 when never counted).
    pub fn counter(&self, key: &str) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get::<_, i64>(0)
            })
            .optional()
            .map(|value| value.unwrap_or(0))
            .context("reading a counter")
    }

    /// The outbox quota in force: the configured one, lower while short of disk.
    pub fn effective_quota(&self) -> u64 {
        self.options
            .disk_floor
            .quota(self.options.outbox_max_bytes, self.disk.low)
    }

    /// Samples the free disk; true when it just fell below the floor. A failed statvfs keeps
    /// the last state (it is logged at debug level: the next status write tries again).
    fn sample_disk(&mut self) -> bool {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match floor::sample(&dir) {
            Ok(sample) => self.disk.update(&self.options.disk_floor, sample),
            Err(err) => {
                tracing::debug!(dir = %dir.display(), %err, "cannot read the free disk space");
                false
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// How many transactions this connection committed with `synchronous=FULL`: each one
    /// fsynced the WAL, and with it every transaction before it. For measurements, and for
    /// tests that keep only what a power loss cannot take back (the files as of the last of
    /// these).
    pub fn durable_writes(&self) -> u64 {
        self.durable_writes
    }

    /// Applies `changes` in order in one transaction: session rows, history rows and outbox
    /// rows, then the outbox quota and the history bound. Any refused Change (see
    /// [`ChangeError`]) rolls the whole batch back and leaves the database as it was.
    pub fn commit(
        &mut self,
        changes: &[Change],
        serial: &Serial,
        now_ms: i64,
    ) -> Result<CommitReport, StoreError> {
        if changes.is_empty() {
            let outbox = self.outbox_stats()?;
            return Ok(CommitReport {
                quota_unmet: outbox.bytes > self.effective_quota(),
                outbox,
                ..CommitReport::default()
            });
        }
        let quota_bytes = self.effective_quota();
        let publishes = changes.iter().any(|change| change.seq().is_some());
        self.set_synchronous(match publishes {
            true => Synchronous::Full,
            false => Synchronous::Normal,
        })?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("starting a commit")?;
        let mut report = CommitReport::default();
        let mut totals = self.outbox;
        let mut states: HashMap<SessionId, SessionState> = HashMap::new();
        for change in changes {
            let session = change.session();
            let current = match states.remove(&session) {
                Some(state) => Some(state),
                None => load_session(&tx, session)?,
            };
            let applied = apply_change(current, change, serial)?;
            write_session(&tx, serial, &applied.state, applied.is_new)?;
            if let Some(entry) = &applied.history {
                insert_history(&tx, entry, now_ms)?;
                report.history_rows += 1;
            }
            if let Some(event) = &applied.event {
                insert_outbox(&tx, event, now_ms)?;
                totals.rows += 1;
                totals.bytes += event.payload.len() as u64;
                report.events += 1;
            }
            states.insert(session, applied.state);
        }
        let quota = outbox::enforce_quota(
            &tx,
            serial,
            now_ms,
            &mut totals,
            self.peeked_through,
            quota_bytes,
        )?;
        report.history_rows += quota.coalesced.len();
        report.coalesced = quota.coalesced;
        report.vanished = quota.vanished;
        report.quota_unmet = quota.unmet;
        let trim_every = (self.options.history_max_rows / 8).max(1);
        let mut since_trim = self
            .history_since_trim
            .saturating_add(report.history_rows as u64);
        if since_trim >= trim_every {
            trim(&tx, &self.options)?;
            since_trim = 0;
        }
        if self.serial_written.as_ref() != Some(serial) {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('serial', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [serial.as_str()],
            )
            .context("recording the serial")?;
        }
        tx.commit().context("committing changes")?;
        if publishes {
            self.durable_writes += 1;
        }
        self.outbox = totals;
        self.history_since_trim = since_trim;
        self.serial_written = Some(serial.clone());
        report.outbox = self.outbox_stats()?;
        Ok(report)
    }

    /// The open sessions, oldest first, as last committed.
    pub fn open_sessions(&self) -> Result<Vec<RestoredSession>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT session, mac, record, last_seq, opened_ms FROM sessions
                 WHERE closed_ms IS NULL ORDER BY opened_ms, session",
            )
            .context("listing open sessions")?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Vec<u8>>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })
            .context("listing open sessions")?;
        let mut sessions = Vec::new();
        for row in rows {
            let (session, mac, record, last_seq, opened_ms) =
                row.context("listing open sessions")?;
            sessions.push(RestoredSession {
                mac: parse_mac(&session, &mac)?,
                record: decode_record(&session, &record)?,
                last_seq: stored_seq(&session, last_seq)?,
                opened_ms,
                session: parse_session(&session)?,
            });
        }
        Ok(sessions)
    }

    /// Upserts status entries that `raectl status` shows.
    pub fn write_status(
        &mut self,
        entries: &[(String, String)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.set_synchronous(Synchronous::Normal)?;
        let crossed = self.sample_disk() | std::mem::take(&mut self.disk_crossed_at_open);
        if self.disk.low && crate::log_limit::allow("store.disk_low") {
            let floor = &self.options.disk_floor;
            tracing::warn!(
                free_bytes = self.disk.last.map(|s| s.free_bytes),
                floor_bytes = self.disk.last.map(|s| floor.floor_bytes(s.total_bytes)),
                outbox_quota_bytes = self.effective_quota(),
                "short of disk: below the free-disk floor, the outbox coalesces harder"
            );
        }
        let mut own = self
            .disk
            .entries(&self.options.disk_floor, self.options.outbox_max_bytes);
        own.extend(entries.iter().cloned());
        let entries = own;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("starting a status write")?;
        if crossed {
            bump_counter(&tx, DISK_FLOOR_REACHED, 1)?;
        }
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO status (key, value, updated_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE
                     SET value = excluded.value, updated_ms = excluded.updated_ms",
                )
                .context("writing status")?;
            for (key, value) in &entries {
                stmt.execute(params![key, value, now_ms])
                    .context("writing status")?;
            }
        }
        tx.commit().context("committing status")
    }

    pub(super) fn set_synchronous(&mut self, level: Synchronous) -> Result<(), StoreError> {
        if self.synchronous == Some(level) {
            return Ok(());
        }
        let value = match level {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        // Forget the level first: if the pragma fails, the next call must set it again.
        self.synchronous = None;
        self.conn
            .pragma_update(None, "synchronous", value)
            .context("setting the sync level")?;
        self.synchronous = Some(level);
        Ok(())
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("outbox", &self.outbox)
            .field("peeked_through", &self.peeked_through)
            .finish_non_exhaustive()
    }
}

impl RegistryStore for Store {
    fn commit(
        &mut self,
        changes: &[Change],
        serial: &Serial,
        now_ms: i64,
    ) -> Result<CommitReport, StoreError> {
        Store::commit(self, changes, serial, now_ms)
    }

    fn open_sessions(&self) -> Result<Vec<RestoredSession>, StoreError> {
        Store::open_sessions(self)
    }

    fn outbox_peek(&mut self, after_id: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        Store::outbox_peek(self, after_id, limit)
    }

    fn outbox_ack(&mut self, ids: &[i64]) -> Result<usize, StoreError> {
        Store::outbox_ack(self, ids)
    }

    fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        Store::outbox_stats(self)
    }

    fn write_status(
        &mut self,
        entries: &[(String, String)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        Store::write_status(self, entries, now_ms)
    }
}

pub(super) fn stored_seq(session: &str, seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| StoreError::Corrupt {
        session: session.to_owned(),
        what: "seq",
        detail: format!("{seq} is negative"),
    })
}

pub(super) fn sql_seq(session: SessionId, seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| ChangeError::SeqTooLarge { session, seq }.into())
}

fn load_session(tx: &Transaction, session: SessionId) -> Result<Option<SessionState>, StoreError> {
    let text = session.to_string();
    let row = tx
        .prepare_cached(
            "SELECT mac, opened_ms, closed_ms, close_reason, last_seq, record
             FROM sessions WHERE session = ?1",
        )
        .context("loading a session")?
        .query_row([&text], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Option<i64>>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, Vec<u8>>(5)?,
            ))
        })
        .optional()
        .context("loading a session")?;
    let Some((mac, opened_ms, closed_ms, reason, last_seq, record)) = row else {
        return Ok(None);
    };
    let closed = match (closed_ms, reason) {
        (None, _) => None,
        (Some(at_ms), reason) => {
            let reason = reason
                .as_deref()
                .and_then(parse_close_reason)
                .ok_or_else(|| StoreError::Corrupt {
                    session: text.clone(),
                    what: "close reason",
                    detail: format!("{reason:?} is not a close reason"),
                })?;
            Some(Closure { at_ms, reason })
        }
    };
    Ok(Some(SessionState {
        session,
        mac: parse_mac(&text, &mac)?,
        record: decode_record(&text, &record)?,
        last_seq: stored_seq(&text, last_seq)?,
        opened_ms,
        closed,
    }))
}

fn write_session(
    tx: &Transaction,
    serial: &Serial,
    state: &SessionState,
    is_new: bool,
) -> Result<(), StoreError> {
    let session = state.session.to_string();
    let mac = state.mac.to_string();
    if is_new {
        let open: Option<String> = tx
            .prepare_cached("SELECT session FROM sessions WHERE mac = ?1 AND closed_ms IS NULL")
            .context("checking a MAC's open session")?
            .query_row([&mac], |row| row.get(0))
            .optional()
            .context("checking a MAC's open session")?;
        if let Some(open) = open {
            return Err(ChangeError::MacAlreadyOpen {
                mac: state.mac,
                open: parse_session(&open)?,
                session: state.session,
            }
            .into());
        }
    }
    let record = encode_record(serial, state)?;
    let r = &state.record;
    let sql = match is_new {
        true => {
            "INSERT INTO sessions (session, mac, opened_ms, closed_ms, close_reason, last_seq,
                 record, ipv4, hostname, vendor, reachability, availability, last_seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        }
        false => {
            "UPDATE sessions SET mac = ?2, opened_ms = ?3, closed_ms = ?4, close_reason = ?5,
                 last_seq = ?6, record = ?7, ipv4 = ?8, hostname = ?9, vendor = ?10,
                 reachability = ?11, availability = ?12, last_seen_ms = ?13
             WHERE session = ?1"
        }
    };
    tx.prepare_cached(sql)
        .context("writing a session")?
        .execute(params![
            session,
            mac,
            state.opened_ms,
            state.closed.map(|c| c.at_ms),
            state.closed.map(|c| c.reason.as_str()),
            sql_seq(state.session, state.last_seq)?,
            record,
            r.ipv4.map(|ip| ip.to_string()),
            r.hostname
                .as_ref()
                .map(|h| h.to_string_lossy().into_owned()),
            r.vendor,
            r.reachability.state.as_str(),
            r.availability.as_str(),
            r.last_seen_ms,
        ])
        .context("writing a session")?;
    Ok(())
}

pub(super) fn insert_history(
    tx: &Transaction,
    entry: &HistoryEntry,
    now_ms: i64,
) -> Result<(), StoreError> {
    let seq = entry
        .seq
        .map(|seq| sql_seq(entry.session, seq))
        .transpose()?;
    tx.prepare_cached(
        "INSERT INTO history (session, seq, at_ms, recorded_ms, kind, summary, fields)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .context("appending history")?
    .execute(params![
        entry.session.to_string(),
        seq,
        entry.at_ms,
        now_ms,
        entry.kind.as_str(),
        entry.summary,
        entry.fields,
    ])
    .context("appending history")?;
    Ok(())
}

fn insert_outbox(tx: &Transaction, event: &NewEvent, now_ms: i64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO outbox (session, seq, kind, topic, payload, bytes, created_ms, opening)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?2 = 1)",
    )
    .context("appending to the outbox")?
    .execute(params![
        event.session.to_string(),
        sql_seq(event.session, event.seq)?,
        event.kind,
        event.topic,
        event.payload,
        event.payload.len() as i64,
        now_ms,
    ])
    .context("appending to the outbox")?;
    Ok(())
}

/// Keeps the newest `history_max_rows` history rows and `closed_sessions_max` closed sessions
/// (with their history); a closed session whose Closed event is still pending stays.
fn trim(tx: &Transaction, options: &StoreOptions) -> Result<(), StoreError> {
    let keep_history = i64::try_from(options.history_max_rows).unwrap_or(i64::MAX);
    let keep_closed = i64::try_from(options.closed_sessions_max).unwrap_or(i64::MAX);
    tx.prepare_cached(
        "DELETE FROM sessions WHERE closed_ms IS NOT NULL
           AND session NOT IN (SELECT session FROM sessions WHERE closed_ms IS NOT NULL
                               ORDER BY closed_ms DESC, session LIMIT ?1)
           AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.session = sessions.session)",
    )
    .context("trimming closed sessions")?
    .execute([keep_closed])
    .context("trimming closed sessions")?;
    // Ids only grow (AUTOINCREMENT), so this keeps at most the newest rows; fewer when
    // trimmed sessions took rows from the middle with them.
    tx.prepare_cached("DELETE FROM history WHERE id <= (SELECT MAX(id) FROM history) - ?1")
        .context("trimming history")?
        .execute([keep_history])
        .context("trimming history")?;
    Ok(())
}

/// Adds `by` to an integer counter in `meta`.
pub(super) fn bump_counter(tx: &Transaction, key: &str, by: i64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
    )
    .context("counting")?
    .execute(params![key, by])
    .context("counting")?;
    Ok(())
}
