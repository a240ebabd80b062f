//! The outbox quota on the real database: coalescing keeps the newest state and every Closed,
//! is recorded, never touches rows the publisher took, and a sink that applies what is left
//! ends with the same row as one that got every event.

mod store_common;

use std::collections::BTreeMap;

use rae_agent::registry::Change;
use rae_agent::store::{
    HistoryKind, Store, StoreOptions, StoreReader, COALESCED_EVENTS, COALESCED_SESSIONS,
    QUOTA_UNMET,
};
use rae_proto::{Envelope, Event};
use store_common::{field, fold, mac, serial, values_without_last_seen, Device};

const QUOTA: u64 = 6_000;

/// Three devices: `a` changes a lot and stays, `b` changes and leaves, `c` changes a little.
fn workload() -> Vec<Vec<Change>> {
    let (mut a, opened_a) = Device::open(1, mac(1), 0);
    let (mut b, opened_b) = Device::open(2, mac(2), 0);
    let (mut c, opened_c) = Device::open(3, mac(3), 0);
    let mut batches = vec![vec![opened_a, opened_b, opened_c]];
    for n in 1..=120u8 {
        let at = i64::from(n) * 1_000;
        let mut batch = vec![a.update(vec![field(n, n), field(n + 1, n)], at)];
        if n % 3 == 0 {
            batch.push(a.seen(at + 1));
        }
        if n <= 60 && n % 2 == 0 {
            batch.push(b.update(vec![field(n + 2, n)], at));
        }
        if n == 61 {
            batch.push(b.close(at));
        }
        if n % 20 == 0 {
            batch.push(c.update(vec![field(n, n)], at));
            batch.push(c.snapshot(at));
        }
        batches.push(batch);
    }
    batches
}

fn open(path: &std::path::Path, max_bytes: u64) -> Store {
    let options = StoreOptions {
        outbox_max_bytes: max_bytes,
        ..StoreOptions::default()
    };
    Store::open(path, options).expect("store opens")
}

#[test]
fn coalescing_keeps_the_newest_state_and_every_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut bounded = open(&dir.path().join("bounded.db"), QUOTA);
    let mut unbounded = open(&dir.path().join("unbounded.db"), u64::MAX / 2);
    let mut coalescings = 0;
    for (n, batch) in workload().iter().enumerate() {
        let now = n as i64 * 1_000 + 500;
        unbounded.commit(batch, &serial(), now).unwrap();
        let report = bounded.commit(batch, &serial(), now).unwrap();
        assert!(
            !report.quota_unmet,
            "commit {n}: everything here is coalescable"
        );
        assert!(
            report.outbox.bytes <= QUOTA,
            "commit {n}: outbox at {} bytes, quota {QUOTA}",
            report.outbox.bytes
        );
        coalescings += report.coalesced.len();
        for c in &report.coalesced {
            assert!(c.events >= 2 && c.first_seq < c.last_seq, "{c:?}");
        }
    }
    assert!(coalescings > 0, "the workload must go over the quota");

    let all = unbounded.outbox_peek(0, usize::MAX).unwrap();
    let left = bounded.outbox_peek(0, usize::MAX).unwrap();
    assert!(left.len() < all.len());

    // Same final row for a sink, every field, every session, Closed included.
    let full = fold(all.iter().map(|r| r.payload.as_slice()));
    let rest = fold(left.iter().map(|r| r.payload.as_slice()));
    assert_eq!(
        values_without_last_seen(&rest),
        values_without_last_seen(&full)
    );
    for (session, row) in &rest {
        let reference = full[session].fields[&16].1.clone();
        let (seq, last_seen) = &row.fields[&16];
        assert!(*seq > 0);
        assert!(
            field_ms(last_seen) >= field_ms(&reference),
            "a coalesced Snapshot never carries an older last_seen"
        );
    }

    // Per session: seqs still grow in queue order, the newest seq survives, Closed is last.
    let mut by_session: BTreeMap<_, Vec<Envelope>> = BTreeMap::new();
    for row in &left {
        by_session
            .entry(row.session)
            .or_default()
            .push(Envelope::decode(&row.payload).unwrap());
    }
    for (session, events) in &by_session {
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{session}: {seqs:?}");
        let newest = all
            .iter()
            .filter(|r| r.session == *session)
            .map(|r| r.seq)
            .max();
        assert_eq!(
            seqs.last().copied(),
            newest,
            "{session}: the newest seq survives"
        );
    }
    let closed: Vec<_> = left
        .iter()
        .filter(|r| {
            matches!(
                Envelope::decode(&r.payload).unwrap().event,
                Event::Closed { .. }
            )
        })
        .collect();
    assert_eq!(closed.len(), 1, "b's Closed is never coalesced away");

    // Recorded, never silent.
    let reader = StoreReader::open_read_only(dir.path().join("bounded.db")).unwrap();
    let counters: BTreeMap<String, i64> = reader.counters().unwrap().into_iter().collect();
    assert_eq!(
        counters.get(COALESCED_SESSIONS).copied(),
        Some(coalescings as i64)
    );
    assert!(counters.get(COALESCED_EVENTS).copied().unwrap_or(0) >= 2 * coalescings as i64);
    assert_eq!(counters.get(QUOTA_UNMET), None);
    let a_session = left[0].session;
    let history = reader.history(a_session, 10_000).unwrap();
    let record = history
        .iter()
        .find(|h| h.kind == HistoryKind::Coalesced)
        .expect("a coalescing history row");
    assert!(
        record.summary.contains("replaced by one Snapshot"),
        "{}",
        record.summary
    );
    assert!(record.summary.contains("quota"), "{}", record.summary);
}

