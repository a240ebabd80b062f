//! The pure part of a write: a batch of decoded events folded into at most one change per
//! session and per RAE, so that no statement names the same key twice.
//!
//! # The convergence rule, precisely
//!
//! For a session, let S be the multiset of its events the sink has received, in any order.
//! The stored row is a function of the *set* of distinct `(seq, event)` in S:
//!
//! - **Fields.** For every [`FieldId`], the value and seq come from the highest-seq event
//!   that carried the field (a Snapshot carries all of them). Two events with the same seq
//!   carry the same values by contract (a coalesced Snapshot after power loss may repeat a
//!   seq); at an equal seq the value already stored stays.
//! - **Opened.** `opened_seq`/`opened_at_ms`: the lowest seq received and its `at_ms`.
//! - **Closed.** `closed_seq`/`closed_at_ms`/`close_reason`: from the highest-seq Closed event,
//!   like a field. An inventory that no longer lists the session closes it with
//!   `closed_seq = 0` (reason `unlisted`), which any Closed event from the RAE overrides.
//! - **Sequence bookkeeping** ([`SeqTrack`]): `snapshot_seq` = the highest Snapshot seq (0 if
//!   none); `contiguous_seq` = the largest `c >= snapshot_seq` such that every seq in
//!   `(snapshot_seq, c]` was received; `pending_runs` = the received seqs above
//!   `contiguous_seq` (all of them above `contiguous_seq + 1`), as inclusive runs;
//!   `seq_hw` = the highest seq.
//!   Seqs at or below `snapshot_seq` are forgotten: the Snapshot supersedes them for every
//!   field. `inventory_seq` = the highest seq an inventory listed for the session.
//! - **needs_resync** = `seq_hw > contiguous_seq` (a seq after the latest Snapshot is missing)
//!   or `inventory_seq > seq_hw` (the RAE has sent events we have not seen yet). A Snapshot
//!   at or above every received seq clears the first condition, also when its seq repeats one
//!   already received; the missing events arriving clear both.
//!
//! [`SeqTrack::merge`] of the tracks of two sets is exactly the track of their union (the
//! proof is in its comment), and every other column merges by max/min, so applying any
//! permutation of any multiset, split into any batches, gives the row of in-order application.
//!
//! # The one exception: a bounded gap record
//!
//! A session that keeps sending after a gap that never fills would grow `pending_runs`
//! without end, so the stored track keeps at most `max_pending_runs` runs
//! ([`SeqTrack::bound`], applied in [`Folded::settle`]). Beyond it the highest runs are
//! forgotten and `overflowed` is set: the track then under-reports what was received (never
//! over-reports), `needs_resync` stays true, and the flag clears when `contiguous_seq`
//! reaches `seq_hw` (in practice: the Snapshot the gap healer asks for). Only the
//! bookkeeping of an overflowed session depends on batching and order; fields never do.

use std::collections::{BTreeMap, BTreeSet};

use rae_proto::{AgentState, CloseReason, Event, Field, FieldId, Serial, SessionId, SessionSeq};

use super::decode::{Rejection, SinkEvent};

/// How many runs of received seqs a session's gap tracking keeps by default (see
/// [`SeqTrack::bound`]): far more than a healthy session's few holes, small enough that the
/// row stays a few KiB whatever a broken RAE sends.
pub const DEFAULT_MAX_PENDING_RUNS: usize = 64;

/// Which seqs of a session were received, as far as gap detection needs to know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqTrack {
    pub snapshot_seq: u64,
    pub contiguous_seq: u64,
    /// Received seqs above `contiguous_seq`, as inclusive runs `(first, last)`: sorted,
    /// disjoint, never adjacent, all above `contiguous_seq + 1`.
    pub pending_runs: Vec<(u64, u64)>,
    /// Runs were dropped by [`SeqTrack::bound`]: some received seqs above `contiguous_seq`
    /// are forgotten. Sticky until `contiguous_seq` reaches `seq_hw` (a Snapshot at or above
    /// every received seq, or every missing seq arriving again).
    pub overflowed: bool,
    pub seq_hw: u64,
}

