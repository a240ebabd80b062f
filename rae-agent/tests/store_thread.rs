//! The store thread: grouped commits on their deadline, the drain API over the channel, a
//! final commit when the daemon lets go, and a refused change ending the thread with its cause.

mod store_common;

use std::time::Duration;

use rae_agent::store::{
    ChangeError, MemoryStore, RegistryStore, Store, StoreError, StoreHandle, StoreOptions,
    StoreReader, StoreThreadOptions,
};
use store_common::{field, mac, serial, Device};

/// Fails the test when `what` takes longer than a generous deadline.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn slow_batches() -> StoreThreadOptions {
    StoreThreadOptions {
        max_delay: Duration::from_secs(3600),
        local_delay: Duration::from_secs(3600),
        ..StoreThreadOptions::default()
    }
}

#[tokio::test]
async fn events_are_committed_by_their_deadline_and_announced() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("registry.db"), StoreOptions::default()).unwrap();
    let options = StoreThreadOptions {
        max_delay: Duration::from_millis(20),
        ..StoreThreadOptions::default()
    };
    let (handle, thread) = StoreHandle::spawn(store, serial(), options).unwrap();
    let mut outbox = handle.outbox_watch();
    assert_eq!(outbox.borrow_and_update().rows, 0);

    let (mut dev, opened) = Device::open(1, mac(1), 1_000);
    let update = dev.update(vec![field(0, 9)], 1_100);
    handle.submit(vec![opened, update]).await.unwrap();
    within(
        "the grouped commit",
        outbox.wait_for(|stats| stats.rows == 2),
    )
    .await
    .unwrap();

    let rows = handle.outbox_peek(0, 10).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(handle.outbox_ack(vec![rows[0].id]).await.unwrap(), 1);
    within("the ack", outbox.wait_for(|stats| stats.rows == 1))
        .await
        .unwrap();
    let sessions = handle.open_sessions().await.unwrap();
    assert_eq!(sessions[0].last_seq, 2);

    handle.shutdown().await.unwrap();
    within("the thread", thread.finished()).await.unwrap();
    assert!(matches!(
        handle.outbox_stats().await,
        Err(StoreError::ThreadStopped)
    ));
}

#[tokio::test]
async fn flush_commits_now_and_letting_go_commits_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let (handle, thread) = StoreHandle::spawn(store, serial(), slow_batches()).unwrap();

    let (mut dev, opened) = Device::open(1, mac(1), 1_000);
    handle.submit(vec![opened]).await.unwrap();
    let report = handle
        .flush()
        .await
        .unwrap()
        .expect("one change was queued");
    assert_eq!(report.events, 1);
    assert_eq!(
        handle.flush().await.unwrap(),
        None,
        "nothing left to commit"
    );

    let update = dev.update(vec![field(1, 1)], 2_000);
    handle.submit(vec![update, dev.seen(2_500)]).await.unwrap();
    drop(handle);
    within("the thread", thread.finished()).await.unwrap();

    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let sessions = store.open_sessions().unwrap();
    assert_eq!(
        sessions[0].last_seq, 2,
        "queued changes are committed at the end"
    );
    assert_eq!(sessions[0].record.last_seen_ms, 2_500);
}

#[tokio::test]
async fn a_refused_change_stops_the_thread_with_its_cause() {
    let (handle, thread) =
        StoreHandle::spawn(MemoryStore::default(), serial(), slow_batches()).unwrap();
    let (mut dev, opened) = Device::open(1, mac(1), 1_000);
    handle.submit(vec![opened]).await.unwrap();
    handle.flush().await.unwrap();
    dev.seq += 5;
    handle
        .submit(vec![dev.update(vec![field(0, 0)], 2_000)])
        .await
        .unwrap();
    assert!(matches!(
        handle.flush().await,
        Err(StoreError::ThreadStopped)
    ));
    let err = within("the thread", thread.finished())
        .await
        .expect_err("the thread ends with the refusal");
    assert!(
        matches!(
            err,
            StoreError::Rejected(ChangeError::SeqDiscontinuity {
                last: 1,
                got: 7,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(matches!(
        handle.submit(Vec::new()).await,
        Err(StoreError::ThreadStopped)
    ));
}

#[tokio::test]
async fn status_goes_through_the_thread_to_raectl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let (handle, thread) = StoreHandle::spawn(store, serial(), slow_batches()).unwrap();
    handle
        .write_status(vec![("broker".into(), "connected".into())])
        .await
        .unwrap();
    let reader = StoreReader::open_read_only(&path).unwrap();
    let status = reader.read_status().unwrap();
    assert_eq!(
        (status[0].key.as_str(), status[0].value.as_str()),
        ("broker", "connected")
    );
    assert!(status[0].updated_ms > 0, "stamped with the wall clock");
    handle.shutdown().await.unwrap();
    within("the thread", thread.finished()).await.unwrap();

    // The twin keeps what it is told the same way.
    let mut twin = MemoryStore::default();
    twin.write_status(&[("broker".into(), "connected".into())], 5)
        .unwrap();
    assert_eq!(twin.status()[0].value, "connected");
}
