//! The statements of one batch write, each run at most once per transaction: arrays bound
//! to `UNNEST`, the convergence rule in `ON CONFLICT ... DO UPDATE ... WHERE`.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use rae_proto::{Field, FieldId, SessionId};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres, Row};
use uuid::Uuid;

use super::columns::{cells, seq_column, value_columns, Cell, DialRows, Kind, MdnsRows};
use super::fold::{RaeFold, SeqTrack, SessionRow, Stamped, StoredSession};
use crate::record::{Origin, Raw};

/// One column array of a statement.
#[derive(Debug)]
enum Array {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Bytes(Vec<Option<Vec<u8>>>),
    Bool(Vec<Option<bool>>),
}

impl Array {
    fn new(kind: Kind, capacity: usize) -> Self {
        match kind {
            Kind::Text | Kind::TextList | Kind::Json | Kind::IntList => {
                Self::Text(Vec::with_capacity(capacity))
            }
            Kind::Int => Self::Int(Vec::with_capacity(capacity)),
            Kind::Bytes => Self::Bytes(Vec::with_capacity(capacity)),
            Kind::Bool => Self::Bool(Vec::with_capacity(capacity)),
        }
    }

    /// Appends `cell`; the spec guarantees the kinds agree, a mismatch would be a bug in
    /// [`value_columns`]/[`cells`], which their unit test rules out.
    fn push(&mut self, cell: Cell) {
        match (self, cell) {
            (Self::Text(v), Cell::Text(c)) => v.push(c),
            (Self::Int(v), Cell::Int(c)) => v.push(c),
            (Self::Bytes(v), Cell::Bytes(c)) => v.push(c),
            (Self::Bool(v), Cell::Bool(c)) => v.push(c),
            (array, cell) => debug_assert!(false, "cell {cell:?} does not fit {array:?}"),
        }
    }

    fn bind<'q>(self, query: Query<'q, Postgres, PgArguments>) -> Query<'q, Postgres, PgArguments> {
        match self {
            Self::Text(v) => query.bind(v),
            Self::Int(v) => query.bind(v),
            Self::Bytes(v) => query.bind(v),
            Self::Bool(v) => query.bind(v),
        }
    }
}

/// The columns of `device_sessions` after `session`, in bind order (built once).
static SESSION_COLUMNS: LazyLock<Vec<(String, Kind)>> = LazyLock::new(|| {
    let mut columns = vec![("serial".to_owned(), Kind::Text)];
    for id in FieldId::ALL {
        for (name, kind) in value_columns(id) {
            columns.push(((*name).to_owned(), *kind));
        }
        columns.push((seq_column(id), Kind::Int));
    }
    for (name, kind) in [
        ("opened_seq", Kind::Int),
        ("opened_at_ms", Kind::Int),
        ("closed_seq", Kind::Int),
        ("closed_at_ms", Kind::Int),
        ("close_reason", Kind::Text),
        ("seq_hw", Kind::Int),
        ("snapshot_seq", Kind::Int),
        ("contiguous_seq", Kind::Int),
        ("pending_seqs", Kind::IntList),
        ("pending_runs", Kind::IntList),
        ("pending_overflow", Kind::Bool),
        ("inventory_seq", Kind::Int),
        ("needs_resync", Kind::Bool),
    ] {
        columns.push((name.to_owned(), kind));
    }
    columns
});

/// `INSERT INTO device_sessions ... SELECT ... FROM UNNEST(...)`, the part the upsert and
/// the insert of new rows share.
fn session_insert_head() -> String {
    let columns = &*SESSION_COLUMNS;
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    let binds: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, kind))| format!("${}::{}", i + 2, kind.bind_type()))
        .collect();
    let selects: Vec<String> = columns.iter().map(|(n, k)| k.select_expr(n)).collect();
    format!(
        "INSERT INTO device_sessions AS s (session, {names}, received_at) \
         SELECT b.session, {selects}, now() \
         FROM UNNEST($1::UUID[], {binds}) AS b(session, {names})",
        names = names.join(", "),
        selects = selects.join(", "),
        binds = binds.join(", "),
    )
}

