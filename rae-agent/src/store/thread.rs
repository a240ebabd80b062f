//! The store thread: owns a [`RegistryStore`] and serves it over a bounded channel, so that
//! blocking SQLite work never runs on an async worker thread.
//!
//! Changes are grouped by a [`CommitBatcher`]: a quiet event is committed at once, events under
//! load are batched (see its module for the policy). Before each commit the thread takes what
//! is already queued, so changes that arrived during the previous commit go into the next one.
//! The policy only moves commits in time: an event is still published only after the commit
//! that stored it returned, with `synchronous=FULL` (see [`Store`](super::Store)). A full
//! channel makes `submit` wait, which is the back-pressure the registry core feels when the
//! flash is slow. A failed commit stops the
//! thread: it means a bug in the core or a failing disk, and the daemon restarts from what was
//! committed. Its error comes out of [`StoreThread::finished`]; requests after it get
//! [`StoreError::ThreadStopped`].
//!
//! The inventory (open sessions with their latest seq, which the publisher sends) comes from
//! here too, not from the core: [`StoreHandle::inventory_watch`] changes only after a commit
//! returned. The core hands out seqs before they are stored; advertising one of those and then
//! being killed would announce a seq that the next run assigns to different content.

use std::collections::BTreeMap;
use std::time::Instant;

use rae_proto::{Serial, SessionId, SessionSeq};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch};

use super::batch::{CommitBatcher, CommitPolicy};
use super::error::StoreError;
use super::{CommitReport, OutboxRow, OutboxStats, RegistryStore, RestoredSession};
use crate::registry::Change;

/// How the store thread groups commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreThreadOptions {
    /// Requests that may wait in the channel.
    pub channel_capacity: usize,
    /// When pending Changes are committed (see [`CommitPolicy`]).
    pub commit: CommitPolicy,
}

impl StoreThreadOptions {
    /// The defaults with the configured commit policy (`[publish] commit_*`).
    pub fn from_config(config: &crate::config::Config) -> Self {
        let publish = &config.publish;
        StoreThreadOptions {
            commit: CommitPolicy {
                adaptive: publish.commit_adaptive,
                max_delay: std::time::Duration::from_millis(publish.commit_max_delay_ms),
                ..CommitPolicy::default()
            },
            ..StoreThreadOptions::default()
        }
    }
}

impl Default for StoreThreadOptions {
    fn default() -> Self {
        StoreThreadOptions {
            channel_capacity: 1024,
            commit: CommitPolicy::default(),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Request {
    Changes(Vec<Change>),
    Flush(Reply<Option<CommitReport>>),
    OpenSessions(Reply<Vec<RestoredSession>>),
    OutboxPeek {
        after_id: i64,
        limit: usize,
        reply: Reply<Vec<OutboxRow>>,
    },
    OutboxAck {
        ids: Vec<i64>,
        reply: Reply<usize>,
    },
    OutboxStats(Reply<OutboxStats>),
    WriteStatus {
        entries: Vec<(String, String)>,
        reply: Reply<()>,
    },
    Shutdown(Reply<()>),
}

/// A cheap, cloneable handle to the store thread.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    requests: mpsc::Sender<Request>,
    outbox: watch::Receiver<OutboxStats>,
    inventory: watch::Receiver<Vec<SessionSeq>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Request::Changes(_) => "Changes",
            Request::Flush(_) => "Flush",
            Request::OpenSessions(_) => "OpenSessions",
            Request::OutboxPeek { .. } => "OutboxPeek",
            Request::OutboxAck { .. } => "OutboxAck",
            Request::OutboxStats(_) => "OutboxStats",
            Request::WriteStatus { .. } => "WriteStatus",
            Request::Shutdown(_) => "Shutdown",
        })
    }
}

/// The running thread; [`StoreThread::finished`] says how it ended.
#[derive(Debug)]
pub struct StoreThread {
    done: oneshot::Receiver<Result<(), StoreError>>,
}

impl StoreThread {
    /// Waits for the thread to end: after [`StoreHandle::shutdown`], after every handle was
    /// dropped (pending changes are committed first), or after a failed commit.
    pub async fn finished(self) -> Result<(), StoreError> {
        self.done.await.unwrap_or(Err(StoreError::ThreadStopped))
    }
}

