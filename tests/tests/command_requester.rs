//! The cloud's requester (`cloud_sink::command::Requester`) against a real mosquitto and a
//! small test responder standing in for agents: replies are matched by correlation data
//! (a decoy with other correlation data is ignored), many requests may be outstanding and
//! are answered out of order, a retry re-sends the same correlation data, and a timeout,
//! an undecodable reply and an unreachable broker each come back as their own error.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloud_sink::command::{Request, RequestError, Requester};
use cloud_sink::config::BrokerArgs;
use cloud_sink::mqtt_connect;
use rae_proto::topic::filter;
use rae_proto::{
    CommandReply, CommandRequest, DeviceRef, Pong, ReplyBody, RequesterId, Serial, SessionId,
    SessionSeq, Topic,
};
use rae_tests::services::Mosquitto;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(20);
/// How many requests the reversing responder collects before it answers them, last first.
const REVERSED: usize = 20;

fn serial(s: &str) -> Serial {
    Serial::new(s).expect("a valid serial")
}

fn broker(mosquitto: &Mosquitto) -> BrokerArgs {
    BrokerArgs {
        mqtt_host: mosquitto.host().to_owned(),
        mqtt_port: mosquitto.port(),
        mqtt_client_id: None,
        mqtt_username: None,
        mqtt_password: None,
        mqtt_shared_group: None,
        mqtt_max_inflight: 100,
        mqtt_tls_ca: None,
        mqtt_tls_cert: None,
        mqtt_tls_key: None,
        mqtt_tls_server_name: None,
    }
}

/// What the responder saw: every request's serial and correlation data, in arrival order.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A stand-in for agents: answers on the request's Response Topic with its Correlation Data.
/// - `rae-ok`: first a decoy reply with other correlation data, then the real one.
/// - `rae-rev`: holds [`REVERSED`] requests, then answers them last first.
/// - `rae-garbled`: replies bytes that are no `CommandReply`.
/// - `rae-slow`: holds the reply until `release` fires.
struct Responder {
    seen: Seen,
    release: Option<oneshot::Sender<()>>,
}

fn answer(request: &CommandRequest) -> CommandReply {
    match request {
        // The ESN's number comes back as the seq: each waiter can tell its own reply.
        CommandRequest::SetEsn { esn: Some(esn), .. } => {
            CommandReply::Ok(ReplyBody::Device(SessionSeq {
                session: SessionId::from(uuid::Uuid::nil()),
                seq: esn.trim_start_matches('E').parse().unwrap_or(0),
            }))
        }
        CommandRequest::Ping => CommandReply::Ok(ReplyBody::Pong(Pong {
            version: "test".into(),
            uptime_secs: 1,
            sessions_open: 0,
        })),
        _ => CommandReply::Ok(ReplyBody::Done),
    }
}

