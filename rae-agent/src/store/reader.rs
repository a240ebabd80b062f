//! [`StoreReader`]: read-only access for `raectl`, safe while the daemon writes (WAL readers see
//! the last committed state and never block the writer) and while it is stopped, also on a
//! read-only medium when the database was closed cleanly.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rae_proto::{Availability, CloseReason, DeviceRecord, Liveness, Mac, SessionId};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use super::apply::{decode_record, parse_close_reason, parse_mac, parse_session, HistoryKind};
use super::error::{SqlContext, StoreError};
use super::outbox::head_created_ms;
use super::registry::{stored_seq, PEEKED_THROUGH};
use super::schema::{self, SCHEMA_VERSION};
use super::{OutboxStats, StoreOptions};

/// One line of `raectl devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub session: SessionId,
    pub mac: Mac,
    pub ipv4: Option<Ipv4Addr>,
    /// Lossy text of the device's hostname.
    pub hostname: Option<String>,
    pub vendor: Option<String>,
    pub reachability: Liveness,
    pub availability: Availability,
    pub last_seen_ms: i64,
    pub opened_ms: i64,
    pub closed_ms: Option<i64>,
    pub close_reason: Option<CloseReason>,
    pub last_seq: u64,
}

/// How an operator names a device: its MAC, its IPv4 address or its session id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceQuery {
    Mac(Mac),
    Ipv4(Ipv4Addr),
    Session(SessionId),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is neither a MAC (aa:bb:cc:dd:ee:ff), an IPv4 address nor a session id")]
pub struct DeviceQueryParseError(pub String);

impl FromStr for DeviceQuery {
    type Err = DeviceQueryParseError;
    fn from_str(text: &str) -> Result<Self, DeviceQueryParseError> {
        if let Ok(mac) = text.parse() {
            return Ok(Self::Mac(mac));
        }
        if let Ok(ip) = text.parse() {
            return Ok(Self::Ipv4(ip));
        }
        SessionId::parse(text)
            .map(Self::Session)
            .map_err(|_| DeviceQueryParseError(text.to_owned()))
    }
}

/// One history row: what changed, when, and the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// Grows with every row; `raectl events --follow` polls for ids above the last one seen.
    pub id: i64,
    pub session: SessionId,
    pub seq: Option<u64>,
    /// When the evidence was observed.
    pub at_ms: i64,
    /// When the store committed it.
    pub recorded_ms: i64,
    pub kind: HistoryKind,
    /// The cause: which packet or timer.
    pub summary: String,
    /// `name=value; ...` of what the change set.
    pub fields: String,
}

/// One entry the daemon writes for `raectl status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEntry {
    pub key: String,
    pub value: String,
    pub updated_ms: i64,
}

