//! Counters and gauges of the MQTT source, for the ops layer and for tests.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct MqttMetrics {
    pub(crate) received: AtomicU64,
    pub(crate) applied: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) batches_written: AtomicU64,
    pub(crate) write_retries: AtomicU64,
    pub(crate) write_failures: AtomicU64,
    pub(crate) acks_sent: AtomicU64,
    pub(crate) acks_not_queued: AtomicU64,
    pub(crate) acks_deferred: AtomicU64,
    pub(crate) stale_unacked: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) subscribed: AtomicU64,
    pub(crate) subscriptions_refused: AtomicU64,
    pub(crate) sessions_lost: AtomicU64,
    pub(crate) connection_losses: AtomicU64,
    pub(crate) left_at_shutdown: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) lanes_busy: AtomicU64,
}

/// A point-in-time copy of [`MqttMetrics`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MqttMetricsSnapshot {
    /// Messages received from the broker (redeliveries included).
    pub received: u64,
    /// Records the writer applied.
    pub applied: u64,
    /// Records the writer sent to `dead_letters`.
    pub dead_lettered: u64,
    pub batches_written: u64,
    /// Transaction retries inside the writer plus whole-batch retries by a lane.
    pub write_retries: u64,
    /// Batch writes that returned an error (each is retried; acks wait).
    pub write_failures: u64,
    /// PUBACKs handed to the client, each after its batch committed.
    pub acks_sent: u64,
    /// PUBACKs given up: their connection was lost (or the sink shut down) before the client
    /// took them; the broker redelivers those messages. Never on a live connection.
    pub acks_not_queued: u64,
    /// PUBACKs the client's request channel could not take at once: each waited, in order,
    /// and was offered again.
    pub acks_deferred: u64,
    /// Messages of a lost connection, written but not acknowledged (the broker redelivers them).
    pub stale_unacked: u64,
    pub connects: u64,
    /// Subscribe requests the broker answered (one per connection).
    pub subscribed: u64,
    /// Filters the broker refused (an ACL, a bad shared group).
    pub subscriptions_refused: u64,
    /// Connections on which the broker had no session for us (queued messages were lost).
    pub sessions_lost: u64,
    pub connection_losses: u64,
    /// Messages received during shutdown or not written by its deadline: not acknowledged.
    pub left_at_shutdown: u64,
    /// Messages received and not yet acknowledged or given up.
    pub in_flight: u64,
    /// Lanes holding records that are not written yet.
    pub lanes_busy: u64,
}

impl MqttMetrics {
    pub fn snapshot(&self) -> MqttMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MqttMetricsSnapshot {
            received: get(&self.received),
            applied: get(&self.applied),
            dead_lettered: get(&self.dead_lettered),
            batches_written: get(&self.batches_written),
            write_retries: get(&self.write_retries),
            write_failures: get(&self.write_failures),
            acks_sent: get(&self.acks_sent),
            acks_not_queued: get(&self.acks_not_queued),
            acks_deferred: get(&self.acks_deferred),
            stale_unacked: get(&self.stale_unacked),
            connects: get(&self.connects),
            subscribed: get(&self.subscribed),
            subscriptions_refused: get(&self.subscriptions_refused),
            sessions_lost: get(&self.sessions_lost),
            connection_losses: get(&self.connection_losses),
            left_at_shutdown: get(&self.left_at_shutdown),
            in_flight: get(&self.in_flight),
            lanes_busy: get(&self.lanes_busy),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        // Gauges never wrap below zero, even if accounting slipped.
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }
}
