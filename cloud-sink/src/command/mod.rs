//! Cloud -> RAE commands (DESIGN section 3, `cmd/` and `reply/` topics).
//!
//! - [`requester`]: the library requester other cloud services call: one MQTT v5 client,
//!   any number of outstanding requests matched to replies by correlation data, typed errors.
//! - [`cli`]: the `cloud-sink command` subcommand on top of it: one request, the reply
//!   printed as text or JSON, an exit status per outcome.

pub mod cli;
pub mod requester;

pub use requester::{Answer, Request, RequestError, Requester, RequesterStats};
