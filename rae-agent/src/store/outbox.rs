//! The outbox: the publisher's drain API and the byte quota (the rule is in [`quota`]).
//!
//! The publisher peeks rows in id order, publishes them (QoS 1) and acks each row only after
//! its PUBACK; after a reconnect it peeks again from the start, so every unacknowledged row is
//! re-sent. Ids come from AUTOINCREMENT and are never reused, even when the queue empties.

use rae_proto::{Event, Serial, SessionId};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::apply::{decode_record, encode_event, parse_session, HistoryEntry, HistoryKind};
use super::error::{SqlContext, StoreError};
use super::quota::{self, Candidate};
use super::registry::{bump_counter, insert_history, sql_seq, stored_seq};
use super::registry::{Synchronous, PEEKED_THROUGH};
use super::{Coalescing, OutboxRow, OutboxStats, Store, Vanished};

/// Meta counters that make coalescing visible in `raectl status`.
pub const COALESCED_EVENTS: &str = "outbox_coalesced_events";
pub const COALESCED_SESSIONS: &str = "outbox_coalesced_sessions";
pub const QUOTA_UNMET: &str = "outbox_quota_unmet";
/// Closed sessions the cloud never heard of, dropped whole (and their events) by the quota.
pub const VANISHED_SESSIONS: &str = "outbox_vanished_sessions";
pub const VANISHED_EVENTS: &str = "outbox_vanished_events";

/// How far past the rows it hands over `outbox_peek` moves the peeked-through mark: rows
/// that queued up behind them and go out next anyway. One fsync then covers the peeks of a
/// whole commit's rows (or of this many backlog rows in a drain) instead of one per peek; the
/// price is that the quota cannot coalesce these few rows.
pub(super) const MARK_AHEAD_ROWS: usize = 1024;

/// The outbox's size, kept in memory by the store's owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct OutboxTotals {
    pub rows: u64,
    pub bytes: u64,
}

impl OutboxTotals {
    pub(super) fn load(conn: &Connection) -> Result<OutboxTotals, StoreError> {
        let (rows, bytes): (i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM outbox",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .context("measuring the outbox")?;
        Ok(OutboxTotals {
            rows: rows.max(0) as u64,
            bytes: bytes.max(0) as u64,
        })
    }
}

/// When the row at the head of the queue was created.
pub(super) fn head_created_ms(conn: &Connection) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached("SELECT created_ms FROM outbox ORDER BY id LIMIT 1")
        .context("reading the outbox head")?
        .query_row([], |row| row.get(0))
        .optional()
        .context("reading the outbox head")
}

impl Store {
    /// Up to `limit` rows with an id above `after_id`, in publish order. The rows returned are
    /// in flight from now on, across restarts too: the quota never coalesces them.
    pub fn outbox_peek(
        &mut self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, session, seq, topic, payload, created_ms FROM outbox
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .context("reading the outbox")?;
        let raw = stmt
            .query_map(params![after_id, limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Vec<u8>>(4)?,
                    row.get::<_, i64>(5)?,
                ))
            })
            .context("reading the outbox")?
            .collect::<Result<Vec<_>, _>>()
            .context("reading the outbox")?;
        drop(stmt);
        let mut rows = Vec::with_capacity(raw.len());
        for (id, session, seq, topic, payload, created_ms) in raw {
            rows.push(OutboxRow {
                id,
                seq: stored_seq(&session, seq)?,
                session: parse_session(&session)?,
                topic,
                payload,
                created_ms,
            });
        }
        if let Some(last) = rows.last().filter(|row| row.id > self.peeked_through) {
            // On the flash (synchronous=FULL: the WAL is fsynced before this returns) before
            // the rows can be published: if the mark could roll back in a power loss, the
            // quota of the next run could coalesce rows the broker already has into a
            // Snapshot carrying a seq the broker already has with other bytes. The mark
            // reaches up to MARK_AHEAD_ROWS rows past the ones handed over, so the publisher's
            // next peeks (one per freed window slot) need no fsync of their own; see
            // "Durability" in the store's module docs.
            let through: i64 = self
                .conn
                .prepare_cached(
                    "SELECT COALESCE(MAX(id), ?1) FROM
                     (SELECT id FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2)",
                )
                .context("reading the outbox")?
                .query_row(params![last.id, MARK_AHEAD_ROWS as i64], |row| row.get(0))
                .context("reading the outbox")?;
            self.set_synchronous(Synchronous::Full)?;
            self.conn
                .execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![PEEKED_THROUGH, through],
                )
                .context("recording the outbox position")?;
            self.durable_writes += 1;
            self.peeked_through = through;
        }
        Ok(rows)
    }

    /// Deletes acknowledged rows; ids that are gone already are ignored. Returns how many
    /// rows were deleted.
    pub fn outbox_ack(&mut self, ids: &[i64]) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.set_synchronous(Synchronous::Normal)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("starting an ack")?;
        let mut deleted = OutboxTotals::default();
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM outbox WHERE id = ?1 RETURNING bytes")
                .context("acking outbox rows")?;
            for id in ids {
                let bytes: Option<i64> = stmt
                    .query_row([id], |row| row.get(0))
                    .optional()
                    .context("acking outbox rows")?;
                if let Some(bytes) = bytes {
                    deleted.rows += 1;
                    deleted.bytes += bytes.max(0) as u64;
                }
            }
        }
        tx.commit().context("committing an ack")?;
        self.outbox.rows = self.outbox.rows.saturating_sub(deleted.rows);
        self.outbox.bytes = self.outbox.bytes.saturating_sub(deleted.bytes);
        Ok(deleted.rows as usize)
    }

    pub fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        Ok(OutboxStats {
            rows: self.outbox.rows,
            bytes: self.outbox.bytes,
            oldest_created_ms: head_created_ms(&self.conn)?,
        })
    }
}

