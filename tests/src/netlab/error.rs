//! The lab's error type: every variant says which step failed and on what.

use std::path::PathBuf;
use std::time::Duration;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{context}: {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{tool}` is missing; install the Debian package {package}")]
    MissingTool { tool: String, package: &'static str },
    #[error("`{binary}` is missing: {hint}")]
    MissingBinary { binary: String, hint: String },
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{what} did not happen within {waited:?}; last seen: {last}")]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
    },
    #[error("{process} exited early ({status}); its log says: {log}")]
    Exited {
        process: String,
        status: String,
        log: String,
    },
    #[error("all lab slots 1..={max} are taken by running labs")]
    NoFreeSlot { max: u16 },
    #[error("invalid {what} `{value}`: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("cannot parse {what}: {detail}")]
    Parse { what: String, detail: String },
    #[error("cannot enter network namespace {ns}: {source}")]
    Setns {
        ns: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot signal {process}: {source}")]
    Signal {
        process: String,
        #[source]
        source: nix::Error,
    },
}

impl LabError {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        LabError::Io {
            context,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;
