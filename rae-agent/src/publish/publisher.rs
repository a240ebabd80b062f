//! The publisher task: outbox drain, retained status, inventory, reconnects and shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rae_proto::{AgentState, Inventory, SessionId, SessionSeq, Status, Topic};
use rumqttc::v5::mqttbytes::v5::{ConnAck, LastWill, Packet, PubAck, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout_at, Instant};

use super::backoff::Backoff;
use super::commands::{CommandEvent, CommandLink, Commands, CLIENT_ROOM};
use super::driver::{drive, DriverEvent};
use super::flight::{Flight, FlightError, Item};
use super::gate::SessionGate;
use super::packet::{publish_packet_size, reason_code, Kind, SentRows};
use super::{FaultKind, PublishError, PublisherSettings, PublisherStatus};
use crate::store::{OutboxRow, StoreError, StoreHandle};

/// How long a shutdown waits for the PUBACKs of what is in flight and of the `offline` status.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long a shutdown waits for the DISCONNECT to be written.
const DISCONNECT_GRACE: Duration = Duration::from_millis(500);
/// Acks gathered into one store transaction at most (they are gathered while events are ready).
const ACK_BATCH: usize = 256;
const EVENT_CHANNEL: usize = 64;
/// Rows held back behind their session's unacknowledged row, per row allowed in flight.
const GATE_ROWS_PER_IN_FLIGHT: usize = 4;

/// Runs the publisher until `shutdown` becomes true (or its sender is dropped); see the module
/// documentation. Returns an error for settings it cannot run with (TLS included) and when
/// the store thread stops.
pub async fn run(
    settings: PublisherSettings,
    store: StoreHandle,
    inventory: watch::Receiver<Vec<SessionSeq>>,
    status: watch::Sender<PublisherStatus>,
    shutdown: watch::Receiver<bool>,
    commands: Option<CommandLink>,
) -> Result<(), PublishError> {
    let sent = Arc::new(SentRows::default());
    run_after(settings, store, inventory, status, shutdown, sent, commands).await
}

/// [`run`], after an earlier run that published the unacknowledged rows in `sent` (which this
/// run keeps up to date), so that the rows it sends again count as `resent`.
pub(super) async fn run_after(
    settings: PublisherSettings,
    store: StoreHandle,
    inventory: watch::Receiver<Vec<SessionSeq>>,
    status: watch::Sender<PublisherStatus>,
    shutdown: watch::Receiver<bool>,
    sent: Arc<SentRows>,
    commands: Option<CommandLink>,
) -> Result<(), PublishError> {
    settings.check()?;
    let status_topic = Topic::status(settings.serial.clone()).to_string();
    let last_will = {
        let settings = settings.clone();
        let topic = status_topic.clone();
        move || -> Result<LastWill, PublishError> {
            let payload = status_payload(&settings, AgentState::Offline)?;
            Ok(LastWill::new(&topic, payload, QoS::AtLeastOnce, true, None))
        }
    };
    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options
        .set_keep_alive(settings.keep_alive)
        .set_clean_start(true)
        .set_outgoing_inflight_upper_limit(settings.max_in_flight)
        .set_last_will(last_will()?);
    let mut network = rumqttc::NetworkOptions::new();
    // A command's PUBACK and its reply are two small writes back to back: with Nagle's
    // algorithm the reply waits for the broker's (delayed) ACK of the first, ~40 ms per hop.
    network.set_tcp_nodelay(true);
    if let Some(bytes) = settings.tcp_send_buffer {
        network.set_tcp_send_buffer_size(bytes);
    }
    options.set_network_options(network);
    super::transport::apply(&mut options, &settings)?;
    // Room for every row in flight plus the status, the inventory and a DISCONNECT, and the
    // command side's replies and subscription, so that queueing a request never waits (see
    // `Publisher::fill`).
    let (client, eventloop) = AsyncClient::new(
        options,
        usize::from(settings.max_in_flight) + 8 + CLIENT_ROOM,
    );
    let (events_tx, events) = mpsc::channel(EVENT_CHANNEL);
    let (stall_tx, stall) = mpsc::channel(1);
    let driver = drive(eventloop, events_tx, stall, move || last_will().ok());
    let connection = Connection {
        client,
        stall: stall_tx,
        commands: commands.map(|link| Commands::new(link, settings.serial.clone())),
    };
    let publisher = Publisher::new(
        settings,
        store,
        connection,
        inventory,
        status,
        status_topic,
        sent,
    );
    let main = publisher.run(events, shutdown);
    tokio::pin!(driver, main);
    // Both run in this task, so dropping `run` drops the connection with it (the broker then
    // sends the Last Will). The driver ends only once the publisher let go of it.
    tokio::select! {
        biased;
        result = &mut main => return result,
        () = &mut driver => {}
    }
    main.await
}

