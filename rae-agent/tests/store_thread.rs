//! The store thread: a quiet event committed at once, events under load batched, changes that
//! queue during a commit going into the next one, the drain API over the channel, a final
//! commit when the daemon lets go, and a refused change ending the thread with its cause.

mod store_common;

use std::time::Duration;

use rae_agent::registry::Change;
use rae_agent::store::{
    ChangeError, CommitPolicy, CommitReport, MemoryStore, OutboxRow, OutboxStats, RegistryStore,
    RestoredSession, Store, StoreError, StoreHandle, StoreOptions, StoreReader, StoreThreadOptions,
};
use rae_proto::Serial;
use store_common::{field, mac, serial, Device};

/// Fails the test when `what` takes longer than a generous deadline.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

const HOUR: Duration = Duration::from_secs(3600);

/// A fixed batch of an hour: nothing is committed unless asked to.
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

/// The adaptive policy with `hold` as its hold-off under load.
fn adaptive(hold: Duration) -> StoreThreadOptions {
    StoreThreadOptions {
        commit: CommitPolicy {
            adaptive: true,
            quiet_gap: hold,
            max_delay: hold,
            local_delay: HOUR,
            ..CommitPolicy::default()
        },
        ..StoreThreadOptions::default()
    }
}

#[tokio::test]
async fn events_are_committed_and_announced() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("registry.db"), StoreOptions::default()).unwrap();
    let (handle, thread) =
        StoreHandle::spawn(store, serial(), StoreThreadOptions::default()).unwrap();
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
async fn a_quiet_event_commits_at_once_and_the_next_waits_out_the_hold_off() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("registry.db"), StoreOptions::default()).unwrap();
    // An hour's hold-off: the first event can only be committed by the quiet rule.
    let (handle, thread) = StoreHandle::spawn(store, serial(), adaptive(HOUR)).unwrap();
    let mut outbox = handle.outbox_watch();
    let (mut dev, opened) = Device::open(1, mac(1), 1_000);
    handle.submit(vec![opened]).await.unwrap();
    within(
        "the quiet event's commit, without a flush",
        outbox.wait_for(|stats| stats.rows == 1),
    )
    .await
    .unwrap();
    handle
        .submit(vec![dev.update(vec![field(0, 9)], 1_100)])
        .await
        .unwrap();
    let report = handle.flush().await.unwrap();
    assert_eq!(
        report.map(|r| r.events),
        Some(1),
        "the event after a commit is batched, still pending at the flush"
    );
    handle.shutdown().await.unwrap();
    within("the thread", thread.finished()).await.unwrap();
}

/// A store whose first commit waits until the test lets it go; records each commit's size.
struct GatedStore {
    inner: MemoryStore,
    gate: Option<std::sync::mpsc::Receiver<()>>,
    started: tokio::sync::mpsc::UnboundedSender<usize>,
}

impl RegistryStore for GatedStore {
    fn commit(
        &mut self,
        changes: &[Change],
        serial: &Serial,
        now_ms: i64,
    ) -> Result<CommitReport, StoreError> {
        let _ = self.started.send(changes.len());
        if let Some(gate) = self.gate.take() {
            // The test holds the commit open while it queues more changes.
            let _ = gate.recv();
        }
        self.inner.commit(changes, serial, now_ms)
    }
    fn open_sessions(&self) -> Result<Vec<RestoredSession>, StoreError> {
        self.inner.open_sessions()
    }
    fn outbox_peek(&mut self, after_id: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.inner.outbox_peek(after_id, limit)
    }
    fn outbox_ack(&mut self, ids: &[i64]) -> Result<usize, StoreError> {
        self.inner.outbox_ack(ids)
    }
    fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.inner.outbox_stats()
    }
    fn write_status(
        &mut self,
        entries: &[(String, String)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.inner.write_status(entries, now_ms)
    }
}

#[tokio::test]
async fn changes_queued_during_a_commit_go_into_the_next_one() {
    let (release, gate) = std::sync::mpsc::channel();
    let (started, mut commits) = tokio::sync::mpsc::unbounded_channel();
    let store = GatedStore {
        inner: MemoryStore::default(),
        gate: Some(gate),
        started,
    };
    let (handle, thread) =
        StoreHandle::spawn(store, serial(), adaptive(Duration::from_millis(5))).unwrap();
    let (mut dev, opened) = Device::open(1, mac(1), 1_000);
    handle.submit(vec![opened]).await.unwrap();
    assert_eq!(within("the first commit", commits.recv()).await, Some(1));
    // Three submissions while the first commit runs: they queue in the channel.
    for n in 0..3u8 {
        let update = dev.update(vec![field(0, n)], 1_100 + i64::from(n));
        handle.submit(vec![update, dev.seen(1_200)]).await.unwrap();
    }
    release.send(()).unwrap();
    assert_eq!(
        within("the second commit", commits.recv()).await,
        Some(6),
        "all three queued submissions in one commit"
    );
    assert_eq!(handle.flush().await.unwrap(), None, "nothing left behind");
    assert_eq!(handle.open_sessions().await.unwrap()[0].last_seq, 4);
    handle.shutdown().await.unwrap();
    within("the thread", thread.finished()).await.unwrap();
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