/// The insert of the sessions the transaction found no row for. `DO NOTHING` plus
/// `RETURNING`: a row a concurrent writer inserted since the read is not overwritten with
/// bookkeeping that never saw it; the caller counts the rows missing from the answer and
/// retries the transaction (at READ COMMITTED nothing else would notice; at SERIALIZABLE the
/// database raises 40001 itself).
static SESSION_INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} ON CONFLICT (session) DO NOTHING RETURNING session",
        session_insert_head()
    )
});

/// The session upsert: per-field last-writer-wins by seq; the bookkeeping columns come merged
/// from [`super::fold::Folded::settle`] and are taken as they are.
static SESSION_UPSERT: LazyLock<String> = LazyLock::new(|| {
    let mut sets = Vec::new();
    let mut changed = Vec::new();
    for id in FieldId::ALL {
        let seq = seq_column(id);
        let win = format!("EXCLUDED.{seq} > COALESCE(s.{seq}, 0)");
        for (name, _) in value_columns(id) {
            sets.push(format!(
                "{name} = CASE WHEN {win} THEN EXCLUDED.{name} ELSE s.{name} END"
            ));
        }
        sets.push(format!(
            "{seq} = CASE WHEN {win} THEN EXCLUDED.{seq} ELSE s.{seq} END"
        ));
        changed.push(win);
    }
    let opened = "EXCLUDED.opened_seq < COALESCE(s.opened_seq, 9223372036854775807)";
    let closed = "EXCLUDED.closed_seq > COALESCE(s.closed_seq, -1)";
    for name in ["opened_seq", "opened_at_ms"] {
        sets.push(format!(
            "{name} = CASE WHEN {opened} THEN EXCLUDED.{name} ELSE s.{name} END"
        ));
    }
    for name in ["closed_seq", "closed_at_ms", "close_reason"] {
        sets.push(format!(
            "{name} = CASE WHEN {closed} THEN EXCLUDED.{name} ELSE s.{name} END"
        ));
    }
    changed.push(opened.to_owned());
    changed.push(closed.to_owned());
    for name in [
        "seq_hw",
        "snapshot_seq",
        "contiguous_seq",
        "pending_seqs",
        "pending_runs",
        "pending_overflow",
        "inventory_seq",
        "needs_resync",
    ] {
        sets.push(format!("{name} = EXCLUDED.{name}"));
        changed.push(format!("s.{name} IS DISTINCT FROM EXCLUDED.{name}"));
    }
    sets.push("received_at = EXCLUDED.received_at".to_owned());
    format!(
        "{head} ON CONFLICT (session) DO UPDATE SET {sets} \
         WHERE s.serial = EXCLUDED.serial AND ({changed})",
        head = session_insert_head(),
        sets = sets.join(", "),
        changed = changed.join(" OR "),
    )
});

fn to_i64(value: u64) -> i64 {
    // Seqs are checked against `MAX_STORABLE_SEQ` when decoded.
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// `pending_runs` as stored: the runs flattened, `first,last,first,last,...`.
fn join_runs(track: &SeqTrack) -> String {
    let seqs: Vec<String> = track
        .pending_runs
        .iter()
        .flat_map(|&(first, last)| [first, last])
        .map(|seq| to_i64(seq).to_string())
        .collect();
    seqs.join(",")
}

/// The stored bookkeeping, normalised through [`SeqTrack::merge`] (so a hand-edited row
/// cannot break the runs' invariants). `legacy` is the `pending_seqs` column of rows written
/// before `pending_runs` existed: single seqs, folded in as runs of one.
fn stored_track(
    snapshot_seq: u64,
    contiguous_seq: u64,
    seq_hw: u64,
    runs: &[i64],
    legacy: &[i64],
    overflowed: bool,
) -> SeqTrack {
    let mut pending: Vec<(u64, u64)> = runs
        .chunks_exact(2)
        .map(|pair| (to_u64(pair[0]), to_u64(pair[1])))
        .filter(|(first, last)| first <= last)
        .chain(legacy.iter().map(|&seq| (to_u64(seq), to_u64(seq))))
        .collect();
    pending.sort_unstable();
    let mut track = SeqTrack {
        snapshot_seq,
        contiguous_seq,
        pending_runs: Vec::new(),
        overflowed,
        seq_hw,
    };
    track.merge(&SeqTrack {
        pending_runs: pending,
        ..SeqTrack::default()
    });
    track
}

/// The bookkeeping columns a write reads.
const STORED_COLUMNS: &str = "session, serial, snapshot_seq, contiguous_seq, pending_seqs, \
    pending_runs, pending_overflow, seq_hw, inventory_seq, opened_seq, opened_at_ms, \
    closed_seq, mdns_services_seq, dial_apps_seq";

/// The rows of the batch's sessions: primary-key lookups, so `FOR UPDATE` locks exactly the
/// rows returned (no `OR` that could turn the plan into a scan, which CockroachDB would lock
/// whole).
static READ_BY_SESSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {STORED_COLUMNS} FROM device_sessions \
         WHERE session = ANY($1::UUID[]) FOR UPDATE"
    )
});

