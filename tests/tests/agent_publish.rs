//! The agent's publisher against a real mosquitto: outbox rows arrive decoded and in seq order
//! per session and leave the outbox only once acknowledged; the retained status says `online`,
//! the Last Will says `offline` when the agent dies and a clean shutdown leaves `offline`; a
//! broker outage loses nothing; a broker that refuses the devices topic (ACL, reason 0x87)
//! leaves the rows in the outbox; rows nobody subscribed to (0x10) leave it and are counted; the
//! inventory carries the sessions it is given.
//!
//! Needs root (mosquitto runs as its own system user) and the mosquitto package.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rae_agent::publish::{
    self, Credentials, Fault, FaultKind, PublishError, PublisherSettings, PublisherStatus,
};
use rae_agent::registry::{Cause, Change};
use rae_agent::store::{OutboxStats, Store, StoreHandle, StoreOptions, StoreThreadOptions};
use rae_proto::{
    AgentState, DeviceRecord, Envelope, Event, Evidence, Field, Inventory, Mac, Serial, SessionId,
    SessionSeq, Status, Text,
};
use rae_tests::services::{Acl, Mosquitto, MosquittoOptions, MqttUser};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);
const SERIAL: &str = "RAE-pub-1";
const PASSWORD: &str = "rae-lab-secret";

fn serial() -> Serial {
    Serial::new(SERIAL).unwrap()
}

fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

fn settings(broker: &Mosquitto) -> PublisherSettings {
    PublisherSettings {
        serial: serial(),
        host: broker.host().to_owned(),
        port: broker.port(),
        client_id: format!("{SERIAL}-agent"),
        keep_alive: Duration::from_secs(5),
        tcp_send_buffer: None,
        inventory_interval: Duration::from_secs(3600),
        max_in_flight: 4,
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        agent_version: "0.0.0-test".to_owned(),
        tls: None,
        credentials: None,
        fault: None,
    }
}

/// The store thread on a database in a temporary directory.
struct Outbox {
    handle: StoreHandle,
    _dir: tempfile::TempDir,
}

impl Outbox {
    fn open() -> Outbox {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("registry.db"), StoreOptions::default()).unwrap();
        let (handle, _thread) =
            StoreHandle::spawn(store, serial(), StoreThreadOptions::default()).unwrap();
        Outbox { handle, _dir: dir }
    }

    /// Commits the Changes now; they become outbox rows.
    async fn commit(&self, changes: Vec<Change>) {
        self.handle.submit(changes).await.unwrap();
        self.handle.flush().await.unwrap();
    }

    async fn wait_rows(&self, what: &str, pred: impl FnMut(&OutboxStats) -> bool) {
        let mut watch = self.handle.outbox_watch();
        let found = tokio::time::timeout(WAIT, watch.wait_for(pred))
            .await
            .map(|r| r.is_ok());
        match found {
            Ok(true) => {}
            Ok(false) => panic!("store thread stopped while waiting for {what}"),
            Err(_) => panic!(
                "outbox never showed {what} within {WAIT:?}; it has {:?}",
                *watch.borrow()
            ),
        }
    }

    async fn rows(&self) -> u64 {
        self.handle.outbox_stats().await.unwrap().rows
    }
}

/// One device the way the registry core reports it.
struct Device {
    n: u8,
    session: SessionId,
    seq: u64,
}

impl Device {
    fn open(n: u8) -> (Device, Change) {
        let mut bytes = [0u8; 16];
        bytes[0] = n;
        bytes[6] = 0x40;
        bytes[8] = 0x80;
        let session = SessionId::from_bytes(bytes);
        let at_ms = now_ms();
        let record = DeviceRecord::new(Mac([0x02, 0, 0, 0, 0, n]), Evidence::DhcpRequest, at_ms);
        let change = Change::Opened {
            session,
            seq: 1,
            record,
            cause: Cause {
                at_ms,
                summary: format!("DHCP DISCOVER from device {n}"),
            },
        };
        (Device { n, session, seq: 1 }, change)
    }

    fn update(&mut self) -> Change {
        self.seq += 1;
        Change::Updated {
            session: self.session,
            seq: self.seq,
            mac: Mac([0x02, 0, 0, 0, 0, self.n]),
            fields: vec![Field::Hostname(Some(Text::from(format!(
                "dut-{}-{}",
                self.n, self.seq
            ))))],
            cause: Cause {
                at_ms: now_ms(),
                summary: "DHCP REQUEST option 12".to_owned(),
            },
        }
    }