impl SeqTrack {
    pub fn observe(&mut self, seq: u64, is_snapshot: bool) {
        let mut one = SeqTrack {
            snapshot_seq: 0,
            contiguous_seq: 0,
            pending_runs: vec![(seq, seq)],
            overflowed: false,
            seq_hw: seq,
        };
        if is_snapshot {
            one.snapshot_seq = seq;
            one.contiguous_seq = seq;
            one.pending_runs.clear();
        }
        self.merge(&one);
    }

    /// Makes `self` the track of the union of both received sets (of what each still
    /// remembers, when one overflowed).
    ///
    /// Why this is exact: let `s = max(s1, s2)`. Every seq in `(s, max(c1, c2)]` was received
    /// (it lies in `(s_i, c_i]` for the larger `c_i`), so the union's contiguous run reaches at
    /// least `max(c1, c2, s)`. A received seq above that is above both `c_i`, hence in `p1` or
    /// `p2`; so advancing through `p1 ∪ p2` finds every further seq of the run and leaves in
    /// pending exactly the received seqs above it. Runs are only a shorter spelling of the
    /// same sets. An overflowed side only ever forgot received seqs, so the merge never
    /// claims a seq that was not received.
    pub fn merge(&mut self, other: &SeqTrack) {
        self.snapshot_seq = self.snapshot_seq.max(other.snapshot_seq);
        self.contiguous_seq = self
            .contiguous_seq
            .max(other.contiguous_seq)
            .max(self.snapshot_seq);
        self.seq_hw = self.seq_hw.max(other.seq_hw);
        let mut runs: Vec<(u64, u64)> =
            Vec::with_capacity(self.pending_runs.len() + other.pending_runs.len());
        let (mut a, mut b) = (
            self.pending_runs.iter().peekable(),
            other.pending_runs.iter().peekable(),
        );
        // Both lists are sorted: a merge, then coalescing overlapping or adjacent runs.
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 <= y.0 => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, _) => b.next(),
            };
            let Some(&(first, last)) = next else { break };
            let floor = self.contiguous_seq;
            if last <= floor {
                continue;
            }
            let first = first.max(floor + 1);
            match runs.last_mut() {
                Some((_, held_last)) if first <= held_last.saturating_add(1) => {
                    *held_last = (*held_last).max(last);
                }
                _ => runs.push((first, last)),
            }
        }
        if let Some(&(first, last)) = runs.first() {
            if first == self.contiguous_seq + 1 {
                self.contiguous_seq = last;
                runs.remove(0);
            }
        }
        self.pending_runs = runs;
        self.overflowed =
            (self.overflowed || other.overflowed) && self.contiguous_seq < self.seq_hw;
    }

    /// Keeps at most `max_runs` runs (the lowest, whose filling advances `contiguous_seq`),
    /// forgetting the seqs of the others; returns whether this call set the overflow flag.
    /// Forgetting a received seq only ever makes the track report a gap it might not have,
    /// so `needs_resync` stays true until a Snapshot (or the seqs again) closes it.
    pub fn bound(&mut self, max_runs: usize) -> bool {
        if self.pending_runs.len() <= max_runs {
            return false;
        }
        self.pending_runs.truncate(max_runs);
        let newly = !self.overflowed;
        self.overflowed = true;
        newly
    }

    pub fn needs_resync(&self, inventory_seq: u64) -> bool {
        self.overflowed || self.seq_hw > self.contiguous_seq || inventory_seq > self.seq_hw
    }
}

/// A value with the seq of the event that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamped<T> {
    pub seq: u64,
    pub value: T,
}

/// Why the sink holds a session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The RAE's Closed event.
    Agent(CloseReason),
    /// The RAE's inventory no longer listed the session (`closed_seq` 0).
    Unlisted,
}

impl CloseCause {
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Agent(reason) => reason.as_str(),
            Self::Unlisted => "unlisted",
        }
    }
}

/// A session's closing: from its Closed event, or from an inventory that no longer lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing {
    pub cause: CloseCause,
    /// RAE clock: the Closed event's, or the inventory's.
    pub at_ms: i64,
}

/// Everything one batch says about one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFold {
    pub serial: Serial,
    /// The fields the batch carried for the session, newest per field, at most one per
    /// [`FieldId`] (sparse: a Delta of two fields costs two entries, not [`FieldId::COUNT`]).
    pub fields: Vec<Stamped<Field>>,
    pub track: SeqTrack,
    /// `at_ms` of the lowest-seq event.
    pub opened: Option<Stamped<i64>>,
    pub closed: Option<Stamped<Closing>>,
    pub inventory_seq: u64,
    /// Positions in the batch of the records folded in, to dead-letter them all when the
    /// session turns out to belong to another RAE.
    pub records: Vec<usize>,
}

