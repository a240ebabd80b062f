//! What happened to commands, for `raectl status` (the `command.*` entries). Shared by the
//! entry points (the publisher's MQTT side, the control socket) and the handler in the core
//! task, so each counts where it decides: atomics, read when the daemon writes its status.
//!
//! Every cloud command (a PUBLISH on `cmd/`) is counted once in `received_cloud` and once
//! by its outcome: `ok`, `duplicates`, `rate_limited`, `queue_full`, `error_<kind>` or
//! `bad_response_topic` (no reply: nobody could learn the outcome). A `raectl` action is
//! counted in `received_local` and by its outcome the same way.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rae_proto::{CommandReply, ErrorKind};

#[derive(Debug, Default)]
pub struct CommandCounters {
    pub received_cloud: AtomicU64,
    pub received_local: AtomicU64,
    pub ok: AtomicU64,
    /// Answered from the duplicate cache: no second effect.
    pub duplicates: AtomicU64,
    /// Over `[control] max_commands_per_sec` / `burst`: refused without effect.
    pub rate_limited: AtomicU64,
    /// The core task's job queue was full: refused (a rate-limited reply) without effect.
    pub queue_full: AtomicU64,
    pub error_unknown_device: AtomicU64,
    pub error_bad_request: AtomicU64,
    pub error_internal: AtomicU64,
    pub error_unknown_command: AtomicU64,
    /// A cloud command without a Response Topic, or with one outside this RAE's `reply/`:
    /// not carried out, no reply.
    pub bad_response_topic: AtomicU64,
    /// Replies the broker acknowledged.
    pub replies_sent: AtomicU64,
    /// Replies decided but not delivered: the connection was down, the reply did not fit
    /// the broker's Maximum Packet Size, too many replies waited, or the broker refused it.
    pub replies_not_sent: AtomicU64,
    /// The broker refused the `cmd/+` subscription (SUBACK failure code), per connection.
    pub subscribe_refused: AtomicU64,
    /// The `cmd/+` subscription holds on the current connection.
    pub subscribed: AtomicBool,
    /// The duplicate cache: entries held, evicted to make room, aged out.
    pub duplicate_entries: AtomicU64,
    pub duplicate_evicted_full: AtomicU64,
    pub duplicate_evicted_aged: AtomicU64,
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl CommandCounters {
    /// Counts one reply by its outcome (duplicates are counted by the caller instead).
    pub fn outcome(&self, reply: &CommandReply) {
        match reply {
            CommandReply::Ok(_) => add(&self.ok),
            CommandReply::Error(error) => self.error(error.kind),
        }
    }

    pub fn error(&self, kind: ErrorKind) {
        add(match kind {
            ErrorKind::UnknownDevice => &self.error_unknown_device,
            ErrorKind::BadRequest => &self.error_bad_request,
            ErrorKind::Internal => &self.error_internal,
            ErrorKind::UnknownCommand => &self.error_unknown_command,
            ErrorKind::RateLimited => &self.rate_limited,
        });
    }

    pub fn bump(counter: &AtomicU64) {
        add(counter);
    }

    /// The `command.*` status entries.
    pub fn entries(&self) -> Vec<(String, String)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        let subscribed = if self.subscribed.load(Ordering::Relaxed) {
            "yes"
        } else {
            "no"
        };
        [
            ("command.received_cloud", get(&self.received_cloud)),
            ("command.received_local", get(&self.received_local)),
            ("command.ok", get(&self.ok)),
            ("command.duplicates", get(&self.duplicates)),
            ("command.rate_limited", get(&self.rate_limited)),
            ("command.queue_full", get(&self.queue_full)),
            (
                "command.error_unknown_device",
                get(&self.error_unknown_device),
            ),
            ("command.error_bad_request", get(&self.error_bad_request)),
            ("command.error_internal", get(&self.error_internal)),
            (
                "command.error_unknown_command",
                get(&self.error_unknown_command),
            ),
            ("command.bad_response_topic", get(&self.bad_response_topic)),
            ("command.replies_sent", get(&self.replies_sent)),
            ("command.replies_not_sent", get(&self.replies_not_sent)),
            ("command.subscribed", subscribed.to_owned()),
            ("command.subscribe_refused", get(&self.subscribe_refused)),
            ("command.duplicate_entries", get(&self.duplicate_entries)),
            (
                "command.duplicate_evicted_full",
                get(&self.duplicate_evicted_full),
            ),
            (
                "command.duplicate_evicted_aged",
                get(&self.duplicate_evicted_aged),
            ),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
    }
}