    /// `count` updates of every device.
    fn updates(devices: &mut [Device], count: usize) -> Vec<Change> {
        (0..count)
            .flat_map(|_| devices.iter_mut().map(Device::update).collect::<Vec<_>>())
            .collect()
    }

    /// Every (session, seq) the devices produced so far.
    fn expected(devices: &[Device]) -> BTreeSet<(SessionId, u64)> {
        devices
            .iter()
            .flat_map(|d| (1..=d.seq).map(move |seq| (d.session, seq)))
            .collect()
    }
}

/// A publisher task with its controls.
struct Agent {
    task: JoinHandle<Result<(), PublishError>>,
    shutdown: watch::Sender<bool>,
    status: watch::Receiver<PublisherStatus>,
    inventory: watch::Sender<Vec<SessionSeq>>,
}

impl Agent {
    fn start(settings: PublisherSettings, outbox: &Outbox) -> Agent {
        Agent::spawn(settings, outbox, false)
    }

    /// Under [`publish::supervise`], as the daemon runs it.
    fn supervised(settings: PublisherSettings, outbox: &Outbox) -> Agent {
        Agent::spawn(settings, outbox, true)
    }

    fn spawn(settings: PublisherSettings, outbox: &Outbox, supervised: bool) -> Agent {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (status_tx, status) = watch::channel(PublisherStatus::default());
        let (inventory, inventory_rx) = watch::channel(Vec::new());
        let store = outbox.handle.clone();
        let task = if supervised {
            tokio::spawn(publish::supervise(
                settings,
                store,
                inventory_rx,
                status_tx,
                shutdown_rx,
                None,
            ))
        } else {
            tokio::spawn(publish::run(
                settings,
                store,
                inventory_rx,
                status_tx,
                shutdown_rx,
                None,
            ))
        };
        Agent {
            task,
            shutdown,
            status,
            inventory,
        }
    }

    async fn wait_status(
        &mut self,
        what: &str,
        pred: impl FnMut(&PublisherStatus) -> bool,
    ) -> PublisherStatus {
        let found = tokio::time::timeout(WAIT, self.status.wait_for(pred))
            .await
            .map(|r| r.map(|status| status.clone()));
        match found {
            Ok(Ok(status)) => status,
            Ok(Err(_)) => panic!(
                "publisher ended while waiting for {what}: {:?}",
                *self.status.borrow()
            ),
            Err(_) => panic!(
                "publisher status never showed {what} within {WAIT:?}; it is {:?}",
                *self.status.borrow()
            ),
        }
    }

    /// Asks for a clean shutdown and expects `run` to return Ok.
    async fn stop(self) -> PublisherStatus {
        self.shutdown.send(true).unwrap();
        let result = tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap_or_else(|_| panic!("publisher did not stop within {WAIT:?}"))
            .expect("publisher task panicked");
        if let Err(err) = result {
            panic!("publisher stopped with an error: {err}");
        }
        let status = self.status.borrow().clone();
        status
    }
}

#[derive(Debug, Clone)]
struct Message {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// An MQTT v5 client that records what arrives on one filter.
struct Subscriber {
    messages: mpsc::UnboundedReceiver<Message>,
    seen: Vec<Message>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects, subscribes (again after every reconnect) and returns once subscribed.
    /// `persistent` keeps the session, so messages wait in the broker while it is away.
    async fn start(
        broker: &Mosquitto,
        id: &str,
        filter: String,
        user: Option<&MqttUser>,
        persistent: bool,
    ) -> Subscriber {
        let mut options = MqttOptions::new(id, broker.host(), broker.port());
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(Some(1 << 20));
        if persistent {
            options.set_clean_start(false);
            options.set_session_expiry_interval(Some(600));
        }
        if let Some(user) = user {
            options.set_credentials(&user.name, &user.password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let (tx, messages) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        client
                            .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                            .unwrap();
                    }
                    Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                        subscribed_tx.send_replace(true);
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(publish))) => {
                        let message = Message {
                            topic: String::from_utf8(publish.topic.to_vec()).unwrap(),
                            payload: publish.payload.to_vec(),
                            retain: publish.retain,
                        };
                        if tx.send(message).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // The broker is away (an outage test): retry at a modest pace.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(WAIT, subscribed.wait_for(|s| *s))
            .await
            .unwrap_or_else(|_| panic!("subscriber {id} got no SUBACK within {WAIT:?}"))
            .unwrap();
        Subscriber {
            messages,
            seen: Vec::new(),
            task,
        }
    }

