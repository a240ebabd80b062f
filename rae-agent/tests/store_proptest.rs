//! Random runs of a registry (opens, updates, snapshots, closes, sightings), with a publisher
//! that delivers and acks part of the outbox, refused batches and restarts, against a small
//! quota. Checks that the SQLite store and its in-memory twin agree row for row, and that a
//! sink folding what it was delivered plus what is left ends where it would with every event,
//! except for the sessions the quota dropped whole: each of those was closed and never handed
//! to the publisher (the cloud never heard of it), and they are counted.

mod store_common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use rae_agent::registry::Change;
use rae_agent::store::{
    MemoryStore, OutboxRow, RegistryStore, Store, StoreError, StoreOptions, VANISHED_SESSIONS,
};
use rae_proto::{Envelope, SessionId};
use store_common::{field, fold, mac, serial, values_without_last_seen, Device};

const QUOTA: u64 = 700;

#[derive(Debug, Clone)]
enum Op {
    Open(u8),
    Update(u8, u8, u8),
    Snapshot(u8),
    Close(u8),
    Seen(u8),
    Commit,
    /// Commit the batch with a change that skips a seq: both stores must refuse it whole.
    CommitWithGap(u8),
    /// The publisher sends this many rows and gets their PUBACKs.
    Deliver(u8),
    /// The publisher sends this many rows; no PUBACK comes (yet).
    Send(u8),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let device = 0u8..4;
    prop_oneof![
        2 => device.clone().prop_map(Op::Open),
        8 => (device.clone(), any::<u8>(), any::<u8>()).prop_map(|(d, k, n)| Op::Update(d, k, n)),
        1 => device.clone().prop_map(Op::Snapshot),
        1 => device.clone().prop_map(Op::Close),
        2 => device.clone().prop_map(Op::Seen),
        3 => Just(Op::Commit),
        1 => device.prop_map(Op::CommitWithGap),
        1 => (1u8..5).prop_map(Op::Deliver),
        1 => (1u8..5).prop_map(Op::Send),
        1 => Just(Op::Restart),
    ]
}

struct Run {
    dir: tempfile::TempDir,
    sqlite: Store,
    twin: MemoryStore,
    /// Never acked, never over quota: every event ever made.
    reference: MemoryStore,
    devices: BTreeMap<u8, Device>,
    /// The devices as of the last successful commit, to undo a refused batch.
    committed: BTreeMap<u8, Device>,
    batch: Vec<Change>,
    delivered: Vec<Vec<u8>>,
    /// Every row the publisher took, by id.
    sent: BTreeMap<i64, Vec<u8>>,
    next_id: u32,
    now: i64,
    /// The last commit left the outbox over its quota.
    unmet: bool,
}

fn options(max: u64) -> StoreOptions {
    StoreOptions {
        outbox_max_bytes: max,
        history_max_rows: 50,
        ..StoreOptions::default()
    }
}

impl Run {
    fn new() -> Run {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Store::open(dir.path().join("registry.db"), options(QUOTA)).unwrap();
        Run {
            dir,
            sqlite,
            twin: MemoryStore::new(options(QUOTA)),
            reference: MemoryStore::new(options(u64::MAX / 2)),
            devices: BTreeMap::new(),
            committed: BTreeMap::new(),
            batch: Vec::new(),
            delivered: Vec::new(),
            sent: BTreeMap::new(),
            next_id: 1,
            now: 1_000,
            unmet: false,
        }
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        self.now += 100;
        let now = self.now;
        match op {
            Op::Open(d) if !self.devices.contains_key(&d) => {
                let (device, change) = Device::open(self.next_id, mac(d), now);
                self.next_id += 1;
                self.devices.insert(d, device);
                self.batch.push(change);
            }
            Op::Update(d, kind, n) => {
                if let Some(device) = self.devices.get_mut(&d) {
                    self.batch.push(device.update(vec![field(kind, n)], now));
                }
            }
            Op::Snapshot(d) => {
                if let Some(device) = self.devices.get_mut(&d) {
                    self.batch.push(device.snapshot(now));
                }
            }
            Op::Close(d) => {
                if let Some(mut device) = self.devices.remove(&d) {
                    self.batch.push(device.close(now));
                }
            }
            Op::Seen(d) => {
                if let Some(device) = self.devices.get_mut(&d) {
                    self.batch.push(device.seen(now));
                }
            }
            Op::Commit => self.commit()?,
            Op::CommitWithGap(d) => {
                let Some(device) = self.devices.get(&d) else {
                    return Ok(());
                };
                let mut skipping = device.clone();
                skipping.seq += 1;
                self.batch.push(skipping.update(vec![field(0, 0)], now));
                let batch = std::mem::take(&mut self.batch);
                let before = self.twin.outbox_stats().unwrap();
                let a = self.sqlite.commit(&batch, &serial(), now);
                let b = self.twin.commit(&batch, &serial(), now);
                prop_assert!(matches!(a, Err(StoreError::Rejected(_))), "sqlite: {a:?}");
                prop_assert!(matches!(b, Err(StoreError::Rejected(_))), "twin: {b:?}");
                prop_assert_eq!(self.sqlite.outbox_stats().unwrap(), before);
                self.devices = self.committed.clone();
            }
            Op::Send(count) => {
                self.commit()?;
                self.peek(count)?;
            }
            Op::Deliver(count) => {
                self.commit()?;
                let rows = self.peek(count)?;
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                prop_assert_eq!(self.sqlite.outbox_ack(&ids).unwrap(), ids.len());
                prop_assert_eq!(self.twin.outbox_ack(&ids).unwrap(), ids.len());
                self.delivered.extend(rows.into_iter().map(|r| r.payload));
            }
            Op::Restart => {
                self.commit()?;
                let path = self.dir.path().join("registry.db");
                self.sqlite = Store::open(path, options(QUOTA)).unwrap();
            }
            Op::Open(_) => {}
        }
        Ok(())
    }

