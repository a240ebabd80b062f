//! The MQTT side of cloud commands: the `cmd/+` subscription, each request's checks, the
//! hand-over to the core task, and the reply on the request's Response Topic.
//!
//! - After every CONNACK (a clean start: no subscription survives a reconnect) the publisher
//!   subscribes `rae/v1/{serial}/cmd/+` at QoS 1 and checks the SUBACK; a refusal is logged
//!   once per connection and counted (`command.subscribe_refused`).
//! - A request is carried out only when its Response Topic lies in this RAE's own
//!   `rae/v1/{serial}/reply/` ([`Topic::parse_reply_for`]): a missing or foreign one is logged
//!   (rate-limited) and counted (`command.bad_response_topic`), and the command is dropped,
//!   since nobody could learn its outcome and the agent publishes nowhere else.
//! - What cannot become a Job is answered here: an unknown command level
//!   (`unknown_command`), a payload that does not decode or names another command than its
//!   topic, a retained request, overlong Correlation Data (`bad_request`), a full job queue
//!   (`rate_limited`, counted in `command.queue_full`). Everything else goes to the core task
//!   with `try_send`, never waiting: the publisher's loop must keep draining the outbox.
//! - Replies come back on oneshot channels (a small task each, in a [`JoinSet`]) and are
//!   published at QoS 1 with the request's Correlation Data, at most [`REPLY_SLOTS`]
//!   unacknowledged; the rest wait in a bounded queue, also across a reconnect. They are not
//!   outbox rows: a reply lost in an outage is recovered by the requester retrying with the
//!   same Correlation Data, which the handler's duplicate cache answers.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rae_proto::{CommandKind, CommandReply, CommandRequest, RequesterId, Serial, Topic};
use rumqttc::v5::mqttbytes::v5::{
    PubAckReason, Publish, PublishProperties, SubAck, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinSet;

use super::flight::{Flight, Item};
use super::packet::publish_packet_size;
use super::PublishError;
use crate::control::{CommandCounters, Job, JobSender, Origin, MAX_CORRELATION_BYTES};

/// Replies published and not yet acknowledged, at most. The client's request queue has room
/// for them on top of the rows, the status and the inventory (see `publisher.rs`).
pub const REPLY_SLOTS: usize = 16;
/// Requests the client may hold besides rows, status, inventory and DISCONNECT: the replies
/// in flight and the subscription.
pub const CLIENT_ROOM: usize = REPLY_SLOTS + 1;
/// Replies decided and waiting for a slot (or the connection), at most; beyond it a reply
/// is dropped, counted in `command.replies_not_sent`.
const READY_MAX: usize = 256;
/// Jobs handed to the core task and not yet answered, at most; beyond it a request gets a
/// `rate_limited` reply (`command.queue_full`), as when the job queue itself is full.
const PENDING_MAX: usize = 256;

/// What the publisher needs to take cloud commands: the core task's job queue, the shared
/// counters and the handler's word that an inventory is wanted now.
#[derive(Debug, Clone)]
pub struct CommandLink {
    pub jobs: JobSender,
    pub counters: Arc<CommandCounters>,
    pub inventory_now: Arc<Notify>,
}

/// Where a reply goes: a Response Topic already checked to be this RAE's `reply/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReplyTo {
    topic: String,
    correlation: Vec<u8>,
}

/// What the publisher's loop gets from the command side while it waits.
pub(super) enum CommandEvent {
    /// The core task answered (`None`: it dropped the job, the agent is stopping).
    Answered(ReplyTo, Option<CommandReply>),
    InventoryNow,
}

pub(super) struct Commands {
    link: CommandLink,
    serial: Serial,
    /// `rae/v1/{serial}/cmd/`
    prefix: String,
    pending: JoinSet<(ReplyTo, Option<CommandReply>)>,
    ready: VecDeque<(ReplyTo, CommandReply)>,
    in_flight: usize,
    /// The last reply refusal logged (once per reason until a reply gets through).
    refusal: Option<PubAckReason>,
}

fn bump(counter: &std::sync::atomic::AtomicU64) {
    CommandCounters::bump(counter);
}

impl Commands {
    pub(super) fn new(link: CommandLink, serial: Serial) -> Commands {
        let prefix = format!("{}{serial}/cmd/", rae_proto::topic::PREFIX);
        Commands {
            link,
            serial,
            prefix,
            pending: JoinSet::new(),
            ready: VecDeque::new(),
            in_flight: 0,
            refusal: None,
        }
    }

