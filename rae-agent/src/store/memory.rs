//! [`MemoryStore`]: the in-memory twin of [`Store`](super::Store) for tests of the logic above
//! the store (publisher, store thread). It runs the same rules (`apply.rs`, [`quota`]) and the
//! same quota plan; the real database is tested for real, separately, and a property test holds
//! the two to the same outbox.
//!
//! Each commit works on a copy of the whole state, which makes it all-or-nothing like a
//! transaction and makes it unfit for large registries: it is for tests.

use std::collections::{BTreeMap, VecDeque};

use rae_proto::{Event, Serial, SessionId};

use super::apply::SessionState;
use super::apply::{apply_change, encode_event, encode_record, HistoryEntry, HistoryKind};
use super::error::{ChangeError, StoreError};
use super::floor::{DiskSample, DiskState};
use super::outbox::{
    COALESCED_EVENTS, COALESCED_SESSIONS, MARK_AHEAD_ROWS, QUOTA_UNMET, VANISHED_EVENTS,
    VANISHED_SESSIONS,
};
use super::quota::{self, Candidate};
use super::reader::{HistoryRow, StatusEntry};
use super::registry::DISK_FLOOR_REACHED;
use super::StoreOptions;
use super::Vanished;
use super::{Coalescing, CommitReport, OutboxRow, OutboxStats, RegistryStore, RestoredSession};
use crate::registry::Change;

#[derive(Debug, Clone)]
struct PendingEvent {
    session: SessionId,
    seq: u64,
    kind: &'static str,
    topic: String,
    payload: Vec<u8>,
    created_ms: i64,
    /// Holds (or, coalesced, replaced) the session's first event (see `quota`).
    opening: bool,
}

#[derive(Debug, Clone, Default)]
struct State {
    sessions: BTreeMap<SessionId, SessionState>,
    history: VecDeque<HistoryRow>,
    last_history_id: i64,
    outbox: BTreeMap<i64, PendingEvent>,
    last_outbox_id: i64,
    counters: BTreeMap<&'static str, i64>,
}

/// The store's twin in memory. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    options: StoreOptions,
    state: State,
    peeked_through: i64,
    status: BTreeMap<String, (String, i64)>,
    /// Free disk as the test sets it (see [`MemoryStore::set_disk`]).
    disk: DiskState,
}

impl MemoryStore {
    pub fn new(options: StoreOptions) -> MemoryStore {
        MemoryStore {
            options,
            ..MemoryStore::default()
        }
    }

    /// What a statvfs of the database's directory would say; the real store samples at each
    /// status write, the twin when told. Below the floor the quota drops (see `floor`).
    pub fn set_disk(&mut self, sample: DiskSample) {
        if self.disk.update(&self.options.disk_floor, sample) {
            *self.state.counters.entry(DISK_FLOOR_REACHED).or_default() += 1;
        }
    }

    /// The outbox quota in force, as [`Store::effective_quota`](super::Store::effective_quota).
    pub fn effective_quota(&self) -> u64 {
        self.options
            .disk_floor
            .quota(self.options.outbox_max_bytes, self.disk.low)
    }

    /// Every history row kept, oldest first.
    pub fn history(&self) -> Vec<HistoryRow> {
        self.state.history.iter().cloned().collect()
    }

    /// A counter as `raectl status` would show it (0 when never counted).
    pub fn counter(&self, key: &str) -> i64 {
        self.state.counters.get(key).copied().unwrap_or(0)
    }

    pub fn status(&self) -> Vec<StatusEntry> {
        self.status
            .iter()
            .map(|(key, (value, updated_ms))| StatusEntry {
                key: key.clone(),
                value: value.clone(),
                updated_ms: *updated_ms,
            })
            .collect()
    }
}

impl State {
    fn append_history(&mut self, entry: HistoryEntry, recorded_ms: i64) {
        self.last_history_id += 1;
        self.history.push_back(HistoryRow {
            id: self.last_history_id,
            session: entry.session,
            seq: entry.seq,
            at_ms: entry.at_ms,
            recorded_ms,
            kind: entry.kind,
            summary: entry.summary,
            fields: entry.fields,
        });
    }

    fn bytes(&self) -> u64 {
        self.outbox.values().map(|e| e.payload.len() as u64).sum()
    }

    fn coalescable(&self, session: SessionId, peeked_through: i64) -> Vec<i64> {
        self.outbox
            .range(peeked_through.saturating_add(1)..)
            .filter(|(_, e)| e.session == session && e.kind != "closed")
            .map(|(id, _)| *id)
            .collect()
    }

