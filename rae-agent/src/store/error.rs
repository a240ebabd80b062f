//! The store's errors: what went wrong, with the database path or the session it concerns.

use std::path::PathBuf;

use rae_proto::{Mac, SessionId};

/// A Change the store refuses. Each one means the registry core broke its own contract, so the
/// batch that carried it is rolled back whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("session {session} opened with seq {seq}; a new session starts at seq 1")]
    OpenedSeq { session: SessionId, seq: u64 },
    #[error("session {session} already exists; a session id is never opened twice")]
    SessionExists { session: SessionId },
    #[error("session {session} is not in the registry")]
    UnknownSession { session: SessionId },
    #[error("session {session} is closed; nothing may follow its Closed event")]
    SessionClosed { session: SessionId },
    #[error(
        "seq out of order in session {session}: the stored last seq is {last}, \
         the change carries {got} instead of {}", last + 1
    )]
    SeqDiscontinuity {
        session: SessionId,
        last: u64,
        got: u64,
    },
    #[error(
        "a change for session {session} names MAC {got}, but the session belongs to {expected}"
    )]
    MacMismatch {
        session: SessionId,
        expected: Mac,
        got: Mac,
    },
    #[error("MAC {mac} already has the open session {open}; close it before opening {session}")]
    MacAlreadyOpen {
        mac: Mac,
        open: SessionId,
        session: SessionId,
    },
    #[error("seq {seq} of session {session} is larger than the database can store")]
    SeqTooLarge { session: SessionId, seq: u64 },
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the registry database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the registry database {path} does not exist (rae-agent creates it when it starts)")]
    Missing { path: PathBuf },
    #[error(
        "the registry database {path} has schema version {found}, newer than version \
         {supported} that this build knows; run the newer rae-agent, or move the file away"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "the registry database {path} has schema version {found}, this build reads version \
         {supported}; start the matching rae-agent once so that it migrates the database"
    )]
    SchemaOutdated {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("cannot migrate the registry database {path} to schema version {to}")]
    Migrate {
        path: PathBuf,
        to: i64,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the registry database {path} stays in journal mode `{mode}`; WAL is required")]
    NotWal { path: PathBuf, mode: String },
    #[error("SQLite failed while {context}")]
    Sqlite {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("change rejected")]
    Rejected(#[from] ChangeError),
    #[error("cannot encode the {what} of session {session}")]
    Encode {
        what: &'static str,
        session: SessionId,
        #[source]
        source: rae_proto::EncodeError,
    },
    #[error("the stored {what} of session {session} is unreadable: {detail}")]
    Corrupt {
        session: String,
        what: &'static str,
        detail: String,
    },
    #[error("the registry database {path} fails its integrity check: {findings}")]
    IntegrityCheck { path: PathBuf, findings: String },
    #[error("cannot move the damaged registry database {from} aside to {to}")]
    MoveAside {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the store thread has stopped")]
    ThreadStopped,
    #[error("cannot start the store thread")]
    Spawn(#[source] std::io::Error),
}

/// Adds what the store was doing to a SQLite error.
pub(crate) trait SqlContext<T> {
    fn context(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> SqlContext<T> for rusqlite::Result<T> {
    fn context(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite { context, source })
    }
}
