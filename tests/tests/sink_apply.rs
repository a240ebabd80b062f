//! cloud-sink's writer against a real PostgreSQL at SERIALIZABLE: the convergence rule
//! (any order, duplicates and batching of many sessions give the rows of in-order
//! application, and every column is what an independent model of the rule predicts, with
//! RAE clocks unrelated to seq), gaps and
//! resyncs, dead letters, inventories, statuses, and retries of serialization failures and
//! lost connections.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cloud_sink::apply::{Db, DbOptions, RetryPolicy};
use cloud_sink::record::{Origin, Raw};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rae_proto::strategy::{close_reason, delta_fields, device_record, session};
use rae_proto::{
    AgentState, CloseReason, DeviceRecord, DialAppState, Envelope, Event, Evidence, Field, FieldId,
    Inventory, Mac, Serial, SessionId, SessionSeq, Status,
};
use rae_tests::services::Postgres;
use serde_json::{json, Map, Value};
use sqlx::{Connection, Row};

const WAIT: Duration = Duration::from_secs(20);

async fn database(pg: &Postgres, name: &str) -> Db {
    let url = pg.create_database(name).await.unwrap();
    let options = DbOptions {
        acquire_timeout: Duration::from_secs(1),
        retry: RetryPolicy {
            max_attempts: 40,
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
        },
        ..DbOptions::default()
    };
    let db = Db::connect(&url, options).await.unwrap();
    db.migrate().await.unwrap();
    db
}

static OFFSET: AtomicUsize = AtomicUsize::new(0);

fn kafka() -> Origin {
    Origin::Kafka {
        topic: "rae-events".into(),
        partition: 3,
        offset: OFFSET.fetch_add(1, Ordering::Relaxed) as i64,
    }
}

fn raw(envelope: &Envelope) -> Raw {
    Raw {
        topic: Some(envelope.topic().to_string()),
        payload: envelope.encode().unwrap(),
        origin: kafka(),
    }
}

fn envelope(serial: &Serial, session: SessionId, seq: u64, at_ms: i64, event: Event) -> Envelope {
    Envelope {
        serial: serial.clone(),
        session,
        seq,
        at_ms,
        event,
    }
}

fn snapshot(record: &DeviceRecord) -> Event {
    Event::Snapshot {
        record: Box::new(record.clone()),
    }
}

fn record(last_byte: u8) -> DeviceRecord {
    DeviceRecord::new(
        Mac([2, 0, 0, 0, 0, last_byte]),
        Evidence::DhcpRequest,
        1_000,
    )
}

/// Every column of the serial's sessions and their child rows, but `received_at`.
async fn rows_of(db: &Db, serial: &str) -> Vec<String> {
    let mut rows: Vec<String> = sqlx::query_scalar(
        "SELECT (to_jsonb(s) - 'received_at')::TEXT FROM device_sessions s \
         WHERE serial = $1 ORDER BY session",
    )
    .bind(serial)
    .fetch_all(db.pool())
    .await
    .unwrap();
    for table in ["device_mdns_services", "device_dial_apps"] {
        let children: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT to_jsonb(c)::TEXT FROM {table} c JOIN device_sessions s USING (session) \
             WHERE s.serial = $1 ORDER BY c.session, c.position"
        ))
        .bind(serial)
        .fetch_all(db.pool())
        .await
        .unwrap();
        rows.extend(children);
    }
    rows
}

async fn session_row(db: &Db, session: SessionId) -> sqlx::postgres::PgRow {
    sqlx::query("SELECT * FROM device_sessions WHERE session = $1")
        .bind(*session.as_uuid())
        .fetch_one(db.pool())
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// The convergence property.

/// One session's history as the RAE sent it, and which events reach the sink at all.
#[derive(Debug, Clone)]
struct History {
    session: SessionId,
    first: DeviceRecord,
    /// Whether the opening Snapshot (seq 1) is delivered.
    first_delivered: bool,
    /// Events after the first Snapshot, with whether each is delivered.
    later: Vec<(Event, bool)>,
    closed: Option<CloseReason>,
    /// The RAE clock of each event, by seq (cycled): unrelated to seq, it may go backwards,
    /// repeat or jump, since clocks never decide order.
    at_ms: Vec<i64>,
}

fn later_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        1 => device_record().prop_map(|record| Event::Snapshot { record: Box::new(record) }),
        4 => delta_fields().prop_map(|fields| Event::Delta { fields }),
    ]
}

