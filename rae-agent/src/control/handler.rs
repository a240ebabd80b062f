//! The one place that decides every command's reply, cloud and `raectl` alike. It runs in the
//! core task (the daemon hands it each [`Job`] from [`super::JobReceiver`]), so a command acts
//! on the registry core like a frame does: its effect is an ordinary Change with the session's
//! next seq, committed by the store with the command as its evidence (the history's cause
//! says `(by cloud:{requester})` or `(by raectl (uid N))`).
//!
//! In order, for each job:
//! 1. A cloud command whose (requester, correlation data) was answered within
//!    `[control] duplicate_window_secs` gets that reply again, and nothing else happens
//!    (`dedup.rs`). `raectl` actions are not deduplicated: a person repeating one means it.
//! 2. Over `[control] max_commands_per_sec` / `burst` (`rate.rs`): a `rate_limited` reply,
//!    no effect.
//! 3. The command: SetAvailability, SetEsn, Resync and Forget go to `Core::act`; Inventory
//!    lists the open sessions with their seqs and has the publisher send the inventory now;
//!    Ping answers with the version, uptime and open sessions.
//!
//! A reply that names seqs is sent only after the store committed them (a flush behind the
//! command's Changes), so a requester that reads `raectl show` or waits at the sink for that
//! seq after the reply finds it. That wait runs in a task of its own: the core loop goes on.
//! Every reply is counted by its outcome ([`CommandCounters`]).
//!
//! What the requester sees is not what the log records: a store failure replies `internal`
//! and logs its cause; the store thread has then stopped and the daemon stops with it.

use std::sync::Arc;
use std::time::Instant;

use rae_proto::{
    CommandReply, CommandRequest, DeviceRef, Inventory, Pong, ReplyBody, Serial, SessionSeq,
};
use tokio::sync::Notify;

use super::counters::CommandCounters;
use super::dedup::{self, DuplicateCache};
use super::rate::TokenBucket;
use super::{Job, Origin};
use crate::config::ControlConfig;
use crate::daemon::engine::Engine;
use crate::registry::{Action, ActionError, Change, Core, SessionIds};
use crate::store::{StoreError, StoreHandle};

/// What the handler needs of the registry: the core's actions and views. The daemon's
/// [`Engine`] and a bare [`Core`] (in tests) both provide it.
pub trait Registry {
    fn act(&mut self, action: &Action, by: &str, now_ms: i64) -> Result<Vec<Change>, ActionError>;
    /// The open session `device` names, with its latest seq.
    fn session_seq(&self, device: &DeviceRef) -> Option<SessionSeq>;
    /// Every open session with its latest seq, sorted.
    fn inventory(&self) -> Vec<SessionSeq>;
    fn sessions_open(&self) -> u64;
}

impl<I: SessionIds> Registry for Core<I> {
    fn act(&mut self, action: &Action, by: &str, now_ms: i64) -> Result<Vec<Change>, ActionError> {
        Core::act(self, action, by, now_ms)
    }

    fn session_seq(&self, device: &DeviceRef) -> Option<SessionSeq> {
        self.session(device).map(|view| SessionSeq {
            session: view.session,
            seq: view.seq,
        })
    }

    fn inventory(&self) -> Vec<SessionSeq> {
        Core::inventory(self)
    }

    fn sessions_open(&self) -> u64 {
        self.sessions().count() as u64
    }
}

impl<I: SessionIds> Registry for Engine<I> {
    fn act(&mut self, action: &Action, by: &str, now_ms: i64) -> Result<Vec<Change>, ActionError> {
        Engine::act(self, action, by, now_ms)
    }

    fn session_seq(&self, device: &DeviceRef) -> Option<SessionSeq> {
        self.core().session_seq(device)
    }

    fn inventory(&self) -> Vec<SessionSeq> {
        Engine::inventory(self)
    }

    fn sessions_open(&self) -> u64 {
        self.core().sessions_open()
    }
}

/// What the handler decided for one job, before the store has its Changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub reply: CommandReply,
    /// For the store, in order.
    pub changes: Vec<Change>,
    /// The reply names seqs: send it once they are committed.
    pub after_commit: bool,
    /// Have the publisher send the inventory once committed.
    pub inventory: bool,
    /// Answered from the duplicate cache.
    pub duplicate: bool,
}

impl Decision {
    fn now(reply: CommandReply) -> Decision {
        Decision {
            reply,
            changes: Vec::new(),
            after_commit: false,
            inventory: false,
            duplicate: false,
        }
    }
}

