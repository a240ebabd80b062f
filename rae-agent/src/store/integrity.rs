//! The integrity check at start and the recovery from a corrupt database.
//!
//! [`open_checked`] opens the database, runs `PRAGMA quick_check` and reads every open session
//! (what the registry core resumes from). When SQLite says the file is damaged
//! (`SQLITE_CORRUPT`, `SQLITE_NOTADB`, a `quick_check` finding) or a stored row cannot be
//! decoded, the file is moved aside with a UTC timestamp in its name (with its `-wal` and `-shm`,
//! so that `sqlite3` still opens the copy with its last commits) and a fresh database is created.
//! Devices are then rediscovered as new sessions from seq 1, and the inventory the publisher
//! sends lists only those, so the sink closes the old sessions (reason `unlisted`).
//!
//! Only damage moves a file. Everything else (disk full, permission denied, a lock held by
//! another process, a database made by a newer build) is returned as the error it is: moving
//! a good database aside on a transient error would lose every session for nothing.
//!
//! Limitations: events still in the damaged file's outbox are not published (their sessions
//! are closed by the inventory instead); the recovery count is carried over from the damaged
//! file only when SQLite can still read it there.

use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::{ErrorCode, OpenFlags, TransactionBehavior};

use super::error::{SqlContext, StoreError};
use super::{Store, StoreOptions};

/// The meta counter of recoveries, shown under "store counters" by `raectl status`.
pub const INTEGRITY_RECOVERIES: &str = "integrity_recoveries";

/// `quick_check` findings kept in the error; the rest are counted in its text.
const FINDINGS_KEPT: usize = 5;

/// One corrupt database moved aside and replaced.
#[derive(Debug)]
pub struct Recovery {
    /// Where the damaged file is now.
    pub moved_to: PathBuf,
    /// Why it was judged damaged.
    pub cause: StoreError,
    /// The recovery count after this one (also in the fresh database's meta).
    pub recoveries: i64,
    /// When it happened (RAE wall clock, unix ms).
    pub at_ms: i64,
}

impl Recovery {
    /// Status entries for `raectl status`, written once into the fresh database so that they
    /// stay there after later restarts.
    pub fn status_entries(&self) -> Vec<(String, String)> {
        vec![
            ("store.recovered_ms".into(), self.at_ms.to_string()),
            (
                "store.recovered_moved_to".into(),
                self.moved_to.display().to_string(),
            ),
            (
                "store.recovered_cause".into(),
                crate::error_chain(&self.cause),
            ),
        ]
    }
}

/// Whether `err` says the database file itself is damaged (and only then).
pub fn is_corruption(err: &StoreError) -> bool {
    let code = |source: &rusqlite::Error| {
        matches!(
            source.sqlite_error_code(),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
        )
    };
    match err {
        StoreError::IntegrityCheck { .. } | StoreError::Corrupt { .. } => true,
        StoreError::Open { source, .. }
        | StoreError::Migrate { source, .. }
        | StoreError::Sqlite { source, .. } => code(source),
        _ => false,
    }
}

/// Opens the database at `path` after checking it; a damaged one is moved aside and replaced
/// (see the module documentation). Any other failure is returned untouched.
pub fn open_checked(
    path: &Path,
    options: StoreOptions,
    now_ms: i64,
) -> Result<(Store, Option<Recovery>), StoreError> {
    let cause = match check(path, options.clone()) {
        Ok(store) => return Ok((store, None)),
        Err(err) if is_corruption(&err) => err,
        Err(err) => return Err(err),
    };
    let moved_to = move_aside(path, now_ms)?;
    let recoveries = previous_recoveries(&moved_to)
        .unwrap_or(0)
        .saturating_add(1);
    let mut store = Store::open(path, options)?;
    let tx = store
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context("recording the recovery")?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        rusqlite::params![INTEGRITY_RECOVERIES, recoveries],
    )
    .context("recording the recovery")?;
    tx.commit().context("recording the recovery")?;
    let recovery = Recovery {
        moved_to,
        cause,
        recoveries,
        at_ms: now_ms,
    };
    store.write_status(&recovery.status_entries(), now_ms)?;
    Ok((store, Some(recovery)))
}

/// Opens, runs `quick_check` and decodes every open session; the store is closed again on
/// any failure, so the file can be moved.
fn check(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
    let store = Store::open(path, options)?;
    match verify(&store, path) {
        Ok(()) => Ok(store),
        Err(err) => {
            // Closing would checkpoint the WAL into the damaged file: leave both as they are
            // for whoever examines them. Best effort; the move works either way.
            let _ = store
                .conn
                .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true);
            Err(err)
        }
    }
}

fn verify(store: &Store, path: &Path) -> Result<(), StoreError> {
    let findings = {
        let mut stmt = store
            .conn
            .prepare("PRAGMA quick_check")
            .context("checking the database")?;
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .context("checking the database")?;
        rows.collect::<Result<Vec<_>, _>>()
            .context("checking the database")?
    };
    if findings.len() != 1 || findings[0] != "ok" {
        return Err(StoreError::IntegrityCheck {
            path: path.to_path_buf(),
            findings: summarize(&findings),
        });
    }
    store.open_sessions()?;
    Ok(())
}

fn summarize(findings: &[String]) -> String {
    let mut text = findings
        .iter()
        .take(FINDINGS_KEPT)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if findings.len() > FINDINGS_KEPT {
        text.push_str(&format!("; and {} more", findings.len() - FINDINGS_KEPT));
    }
    text
}

/// Renames `path` (and its `-wal`, `-shm`) to `<path>.corrupt-<UTC>`; a number is added when
/// that name is taken. Returns the new name of the main file.
fn move_aside(path: &Path, now_ms: i64) -> Result<PathBuf, StoreError> {
    let stamp = compact_utc(now_ms);
    let base = path.as_os_str().to_os_string();
    let with = |suffix: &str| {
        let mut name = base.clone();
        name.push(suffix);
        PathBuf::from(name)
    };
    let mut target = with(&format!(".corrupt-{stamp}"));
    let mut n = 1;
    while target.exists() || with_suffix(&target, "-wal").exists() {
        target = with(&format!(".corrupt-{stamp}.{n}"));
        n += 1;
    }
    let failed = |from: &Path, source| StoreError::MoveAside {
        from: from.to_path_buf(),
        to: target.clone(),
        source,
    };
    // The journal files first: a crash in between leaves the main file where it was, and the
    // next start finds it damaged again.
    for suffix in ["-wal", "-shm"] {
        let from = with(suffix);
        match std::fs::rename(&from, with_suffix(&target, suffix)) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(failed(&from, err)),
        }
    }
    std::fs::rename(path, &target).map_err(|err| failed(path, err))?;
    Ok(target)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The recovery count the damaged file holds, when SQLite can still read it.
fn previous_recoveries(moved: &Path) -> Option<i64> {
    let conn = rusqlite::Connection::open_with_flags(
        moved,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    conn.query_row(
        "SELECT value FROM meta WHERE key = ?1 AND typeof(value) = 'integer'",
        [INTEGRITY_RECOVERIES],
        |row| row.get(0),
    )
    .ok()
}

/// `20261203T101500Z`: the UTC second of `unix_ms`, for file names (no `:`).
fn compact_utc(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days (as in `ctl::format`, which the store cannot reach).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
#[path = "integrity_tests.rs"]
mod tests;