fn clock() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => 0..2_000_000_000_000_i64,
        1 => Just(1_000_i64),
        1 => any::<i64>(),
    ]
}

fn history() -> impl Strategy<Value = History> {
    (
        session(),
        device_record(),
        prop::bool::weighted(0.85),
        vec((later_event(), prop::bool::weighted(0.85)), 0..8),
        option::weighted(0.3, close_reason()),
        vec(clock(), 1..12),
    )
        .prop_map(
            |(session, first, first_delivered, later, closed, at_ms)| History {
                session,
                first,
                first_delivered,
                later,
                closed,
                at_ms,
            },
        )
}

impl History {
    fn at(&self, seq: u64) -> i64 {
        self.at_ms[seq as usize % self.at_ms.len()]
    }

    /// The delivered events, in seq order.
    fn delivered(&self, serial: &Serial) -> Vec<Envelope> {
        let mut out = Vec::new();
        let mut seq = 1;
        if self.first_delivered {
            out.push(envelope(
                serial,
                self.session,
                seq,
                self.at(seq),
                snapshot(&self.first),
            ));
        }
        for (event, delivered) in &self.later {
            seq += 1;
            if *delivered {
                out.push(envelope(
                    serial,
                    self.session,
                    seq,
                    self.at(seq),
                    event.clone(),
                ));
            }
        }
        if let Some(reason) = self.closed {
            seq += 1;
            out.push(envelope(
                serial,
                self.session,
                seq,
                self.at(seq),
                Event::Closed { reason },
            ));
        }
        out
    }
}

/// The delivered events of every history, in seq order per session.
fn delivered(serial: &Serial, histories: &[History]) -> Vec<Envelope> {
    histories.iter().flat_map(|h| h.delivered(serial)).collect()
}

/// An independent model of the convergence rule (DESIGN section 3, cloud-sink's
/// `apply/fold.rs` docs), written from the rule and not from the sink's code: per field, the
/// value of the highest-seq event that carried it; the lowest seq opens the session; the
/// highest-seq Closed closes it; the seq bookkeeping from the set of seqs received.
#[derive(Debug, Default)]
struct Model {
    fields: BTreeMap<FieldId, (u64, Field)>,
    /// Every distinct seq received: its `at_ms` and whether it was a Snapshot.
    received: BTreeMap<u64, (i64, bool)>,
    closed: Option<(u64, i64, CloseReason)>,
}

impl Model {
    fn apply(&mut self, e: &Envelope) {
        let is_snapshot = matches!(e.event, Event::Snapshot { .. });
        self.received.insert(e.seq, (e.at_ms, is_snapshot));
        let mut set = |field: Field| {
            let id = field.id();
            match self.fields.get(&id) {
                Some((seq, _)) if *seq >= e.seq => {}
                _ => {
                    self.fields.insert(id, (e.seq, field));
                }
            }
        };
        match &e.event {
            Event::Snapshot { record } => FieldId::ALL.iter().for_each(|&id| set(record.field(id))),
            Event::Delta { fields } => fields.iter().cloned().for_each(set),
            Event::Closed { reason } => match self.closed {
                Some((seq, _, _)) if seq >= e.seq => {}
                _ => self.closed = Some((e.seq, e.at_ms, *reason)),
            },
        }
    }

    /// The `device_sessions` row as JSON (`to_jsonb` of it, but `received_at`).
    fn row(&self, serial: &Serial, session: SessionId) -> Value {
        let mut row = Map::new();
        row.insert("session".into(), json!(session.as_uuid().to_string()));
        row.insert("serial".into(), json!(serial.as_str()));
        for id in FieldId::ALL {
            let (seq, field) = match self.fields.get(&id) {
                Some((seq, field)) => (json!(seq), Some(field)),
                None => (Value::Null, None),
            };
            row.insert(format!("{}_seq", id.name()), seq);
            for (column, value) in value_columns(id, field) {
                row.insert(column.into(), value);
            }
        }
        let opened = self.received.iter().next();
        row.insert("opened_seq".into(), json!(opened.map(|(seq, _)| seq)));
        row.insert("opened_at_ms".into(), json!(opened.map(|(_, (at, _))| at)));
        row.insert("closed_seq".into(), json!(self.closed.map(|c| c.0)));
        row.insert("closed_at_ms".into(), json!(self.closed.map(|c| c.1)));
        row.insert(
            "close_reason".into(),
            json!(self.closed.map(|c| c.2.as_str())),
        );
        let snapshot_seq = self
            .received
            .iter()
            .filter(|(_, (_, snap))| *snap)
            .map(|(seq, _)| *seq)
            .max()
            .unwrap_or(0);
        let mut contiguous = snapshot_seq;
        while self.received.contains_key(&(contiguous + 1)) {
            contiguous += 1;
        }
        let seq_hw = self.received.keys().max().copied().unwrap_or(0);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &seq in self.received.keys().filter(|&&seq| seq > contiguous) {
            match runs.last_mut() {
                Some((_, last)) if *last + 1 == seq => *last = seq,
                _ => runs.push((seq, seq)),
            }
        }
        let flat: Vec<u64> = runs.iter().flat_map(|&(a, b)| [a, b]).collect();
        row.insert("seq_hw".into(), json!(seq_hw));
        row.insert("snapshot_seq".into(), json!(snapshot_seq));
        row.insert("contiguous_seq".into(), json!(contiguous));
        row.insert("pending_runs".into(), json!(flat));
        row.insert("pending_overflow".into(), json!(false));
        row.insert("pending_seqs".into(), json!([]));
        row.insert("inventory_seq".into(), json!(0));
        row.insert("needs_resync".into(), json!(seq_hw > contiguous));
        Value::Object(row)
    }