/// What enforcing the quota did.
pub(super) struct QuotaOutcome {
    pub coalesced: Vec<Coalescing>,
    pub vanished: Vanished,
    pub unmet: bool,
}

/// Coalesces sessions' pending events while the outbox is over `max_bytes` (see [`quota`]),
/// inside the commit's transaction, and records each coalescing in history and `meta`.
pub(super) fn enforce_quota(
    tx: &Transaction,
    serial: &Serial,
    now_ms: i64,
    totals: &mut OutboxTotals,
    peeked_through: i64,
    max_bytes: u64,
) -> Result<QuotaOutcome, StoreError> {
    let mut outcome = QuotaOutcome {
        coalesced: Vec::new(),
        vanished: Vanished::default(),
        unmet: false,
    };
    if totals.bytes <= max_bytes {
        return Ok(outcome);
    }
    let candidates = candidates(tx, peeked_through)?;
    let Some(plan) = quota::plan(totals.bytes, max_bytes, &candidates) else {
        return Ok(outcome);
    };
    for session in plan.sessions {
        let Some(coalescing) =
            coalesce_session(tx, serial, session, peeked_through, now_ms, totals)?
        else {
            continue;
        };
        let entry = HistoryEntry {
            session,
            seq: Some(coalescing.last_seq),
            at_ms: now_ms,
            kind: HistoryKind::Coalesced,
            summary: format!(
                "outbox over its quota of {max_bytes} bytes: {} pending events (seq {} to {}) \
                 replaced by one Snapshot at seq {}; their intermediate values are lost",
                coalescing.events, coalescing.first_seq, coalescing.last_seq, coalescing.last_seq
            ),
            fields: String::new(),
        };
        insert_history(tx, &entry, now_ms)?;
        bump_counter(tx, COALESCED_EVENTS, coalescing.events as i64)?;
        bump_counter(tx, COALESCED_SESSIONS, 1)?;
        outcome.coalesced.push(coalescing);
    }
    for session in plan.vanish {
        let events = vanish_session(tx, session, peeked_through, totals)?;
        if events > 0 {
            outcome.vanished.sessions += 1;
            outcome.vanished.events += events;
        }
    }
    if outcome.vanished.sessions > 0 {
        bump_counter(tx, VANISHED_SESSIONS, outcome.vanished.sessions as i64)?;
        bump_counter(tx, VANISHED_EVENTS, outcome.vanished.events as i64)?;
    }
    if totals.bytes > max_bytes {
        bump_counter(tx, QUOTA_UNMET, 1)?;
        outcome.unmet = true;
    }
    Ok(outcome)
}

fn candidates(tx: &Transaction, peeked_through: i64) -> Result<Vec<Candidate>, StoreError> {
    // Coalescable: not handed to the publisher, not Closed. Vanishable: closed, nothing
    // handed to the publisher, and the opening row still pending (see `quota`).
    let mut stmt = tx
        .prepare_cached(
            "SELECT o.session,
                    SUM(o.id > ?1 AND o.kind != 'closed'),
                    SUM(CASE WHEN o.id > ?1 AND o.kind != 'closed' THEN o.bytes ELSE 0 END),
                    LENGTH(s.record),
                    MIN(o.id) > ?1 AND MAX(o.opening) = 1 AND s.closed_ms IS NOT NULL,
                    SUM(o.bytes)
             FROM outbox o JOIN sessions s ON s.session = o.session
             GROUP BY o.session",
        )
        .context("measuring coalescable events")?;
    let raw = stmt
        .query_map([peeked_through], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, bool>(4)?,
                row.get::<_, i64>(5)?,
            ))
        })
        .context("measuring coalescable events")?
        .collect::<Result<Vec<_>, _>>()
        .context("measuring coalescable events")?;
    raw.into_iter()
        .map(
            |(session, events, bytes, snapshot_bytes, vanishable, total_bytes)| {
                Ok(Candidate {
                    session: parse_session(&session)?,
                    events: events.max(0) as u64,
                    bytes: bytes.max(0) as u64,
                    snapshot_bytes: snapshot_bytes.max(0) as u64,
                    vanishable,
                    total_bytes: total_bytes.max(0) as u64,
                })
            },
        )
        .collect()
}