impl StoreHandle {
    /// Starts the thread that owns `store`; events are published as RAE `serial`.
    pub fn spawn<S>(
        store: S,
        serial: Serial,
        options: StoreThreadOptions,
    ) -> Result<(StoreHandle, StoreThread), StoreError>
    where
        S: RegistryStore + Send + 'static,
    {
        let initial = store.outbox_stats()?;
        let open: BTreeMap<SessionId, u64> = store
            .open_sessions()?
            .into_iter()
            .map(|s| (s.session, s.last_seq))
            .collect();
        let (requests, receiver) = mpsc::channel(options.channel_capacity.max(1));
        let (stats, outbox) = watch::channel(initial);
        let (inventory_tx, inventory) = watch::channel(inventory_of(&open));
        let (done_tx, done) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(StoreError::Spawn)?;
        let worker = Worker {
            store,
            serial,
            batcher: CommitBatcher::new(options.commit),
            drain_limit: options.channel_capacity.max(1),
            stats,
            quota_unmet: false,
            open,
            inventory: inventory_tx,
        };
        std::thread::Builder::new()
            .name("rae-store".into())
            .spawn(move || {
                let result = runtime.block_on(worker.run(receiver));
                if let Err(err) = &result {
                    tracing::error!(cause = %crate::error_chain(err), "store thread stopped");
                }
                // The receiver may be gone when nobody waits for the outcome.
                let _ = done_tx.send(result);
            })
            .map_err(StoreError::Spawn)?;
        Ok((
            StoreHandle {
                requests,
                outbox,
                inventory,
            },
            StoreThread { done },
        ))
    }

    /// Queues Changes for the next grouped commit; waits while the channel is full.
    pub async fn submit(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        self.requests
            .send(Request::Changes(changes))
            .await
            .map_err(|_| StoreError::ThreadStopped)
    }

    /// Commits the queued Changes now; `None` when there were none.
    pub async fn flush(&self) -> Result<Option<CommitReport>, StoreError> {
        self.call(Request::Flush).await
    }

    pub async fn open_sessions(&self) -> Result<Vec<RestoredSession>, StoreError> {
        self.call(Request::OpenSessions).await
    }

    /// See [`RegistryStore::outbox_peek`].
    pub async fn outbox_peek(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.call(|reply| Request::OutboxPeek {
            after_id,
            limit,
            reply,
        })
        .await
    }

    pub async fn outbox_ack(&self, ids: Vec<i64>) -> Result<usize, StoreError> {
        self.call(|reply| Request::OutboxAck { ids, reply }).await
    }

    pub async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.call(Request::OutboxStats).await
    }

    /// Watches the outbox: changes after every commit and ack, so the publisher can wait for
    /// new rows instead of polling.
    pub fn outbox_watch(&self) -> watch::Receiver<OutboxStats> {
        self.outbox.clone()
    }

    /// The open sessions with their latest seq, as committed (sorted by session): changes
    /// only after a commit returned, so it never lists a seq a crash could take back.
    pub fn inventory_watch(&self) -> watch::Receiver<Vec<SessionSeq>> {
        self.inventory.clone()
    }

    pub async fn write_status(&self, entries: Vec<(String, String)>) -> Result<(), StoreError> {
        self.call(|reply| Request::WriteStatus { entries, reply })
            .await
    }

    /// Commits what is queued and stops the thread, whatever other handles exist.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        self.call(Request::Shutdown).await
    }

    async fn call<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, StoreError> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(request(reply))
            .await
            .map_err(|_| StoreError::ThreadStopped)?;
        response.await.unwrap_or(Err(StoreError::ThreadStopped))
    }
}

struct Worker<S> {
    store: S,
    serial: Serial,
    batcher: CommitBatcher,
    /// Requests taken from a channel that never empties before a due batch is committed.
    drain_limit: usize,
    stats: watch::Sender<OutboxStats>,
    quota_unmet: bool,
    /// Open sessions and their latest committed seq: the source of the inventory.
    open: BTreeMap<SessionId, u64>,
    inventory: watch::Sender<Vec<SessionSeq>>,
}

fn inventory_of(open: &BTreeMap<SessionId, u64>) -> Vec<SessionSeq> {
    open.iter()
        .map(|(&session, &seq)| SessionSeq { session, seq })
        .collect()
}