    /// The `device_mdns_services` and `device_dial_apps` rows as JSON, in position order.
    fn children(&self, session: SessionId) -> (Vec<Value>, Vec<Value>) {
        let session = session.as_uuid().to_string();
        let mut mdns = Vec::new();
        if let Some((_, Field::MdnsServices(services))) = self.fields.get(&FieldId::MdnsServices) {
            for (position, s) in services.iter().enumerate() {
                let txt: Vec<Value> = s
                    .txt
                    .iter()
                    .map(|entry| {
                        let key = storable(&entry.key);
                        match &entry.value {
                            None => json!({"key": key, "value": null}),
                            Some(v) => match v.as_str().filter(|t| !t.contains('\0')) {
                                Some(text) => json!({"key": key, "value": text}),
                                None => json!({"key": key, "value_hex": hex(v.as_bytes())}),
                            },
                        }
                    })
                    .collect();
                mdns.push(json!({
                    "session": session,
                    "position": position,
                    "service_type": storable(&s.service_type),
                    "instance": storable(&s.instance),
                    "port": s.port,
                    "txt": txt,
                }));
            }
        }
        let mut dial = Vec::new();
        if let Some((_, Field::DialApps(apps))) = self.fields.get(&FieldId::DialApps) {
            for (position, app) in apps.iter().enumerate() {
                let (state, detail) = match &app.state {
                    DialAppState::Running => ("running", None),
                    DialAppState::Stopped => ("stopped", None),
                    DialAppState::Installable(url) => ("installable", Some(storable(url))),
                    DialAppState::Hidden => ("hidden", None),
                    DialAppState::Other(text) => ("other", Some(storable(text))),
                };
                dial.push(json!({
                    "session": session,
                    "position": position,
                    "name": storable(&app.name),
                    "state": state,
                    "state_detail": detail,
                    "additional_data": app.additional_data.as_deref().map(storable),
                }));
            }
        }
        (mdns, dial)
    }
}

/// PostgreSQL text cannot hold NUL: the sink stores U+FFFD instead (byte strings stay exact).
fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `to_jsonb` of a `BYTEA`: `\x` and hex.
fn bytea(bytes: Option<&[u8]>) -> Value {
    json!(bytes.map(|b| format!("\\x{}", hex(b))))
}