fn field_ms(field: &rae_proto::Field) -> i64 {
    match field {
        rae_proto::Field::LastSeen(ms) => *ms,
        other => panic!("expected last_seen, got {other:?}"),
    }
}

#[test]
fn rows_the_publisher_took_are_never_coalesced_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let mut store = open(&path, QUOTA);
    let (mut a, opened) = Device::open(1, mac(1), 0);
    let mut batch = vec![opened];
    for n in 0..10 {
        batch.push(a.update(vec![field(n, n)], 10));
    }
    store.commit(&batch, &serial(), 10).unwrap();
    let in_flight = store.outbox_peek(0, 6).unwrap();
    drop(store);

    let mut store = open(&path, QUOTA);
    let last_in_flight = in_flight.last().unwrap().seq;
    assert_eq!(last_in_flight, 6);
    let mut coalesced = false;
    for n in 0..200u8 {
        let change = a.update(vec![field(n, n.wrapping_add(100))], 20);
        let report = store.commit(&[change], &serial(), 20).unwrap();
        coalesced |= !report.coalesced.is_empty();
        for c in &report.coalesced {
            assert!(
                c.first_seq > last_in_flight,
                "coalesced in-flight seqs: {c:?}"
            );
        }
    }
    assert!(coalesced, "the test must go over the quota");
    let head = store.outbox_peek(0, in_flight.len()).unwrap();
    assert_eq!(head, in_flight, "in-flight rows are untouched until acked");
}

#[test]
fn an_unmet_quota_is_counted_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let mut store = open(&path, 500);
    let mut unmet = 0;
    for n in 1..=20u8 {
        let (_, opened) = Device::open(u32::from(n), mac(n), 0);
        let report = store.commit(&[opened], &serial(), 0).unwrap();
        assert!(
            report.coalesced.is_empty(),
            "one Snapshot per session cannot shrink"
        );
        unmet += usize::from(report.quota_unmet);
    }
    assert!(unmet > 0);
    assert_eq!(store.outbox_stats().unwrap().rows, 20, "no event dropped");
    let reader = StoreReader::open_read_only(&path).unwrap();
    let counters: BTreeMap<String, i64> = reader.counters().unwrap().into_iter().collect();
    assert_eq!(counters.get(QUOTA_UNMET).copied(), Some(unmet as i64));
}