impl<S: RegistryStore> Worker<S> {
    async fn run(mut self, mut requests: mpsc::Receiver<Request>) -> Result<(), StoreError> {
        // Requests taken since the channel was last empty.
        let mut drained = 0usize;
        loop {
            // What is already queued (it arrived while the last commit ran) joins the batch
            // before the policy decides, so one commit takes all of it.
            let request = match requests.try_recv() {
                Ok(request) if drained < self.drain_limit || !self.due() => {
                    drained += 1;
                    Some(request)
                }
                Ok(request) => {
                    // A channel that never empties must not hold up a due batch.
                    self.flush()?;
                    drained = 0;
                    Some(request)
                }
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    drained = 0;
                    if self.due() {
                        self.flush()?;
                        continue;
                    }
                    match self.batcher.deadline() {
                        None => requests.recv().await,
                        Some(deadline) => {
                            let deadline = tokio::time::Instant::from_std(deadline);
                            match tokio::time::timeout_at(deadline, requests.recv()).await {
                                Ok(request) => request,
                                Err(_elapsed) => continue,
                            }
                        }
                    }
                }
            };
            let Some(request) = request else {
                self.flush()?;
                return Ok(());
            };
            match request {
                Request::Changes(changes) => {
                    self.batcher.push(changes, Instant::now());
                    if self.batcher.is_full() {
                        self.flush()?;
                    }
                }
                Request::Flush(reply) => {
                    let report = self.flush()?;
                    let _ = reply.send(Ok(report));
                }
                Request::OpenSessions(reply) => {
                    let _ = reply.send(self.store.open_sessions());
                }
                Request::OutboxPeek {
                    after_id,
                    limit,
                    reply,
                } => {
                    let _ = reply.send(self.store.outbox_peek(after_id, limit));
                }
                Request::OutboxAck { ids, reply } => {
                    let result = self.store.outbox_ack(&ids);
                    if result.is_ok() {
                        self.publish_stats()?;
                    }
                    let _ = reply.send(result);
                }
                Request::OutboxStats(reply) => {
                    let _ = reply.send(self.store.outbox_stats());
                }
                Request::WriteStatus { entries, reply } => {
                    let _ = reply.send(self.store.write_status(&entries, crate::wall_ms()));
                }
                Request::Shutdown(reply) => {
                    self.flush()?;
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
            }
        }
    }

    fn due(&self) -> bool {
        self.batcher.is_due(Instant::now())
    }

    /// Commits the batch; an error ends the thread (see the module documentation).
    fn flush(&mut self) -> Result<Option<CommitReport>, StoreError> {
        if self.batcher.is_empty() {
            return Ok(None);
        }
        let changes = self.batcher.take();
        let report = self
            .store
            .commit(&changes, &self.serial, crate::wall_ms())?;
        // The hold-off runs from the end of the commit: its fsync is what it spaces out.
        self.batcher.committed(Instant::now());
        // One line per commit at most, and per kind at most `log.max_per_minute` (a long
        // outage coalesces at nearly every commit); the history keeps each session's details.
        if !report.coalesced.is_empty() && crate::log_limit::allow("outbox.coalesced") {
            tracing::warn!(
                sessions = report.coalesced.len(),
                events = report.coalesced.iter().map(|c| c.events).sum::<u64>(),
                bytes = report.outbox.bytes,
                "outbox over its quota: pending events coalesced into Snapshots"
            );
        }
        if report.vanished.sessions > 0 && crate::log_limit::allow("outbox.vanished") {
            tracing::warn!(
                sessions = report.vanished.sessions,
                events = report.vanished.events,
                bytes = report.outbox.bytes,
                "outbox over its quota: closed sessions the cloud never heard of dropped whole"
            );
        }
        // Logged on the transition only: a long broker outage must not flood the log.
        if report.quota_unmet != self.quota_unmet {
            self.quota_unmet = report.quota_unmet;
            match report.quota_unmet {
                true => tracing::warn!(
                    rows = report.outbox.rows,
                    bytes = report.outbox.bytes,
                    "outbox stays over its quota after coalescing all it may"
                ),
                false => {
                    tracing::info!(bytes = report.outbox.bytes, "outbox back within its quota")
                }
            }
        }
        self.stats.send_replace(report.outbox);
        if self.fold_committed(&changes) {
            self.inventory.send_replace(inventory_of(&self.open));
        }
        Ok(Some(report))
    }

    /// Folds committed Changes into the open sessions; whether the inventory changed.
    fn fold_committed(&mut self, changes: &[Change]) -> bool {
        let mut changed = false;
        for change in changes {
            match change {
                Change::Closed { session, .. } => changed |= self.open.remove(session).is_some(),
                Change::Opened { session, seq, .. }
                | Change::Updated { session, seq, .. }
                | Change::Snapshot { session, seq, .. } => {
                    changed |= self.open.insert(*session, *seq) != Some(*seq);
                }
                Change::Seen { .. } | Change::Conflict { .. } => {}
            }
        }
        changed
    }

    fn publish_stats(&mut self) -> Result<(), StoreError> {
        self.stats.send_replace(self.store.outbox_stats()?);
        Ok(())
    }
}
