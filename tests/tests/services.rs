//! The lab's services start on free loopback ports, answer real clients, and leave nothing
//! behind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rae_tests::services::{Acl, Kafka, Mosquitto, MosquittoOptions, MqttUser, Postgres};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use sqlx::{Connection, Row};

const WAIT: Duration = Duration::from_secs(20);

fn mqtt_client(broker: &Mosquitto, id: &str, user: Option<&MqttUser>) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, broker.host(), broker.port());
    options.set_keep_alive(Duration::from_secs(10));
    if let Some(user) = user {
        options.set_credentials(&user.name, &user.password);
    }
    AsyncClient::new(options, 16)
}

/// Polls the event loop until `pick` returns a value; fails naming `what` after [`WAIT`].
async fn next_matching<T>(
    events: &mut EventLoop,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.poll())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("connection failed while waiting for {what}: {e}"));
        if let Some(found) = pick(&event) {
            return found;
        }
    }
}

async fn connack(events: &mut EventLoop) {
    next_matching(events, "CONNACK", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
    })
    .await;
}

fn assert_dir_gone(dir: PathBuf) {
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[tokio::test]
async fn mosquitto_delivers_between_clients_on_a_free_port() {
    let started = Instant::now();
    let broker = Mosquitto::start().unwrap();
    eprintln!(
        "mosquitto ready in {:?} on {}",
        started.elapsed(),
        broker.url()
    );
    let dir = broker.dir().to_owned();

    let (sub, mut sub_events) = mqtt_client(&broker, "lab-sub", None);
    sub.subscribe("rae/v1/+/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    next_matching(&mut sub_events, "SUBACK", |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())
    })
    .await;

    let (publisher, mut pub_events) = mqtt_client(&broker, "lab-pub", None);
    publisher
        .publish("rae/v1/A/status", QoS::AtLeastOnce, false, "online")
        .await
        .unwrap();
    let reason = next_matching(&mut pub_events, "PUBACK", |e| match e {
        Event::Incoming(Packet::PubAck(ack)) => Some(ack.reason),
        _ => None,
    })
    .await;
    assert!(
        matches!(
            reason,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        ),
        "publish refused: {reason:?}"
    );

    let (topic, payload) = next_matching(&mut sub_events, "the published message", |e| match e {
        Event::Incoming(Packet::Publish(p)) => Some((p.topic.clone(), p.payload.clone())),
        _ => None,
    })
    .await;
    assert_eq!(&topic[..], b"rae/v1/A/status");
    assert_eq!(&payload[..], b"online");

    drop(broker);
    assert_dir_gone(dir);
}