impl SessionFold {
    pub fn new(serial: Serial) -> Self {
        Self {
            serial,
            fields: Vec::new(),
            track: SeqTrack::default(),
            opened: None,
            closed: None,
            inventory_seq: 0,
            records: Vec::new(),
        }
    }

    pub fn field(&self, id: FieldId) -> Option<&Stamped<Field>> {
        self.fields.iter().find(|held| held.value.id() == id)
    }

    fn put(&mut self, seq: u64, field: Field) {
        let id = field.id();
        match self.fields.iter_mut().find(|held| held.value.id() == id) {
            Some(held) => {
                if seq > held.seq {
                    *held = Stamped { seq, value: field };
                }
            }
            None => self.fields.push(Stamped { seq, value: field }),
        }
    }

    fn absorb(&mut self, seq: u64, at_ms: i64, event: Event) {
        if self.opened.as_ref().map_or(true, |held| seq < held.seq) {
            self.opened = Some(Stamped { seq, value: at_ms });
        }
        self.track
            .observe(seq, matches!(event, Event::Snapshot { .. }));
        match event {
            Event::Snapshot { record } => {
                for field in record.fields() {
                    self.put(seq, field);
                }
            }
            Event::Delta { fields } => {
                for field in fields {
                    self.put(seq, field);
                }
            }
            Event::Closed { reason } => {
                if self.closed.as_ref().map_or(true, |held| seq > held.seq) {
                    self.closed = Some(Stamped {
                        seq,
                        value: Closing {
                            cause: CloseCause::Agent(reason),
                            at_ms,
                        },
                    });
                }
            }
        }
    }
}

/// The latest status of an RAE in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusFold {
    pub state: AgentState,
    pub agent_version: String,
    pub at_ms: i64,
}

/// The latest inventory of an RAE in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryFold {
    pub at_ms: i64,
    pub sessions: Vec<SessionSeq>,
}

/// Everything one batch says about one RAE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaeFold {
    pub status: Option<StatusFold>,
    pub inventory: Option<InventoryFold>,
}

/// A batch folded: one entry per session and per RAE, and the records to dead-letter.
#[derive(Debug, Clone, Default)]
pub struct Folded {
    pub sessions: BTreeMap<SessionId, SessionFold>,
    pub raes: BTreeMap<Serial, RaeFold>,
    /// Batch positions and why.
    pub rejected: Vec<(usize, Rejection)>,
    /// Records folded into `sessions` or `raes`.
    pub applied: usize,
}

/// Folds decoded records, given with their position in the batch, in batch order.
pub fn fold(records: impl IntoIterator<Item = (usize, Result<SinkEvent, Rejection>)>) -> Folded {
    let mut folded = Folded::default();
    for (index, decoded) in records {
        match decoded {
            Err(why) => folded.rejected.push((index, why)),
            Ok(SinkEvent::Device(envelope)) => {
                let entry = folded
                    .sessions
                    .entry(envelope.session)
                    .or_insert_with(|| SessionFold::new(envelope.serial.clone()));
                if entry.serial != envelope.serial {
                    folded.rejected.push((
                        index,
                        Rejection::ForeignSession {
                            session: envelope.session,
                            owner: entry.serial.to_string(),
                            serial: envelope.serial,
                        },
                    ));
                    continue;
                }
                entry.records.push(index);
                entry.absorb(envelope.seq, envelope.at_ms, envelope.event);
                folded.applied += 1;
            }
            Ok(SinkEvent::Status(status)) => {
                let rae = folded.raes.entry(status.serial).or_default();
                // Statuses of one RAE share a topic, hence an order; a Last Will carries the
                // time of the connect that registered it, so at an equal time the later wins.
                if rae
                    .status
                    .as_ref()
                    .map_or(true, |held| status.at_ms >= held.at_ms)
                {
                    rae.status = Some(StatusFold {
                        state: status.state,
                        agent_version: status.agent_version,
                        at_ms: status.at_ms,
                    });
                }
                folded.applied += 1;
            }
            Ok(SinkEvent::Inventory(inventory)) => {
                let rae = folded.raes.entry(inventory.serial).or_default();
                if rae
                    .inventory
                    .as_ref()
                    .map_or(true, |held| inventory.at_ms >= held.at_ms)
                {
                    rae.inventory = Some(InventoryFold {
                        at_ms: inventory.at_ms,
                        sessions: inventory.sessions,
                    });
                }
                folded.applied += 1;
            }
        }
    }
    folded
}

