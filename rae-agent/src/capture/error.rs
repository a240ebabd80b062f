//! The capture layer's error type.

use std::io;

use super::filter::AsmError;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{name:?} is not a valid interface name (1 to 15 bytes, no `/`, NUL or spaces)")]
    InterfaceName { name: String },
    #[error("interface {interface} does not exist")]
    NoSuchInterface { interface: String },
    #[error("interface {interface} is down")]
    InterfaceDown { interface: String },
    #[error("{step} on the packet socket for {interface}")]
    Socket {
        interface: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("assembling the capture filter")]
    Filter(#[from] AsmError),
    #[error("starting the capture thread")]
    Thread(#[source] io::Error),
    #[error("the capture thread panicked")]
    Panicked,
}

impl CaptureError {
    /// Whether the interface is missing or down (worth retrying), rather than a fault such
    /// as a missing `CAP_NET_RAW`.
    pub fn is_link_unavailable(&self) -> bool {
        match self {
            CaptureError::NoSuchInterface { .. } | CaptureError::InterfaceDown { .. } => true,
            CaptureError::Socket { source, .. } => super::socket::is_link_error(source),
            _ => false,
        }
    }
}

/// The error and its sources, `: `-separated, for one log field.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
