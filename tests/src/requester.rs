//! A cloud requester for tests: an MQTT v5 client on its own thread that publishes commands
//! to one RAE's `cmd/` topics with a Response Topic and Correlation Data, and records every
//! reply on its `reply/{requester}` topic with the Correlation Data it came back with.
//!
//! Besides well-formed requests it sends whatever a test needs to see refused: any bytes on
//! any `cmd/` level, with any Response Topic or none.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rae_proto::{CommandReply, CommandRequest};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::oneshot;

use crate::netlab::{wait_until, LabError, Result};

/// One reply as it arrived.
#[derive(Clone, Debug)]
pub struct Reply {
    pub topic: String,
    /// `None`: the reply carried no Correlation Data.
    pub correlation: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub at: Instant,
}

impl Reply {
    pub fn decode(&self) -> std::result::Result<CommandReply, String> {
        CommandReply::decode(&self.payload).map_err(|e| e.to_string())
    }
}

/// The requester; disconnects when dropped.
pub struct Requester {
    serial: String,
    reply_topic: String,
    client: AsyncClient,
    replies: Arc<Mutex<Vec<Reply>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Requester {
    /// Connects to `host:port` as `requester` and subscribes to
    /// `rae/v1/{serial}/reply/{requester}`; returns once the SUBACK came.
    pub fn start(host: &str, port: u16, serial: &str, requester: &str) -> Result<Requester> {
        let reply_topic = format!("rae/v1/{serial}/reply/{requester}");
        let replies = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
        let mut options = MqttOptions::new(format!("requester-{requester}"), host, port);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(options, 256);
        let sink = Arc::clone(&replies);
        let subscriber = client.clone();
        let filter = reply_topic.clone();
        let thread = std::thread::Builder::new()
            .name(format!("requester-{requester}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    if let Err(e) = subscriber.subscribe(filter.clone(), QoS::AtLeastOnce).await {
                        let _ = ready_tx.send(Err(format!("subscribe {filter}: {e}")));
                        return;
                    }
                    let mut ready = Some(ready_tx);
                    loop {
                        tokio::select! {
                            _ = &mut stop_rx => {
                                let _ = subscriber.disconnect().await;
                                return;
                            }
                            event = events.poll() => match event {
                                Ok(Event::Incoming(Packet::SubAck(_))) => {
                                    if let Some(tx) = ready.take() {
                                        let _ = tx.send(Ok(()));
                                    }
                                }
                                Ok(Event::Incoming(Packet::Publish(p))) => {
                                    let reply = Reply {
                                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                                        correlation: p
                                            .properties
                                            .as_ref()
                                            .and_then(|props| props.correlation_data.as_ref())
                                            .map(|data| data.to_vec()),
                                        payload: p.payload.to_vec(),
                                        at: Instant::now(),
                                    };
                                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(reply);
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    if let Some(tx) = ready.take() {
                                        let _ = tx.send(Err(format!("connect: {e}")));
                                        return;
                                    }
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                            }
                        }
                    }
                });
            })
            .map_err(|source| LabError::Spawn {
                command: "requester thread".into(),
                source,
            })?;
        let requester = Requester {
            serial: serial.to_owned(),
            reply_topic,
            client,
            replies,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| "no SUBACK within 20 s".to_string())
            .and_then(|r| r)
            .map_err(|detail| LabError::Parse {
                what: format!("the requester's subscription at {host}:{port}"),
                detail,
            })?;
        Ok(requester)
    }

    /// Where this requester's replies come: `rae/v1/{serial}/reply/{requester}`.
    pub fn reply_topic(&self) -> &str {
        &self.reply_topic
    }

    /// Publishes `request` on its own `cmd/` level, replies to this requester.
    pub fn send(&self, request: &CommandRequest, correlation: &[u8]) -> Result<()> {
        let payload = request.encode().map_err(|e| LabError::Parse {
            what: "encoding a command request".into(),
            detail: e.to_string(),
        })?;
        let topic = self.reply_topic.clone();
        self.send_raw(
            request.kind().topic_level(),
            payload,
            Some(&topic),
            Some(correlation),
        )
    }

    /// Publishes `payload` on `rae/v1/{serial}/cmd/{level}` (QoS 1), with `response_topic`
    /// and `correlation` as given (`None`: the property is left out).
    pub fn send_raw(
        &self,
        level: &str,
        payload: Vec<u8>,
        response_topic: Option<&str>,
        correlation: Option<&[u8]>,
    ) -> Result<()> {
        let topic = format!("rae/v1/{}/cmd/{level}", self.serial);
        let properties = PublishProperties {
            response_topic: response_topic.map(str::to_owned),
            correlation_data: correlation.map(|c| c.to_vec().into()),
            ..PublishProperties::default()
        };
        self.client
            .try_publish_with_properties(
                topic.clone(),
                QoS::AtLeastOnce,
                false,
                payload,
                properties,
            )
            .map_err(|e| LabError::Parse {
                what: format!("publishing a request on {topic}"),
                detail: e.to_string(),
            })
    }

    /// Every reply so far, in arrival order.
    pub fn replies(&self) -> Vec<Reply> {
        self.replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The replies so far that carry `correlation`.
    pub fn replies_for(&self, correlation: &[u8]) -> Vec<Reply> {
        self.replies()
            .into_iter()
            .filter(|r| r.correlation.as_deref() == Some(correlation))
            .collect()
    }

    /// Waits up to `timeout` for the first reply carrying `correlation`.
    pub fn wait_reply(&self, correlation: &[u8], timeout: Duration) -> Result<Reply> {
        wait_until(
            format!("a reply with correlation data {correlation:02x?}"),
            timeout,
            || {
                let replies = self.replies();
                Ok(replies
                    .iter()
                    .find(|r| r.correlation.as_deref() == Some(correlation))
                    .cloned()
                    .ok_or_else(|| format!("{} replies so far", replies.len())))
            },
        )
    }

    /// Sends `request` and waits for its reply, decoded.
    pub fn request(
        &self,
        request: &CommandRequest,
        correlation: &[u8],
        timeout: Duration,
    ) -> Result<CommandReply> {
        self.send(request, correlation)?;
        let reply = self.wait_reply(correlation, timeout)?;
        reply.decode().map_err(|detail| LabError::Parse {
            what: "a command reply".into(),
            detail,
        })
    }
}

impl Drop for Requester {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
