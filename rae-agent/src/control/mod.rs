//! Commands into the agent: cloud commands from the MQTT `cmd/` topic (taken by the publisher,
//! which owns the connection) and `raectl` actions from the control Unix socket. Both hand a
//! [`Job`] to the core task over one channel, and one handler there decides every reply, so a
//! command reads the same whichever way it came (DESIGN section 4, "control").
//!
//! This module holds the interface the two entry points share; the handler, the socket server
//! and the MQTT side live in its submodules.

pub mod counters;
mod dedup;
pub mod handler;
mod rate;

pub use counters::CommandCounters;
pub use handler::Handler;

use rae_proto::{CommandReply, CommandRequest, RequesterId};
use tokio::sync::{mpsc, oneshot};

/// Jobs queued for the core task. Small: a full queue refuses (counted) instead of waiting.
pub const JOB_QUEUE: usize = 64;

/// The longest Correlation Data a cloud command may carry (it is part of the duplicate
/// cache's key); longer gets a `bad_request` reply.
pub const MAX_CORRELATION_BYTES: usize = 256;

/// Where a command came from: it names the actor in the history ("by ...") and keys the
/// duplicate cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// An MQTT request: its requester (the Response Topic's last level) and its Correlation
    /// Data. The same pair seen again is a redelivery.
    Cloud {
        requester: RequesterId,
        correlation: Vec<u8>,
    },
    /// A `raectl` action over the control socket, from this Unix user id.
    Local { uid: u32 },
}

/// One command for the core task, with the way back for its reply.
#[derive(Debug)]
pub struct Job {
    /// The decoded request. The entry points decode and check it themselves; what they
    /// cannot decode never becomes a Job (they answer the error reply directly, counted).
    pub request: CommandRequest,
    pub origin: Origin,
    /// Dropped without a reply only when the agent is stopping.
    pub reply: oneshot::Sender<CommandReply>,
}

/// Both entry points hold a clone; the core task owns the receiver.
pub type JobSender = mpsc::Sender<Job>;
pub type JobReceiver = mpsc::Receiver<Job>;

pub fn channel() -> (JobSender, JobReceiver) {
    mpsc::channel(JOB_QUEUE)
}
