//! The inventory comes from the store thread and lists only committed seqs: a seq the core
//! assigned but the store has not committed is never advertised (a kill -9 before the commit
//! would let the next run assign it to different content), a refused commit advertises
//! nothing, and a restart starts from what the database holds.

mod store_common;

use std::time::Duration;

use rae_agent::store::{
    CommitPolicy, MemoryStore, Store, StoreError, StoreHandle, StoreOptions, StoreThreadOptions,
};
use rae_proto::{SessionId, SessionSeq};
use store_common::{field, mac, serial, Device};

const HOUR: Duration = Duration::from_secs(3600);

/// Nothing is committed unless the test flushes.
fn slow_batches() -> StoreThreadOptions {
    StoreThreadOptions {
        commit: CommitPolicy {
            adaptive: false,
            max_delay: HOUR,
            local_delay: HOUR,
            ..CommitPolicy::default()
        },
        ..StoreThreadOptions::default()
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn listed(pairs: &[(SessionId, u64)]) -> Vec<SessionSeq> {
    let mut v: Vec<SessionSeq> = pairs
        .iter()
        .map(|&(session, seq)| SessionSeq { session, seq })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn the_inventory_lists_only_committed_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("registry.db"), StoreOptions::default()).unwrap();
    let (handle, thread) = StoreHandle::spawn(store, serial(), slow_batches()).unwrap();
    let inventory = handle.inventory_watch();

    let (mut a, opened_a) = Device::open(1, mac(1), 1_000);
    let (mut b, opened_b) = Device::open(2, mac(2), 1_000);
    handle.submit(vec![opened_a, opened_b]).await.unwrap();
    // A round trip through the thread: the submission has been taken, not committed.
    handle.outbox_stats().await.unwrap();
    assert!(
        inventory.borrow().is_empty(),
        "uncommitted sessions are not listed: {:?}",
        *inventory.borrow()
    );
    handle.flush().await.unwrap();
    assert_eq!(
        *inventory.borrow(),
        listed(&[(a.session, 1), (b.session, 1)])
    );

    let update = a.update(vec![field(0, 1)], 1_100);
    handle.submit(vec![update, a.seen(1_200)]).await.unwrap();
    handle.outbox_stats().await.unwrap();
    assert_eq!(
        *inventory.borrow(),
        listed(&[(a.session, 1), (b.session, 1)]),
        "seq 2 is assigned but not committed"
    );
    handle.flush().await.unwrap();
    assert_eq!(
        *inventory.borrow(),
        listed(&[(a.session, 2), (b.session, 1)])
    );

    let snapshot = b.snapshot(1_300);
    let closed = b.close(1_400);
    handle.submit(vec![snapshot, closed]).await.unwrap();
    handle.flush().await.unwrap();
    assert_eq!(
        *inventory.borrow(),
        listed(&[(a.session, 2)]),
        "a closed session leaves the inventory"
    );
    handle.shutdown().await.unwrap();
    within("the thread", thread.finished()).await.unwrap();
}

#[tokio::test]
async fn a_refused_commit_advertises_nothing() {
    let (handle, thread) =
        StoreHandle::spawn(MemoryStore::default(), serial(), slow_batches()).unwrap();
    let inventory = handle.inventory_watch();
    let (mut dev, opened) = Device::open(1, mac(1), 1_000);
    handle.submit(vec![opened]).await.unwrap();
    handle.flush().await.unwrap();
    // A good update and a refused one in the same batch: all or nothing.
    let good = dev.update(vec![field(0, 1)], 2_000);
    dev.seq += 5;
    let refused = dev.update(vec![field(0, 2)], 2_100);
    handle.submit(vec![good, refused]).await.unwrap();
    assert!(matches!(
        handle.flush().await,
        Err(StoreError::ThreadStopped)
    ));
    within("the thread", thread.finished())
        .await
        .expect_err("the thread ends with the refusal");
    assert_eq!(*inventory.borrow(), listed(&[(dev.session, 1)]));
}

#[tokio::test]
async fn after_a_restart_the_inventory_starts_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let (mut dev, opened) = Device::open(1, mac(1), 1_000);
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let (handle, thread) = StoreHandle::spawn(store, serial(), slow_batches()).unwrap();
        let update = dev.update(vec![field(0, 1)], 1_100);
        handle.submit(vec![opened, update]).await.unwrap();
        handle.shutdown().await.unwrap();
        within("the thread", thread.finished()).await.unwrap();
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let (handle, thread) = StoreHandle::spawn(store, serial(), slow_batches()).unwrap();
    assert_eq!(
        *handle.inventory_watch().borrow(),
        listed(&[(dev.session, 2)])
    );
    handle.shutdown().await.unwrap();
    within("the thread", thread.finished()).await.unwrap();
}