/// Where the connection stands, for logging state changes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Not connected yet since start-up.
    Starting,
    Up {
        since: Instant,
    },
    Down,
}

/// Whether rows may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    None,
    /// A row was refused: send no rows before this.
    Until(Instant),
    /// Send again from the oldest row once no row is in flight.
    Rewind,
}

/// The publisher's ways to act on the connection: requests through rumqttc's client, the
/// watchdog's word to the driver, and the command side.
struct Connection {
    client: AsyncClient,
    stall: mpsc::Sender<Duration>,
    /// The cloud commands that come in on it.
    commands: Option<Commands>,
}

struct Publisher {
    settings: PublisherSettings,
    store: StoreHandle,
    client: AsyncClient,
    inventory: watch::Receiver<Vec<SessionSeq>>,
    status_tx: watch::Sender<PublisherStatus>,
    status: PublisherStatus,
    status_topic: String,
    inventory_topic: String,
    flight: Flight,
    link: Link,
    /// The highest row id peeked on this connection (queued or held in `gate`); the next
    /// peek starts after it.
    cursor: i64,
    /// One unacknowledged row per session; the rows behind it wait here.
    gate: SessionGate<SessionId, OutboxRow>,
    /// The session of each row in flight, to release its next row when it is acknowledged.
    row_sessions: HashMap<i64, SessionId>,
    /// Rows published and unacknowledged, shared with the publisher's next run.
    sent: Arc<SentRows>,
    /// The outbox may hold rows after `cursor`.
    outbox_more: bool,
    /// Rows in flight at most: ours, or the broker's Receive Maximum if lower.
    limit: usize,
    pause: Pause,
    /// The last refusal logged, per [`Kind`].
    refusals: [Option<PubAckReason>; 4],
    /// The broker's Maximum Packet Size (CONNACK), if it set one.
    max_packet: Option<usize>,
    /// An oversize publish was logged, per [`Kind`] (once per run).
    oversize_logged: [bool; 4],
    /// The last device event was acked with 0x10 (no matching subscribers).
    unheard: bool,
    retry_backoff: Backoff,
    connect_backoff: Backoff,
    /// Rows acknowledged, not yet deleted from the outbox.
    acks: Vec<i64>,
    next_inventory: Instant,
    /// The event stream stopped matching the bookkeeping; wait for the reconnect.
    desynced: bool,
    /// When the broker last sent a packet on this connection (or it was made).
    last_heard: Instant,
    /// Ours, or the broker's Server Keep Alive when it set one (rumqttc pings at that).
    keep_alive: Duration,
    /// Asks the driver to drop a connection the broker has gone silent on.
    stall: mpsc::Sender<Duration>,
    /// The stall of this connection was reported; wait for the driver's `Lost`.
    stalled: bool,
    stopping: bool,
    /// Cloud commands (`commands.rs`); `None`: not taken.
    commands: Option<Commands>,
}

