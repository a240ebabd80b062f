//! The cloud's requester: sends [`CommandRequest`]s to RAEs over MQTT v5 and hands back their
//! [`CommandReply`]s.
//!
//! One MQTT client per requester. It subscribes once to `rae/v1/+/reply/{requester}` (every
//! RAE's replies to it), then each request is published at QoS 1 on
//! `rae/v1/{serial}/cmd/{command}` with the Response Topic `rae/v1/{serial}/reply/{requester}`
//! and fresh random Correlation Data. Replies are matched to their waiter by the correlation
//! data (and the serial of the topic they came on), so any number of requests may be
//! outstanding at once. Sending the same [`Request`] again re-sends the same correlation data:
//! the agent answers a redelivery from its duplicate cache instead of acting twice.
//!
//! One task owns rumqttc's event loop; it reconnects with backoff and re-subscribes on every
//! connection (the session is not kept: a reply published while the requester is away is
//! lost, and its waiter times out).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rae_proto::topic::filter;
use rae_proto::{CommandReply, CommandRequest, RequesterId, Serial, Topic};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Requests one requester may have outstanding; more are refused rather than queued without
/// bound.
pub const MAX_OUTSTANDING: usize = 4096;
/// Room in the client's request channel: publishes and the subscribe.
const REQUEST_CHANNEL: usize = 1024;
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Why a request got no usable reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("MQTT broker unreachable: {0}")]
    BrokerUnreachable(String),
    #[error("the broker refused the subscription to the replies ({0})")]
    SubscriptionRefused(String),
    #[error("the reply does not decode: {0}")]
    UndecodableReply(String),
    #[error("the request does not encode: {0}")]
    Encode(String),
    #[error("{MAX_OUTSTANDING} requests are outstanding already")]
    TooManyOutstanding,
    #[error("a request with this correlation data is already waiting")]
    AlreadyOutstanding,
    #[error("the requester's MQTT client stopped")]
    Stopped,
}

/// One request, ready to send (and to send again: a retry keeps the correlation data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub serial: Serial,
    pub body: CommandRequest,
    pub correlation: Vec<u8>,
}

impl Request {
    /// A request with fresh random correlation data.
    pub fn new(serial: Serial, body: CommandRequest) -> Request {
        Request {
            serial,
            body,
            correlation: uuid::Uuid::new_v4().as_bytes().to_vec(),
        }
    }
}

/// A reply and what it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub serial: Serial,
    /// The reply's correlation data: the request's, or it would not have matched.
    pub correlation: Vec<u8>,
    pub reply: CommandReply,
    /// From the publish being queued to the reply's arrival.
    pub round_trip: Duration,
}

/// The connection as the requests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Link {
    Connecting,
    /// Connected and subscribed to the replies.
    Ready,
    Down(String),
    Refused(String),
}

/// What the requester counted over its life.
#[derive(Debug, Default)]
pub struct RequesterStats {
    pub sent: AtomicU64,
    pub replies: AtomicU64,
    pub timeouts: AtomicU64,
    pub undecodable: AtomicU64,
    /// Replies no waiter wanted: late (after a timeout), duplicated, or from another RAE
    /// than the request's.
    pub unmatched: AtomicU64,
    pub connects: AtomicU64,
    pub connection_losses: AtomicU64,
}

impl RequesterStats {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The reply's correlation data and the reply, or why it could not be read.
type Outcome = (Vec<u8>, Result<CommandReply, RequestError>);

struct Waiter {
    serial: Serial,
    tx: oneshot::Sender<Outcome>,
}

struct Shared {
    requester: RequesterId,
    waiters: Mutex<HashMap<Vec<u8>, Waiter>>,
    stats: Arc<RequesterStats>,
}

impl Shared {
    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Waiter>> {
        // A panic while holding the lock cannot leave the map inconsistent (one insert or
        // remove at a time), so a poisoned lock is still usable.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connected requester. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Requester {
    client: AsyncClient,
    shared: Arc<Shared>,
    link: watch::Receiver<Link>,
    task: JoinHandle<()>,
}

impl Drop for Requester {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Requester {
    /// Starts the client without waiting for the broker (a long-lived service: requests fail
    /// with [`RequestError::BrokerUnreachable`] until it is connected and subscribed).
    pub fn start(
        mut options: MqttOptions,
        requester: RequesterId,
        stats: Arc<RequesterStats>,
    ) -> Requester {
        // No session is kept: the subscription is made again on every connection.
        options
            .set_clean_start(true)
            .set_session_expiry_interval(None);
        // A request is one small packet that waits for an answer: Nagle's algorithm would hold
        // it (or our PUBACK of a reply) behind the peer's delayed ACK.
        let mut network = options.network_options();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CHANNEL);
        let shared = Arc::new(Shared {
            requester: requester.clone(),
            waiters: Mutex::new(HashMap::new()),
            stats,
        });
        let (link_tx, link) = watch::channel(Link::Connecting);
        let task = tokio::spawn(drive(eventloop, client.clone(), shared.clone(), link_tx));
        Requester {
            client,
            shared,
            link,
            task,
        }
    }