/// Drops a closed session the cloud never heard of whole: its outbox rows and its registry
/// row (its history goes with it). Returns how many events went; none when a row of it was
/// handed to the publisher after all.
fn vanish_session(
    tx: &Transaction,
    session: SessionId,
    peeked_through: i64,
    totals: &mut OutboxTotals,
) -> Result<u64, StoreError> {
    let text = session.to_string();
    let (rows, bytes, first): (i64, i64, Option<i64>) = tx
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0), MIN(id) FROM outbox WHERE session = ?1",
        )
        .context("measuring a session to drop")?
        .query_row([&text], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .context("measuring a session to drop")?;
    if first.map_or(true, |id| id <= peeked_through) {
        return Ok(0);
    }
    tx.prepare_cached("DELETE FROM outbox WHERE session = ?1")
        .context("dropping a session's events")?
        .execute([&text])
        .context("dropping a session's events")?;
    tx.prepare_cached("DELETE FROM sessions WHERE session = ?1 AND closed_ms IS NOT NULL")
        .context("dropping a session")?
        .execute([&text])
        .context("dropping a session")?;
    totals.rows = totals.rows.saturating_sub(rows.max(0) as u64);
    totals.bytes = totals.bytes.saturating_sub(bytes.max(0) as u64);
    Ok(rows.max(0) as u64)
}

/// Replaces the session's coalescable rows by one Snapshot of its current record at the
/// highest seq among them, in the place of the oldest row.
fn coalesce_session(
    tx: &Transaction,
    serial: &Serial,
    session: SessionId,
    peeked_through: i64,
    now_ms: i64,
    totals: &mut OutboxTotals,
) -> Result<Option<Coalescing>, StoreError> {
    let text = session.to_string();
    let rows: Vec<(i64, i64, i64)> = tx
        .prepare_cached(
            "SELECT id, seq, bytes FROM outbox
             WHERE session = ?1 AND id > ?2 AND kind != 'closed' ORDER BY id",
        )
        .context("reading events to coalesce")?
        .query_map(params![text, peeked_through], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .context("reading events to coalesce")?
        .collect::<Result<_, _>>()
        .context("reading events to coalesce")?;
    let Some(&(keep, _, _)) = rows.first() else {
        return Ok(None);
    };
    let first_seq = stored_seq(&text, rows.iter().map(|r| r.1).min().unwrap_or(0))?;
    let last_seq = stored_seq(&text, rows.iter().map(|r| r.1).max().unwrap_or(0))?;
    let old_bytes: u64 = rows.iter().map(|r| r.2.max(0) as u64).sum();
    let blob: Vec<u8> = tx
        .prepare_cached("SELECT record FROM sessions WHERE session = ?1")
        .context("reading a record to coalesce")?
        .query_row([&text], |row| row.get(0))
        .context("reading a record to coalesce")?;
    let record = decode_record(&text, &blob)?;
    let event = Event::Snapshot {
        record: Box::new(record),
    };
    let snapshot = encode_event(serial, session, last_seq, now_ms, event)?;
    let new_bytes = snapshot.payload.len() as u64;
    tx.prepare_cached(
        "UPDATE outbox SET seq = ?2, kind = ?3, payload = ?4, bytes = ?5 WHERE id = ?1",
    )
    .context("writing a coalesced Snapshot")?
    .execute(params![
        keep,
        sql_seq(session, last_seq)?,
        snapshot.kind,
        snapshot.payload,
        new_bytes as i64,
    ])
    .context("writing a coalesced Snapshot")?;
    tx.prepare_cached(
        "DELETE FROM outbox
         WHERE session = ?1 AND id > ?2 AND kind != 'closed' AND id != ?3",
    )
    .context("deleting coalesced events")?
    .execute(params![text, peeked_through, keep])
    .context("deleting coalesced events")?;
    let events = rows.len() as u64;
    totals.rows = totals.rows.saturating_sub(events - 1);
    totals.bytes = totals.bytes.saturating_sub(old_bytes) + new_bytes;
    Ok(Some(Coalescing {
        session,
        events,
        first_seq,
        last_seq,
    }))
}
