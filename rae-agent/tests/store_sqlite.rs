//! The SQLite store for real: schema migration, commits and their atomicity, restart, the
//! outbox drain, the history bound, and the read-only reader `raectl` uses.

mod store_common;

use std::path::Path;

use rae_agent::registry::Change;
use rae_agent::store::{
    ChangeError, DeviceQuery, HistoryKind, RegistryStore, Store, StoreError, StoreOptions,
    StoreReader, SCHEMA_VERSION,
};
use rae_proto::{CloseReason, Envelope, Event, Field, Liveness, Text, Topic};
use rusqlite::Connection;
use store_common::{field, ip, mac, serial, Device};

fn open(path: &Path) -> Store {
    Store::open(path, StoreOptions::default()).expect("store opens")
}

fn tables(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap();
    stmt.query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn schema_sql(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
        .unwrap();
    stmt.query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
        row.get(0)
    })
    .unwrap()
}

#[test]
fn an_empty_database_is_migrated_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 0, "a fresh SQLite file starts at user_version 0");
    drop(conn);

    drop(open(&path));
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let names = tables(&conn);
    for table in ["history", "meta", "outbox", "sessions", "status"] {
        assert!(
            names.iter().any(|n| n == table),
            "table {table} missing: {names:?}"
        );
    }
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let before = schema_sql(&conn);
    drop(conn);

    let mut store = open(&path);
    let (_, opened) = Device::open(1, mac(1), 1_000);
    store.commit(&[opened], &serial(), 1_000).unwrap();
    drop(store);
    drop(open(&path));
    let conn = Connection::open(&path).unwrap();
    assert_eq!(
        schema_sql(&conn),
        before,
        "reopening must not touch the schema"
    );
    assert_eq!(count(&conn, "sessions"), 1, "reopening must keep the data");
}

#[test]
fn a_newer_database_is_refused_by_writer_and_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);

    let err = Store::open(&path, StoreOptions::default()).expect_err("refused");
    assert!(matches!(err, StoreError::SchemaTooNew { found, .. } if found == SCHEMA_VERSION + 1));
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("newer"), "{text}");

    let err = StoreReader::open_read_only(&path).expect_err("refused");
    assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
}

#[test]
fn a_reader_on_a_missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere").join("registry.db");
    let err = StoreReader::open_read_only(&path).expect_err("missing file");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("does not exist"), "{text}");
    assert!(!path.exists(), "the reader must not create the database");
}