    /// Starts the client and waits until it is connected and subscribed: a one-shot caller
    /// (the `command` subcommand) learns at once that the broker is unreachable.
    pub async fn connect(
        options: MqttOptions,
        requester: RequesterId,
        within: Duration,
    ) -> Result<Requester, RequestError> {
        let this = Requester::start(options, requester, Arc::default());
        this.ready(within).await?;
        Ok(this)
    }

    /// Waits until the client is connected and subscribed, or says why not.
    pub async fn ready(&self, within: Duration) -> Result<(), RequestError> {
        let mut link = self.link.clone();
        let waited = tokio::time::timeout(within, async {
            loop {
                let now = link.borrow_and_update().clone();
                match now {
                    Link::Ready => return Ok(()),
                    Link::Down(cause) => return Err(RequestError::BrokerUnreachable(cause)),
                    Link::Refused(cause) => return Err(RequestError::SubscriptionRefused(cause)),
                    Link::Connecting => {}
                }
                if link.changed().await.is_err() {
                    return Err(RequestError::Stopped);
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(RequestError::BrokerUnreachable(format!(
                "no connection within {within:?}"
            )))
        })
    }

    pub fn requester(&self) -> &RequesterId {
        &self.shared.requester
    }

    pub fn stats(&self) -> &RequesterStats {
        &self.shared.stats
    }

    /// Requests waiting for their reply now.
    pub fn outstanding(&self) -> usize {
        self.shared.waiters().len()
    }

    /// A new request to `serial` and its reply, within `timeout`.
    pub async fn request(
        &self,
        serial: Serial,
        body: CommandRequest,
        timeout: Duration,
    ) -> Result<Answer, RequestError> {
        self.send(&Request::new(serial, body), timeout).await
    }

    /// Publishes `request` and waits for its reply until `timeout` has passed. Cancel-safe:
    /// dropping the future forgets the waiter.
    pub async fn send(&self, request: &Request, timeout: Duration) -> Result<Answer, RequestError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let link = self.link.borrow().clone();
        match link {
            Link::Ready => {}
            Link::Connecting => {
                return Err(RequestError::BrokerUnreachable(
                    "not connected to the broker yet".into(),
                ))
            }
            Link::Down(cause) => return Err(RequestError::BrokerUnreachable(cause)),
            Link::Refused(cause) => return Err(RequestError::SubscriptionRefused(cause)),
        }
        let payload = request
            .body
            .encode()
            .map_err(|e| RequestError::Encode(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = self.shared.waiters();
            if waiters.contains_key(&request.correlation) {
                return Err(RequestError::AlreadyOutstanding);
            }
            if waiters.len() >= MAX_OUTSTANDING {
                return Err(RequestError::TooManyOutstanding);
            }
            waiters.insert(
                request.correlation.clone(),
                Waiter {
                    serial: request.serial.clone(),
                    tx,
                },
            );
        }
        let _forget = ForgetOnDrop {
            shared: &self.shared,
            correlation: &request.correlation,
        };
        let started = Instant::now();
        let properties = PublishProperties {
            response_topic: Some(
                Topic::reply(request.serial.clone(), self.shared.requester.clone()).to_string(),
            ),
            correlation_data: Some(request.correlation.clone().into()),
            ..PublishProperties::default()
        };
        let topic = Topic::command(request.serial.clone(), request.body.kind()).to_string();
        let published = tokio::time::timeout_at(
            deadline,
            self.client.publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                false,
                payload,
                properties,
            ),
        )
        .await;
        match published {
            Err(_) => {
                RequesterStats::add(&self.shared.stats.timeouts);
                return Err(RequestError::Timeout(timeout));
            }
            Ok(Err(_)) => return Err(RequestError::Stopped),
            Ok(Ok(())) => RequesterStats::add(&self.shared.stats.sent),
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => {
                RequesterStats::add(&self.shared.stats.timeouts);
                Err(RequestError::Timeout(timeout))
            }
            Ok(Err(_)) => Err(RequestError::Stopped),
            Ok(Ok((correlation, reply))) => Ok(Answer {
                serial: request.serial.clone(),
                correlation,
                reply: reply?,
                round_trip: started.elapsed(),
            }),
        }
    }

    /// Disconnects from the broker (outstanding requests then time out).
    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }
}

/// Removes a waiter whose `send` ended (answered, timed out or cancelled).
struct ForgetOnDrop<'a> {
    shared: &'a Shared,
    correlation: &'a [u8],
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.shared.waiters().remove(self.correlation);
    }
}