/// The value columns of a field as `to_jsonb` shows them (all null when never written).
fn value_columns(id: FieldId, field: Option<&Field>) -> Vec<(&'static str, Value)> {
    let Some(field) = field else {
        return match id {
            FieldId::MdnsServices | FieldId::DialApps => vec![],
            FieldId::Reachability => vec![
                ("reachability", Value::Null),
                ("reachability_evidence", Value::Null),
                ("reachability_rtt_us", Value::Null),
            ],
            FieldId::FirstSeen => vec![("first_seen_ms", Value::Null)],
            FieldId::LastSeen => vec![("last_seen_ms", Value::Null)],
            other => vec![(other.name(), Value::Null)],
        };
    };
    let text = |t: &Option<rae_proto::Text>| bytea(t.as_ref().map(|t| t.as_bytes()));
    match field {
        Field::Mac(mac) => vec![("mac", json!(mac.to_string()))],
        Field::Ipv4(ip) => vec![("ipv4", json!(ip.map(|ip| ip.to_string())))],
        Field::Ipv6(ips) => {
            let list: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
            vec![("ipv6", json!(list))]
        }
        Field::DhcpClientId(id) => vec![("dhcp_client_id", bytea(id.as_deref()))],
        Field::Hostname(name) => vec![("hostname", text(name))],
        Field::Vendor(v) => vec![("vendor", json!(v.as_deref().map(storable)))],
        Field::LocallyAdministered(flag) => vec![("locally_administered", json!(flag))],
        Field::DhcpVendorClass(class) => vec![("dhcp_vendor_class", text(class))],
        Field::DhcpParamRequestList(list) => {
            vec![("dhcp_param_request_list", bytea(Some(list)))]
        }
        Field::MdnsServices(_) | Field::DialApps(_) => vec![],
        Field::Upnp(upnp) => vec![(
            "upnp",
            upnp.as_ref().map_or(Value::Null, |u| {
                let s = |v: &Option<String>| json!(v.as_deref().map(storable));
                json!({
                    "friendly_name": s(&u.friendly_name),
                    "manufacturer": s(&u.manufacturer),
                    "model_name": s(&u.model_name),
                    "model_number": s(&u.model_number),
                    "serial_number": s(&u.serial_number),
                    "udn": s(&u.udn),
                })
            }),
        )],
        Field::Esn(esn) => vec![("esn", json!(esn.as_deref().map(storable)))],
        Field::Reachability(r) => vec![
            ("reachability", json!(r.state.as_str())),
            ("reachability_evidence", json!(r.evidence.to_string())),
            ("reachability_rtt_us", json!(r.rtt_us)),
        ],
        Field::Availability(a) => vec![("availability", json!(a.as_str()))],
        Field::FirstSeen(ms) => vec![("first_seen_ms", json!(ms))],
        Field::LastSeen(ms) => vec![("last_seen_ms", json!(ms))],
    }
}

/// The stored session row and its child rows, as JSON.
async fn stored(db: &Db, session: SessionId) -> (Value, Vec<Value>, Vec<Value>) {
    let id = *session.as_uuid();
    let row: String = sqlx::query_scalar(
        "SELECT (to_jsonb(s) - 'received_at')::TEXT FROM device_sessions s WHERE session = $1",
    )
    .bind(id)
    .fetch_one(db.pool())
    .await
    .unwrap();
    let mut children = Vec::new();
    for table in ["device_mdns_services", "device_dial_apps"] {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT to_jsonb(c)::TEXT FROM {table} c WHERE session = $1 ORDER BY position"
        ))
        .bind(id)
        .fetch_all(db.pool())
        .await
        .unwrap();
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| serde_json::from_str(r).unwrap())
            .collect();
        children.push(rows);
    }
    let dial = children.pop().unwrap();
    let mdns = children.pop().unwrap();
    (serde_json::from_str(&row).unwrap(), mdns, dial)
}

/// The columns where two row objects differ, for a readable failure.
fn differing(want: &Value, got: &Value) -> Vec<String> {
    let (Some(w), Some(g)) = (want.as_object(), got.as_object()) else {
        return vec![format!("want {want}, got {got}")];
    };
    let keys: BTreeSet<&String> = w.keys().chain(g.keys()).collect();
    keys.into_iter()
        .filter(|k| w.get(*k) != g.get(*k))
        .map(|k| format!("{k}: model {:?}, stored {:?}", w.get(k), g.get(k)))
        .collect()
}

#[derive(Debug, Clone)]
struct Case {
    histories: Vec<History>,
    /// Extra copies of each delivered event.
    copies: Vec<usize>,
    /// Drives the shuffle and the batch cuts.
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (vec(history(), 1..=10), vec(0..3usize, 64), any::<u64>()).prop_map(
        |(histories, copies, seed)| Case {
            histories,
            copies,
            seed,
        },
    )
}

/// xorshift64*: enough to shuffle, and the seed is what proptest shrinks.
struct Shuffler(u64);

impl Shuffler {
    fn next(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % bound.max(1)
    }
}

static CASE: AtomicUsize = AtomicUsize::new(0);

/// Largest batch the shuffled writer gets: room for many sessions in one transaction.
const MAX_BATCH: usize = 40;