/// A read-only connection to the registry database.
pub struct StoreReader {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for StoreReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

const DEVICE_COLUMNS: &str = "session, mac, ipv4, hostname, vendor, reachability, availability,
    last_seen_ms, opened_ms, closed_ms, close_reason, last_seq";

impl StoreReader {
    /// Opens the database read-only; fails naming the path when it is missing or was made by
    /// a different schema version.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<StoreReader, StoreError> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(StoreError::Missing { path });
        }
        let open_error = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(&path, flags).map_err(open_error)?;
        conn.busy_timeout(StoreOptions::default().busy_timeout)
            .map_err(open_error)?;
        let found = match schema::user_version(&conn) {
            Ok(found) => found,
            // A WAL reader needs the `-shm` file, which SQLite cannot create on a read-only
            // medium (a copy on a read-only mount, a write-protected flash). When no commit
            // waits in a `-wal` file the main file is the whole database, and opening it as
            // immutable reads exactly that without any shared memory.
            Err(err) if cannot_open(&err) && !wal_has_commits(&path) => {
                conn = Connection::open_with_flags(
                    immutable_uri(&path),
                    flags | OpenFlags::SQLITE_OPEN_URI,
                )
                .map_err(open_error)?;
                schema::user_version(&conn)?
            }
            Err(err) => return Err(err),
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            return Err(StoreError::SchemaOutdated {
                path,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(StoreReader { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open sessions, and closed ones too with `include_closed`: open first, then by MAC and
    /// newest session first.
    pub fn devices(&self, include_closed: bool) -> Result<Vec<DeviceRow>, StoreError> {
        let filter = match include_closed {
            true => "",
            false => "WHERE closed_ms IS NULL",
        };
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM sessions {filter}
             ORDER BY closed_ms IS NOT NULL, mac, opened_ms DESC, session"
        );
        let mut stmt = self.conn.prepare(&sql).context("listing devices")?;
        let raw = stmt
            .query_map([], RawDevice::read)
            .context("listing devices")?
            .collect::<Result<Vec<_>, _>>()
            .context("listing devices")?;
        raw.into_iter().map(RawDevice::parse).collect()
    }

    /// The device with its full record: for a MAC or an address, its open session if it has
    /// one, else its latest closed one.
    pub fn find(
        &self,
        query: DeviceQuery,
    ) -> Result<Option<(DeviceRow, DeviceRecord)>, StoreError> {
        let (filter, key) = match query {
            DeviceQuery::Session(session) => ("session = ?1", session.to_string()),
            DeviceQuery::Mac(mac) => ("mac = ?1", mac.to_string()),
            DeviceQuery::Ipv4(ip) => ("ipv4 = ?1", ip.to_string()),
        };
        let sql = format!(
            "SELECT {DEVICE_COLUMNS}, record FROM sessions WHERE {filter}
             ORDER BY closed_ms IS NOT NULL, opened_ms DESC, session LIMIT 1"
        );
        let found = self
            .conn
            .query_row(&sql, [key], |row| {
                Ok((RawDevice::read(row)?, row.get::<_, Vec<u8>>(12)?))
            })
            .optional()
            .context("finding a device")?;
        let Some((raw, blob)) = found else {
            return Ok(None);
        };
        let record = decode_record(&raw.session, &blob)?;
        Ok(Some((raw.parse()?, record)))
    }

    /// The newest `limit` history rows of a session, oldest first.
    pub fn history(&self, session: SessionId, limit: usize) -> Result<Vec<HistoryRow>, StoreError> {
        let mut rows = self.query_history(
            "WHERE session = ?1 ORDER BY id DESC LIMIT ?2",
            params![session.to_string(), sql_limit(limit)],
        )?;
        rows.reverse();
        Ok(rows)
    }

    /// The newest `limit` history rows across all sessions, oldest first.
    pub fn latest_events(&self, limit: usize) -> Result<Vec<HistoryRow>, StoreError> {
        let mut rows =
            self.query_history("ORDER BY id DESC LIMIT ?1", params![sql_limit(limit)])?;
        rows.reverse();
        Ok(rows)
    }

    /// History rows of every session with an id above `after_id`, oldest first.
    pub fn events_since(&self, after_id: i64, limit: usize) -> Result<Vec<HistoryRow>, StoreError> {
        self.query_history(
            "WHERE id > ?1 ORDER BY id LIMIT ?2",
            params![after_id, sql_limit(limit)],
        )
    }

    /// The id of the newest history row (0 when there is none): where `--follow` starts.
    pub fn latest_event_id(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM history", [], |row| {
                row.get(0)
            })
            .context("reading the newest event id")
    }

    pub fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let (rows, bytes): (i64, i64) = self
            .conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM outbox",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .context("measuring the outbox")?;
        Ok(OutboxStats {
            rows: rows.max(0) as u64,
            bytes: bytes.max(0) as u64,
            oldest_created_ms: head_created_ms(&self.conn)?,
        })
    }

    /// What the daemon last wrote for `raectl status`, by key.
    pub fn read_status(&self) -> Result<Vec<StatusEntry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value, updated_ms FROM status ORDER BY key")
            .context("reading status")?;
        let entries = stmt
            .query_map([], |row| {
                Ok(StatusEntry {
                    key: row.get(0)?,
                    value: row.get(1)?,
                    updated_ms: row.get(2)?,
                })
            })
            .context("reading status")?
            .collect::<Result<Vec<_>, _>>()
            .context("reading status")?;
        Ok(entries)
    }

