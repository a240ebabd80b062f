//! Damage moves a database aside; a transient failure never does.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use super::*;
use crate::store::StoreReader;

const AT_MS: i64 = 1_796_292_900_000; // 2026-12-03T10:15:00Z
const PAGE: u64 = 4096;

fn options() -> StoreOptions {
    StoreOptions {
        busy_timeout: Duration::from_millis(50),
        ..StoreOptions::default()
    }
}

/// A database made by the store, with `filler` pages of rows after the schema, closed (so
/// the WAL is checkpointed into the main file).
fn database(dir: &Path, filler_rows: usize) -> PathBuf {
    let path = dir.join("registry.db");
    drop(Store::open(&path, options()).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE filler (n INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        .unwrap();
    for n in 0..filler_rows {
        conn.execute(
            "INSERT INTO filler (n, data) VALUES (?1, ?2)",
            rusqlite::params![n as i64, vec![(n % 251) as u8; 400]],
        )
        .unwrap();
    }
    drop(conn);
    path
}

/// Overwrites `count` whole pages from the middle of the file with garbage; page 1 (the
/// header and the schema) stays as it was.
fn garble_middle_pages(path: &Path, count: u64) {
    let pages = std::fs::metadata(path).unwrap().len() / PAGE;
    assert!(pages > count + 2, "{pages} pages are too few to garble");
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(pages / 2 * PAGE)).unwrap();
    let garbage: Vec<u8> = (0..count * PAGE)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    file.write_all(&garbage).unwrap();
}

fn garble_header(path: &Path) {
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all(&[0x5a; 100]).unwrap();
}

fn moved_aside(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.contains(".corrupt-") && !name.ends_with("-wal") && !name.ends_with("-shm")
        })
        .collect();
    names.sort();
    names
}

fn counter(path: &Path) -> Option<i64> {
    StoreReader::open_read_only(path)
        .unwrap()
        .counters()
        .unwrap()
        .into_iter()
        .find(|(key, _)| key == INTEGRITY_RECOVERIES)
        .map(|(_, value)| value)
}

#[test]
fn the_file_name_carries_the_utc_second() {
    assert_eq!(compact_utc(AT_MS + 999), "20261203T101500Z");
    assert_eq!(compact_utc(0), "19700101T000000Z");
}

#[test]
fn a_good_database_is_opened_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path(), 300);
    let (store, recovery) = open_checked(&path, options(), AT_MS).unwrap();
    assert!(recovery.is_none());
    drop(store);
    assert!(moved_aside(dir.path()).is_empty());
    assert_eq!(counter(&path), None);
    let conn = Connection::open(&path).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM filler", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 300, "the data is still there");
}

#[test]
fn garbled_middle_pages_fail_the_check_and_the_file_is_moved_aside_with_its_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path(), 300);
    let size = std::fs::metadata(&path).unwrap().len();
    garble_middle_pages(&path, 4);
    // Commits that are only in the WAL (as after a crash) go with the file.
    let conn = Connection::open(&path).unwrap();
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .unwrap();
    conn.execute("INSERT INTO meta (key, value) VALUES ('wal_only', 1)", [])
        .unwrap();
    drop(conn);
    let wal = std::fs::read(dir.path().join("registry.db-wal")).unwrap();
    assert!(!wal.is_empty(), "the WAL holds a commit");
    let (mut store, recovery) = open_checked(&path, options(), AT_MS).unwrap();
    let recovery = recovery.expect("a recovery");
    assert!(is_corruption(&recovery.cause), "{:?}", recovery.cause);
    assert_eq!(
        recovery.moved_to,
        dir.path().join("registry.db.corrupt-20261203T101500Z")
    );
    assert_eq!(std::fs::metadata(&recovery.moved_to).unwrap().len(), size);
    assert_eq!(recovery.recoveries, 1);
    let moved_wal = dir.path().join("registry.db.corrupt-20261203T101500Z-wal");
    assert_eq!(
        std::fs::read(moved_wal).unwrap(),
        wal,
        "the WAL moved untouched"
    );
    // The fresh database works and has none of the old content.
    assert!(store.open_sessions().unwrap().is_empty());
    store
        .write_status(&[("x".into(), "1".into())], AT_MS)
        .unwrap();
    drop(store);
    let conn = Connection::open(&path).unwrap();
    let filler: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'filler'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(filler, 0, "a fresh database");
    assert_eq!(counter(&path), Some(1));
    let status = StoreReader::open_read_only(&path)
        .unwrap()
        .read_status()
        .unwrap();
    let moved = status
        .iter()
        .find(|e| e.key == "store.recovered_moved_to")
        .expect("status names the moved file");
    assert_eq!(moved.value, recovery.moved_to.display().to_string());
    assert!(status
        .iter()
        .any(|e| e.key == "store.recovered_cause" && !e.value.is_empty()));
}

#[test]
fn a_garbage_header_is_not_a_database_and_is_moved_aside_with_its_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path(), 10);
    garble_header(&path);
    let (_store, recovery) = open_checked(&path, options(), AT_MS).unwrap();
    let recovery = recovery.expect("a recovery");
    let text = crate::error_chain(&recovery.cause);
    assert!(text.contains("not a database"), "{text}");
    let names = moved_aside(dir.path());
    assert!(
        names.contains(&"registry.db.corrupt-20261203T101500Z".to_owned()),
        "{names:?}"
    );
}