async fn check(in_order: &Db, shuffled: &Db, case: Case) -> Result<(), TestCaseError> {
    let serial = Serial::new(format!("PROP-{}", CASE.fetch_add(1, Ordering::Relaxed))).unwrap();
    // Shrinking replays a case's sessions; each run needs sessions of its own serial.
    let mut case = case;
    for history in &mut case.histories {
        history.session = SessionId::from_uuid(uuid::Uuid::new_v4());
    }
    let events = delivered(&serial, &case.histories);
    for event in &events {
        let outcome = in_order.write(&[raw(event)]).await.unwrap();
        if outcome.applied != 1 {
            let reasons: Vec<String> = sqlx::query_scalar("SELECT reason FROM dead_letters")
                .fetch_all(in_order.pool())
                .await
                .unwrap();
            return Err(TestCaseError::fail(format!("{outcome:?}: {reasons:?}")));
        }
    }
    let mut mixed: Vec<Raw> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        for _ in 0..=case.copies[i % case.copies.len()] {
            mixed.push(raw(event));
        }
    }
    let mut rng = Shuffler(case.seed | 1);
    for i in (1..mixed.len()).rev() {
        mixed.swap(i, rng.next(i + 1));
    }
    let mut rest = &mixed[..];
    while !rest.is_empty() {
        let take = 1 + rng.next(rest.len().min(MAX_BATCH));
        let (batch, tail) = rest.split_at(take);
        let outcome = shuffled.write(batch).await.unwrap();
        prop_assert_eq!((outcome.applied, outcome.dead_lettered), (batch.len(), 0));
        rest = tail;
    }
    let want = rows_of(in_order, serial.as_str()).await;
    let got = rows_of(shuffled, serial.as_str()).await;
    prop_assert_eq!(&want, &got, "rows differ from in-order application");

    // Every column of every session and child row against the independent model.
    for history in &case.histories {
        let mut model = Model::default();
        let events = history.delivered(&serial);
        if events.is_empty() {
            let rows: i64 =
                sqlx::query_scalar("SELECT count(*) FROM device_sessions WHERE session = $1")
                    .bind(*history.session.as_uuid())
                    .fetch_one(shuffled.pool())
                    .await
                    .unwrap();
            prop_assert_eq!(rows, 0, "a session with no delivered event has no row");
            continue;
        }
        events.iter().for_each(|e| model.apply(e));
        let (row, mdns, dial) = stored(shuffled, history.session).await;
        let want_row = model.row(&serial, history.session);
        prop_assert!(
            want_row == row,
            "session row differs from the model: {:#?}",
            differing(&want_row, &row)
        );
        let (want_mdns, want_dial) = model.children(history.session);
        prop_assert_eq!(want_mdns, mdns, "mDNS service rows");
        prop_assert_eq!(want_dial, dial, "DIAL app rows");
    }
    Ok(())
}

#[test]
fn any_order_duplicates_and_batching_give_the_rows_of_in_order_application() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pg = Postgres::start().unwrap();
    let (in_order, shuffled) = runtime.block_on(async {
        (
            database(&pg, "in_order").await,
            database(&pg, "shuffled").await,
        )
    });
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        runtime.block_on(check(&in_order, &shuffled, case))
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

// ---------------------------------------------------------------------------------------
// Focused behaviour.

#[tokio::test]
async fn a_gap_sets_needs_resync_and_a_snapshot_clears_it_even_with_a_repeated_seq() {
    let pg = Postgres::start().unwrap();
    let db = database(&pg, "gaps").await;
    let serial = Serial::new("RAE-GAP").unwrap();
    let id = SessionId::from_bytes([1; 16]);
    let mut device = record(1);
    let ipv4 = |last| Field::Ipv4(Some(std::net::Ipv4Addr::new(198, 18, 0, last)));
    db.write(&[raw(&envelope(&serial, id, 1, 1, snapshot(&device)))])
        .await
        .unwrap();
    db.write(&[raw(&envelope(
        &serial,
        id,
        2,
        2,
        Event::Delta {
            fields: vec![ipv4(2)],
        },
    ))])
    .await
    .unwrap();
    assert!(!session_row(&db, id).await.get::<bool, _>("needs_resync"));

    // seq 3 never arrives.
    db.write(&[raw(&envelope(
        &serial,
        id,
        4,
        4,
        Event::Delta {
            fields: vec![ipv4(4)],
        },
    ))])
    .await
    .unwrap();
    let row = session_row(&db, id).await;
    assert!(row.get::<bool, _>("needs_resync"), "seq 3 is missing");
    assert_eq!(
        row.get::<Option<String>, _>("ipv4").as_deref(),
        Some("198.18.0.4")
    );

    // After a power loss the agent coalesces into a Snapshot that repeats seq 4.
    device.apply(ipv4(4));
    db.write(&[raw(&envelope(&serial, id, 4, 5, snapshot(&device)))])
        .await
        .unwrap();
    let row = session_row(&db, id).await;
    assert!(
        !row.get::<bool, _>("needs_resync"),
        "the Snapshot at seq 4 closes the gap"
    );
    assert_eq!(row.get::<i64, _>("seq_hw"), 4);
    assert_eq!(row.get::<i64, _>("snapshot_seq"), 4);

    // An old Delta arriving late changes nothing.
    db.write(&[raw(&envelope(
        &serial,
        id,
        3,
        3,
        Event::Delta {
            fields: vec![ipv4(3)],
        },
    ))])
    .await
    .unwrap();
    let row = session_row(&db, id).await;
    assert_eq!(
        row.get::<Option<String>, _>("ipv4").as_deref(),
        Some("198.18.0.4")
    );
    assert!(!row.get::<bool, _>("needs_resync"));
}