    /// The store's own counters (coalesced events, quota overruns), by key.
    pub fn counters(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key, value FROM meta WHERE typeof(value) = 'integer'
                 AND key != ?1 ORDER BY key",
            )
            .context("reading counters")?;
        let counters = stmt
            .query_map([PEEKED_THROUGH], |row| Ok((row.get(0)?, row.get(1)?)))
            .context("reading counters")?
            .collect::<Result<Vec<_>, _>>()
            .context("reading counters")?;
        Ok(counters)
    }

    /// The serial of the RAE that last wrote the database.
    pub fn serial(&self) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'serial'", [], |row| {
                row.get(0)
            })
            .optional()
            .context("reading the serial")
    }

    fn query_history(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        let sql = format!(
            "SELECT id, session, seq, at_ms, recorded_ms, kind, summary, fields
             FROM history {filter}"
        );
        let mut stmt = self.conn.prepare(&sql).context("reading history")?;
        let raw = stmt
            .query_map(params, |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, String>(7)?,
                ))
            })
            .context("reading history")?
            .collect::<Result<Vec<_>, _>>()
            .context("reading history")?;
        raw.into_iter()
            .map(
                |(id, session, seq, at_ms, recorded_ms, kind, summary, fields)| {
                    Ok(HistoryRow {
                        id,
                        seq: seq.map(|seq| stored_seq(&session, seq)).transpose()?,
                        kind: kind.parse().map_err(|detail| StoreError::Corrupt {
                            session: session.clone(),
                            what: "history kind",
                            detail,
                        })?,
                        session: parse_session(&session)?,
                        at_ms,
                        recorded_ms,
                        summary,
                        fields,
                    })
                },
            )
            .collect()
    }
}

fn cannot_open(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::Sqlite { source, .. }
            if matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly)
            )
    )
}

/// Whether the database's `-wal` file holds frames not yet copied into the main file.
fn wal_has_commits(path: &Path) -> bool {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).is_ok_and(|meta| meta.len() > 0)
}

/// `file:<path>?immutable=1`, the path percent-encoded where a URI needs it.
fn immutable_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &byte in path.as_os_str().as_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                uri.push(char::from(byte))
            }
            _ => uri.push_str(&format!("%{byte:02X}")),
        }
    }
    uri.push_str("?immutable=1");
    uri
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A sessions row as SQLite returns it, before its text columns are checked.
struct RawDevice {
    session: String,
    mac: String,
    ipv4: Option<String>,
    hostname: Option<String>,
    vendor: Option<String>,
    reachability: String,
    availability: String,
    last_seen_ms: i64,
    opened_ms: i64,
    closed_ms: Option<i64>,
    close_reason: Option<String>,
    last_seq: i64,
}

impl RawDevice {
    fn read(row: &Row) -> rusqlite::Result<RawDevice> {
        Ok(RawDevice {
            session: row.get(0)?,
            mac: row.get(1)?,
            ipv4: row.get(2)?,
            hostname: row.get(3)?,
            vendor: row.get(4)?,
            reachability: row.get(5)?,
            availability: row.get(6)?,
            last_seen_ms: row.get(7)?,
            opened_ms: row.get(8)?,
            closed_ms: row.get(9)?,
            close_reason: row.get(10)?,
            last_seq: row.get(11)?,
        })
    }

    fn parse(self) -> Result<DeviceRow, StoreError> {
        let corrupt = |what, detail: String| StoreError::Corrupt {
            session: self.session.clone(),
            what,
            detail,
        };
        let ipv4 = self
            .ipv4
            .as_deref()
            .map(|ip| {
                ip.parse()
                    .map_err(|_| corrupt("IPv4 address", format!("`{ip}`")))
            })
            .transpose()?;
        let reachability = [Liveness::Online, Liveness::Offline]
            .into_iter()
            .find(|l| l.as_str() == self.reachability)
            .ok_or_else(|| corrupt("reachability", format!("`{}`", self.reachability)))?;
        let availability = self
            .availability
            .parse()
            .map_err(|_| corrupt("availability", format!("`{}`", self.availability)))?;
        let close_reason = self
            .close_reason
            .as_deref()
            .map(|r| parse_close_reason(r).ok_or_else(|| corrupt("close reason", format!("`{r}`"))))
            .transpose()?;
        Ok(DeviceRow {
            mac: parse_mac(&self.session, &self.mac)?,
            last_seq: stored_seq(&self.session, self.last_seq)?,
            session: parse_session(&self.session)?,
            ipv4,
            hostname: self.hostname,
            vendor: self.vendor,
            reachability,
            availability,
            last_seen_ms: self.last_seen_ms,
            opened_ms: self.opened_ms,
            closed_ms: self.closed_ms,
            close_reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immutable_uris_escape_what_a_uri_would_misread() {
        assert_eq!(
            immutable_uri(Path::new("/var/lib/rae-agent/registry.db")),
            "file:/var/lib/rae-agent/registry.db?immutable=1"
        );
        assert_eq!(
            immutable_uri(Path::new("/tmp/a b?#%/x.db")),
            "file:/tmp/a%20b%3F%23%25/x.db?immutable=1"
        );
    }
}