async fn start_responder(mosquitto: &Mosquitto) -> Responder {
    let mut options = MqttOptions::new("test-responder", mosquitto.host(), mosquitto.port());
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let seen: Seen = Arc::default();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = oneshot::channel::<()>();
    let (held_tx, mut held_rx) = mpsc::unbounded_channel::<(String, Vec<u8>, CommandReply)>();
    // Publishes the held replies of `rae-slow` once released.
    let slow_client = client.clone();
    let (slow_tx, mut slow_rx) = mpsc::unbounded_channel::<(String, Vec<u8>)>();
    tokio::spawn(async move {
        let _ = release_rx.await;
        while let Some((topic, correlation)) = slow_rx.recv().await {
            reply(
                &slow_client,
                topic,
                correlation,
                &answer(&CommandRequest::Ping),
            )
            .await;
        }
    });
    // Answers `rae-rev` requests last first, once REVERSED are held.
    let rev_client = client.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(one) = held_rx.recv().await {
            held.push(one);
            if held.len() == REVERSED {
                while let Some((topic, correlation, answer)) = held.pop() {
                    reply(&rev_client, topic, correlation, &answer).await;
                }
            }
        }
    });
    let seen_by_loop = seen.clone();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            let event = match eventloop.poll().await {
                Ok(event) => event,
                Err(e) => panic!("the test responder lost the broker: {e}"),
            };
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    let filters = ["rae-ok", "rae-rev", "rae-garbled", "rae-slow"]
                        .map(|s| Filter::new(filter::commands_for(&serial(s)), QoS::AtLeastOnce));
                    client
                        .subscribe_many(filters)
                        .await
                        .expect("responder subscribe queued");
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let Ok(Topic::Command { serial, command }) = Topic::parse(&topic) else {
                        panic!("responder got a publish on {topic}");
                    };
                    let props = p.properties.clone().expect("a request has properties");
                    let response = props
                        .response_topic
                        .expect("a request has a Response Topic");
                    let correlation = props
                        .correlation_data
                        .expect("a request has Correlation Data")
                        .to_vec();
                    seen_by_loop
                        .lock()
                        .expect("seen lock")
                        .push((serial.to_string(), correlation.clone()));
                    let request = CommandRequest::decode_for(command, &p.payload)
                        .expect("the requester's payload decodes");
                    let client = client.clone();
                    match serial.as_str() {
                        "rae-ok" => {
                            let decoy = vec![0xde, 0xad];
                            reply(&client, response.clone(), decoy, &answer(&request)).await;
                            reply(&client, response, correlation, &answer(&request)).await;
                        }
                        "rae-rev" => {
                            let _ = held_tx.send((response, correlation, answer(&request)));
                        }
                        "rae-garbled" => {
                            publish_raw(&client, response, correlation, vec![0xff, 0xff, 0xff])
                                .await
                        }
                        "rae-slow" => {
                            let _ = slow_tx.send((response, correlation));
                        }
                        other => panic!("responder got a request for {other}"),
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(WAIT, ready_rx)
        .await
        .expect("the test responder subscribed within the deadline")
        .expect("the responder task runs");
    Responder {
        seen,
        release: Some(release_tx),
    }
}

async fn reply(client: &AsyncClient, topic: String, correlation: Vec<u8>, reply: &CommandReply) {
    let payload = reply.encode().expect("a reply encodes");
    publish_raw(client, topic, correlation, payload).await;
}

async fn publish_raw(client: &AsyncClient, topic: String, correlation: Vec<u8>, payload: Vec<u8>) {
    let properties = PublishProperties {
        correlation_data: Some(correlation.into()),
        ..PublishProperties::default()
    };
    client
        .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
        .await
        .expect("reply queued");
}