    /// Peeks from the head, as after a reconnect; a row sent before must come back unchanged.
    fn peek(&mut self, count: u8) -> Result<Vec<OutboxRow>, TestCaseError> {
        let rows = self.sqlite.outbox_peek(0, usize::from(count)).unwrap();
        let twin_rows = self.twin.outbox_peek(0, usize::from(count)).unwrap();
        prop_assert_eq!(&rows, &twin_rows);
        for row in &rows {
            if let Some(before) = self.sent.insert(row.id, row.payload.clone()) {
                prop_assert_eq!(
                    &before,
                    &row.payload,
                    "row {} changed while in flight",
                    row.id
                );
            }
        }
        Ok(rows)
    }

    fn commit(&mut self) -> Result<(), TestCaseError> {
        let batch = std::mem::take(&mut self.batch);
        let now = self.now;
        self.reference.commit(&batch, &serial(), now).unwrap();
        let a = self.sqlite.commit(&batch, &serial(), now).unwrap();
        let b = self.twin.commit(&batch, &serial(), now).unwrap();
        prop_assert_eq!(&a.coalesced, &b.coalesced);
        prop_assert_eq!(a.vanished, b.vanished);
        prop_assert_eq!(a.quota_unmet, b.quota_unmet);
        prop_assert_eq!(a.outbox, b.outbox);
        prop_assert_eq!(a.events, b.events);
        self.unmet = a.quota_unmet;
        self.committed = self.devices.clone();
        Ok(())
    }

    fn check_end(&mut self) -> Result<(), TestCaseError> {
        self.commit()?;
        let sessions = self.sqlite.open_sessions().unwrap();
        prop_assert_eq!(&sessions, &self.twin.open_sessions().unwrap());
        prop_assert_eq!(sessions.len(), self.devices.len());
        for restored in &sessions {
            let model = self
                .devices
                .values()
                .find(|d| d.session == restored.session)
                .expect("every restored session is open in the model");
            prop_assert_eq!(restored.last_seq, model.seq);
            prop_assert_eq!(&restored.record, &model.record);
        }
        let left = self.sqlite.outbox_peek(0, usize::MAX).unwrap();
        prop_assert_eq!(&left, &self.twin.outbox_peek(0, usize::MAX).unwrap());
        let stats = self.sqlite.outbox_stats().unwrap();
        prop_assert!(stats.bytes <= QUOTA || self.unmet, "outbox {stats:?}");

        let every = self.reference.outbox_peek(0, usize::MAX).unwrap();
        let mut full = values_without_last_seen(&fold(every.iter().map(|r| r.payload.as_slice())));
        let sink = values_without_last_seen(&fold(
            self.delivered
                .iter()
                .map(Vec::as_slice)
                .chain(left.iter().map(|r| r.payload.as_slice())),
        ));
        let handed_out: std::collections::BTreeSet<SessionId> = self
            .sent
            .values()
            .map(|payload| Envelope::decode(payload).expect("sent rows decode").session)
            .collect();
        let vanished: Vec<SessionId> = full
            .keys()
            .filter(|session| !sink.contains_key(session))
            .copied()
            .collect();
        for session in &vanished {
            prop_assert!(
                full[session].1.is_some(),
                "session {session} vanished while open"
            );
            prop_assert!(
                !handed_out.contains(session),
                "session {session} vanished after a row of it was handed to the publisher"
            );
            full.remove(session);
        }
        prop_assert_eq!(
            self.sqlite.counter(VANISHED_SESSIONS).unwrap(),
            vanished.len() as i64
        );
        prop_assert_eq!(self.twin.counter(VANISHED_SESSIONS), vanished.len() as i64);
        prop_assert_eq!(sink, full);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn sqlite_and_twin_agree_and_the_sink_converges(ops in proptest::collection::vec(op(), 1..160)) {
        let mut run = Run::new();
        for op in ops {
            run.step(op)?;
        }
        run.check_end()?;
    }
}
