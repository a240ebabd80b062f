//! Gap repair (DESIGN section 5): when the writer commits a session row with `needs_resync`,
//! the sink asks that RAE for a `resync` of that one session, so the gap closes when the
//! Snapshot lands instead of at the next periodic one.
//!
//! - The writer never waits for this: after each commit it offers [`GapNotice`]s to a
//!   bounded channel ([`GapReporter`]); a full channel drops the notice (counted).
//! - [`policy`]: the sans-IO decisions (one outstanding per session, backoff, a token bucket
//!   per RAE, a cap on tracked sessions).
//! - [`run`]: the task that owns the policy, sends the requests through a
//!   [`Requester`](crate::command::Requester) and feeds the replies back.
//!
//! The gap closes by the convergence rule (the Snapshot clears `needs_resync`); the writer
//! then reports the session healed and the policy forgets it.

pub mod policy;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rae_proto::{CommandReply, CommandRequest, DeviceRef, ErrorKind, Serial, SessionId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::command::{Request, RequestError, Requester};
use policy::{AfterAnswer, Answered, HealPolicy, Healer, Noticed, Suppressed};

/// What the writer says about a session after a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapNotice {
    pub serial: Serial,
    pub session: SessionId,
    /// `true`: the row has a gap; `false`: a gap it had is closed.
    pub open: bool,
}

/// The writer's end: never blocks.
#[derive(Debug, Clone)]
pub struct GapReporter {
    tx: mpsc::Sender<GapNotice>,
    metrics: Arc<HealMetrics>,
}

impl GapReporter {
    pub fn report(&self, notice: GapNotice) {
        if self.tx.try_send(notice).is_err() {
            HealMetrics::add(&self.metrics.notices_dropped);
        }
    }
}

/// The channel between the writer and the healer, `capacity` notices deep.
pub fn channel(
    capacity: usize,
    metrics: Arc<HealMetrics>,
) -> (GapReporter, mpsc::Receiver<GapNotice>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (GapReporter { tx, metrics }, rx)
}

/// Everything `/metrics` shows about gap repair.
#[derive(Debug, Default)]
pub struct HealMetrics {
    pub gaps_reported: AtomicU64,
    pub gaps_closed: AtomicU64,
    pub notices_dropped: AtomicU64,
    pub requests_sent: AtomicU64,
    pub replies_ok: AtomicU64,
    pub replies_unknown_device: AtomicU64,
    pub replies_rate_limited: AtomicU64,
    pub replies_other_error: AtomicU64,
    pub replies_undecodable: AtomicU64,
    pub timeouts: AtomicU64,
    pub broker_unreachable: AtomicU64,
    pub suppressed_outstanding: AtomicU64,
    pub suppressed_backoff: AtomicU64,
    pub suppressed_rate_limit: AtomicU64,
    pub suppressed_overflow: AtomicU64,
    pub gave_up: AtomicU64,
    pub tracked: AtomicU64,
}

impl HealMetrics {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn suppressed(&self, why: Suppressed) {
        Self::add(match why {
            Suppressed::Outstanding => &self.suppressed_outstanding,
            Suppressed::Backoff => &self.suppressed_backoff,
            Suppressed::RateLimit => &self.suppressed_rate_limit,
            Suppressed::Overflow => &self.suppressed_overflow,
        });
    }

