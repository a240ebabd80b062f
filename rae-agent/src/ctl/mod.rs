//! `raectl`'s library: renders the registry database for operators (tables and JSON), and
//! sends actions to the running agent.
//!
//! Parts:
//! - `locate`: which database to read (`--db`, `--state-dir`, the agent's config, the default)
//!   and opening it read-only with advice when it is missing.
//! - `format`: RFC 3339 UTC and relative times, byte counts, hex, terminal-safe device text,
//!   aligned tables.
//! - `devices`, `show`, `events`, `status`: one renderer per command, each a pure function of
//!   what [`StoreReader`](crate::store::StoreReader) returned and `now_ms`, giving text for a
//!   terminal or a [`serde_json::Value`].
//!
//! - [`action`]: the actions (`set`, `esn`, `resync`, `forget`, `ping`): one request to the
//!   running agent over its control socket, the reply as a line or JSON. raectl never writes
//!   the database.
//!
//! Limitations: times are shown in UTC only; column widths count characters, so East Asian
//! wide characters in a hostname misalign the table by their extra width.

pub mod action;
mod devices;
mod events;
mod format;
mod locate;
mod show;
mod status;

use std::path::PathBuf;

pub use devices::{devices_json, devices_table};
pub use events::{event_json, event_line, SessionMacs};
pub use format::{bytes, duration_ms, hex, relative, rfc3339_ms, terminal_safe, when, Table};
pub use locate::{locate, DbChoice, DbLocation, DbOrigin, DB_FILE_NAME, DEFAULT_STATE_DIR};
pub use show::{show_json, show_text, DeviceDetail};
pub use status::{status_json, status_text, StatusReport, STALE_AFTER_MS};

use crate::config::ConfigError;
use crate::store::StoreError;

/// Why a `raectl` read command failed. The messages say what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "cannot read the agent configuration to find the registry database \
         (or name it with --state-dir DIR or --db FILE)"
    )]
    Config(#[source] ConfigError),
    #[error(
        "the registry database {path} does not exist: is rae-agent running / has it ever \
         run? ({origin}; name another with --state-dir DIR or --db FILE)"
    )]
    DatabaseMissing { path: PathBuf, origin: DbOrigin },
    #[error("cannot read the registry database {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error(
        "no device matches `{query}` in {path} (`raectl devices --all` lists every session \
         the registry keeps)"
    )]
    UnknownDevice { query: String, path: PathBuf },
    #[error("cannot set up the signal handling that ends --follow")]
    Signals(#[source] std::io::Error),
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}

impl CtlError {
    /// The reader failed while reading `path`.
    pub fn store(path: impl Into<PathBuf>) -> impl FnOnce(StoreError) -> CtlError {
        let path = path.into();
        move |source| CtlError::Store { path, source }
    }
}