/// A MAC flood during an outage: sessions open and close while all their events wait. Without
/// a rule for them every one leaves a Snapshot and a Closed, and the quota is lost; those the
/// cloud never heard of vanish whole instead, counted, from the outbox and the registry, in
/// SQLite and in the twin alike. A session with a row handed to the publisher never vanishes.
#[test]
fn sessions_opened_and_closed_while_pending_vanish_whole_and_the_quota_holds() {
    use rae_agent::store::{MemoryStore, RegistryStore, VANISHED_EVENTS, VANISHED_SESSIONS};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let quota = 4_000;
    let mut store = open(&path, quota);
    let mut twin = MemoryStore::new(StoreOptions {
        outbox_max_bytes: quota,
        ..StoreOptions::default()
    });
    // One device the cloud heard of: its Snapshot is handed to the publisher (no ack).
    let (mut known, opened) = Device::open(1, mac(1), 0);
    store
        .commit(std::slice::from_ref(&opened), &serial(), 0)
        .unwrap();
    twin.commit(&[opened], &serial(), 0).unwrap();
    assert_eq!(
        store.outbox_peek(0, 1).unwrap(),
        twin.outbox_peek(0, 1).unwrap()
    );
    let close_known = known.close(1);
    store
        .commit(std::slice::from_ref(&close_known), &serial(), 1)
        .unwrap();
    twin.commit(&[close_known], &serial(), 1).unwrap();
    // The flood: 300 MACs that each open and close unpublished.
    for n in 0..300u32 {
        let (mut flood, opened) = Device::open(100 + n, mac((n % 250) as u8 + 2), 10);
        let batch = vec![opened, flood.close(11)];
        let a = store.commit(&batch, &serial(), 10 + i64::from(n)).unwrap();
        let b = twin.commit(&batch, &serial(), 10 + i64::from(n)).unwrap();
        assert_eq!((a.vanished, a.outbox), (b.vanished, b.outbox), "commit {n}");
        assert!(
            a.outbox.bytes <= quota,
            "commit {n}: {} bytes over the quota {quota}",
            a.outbox.bytes
        );
        assert!(!a.quota_unmet, "commit {n}");
    }
    let vanished = store.counter(VANISHED_SESSIONS).unwrap();
    assert!(vanished > 0, "the flood went over the quota");
    assert_eq!(twin.counter(VANISHED_SESSIONS), vanished);
    assert_eq!(store.counter(VANISHED_EVENTS).unwrap(), 2 * vanished);
    // The known session's rows are untouched, and it is still in the registry.
    let rows = store.outbox_peek(0, usize::MAX).unwrap();
    assert_eq!(rows, twin.outbox_peek(0, usize::MAX).unwrap());
    let known_rows: Vec<u64> = rows
        .iter()
        .filter(|r| r.session == known.session)
        .map(|r| r.seq)
        .collect();
    assert_eq!(known_rows, [1, 2], "Snapshot in flight and Closed stay");
    let reader = StoreReader::open_read_only(&path).unwrap();
    let listed = reader.devices(true).unwrap();
    assert!(listed.iter().any(|d| d.session == known.session));
    assert_eq!(
        listed.len() as i64 + vanished,
        301,
        "vanished sessions leave the registry too, so it agrees with the cloud"
    );
}

/// Short of disk (a floor no filesystem meets), the quota drops to `low_outbox_max_bytes`:
/// pending events coalesce at that size, the status says so and the crossing is counted.
#[test]
fn below_the_disk_floor_the_quota_drops_and_it_shows() {
    use rae_agent::store::floor::DiskFloor;
    use rae_agent::store::DISK_FLOOR_REACHED;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let low = 2_000;
    let options = StoreOptions {
        outbox_max_bytes: 1 << 20,
        disk_floor: DiskFloor {
            min_free_bytes: u64::MAX,
            min_free_percent: 0,
            low_outbox_max_bytes: low,
        },
        ..StoreOptions::default()
    };
    let mut store = Store::open(&path, options).unwrap();
    assert_eq!(store.effective_quota(), low);
    let (mut a, opened) = Device::open(1, mac(1), 0);
    store.commit(&[opened], &serial(), 0).unwrap();
    let mut coalesced = 0;
    for n in 0..100u8 {
        let report = store
            .commit(&[a.update(vec![field(n, n)], 1)], &serial(), 1)
            .unwrap();
        coalesced += report.coalesced.len();
        assert!(
            report.outbox.bytes <= low,
            "commit {n}: {:?}",
            report.outbox
        );
    }
    assert!(coalesced > 0, "the lower quota coalesced");
    store.write_status(&[], 2).unwrap();
    let reader = StoreReader::open_read_only(&path).unwrap();
    let status: BTreeMap<String, String> = reader
        .read_status()
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    assert_eq!(
        status.get("store.disk_low").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        status.get("store.outbox_quota_bytes"),
        Some(&low.to_string())
    );
    assert!(status.contains_key("store.disk_free_bytes"), "{status:?}");
    assert_eq!(store.counter(DISK_FLOOR_REACHED).unwrap(), 1);
}