#[tokio::test]
async fn bad_records_become_dead_letters_with_their_origin() {
    let pg = Postgres::start().unwrap();
    let db = database(&pg, "dead").await;
    let serial = Serial::new("RAE-DL").unwrap();
    let id = SessionId::from_bytes([2; 16]);
    let good = raw(&envelope(&serial, id, 1, 1, snapshot(&record(2))));
    let undecodable = Raw {
        topic: Some(format!("rae/v1/RAE-DL/devices/{id}")),
        payload: vec![1, 0xff, 0xff],
        origin: Origin::Kafka {
            topic: "rae-events".into(),
            partition: 7,
            offset: 42,
        },
    };
    let mut foreign = raw(&envelope(
        &Serial::new("RAE-OTHER").unwrap(),
        id,
        2,
        2,
        snapshot(&record(2)),
    ));
    foreign.topic = Some(format!("rae/v1/RAE-DL/devices/{id}"));
    let unknown_topic = Raw {
        topic: Some("rae/v1/RAE-DL/weather".into()),
        payload: vec![1, 2, 3],
        origin: Origin::Mqtt {
            lane: 5,
            pkid: Some(9),
        },
    };
    let batch = vec![good, undecodable, foreign, unknown_topic];
    let outcome = db.write(&batch).await.unwrap();
    assert_eq!((outcome.applied, outcome.dead_lettered), (1, 3));

    let rows = sqlx::query(
        "SELECT topic, source, kafka_topic, kafka_partition, kafka_offset, mqtt_lane, mqtt_pkid, \
         payload, reason FROM dead_letters ORDER BY reason",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    let reasons: Vec<String> = rows.iter().map(|r| r.get("reason")).collect();
    assert!(
        reasons.iter().any(|r| r.contains("undecodable payload")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("differs from the topic")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unknown topic kind `weather`")),
        "{reasons:?}"
    );
    let kafka = rows
        .iter()
        .find(|r| r.get::<Option<i64>, _>("kafka_offset") == Some(42))
        .expect("the undecodable record's dead letter names its Kafka offset");
    assert_eq!(kafka.get::<String, _>("source"), "kafka");
    assert_eq!(kafka.get::<Option<i64>, _>("kafka_partition"), Some(7));
    assert_eq!(kafka.get::<Vec<u8>, _>("payload"), vec![1, 0xff, 0xff]);
    let mqtt = rows
        .iter()
        .find(|r| r.get::<String, _>("source") == "mqtt")
        .expect("the unknown topic's dead letter");
    assert_eq!(mqtt.get::<Option<i64>, _>("mqtt_lane"), Some(5));
    assert_eq!(mqtt.get::<Option<i64>, _>("mqtt_pkid"), Some(9));
    assert_eq!(
        mqtt.get::<Option<String>, _>("topic").as_deref(),
        Some("rae/v1/RAE-DL/weather")
    );

    // A Kafka batch replayed after a crash records its dead letters once.
    db.write(&batch[..3]).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE source = 'kafka'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(count, 2);
    assert_eq!(
        session_row(&db, id).await.get::<String, _>("serial"),
        "RAE-DL"
    );
}

fn inventory(serial: &Serial, at_ms: i64, sessions: &[(SessionId, u64)]) -> Raw {
    let inventory = Inventory {
        serial: serial.clone(),
        at_ms,
        sessions: sessions
            .iter()
            .map(|&(session, seq)| SessionSeq { session, seq })
            .collect(),
    };
    Raw {
        topic: Some(inventory.topic().to_string()),
        payload: inventory.encode().unwrap(),
        origin: kafka(),
    }
}

fn status(serial: &Serial, state: AgentState, at_ms: i64) -> Raw {
    let status = Status {
        serial: serial.clone(),
        state,
        agent_version: "0.1.0".into(),
        at_ms,
    };
    Raw {
        topic: Some(status.topic().to_string()),
        payload: status.encode().unwrap(),
        origin: kafka(),
    }
}

#[tokio::test]
async fn an_inventory_closes_only_its_own_unlisted_sessions_and_status_updates_the_rae() {
    let pg = Postgres::start().unwrap();
    let db = database(&pg, "inventory").await;
    let a = Serial::new("RAE-A").unwrap();
    let b = Serial::new("RAE-B").unwrap();
    let [listed, gone, later, other] = [11, 12, 13, 14].map(|n| SessionId::from_bytes([n; 16]));
    db.write(&[
        raw(&envelope(&a, listed, 1, 100, snapshot(&record(11)))),
        raw(&envelope(&a, gone, 1, 100, snapshot(&record(12)))),
        raw(&envelope(&a, later, 1, 300, snapshot(&record(13)))),
        raw(&envelope(&b, other, 1, 100, snapshot(&record(14)))),
    ])
    .await
    .unwrap();

    // Taken at 200, before `later` opened; it knows of seq 5 of `listed`.
    let outcome = db
        .write(&[inventory(&a, 200, &[(listed, 5)])])
        .await
        .unwrap();
    assert_eq!(outcome.applied, 1);
    let closed = |row: &sqlx::postgres::PgRow| row.get::<Option<String>, _>("close_reason");
    assert_eq!(
        closed(&session_row(&db, gone).await).as_deref(),
        Some("unlisted")
    );
    assert_eq!(
        session_row(&db, gone)
            .await
            .get::<Option<i64>, _>("closed_at_ms"),
        Some(200)
    );
    let row = session_row(&db, listed).await;
    assert_eq!(closed(&row), None);
    assert!(
        row.get::<bool, _>("needs_resync"),
        "seqs 2..5 were not received"
    );
    assert_eq!(
        closed(&session_row(&db, later).await),
        None,
        "opened after the inventory"
    );
    assert_eq!(
        closed(&session_row(&db, other).await),
        None,
        "another RAE's session"
    );

    // The RAE's own Closed event overrides the inventory's closing.
    db.write(&[raw(&envelope(
        &a,
        gone,
        2,
        150,
        Event::Closed {
            reason: CloseReason::Gone,
        },
    ))])
    .await
    .unwrap();
    assert_eq!(
        closed(&session_row(&db, gone).await).as_deref(),
        Some("gone")
    );

    let rae = |serial: &'static str| {
        let db = &db;
        async move {
            sqlx::query("SELECT *, status_changed_at::TEXT AS changed FROM raes WHERE serial = $1")
                .bind(serial)
                .fetch_one(db.pool())
                .await
                .unwrap()
        }
    };
    let row = rae("RAE-A").await;
    assert_eq!(row.get::<Option<i64>, _>("inventory_at_ms"), Some(200));
    assert_eq!(row.get::<Option<i64>, _>("inventory_sessions"), Some(1));
    assert_eq!(row.get::<Option<String>, _>("status"), None);

    db.write(&[status(&a, AgentState::Online, 1_000)])
        .await
        .unwrap();
    let online = rae("RAE-A").await;
    assert_eq!(
        online.get::<Option<String>, _>("status").as_deref(),
        Some("online")
    );
    assert_eq!(
        online.get::<Option<String>, _>("agent_version").as_deref(),
        Some("0.1.0")
    );
    // The Last Will carries the time of the connect it belongs to, and comes after it.
    db.write(&[status(&a, AgentState::Offline, 1_000)])
        .await
        .unwrap();
    let offline = rae("RAE-A").await;
    assert_eq!(
        offline.get::<Option<String>, _>("status").as_deref(),
        Some("offline")
    );
    let changed = |row: &sqlx::postgres::PgRow| row.get::<Option<String>, _>("changed");
    assert!(changed(&online).is_some());
    assert_ne!(
        changed(&online),
        changed(&offline),
        "the change to offline is dated"
    );
    // A stale online (an older connect) does not undo it.
    db.write(&[status(&a, AgentState::Online, 500)])
        .await
        .unwrap();
    let stale = rae("RAE-A").await;
    assert_eq!(
        stale.get::<Option<String>, _>("status").as_deref(),
        Some("offline")
    );
    assert_eq!(changed(&stale), changed(&offline));
}

#[tokio::test]
async fn a_serialization_failure_is_retried_to_success() {
    let pg = Postgres::start().unwrap();
    let db = database(&pg, "conflict").await;
    let url = pg.url("conflict");
    let serial = Serial::new("RAE-SER").unwrap();
    let id = SessionId::from_bytes([3; 16]);
    db.write(&[raw(&envelope(&serial, id, 1, 1, snapshot(&record(3))))])
        .await
        .unwrap();

    // Another writer holds the session row while the batch starts.
    let mut blocker = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("UPDATE device_sessions SET esn = 'held' WHERE session = $1")
        .bind(*id.as_uuid())
        .execute(&mut blocker)
        .await
        .unwrap();
    let delta = raw(&envelope(
        &serial,
        id,
        2,
        2,
        Event::Delta {
            fields: vec![Field::Esn(Some("ESN-42".into()))],
        },
    ));
    let write = {
        let batch = vec![delta];
        let db = &db;
        async move { db.write(&batch).await }
    };
    let wait_for_block = async {
        let mut watcher = sqlx::PgConnection::connect(&url).await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = 'conflict' AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut watcher)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the batch never waited for the held row within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
    };
    let (outcome, ()) = tokio::join!(write, wait_for_block);
    let outcome = outcome.expect("the batch commits after retrying");
    assert!(outcome.retries >= 1, "{outcome:?}");
    assert_eq!(outcome.applied, 1);
    assert_eq!(
        session_row(&db, id)
            .await
            .get::<Option<String>, _>("esn")
            .as_deref(),
        Some("ESN-42")
    );
}

