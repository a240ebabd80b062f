//! The database schema and its migrations, versioned by `PRAGMA user_version`.
//!
//! Migration `n` (1-based) takes a database from version `n - 1` to `n`; each runs in its own
//! transaction together with the `user_version` bump, so a crash leaves a database at a version
//! that exists. A database newer than this build is refused rather than guessed at.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::error::{SqlContext, StoreError};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const MIGRATIONS: &[&str] = &[
    // 1: sessions, history, outbox, meta, status.
    "
    CREATE TABLE sessions (
        session       TEXT PRIMARY KEY NOT NULL,  -- lowercase hyphenated uuid
        mac           TEXT NOT NULL,              -- aa:bb:cc:dd:ee:ff
        opened_ms     INTEGER NOT NULL,
        closed_ms     INTEGER,
        close_reason  TEXT,
        last_seq      INTEGER NOT NULL CHECK (last_seq >= 1),
        record        BLOB NOT NULL,              -- rae-proto Snapshot envelope of the latest state
        ipv4          TEXT,
        hostname      TEXT,                       -- lossy text, for display
        vendor        TEXT,
        reachability  TEXT NOT NULL,
        availability  TEXT NOT NULL,
        last_seen_ms  INTEGER NOT NULL
    );
    CREATE INDEX sessions_mac ON sessions (mac);
    CREATE INDEX sessions_ipv4 ON sessions (ipv4);
    CREATE UNIQUE INDEX sessions_one_open_per_mac ON sessions (mac) WHERE closed_ms IS NULL;
    CREATE INDEX sessions_closed ON sessions (closed_ms) WHERE closed_ms IS NOT NULL;

    CREATE TABLE history (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        session      TEXT NOT NULL REFERENCES sessions (session) ON DELETE CASCADE,
        seq          INTEGER,
        at_ms        INTEGER NOT NULL,            -- when the evidence was observed
        recorded_ms  INTEGER NOT NULL,            -- when the store committed it
        kind         TEXT NOT NULL,
        summary      TEXT NOT NULL,               -- the cause: which packet or timer
        fields       TEXT NOT NULL                -- name=value; ...
    );
    CREATE INDEX history_session ON history (session, id);

    CREATE TABLE outbox (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- publish order, never reused
        session     TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        topic       TEXT NOT NULL,
        payload     BLOB NOT NULL,                      -- encoded rae-proto Envelope
        bytes       INTEGER NOT NULL,
        created_ms  INTEGER NOT NULL
    );
    CREATE INDEX outbox_session ON outbox (session, id);

    CREATE TABLE meta (
        key    TEXT PRIMARY KEY NOT NULL,
        value  NOT NULL
    );

    CREATE TABLE status (
        key         TEXT PRIMARY KEY NOT NULL,
        value       TEXT NOT NULL,
        updated_ms  INTEGER NOT NULL
    );
    ",
    // 2: which outbox row holds (or, coalesced, replaced) its session's first event. While
    // that row is pending and not handed to the publisher, the cloud never heard of the
    // session, so the quota may drop a closed one whole (`quota`). Coalescing keeps the
    // oldest row, so the mark stays on the right row. Rows from before: seq 1 is the opening.
    "
    ALTER TABLE outbox ADD COLUMN opening INTEGER NOT NULL DEFAULT 0;
    UPDATE outbox SET opening = 1 WHERE seq = 1;
    ",
];

pub(crate) fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
        .context("reading the schema version")
}

/// Brings the database to [`SCHEMA_VERSION`]; a no-op when it is there already.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let found = user_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let to = index as i64 + 1;
        let failed = |source| StoreError::Migrate {
            path: path.to_path_buf(),
            to,
            source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed)?;
        tx.execute_batch(sql).map_err(failed)?;
        tx.pragma_update(None, "user_version", to).map_err(failed)?;
        tx.commit().map_err(failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_an_empty_database_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(user_version(&conn).unwrap(), 0);
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        assert_eq!(user_version(&conn).unwrap(), SCHEMA_VERSION);
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        assert_eq!(user_version(&conn).unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn refuses_a_newer_database() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = migrate(&mut conn, Path::new("/x/registry.db")).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found, .. } if found == SCHEMA_VERSION + 1)
        );
        assert!(err.to_string().contains("/x/registry.db"), "{err}");
    }
}