#[test]
fn the_writer_names_the_path_it_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("registry.db");
    let err = Store::open(&path, StoreOptions::default()).expect_err("no directory");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn opened_updated_closed_make_rows_and_decodable_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let mut store = open(&path);
    let (mut dev, opened) = Device::open(1, mac(1), 1_000);
    let updated = dev.update(
        vec![
            Field::Ipv4(Some(ip(10))),
            Field::Hostname(Some(Text::from("living-room-tv"))),
        ],
        2_000,
    );
    let closed = dev.close(3_000);
    let report = store
        .commit(&[opened, updated, closed], &serial(), 3_500)
        .unwrap();
    assert_eq!(report.events, 3);
    assert_eq!(report.history_rows, 3);
    assert_eq!(report.outbox.rows, 3);

    let rows = store.outbox_peek(0, 10).unwrap();
    let envelopes: Vec<Envelope> = rows
        .iter()
        .map(|r| Envelope::decode(&r.payload).expect("decodes"))
        .collect();
    let topic = Topic::device(serial(), dev.session).to_string();
    for (row, envelope) in rows.iter().zip(&envelopes) {
        assert_eq!(row.topic, topic);
        assert_eq!(envelope.serial, serial());
        assert_eq!(envelope.session, dev.session);
        assert_eq!(envelope.seq, row.seq);
        assert_eq!(row.created_ms, 3_500);
    }
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    match &envelopes[0].event {
        Event::Snapshot { record } => {
            assert_eq!(record.mac, mac(1));
            assert_eq!(record.ipv4, None);
        }
        other => panic!("seq 1 must be a Snapshot, got {other:?}"),
    }
    assert_eq!(
        envelopes[1].event,
        Event::Delta {
            fields: vec![
                Field::Ipv4(Some(ip(10))),
                Field::Hostname(Some(Text::from("living-room-tv")))
            ]
        }
    );
    assert_eq!(envelopes[1].at_ms, 2_000);
    assert_eq!(
        envelopes[2].event,
        Event::Closed {
            reason: CloseReason::Gone
        }
    );

    let reader = StoreReader::open_read_only(&path).unwrap();
    assert!(
        reader.devices(false).unwrap().is_empty(),
        "the session is closed"
    );
    let all = reader.devices(true).unwrap();
    assert_eq!(all.len(), 1);
    let row = &all[0];
    assert_eq!(row.session, dev.session);
    assert_eq!(row.ipv4, Some(ip(10)));
    assert_eq!(row.hostname.as_deref(), Some("living-room-tv"));
    assert_eq!(
        (row.closed_ms, row.close_reason),
        (Some(3_000), Some(CloseReason::Gone))
    );
    assert_eq!(row.last_seq, 3);

    let history = reader.history(dev.session, 10).unwrap();
    let kinds: Vec<_> = history.iter().map(|h| h.kind).collect();
    assert_eq!(
        kinds,
        [
            HistoryKind::Opened,
            HistoryKind::Updated,
            HistoryKind::Closed
        ]
    );
    assert_eq!(history[1].summary, "DHCP REQUEST option 50/12");
    assert_eq!(history[1].at_ms, 2_000);
    assert_eq!(
        history[1].fields,
        "ipv4=198.18.0.10; hostname=\"living-room-tv\""
    );
    assert_eq!(history[2].fields, "reason=gone");
}

#[test]
fn seen_moves_last_seen_without_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let mut store = open(&path);
    let (mut dev, opened) = Device::open(1, mac(1), 1_000);
    store.commit(&[opened], &serial(), 1_000).unwrap();
    let seen = dev.seen(9_000);
    let report = store.commit(&[seen], &serial(), 9_100).unwrap();
    assert_eq!((report.events, report.history_rows), (0, 0));
    assert_eq!(store.outbox_stats().unwrap().rows, 1);
    let reader = StoreReader::open_read_only(&path).unwrap();
    let (row, record) = reader.find(DeviceQuery::Mac(mac(1))).unwrap().unwrap();
    assert_eq!((row.last_seen_ms, record.last_seen_ms), (9_000, 9_000));
    assert_eq!(row.last_seq, 1, "Seen takes no seq");
}

/// The database as `raectl` would dump it, to compare before and after a failed commit.
fn dump(path: &Path) -> Vec<String> {
    let conn = Connection::open(path).unwrap();
    let mut lines = Vec::new();
    for (table, order) in [
        ("sessions", "session"),
        ("history", "id"),
        ("outbox", "id"),
        ("meta", "key"),
    ] {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))
            .unwrap();
        let columns = stmt.column_count();
        let rows = stmt
            .query_map([], |row| {
                let values: Vec<String> = (0..columns)
                    .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                    .collect();
                Ok(format!("{table}: {}", values.join(" | ")))
            })
            .unwrap();
        lines.extend(rows.map(Result::unwrap));
    }
    lines
}