#[tokio::test]
async fn a_lost_connection_is_retried_without_losing_the_batch() {
    let mut pg = Postgres::start().unwrap();
    let db = database(&pg, "outage").await;
    let serial = Serial::new("RAE-OUT").unwrap();
    let id = SessionId::from_bytes([4; 16]);
    pg.stop().unwrap();
    let batch = vec![raw(&envelope(&serial, id, 1, 1, snapshot(&record(4))))];
    let before = db.retries_total();
    let write = db.write(&batch);
    let restart = async {
        let deadline = tokio::time::Instant::now() + WAIT;
        while db.retries_total() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the writer never retried while the database was down"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pg.start_again().unwrap();
    };
    let (outcome, ()) = tokio::join!(write, restart);
    let outcome = outcome.expect("the batch commits once the database is back");
    assert!(outcome.retries >= 1);
    assert_eq!(outcome.applied, 1);
    assert_eq!(
        session_row(&db, id).await.get::<String, _>("serial"),
        "RAE-OUT"
    );
}

#[tokio::test]
async fn a_record_the_database_rejects_is_isolated_and_dead_lettered_alone() {
    let pg = Postgres::start().unwrap();
    let db = database(&pg, "poison").await;
    // Stands in for any value a future schema or CockroachDB may refuse (SQLSTATE class 23).
    sqlx::raw_sql(
        "ALTER TABLE device_sessions ADD CONSTRAINT no_poison CHECK (vendor IS DISTINCT FROM 'poison')",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let serial = Serial::new("RAE-POISON").unwrap();
    let sessions: Vec<SessionId> = (0..5)
        .map(|n| SessionId::from_bytes([40 + n; 16]))
        .collect();
    let mut batch: Vec<Raw> = sessions
        .iter()
        .map(|&id| raw(&envelope(&serial, id, 1, 1, snapshot(&record(7)))))
        .collect();
    let mut poisoned = record(8);
    poisoned.vendor = Some("poison".into());
    batch[3] = raw(&envelope(&serial, sessions[3], 1, 1, snapshot(&poisoned)));

    let outcome = db.write(&batch).await.unwrap();
    assert_eq!((outcome.applied, outcome.dead_lettered), (4, 1));
    for (i, id) in sessions.iter().enumerate() {
        let stored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM device_sessions WHERE session = $1")
                .bind(*id.as_uuid())
                .fetch_one(db.pool())
                .await
                .unwrap();
        assert_eq!(stored, i64::from(i != 3), "session {i}");
    }
    let reason: String = sqlx::query_scalar("SELECT reason FROM dead_letters")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert!(
        reason.contains("the database rejected the record"),
        "{reason}"
    );
    assert!(reason.contains("no_poison"), "{reason}");
}