impl Publisher {
    fn new(
        settings: PublisherSettings,
        store: StoreHandle,
        connection: Connection,
        inventory: watch::Receiver<Vec<SessionSeq>>,
        status_tx: watch::Sender<PublisherStatus>,
        status_topic: String,
        sent: Arc<SentRows>,
    ) -> Publisher {
        let Connection {
            client,
            stall,
            commands,
        } = connection;
        let inventory_topic = Topic::inventory(settings.serial.clone()).to_string();
        let retry_backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
        let connect_backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
        let limit = usize::from(settings.max_in_flight);
        let gate = SessionGate::new(limit * GATE_ROWS_PER_IN_FLIGHT);
        // A restarted publisher carries on the counters of the one before.
        let status = PublisherStatus {
            connected: false,
            ..status_tx.borrow().clone()
        };
        // After a restart the first connection is a reconnect, and counts as one.
        let link = if status.restarts > 0 {
            Link::Down
        } else {
            Link::Starting
        };
        Publisher {
            settings,
            store,
            client,
            inventory,
            status,
            status_tx,
            status_topic,
            inventory_topic,
            flight: Flight::default(),
            link,
            cursor: 0,
            gate,
            row_sessions: HashMap::new(),
            sent,
            outbox_more: true,
            limit,
            pause: Pause::None,
            refusals: [None; 4],
            max_packet: None,
            oversize_logged: [false; 4],
            unheard: false,
            retry_backoff,
            connect_backoff,
            acks: Vec::new(),
            next_inventory: Instant::now(),
            desynced: false,
            last_heard: Instant::now(),
            // Set by every CONNACK; the watchdog runs only while connected.
            keep_alive: Duration::ZERO,
            stall,
            stalled: false,
            stopping: false,
            commands,
        }
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<DriverEvent>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), PublishError> {
        if let Err(err) = self.serve(&mut events, shutdown).await {
            // The counters so far stay shown, and a restarted publisher carries them on.
            self.status.connected = false;
            self.publish_status();
            return Err(err);
        }
        self.shut_down(&mut events).await
    }