#[test]
fn a_refused_change_leaves_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let mut store = open(&path);
    let (mut a, opened_a) = Device::open(1, mac(1), 1_000);
    let update_a = a.update(vec![field(0, 1)], 1_100);
    store
        .commit(&[opened_a, update_a], &serial(), 1_200)
        .unwrap();
    let before = dump(&path);
    let stats_before = store.outbox_stats().unwrap();

    // A valid new session and update first, then a seq that skips one: all must roll back.
    let (mut b, opened_b) = Device::open(2, mac(2), 2_000);
    let update_b = b.update(vec![field(1, 2)], 2_100);
    let good = a.update(vec![field(2, 3)], 2_200);
    a.seq += 1;
    let skipping = a.update(vec![field(3, 4)], 2_300);
    let err = store
        .commit(&[opened_b, update_b, good, skipping], &serial(), 2_400)
        .expect_err("seq 5 after 3 is refused");
    assert!(
        matches!(
            err,
            StoreError::Rejected(ChangeError::SeqDiscontinuity {
                last: 3,
                got: 5,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(dump(&path), before, "a failed commit must write nothing");
    assert_eq!(store.outbox_stats().unwrap(), stats_before);

    // A second open session for the same MAC is refused the same way.
    let (_, again) = Device::open(3, mac(1), 3_000);
    let err = store
        .commit(&[again], &serial(), 3_000)
        .expect_err("refused");
    assert!(
        matches!(
            err,
            StoreError::Rejected(ChangeError::MacAlreadyOpen { .. })
        ),
        "{err:?}"
    );
    assert_eq!(dump(&path), before);

    // The store still works after refusals.
    let (_, opened_b) = Device::open(2, mac(2), 4_000);
    store.commit(&[opened_b], &serial(), 4_000).unwrap();
    assert_eq!(store.outbox_stats().unwrap().rows, stats_before.rows + 1);
}

#[test]
fn a_restart_keeps_sessions_and_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let mut store = open(&path);
    let (mut a, opened_a) = Device::open(1, mac(1), 1_000);
    let (mut b, opened_b) = Device::open(2, mac(2), 1_500);
    let (mut c, opened_c) = Device::open(3, mac(3), 1_700);
    let changes = vec![
        opened_a,
        opened_b,
        opened_c,
        a.update(vec![field(0, 7), field(1, 7)], 2_000),
        b.snapshot(2_100),
        c.close(2_200),
        a.seen(2_500),
    ];
    store.commit(&changes, &serial(), 2_600).unwrap();
    let before = store.open_sessions().unwrap();
    drop(store);

    let mut store = open(&path);
    let after = store.open_sessions().unwrap();
    assert_eq!(after, before);
    let summary: Vec<_> = after
        .iter()
        .map(|s| (s.session, s.mac, s.last_seq))
        .collect();
    assert_eq!(
        summary,
        [(a.session, mac(1), 2), (b.session, mac(2), 2)],
        "closed sessions are not restored"
    );
    assert_eq!(after[0].record, a.record);
    assert_eq!(after[0].record.last_seen_ms, 2_500);

    // The core resumes at last_seq + 1; reusing a seq is refused.
    let next = a.update(vec![field(2, 1)], 3_000);
    store.commit(&[next], &serial(), 3_000).unwrap();
    let mut stale = b.clone();
    stale.seq -= 1;
    let reuse = stale.update(vec![field(2, 1)], 3_000);
    assert!(store.commit(&[reuse], &serial(), 3_000).is_err());
    // A closed session is never continued.
    let after_close = c.update(vec![field(2, 1)], 3_000);
    let err = store
        .commit(&[after_close], &serial(), 3_000)
        .err()
        .unwrap();
    assert!(
        matches!(err, StoreError::Rejected(ChangeError::SessionClosed { .. })),
        "{err:?}"
    );
}

#[test]
fn the_outbox_drains_in_order_and_acks_delete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let mut store = open(&path);
    let (mut a, opened_a) = Device::open(1, mac(1), 1_000);
    let (mut b, opened_b) = Device::open(2, mac(2), 1_000);
    let mut changes = vec![opened_a, opened_b];
    for n in 0..4 {
        changes.push(a.update(vec![field(n, n)], 1_100));
        changes.push(b.update(vec![field(n, n + 10)], 1_100));
    }
    store.commit(&changes, &serial(), 1_200).unwrap();
    let rows = store.outbox_peek(0, 100).unwrap();
    assert_eq!(rows.len(), 10);
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id), "id order");
    for session in [a.session, b.session] {
        let seqs: Vec<u64> = rows
            .iter()
            .filter(|r| r.session == session)
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5], "per-session seq order");
    }
    let stats = store.outbox_stats().unwrap();
    assert_eq!(stats.rows, 10);
    assert_eq!(
        stats.bytes,
        rows.iter().map(|r| r.payload.len() as u64).sum::<u64>()
    );
    assert_eq!(stats.oldest_created_ms, Some(1_200));

    // A window: peek after the last id seen.
    let first = store.outbox_peek(0, 3).unwrap();
    let next = store.outbox_peek(first[2].id, 3).unwrap();
    assert_eq!(next[0].id, rows[3].id);

    let acked: Vec<i64> = rows[..4].iter().map(|r| r.id).collect();
    assert_eq!(store.outbox_ack(&acked).unwrap(), 4);
    assert_eq!(
        store.outbox_ack(&acked).unwrap(),
        0,
        "a repeated ack is harmless"
    );
    let left = store.outbox_peek(0, 100).unwrap();
    assert_eq!(
        left,
        rows[4..].to_vec(),
        "a reconnect re-sends every unacked row"
    );

    let all: Vec<i64> = left.iter().map(|r| r.id).collect();
    store.outbox_ack(&all).unwrap();
    let stats = store.outbox_stats().unwrap();
    assert_eq!(
        (stats.rows, stats.bytes, stats.oldest_created_ms),
        (0, 0, None)
    );

    // Ids keep growing across an empty queue and a restart.
    let last_id = rows[9].id;
    drop(store);
    let mut store = open(&path);
    let more = a.update(vec![field(5, 5)], 2_000);
    store.commit(&[more], &serial(), 2_000).unwrap();
    let rows = store.outbox_peek(last_id, 10).unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].id > last_id);
    assert_eq!(rows[0].seq, 6);
}

