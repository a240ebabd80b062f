//! Liveness and readiness.
//!
//! Liveness means the process loop is alive: the source has not returned and the runtime
//! still runs timers (a heartbeat task stamps the time; a wedged runtime stops stamping).
//! Readiness adds that the database answered a probe recently: a sink that cannot write
//! should not count as serving, but it must not be restarted for it either (it resumes by
//! itself when the database is back), so the database only affects `/readyz`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// A heartbeat older than this means the runtime no longer runs timers.
const HEARTBEAT_STALE: Duration = Duration::from_secs(10);

/// Shared state of `/healthz` and `/readyz`.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` at the last heartbeat.
    heartbeat_ms: AtomicU64,
    running: AtomicBool,
    db_up: AtomicBool,
}

/// What the endpoints answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub reason: &'static str,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health {
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            running: AtomicBool::new(false),
            db_up: AtomicBool::new(false),
        })
    }

    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    pub fn beat(&self, now: Instant) {
        self.heartbeat_ms.store(self.now_ms(now), Ordering::Relaxed);
    }

    /// The source started (`true`) or returned (`false`).
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Relaxed);
    }

    pub fn set_db_up(&self, up: bool) {
        self.db_up.store(up, Ordering::Relaxed);
    }

    pub fn db_up(&self) -> bool {
        self.db_up.load(Ordering::Relaxed)
    }

    pub fn live(&self, now: Instant) -> Verdict {
        let age = self
            .now_ms(now)
            .saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed));
        if !self.running.load(Ordering::Relaxed) {
            Verdict {
                ok: false,
                reason: "the source is not running",
            }
        } else if age > HEARTBEAT_STALE.as_millis() as u64 {
            Verdict {
                ok: false,
                reason: "the runtime stopped running timers",
            }
        } else {
            Verdict {
                ok: true,
                reason: "alive",
            }
        }
    }

    pub fn ready(&self, now: Instant) -> Verdict {
        let live = self.live(now);
        if !live.ok {
            live
        } else if !self.db_up() {
            Verdict {
                ok: false,
                reason: "the database does not answer",
            }
        } else {
            Verdict {
                ok: true,
                reason: "ready",
            }
        }
    }
}

/// Stamps the heartbeat and probes the database with `SELECT 1` every `every`, until the
/// task is aborted.
pub async fn watch(health: Arc<Health>, pool: PgPool, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        health.beat(Instant::now());
        let probe = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&pool);
        let up = matches!(
            tokio::time::timeout(every.max(Duration::from_secs(1)), probe).await,
            Ok(Ok(1))
        );
        if up != health.db_up() {
            if up {
                tracing::info!("database reachable");
            } else {
                tracing::warn!("database unreachable; /readyz reports not ready");
            }
        }
        health.set_db_up(up);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_a_running_source_a_fresh_heartbeat_and_the_database() {
        let h = Health::new();
        let t0 = h.started;
        assert!(!h.live(t0).ok, "not running yet");
        h.set_running(true);
        h.beat(t0);
        assert!(h.live(t0).ok);
        assert!(!h.ready(t0).ok, "database not probed yet");
        h.set_db_up(true);
        assert!(h.ready(t0 + Duration::from_secs(1)).ok);
        assert!(!h.live(t0 + Duration::from_secs(11)).ok, "stale heartbeat");
        h.set_running(false);
        assert_eq!(h.ready(t0).reason, "the source is not running");
    }
}