pub struct Handler {
    serial: Serial,
    started: Instant,
    bucket: TokenBucket,
    duplicates: DuplicateCache,
    counters: Arc<CommandCounters>,
    inventory_now: Arc<Notify>,
}

impl Handler {
    /// `now_ms`: the core clock, which the rate and the duplicate window run on.
    pub fn new(config: &ControlConfig, serial: Serial, now_ms: i64) -> Handler {
        let window_ms =
            i64::try_from(config.duplicate_window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Handler {
            serial,
            started: Instant::now(),
            bucket: TokenBucket::new(config.max_commands_per_sec, config.burst, now_ms),
            duplicates: DuplicateCache::new(
                config.duplicate_max_entries as usize,
                dedup::MAX_BYTES,
                window_ms,
            ),
            counters: Arc::new(CommandCounters::default()),
            inventory_now: Arc::new(Notify::new()),
        }
    }

    /// The counters, shared with the entry points (which count what they decide themselves).
    pub fn counters(&self) -> Arc<CommandCounters> {
        self.counters.clone()
    }

    /// Notified when an Inventory command asks for the inventory to be published now (the
    /// publisher waits on it).
    pub fn inventory_requests(&self) -> Arc<Notify> {
        self.inventory_now.clone()
    }

    /// Carries out `job` on `registry` and replies on its channel, after the commit when the
    /// reply names seqs (see the module documentation). Fails only when the store does, after
    /// replying `internal`; the daemon then stops, as for any failed submit.
    pub async fn handle<R: Registry>(
        &mut self,
        job: Job,
        registry: &mut R,
        store: &StoreHandle,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let Job {
            request,
            origin,
            reply,
        } = job;
        let decision = self.decide(&request, &origin, registry, now_ms);
        let counters = self.counters.clone();
        let count = move |answer: &CommandReply| match decision.duplicate {
            true => CommandCounters::bump(&counters.duplicates),
            false => counters.outcome(answer),
        };
        if !decision.changes.is_empty() {
            crate::daemon::log_changes(&decision.changes);
            if let Err(err) = store.submit(decision.changes).await {
                tracing::error!(cause = %crate::error_chain(&err), "a command's change cannot be stored");
                let answer = CommandReply::internal();
                count(&answer);
                let _ = reply.send(answer);
                return Err(err);
            }
        }
        let answer = decision.reply;
        if !decision.after_commit {
            count(&answer);
            // The requester may be gone (a socket client that hung up); nothing to do then.
            let _ = reply.send(answer);
            return Ok(());
        }
        let store = store.clone();
        let inventory_now = decision.inventory.then(|| self.inventory_now.clone());
        tokio::spawn(async move {
            // The flush queues behind the command's Changes, so it returns once they are
            // committed (or the commit failed, which stops the store thread).
            let answer = match store.flush().await {
                Ok(_) => {
                    if let Some(notify) = inventory_now {
                        notify.notify_one();
                    }
                    answer
                }
                Err(err) => {
                    tracing::error!(cause = %crate::error_chain(&err), "a command's change was not committed");
                    CommandReply::internal()
                }
            };
            count(&answer);
            let _ = reply.send(answer);
        });
        Ok(())
    }

    /// The decision for one request, pure but for the wall-clock stamp of an inventory.
    pub fn decide<R: Registry>(
        &mut self,
        request: &CommandRequest,
        origin: &Origin,
        registry: &mut R,
        now_ms: i64,
    ) -> Decision {
        if let Origin::Local { .. } = origin {
            CommandCounters::bump(&self.counters.received_local);
        }
        if let Origin::Cloud {
            requester,
            correlation,
        } = origin
        {
            if let Some(earlier) = self.duplicates.get(requester, correlation, now_ms) {
                tracing::debug!(%requester, command = %request.kind(), "a command seen again: the earlier reply, no second effect");
                let reply = earlier.clone();
                self.update_gauges();
                return Decision {
                    reply,
                    // The first one's Changes may not be committed yet.
                    after_commit: true,
                    duplicate: true,
                    ..Decision::now(CommandReply::internal())
                };
            }
        }
        if !self.bucket.take(now_ms) {
            if crate::log_limit::allow("command.rate_limited") {
                tracing::warn!(
                    by = %by(origin),
                    command = %request.kind(),
                    "over the command rate ([control] max_commands_per_sec, burst): refused, see command.rate_limited"
                );
            }
            self.update_gauges();
            return Decision::now(CommandReply::rate_limited());
        }
        let decision = self.carry_out(request, origin, registry, now_ms);
        if let Origin::Cloud {
            requester,
            correlation,
        } = origin
        {
            // Transient refusals are not remembered: a retry after them should run.
            let transient = matches!(
                &decision.reply,
                CommandReply::Error(e) if matches!(e.kind, rae_proto::ErrorKind::Internal | rae_proto::ErrorKind::RateLimited)
            );
            if !transient {
                self.duplicates.insert(
                    requester.clone(),
                    correlation.clone(),
                    decision.reply.clone(),
                    now_ms,
                );
            }
        }
        self.update_gauges();
        decision
    }

    fn carry_out<R: Registry>(
        &mut self,
        request: &CommandRequest,
        origin: &Origin,
        registry: &mut R,
        now_ms: i64,
    ) -> Decision {
        let action = match request {
            CommandRequest::Ping => {
                return Decision::now(CommandReply::Ok(ReplyBody::Pong(Pong {
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    uptime_secs: self.started.elapsed().as_secs(),
                    sessions_open: registry.sessions_open(),
                })));
            }
            CommandRequest::Inventory => {
                // The core's sessions now are what the store holds once the Changes handed
                // to it so far are committed, which the reply waits for.
                let inventory = Inventory {
                    serial: self.serial.clone(),
                    at_ms: crate::wall_ms(),
                    sessions: registry.inventory(),
                };
                return Decision {
                    after_commit: true,
                    inventory: true,
                    ..Decision::now(CommandReply::Ok(ReplyBody::Inventory(inventory)))
                };
            }
            CommandRequest::SetAvailability {
                device,
                availability,
            } => Action::SetAvailability {
                device: *device,
                availability: *availability,
            },
            CommandRequest::SetEsn { device, esn } => Action::SetEsn {
                device: *device,
                esn: esn.clone(),
            },
            CommandRequest::Resync { device } => Action::Resync { device: *device },
            CommandRequest::Forget { device } => Action::Forget { device: *device },
        };
        let by = by(origin);
        let changes = match registry.act(&action, &by, now_ms) {
            Ok(changes) => changes,
            Err(err) => {
                tracing::debug!(%by, command = %request.kind(), %err, "command refused");
                return Decision::now(match err {
                    ActionError::UnknownDevice(device) => CommandReply::unknown_device(&device),
                    ActionError::InvalidEsn(reason) => {
                        CommandReply::bad_request(format!("invalid ESN: {reason}"))
                    }
                });
            }
        };
        let body = match &action {
            Action::SetAvailability { device, .. } | Action::SetEsn { device, .. } => {
                registry.session_seq(device).map(ReplyBody::Device)
            }
            Action::Forget { .. } => changes.iter().find_map(|change| match change {
                Change::Closed { session, seq, .. } => Some(ReplyBody::Device(SessionSeq {
                    session: *session,
                    seq: *seq,
                })),
                _ => None,
            }),
            Action::Resync { .. } => {
                let mut seqs: Vec<SessionSeq> = changes
                    .iter()
                    .filter_map(|change| match change {
                        Change::Snapshot { session, seq, .. } => Some(SessionSeq {
                            session: *session,
                            seq: *seq,
                        }),
                        _ => None,
                    })
                    .collect();
                seqs.sort();
                Some(ReplyBody::Sessions(seqs))
            }
        };
        let Some(body) = body else {
            // The core carried out the action but the session it named is not there: a bug.
            tracing::error!(%by, ?action, "a command's session vanished after it was carried out");
            return Decision {
                changes,
                after_commit: true,
                ..Decision::now(CommandReply::internal())
            };
        };
        if crate::log_limit::allow("command.carried_out") {
            tracing::info!(%by, command = %request.kind(), events = changes.len(), "command carried out");
        }
        Decision {
            changes,
            after_commit: true,
            ..Decision::now(CommandReply::Ok(body))
        }
    }

    fn update_gauges(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let evictions = self.duplicates.evictions();
        let c = &self.counters;
        c.duplicate_entries
            .store(self.duplicates.len() as u64, Relaxed);
        c.duplicate_evicted_full.store(evictions.full, Relaxed);
        c.duplicate_evicted_aged.store(evictions.aged, Relaxed);
    }
}

/// Who asked, as the history's cause names it.
pub fn by(origin: &Origin) -> String {
    match origin {
        Origin::Cloud { requester, .. } => format!("cloud:{requester}"),
        Origin::Local { uid } => format!("raectl (uid {uid})"),
    }
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
