//! Power loss, simulated honestly: after every operation the test asks the store whether it
//! committed a transaction with `synchronous=FULL` (an fsync of the WAL, and with it of every
//! earlier transaction); if so it copies `registry.db` and `registry.db-wal` as they are at
//! that moment. A cut reopens the copy: the worst a power loss can do, every write after the
//! last fsync gone (WAL recovery keeps a prefix of the log, so any other outcome lies between
//! the copy and the live files). Then it checks what the broker got against what the next run
//! sends: no seq the broker has comes again with other bytes, and every session resumes above
//! every seq the broker has.

mod store_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rae_agent::store::{OutboxRow, Store, StoreOptions};
use rae_proto::SessionId;
use store_common::{field, mac, serial, Device};

/// About 25 small events: `a`'s 13 fit, and `b` takes the outbox over it while `a` still
/// has more pending events than `b` (the quota coalesces the session with the most first).
const QUOTA: u64 = 1_000;

fn open(path: &Path) -> Store {
    let options = StoreOptions {
        outbox_max_bytes: QUOTA,
        ..StoreOptions::default()
    };
    Store::open(path, options).expect("store opens")
}

/// The live database and a copy of it as of its last fsync.
struct Flash {
    _dir: tempfile::TempDir,
    live: PathBuf,
    durable: PathBuf,
    synced: u64,
}

impl Flash {
    fn new() -> Flash {
        let dir = tempfile::tempdir().expect("temp dir");
        let live = dir.path().join("live");
        let durable = dir.path().join("durable");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(&durable).unwrap();
        Flash {
            live: live.join("registry.db"),
            durable: durable.join("registry.db"),
            synced: 0,
            _dir: dir,
        }
    }

    /// Call after every operation on `store`: copies the files if it fsynced since.
    fn after(&mut self, store: &Store) {
        if store.durable_writes() == self.synced {
            return;
        }
        self.synced = store.durable_writes();
        for suffix in ["", "-wal"] {
            let from = PathBuf::from(format!("{}{suffix}", self.live.display()));
            let to = PathBuf::from(format!("{}{suffix}", self.durable.display()));
            match std::fs::copy(&from, &to) {
                Ok(_) => {}
                // No WAL right after a checkpoint that removed it: none on the flash either.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    let _ = std::fs::remove_file(&to);
                }
                Err(err) => panic!("copying {}: {err}", from.display()),
            }
        }
    }

    /// The power goes: the live connection is dropped and the flash holds only the copy.
    fn cut(self, store: Store) -> (Store, tempfile::TempDir) {
        // Dropping the connection would checkpoint into the live files; they are lost anyway.
        drop(store);
        assert!(self.synced > 0, "nothing was ever fsynced");
        let after = tempfile::tempdir().expect("temp dir");
        for suffix in ["", "-wal"] {
            let from = PathBuf::from(format!("{}{suffix}", self.durable.display()));
            if from.exists() {
                let to = after.path().join(format!("registry.db{suffix}"));
                std::fs::copy(&from, to).unwrap();
            }
        }
        (open(&after.path().join("registry.db")), after)
    }
}

/// What the broker received, by session and seq.
#[derive(Default)]
struct Broker {
    got: BTreeMap<(SessionId, u64), Vec<u8>>,
}

impl Broker {
    fn receive(&mut self, rows: &[OutboxRow]) {
        for row in rows {
            let old = self.got.insert((row.session, row.seq), row.payload.clone());
            if let Some(old) = old {
                assert_eq!(old, row.payload, "seq {} reused before the cut", row.seq);
            }
        }
    }

    fn highest(&self, session: SessionId) -> u64 {
        self.got
            .keys()
            .filter(|(s, _)| *s == session)
            .map(|(_, seq)| *seq)
            .max()
            .unwrap_or(0)
    }

    /// Every row the next run sends that carries a seq the broker has must be byte-identical.
    fn check_no_reuse(&self, rows: &[OutboxRow]) -> usize {
        let mut repeats = 0;
        for row in rows {
            if let Some(got) = self.got.get(&(row.session, row.seq)) {
                assert_eq!(
                    got, &row.payload,
                    "session {} seq {} went to the broker before the power loss and is sent \
                     again with other bytes",
                    row.session, row.seq
                );
                repeats += 1;
            }
        }
        repeats
    }
}