/// Owns the event loop: (re)subscribes on every connection and routes replies to waiters.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    shared: Arc<Shared>,
    link: watch::Sender<Link>,
) {
    let mut delay = RECONNECT_MIN;
    let mut failures: u32 = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                RequesterStats::add(&shared.stats.connects);
                delay = RECONNECT_MIN;
                failures = 0;
                let replies = filter::replies_to(&shared.requester);
                if let Err(e) = client.try_subscribe(replies, QoS::AtLeastOnce) {
                    link.send_replace(Link::Down(format!("subscribe not queued: {e}")));
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .find(|c| !matches!(c, SubscribeReasonCode::Success(_)));
                match refused {
                    None => link.send_replace(Link::Ready),
                    Some(code) => {
                        tracing::error!(?code, "the broker refused the subscription to replies");
                        link.send_replace(Link::Refused(format!("{code:?}")))
                    }
                };
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => route(&shared, &publish),
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                link.send_replace(Link::Down("disconnected".into()));
                return;
            }
            Ok(_) => {}
            Err(ConnectionError::RequestsDone) => {
                link.send_replace(Link::Down("the client was dropped".into()));
                return;
            }
            Err(e) => {
                RequesterStats::add(&shared.stats.connection_losses);
                failures = failures.saturating_add(1);
                if failures.is_power_of_two() {
                    tracing::warn!(cause = %e, failures, retry_in_ms = delay.as_millis() as u64, "command client: broker connection failed; reconnecting");
                }
                link.send_replace(Link::Down(e.to_string()));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// Hands a reply to the request it answers, if one waits for it.
fn route(shared: &Shared, publish: &Publish) {
    let topic = String::from_utf8_lossy(&publish.topic);
    let serial = match Topic::parse(&topic) {
        Ok(Topic::Reply { serial, requester }) if requester == shared.requester => serial,
        _ => {
            RequesterStats::add(&shared.stats.unmatched);
            tracing::debug!(%topic, "message on a topic that is not a reply to us");
            return;
        }
    };
    let Some(correlation) = publish
        .properties
        .as_ref()
        .and_then(|p| p.correlation_data.as_deref())
    else {
        RequesterStats::add(&shared.stats.unmatched);
        tracing::debug!(%topic, "reply without correlation data");
        return;
    };
    let waiter = {
        let mut waiters = shared.waiters();
        match waiters.get(correlation) {
            // A reply from another RAE than the one asked does not answer the request.
            Some(w) if w.serial == serial => waiters.remove(correlation),
            _ => None,
        }
    };
    let Some(waiter) = waiter else {
        RequesterStats::add(&shared.stats.unmatched);
        tracing::debug!(%topic, "reply nobody waits for (late, repeated or foreign)");
        return;
    };
    let reply = CommandReply::decode(&publish.payload).map_err(|e| {
        RequesterStats::add(&shared.stats.undecodable);
        RequestError::UndecodableReply(e.to_string())
    });
    if reply.is_ok() {
        RequesterStats::add(&shared.stats.replies);
    }
    let _ = waiter.tx.send((correlation.to_vec(), reply));
}