    /// The same rule as the database's: see [`quota`].
    fn enforce_quota(
        &mut self,
        serial: &Serial,
        now_ms: i64,
        peeked_through: i64,
        max_bytes: u64,
    ) -> Result<(Vec<Coalescing>, Vanished, bool), StoreError> {
        let total = self.bytes();
        if total <= max_bytes {
            return Ok((Vec::new(), Vanished::default(), false));
        }
        // Per session: the candidate, whether a row was handed out, whether the opening row
        // is pending.
        let mut candidates: BTreeMap<SessionId, (Candidate, bool, bool)> = BTreeMap::new();
        for (id, event) in &self.outbox {
            let Some(state) = self.sessions.get(&event.session) else {
                continue;
            };
            let (candidate, peeked, opening) = match candidates.entry(event.session) {
                std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::btree_map::Entry::Vacant(entry) => entry.insert((
                    Candidate {
                        session: event.session,
                        events: 0,
                        bytes: 0,
                        snapshot_bytes: encode_record(serial, state)?.len() as u64,
                        vanishable: false,
                        total_bytes: 0,
                    },
                    false,
                    false,
                )),
            };
            candidate.total_bytes += event.payload.len() as u64;
            *peeked |= *id <= peeked_through;
            *opening |= event.opening;
            if *id > peeked_through && event.kind != "closed" {
                candidate.events += 1;
                candidate.bytes += event.payload.len() as u64;
            }
        }
        let candidates: Vec<Candidate> = candidates
            .into_iter()
            .map(|(session, (candidate, peeked, opening))| {
                let closed = self
                    .sessions
                    .get(&session)
                    .is_some_and(|s| s.closed.is_some());
                Candidate {
                    vanishable: closed && !peeked && opening,
                    ..candidate
                }
            })
            .collect();
        let Some(plan) = quota::plan(total, max_bytes, &candidates) else {
            return Ok((Vec::new(), Vanished::default(), false));
        };
        let mut coalesced = Vec::new();
        for session in plan.sessions {
            let ids = self.coalescable(session, peeked_through);
            let (Some(&keep), Some(state)) = (ids.first(), self.sessions.get(&session)) else {
                continue;
            };
            let seqs: Vec<u64> = ids
                .iter()
                .filter_map(|id| self.outbox.get(id).map(|e| e.seq))
                .collect();
            let first_seq = seqs.iter().copied().min().unwrap_or(0);
            let last_seq = seqs.iter().copied().max().unwrap_or(0);
            let event = Event::Snapshot {
                record: Box::new(state.record.clone()),
            };
            let snapshot = encode_event(serial, session, last_seq, now_ms, event)?;
            for id in ids.iter().skip(1) {
                self.outbox.remove(id);
            }
            if let Some(row) = self.outbox.get_mut(&keep) {
                row.seq = last_seq;
                row.kind = snapshot.kind;
                row.payload = snapshot.payload;
            }
            let events = ids.len() as u64;
            self.append_history(
                HistoryEntry {
                    session,
                    seq: Some(last_seq),
                    at_ms: now_ms,
                    kind: HistoryKind::Coalesced,
                    summary: format!(
                        "outbox over its quota of {max_bytes} bytes: {events} pending events \
                         (seq {first_seq} to {last_seq}) replaced by one Snapshot at seq \
                         {last_seq}; their intermediate values are lost"
                    ),
                    fields: String::new(),
                },
                now_ms,
            );
            *self.counters.entry(COALESCED_EVENTS).or_default() += events as i64;
            *self.counters.entry(COALESCED_SESSIONS).or_default() += 1;
            coalesced.push(Coalescing {
                session,
                events,
                first_seq,
                last_seq,
            });
        }
        let mut vanished = Vanished::default();
        for session in plan.vanish {
            let ids: Vec<i64> = self
                .outbox
                .iter()
                .filter(|(_, e)| e.session == session)
                .map(|(id, _)| *id)
                .collect();
            if ids.first().map_or(true, |id| *id <= peeked_through) {
                continue;
            }
            for id in &ids {
                self.outbox.remove(id);
            }
            self.sessions.remove(&session);
            self.history.retain(|row| row.session != session);
            vanished.sessions += 1;
            vanished.events += ids.len() as u64;
        }
        if vanished.sessions > 0 {
            *self.counters.entry(VANISHED_SESSIONS).or_default() += vanished.sessions as i64;
            *self.counters.entry(VANISHED_EVENTS).or_default() += vanished.events as i64;
        }
        let unmet = self.bytes() > max_bytes;
        if unmet {
            *self.counters.entry(QUOTA_UNMET).or_default() += 1;
        }
        Ok((coalesced, vanished, unmet))
    }