    /// The Prometheus text of these counters.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let p = "cloud_sink_heal";
        for (name, help, value) in [
            (
                "gaps_reported_total",
                "Committed rows with needs_resync the writer reported.",
                get(&self.gaps_reported),
            ),
            (
                "gaps_closed_total",
                "Tracked gaps the writer reported closed (the Snapshot landed).",
                get(&self.gaps_closed),
            ),
            (
                "notices_dropped_total",
                "Gap notices dropped because the healer's channel was full.",
                get(&self.notices_dropped),
            ),
            (
                "resync_requests_sent_total",
                "Resync commands sent for one session.",
                get(&self.requests_sent),
            ),
            (
                "timeouts_total",
                "Resync commands without a reply in time.",
                get(&self.timeouts),
            ),
            (
                "broker_unreachable_total",
                "Resync commands not sent: no connection to the broker.",
                get(&self.broker_unreachable),
            ),
            (
                "gave_up_total",
                "Gaps left to the periodic Snapshot after the last attempt.",
                get(&self.gave_up),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {p}_{name} {help}\n# TYPE {p}_{name} counter\n{p}_{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP {p}_replies_total Replies to resync commands, by outcome.\n# TYPE {p}_replies_total counter"
        );
        for (outcome, value) in [
            ("ok", get(&self.replies_ok)),
            ("unknown_device", get(&self.replies_unknown_device)),
            ("rate_limited", get(&self.replies_rate_limited)),
            ("other_error", get(&self.replies_other_error)),
            ("undecodable", get(&self.replies_undecodable)),
        ] {
            let _ = writeln!(out, "{p}_replies_total{{outcome=\"{outcome}\"}} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP {p}_suppressed_total Gap notices or due retries that sent nothing, by reason.\n# TYPE {p}_suppressed_total counter"
        );
        for (reason, value) in [
            ("outstanding", get(&self.suppressed_outstanding)),
            ("backoff", get(&self.suppressed_backoff)),
            ("rate_limit", get(&self.suppressed_rate_limit)),
            ("overflow", get(&self.suppressed_overflow)),
        ] {
            let _ = writeln!(out, "{p}_suppressed_total{{reason=\"{reason}\"}} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP {p}_tracked_sessions Sessions with an open gap the healer tracks.\n# TYPE {p}_tracked_sessions gauge\n{p}_tracked_sessions {}",
            get(&self.tracked)
        );
        out
    }
}

/// How the healer runs.
#[derive(Debug, Clone)]
pub struct HealConfig {
    pub policy: HealPolicy,
    pub reply_timeout: Duration,
}

/// A request that ended, back from its task.
struct Ended {
    session: SessionId,
    result: Result<CommandReply, RequestError>,
}

/// Runs the healer until `shutdown` resolves or the writer's end of the channel is gone.
pub async fn run(
    config: HealConfig,
    mut notices: mpsc::Receiver<GapNotice>,
    requester: Arc<Requester>,
    metrics: Arc<HealMetrics>,
    shutdown: impl Future<Output = ()>,
) {
    let mut healer = Healer::new(config.policy.clone());
    // The request of each session whose last attempt got no reply: a retry re-sends it with
    // the same correlation data, so an RAE that did act answers from its duplicate cache.
    let mut unanswered: HashMap<SessionId, Request> = HashMap::new();
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<Ended>();
    tokio::pin!(shutdown);
    loop {
        let wake = healer.next_due().map(Instant::from_std);
        let mut sends = Vec::new();
        tokio::select! {
            () = &mut shutdown => return,
            notice = notices.recv() => {
                let Some(notice) = notice else { return };
                let now = Instant::now().into_std();
                if notice.open {
                    HealMetrics::add(&metrics.gaps_reported);
                    match healer.notice(&notice.serial, notice.session, now) {
                        Noticed::Scheduled => {}
                        Noticed::Send(send) => sends.push(send),
                        Noticed::Suppressed(why) => metrics.suppressed(why),
                    }
                } else if healer.closed(notice.session) {
                    HealMetrics::add(&metrics.gaps_closed);
                    unanswered.remove(&notice.session);
                    tracing::info!(serial = %notice.serial, session = %notice.session, "gap closed");
                }
            }
            Some(done) = ended.recv() => {
                let how = account(&metrics, &done.result);
                if how != Answered::NoReply {
                    unanswered.remove(&done.session);
                }
                match healer.answered(done.session, how, Instant::now().into_std()) {
                    AfterAnswer::Retry(_) => {}
                    AfterAnswer::Dropped => {
                        unanswered.remove(&done.session);
                    }
                    AfterAnswer::GaveUp => {
                        HealMetrics::add(&metrics.gave_up);
                        unanswered.remove(&done.session);
                        tracing::warn!(session = %done.session, "gap still open after the last resync request; left to the periodic Snapshot");
                    }
                }
            }
            () = sleep_until(wake), if wake.is_some() => {
                let (due, limited) = healer.due(Instant::now().into_std());
                for _ in 0..limited {
                    metrics.suppressed(Suppressed::RateLimit);
                }
                sends = due;
            }
        }
        for send in sends {
            let request = unanswered
                .entry(send.session)
                .or_insert_with(|| {
                    Request::new(
                        send.serial.clone(),
                        CommandRequest::Resync {
                            device: Some(DeviceRef::Session(send.session)),
                        },
                    )
                })
                .clone();
            HealMetrics::add(&metrics.requests_sent);
            tracing::info!(serial = %send.serial, session = %send.session, attempt = send.attempt, "gap: asking the RAE to resync the session");
            let requester = requester.clone();
            let ended_tx = ended_tx.clone();
            let timeout = config.reply_timeout;
            let session = send.session;
            tokio::spawn(async move {
                let result = requester
                    .send(&request, timeout)
                    .await
                    .map(|answer| answer.reply);
                let _ = ended_tx.send(Ended { session, result });
            });
        }
        metrics
            .tracked
            .store(healer.tracked() as u64, Ordering::Relaxed);
    }
}

/// Counts how a request ended and says what it means for the policy.
fn account(metrics: &HealMetrics, result: &Result<CommandReply, RequestError>) -> Answered {
    match result {
        Ok(CommandReply::Ok(_)) => {
            HealMetrics::add(&metrics.replies_ok);
            Answered::Replied
        }
        Ok(CommandReply::Error(e)) if e.kind == ErrorKind::UnknownDevice => {
            HealMetrics::add(&metrics.replies_unknown_device);
            Answered::UnknownDevice
        }
        Ok(CommandReply::Error(e)) => {
            if e.kind == ErrorKind::RateLimited {
                HealMetrics::add(&metrics.replies_rate_limited);
            } else {
                HealMetrics::add(&metrics.replies_other_error);
                tracing::warn!(kind = %e.kind, message = %e.message, "resync refused");
            }
            Answered::Replied
        }
        Err(RequestError::UndecodableReply(_)) => {
            HealMetrics::add(&metrics.replies_undecodable);
            Answered::Replied
        }
        Err(RequestError::Timeout(_)) => {
            HealMetrics::add(&metrics.timeouts);
            Answered::NoReply
        }
        Err(_) => {
            HealMetrics::add(&metrics.broker_unreachable);
            Answered::NoReply
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