    /// Waits until `pick` finds something in everything received so far.
    async fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&[Message]) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(found) = pick(&self.seen) {
                return found;
            }
            match tokio::time::timeout_at(deadline, self.messages.recv()).await {
                Ok(Some(message)) => self.seen.push(message),
                Ok(None) => panic!("subscriber stopped while waiting for {what}"),
                Err(_) => panic!(
                    "no {what} within {WAIT:?}; received {} messages on {:?}",
                    self.seen.len(),
                    self.seen.iter().map(|m| &m.topic).collect::<BTreeSet<_>>()
                ),
            }
        }
    }

    /// Waits for a status message with `state` for which `pred` holds.
    async fn wait_status(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&Status, &Message) -> bool,
    ) -> Status {
        self.wait_for(what, |seen| {
            seen.iter().rev().find_map(|m| {
                let status = Status::decode(&m.payload).expect("status payloads decode");
                pred(&status, m).then_some(status)
            })
        })
        .await
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The envelopes among `seen`, decoded.
fn envelopes(seen: &[Message]) -> Vec<Envelope> {
    seen.iter()
        .map(|m| {
            let envelope = Envelope::decode(&m.payload).expect("device payloads decode");
            assert_eq!(
                m.topic,
                envelope.topic().to_string(),
                "topic matches payload"
            );
            assert_eq!(envelope.serial, serial());
            envelope
        })
        .collect()
}

/// Every expected event arrived, and each session's events arrived in seq order (a re-sent
/// duplicate of an event already seen is allowed: QoS 1 is at least once).
fn assert_complete_and_ordered(seen: &[Message], expected: &BTreeSet<(SessionId, u64)>) {
    let mut order: BTreeMap<SessionId, Vec<u64>> = BTreeMap::new();
    let mut distinct = BTreeSet::new();
    for envelope in envelopes(seen) {
        if distinct.insert((envelope.session, envelope.seq)) {
            order
                .entry(envelope.session)
                .or_default()
                .push(envelope.seq);
        }
        if let Event::Snapshot { record } = &envelope.event {
            assert_eq!(envelope.seq, 1, "only the opening event is a Snapshot here");
            assert_eq!(record.first_seen_ms, record.last_seen_ms);
        }
    }
    assert_eq!(
        &distinct, expected,
        "every committed event arrives, nothing else"
    );
    for (session, seqs) in order {
        let sorted: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(
            seqs, sorted,
            "events of session {session} arrive in seq order"
        );
    }
}

fn devices_filter() -> String {
    format!("rae/v1/{SERIAL}/devices/+")
}

fn all_expected(seen: &[Message], expected: &BTreeSet<(SessionId, u64)>) -> Option<()> {
    let got: BTreeSet<_> = seen
        .iter()
        .filter_map(|m| Envelope::decode(&m.payload).ok())
        .map(|e| (e.session, e.seq))
        .collect();
    expected.is_subset(&got).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_arrive_in_seq_order_and_leave_the_outbox_once_acknowledged() {
    let broker = Mosquitto::start().unwrap();
    let outbox = Outbox::open();
    let mut sub = Subscriber::start(&broker, "sink", devices_filter(), None, false).await;

    // Rows waiting before the publisher starts, more than fit in flight.
    let (mut devices, opened): (Vec<_>, Vec<_>) = (1..=3).map(Device::open).unzip();
    outbox.commit(opened).await;
    outbox.commit(Device::updates(&mut devices, 4)).await;
    assert_eq!(outbox.rows().await, 15);

    let mut agent = Agent::start(settings(&broker), &outbox);
    let expected = Device::expected(&devices);
    sub.wait_for("the 15 waiting events", |seen| {
        all_expected(seen, &expected)
    })
    .await;

    // Rows committed while it runs go out without any polling delay to speak of.
    outbox.commit(Device::updates(&mut devices, 3)).await;
    let expected = Device::expected(&devices);
    sub.wait_for("the 9 events committed later", |seen| {
        all_expected(seen, &expected)
    })
    .await;
    outbox.wait_rows("no rows left", |s| s.rows == 0).await;
    let status = agent
        .wait_status("24 rows acknowledged", |s| s.acked == 24)
        .await;
    assert!(status.connected);
    assert_eq!(status.published, 24, "each row published once: {status:?}");
    assert_eq!(
        (status.refused, status.resent, status.reconnects),
        (0, 0, 0)
    );
    assert_complete_and_ordered(&sub.seen, &expected);

    let status = agent.stop().await;
    assert!(!status.connected);
    assert_eq!(outbox.rows().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_retained_online_and_offline_by_will_or_by_shutdown() {
    let broker = Mosquitto::start().unwrap();
    let outbox = Outbox::open();
    let status_topic = format!("rae/v1/{SERIAL}/status");

    let mut agent = Agent::start(settings(&broker), &outbox);
    // The inventory goes out after the status, so its PUBACK means the status is stored.
    agent
        .wait_status("connected and the first inventory acknowledged", |s| {
            s.connected && s.inventories >= 1
        })
        .await;
    let mut late = Subscriber::start(&broker, "late", status_topic.clone(), None, false).await;
    let online = late
        .wait_status("retained online", |s, m| {
            m.retain && s.state == AgentState::Online
        })
        .await;
    assert_eq!(online.serial, serial());
    assert_eq!(online.agent_version, "0.0.0-test");

    // The agent dies: its connection drops without a DISCONNECT, the broker sends the will.
    let killed_at = now_ms();
    agent.task.abort();
    let will = late
        .wait_status("the Last Will offline", |s, _| {
            s.state == AgentState::Offline
        })
        .await;
    assert!(
        will.at_ms <= killed_at,
        "the will carries its connect time ({} > {killed_at})",
        will.at_ms
    );
    let mut later = Subscriber::start(&broker, "later", status_topic.clone(), None, false).await;
    later
        .wait_status("the retained will", |s, m| {
            m.retain && s.state == AgentState::Offline
        })
        .await;

    // Back again, then a clean shutdown: retained offline, published by the agent itself.
    let mut agent = Agent::start(settings(&broker), &outbox);
    late.wait_status("online after the restart", |s, _| {
        s.state == AgentState::Online && s.at_ms >= killed_at
    })
    .await;
    agent.wait_status("connected again", |s| s.connected).await;
    let stop_at = now_ms();
    agent.stop().await;
    let offline = late
        .wait_status("offline from the shutdown", |s, _| {
            s.state == AgentState::Offline && s.at_ms >= stop_at
        })
        .await;
    assert_eq!(offline.agent_version, "0.0.0-test");
    let mut last = Subscriber::start(&broker, "last", status_topic, None, false).await;
    let retained = last
        .wait_status("the retained offline", |s, m| {
            m.retain && s.state == AgentState::Offline
        })
        .await;
    assert!(
        retained.at_ms >= stop_at,
        "the retained offline is the shutdown's, not a will ({} < {stop_at})",
        retained.at_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing() {
    let mut broker = Mosquitto::start_with(MosquittoOptions {
        persistence: true,
        auth: None,
    })
    .unwrap();
    let outbox = Outbox::open();
    // A persistent session: the broker keeps the subscription and queues for it.
    let mut sub = Subscriber::start(&broker, "sink", devices_filter(), None, true).await;
    let mut agent = Agent::start(settings(&broker), &outbox);

    let (mut devices, opened): (Vec<_>, Vec<_>) = (1..=2).map(Device::open).unzip();
    outbox.commit(opened).await;
    let expected = Device::expected(&devices);
    sub.wait_for("the events before the outage", |seen| {
        all_expected(seen, &expected)
    })
    .await;
    outbox
        .wait_rows("no rows before the outage", |s| s.rows == 0)
        .await;

    broker.stop().unwrap();
    agent
        .wait_status("the lost connection", |s| !s.connected)
        .await;
    outbox.commit(Device::updates(&mut devices, 5)).await;
    assert_eq!(
        outbox.rows().await,
        10,
        "rows wait in the outbox during the outage"
    );
    let down = agent.status.borrow().clone();
    assert!(down.last_error.is_some(), "the cause is reported: {down:?}");

    broker.start_again().unwrap();
    let expected = Device::expected(&devices);
    sub.wait_for("every event after the outage", |seen| {
        all_expected(seen, &expected)
    })
    .await;
    outbox
        .wait_rows("no rows after the outage", |s| s.rows == 0)
        .await;
    let status = agent
        .wait_status("connected again and 12 rows acknowledged", |s| {
            s.connected && s.acked >= 12
        })
        .await;
    assert!(
        status.reconnects >= 1,
        "the reconnect is counted: {status:?}"
    );
    assert_complete_and_ordered(&sub.seen, &expected);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rows_stay_in_the_outbox_and_are_retried() {
    let users = [
        MqttUser::new(SERIAL, PASSWORD),
        MqttUser::new("cloud", PASSWORD),
    ];
    // The fleet ACL without the devices line.
    let acl = Acl::from_text(
        "pattern write rae/v1/%u/inventory\n\
         pattern write rae/v1/%u/status\n\
         \n\
         user cloud\n\
         topic read #\n",
    );
    let broker = Mosquitto::start_with_acl(&users, &acl).unwrap();
    let outbox = Outbox::open();
    let cloud = broker.user("cloud").cloned();
    let mut sub =
        Subscriber::start(&broker, "cloud", "rae/v1/#".into(), cloud.as_ref(), false).await;

    let (mut devices, opened): (Vec<_>, Vec<_>) = (1..=3).map(Device::open).unzip();
    outbox.commit(opened).await;
    outbox.commit(Device::updates(&mut devices, 1)).await;
    let mut agent = Agent::start(
        PublisherSettings {
            credentials: Some(Credentials {
                user: SERIAL.to_owned(),
                password: PASSWORD.to_owned(),
            }),
            ..settings(&broker)
        },
        &outbox,
    );
    let status = agent
        .wait_status("every row refused, then retried", |s| {
            s.refused >= 6 && s.resent >= 4
        })
        .await;
    assert_eq!(
        status.acked, 0,
        "nothing refused is acknowledged: {status:?}"
    );
    assert!(status.connected);
    assert_eq!(outbox.rows().await, 6, "refused rows stay in the outbox");

    // What the ACL allows still goes through.
    sub.wait_status("the agent's online status", |s, _| {
        s.state == AgentState::Online
    })
    .await;
    let status = agent.stop().await;
    assert_eq!(status.acked, 0);
    assert_eq!(outbox.rows().await, 6);
    assert!(
        !sub.seen.iter().any(|m| m.topic.contains("/devices/")),
        "the broker delivered a refused event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_lists_the_sessions_it_is_given() {
    let broker = Mosquitto::start().unwrap();
    let outbox = Outbox::open();
    let mut sub = Subscriber::start(
        &broker,
        "sink",
        format!("rae/v1/{SERIAL}/inventory"),
        None,
        false,
    )
    .await;
    let (a, _) = Device::open(1);
    let (b, _) = Device::open(2);
    let first = vec![
        SessionSeq {
            session: a.session,
            seq: 3,
        },
        SessionSeq {
            session: b.session,
            seq: 7,
        },
    ];
    let mut agent = Agent::start(
        PublisherSettings {
            inventory_interval: Duration::from_millis(300),
            ..settings(&broker)
        },
        &outbox,
    );
    agent.inventory.send_replace(first.clone());
    let decode = |m: &Message| Inventory::decode(&m.payload).expect("inventory payloads decode");
    let got = sub
        .wait_for("an inventory with both sessions", |seen| {
            seen.iter().map(decode).find(|i| i.sessions == first)
        })
        .await;
    assert_eq!(got.serial, serial());
    assert!(
        !sub.seen.iter().any(|m| m.retain),
        "inventories are not retained"
    );

    // The next period reads the watch again.
    let second = vec![SessionSeq {
        session: a.session,
        seq: 4,
    }];
    agent.inventory.send_replace(second.clone());
    sub.wait_for("the next inventory with the new sessions", |seen| {
        seen.iter().map(decode).find(|i| i.sessions == second)
    })
    .await;
    let status = agent
        .wait_status("inventories counted", |s| s.inventories >= 2)
        .await;
    assert_eq!(status.published, 0, "no rows: {status:?}");
    agent.stop().await;
}

#[tokio::test]
async fn tls_files_that_cannot_be_read_stop_the_publisher_naming_the_file() {
    let outbox = Outbox::open();
    let settings = PublisherSettings {
        serial: serial(),
        host: "127.0.0.1".into(),
        port: 1,
        client_id: SERIAL.into(),
        keep_alive: Duration::from_secs(30),
        tcp_send_buffer: None,
        inventory_interval: Duration::from_secs(60),
        max_in_flight: 32,
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
        agent_version: "0.0.0-test".into(),
        tls: Some(rae_agent::config::TlsConfig {
            ca_file: "/etc/rae-agent/ca.pem".into(),
            cert_file: Some("/etc/rae-agent/cert.pem".into()),
            key_file: Some("/etc/rae-agent/key.pem".into()),
            server_name: None,
            common_name: None,
        }),
        credentials: None,
        fault: None,
    };
    // The supervisor does not restart what a restart cannot cure: the daemon stops with it.
    for agent in [
        Agent::start(settings.clone(), &outbox),
        Agent::supervised(settings, &outbox),
    ] {
        let result = tokio::time::timeout(WAIT, agent.task)
            .await
            .unwrap()
            .unwrap();
        match result {
            Err(err @ PublishError::Transport(_)) => {
                let text = rae_agent::error_chain(&err);
                assert!(text.contains("/etc/rae-agent/ca.pem"), "{text}");
            }
            other => panic!("expected the TLS file error, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_nobody_subscribed_to_leave_the_outbox_and_are_counted() {
    let broker = Mosquitto::start().unwrap();
    let outbox = Outbox::open();
    let mut agent = Agent::start(settings(&broker), &outbox);

    // Nobody subscribes to the devices topic yet: mosquitto acks with 0x10.
    let (mut devices, opened): (Vec<_>, Vec<_>) = (1..=3).map(Device::open).unzip();
    outbox.commit(opened).await;
    outbox.wait_rows("no rows left", |s| s.rows == 0).await;
    let status = agent
        .wait_status("3 rows acknowledged", |s| s.acked == 3)
        .await;
    assert_eq!(status.no_subscribers, 3, "{status:?}");
    assert_eq!(status.refused, 0, "0x10 is a success: {status:?}");

    // With a subscriber the count stops growing and the events arrive.
    let mut sub = Subscriber::start(&broker, "sink", devices_filter(), None, false).await;
    let before = Device::expected(&devices);
    outbox.commit(Device::updates(&mut devices, 1)).await;
    let expected: BTreeSet<_> = Device::expected(&devices)
        .difference(&before)
        .copied()
        .collect();
    sub.wait_for("the 3 events committed with a subscriber", |seen| {
        all_expected(seen, &expected)
    })
    .await;
    let status = agent
        .wait_status("6 rows acknowledged", |s| s.acked == 6)
        .await;
    assert_eq!(status.no_subscribers, 3, "{status:?}");
    let entries = status.entries();
    assert!(
        entries.contains(&("publish.no_subscribers".to_owned(), "3".to_owned())),
        "raectl status shows the count: {entries:?}"
    );
    agent.stop().await;
}

/// The publisher fails after 2 acknowledged rows with rows in flight; the supervisor restarts
/// it, the restart is counted and shown, the rows in flight go out again and every event
/// arrives.
async fn a_failing_publisher_is_restarted(kind: FaultKind) {
    let broker = Mosquitto::start().unwrap();
    let outbox = Outbox::open();
    let mut sub = Subscriber::start(&broker, "sink", devices_filter(), None, false).await;
    let (mut devices, opened): (Vec<_>, Vec<_>) = (1..=3).map(Device::open).unzip();
    outbox.commit(opened).await;
    outbox.commit(Device::updates(&mut devices, 3)).await;
    assert_eq!(outbox.rows().await, 12);

    let fault = Fault {
        kind,
        after_acks: 2,
    };
    let mut agent = Agent::supervised(
        PublisherSettings {
            fault: Some(fault),
            ..settings(&broker)
        },
        &outbox,
    );
    let status = agent.wait_status("one restart", |s| s.restarts == 1).await;
    let error = status.last_error.clone().unwrap_or_default();
    assert!(
        error.starts_with("publisher restarted:"),
        "the restart says why: {status:?}"
    );
    let expected = Device::expected(&devices);
    sub.wait_for("all 12 events after the restart", |seen| {
        all_expected(seen, &expected)
    })
    .await;
    outbox.wait_rows("no rows left", |s| s.rows == 0).await;
    let status = agent
        .wait_status("connected again", |s| s.connected && s.acked >= 12)
        .await;
    assert_eq!(status.restarts, 1, "the fault fires once: {status:?}");
    assert_eq!(status.reconnects, 1, "the restart reconnected: {status:?}");
    assert!(
        status.resent > 0,
        "the rows in flight at the failure were sent again: {status:?}"
    );
    let entries = status.entries();
    assert!(
        entries.contains(&("publish.restarts".to_owned(), "1".to_owned())),
        "raectl status shows the restart: {entries:?}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_fails_with_an_error_is_restarted() {
    a_failing_publisher_is_restarted(FaultKind::Error).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_panics_is_restarted() {
    a_failing_publisher_is_restarted(FaultKind::Panic).await;
}