#[test]
fn history_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let options = StoreOptions {
        history_max_rows: 64,
        ..StoreOptions::default()
    };
    let mut store = Store::open(&path, options).unwrap();
    let (mut dev, opened) = Device::open(1, mac(1), 0);
    store.commit(&[opened], &serial(), 0).unwrap();
    let conn = Connection::open(&path).unwrap();
    for n in 1..=500u32 {
        let change = dev.update(vec![field(n as u8, n as u8)], i64::from(n));
        store.commit(&[change], &serial(), i64::from(n)).unwrap();
        let rows = count(&conn, "history");
        assert!(
            rows <= 64 + 64 / 8,
            "history holds {rows} rows after commit {n}"
        );
    }
    let reader = StoreReader::open_read_only(&path).unwrap();
    let newest = reader.history(dev.session, 1).unwrap();
    assert_eq!(newest[0].seq, Some(501), "the newest row is kept");
    assert!(
        count(&conn, "history") >= 64,
        "at least the configured rows are kept"
    );
}

#[test]
fn closed_sessions_beyond_the_limit_are_forgotten_once_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let options = StoreOptions {
        closed_sessions_max: 2,
        history_max_rows: 8,
        ..StoreOptions::default()
    };
    let mut store = Store::open(&path, options).unwrap();
    let mut sessions = Vec::new();
    for n in 1..=5u8 {
        let (mut dev, opened) = Device::open(u32::from(n), mac(n), i64::from(n));
        let closed = dev.close(i64::from(n) * 10);
        store.commit(&[opened, closed], &serial(), 100).unwrap();
        sessions.push(dev.session);
    }
    let reader = StoreReader::open_read_only(&path).unwrap();
    assert_eq!(
        reader.devices(true).unwrap().len(),
        5,
        "pending Closed events keep sessions"
    );

    let ids: Vec<i64> = store
        .outbox_peek(0, 100)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    store.outbox_ack(&ids).unwrap();
    for n in 6..=20u8 {
        let (_, opened) = Device::open(u32::from(n), mac(n), 1_000);
        store.commit(&[opened], &serial(), 1_000).unwrap();
    }
    let closed: Vec<_> = reader
        .devices(true)
        .unwrap()
        .into_iter()
        .filter(|d| d.closed_ms.is_some())
        .map(|d| d.session)
        .collect();
    assert_eq!(closed.len(), 2);
    assert!(
        closed.contains(&sessions[3]) && closed.contains(&sessions[4]),
        "newest kept"
    );
    assert!(
        reader.history(sessions[0], 10).unwrap().is_empty(),
        "history went with it"
    );
}