/// The open sessions of the RAEs whose inventory the batch carries (inventory closing), a
/// statement of its own on the partial index `device_sessions_open_by_serial`.
static READ_OPEN_BY_SERIAL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {STORED_COLUMNS} FROM device_sessions \
         WHERE serial = ANY($1::TEXT[]) AND closed_seq IS NULL FOR UPDATE"
    )
});

/// Reads and locks the stored rows of `sessions`, and the open sessions of `serials`.
pub async fn read_sessions(
    conn: &mut PgConnection,
    sessions: &[SessionId],
    serials: &[String],
) -> Result<BTreeMap<SessionId, StoredSession>, sqlx::Error> {
    let mut rows = Vec::new();
    if !sessions.is_empty() {
        let ids: Vec<Uuid> = sessions.iter().map(|s| *s.as_uuid()).collect();
        rows = sqlx::query(READ_BY_SESSION.as_str())
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
    }
    if !serials.is_empty() {
        rows.extend(
            sqlx::query(READ_OPEN_BY_SERIAL.as_str())
                .bind(serials)
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    let mut stored = BTreeMap::new();
    for row in rows {
        let session: Uuid = row.try_get("session")?;
        let legacy: Vec<i64> = row.try_get("pending_seqs")?;
        let runs: Vec<i64> = row.try_get("pending_runs")?;
        let opened_seq: Option<i64> = row.try_get("opened_seq")?;
        let opened_at: Option<i64> = row.try_get("opened_at_ms")?;
        let seq = |name: &str| -> Result<Option<u64>, sqlx::Error> {
            Ok(row.try_get::<Option<i64>, _>(name)?.map(to_u64))
        };
        stored.insert(
            SessionId::from_uuid(session),
            StoredSession {
                serial: row.try_get("serial")?,
                track: stored_track(
                    to_u64(row.try_get("snapshot_seq")?),
                    to_u64(row.try_get("contiguous_seq")?),
                    to_u64(row.try_get("seq_hw")?),
                    &runs,
                    &legacy,
                    row.try_get("pending_overflow")?,
                ),
                inventory_seq: to_u64(row.try_get("inventory_seq")?),
                opened: opened_seq.zip(opened_at).map(|(seq, at)| Stamped {
                    seq: to_u64(seq),
                    value: at,
                }),
                closed_seq: seq("closed_seq")?,
                mdns_services_seq: seq("mdns_services_seq")?,
                dial_apps_seq: seq("dial_apps_seq")?,
            },
        );
    }
    Ok(stored)
}

/// The column arrays of a set of session rows, filled in [`SESSION_COLUMNS`] order.
struct SessionArrays {
    sessions: Vec<Uuid>,
    arrays: Vec<Array>,
}

impl SessionArrays {
    fn new(capacity: usize) -> Self {
        Self {
            sessions: Vec::with_capacity(capacity),
            arrays: SESSION_COLUMNS
                .iter()
                .map(|(_, kind)| Array::new(*kind, capacity))
                .collect(),
        }
    }

    fn push(&mut self, row: &SessionRow) {
        let fold = &row.fold;
        self.sessions.push(*row.session.as_uuid());
        let mut arrays = self.arrays.iter_mut();
        let mut put = |cell: Cell| {
            if let Some(array) = arrays.next() {
                array.push(cell);
            }
        };
        put(Cell::Text(Some(fold.serial.as_str().to_owned())));
        for id in FieldId::ALL {
            match fold.field(id) {
                Some(stamped) => {
                    cells(&stamped.value).into_iter().for_each(&mut put);
                    put(Cell::Int(Some(to_i64(stamped.seq))));
                }
                None => {
                    for (_, kind) in value_columns(id) {
                        put(Cell::null(*kind));
                    }
                    put(Cell::Int(None));
                }
            }
        }
        let track = &fold.track;
        for cell in [
            Cell::Int(fold.opened.as_ref().map(|o| to_i64(o.seq))),
            Cell::Int(fold.opened.as_ref().map(|o| o.value)),
            Cell::Int(fold.closed.as_ref().map(|c| to_i64(c.seq))),
            Cell::Int(fold.closed.as_ref().map(|c| c.value.at_ms)),
            Cell::Text(
                fold.closed
                    .as_ref()
                    .map(|c| c.value.cause.as_str().to_owned()),
            ),
            Cell::Int(Some(to_i64(track.seq_hw))),
            Cell::Int(Some(to_i64(track.snapshot_seq))),
            Cell::Int(Some(to_i64(track.contiguous_seq))),
            // Superseded by `pending_runs`; emptied as each legacy row is rewritten.
            Cell::Text(Some(String::new())),
            Cell::Text(Some(join_runs(track))),
            Cell::Bool(Some(track.overflowed)),
            Cell::Int(Some(to_i64(fold.inventory_seq))),
            Cell::Bool(Some(row.needs_resync)),
        ] {
            put(cell);
        }
    }

    fn query(self, sql: &str) -> Query<'_, Postgres, PgArguments> {
        let mut query = sqlx::query(sql).bind(self.sessions);
        for array in self.arrays {
            query = array.bind(query);
        }
        query
    }
}

/// Upserts the session rows the transaction read (and locked), inserts those it found none
/// for, then replaces the child rows the batch wins. Returns how many of the new rows a
/// concurrent writer inserted first (none written: the caller must roll back and retry).
pub async fn write_sessions(
    conn: &mut PgConnection,
    rows: &[SessionRow],
) -> Result<usize, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let stored_count = rows.iter().filter(|row| row.stored).count();
    let mut stored = SessionArrays::new(stored_count);
    let mut fresh = SessionArrays::new(rows.len() - stored_count);
    let mut mdns_sessions = Vec::new();
    let mut mdns = MdnsRows::default();
    let mut dial_sessions = Vec::new();
    let mut dial = DialRows::default();
    for row in rows {
        let fold = &row.fold;
        let uuid = *row.session.as_uuid();
        if row.stored {
            stored.push(row);
        } else {
            fresh.push(row);
        }
        if row.replace_mdns_services {
            if let Some(Stamped {
                value: Field::MdnsServices(services),
                ..
            }) = fold.field(FieldId::MdnsServices)
            {
                mdns_sessions.push(uuid);
                mdns.push(uuid, services);
            }
        }
        if row.replace_dial_apps {
            if let Some(Stamped {
                value: Field::DialApps(apps),
                ..
            }) = fold.field(FieldId::DialApps)
            {
                dial_sessions.push(uuid);
                dial.push(uuid, apps);
            }
        }
    }
    if !stored.sessions.is_empty() {
        stored
            .query(SESSION_UPSERT.as_str())
            .execute(&mut *conn)
            .await?;
    }
    let fresh_count = fresh.sessions.len();
    if fresh_count > 0 {
        let inserted = fresh
            .query(SESSION_INSERT.as_str())
            .fetch_all(&mut *conn)
            .await?
            .len();
        if inserted < fresh_count {
            return Ok(fresh_count - inserted);
        }
    }
    replace_mdns(conn, mdns_sessions, mdns).await?;
    replace_dial(conn, dial_sessions, dial).await?;
    Ok(0)
}