    /// A new connection: subscribe (the broker kept nothing of the last one).
    pub(super) fn connected(&mut self, client: &AsyncClient) -> Result<(), PublishError> {
        self.in_flight = 0;
        let filter = rae_proto::topic::filter::commands_for(&self.serial);
        client
            .try_subscribe(filter, QoS::AtLeastOnce)
            .map_err(|source| PublishError::Client {
                what: "subscribe to the command topics",
                source: Box::new(source),
            })
    }

    /// The connection is gone: the replies in flight will not be acknowledged.
    pub(super) fn lost(&mut self) {
        self.in_flight = 0;
        self.link
            .counters
            .subscribed
            .store(false, Ordering::Relaxed);
    }

    pub(super) fn suback(&mut self, ack: &SubAck) {
        let refused = ack
            .return_codes
            .iter()
            .find(|code| !matches!(code, SubscribeReasonCode::Success(_)));
        match refused {
            None => {
                self.link.counters.subscribed.store(true, Ordering::Relaxed);
                tracing::info!(filter = %rae_proto::topic::filter::commands_for(&self.serial), "subscribed to cloud commands");
            }
            Some(code) => {
                // Once per connection: each connection subscribes once.
                bump(&self.link.counters.subscribe_refused);
                self.link
                    .counters
                    .subscribed
                    .store(false, Ordering::Relaxed);
                tracing::warn!(
                    reason = ?code,
                    "the broker refused the subscription to cloud commands; none will arrive on this connection (see the broker's ACL)"
                );
            }
        }
    }

    /// A PUBLISH from the broker: a request handed to the core task, or the reply to send now.
    pub(super) fn incoming(&mut self, publish: &Publish) {
        let counters = self.link.counters.clone();
        bump(&counters.received_cloud);
        let topic = String::from_utf8_lossy(&publish.topic);
        let properties = publish.properties.as_ref();
        let response = properties.and_then(|p| p.response_topic.as_deref());
        let checked = response.map(|text| Topic::parse_reply_for(text, &self.serial));
        let requester: RequesterId = match checked {
            Some(Ok(requester)) => requester,
            other => {
                bump(&counters.bad_response_topic);
                if crate::log_limit::allow("command.bad_response_topic") {
                    let reason = match other {
                        Some(Err(err)) => err.to_string(),
                        _ => "no Response Topic".to_owned(),
                    };
                    tracing::warn!(
                        %topic, response_topic = ?response, %reason,
                        "a command without a Response Topic in this RAE's reply/ is not carried out"
                    );
                }
                return;
            }
        };
        let to = ReplyTo {
            topic: response.unwrap_or_default().to_owned(),
            correlation: properties
                .and_then(|p| p.correlation_data.as_ref())
                .map_or_else(Vec::new, |data| data.to_vec()),
        };
        let request = match self.request(&topic, publish, &to) {
            Ok(request) => request,
            Err(reply) => {
                if let CommandReply::Error(error) = &reply {
                    counters.error(error.kind);
                }
                self.queue(to, reply);
                return;
            }
        };
        if self.pending.len() >= PENDING_MAX {
            self.refuse_full(to, "too many commands waiting for the core task");
            return;
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request,
            origin: Origin::Cloud {
                requester,
                correlation: to.correlation.clone(),
            },
            reply,
        };
        match self.link.jobs.try_send(job) {
            Ok(()) => {
                self.pending.spawn(async move { (to, answer.await.ok()) });
            }
            Err(TrySendError::Full(_)) => self.refuse_full(to, "the core task's job queue is full"),
            Err(TrySendError::Closed(_)) => {
                counters.error(rae_proto::ErrorKind::Internal);
                self.queue(to, CommandReply::internal());
            }
        }
    }

    /// The request a PUBLISH carries, or the error reply it gets.
    fn request(
        &self,
        topic: &str,
        publish: &Publish,
        to: &ReplyTo,
    ) -> Result<CommandRequest, CommandReply> {
        let Some(level) = topic.strip_prefix(&self.prefix) else {
            // The subscription matches nothing else; a broker that sends more is answered.
            return Err(CommandReply::bad_request("not a command topic of this RAE"));
        };
        let Some(kind) = CommandKind::from_topic_level(level) else {
            return Err(CommandReply::unknown_command(level));
        };
        if publish.retain {
            // A retained request would run again at every reconnect.
            return Err(CommandReply::bad_request("a command must not be retained"));
        }
        if to.correlation.len() > MAX_CORRELATION_BYTES {
            return Err(CommandReply::bad_request(format!(
                "correlation data is {} bytes, at most {MAX_CORRELATION_BYTES} are allowed",
                to.correlation.len()
            )));
        }
        CommandRequest::decode_for(kind, &publish.payload)
            .map_err(|err| CommandReply::bad_request(err.to_string()))
    }

