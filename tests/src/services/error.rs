//! The one error type of the services layer.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a lab service could not be started, reached or stopped.
#[derive(thiserror::Error)]
pub enum ServiceError {
    #[error("{what} ({path}): {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{service}: {missing} is missing; {hint}")]
    Missing {
        service: &'static str,
        missing: String,
        hint: &'static str,
    },

    #[error("{service}: could not run {program}: {source}")]
    Spawn {
        service: &'static str,
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{service}: `{command}` failed ({status}):\n{output}")]
    Command {
        service: &'static str,
        command: String,
        status: ExitStatus,
        output: String,
    },

    #[error("{service} exited during start-up ({status}); log tail:\n{log_tail}")]
    Exited {
        service: &'static str,
        status: ExitStatus,
        log_tail: String,
    },

    #[error(
        "{service} not ready after {waited:?}: {missing} (last probe: {last_probe}); log tail:\n{log_tail}"
    )]
    NotReady {
        service: &'static str,
        waited: Duration,
        missing: &'static str,
        last_probe: String,
        log_tail: String,
    },

    #[error("{service} did not stop after SIGKILL within {waited:?} (process group {pgid})")]
    Unkillable {
        service: &'static str,
        pgid: i32,
        waited: Duration,
    },

    #[error("no free loopback port after {tries} tries in {range:?}")]
    NoFreePort {
        tries: u32,
        range: std::ops::Range<u16>,
    },

    #[error("{service} is {state}; {action} needs it {wanted}")]
    WrongState {
        service: &'static str,
        state: &'static str,
        action: &'static str,
        wanted: &'static str,
    },

    #[error("invalid {what} {value:?}: {rule}")]
    InvalidName {
        what: &'static str,
        value: String,
        rule: &'static str,
    },

    #[error("kafka: {what}: {source}")]
    Kafka {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },

    #[error("kafka: {what}")]
    KafkaState { what: String },

    #[error("postgres: {what}: {source}")]
    Sql {
        what: String,
        #[source]
        source: sqlx::Error,
    },
}

/// Shows the message and its causes, so a test's `unwrap()` prints the log tail readably.
impl std::fmt::Debug for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            write!(f, "\ncaused by: {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl ServiceError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ServiceError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// Whether the service failed because another process took its port first.
    pub(crate) fn is_address_in_use(&self) -> bool {
        let text = match self {
            ServiceError::Exited { log_tail, .. } | ServiceError::NotReady { log_tail, .. } => {
                log_tail
            }
            ServiceError::Command { output, .. } => output,
            _ => return false,
        };
        text.to_ascii_lowercase().contains("address already in use")
    }
}