#[tokio::test]
async fn mosquitto_acl_keeps_each_rae_to_its_own_topics() {
    let rae_a = MqttUser::new("A", "secret-a");
    let rae_b = MqttUser::new("B", "secret-b");
    let cloud = MqttUser::new("cloud", "secret-cloud");
    let broker = Mosquitto::start_with_acl(
        &[rae_a.clone(), rae_b.clone(), cloud.clone()],
        &Acl::rae_fleet("cloud"),
    )
    .unwrap();
    assert_eq!(broker.user("A"), Some(&rae_a));

    // The cloud user reads everything, so it sees what A may publish.
    let (watcher, mut watcher_events) = mqtt_client(&broker, "cloud-1", Some(&cloud));
    watcher
        .subscribe("rae/v1/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let granted = next_matching(&mut watcher_events, "SUBACK", |e| match e {
        Event::Incoming(Packet::SubAck(ack)) => Some(ack.return_codes.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(granted[..], [SubscribeReasonCode::Success(_)]),
        "cloud may not read rae/v1/#: {granted:?}"
    );

    let (client, mut events) = mqtt_client(&broker, "rae-A", Some(&rae_a));
    connack(&mut events).await;
    client
        .publish("rae/v1/A/status", QoS::AtLeastOnce, true, "online")
        .await
        .unwrap();
    let own = next_matching(&mut events, "PUBACK for rae/v1/A/status", |e| match e {
        Event::Incoming(Packet::PubAck(ack)) => Some(ack.reason),
        _ => None,
    })
    .await;
    assert_eq!(own, PubAckReason::Success, "A may write its own status");

    client
        .publish("rae/v1/B/status", QoS::AtLeastOnce, true, "offline")
        .await
        .unwrap();
    let foreign = next_matching(&mut events, "PUBACK for rae/v1/B/status", |e| match e {
        Event::Incoming(Packet::PubAck(ack)) => Some(ack.reason),
        _ => None,
    })
    .await;
    assert_eq!(
        foreign,
        PubAckReason::NotAuthorized,
        "A must not write B's status"
    );

    let (topic, payload) = next_matching(
        &mut watcher_events,
        "A's status at the cloud",
        |e| match e {
            Event::Incoming(Packet::Publish(p)) => Some((p.topic.clone(), p.payload.clone())),
            _ => None,
        },
    )
    .await;
    assert_eq!(
        (&topic[..], &payload[..]),
        (&b"rae/v1/A/status"[..], &b"online"[..])
    );

    let wrong = MqttUser::new("A", "not-the-password");
    let (_intruder, mut intruder_events) = mqtt_client(&broker, "rae-A-2", Some(&wrong));
    let refused = tokio::time::timeout(WAIT, intruder_events.poll())
        .await
        .expect("no answer to a CONNECT with a wrong password");
    match refused {
        Err(ConnectionError::ConnectionRefused(code)) => assert!(
            matches!(
                code,
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
            ),
            "refused with {code:?}"
        ),
        other => panic!("a wrong password was not refused at connect: {other:?}"),
    }
}

#[tokio::test]
async fn mosquitto_with_persistence_keeps_retained_messages_across_a_restart() {
    let mut broker = Mosquitto::start_with(MosquittoOptions {
        persistence: true,
        auth: None,
    })
    .unwrap();
    let port = broker.port();
    let (client, mut events) = mqtt_client(&broker, "rae-A", None);
    client
        .publish("rae/v1/A/status", QoS::AtLeastOnce, true, "online")
        .await
        .unwrap();
    next_matching(&mut events, "PUBACK", |e| {
        matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
    })
    .await;
    drop((client, events));

    broker.stop().unwrap();
    broker.start_again().unwrap();
    assert_eq!(broker.port(), port);

    let (sub, mut sub_events) = mqtt_client(&broker, "cloud-1", None);
    sub.subscribe("rae/v1/A/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (payload, retained) = next_matching(&mut sub_events, "the retained status", |e| match e {
        Event::Incoming(Packet::Publish(p)) => Some((p.payload.clone(), p.retain)),
        _ => None,
    })
    .await;
    assert_eq!((&payload[..], retained), (&b"online"[..], true));
}

#[tokio::test]
async fn postgres_clusters_are_serializable_and_independent() {
    let started = Instant::now();
    let first = Postgres::start().unwrap();
    eprintln!(
        "postgres ready in {:?} on port {}",
        started.elapsed(),
        first.port()
    );
    let second = Postgres::start().unwrap();
    assert_ne!(first.port(), second.port());
    let dirs = [first.dir().to_owned(), second.dir().to_owned()];

    for (pg, value) in [(&first, 1_i64), (&second, 2_i64)] {
        let url = pg.create_database("lab").await.unwrap();
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let isolation: String = sqlx::query_scalar("SHOW default_transaction_isolation")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(isolation, "serializable");
        sqlx::raw_sql("CREATE TABLE t (id UUID PRIMARY KEY, v INT8 NOT NULL)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t (id, v) VALUES ($1, $2)")
            .bind(uuid::Uuid::new_v4())
            .bind(value)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    // Each cluster holds only its own row.
    for (pg, value) in [(&first, 1_i64), (&second, 2_i64)] {
        let mut conn = sqlx::PgConnection::connect(&pg.url("lab")).await.unwrap();
        let rows = sqlx::query("SELECT v FROM t")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let values: Vec<i64> = rows.iter().map(|r| r.get("v")).collect();
        assert_eq!(values, vec![value]);
        conn.close().await.unwrap();
    }

    drop(first);
    drop(second);
    dirs.into_iter().for_each(assert_dir_gone);
}

#[tokio::test]
async fn postgres_keeps_its_data_across_stop_and_start_again() {
    let mut pg = Postgres::start().unwrap();
    let url = pg.create_database("outage").await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t (v INT8); INSERT INTO t VALUES (7)")
        .execute(&mut conn)
        .await
        .unwrap();

    pg.stop().unwrap();
    assert!(
        sqlx::query("SELECT 1").execute(&mut conn).await.is_err(),
        "a stopped server still answered"
    );
    assert!(sqlx::PgConnection::connect(&url).await.is_err());

    pg.start_again().unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let v: i64 = sqlx::query_scalar("SELECT v FROM t")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, 7);
}