    fn refuse_full(&mut self, to: ReplyTo, why: &'static str) {
        bump(&self.link.counters.queue_full);
        if crate::log_limit::allow("command.queue_full") {
            tracing::warn!(
                reason = why,
                "a cloud command was refused (rate_limited reply), see command.queue_full"
            );
        }
        self.queue(to, CommandReply::rate_limited());
    }

    /// Queues a reply for [`Commands::send_ready`].
    pub(super) fn queue(&mut self, to: ReplyTo, reply: CommandReply) {
        if self.ready.len() >= READY_MAX {
            bump(&self.link.counters.replies_not_sent);
            if crate::log_limit::allow("command.reply_dropped") {
                tracing::warn!("too many command replies waiting for the broker; one dropped");
            }
            return;
        }
        self.ready.push_back((to, reply));
    }

    /// Publishes waiting replies while slots are free; call only while connected.
    pub(super) fn send_ready(
        &mut self,
        client: &AsyncClient,
        flight: &mut Flight,
        max_packet: Option<usize>,
    ) -> Result<(), PublishError> {
        while self.in_flight < REPLY_SLOTS {
            let Some((to, reply)) = self.ready.pop_front() else {
                break;
            };
            let payload = match reply.encode().or_else(|err| {
                tracing::warn!(cause = %err, "cannot encode a command reply; replying internal");
                CommandReply::internal().encode()
            }) {
                Ok(payload) => payload,
                Err(_) => {
                    bump(&self.link.counters.replies_not_sent);
                    continue;
                }
            };
            // The Correlation Data property: identifier, length, data; its length prefix.
            let properties = 1 + 2 + to.correlation.len() + 2;
            let size = publish_packet_size(to.topic.len(), payload.len() + properties);
            if max_packet.is_some_and(|max| size > max) {
                bump(&self.link.counters.replies_not_sent);
                if crate::log_limit::allow("command.reply_oversize") {
                    tracing::warn!(size, max_packet_size = ?max_packet, "a command reply exceeds the broker's Maximum Packet Size; not sent");
                }
                continue;
            }
            let properties = PublishProperties {
                correlation_data: Some(to.correlation.into()),
                ..PublishProperties::default()
            };
            client
                .try_publish_with_properties(to.topic, QoS::AtLeastOnce, false, payload, properties)
                .map_err(|source| PublishError::Client {
                    what: "publish a command reply",
                    source: Box::new(source),
                })?;
            flight.queue(Item::Reply);
            self.in_flight += 1;
        }
        Ok(())
    }

    /// The PUBACK of a reply.
    pub(super) fn acked(&mut self, reason: PubAckReason) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let counters = &self.link.counters;
        if matches!(
            reason,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        ) {
            bump(&counters.replies_sent);
            self.refusal = None;
            return;
        }
        bump(&counters.replies_not_sent);
        if self.refusal != Some(reason) {
            self.refusal = Some(reason);
            tracing::warn!(reason = ?reason, "the broker refuses command replies (see its ACL for reply/)");
        }
    }

    /// The next answer from the core task, or the handler's word that an inventory is wanted.
    pub(super) async fn next(commands: &mut Option<Commands>) -> CommandEvent {
        let Some(commands) = commands else {
            return std::future::pending().await;
        };
        let inventory_now = commands.link.inventory_now.clone();
        let answered = async {
            loop {
                match commands.pending.join_next().await {
                    Some(Ok((to, reply))) => return CommandEvent::Answered(to, reply),
                    // The tasks only await a channel: a failure is the runtime going away.
                    Some(Err(_)) => continue,
                    None => std::future::pending::<()>().await,
                }
            }
        };
        tokio::select! {
            event = answered => event,
            () = inventory_now.notified() => CommandEvent::InventoryNow,
        }
    }

    /// An answer from the core task: queued for sending, or counted when there is none.
    pub(super) fn answered(&mut self, to: ReplyTo, reply: Option<CommandReply>) {
        match reply {
            Some(reply) => self.queue(to, reply),
            None => bump(&self.link.counters.replies_not_sent),
        }
    }
}
