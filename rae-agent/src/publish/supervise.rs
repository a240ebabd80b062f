//! Keeps the publisher running: [`supervise`] restarts [`run`](super::run) with backoff when it ends with
//! an error or a panic, and counts each restart in `publish.restarts`.
//!
//! Why restart in place rather than take the daemon down: the capture, the registry core and
//! the store keep working while the publisher is away, events wait in the outbox (the source of
//! truth, bounded by its quota) and go out once a publisher runs again, so nothing is lost; an
//! exit would throw away the core's liveness timers and depend on the service manager's restart
//! policy. Errors a restart cannot cure end the supervisor with that error instead, and the
//! daemon exits non-zero with the error chain logged: settings it cannot run with, and a store
//! thread that is gone.
//!
//! Limitation: the counters a panicking publisher had not yet shown (at most those of one
//! batch of events) are lost; the rows themselves are not, they stay in the outbox.

use std::sync::Arc;

use rae_proto::SessionSeq;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::packet::SentRows;
use super::publisher::run_after;
use super::{PublishError, PublisherSettings, PublisherStatus};
use crate::store::{StoreError, StoreHandle};

/// Runs [`run`](super::run) until `shutdown` becomes true, restarting it after an error or a panic (see
/// the module documentation). A fault in `settings` is injected into the first run only.
pub async fn supervise(
    mut settings: PublisherSettings,
    store: StoreHandle,
    inventory: watch::Receiver<Vec<SessionSeq>>,
    status: watch::Sender<PublisherStatus>,
    mut shutdown: watch::Receiver<bool>,
    commands: Option<super::CommandLink>,
) -> Result<(), PublishError> {
    settings.check()?;
    if let Some(fault) = settings.fault {
        tracing::warn!(
            ?fault,
            env = super::Fault::ENV,
            "publisher fault injection is on"
        );
    }
    let mut backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
    // Rows published by the runs before, so that re-sends after a restart count as `resent`.
    let sent = Arc::new(SentRows::default());
    loop {
        let started = Instant::now();
        let mut task = AbortOnDrop(tokio::spawn(run_after(
            settings.clone(),
            store.clone(),
            inventory.clone(),
            status.clone(),
            shutdown.clone(),
            sent.clone(),
            commands.clone(),
        )));
        settings.fault = None;
        let cause = match (&mut task).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(err)) if is_fatal(&err) => return Err(err),
            Ok(Err(err)) => crate::error_chain(&err),
            Err(join) if join.is_panic() => format!("panicked: {}", panic_message(join)),
            // Cancelled: only the runtime shutting down does that.
            Err(_) => return Ok(()),
        };
        if *shutdown.borrow() {
            tracing::warn!(cause = %cause, "publisher ended with an error while stopping");
            return Ok(());
        }
        if started.elapsed() >= backoff.max() {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        status.send_modify(|s| {
            s.restarts += 1;
            s.connected = false;
            s.since_ms = Some(crate::wall_ms());
            s.last_error = Some(format!("publisher restarted: {cause}"));
        });
        tracing::error!(
            cause = %cause,
            restarts = status.borrow().restarts,
            retry_in = ?delay,
            "the publisher stopped; restarting it (unacknowledged events stay in the outbox)"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        }
    }
}

/// Errors that a restart cannot cure.
fn is_fatal(err: &PublishError) -> bool {
    matches!(
        err,
        PublishError::Transport(_)
            | PublishError::Serial { .. }
            | PublishError::Settings { .. }
            | PublishError::Store(StoreError::ThreadStopped)
    )
}

fn panic_message(join: tokio::task::JoinError) -> String {
    let payload = join.into_panic();
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// The publisher task, aborted if the supervisor is dropped (the daemon gave up waiting), so
/// that no publisher outlives it and holds the connection.
struct AbortOnDrop(JoinHandle<Result<(), PublishError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::future::Future for AbortOnDrop {
    type Output = Result<Result<(), PublishError>, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// Unit-level checks of what restarts; the restart itself is tested against a real broker in
/// `tests/tests/agent_publish.rs`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_incurable_errors_are_fatal() {
        assert!(is_fatal(&PublishError::Store(StoreError::ThreadStopped)));
        assert!(is_fatal(&PublishError::Settings {
            setting: "max_in_flight",
            reason: String::new(),
        }));
        assert!(!is_fatal(&PublishError::DriverStopped));
        assert!(!is_fatal(&PublishError::InjectedFault));
    }
}