#[test]
fn an_undecodable_open_session_is_damage_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path(), 0);
    let conn = Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO sessions (session, mac, opened_ms, last_seq, record, reachability,
             availability, last_seen_ms)
         VALUES ('6f1c2a3e-0000-4000-8000-000000000001', '02:00:00:00:00:01', 1, 1,
             x'deadbeef', 'online', 'available', 1)",
        [],
    )
    .unwrap();
    drop(conn);
    let (_store, recovery) = open_checked(&path, options(), AT_MS).unwrap();
    let recovery = recovery.expect("a recovery");
    assert!(
        matches!(recovery.cause, StoreError::Corrupt { .. }),
        "{:?}",
        recovery.cause
    );
}

#[test]
fn a_second_recovery_counts_on_from_the_damaged_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path(), 10);
    garble_header(&path);
    let (store, first) = open_checked(&path, options(), AT_MS).unwrap();
    assert_eq!(first.expect("first recovery").recoveries, 1);
    drop(store);
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE filler (n INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        .unwrap();
    for n in 0..300i64 {
        conn.execute(
            "INSERT INTO filler (n, data) VALUES (?1, ?2)",
            rusqlite::params![n, vec![7u8; 400]],
        )
        .unwrap();
    }
    drop(conn);
    garble_middle_pages(&path, 4);
    // The same second: the second file gets a number rather than replacing the first.
    let (_store, second) = open_checked(&path, options(), AT_MS).unwrap();
    let second = second.expect("second recovery");
    assert_eq!(second.recoveries, 2, "the count survives in the moved file");
    assert_eq!(
        second.moved_to,
        dir.path().join("registry.db.corrupt-20261203T101500Z.1")
    );
    assert_eq!(moved_aside(dir.path()).len(), 2);
}

#[test]
fn a_database_locked_by_another_process_is_an_error_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path(), 10);
    // Another connection that holds the file exclusively (as a `sqlite3` shell in exclusive
    // locking mode, or a stuck writer, would).
    let holder = Connection::open(&path).unwrap();
    holder
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; INSERT INTO filler (n, data) VALUES (1000, x'00');")
        .unwrap();
    let err = open_checked(&path, options(), AT_MS).unwrap_err();
    assert!(!is_corruption(&err), "{err:?}");
    let text = crate::error_chain(&err);
    assert!(text.contains("locked"), "{text}");
    assert!(moved_aside(dir.path()).is_empty(), "nothing moved");
    holder.execute_batch("COMMIT").unwrap();
    drop(holder);
    let (_store, recovery) = open_checked(&path, options(), AT_MS).unwrap();
    assert!(recovery.is_none(), "the database was good all along");
}

#[test]
fn an_unopenable_path_is_an_error_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: SQLite cannot open it (SQLITE_CANTOPEN), as with
    // a missing permission or a path through a file.
    let path = dir.path().join("registry.db");
    std::fs::create_dir(&path).unwrap();
    let err = open_checked(&path, options(), AT_MS).unwrap_err();
    assert!(!is_corruption(&err), "{err:?}");
    assert!(path.is_dir(), "left where it was");
    assert!(moved_aside(dir.path()).is_empty());
    let through_a_file = dir.path().join("plain");
    std::fs::write(&through_a_file, b"x").unwrap();
    let err = open_checked(&through_a_file.join("registry.db"), options(), AT_MS).unwrap_err();
    assert!(!is_corruption(&err), "{err:?}");
}

#[test]
fn a_newer_schema_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path(), 10);
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", crate::store::SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let err = open_checked(&path, options(), AT_MS).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err:?}");
    assert!(moved_aside(dir.path()).is_empty());
}

#[test]
fn only_corrupt_and_notadb_codes_count_as_damage() {
    let sqlite = |code: i32| StoreError::Sqlite {
        context: "reading",
        source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
    };
    let damage = [rusqlite::ffi::SQLITE_CORRUPT, rusqlite::ffi::SQLITE_NOTADB];
    for code in damage {
        assert!(is_corruption(&sqlite(code)), "code {code}");
    }
    let transient = [
        rusqlite::ffi::SQLITE_IOERR,
        rusqlite::ffi::SQLITE_FULL,
        rusqlite::ffi::SQLITE_PERM,
        rusqlite::ffi::SQLITE_READONLY,
        rusqlite::ffi::SQLITE_CANTOPEN,
        rusqlite::ffi::SQLITE_BUSY,
        rusqlite::ffi::SQLITE_LOCKED,
        rusqlite::ffi::SQLITE_NOMEM,
        rusqlite::ffi::SQLITE_PROTOCOL,
    ];
    for code in transient {
        assert!(!is_corruption(&sqlite(code)), "code {code}");
    }
    let io = StoreError::Open {
        path: "/x".into(),
        source: rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_SHORT_READ),
            None,
        ),
    };
    assert!(!is_corruption(&io));
    assert!(!is_corruption(&StoreError::ThreadStopped));
}