/// What the database holds for a session, read (locked) in the write's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub serial: String,
    pub track: SeqTrack,
    pub inventory_seq: u64,
    pub opened: Option<Stamped<i64>>,
    pub closed_seq: Option<u64>,
    pub mdns_services_seq: Option<u64>,
    pub dial_apps_seq: Option<u64>,
}

/// A session row ready to write: the batch's fold with the bookkeeping merged with what is
/// stored, and whether its child rows are replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub session: SessionId,
    /// The row existed (and is locked) when the transaction read it; `false`: the write
    /// inserts it, and fails if a concurrent writer inserted it first.
    pub stored: bool,
    pub fold: SessionFold,
    pub needs_resync: bool,
    /// This write made the gap record overflow (it was not overflowed before).
    pub gap_overflow: bool,
    pub replace_mdns_services: bool,
    pub replace_dial_apps: bool,
}

impl Folded {
    /// The sessions the write must read (and lock): the batch's own and those its
    /// inventories list. The write also reads the open sessions of [`Self::inventory_serials`].
    pub fn sessions_to_read(&self) -> Vec<SessionId> {
        let mut ids: BTreeSet<SessionId> = self.sessions.keys().copied().collect();
        for rae in self.raes.values() {
            if let Some(inventory) = &rae.inventory {
                ids.extend(inventory.sessions.iter().map(|s| s.session));
            }
        }
        ids.into_iter().collect()
    }

    /// The RAEs whose inventory is in the batch.
    pub fn inventory_serials(&self) -> Vec<Serial> {
        self.raes
            .iter()
            .filter(|(_, rae)| rae.inventory.is_some())
            .map(|(serial, _)| serial.clone())
            .collect()
    }

    /// Joins the batch with the stored rows: drops (and dead-letters) sessions that belong
    /// to another RAE, applies inventories (listed seqs; closing the RAE's open sessions
    /// they no longer list), merges the seq bookkeeping and decides which child lists the
    /// batch replaces, keeping at most `max_pending_runs` runs per session. Pure; `stored`
    /// holds the rows that exist among those read.
    pub fn settle(
        &mut self,
        stored: &BTreeMap<SessionId, StoredSession>,
        max_pending_runs: usize,
    ) -> Vec<SessionRow> {
        self.reject_foreign(stored);
        self.apply_inventories(stored);
        let mut rows = Vec::with_capacity(self.sessions.len());
        // Moved, not cloned: the plan is the attempt's own (see `Db::write_part`).
        for (id, mut fold) in std::mem::take(&mut self.sessions) {
            let row = stored.get(&id);
            if let Some(row) = row {
                fold.track.merge(&row.track);
                fold.inventory_seq = fold.inventory_seq.max(row.inventory_seq);
            }
            let gap_overflow = fold.track.bound(max_pending_runs);
            let wins = |field: FieldId, stored_seq: Option<u64>| {
                fold.field(field)
                    .is_some_and(|new| stored_seq.map_or(true, |old| new.seq > old))
            };
            let replace_mdns_services =
                wins(FieldId::MdnsServices, row.and_then(|r| r.mdns_services_seq));
            let replace_dial_apps = wins(FieldId::DialApps, row.and_then(|r| r.dial_apps_seq));
            rows.push(SessionRow {
                session: id,
                stored: row.is_some(),
                needs_resync: fold.track.needs_resync(fold.inventory_seq),
                gap_overflow,
                replace_mdns_services,
                replace_dial_apps,
                fold,
            });
        }
        rows
    }

    fn reject_foreign(&mut self, stored: &BTreeMap<SessionId, StoredSession>) {
        let foreign: Vec<(SessionId, String)> = self
            .sessions
            .iter()
            .filter_map(|(id, fold)| {
                let row = stored.get(id)?;
                (row.serial != fold.serial.as_str()).then(|| (*id, row.serial.clone()))
            })
            .collect();
        for (id, owner) in foreign {
            if let Some(fold) = self.sessions.remove(&id) {
                self.applied -= fold.records.len();
                for index in fold.records {
                    self.rejected.push((
                        index,
                        Rejection::ForeignSession {
                            session: id,
                            owner: owner.clone(),
                            serial: fold.serial.clone(),
                        },
                    ));
                }
            }
        }
    }