async fn requester(mosquitto: &Mosquitto, id: &str) -> Requester {
    let options = mqtt_connect::options(&broker(mosquitto), id).expect("options");
    Requester::connect(options, RequesterId::new(id).expect("requester id"), WAIT)
        .await
        .expect("the requester connects and subscribes")
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_match_by_correlation_and_many_may_be_outstanding() {
    let mosquitto = Mosquitto::start().expect("mosquitto starts");
    let responder = start_responder(&mosquitto).await;
    let client = Arc::new(requester(&mosquitto, "test-cloud").await);

    // One request: the decoy with other correlation data is not taken for the reply.
    let answer = client
        .request(serial("rae-ok"), CommandRequest::Ping, WAIT)
        .await
        .expect("ping answered");
    assert!(matches!(answer.reply, CommandReply::Ok(ReplyBody::Pong(_))));
    let seen = responder.seen.lock().expect("seen").clone();
    assert_eq!(
        seen,
        vec![("rae-ok".to_owned(), answer.correlation.clone())]
    );
    wait_for("the decoy reply counted as unmatched", || {
        client.stats().unmatched.load(Ordering::Relaxed) >= 1
    })
    .await;

    // REVERSED requests at once, answered last first: each gets its own reply.
    let mut tasks = Vec::new();
    for i in 1..=REVERSED as u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let body = CommandRequest::SetEsn {
                device: DeviceRef::Session(SessionId::from(uuid::Uuid::nil())),
                esn: Some(format!("E{i}")),
            };
            (i, client.request(serial("rae-rev"), body, WAIT).await)
        }));
    }
    let mut correlations = HashMap::new();
    for task in tasks {
        let (i, result) = task.await.expect("request task");
        let answer = result.unwrap_or_else(|e| panic!("request {i}: {e}"));
        let CommandReply::Ok(ReplyBody::Device(s)) = answer.reply else {
            panic!("request {i}: {:?}", answer.reply)
        };
        assert_eq!(s.seq, i, "request {i} got another request's reply");
        assert!(
            correlations.insert(answer.correlation, i).is_none(),
            "correlation data reused"
        );
    }
    assert_eq!(client.outstanding(), 0, "every waiter is gone");

    // A retry of the same request sends the same correlation data again.
    let retried = Request::new(serial("rae-ok"), CommandRequest::Inventory);
    let first = client.send(&retried, WAIT).await.expect("first send");
    let second = client.send(&retried, WAIT).await.expect("the retry");
    assert_eq!(first.correlation, retried.correlation);
    assert_eq!(second.correlation, retried.correlation);
    let sent_twice = responder
        .seen
        .lock()
        .expect("seen")
        .iter()
        .filter(|(_, c)| *c == retried.correlation)
        .count();
    assert_eq!(
        sent_twice, 2,
        "the responder saw the retry with the same correlation data"
    );
    assert_eq!(client.stats().timeouts.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_late_and_undecodable_replies_and_an_unreachable_broker_are_typed() {
    let mosquitto = Mosquitto::start().expect("mosquitto starts");
    let mut responder = start_responder(&mosquitto).await;
    let client = requester(&mosquitto, "test-cloud-2").await;

    // Nobody serves this serial.
    let started = std::time::Instant::now();
    let err = client
        .request(
            serial("rae-nobody"),
            CommandRequest::Ping,
            Duration::from_millis(300),
        )
        .await
        .expect_err("no reply from a serial nobody serves");
    assert!(matches!(err, RequestError::Timeout(_)), "{err}");
    assert!(started.elapsed() < WAIT, "the timeout ended the wait");

    // A reply after the deadline is counted, not delivered, and nothing breaks.
    let err = client
        .request(
            serial("rae-slow"),
            CommandRequest::Ping,
            Duration::from_millis(300),
        )
        .await
        .expect_err("the slow responder holds its reply");
    assert!(matches!(err, RequestError::Timeout(_)), "{err}");
    assert_eq!(client.stats().timeouts.load(Ordering::Relaxed), 2);
    let unmatched = client.stats().unmatched.load(Ordering::Relaxed);
    let _ = responder.release.take().expect("release once").send(());
    wait_for("the late reply counted as unmatched", || {
        client.stats().unmatched.load(Ordering::Relaxed) > unmatched
    })
    .await;

    let err = client
        .request(serial("rae-garbled"), CommandRequest::Ping, WAIT)
        .await
        .expect_err("a garbled reply is an error");
    assert!(matches!(err, RequestError::UndecodableReply(_)), "{err}");
    assert_eq!(client.stats().undecodable.load(Ordering::Relaxed), 1);

    // Still usable after all that.
    client
        .request(serial("rae-ok"), CommandRequest::Ping, WAIT)
        .await
        .expect("ping answered after the failures");

    // A broker that is not there.
    let mut gone = broker(&mosquitto);
    let port = mosquitto.port();
    drop(client);
    drop(mosquitto);
    gone.mqtt_port = port;
    let options = mqtt_connect::options(&gone, "test-cloud-3").expect("options");
    let err = Requester::connect(options, RequesterId::new("test-cloud-3").expect("id"), WAIT)
        .await
        .err()
        .expect("no broker, no requester");
    assert!(matches!(err, RequestError::BrokerUnreachable(_)), "{err}");
}