async fn replace_mdns(
    conn: &mut PgConnection,
    sessions: Vec<Uuid>,
    rows: MdnsRows,
) -> Result<(), sqlx::Error> {
    if sessions.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM device_mdns_services WHERE session = ANY($1::UUID[])")
        .bind(sessions)
        .execute(&mut *conn)
        .await?;
    if rows.session.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO device_mdns_services (session, position, service_type, instance, port, txt) \
         SELECT b.session, b.position, b.service_type, b.instance, b.port, b.txt::JSONB \
         FROM UNNEST($1::UUID[], $2::INT8[], $3::TEXT[], $4::TEXT[], $5::INT8[], $6::TEXT[]) \
         AS b(session, position, service_type, instance, port, txt)",
    )
    .bind(rows.session)
    .bind(rows.position)
    .bind(rows.service_type)
    .bind(rows.instance)
    .bind(rows.port)
    .bind(rows.txt)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn replace_dial(
    conn: &mut PgConnection,
    sessions: Vec<Uuid>,
    rows: DialRows,
) -> Result<(), sqlx::Error> {
    if sessions.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM device_dial_apps WHERE session = ANY($1::UUID[])")
        .bind(sessions)
        .execute(&mut *conn)
        .await?;
    if rows.session.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO device_dial_apps (session, position, name, state, state_detail, additional_data) \
         SELECT b.session, b.position, b.name, b.state, b.state_detail, b.additional_data \
         FROM UNNEST($1::UUID[], $2::INT8[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[]) \
         AS b(session, position, name, state, state_detail, additional_data)",
    )
    .bind(rows.session)
    .bind(rows.position)
    .bind(rows.name)
    .bind(rows.state)
    .bind(rows.state_detail)
    .bind(rows.additional_data)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Status wins when it is at least as new (RAE clock) as the stored one: a Last Will carries
/// the time of the connect that registered it, and follows it on the same topic.
const STATUS_WINS: &str = "EXCLUDED.status IS NOT NULL \
    AND (r.status_at_ms IS NULL OR EXCLUDED.status_at_ms >= r.status_at_ms)";
const INVENTORY_WINS: &str = "EXCLUDED.inventory_at_ms IS NOT NULL \
    AND (r.inventory_at_ms IS NULL OR EXCLUDED.inventory_at_ms >= r.inventory_at_ms)";

static RAE_UPSERT: LazyLock<String> = LazyLock::new(|| {
    let s = STATUS_WINS;
    let i = INVENTORY_WINS;
    format!(
        "INSERT INTO raes AS r (serial, status, status_at_ms, status_changed_at, agent_version, \
           inventory_at_ms, inventory_sessions, inventory_received_at, updated_at) \
         SELECT b.serial, b.status, b.status_at_ms, \
           CASE WHEN b.status IS NULL THEN NULL ELSE now() END, b.agent_version, \
           b.inventory_at_ms, b.inventory_sessions, \
           CASE WHEN b.inventory_at_ms IS NULL THEN NULL ELSE now() END, now() \
         FROM UNNEST($1::TEXT[], $2::TEXT[], $3::INT8[], $4::TEXT[], $5::INT8[], $6::INT8[]) \
           AS b(serial, status, status_at_ms, agent_version, inventory_at_ms, inventory_sessions) \
         ON CONFLICT (serial) DO UPDATE SET \
           status = CASE WHEN {s} THEN EXCLUDED.status ELSE r.status END, \
           status_at_ms = CASE WHEN {s} THEN EXCLUDED.status_at_ms ELSE r.status_at_ms END, \
           status_changed_at = CASE WHEN {s} AND EXCLUDED.status IS DISTINCT FROM r.status \
             THEN EXCLUDED.status_changed_at ELSE r.status_changed_at END, \
           agent_version = CASE WHEN {s} THEN EXCLUDED.agent_version ELSE r.agent_version END, \
           inventory_at_ms = CASE WHEN {i} THEN EXCLUDED.inventory_at_ms ELSE r.inventory_at_ms END, \
           inventory_sessions = CASE WHEN {i} THEN EXCLUDED.inventory_sessions \
             ELSE r.inventory_sessions END, \
           inventory_received_at = CASE WHEN {i} THEN EXCLUDED.inventory_received_at \
             ELSE r.inventory_received_at END, \
           updated_at = EXCLUDED.updated_at \
         WHERE ({s}) OR ({i})"
    )
});

/// Upserts the status and inventory summary of every RAE in the batch.
pub async fn write_raes(
    conn: &mut PgConnection,
    raes: &BTreeMap<rae_proto::Serial, RaeFold>,
) -> Result<(), sqlx::Error> {
    if raes.is_empty() {
        return Ok(());
    }
    let mut serial = Vec::new();
    let mut status = Vec::new();
    let mut status_at = Vec::new();
    let mut version = Vec::new();
    let mut inventory_at = Vec::new();
    let mut inventory_sessions = Vec::new();
    for (id, rae) in raes {
        serial.push(id.as_str().to_owned());
        status.push(rae.status.as_ref().map(|s| s.state.as_str().to_owned()));
        status_at.push(rae.status.as_ref().map(|s| s.at_ms));
        version.push(
            rae.status
                .as_ref()
                .map(|s| super::columns::storable(&s.agent_version)),
        );
        inventory_at.push(rae.inventory.as_ref().map(|i| i.at_ms));
        inventory_sessions.push(
            rae.inventory
                .as_ref()
                .map(|i| i64::try_from(i.sessions.len()).unwrap_or(i64::MAX)),
        );
    }
    sqlx::query(RAE_UPSERT.as_str())
        .bind(serial)
        .bind(status)
        .bind(status_at)
        .bind(version)
        .bind(inventory_at)
        .bind(inventory_sessions)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records the rejected records of the batch (positions into `batch`) with their reasons.
pub async fn write_dead_letters(
    conn: &mut PgConnection,
    batch: &[Raw],
    rejected: &[(usize, String)],
) -> Result<(), sqlx::Error> {
    if rejected.is_empty() {
        return Ok(());
    }
    let mut id = Vec::new();
    let mut topic = Vec::new();
    let mut source = Vec::new();
    let mut kafka_topic = Vec::new();
    let mut kafka_partition = Vec::new();
    let mut kafka_offset = Vec::new();
    let mut mqtt_lane = Vec::new();
    let mut mqtt_pkid = Vec::new();
    let mut payload = Vec::new();
    let mut reason = Vec::new();
    for (index, why) in rejected {
        let Some(raw) = batch.get(*index) else {
            continue;
        };
        id.push(Uuid::new_v4());
        topic.push(raw.topic.as_deref().map(super::columns::storable));
        match &raw.origin {
            Origin::Kafka {
                topic,
                partition,
                offset,
            } => {
                source.push("kafka".to_owned());
                kafka_topic.push(Some(super::columns::storable(topic)));
                kafka_partition.push(Some(i64::from(*partition)));
                kafka_offset.push(Some(*offset));
                mqtt_lane.push(None);
                mqtt_pkid.push(None);
            }
            Origin::Mqtt { lane, pkid } => {
                source.push("mqtt".to_owned());
                kafka_topic.push(None);
                kafka_partition.push(None);
                kafka_offset.push(None);
                mqtt_lane.push(Some(i64::from(*lane)));
                mqtt_pkid.push(pkid.map(i64::from));
            }
        }
        payload.push(raw.payload.clone());
        reason.push(super::columns::storable(why));
    }
    sqlx::query(
        "INSERT INTO dead_letters (id, topic, source, kafka_topic, kafka_partition, kafka_offset, \
           mqtt_lane, mqtt_pkid, payload, reason, received_at) \
         SELECT b.id, b.topic, b.source, b.kafka_topic, b.kafka_partition, b.kafka_offset, \
           b.mqtt_lane, b.mqtt_pkid, b.payload, b.reason, now() \
         FROM UNNEST($1::UUID[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::INT8[], $6::INT8[], \
           $7::INT8[], $8::INT8[], $9::BYTEA[], $10::TEXT[]) \
           AS b(id, topic, source, kafka_topic, kafka_partition, kafka_offset, mqtt_lane, \
             mqtt_pkid, payload, reason) \
         ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING",
    )
    .bind(id)
    .bind(topic)
    .bind(source)
    .bind(kafka_topic)
    .bind(kafka_partition)
    .bind(kafka_offset)
    .bind(mqtt_lane)
    .bind(mqtt_pkid)
    .bind(payload)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}