    fn apply_inventories(&mut self, stored: &BTreeMap<SessionId, StoredSession>) {
        for (serial, rae) in &self.raes {
            let Some(inventory) = &rae.inventory else {
                continue;
            };
            let mut listed = BTreeSet::new();
            for entry in &inventory.sessions {
                let owner = match (
                    self.sessions.get(&entry.session),
                    stored.get(&entry.session),
                ) {
                    (Some(fold), _) => fold.serial.as_str(),
                    (None, Some(row)) => row.serial.as_str(),
                    (None, None) => serial.as_str(),
                };
                // An inventory speaks only for its own RAE's sessions.
                if owner != serial.as_str() {
                    continue;
                }
                listed.insert(entry.session);
                let fold = self
                    .sessions
                    .entry(entry.session)
                    .or_insert_with(|| SessionFold::new(serial.clone()));
                fold.inventory_seq = fold.inventory_seq.max(entry.seq);
            }
            let candidates: BTreeSet<SessionId> = stored
                .iter()
                .filter(|(_, row)| row.serial == serial.as_str())
                .map(|(id, _)| *id)
                .chain(
                    self.sessions
                        .iter()
                        .filter(|(_, fold)| fold.serial == *serial)
                        .map(|(id, _)| *id),
                )
                .filter(|id| !listed.contains(id))
                .collect();
            for id in candidates {
                let row = stored.get(&id);
                let fold = self
                    .sessions
                    .entry(id)
                    .or_insert_with(|| SessionFold::new(serial.clone()));
                let closed = fold.closed.is_some() || row.is_some_and(|r| r.closed_seq.is_some());
                let opened = [fold.opened.as_ref(), row.and_then(|r| r.opened.as_ref())]
                    .into_iter()
                    .flatten()
                    .min_by_key(|o| o.seq)
                    .map(|o| o.value);
                // A session opened after the inventory was taken is simply not in it yet
                // (inventory and device events travel on different partitions).
                if !closed && opened.map_or(true, |at| at <= inventory.at_ms) {
                    fold.closed = Some(Stamped {
                        seq: 0,
                        value: Closing {
                            cause: CloseCause::Unlisted,
                            at_ms: inventory.at_ms,
                        },
                    });
                }
            }
        }
        // Sessions added only to be looked at and left as they are need no write.
        self.sessions.retain(|_, fold| {
            !fold.records.is_empty() || fold.closed.is_some() || fold.inventory_seq > 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(events: &[(u64, bool)]) -> SeqTrack {
        let mut t = SeqTrack::default();
        for &(seq, snap) in events {
            t.observe(seq, snap);
        }
        t
    }

    #[test]
    fn in_order_history_has_no_gap() {
        let t = track(&[(1, true), (2, false), (3, false)]);
        assert_eq!((t.contiguous_seq, t.seq_hw), (3, 3));
        assert!(!t.needs_resync(0));
        assert!(t.needs_resync(4), "the inventory knows of seq 4");
    }

    #[test]
    fn gap_is_recorded_and_closed_by_a_snapshot_even_with_a_repeated_seq() {
        let t = track(&[(1, true), (2, false), (5, false)]);
        assert!(t.needs_resync(0));
        let closed = track(&[(1, true), (2, false), (5, false), (5, true)]);
        assert!(!closed.needs_resync(0));
        let filled = track(&[(1, true), (5, false), (3, false), (4, false), (2, false)]);
        assert!(!filled.needs_resync(0));
    }

    #[test]
    fn merge_equals_the_track_of_the_union() {
        // Exhaustive over small histories: every split of a set into two halves.
        let events: Vec<(u64, bool)> = vec![
            (1, true),
            (2, false),
            (3, false),
            (4, true),
            (6, false),
            (7, false),
            (9, true),
        ];
        for mask in 0u32..(1 << events.len()) {
            for split in 0u32..(1 << events.len()) {
                let chosen: Vec<_> = (0..events.len()).filter(|i| mask & (1 << i) != 0).collect();
                let (a, b): (Vec<_>, Vec<_>) = chosen.iter().partition(|&&i| split & (1 << i) != 0);
                let whole = track(&chosen.iter().map(|&i| events[i]).collect::<Vec<_>>());
                let mut merged = track(&a.iter().map(|&&i| events[i]).collect::<Vec<_>>());
                merged.merge(&track(&b.iter().map(|&&i| events[i]).collect::<Vec<_>>()));
                assert_eq!(merged, whole, "mask {mask:b} split {split:b}");
            }
        }
    }

    /// The received seqs a track claims: `(snapshot_seq, contiguous_seq]` and the runs.
    fn claimed(t: &SeqTrack) -> BTreeSet<u64> {
        let mut seqs: BTreeSet<u64> = (t.snapshot_seq + 1..=t.contiguous_seq).collect();
        for &(first, last) in &t.pending_runs {
            seqs.extend(first..=last);
        }
        seqs
    }

    #[test]
    fn runs_spell_the_received_seqs_above_the_contiguous_prefix() {
        let t = track(&[
            (1, true),
            (3, false),
            (4, false),
            (6, false),
            (5, false),
            (9, false),
        ]);
        assert_eq!(t.contiguous_seq, 1);
        assert_eq!(t.pending_runs, vec![(3, 6), (9, 9)]);
        let filled = {
            let mut t = t.clone();
            t.observe(2, false);
            t
        };
        assert_eq!(
            (filled.contiguous_seq, filled.pending_runs.clone()),
            (6, vec![(9, 9)])
        );
    }

    #[test]
    fn a_permanent_gap_keeps_the_runs_bounded_and_the_session_flagged_until_a_snapshot() {
        const CAP: usize = 16;
        let mut stored = track(&[(1, true)]);
        let mut overflows = 0;
        // Seq 2 never arrives; every other later seq is lost too, so each event is a run.
        for batch in 0..100u64 {
            let mut fold = SeqTrack::default();
            for i in 0..100u64 {
                fold.observe(3 + 2 * (batch * 100 + i), false);
            }
            fold.merge(&stored);
            overflows += usize::from(fold.bound(CAP));
            stored = fold;
            assert!(stored.pending_runs.len() <= CAP, "batch {batch}");
            assert!(stored.needs_resync(0), "batch {batch}");
        }
        assert!(stored.overflowed);
        assert_eq!(overflows, 1, "one overflow until the gap record is reset");
        assert_eq!(stored.seq_hw, 3 + 2 * 9_999);
        // The sink asks for a Snapshot; the RAE's current seq is above all it sent.
        let mut resynced = track(&[(stored.seq_hw + 1, true)]);
        resynced.merge(&stored);
        assert!(!resynced.bound(CAP));
        assert!(!resynced.overflowed && resynced.pending_runs.is_empty());
        assert!(!resynced.needs_resync(0));
    }

    #[test]
    fn a_bounded_track_never_claims_a_seq_that_was_not_received() {
        // Deterministic pseudo-random histories, merged in random batches with a tiny cap.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut overflowed = 0;
        for round in 0..200 {
            let mut stored = SeqTrack::default();
            let mut exact = SeqTrack::default();
            let mut received = BTreeSet::new();
            for _ in 0..20 {
                let mut fold = SeqTrack::default();
                for _ in 0..(next() % 8) {
                    let seq = 1 + next() % 60;
                    let snap = next() % 17 == 0;
                    fold.observe(seq, snap);
                    exact.observe(seq, snap);
                    received.insert(seq);
                }
                fold.merge(&stored);
                fold.bound(3);
                stored = fold;
                let above: BTreeSet<u64> =
                    received.range(stored.snapshot_seq + 1..).copied().collect();
                assert!(claimed(&stored).is_subset(&above), "round {round}");
                assert!(
                    stored.contiguous_seq <= exact.contiguous_seq,
                    "round {round}"
                );
                assert_eq!(stored.snapshot_seq, exact.snapshot_seq);
                assert_eq!(stored.seq_hw, exact.seq_hw);
                if exact.needs_resync(0) {
                    assert!(
                        stored.needs_resync(0),
                        "round {round}: a gap went unreported"
                    );
                }
                assert!(stored.pending_runs.len() <= 3);
                overflowed += usize::from(stored.overflowed);
            }
        }
        assert!(overflowed > 100, "the cap was hardly reached: {overflowed}");
    }
}
