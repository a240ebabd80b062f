//! A test subscriber: an MQTT v5 client on its own thread that records every message on the
//! topics it was given, with the time it arrived, so a test can wait for what a cloud
//! consumer would see (Snapshots, Deltas, Closed, status, inventory).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rae_proto::{Envelope, Topic};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::oneshot;

use crate::netlab::{wait_until, LabError, Result};

/// One message as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub at: Instant,
}

impl Received {
    /// The device event it carries, if it is one.
    pub fn event(&self) -> Option<Envelope> {
        match Topic::parse(&self.topic).ok()? {
            Topic::Device { .. } => Envelope::decode(&self.payload).ok(),
            _ => None,
        }
    }
}

/// The subscriber; disconnects when dropped.
pub struct MqttWatch {
    messages: Arc<Mutex<Vec<Received>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MqttWatch {
    /// Connects to `host:port` and subscribes to `filters` (QoS 1); returns once SUBACK came.
    pub fn start(host: &str, port: u16, client_id: &str, filters: &[&str]) -> Result<MqttWatch> {
        MqttWatch::start_with_session(host, port, client_id, filters, true)
    }

    /// [`start`](Self::start) with a persistent session, as a cloud consumer's would: see
    /// [`start_with_session`](Self::start_with_session).
    pub fn start_persistent(
        host: &str,
        port: u16,
        client_id: &str,
        filters: &[&str],
    ) -> Result<MqttWatch> {
        MqttWatch::start_with_session(host, port, client_id, filters, false)
    }

    /// [`start`](Self::start) with `clean_session = false` (v5: no clean start, a session
    /// expiry of an hour): with a broker that persists
    /// sessions, the subscription and the messages queued for it survive a broker restart, so
    /// an outage test's subscriber misses nothing published while it reconnects.
    pub fn start_with_session(
        host: &str,
        port: u16,
        client_id: &str,
        filters: &[&str],
        clean_session: bool,
    ) -> Result<MqttWatch> {
        let mut options = MqttOptions::new(client_id, host, port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_clean_start(clean_session);
        if !clean_session {
            // MQTT v5: the session outlives the connection only with an expiry interval.
            options.set_session_expiry_interval(Some(3600));
        }
        MqttWatch::start_with_options(options, filters)
    }

    /// A subscriber with `options` as they are (TLS, a client certificate); returns once
    /// every filter's SUBACK came, whatever its reason code.
    pub fn start_with_options(options: MqttOptions, filters: &[&str]) -> Result<MqttWatch> {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
        let client_id = options.client_id();
        let (host, port) = options.broker_address();
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        let sink = Arc::clone(&messages);
        let thread = std::thread::Builder::new()
            .name(format!("mqtt-watch-{client_id}"))
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
                    let (client, mut events) = AsyncClient::new(options, 64);
                    for filter in &filters {
                        if let Err(e) = client.subscribe(filter.clone(), QoS::AtLeastOnce).await {
                            let _ = ready_tx.send(Err(format!("subscribe {filter}: {e}")));
                            return;
                        }
                    }
                    let mut subacks = 0;
                    let mut ready = Some(ready_tx);
                    loop {
                        tokio::select! {
                            _ = &mut stop_rx => {
                                let _ = client.disconnect().await;
                                return;
                            }
                            event = events.poll() => match event {
                                Ok(Event::Incoming(Packet::SubAck(_))) => {
                                    subacks += 1;
                                    if subacks == filters.len() {
                                        if let Some(tx) = ready.take() {
                                            let _ = tx.send(Ok(()));
                                        }
                                    }
                                }
                                Ok(Event::Incoming(Packet::Publish(p))) => {
                                    let received = Received {
                                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                                        payload: p.payload.to_vec(),
                                        retain: p.retain,
                                        at: Instant::now(),
                                    };
                                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(received);
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    if let Some(tx) = ready.take() {
                                        let _ = tx.send(Err(format!("connect: {e}")));
                                        return;
                                    }
                                    // The broker went away (a test may stop it): retry.
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                            }
                        }
                    }
                });
            })
            .map_err(|source| LabError::Spawn {
                command: "mqtt watch thread".into(),
                source,
            })?;
        let ready = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| "no SUBACK within 20 s".to_string())
            .and_then(|r| r);
        let watch = MqttWatch {
            messages,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        ready.map_err(|detail| LabError::Parse {
            what: format!("MQTT subscription at {host}:{port}"),
            detail,
        })?;
        Ok(watch)
    }

    /// Everything received so far, in arrival order.
    pub fn messages(&self) -> Vec<Received> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The device events received so far, decoded, in arrival order.
    pub fn events(&self) -> Vec<Envelope> {
        self.messages().iter().filter_map(Received::event).collect()
    }

    /// Waits until `probe` over the messages so far gives `Some`, for at most `timeout`.
    pub fn wait_for<T>(
        &self,
        what: impl std::fmt::Display,
        timeout: Duration,
        mut probe: impl FnMut(&[Received]) -> Option<T>,
    ) -> Result<T> {
        wait_until(what, timeout, || {
            let messages = self.messages();
            Ok(probe(&messages).ok_or_else(|| format!("{} messages so far", messages.len())))
        })
    }
}

impl Drop for MqttWatch {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