    fn trim(&mut self, options: &StoreOptions) {
        let keep = usize::try_from(options.history_max_rows).unwrap_or(usize::MAX);
        while self.history.len() > keep {
            self.history.pop_front();
        }
        let mut closed: Vec<(i64, SessionId)> = self
            .sessions
            .values()
            .filter_map(|s| s.closed.map(|c| (c.at_ms, s.session)))
            .collect();
        closed.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let keep = usize::try_from(options.closed_sessions_max).unwrap_or(usize::MAX);
        for (_, session) in closed.into_iter().skip(keep) {
            if self.outbox.values().any(|e| e.session == session) {
                continue;
            }
            self.sessions.remove(&session);
            self.history.retain(|row| row.session != session);
        }
    }
}

impl RegistryStore for MemoryStore {
    fn commit(
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
        let mut next = self.state.clone();
        let mut report = CommitReport::default();
        for change in changes {
            let session = change.session();
            let current = next.sessions.get(&session).cloned();
            let applied = apply_change(current, change, serial)?;
            if applied.is_new {
                let open = next
                    .sessions
                    .values()
                    .find(|s| s.mac == applied.state.mac && s.closed.is_none());
                if let Some(open) = open {
                    return Err(ChangeError::MacAlreadyOpen {
                        mac: open.mac,
                        open: open.session,
                        session,
                    }
                    .into());
                }
            }
            if let Some(entry) = applied.history {
                next.append_history(entry, now_ms);
                report.history_rows += 1;
            }
            if let Some(event) = applied.event {
                next.last_outbox_id += 1;
                next.outbox.insert(
                    next.last_outbox_id,
                    PendingEvent {
                        session: event.session,
                        seq: event.seq,
                        kind: event.kind,
                        topic: event.topic,
                        opening: event.seq == 1,
                        payload: event.payload,
                        created_ms: now_ms,
                    },
                );
                report.events += 1;
            }
            next.sessions.insert(session, applied.state);
        }
        let (coalesced, vanished, unmet) =
            next.enforce_quota(serial, now_ms, self.peeked_through, self.effective_quota())?;
        report.history_rows += coalesced.len();
        report.coalesced = coalesced;
        report.vanished = vanished;
        report.quota_unmet = unmet;
        next.trim(&self.options);
        self.state = next;
        report.outbox = self.outbox_stats()?;
        Ok(report)
    }

    fn open_sessions(&self) -> Result<Vec<RestoredSession>, StoreError> {
        let mut open: Vec<RestoredSession> = self
            .state
            .sessions
            .values()
            .filter(|s| s.closed.is_none())
            .map(|s| RestoredSession {
                session: s.session,
                mac: s.mac,
                record: s.record.clone(),
                last_seq: s.last_seq,
                opened_ms: s.opened_ms,
            })
            .collect();
        open.sort_by_key(|s| (s.opened_ms, s.session));
        Ok(open)
    }

    fn outbox_peek(&mut self, after_id: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let rows: Vec<OutboxRow> = self
            .state
            .outbox
            .range(after_id.saturating_add(1)..)
            .take(limit)
            .map(|(id, e)| OutboxRow {
                id: *id,
                session: e.session,
                seq: e.seq,
                topic: e.topic.clone(),
                payload: e.payload.clone(),
                created_ms: e.created_ms,
            })
            .collect();
        if let Some(last) = rows.last().filter(|row| row.id > self.peeked_through) {
            // As the SQLite store: the mark reaches past the rows handed over.
            self.peeked_through = self
                .state
                .outbox
                .range(last.id.saturating_add(1)..)
                .take(MARK_AHEAD_ROWS)
                .last()
                .map_or(last.id, |(id, _)| *id);
        }
        Ok(rows)
    }

    fn outbox_ack(&mut self, ids: &[i64]) -> Result<usize, StoreError> {
        Ok(ids
            .iter()
            .filter(|id| self.state.outbox.remove(id).is_some())
            .count())
    }

    fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        Ok(OutboxStats {
            rows: self.state.outbox.len() as u64,
            bytes: self.state.bytes(),
            oldest_created_ms: self.state.outbox.values().next().map(|e| e.created_ms),
        })
    }

    fn write_status(
        &mut self,
        entries: &[(String, String)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let own = self
            .disk
            .entries(&self.options.disk_floor, self.options.outbox_max_bytes);
        for (key, value) in own.iter().chain(entries) {
            self.status.insert(key.clone(), (value.clone(), now_ms));
        }
        Ok(())
    }
}