#[test]
fn after_a_power_loss_no_published_seq_is_reused_and_sessions_resume_above_it() {
    let mut flash = Flash::new();
    let mut broker = Broker::default();
    let mut store = open(&flash.live);

    // `a` changes a lot; its events go to the broker; some acks follow (synchronous=NORMAL).
    let (mut a, opened) = Device::open(1, mac(1), 0);
    store.commit(&[opened], &serial(), 0).unwrap();
    flash.after(&store);
    for n in 1..=12u8 {
        let update = a.update(vec![field(n, n)], i64::from(n));
        let report = store.commit(&[update], &serial(), i64::from(n)).unwrap();
        assert!(
            report.coalesced.is_empty(),
            "`a` alone stays within the quota"
        );
        flash.after(&store);
    }
    let sent = store.outbox_peek(0, usize::MAX).unwrap();
    assert_eq!(sent.len(), 13, "every event of `a` goes to the broker");
    flash.after(&store);
    broker.receive(&sent);
    let acked: Vec<i64> = sent.iter().take(10).map(|row| row.id).collect();
    store.outbox_ack(&acked).unwrap();
    flash.after(&store);
    store.commit(&[a.seen(100)], &serial(), 100).unwrap();
    flash.after(&store);

    let (mut store, _after) = flash.cut(store);

    let resumed = store.open_sessions().unwrap();
    assert_eq!(resumed.len(), 1);
    assert!(
        resumed[0].last_seq >= broker.highest(a.session),
        "session resumes at seq {} below seq {} the broker has",
        resumed[0].last_seq,
        broker.highest(a.session)
    );
    a.seq = resumed[0].last_seq;

    // The next run: a new device `b` pushes the outbox over its quota. The quota may coalesce
    // `b`'s events, never `a`'s, which the broker has.
    let (mut b, opened) = Device::open(2, mac(2), 200);
    store.commit(&[opened], &serial(), 200).unwrap();
    let mut coalesced = Vec::new();
    for n in 0..200u8 {
        let at = 300 + i64::from(n);
        let update = b.update(vec![field(n, n.wrapping_add(7))], at);
        let report = store.commit(&[update], &serial(), at).unwrap();
        coalesced.extend(report.coalesced);
        if !coalesced.is_empty() {
            break;
        }
    }
    assert!(
        !coalesced.is_empty(),
        "the test must take the outbox over its quota"
    );
    assert!(
        coalesced.iter().all(|c| c.session == b.session),
        "only the new device's unsent events may coalesce: {coalesced:?}"
    );
    let update = a.update(vec![field(3, 99)], 900);
    store.commit(&[update], &serial(), 900).unwrap();

    let next_run = store.outbox_peek(0, usize::MAX).unwrap();
    let repeats = broker.check_no_reuse(&next_run);
    assert_eq!(
        repeats,
        sent.len(),
        "every row the broker has is still queued (its acks were lost or not made), \
         byte-identical"
    );
}

#[test]
fn one_fsync_of_the_mark_covers_the_peeks_of_the_rows_queued_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("registry.db"), StoreOptions::default()).unwrap();
    let (mut a, opened) = Device::open(1, mac(1), 0);
    let mut batch = vec![opened];
    for n in 0..39u8 {
        batch.push(a.update(vec![field(n, n)], 1));
    }
    store.commit(&batch, &serial(), 1).unwrap();
    assert_eq!(store.durable_writes(), 1, "the commit's fsync");
    // The publisher's window: a peek of 8 rows, then one more peek per ack.
    let mut cursor = 0;
    for _ in 0..5 {
        let rows = store.outbox_peek(cursor, 8).unwrap();
        assert_eq!(rows.len(), 8);
        cursor = rows.last().unwrap().id;
    }
    assert_eq!(
        store.durable_writes(),
        2,
        "one fsync of the mark for all 40 rows of the commit"
    );
    store
        .commit(&[a.update(vec![field(1, 99)], 2)], &serial(), 2)
        .unwrap();
    assert_eq!(store.outbox_peek(cursor, 8).unwrap().len(), 1);
    assert_eq!(
        store.durable_writes(),
        4,
        "a row committed after the mark needs the mark moved (and fsynced) again"
    );
}