#[tokio::test]
async fn kafka_round_trip_keeps_keys_and_per_key_order() {
    const RECORDS: usize = 300;
    const KEYS: usize = 10;
    let started = Instant::now();
    let kafka = Kafka::start().unwrap();
    eprintln!(
        "kafka ready in {:?} on {}",
        started.elapsed(),
        kafka.bootstrap_servers()
    );
    let dir = kafka.dir().to_owned();
    kafka.create_topic("lab.events", 3).await.unwrap();

    let producer: FutureProducer = kafka
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    // Enqueue everything first so the producer batches; the idempotent producer keeps
    // each partition's order even with many requests in flight.
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    let mut deliveries = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let key = format!("rae/v1/A/devices/session-{}", i % KEYS);
        let value = format!("event-{i}");
        let delivery = producer
            .send_result(FutureRecord::to("lab.events").key(&key).payload(&value))
            .unwrap_or_else(|(e, _)| panic!("record {i} not enqueued: {e}"));
        deliveries.push(delivery);
        sent.entry(key).or_default().push(value);
    }
    for (i, delivery) in deliveries.into_iter().enumerate() {
        tokio::time::timeout(WAIT, delivery)
            .await
            .unwrap_or_else(|_| panic!("record {i} not acknowledged within {WAIT:?}"))
            .expect("producer dropped the delivery")
            .unwrap_or_else(|(e, _)| panic!("record {i} refused: {e}"));
    }

    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", "lab-round-trip")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["lab.events"]).unwrap();
    let mut received: HashMap<String, Vec<String>> = HashMap::new();
    let mut partitions_by_key: HashMap<String, i32> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut count = 0;
    while count < RECORDS {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {count} of {RECORDS} records consumed within 60 s"))
            .unwrap();
        let key = String::from_utf8(message.key().expect("record without key").to_vec()).unwrap();
        let value = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
        let partition = *partitions_by_key
            .entry(key.clone())
            .or_insert(message.partition());
        assert_eq!(
            partition,
            message.partition(),
            "key {key} spread over partitions"
        );
        received.entry(key).or_default().push(value);
        count += 1;
    }
    assert_eq!(
        received, sent,
        "records lost, duplicated or reordered within a key"
    );
    let used: std::collections::HashSet<i32> = partitions_by_key.values().copied().collect();
    assert!(
        used.len() > 1,
        "all {KEYS} keys landed in one partition: {used:?}"
    );

    drop(consumer);
    drop(producer);
    drop(kafka);
    assert_dir_gone(dir);
}

#[tokio::test]
async fn kafka_keeps_records_across_stop_and_start_again() {
    let mut kafka = Kafka::start().unwrap();
    kafka.create_topic("lab.outage", 1).await.unwrap();
    let producer: FutureProducer = kafka.client_config().create().unwrap();
    producer
        .send(
            FutureRecord::to("lab.outage").key("k").payload("before"),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("record not acknowledged: {e}"));
    drop(producer);

    let port = kafka.port();
    kafka.stop().unwrap();
    kafka.start_again().unwrap();
    assert_eq!(kafka.port(), port);

    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", "lab-outage")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["lab.outage"]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("the record written before the restart did not arrive within 60 s")
        .unwrap();
    assert_eq!(message.payload(), Some(&b"before"[..]));
}

/// Processes whose command line names `dir` (PostgreSQL's backends name it through
/// cluster_name in their process titles).
fn processes_naming(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline
                .contains(&needle)
                .then(|| format!("{}: {cmdline}", e.file_name().to_string_lossy()))
        })
        .collect()
}

#[test]
fn a_panicking_test_leaves_no_process_or_directory() {
    let dirs = std::sync::Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(|| {
        let broker = Mosquitto::start().unwrap();
        let pg = Postgres::start().unwrap();
        for dir in [broker.dir(), pg.dir()] {
            assert!(
                !processes_naming(dir).is_empty(),
                "no process names {}",
                dir.display()
            );
            dirs.lock().unwrap().push(dir.to_owned());
        }
        panic!("the test fails while its services run");
    });
    assert!(outcome.is_err());
    let dirs = dirs.into_inner().unwrap();
    assert_eq!(dirs.len(), 2);
    for dir in dirs {
        assert_eq!(processes_naming(&dir), Vec::<String>::new(), "left running");
        assert_dir_gone(dir);
    }
}