#[test]
fn the_reader_sees_commits_while_the_writer_holds_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let mut store = open(&path);
    let (mut a, opened_a) = Device::open(1, mac(1), 1_000);
    store.commit(&[opened_a], &serial(), 1_000).unwrap();

    let reader = StoreReader::open_read_only(&path).unwrap();
    let devices = reader.devices(false).unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].reachability, Liveness::Online);
    let start = reader.latest_event_id().unwrap();

    let (b, opened_b) = Device::open(2, mac(2), 2_000);
    let update = a.update(vec![Field::Ipv4(Some(ip(33)))], 2_100);
    store.commit(&[opened_b, update], &serial(), 2_200).unwrap();
    store
        .write_status(
            &[
                ("capture.frames".to_owned(), "1234".to_owned()),
                ("broker".to_owned(), "connected".to_owned()),
            ],
            2_300,
        )
        .unwrap();

    assert_eq!(reader.devices(false).unwrap().len(), 2);
    let (row, record) = reader
        .find(DeviceQuery::Ipv4(ip(33)))
        .unwrap()
        .expect("by ip");
    assert_eq!((row.session, record.ipv4), (a.session, Some(ip(33))));
    let by_session = reader.find(DeviceQuery::Session(b.session)).unwrap();
    assert_eq!(by_session.expect("by session").0.mac, mac(2));
    let by_text: DeviceQuery = "02:00:00:00:00:02".parse().unwrap();
    assert_eq!(reader.find(by_text).unwrap().unwrap().0.session, b.session);
    assert!(reader.find(DeviceQuery::Mac(mac(99))).unwrap().is_none());

    let events = reader.events_since(start, 100).unwrap();
    let kinds: Vec<_> = events.iter().map(|e| (e.session, e.kind)).collect();
    assert_eq!(
        kinds,
        [
            (b.session, HistoryKind::Opened),
            (a.session, HistoryKind::Updated)
        ]
    );
    assert!(reader.events_since(events[1].id, 100).unwrap().is_empty());

    let status = reader.read_status().unwrap();
    let pairs: Vec<_> = status
        .iter()
        .map(|s| (s.key.as_str(), s.value.as_str()))
        .collect();
    // The store adds its own entries (the disk floor) to every status write.
    let (own, written): (Vec<_>, Vec<_>) = pairs.iter().partition(|(k, _)| k.starts_with("store."));
    assert_eq!(
        written,
        [("broker", "connected"), ("capture.frames", "1234")]
    );
    assert!(own.iter().any(|(k, _)| *k == "store.disk_low"), "{own:?}");
    assert_eq!(
        reader.outbox_stats().unwrap(),
        store.outbox_stats().unwrap()
    );
    assert_eq!(reader.serial().unwrap().as_deref(), Some(serial().as_str()));

    // And once the daemon stopped.
    drop(store);
    let reader = StoreReader::open_read_only(&path).unwrap();
    assert_eq!(reader.devices(false).unwrap().len(), 2);
}

#[test]
fn device_queries_parse_what_an_operator_types() {
    let session = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    assert!(matches!(session.parse(), Ok(DeviceQuery::Session(_))));
    assert_eq!("198.18.0.7".parse(), Ok(DeviceQuery::Ipv4(ip(7))));
    assert_eq!("02-00-00-00-00-01".parse(), Ok(DeviceQuery::Mac(mac(1))));
    let err = "tv".parse::<DeviceQuery>().unwrap_err();
    assert!(err.to_string().contains("`tv`"), "{err}");
}

#[test]
fn the_store_satisfies_the_trait_the_daemon_uses() {
    fn restore(store: &dyn RegistryStore) -> usize {
        store.open_sessions().unwrap().len()
    }
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir.path().join("registry.db"));
    let (_, opened) = Device::open(1, mac(1), 1);
    let changes: Vec<Change> = vec![opened];
    RegistryStore::commit(&mut store, &changes, &serial(), 1).unwrap();
    assert_eq!(restore(&store), 1);
}