    /// The main loop, until a shutdown is asked for or an error.
    async fn serve(
        &mut self,
        events: &mut mpsc::Receiver<DriverEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), PublishError> {
        let mut outbox = self.store.outbox_watch();
        outbox.borrow_and_update();
        self.publish_status();
        tracing::info!(
            broker = %self.broker(),
            client_id = %self.settings.client_id,
            "publisher starting"
        );
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            self.fill().await?;
            self.send_replies()?;
            self.publish_status();
            self.injected_fault()?;
            let retry_at = match self.pause {
                Pause::Until(at) => Some(at),
                Pause::None | Pause::Rewind => None,
            };
            let up = self.is_up();
            let silent_until = self.last_heard + self.silence_limit();
            let watch_silence = up && !self.stalled;
            tokio::select! {
                changed = shutdown.changed() => {
                    // Nobody left to ask for a shutdown: the daemon is going away.
                    if changed.is_err() {
                        break;
                    }
                }
                event = events.recv() => {
                    let Some(event) = event else {
                        return Err(PublishError::DriverStopped);
                    };
                    self.handle(event)?;
                    while self.acks.len() < ACK_BATCH {
                        match events.try_recv() {
                            Ok(event) => self.handle(event)?,
                            Err(_) => break,
                        }
                    }
                    self.flush_acks().await?;
                }
                changed = outbox.changed() => {
                    if changed.is_err() {
                        return Err(PublishError::Store(StoreError::ThreadStopped));
                    }
                    self.outbox_more = true;
                }
                () = sleep_until(self.next_inventory), if up => self.send_inventory()?,
                () = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    self.pause = Pause::Rewind;
                }
                () = sleep_until(silent_until), if watch_silence => self.silent(),
                event = Commands::next(&mut self.commands) => match event {
                    CommandEvent::Answered(to, reply) => {
                        if let Some(commands) = &mut self.commands {
                            commands.answered(to, reply);
                        }
                    }
                    CommandEvent::InventoryNow => self.send_inventory()?,
                },
            }
        }
        Ok(())
    }

    /// [`super::Fault`]: fails once enough rows were acknowledged (and deleted), at a moment
    /// when rows are in flight, so that the restart has to send them again.
    fn injected_fault(&self) -> Result<(), PublishError> {
        match self.settings.fault {
            Some(fault) if self.status.acked >= fault.after_acks && self.flight.rows() > 0 => {
                match fault.kind {
                    FaultKind::Error => Err(PublishError::InjectedFault),
                    FaultKind::Panic => panic!("injected publisher fault ({})", super::Fault::ENV),
                }
            }
            _ => Ok(()),
        }
    }

    fn handle(&mut self, event: DriverEvent) -> Result<(), PublishError> {
        let event = match event {
            DriverEvent::Mqtt(event) => *event,
            DriverEvent::Lost { error, resume } => {
                self.lost(&error, resume);
                return Ok(());
            }
        };
        if matches!(event, Event::Incoming(_)) {
            self.last_heard = Instant::now();
        }
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => self.connected(&ack)?,
            Event::Incoming(Packet::PubAck(ack)) => self.puback(&ack),
            Event::Incoming(Packet::Publish(publish)) => {
                if let Some(commands) = &mut self.commands {
                    commands.incoming(&publish);
                }
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                if let Some(commands) = &mut self.commands {
                    commands.suback(&ack);
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let result = self.flight.written(pkid);
                self.check_flight(result);
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                let result = self.flight.held_back(pkid);
                self.check_flight(result);
            }
            _ => {}
        }
        Ok(())
    }

    fn connected(&mut self, ack: &ConnAck) -> Result<(), PublishError> {
        if self.link != Link::Starting {
            self.status.reconnects += 1;
        }
        self.link = Link::Up {
            since: Instant::now(),
        };
        self.status.connected = true;
        self.status.since_ms = Some(crate::wall_ms());
        let broker_max = ack
            .properties
            .as_ref()
            .and_then(|p| p.receive_max)
            .map_or(usize::MAX, usize::from);
        self.limit = usize::from(self.settings.max_in_flight)
            .min(broker_max)
            .max(1);
        // rumqttc fails the connection when it is asked to write a larger packet, so a row
        // above it would be first again after every reconnect: checked before sending.
        self.max_packet = ack
            .properties
            .as_ref()
            .and_then(|p| p.max_packet_size)
            .and_then(|max| usize::try_from(max).ok());
        self.stalled = false;
        self.keep_alive = ack
            .properties
            .as_ref()
            .and_then(|p| p.server_keep_alive)
            .map_or(self.settings.keep_alive, |secs| {
                Duration::from_secs(u64::from(secs))
            });
        // A clean start: every unacknowledged row goes out again, from the oldest.
        self.forget_in_flight();
        self.desynced = false;
        self.outbox_more = true;
        if self.pause == Pause::Rewind {
            self.pause = Pause::None;
        }
        tracing::info!(
            broker = %self.broker(),
            reconnects = self.status.reconnects,
            in_flight_limit = self.limit,
            "connected to the MQTT broker"
        );
        self.send_status(AgentState::Online)?;
        self.send_inventory()?;
        match &mut self.commands {
            Some(commands) => commands.connected(&self.client),
            None => Ok(()),
        }
    }

    fn puback(&mut self, ack: &PubAck) {
        if self.desynced {
            return;
        }
        // rumqttc itself fails the connection on an ack for an id it never sent.
        let Some(item) = self.flight.acked(ack.pkid) else {
            return;
        };
        if item == Item::Reply {
            if let Some(commands) = &mut self.commands {
                commands.acked(ack.reason);
            }
            return;
        }
        let kind = Kind::of(item);
        if matches!(
            ack.reason,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        ) {
            match item {
                Item::Row(id) => {
                    self.acks.push(id);
                    self.status.acked += 1;
                    self.no_subscribers(ack.reason);
                    self.sent.done(id);
                    if let Some(session) = self.row_sessions.remove(&id) {
                        self.gate.settled(session);
                    }
                }
                Item::Inventory => self.status.inventories += 1,
                Item::Status(_) | Item::Reply => {}
            }
            if self.refusals[kind as usize].take().is_some() {
                tracing::info!(topic = kind.name(), "the broker accepts publishes again");
                if kind == Kind::Devices {
                    self.retry_backoff.reset();
                }
            }
            return;
        }
        self.status.refused += 1;
        if let Item::Row(id) = item {
            // Not settled: the session's later rows stay held until the rewind, which sends
            // this one first.
            self.row_sessions.remove(&id);
        }
        if self.refusals[kind as usize] != Some(ack.reason) {
            self.refusals[kind as usize] = Some(ack.reason);
            tracing::warn!(
                topic = kind.name(),
                reason = %format!("{:#04x} {:?}", reason_code(ack.reason), ack.reason),
                "the broker refuses publishes; refused device events stay in the outbox and are retried"
            );
        }
        if kind == Kind::Devices && self.pause == Pause::None {
            self.pause = Pause::Until(Instant::now() + self.retry_backoff.next_delay());
        }
    }

    /// Counts a device event the broker accepted with 0x10 (nobody subscribed, so nobody got
    /// it) and logs when that starts and stops, not per row.
    fn no_subscribers(&mut self, reason: PubAckReason) {
        let unheard = reason == PubAckReason::NoMatchingSubscribers;
        if unheard {
            self.status.no_subscribers += 1;
        }
        if unheard != self.unheard {
            self.unheard = unheard;
            if unheard {
                tracing::warn!(
                    "the broker has no subscriber for device events (PUBACK 0x10); they count as \
                     delivered and leave the outbox, see publish.no_subscribers"
                );
            } else {
                tracing::info!("device events have a subscriber at the broker again");
            }
        }
    }

    /// How long the broker may stay silent before the connection counts as dead. rumqttc
    /// pings every keep-alive, and the broker answers, so a live link is never silent for two;
    /// the watchdog does not depend on rumqttc's own ping timer, which cannot fire while a
    /// write into a full send buffer blocks its event loop (a half-open link).
    fn silence_limit(&self) -> Duration {
        self.keep_alive * 2
    }

    /// The broker sent nothing for [`Publisher::silence_limit`]: the driver drops the
    /// connection, the unacknowledged rows go out again on the next one.
    fn silent(&mut self) {
        let silent = self.last_heard.elapsed();
        self.stalled = true;
        self.status.unresponsive += 1;
        tracing::warn!(
            silent = ?silent,
            rows_in_flight = self.flight.rows(),
            "the MQTT broker has sent nothing for two keep-alive periods; dropping the connection"
        );
        // Full only if a request is pending already, which does the same.
        let _ = self.stall.try_send(silent);
    }

    fn check_flight(&mut self, result: Result<(), FlightError>) {
        let Err(error) = result else { return };
        if self.desynced {
            return;
        }
        // Acking by a wrong mapping could delete a row the broker never got: stop trusting
        // PUBACKs and reconnect, which re-sends every unacknowledged row.
        tracing::error!(cause = %error, "lost track of in-flight publishes; reconnecting");
        self.desynced = true;
        if let Err(err) = self.client.try_disconnect() {
            tracing::warn!(cause = %err, "cannot ask the MQTT client to disconnect");
        }
    }

    fn lost(&mut self, error: &ConnectionError, resume: oneshot::Sender<Duration>) {
        let (cause, tls_failed) = super::transport::explain(error, &self.settings);
        match self.link {
            Link::Up { since } => {
                tracing::warn!(cause = %cause, broker = %self.broker(), "lost the connection to the MQTT broker");
                // A connection that held for a keep-alive period (a ping exchanged, rows
                // acknowledged) was a working one: the next outage starts the backoff over, so
                // a second outage soon after a first is not waited out at the longest delay.
                // One that dropped sooner (a broker that accepts and then closes) keeps it
                // growing.
                let keep_alive = self.settings.keep_alive;
                let proven = if keep_alive.is_zero() {
                    self.connect_backoff.max()
                } else {
                    keep_alive.min(self.connect_backoff.max())
                };
                if since.elapsed() >= proven {
                    self.connect_backoff.reset();
                }
            }
            Link::Starting => {
                tracing::warn!(cause = %cause, broker = %self.broker(), "cannot connect to the MQTT broker; retrying with backoff");
            }
            // A TLS failure does not cure itself: one line per attempt (the backoff spaces them).
            Link::Down if tls_failed => {
                tracing::warn!(cause = %cause, broker = %self.broker(), "reconnect failed");
            }
            Link::Down => tracing::debug!(cause = %cause, "reconnect failed"),
        }
        if self.link != Link::Down {
            self.status.since_ms = Some(crate::wall_ms());
        }
        self.link = Link::Down;
        self.status.connected = false;
        self.status.last_error = Some(cause);
        self.forget_in_flight();
        if let Some(commands) = &mut self.commands {
            commands.lost();
        }
        self.desynced = false;
        self.stalled = false;
        if self.stopping {
            // Dropping `resume` ends the driver.
            return;
        }
        // The driver is gone if this fails, which the event channel reports next.
        let _ = resume.send(self.connect_backoff.next_delay());
    }

    /// Queues outbox rows while there is room in flight: first the rows released by an ack of
    /// their session's previous row, then new rows from the outbox (those of a session with a
    /// row in flight wait in the gate, within its bound).
    async fn fill(&mut self) -> Result<(), PublishError> {
        if !self.is_up() || self.desynced {
            return Ok(());
        }
        if self.pause == Pause::Rewind && self.flight.rows() == 0 {
            // No row in flight, so none is lost by starting over; the status and inventory
            // in flight stay tracked.
            self.gate.clear();
            self.row_sessions.clear();
            self.cursor = 0;
            self.outbox_more = true;
            self.pause = Pause::None;
        }
        if self.pause != Pause::None {
            return Ok(());
        }
        while self.flight.rows() < self.limit {
            let Some(row) = self.gate.next_ready() else {
                break;
            };
            self.send_row(row)?;
        }
        while self.outbox_more && self.flight.rows() < self.limit && self.gate.room() > 0 {
            let want = (self.limit - self.flight.rows()).min(self.gate.room());
            let rows = self.store.outbox_peek(self.cursor, want).await?;
            self.outbox_more = rows.len() == want;
            for row in rows {
                self.cursor = row.id;
                if let Some(row) = self.gate.admit(row.session, row) {
                    self.send_row(row)?;
                } else {
                    self.status.waited_for_session += 1;
                }
            }
        }
        // The oversize rows dropped, so that the next peek does not meet them again.
        self.flush_acks().await
    }

    /// Publishes `row`, or drops it when its PUBLISH exceeds the broker's Maximum Packet Size.
    fn send_row(&mut self, row: OutboxRow) -> Result<(), PublishError> {
        let size = publish_packet_size(row.topic.len(), row.payload.len());
        if !self.fits(size, Kind::Devices) {
            // No broker of this connection would ever take it, and keeping it would block
            // its session for good: it leaves the outbox, counted. The subscriber sees a gap
            // at its seq; the session's next periodic Snapshot carries its state again.
            self.status.oversize += 1;
            self.sent.done(row.id);
            self.acks.push(row.id);
            self.gate.settled(row.session);
            return Ok(());
        }
        self.client
            .try_publish(row.topic, QoS::AtLeastOnce, false, row.payload)
            .map_err(|source| PublishError::Client {
                what: "publish an outbox row",
                source: Box::new(source),
            })?;
        self.flight.queue(Item::Row(row.id));
        self.row_sessions.insert(row.id, row.session);
        self.status.published += 1;
        if self.sent.published(row.id) {
            self.status.resent += 1;
        }
        Ok(())
    }

    /// Nothing in flight will be acknowledged (the connection is new or gone): every
    /// unacknowledged row is peeked again, from the oldest.
    fn forget_in_flight(&mut self) {
        self.flight.clear();
        self.gate.clear();
        self.row_sessions.clear();
        self.cursor = 0;
    }

    fn send_status(&mut self, state: AgentState) -> Result<(), PublishError> {
        let payload = status_payload(&self.settings, state)?;
        self.client
            .try_publish(self.status_topic.clone(), QoS::AtLeastOnce, true, payload)
            .map_err(|source| PublishError::Client {
                what: "publish the status",
                source: Box::new(source),
            })?;
        self.flight.queue(Item::Status(state));
        Ok(())
    }

    fn send_inventory(&mut self) -> Result<(), PublishError> {
        self.next_inventory = Instant::now() + self.settings.inventory_interval;
        if !self.is_up() || self.desynced {
            return Ok(());
        }
        if self.flight.contains(Item::Inventory) {
            tracing::debug!("the previous inventory is still unacknowledged; skipping one");
            return Ok(());
        }
        let inventory = Inventory {
            serial: self.settings.serial.clone(),
            at_ms: crate::wall_ms(),
            sessions: self.inventory.borrow().clone(),
        };
        let payload = match inventory.encode() {
            Ok(payload) => payload,
            Err(err) => {
                // At most once per interval; the sink keeps the previous inventory.
                tracing::warn!(cause = %err, sessions = inventory.sessions.len(), "cannot encode the inventory");
                return Ok(());
            }
        };
        let size = publish_packet_size(self.inventory_topic.len(), payload.len());
        if !self.fits(size, Kind::Inventory) {
            self.status.oversize_inventories += 1;
            return Ok(());
        }
        self.client
            .try_publish(
                self.inventory_topic.clone(),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .map_err(|source| PublishError::Client {
                what: "publish the inventory",
                source: Box::new(source),
            })?;
        self.flight.queue(Item::Inventory);
        Ok(())
    }

    /// Publishes the command replies that wait, as far as their slots allow.
    fn send_replies(&mut self) -> Result<(), PublishError> {
        let Some(commands) = &mut self.commands else {
            return Ok(());
        };
        if !matches!(self.link, Link::Up { .. }) || self.desynced {
            return Ok(());
        }
        commands.send_ready(&self.client, &mut self.flight, self.max_packet)
    }

    async fn flush_acks(&mut self) -> Result<(), PublishError> {
        if self.acks.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.acks);
        self.store.outbox_ack(ids).await?;
        Ok(())
    }

    /// Retained `offline`, the PUBACKs in flight (bounded), a clean DISCONNECT.
    async fn shut_down(
        mut self,
        events: &mut mpsc::Receiver<DriverEvent>,
    ) -> Result<(), PublishError> {
        self.stopping = true;
        if self.is_up() && !self.desynced {
            self.send_status(AgentState::Offline)?;
            let deadline = Instant::now() + SHUTDOWN_GRACE;
            while self.is_up() && !self.flight.is_empty() {
                match timeout_at(deadline, events.recv()).await {
                    Ok(Some(event)) => self.handle(event)?,
                    Ok(None) => break,
                    Err(_elapsed) => {
                        tracing::warn!(
                            rows = self.flight.rows(),
                            "stopping with publishes unacknowledged; their rows stay in the outbox"
                        );
                        break;
                    }
                }
            }
            self.flush_acks().await?;
            if self.is_up() && self.client.try_disconnect().is_ok() {
                let deadline = Instant::now() + DISCONNECT_GRACE;
                while self.is_up() {
                    match timeout_at(deadline, events.recv()).await {
                        Ok(Some(DriverEvent::Mqtt(event)))
                            if matches!(*event, Event::Outgoing(Outgoing::Disconnect)) =>
                        {
                            break
                        }
                        Ok(Some(event)) => self.handle(event)?,
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        self.flush_acks().await?;
        if self.status.connected {
            self.status.connected = false;
            self.status.since_ms = Some(crate::wall_ms());
        }
        self.publish_status();
        tracing::info!(
            published = self.status.published,
            acked = self.status.acked,
            "publisher stopped"
        );
        Ok(())
    }

    /// Whether a PUBLISH of `size` bytes is within the broker's Maximum Packet Size; logs
    /// the first one that is not, per kind.
    fn fits(&mut self, size: usize, kind: Kind) -> bool {
        let Some(max) = self.max_packet.filter(|max| size > *max) else {
            return true;
        };
        if !std::mem::replace(&mut self.oversize_logged[kind as usize], true) {
            tracing::warn!(
                topic = kind.name(),
                size,
                max_packet_size = max,
                "a publish exceeds the broker's Maximum Packet Size and is dropped (device \
                 events leave the outbox); see publish.oversize, publish.oversize_inventories; \
                 logged once"
            );
        }
        false
    }

    fn is_up(&self) -> bool {
        matches!(self.link, Link::Up { .. })
    }

    fn broker(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }

    fn publish_status(&self) {
        let current = &self.status;
        self.status_tx.send_if_modified(|shown| {
            if shown == current {
                return false;
            }
            shown.clone_from(current);
            true
        });
    }
}

fn status_payload(
    settings: &PublisherSettings,
    state: AgentState,
) -> Result<Vec<u8>, PublishError> {
    Status {
        serial: settings.serial.clone(),
        state,
        agent_version: settings.agent_version.clone(),
        at_ms: crate::wall_ms(),
    }
    .encode()
    .map_err(|source| PublishError::Encode {
        what: "status",
        source,
    })
}
