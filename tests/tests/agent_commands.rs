//! Cloud commands on the agent, whole-system: the real `rae-agent` binary on the lab bridge,
//! real mosquitto, DUTs in namespaces, a requester (MQTT v5 Response Topic + Correlation
//! Data) and a subscriber standing in for the cloud.
//!
//! Each command's reply carries the request's Correlation Data; its effect is an event with
//! the session's next seq at the subscriber (the stream checked strictly), in `raectl show`
//! (the history names the requester) and in `raectl devices --json`. Refusals get typed
//! errors, a foreign Response Topic gets no reply, a burst over the rate gets `rate_limited`,
//! and `raectl status` counts each.
//!
//! Needs root, iproute2 and mosquitto; and the workspace built (`cargo build`).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rae_proto::{
    Availability, CloseReason, CommandReply, CommandRequest, DeviceRef, Envelope, ErrorKind, Event,
    Field, Mac, ReplyBody, SessionId, SessionSeq,
};
use rae_tests::agent::{raectl, Agent, AgentSpec};
use rae_tests::mqtt_watch::MqttWatch;
use rae_tests::netlab::{wait_until, Dut, DutKind, DutSpec, Lab, LabConfig};
use rae_tests::requester::Requester;
use rae_tests::services::Mosquitto;
use rae_tests::stream_check::Stream;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const REPLY: Duration = Duration::from_secs(20);
const SERIAL: &str = "LAB-CMD-1";
const REQUESTER: &str = "lab-ci";

struct Bed {
    lab: Lab,
    _broker: Mosquitto,
    watch: MqttWatch,
    spec: AgentSpec,
    agent: Agent,
    requester: Requester,
    duts: Vec<Dut>,
}

fn bed(control: &str) -> Bed {
    let lab = Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("starting the lab: {e}"));
    let broker = Mosquitto::start().unwrap_or_else(|e| panic!("starting mosquitto: {e}"));
    let watch = MqttWatch::start(broker.host(), broker.port(), "cloud-watch", &["rae/v1/#"])
        .unwrap_or_else(|e| panic!("subscribing: {e}"));
    let mut spec = AgentSpec::for_lab(
        SERIAL,
        lab.bridge_name(),
        &lab.dir().join("agent"),
        broker.host(),
        broker.port(),
    );
    spec.ssdp = false;
    spec.mdns = false;
    // Inventories only at connect and when asked for: the inventory command's shows.
    spec.inventory_interval_secs = 3600;
    spec.extra_toml = control.to_owned();
    let (agent, _) = Agent::start_online(&spec, &watch, WAIT)
        .unwrap_or_else(|e| panic!("starting rae-agent: {e}"));
    // A command published before the agent's SUBACK would reach nobody.
    wait_until("the agent subscribed to its cmd/ topics", WAIT, || {
        let subscribed = status(&spec)["status"]["command"]["subscribed"].clone();
        Ok((subscribed == "yes")
            .then_some(())
            .ok_or(format!("{subscribed}")))
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    let requester = Requester::start(broker.host(), broker.port(), SERIAL, REQUESTER)
        .unwrap_or_else(|e| panic!("starting the requester: {e}"));
    Bed {
        lab,
        _broker: broker,
        watch,
        spec,
        agent,
        requester,
        duts: Vec::new(),
    }
}

/// `raectl status --json`.
fn status(spec: &AgentSpec) -> Value {
    let (code, out, err) = raectl(spec, &["status", "--json"]).expect("raectl status");
    assert!(code.success(), "raectl status --json failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("raectl status --json: {e}\n{out}"))
}

/// A `command.*` counter as `raectl status` shows it.
fn counter(spec: &AgentSpec, key: &str) -> u64 {
    let value = &status(spec)["status"]["command"][key];
    value
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("command.{key} in raectl status: {value}"))
}

/// Waits until the counter `command.{key}` is at least `at_least`.
fn wait_counter(bed: &Bed, key: &str, at_least: u64) {
    wait_until(format!("command.{key} >= {at_least}"), WAIT, || {
        let now = counter(&bed.spec, key);
        Ok((now >= at_least).then_some(()).ok_or(format!("{now}")))
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", bed.agent.log_tail()));
}

impl Bed {
    /// A DUT that speaks (a ping to the router), and its session as the subscriber saw it open.
    fn dut(&mut self, name: &str, host: u8) -> (Mac, SessionId) {
        let ip = self.lab.net().host_v4(host);
        let dut = self
            .lab
            .add_dut(DutSpec::new(name, DutKind::StaticV4 { addr: ip }))
            .unwrap_or_else(|e| panic!("adding DUT {name}: {e}"));
        let _ = dut.ping(IpAddr::V4(self.lab.router_v4()));
        let mac = Mac(dut.mac().0);
        self.duts.push(dut);
        let session = self
            .watch
            .wait_for(format!("{name}'s session opens"), WAIT, |messages| {
                messages
                    .iter()
                    .filter_map(|m| m.event())
                    .find_map(|e| match &e.event {
                        Event::Snapshot { record } if record.mac == mac => Some(e.session),
                        _ => None,
                    })
            })
            .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", self.agent.log_tail()));
        (mac, session)
    }

    /// The event of `session` with `seq`, once the subscriber has it.
    fn event(&self, session: SessionId, seq: u64) -> Envelope {
        self.watch
            .wait_for(format!("event {seq} of {session}"), WAIT, |messages| {
                messages
                    .iter()
                    .filter_map(|m| m.event())
                    .find(|e| e.session == session && e.seq == seq)
            })
            .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", self.agent.log_tail()))
    }

    /// The highest seq of `session` the subscriber has.
    fn last_seq(&self, session: SessionId) -> u64 {
        self.watch
            .events()
            .iter()
            .filter(|e| e.session == session)
            .map(|e| e.seq)
            .max()
            .unwrap_or(0)
    }

    fn request(&self, request: &CommandRequest, correlation: &[u8]) -> CommandReply {
        self.requester
            .request(request, correlation, REPLY)
            .unwrap_or_else(|e| panic!("{request:?}: {e}\nagent log:\n{}", self.agent.log_tail()))
    }

    fn show(&self, mac: Mac) -> String {
        let (code, out, err) =
            raectl(&self.spec, &["show", &mac.to_string()]).expect("raectl show");
        assert!(code.success(), "raectl show failed: {err}");
        out
    }

    fn devices_json(&self) -> Value {
        let (code, out, err) =
            raectl(&self.spec, &["devices", "--all", "--json"]).expect("raectl devices");
        assert!(code.success(), "raectl devices --json failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("raectl devices --json: {e}\n{out}"))
    }

    fn device_row(&self, session: SessionId) -> Value {
        let doc = self.devices_json();
        doc["devices"]
            .as_array()
            .and_then(|rows| {
                rows.iter()
                    .find(|row| row["session"] == session.to_string().as_str())
                    .cloned()
            })
            .unwrap_or_else(|| panic!("session {session} in raectl devices --json:\n{doc}"))
    }

    /// The strict stream check over everything the subscriber got, folded state against the
    /// registry.
    fn check_stream(&self) -> Stream {
        let stream = Stream::check(&self.watch.messages())
            .unwrap_or_else(|e| panic!("the subscriber's stream:\n{e}"));
        let (_, json, _) =
            raectl(&self.spec, &["devices", "--all", "--json"]).expect("raectl devices");
        stream
            .matches_registry(&json)
            .unwrap_or_else(|e| panic!("stream vs raectl devices --json:\n{e}"));
        stream
    }
}

fn device(reply: &CommandReply) -> SessionSeq {
    match reply {
        CommandReply::Ok(ReplyBody::Device(one)) => *one,
        other => panic!("expected Ok(Device), got {other:?}"),
    }
}

fn sessions(reply: &CommandReply) -> Vec<SessionSeq> {
    match reply {
        CommandReply::Ok(ReplyBody::Sessions(many)) => many.clone(),
        other => panic!("expected Ok(Sessions), got {other:?}"),
    }
}

fn error_kind(reply: &CommandReply) -> ErrorKind {
    match reply {
        CommandReply::Error(e) => e.kind,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// The event is a Delta carrying `field`.
fn assert_delta(event: &Envelope, field: &Field) {
    match &event.event {
        Event::Delta { fields } => assert!(fields.contains(field), "{field:?} in {fields:?}"),
        other => panic!("expected a Delta with {field:?}, got {other:?}"),
    }
}

#[test]
fn every_command_round_trips_with_its_effect_as_the_next_event() {
    let mut bed = bed("");
    let (tv, tv_session) = bed.dut("cmd-tv", 10);
    let (box_mac, box_session) = bed.dut("cmd-box", 11);

    // set-availability, by MAC: the reply names the next seq, which is a Delta.
    let before = bed.last_seq(tv_session);
    let reply = bed.request(
        &CommandRequest::SetAvailability {
            device: DeviceRef::Mac(tv),
            availability: Availability::InTest,
        },
        b"avail-1",
    );
    let seq = device(&reply);
    assert_eq!(seq.session, tv_session);
    assert!(seq.seq > before, "seq {} after {before}", seq.seq);
    assert_delta(
        &bed.event(tv_session, seq.seq),
        &Field::Availability(Availability::InTest),
    );
    // Committed before the reply: raectl reads it at once.
    assert!(
        bed.show(tv)
            .contains("availability set to in_test (by cloud:lab-ci)"),
        "raectl show:\n{}",
        bed.show(tv)
    );
    let row = bed.device_row(tv_session);
    assert_eq!(row["availability"], "in_test", "{row}");
    assert!(row["last_seq"].as_u64() >= Some(seq.seq), "{row}");

    // set-esn by session id, then cleared.
    let reply = bed.request(
        &CommandRequest::SetEsn {
            device: DeviceRef::Session(tv_session),
            esn: Some("NFLAB-CMD-0001".into()),
        },
        b"esn-set",
    );
    let set = device(&reply);
    assert_eq!(set.seq, seq.seq + 1, "the next seq");
    assert_delta(
        &bed.event(tv_session, set.seq),
        &Field::Esn(Some("NFLAB-CMD-0001".into())),
    );
    let shown = bed.show(tv);
    assert!(
        shown.contains("NFLAB-CMD-0001") && shown.contains("(by cloud:lab-ci)"),
        "raectl show:\n{shown}"
    );
    let reply = bed.request(
        &CommandRequest::SetEsn {
            device: DeviceRef::Mac(tv),
            esn: None,
        },
        b"esn-clear",
    );
    let cleared = device(&reply);
    assert_eq!(cleared.seq, set.seq + 1);
    assert_delta(&bed.event(tv_session, cleared.seq), &Field::Esn(None));
    assert!(bed.show(tv).contains("ESN cleared (by cloud:lab-ci)"));

    // resync of one device: a Snapshot at the next seq.
    let reply = bed.request(
        &CommandRequest::Resync {
            device: Some(DeviceRef::Mac(tv)),
        },
        b"resync-1",
    );
    let resynced = sessions(&reply);
    assert_eq!(resynced.len(), 1);
    assert_eq!(resynced[0].session, tv_session);
    let snapshot = bed.event(tv_session, resynced[0].seq);
    assert!(
        matches!(snapshot.event, Event::Snapshot { .. }),
        "{snapshot:?}"
    );

    // The same request again (same correlation data): the same reply bytes, no effect.
    let duplicates = counter(&bed.spec, "duplicates");
    bed.requester
        .send(
            &CommandRequest::Resync {
                device: Some(DeviceRef::Mac(tv)),
            },
            b"resync-1",
        )
        .expect("sending the duplicate");
    let replies = wait_until("two replies to resync-1", REPLY, || {
        let replies = bed.requester.replies_for(b"resync-1");
        Ok((replies.len() >= 2)
            .then(|| replies.clone())
            .ok_or(format!("{} replies", replies.len())))
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", bed.agent.log_tail()));
    assert_eq!(
        replies[0].payload, replies[1].payload,
        "byte-identical replies"
    );
    wait_counter(&bed, "duplicates", duplicates + 1);
    // No event came between: the next command's event is the very next seq.
    let reply = bed.request(
        &CommandRequest::SetAvailability {
            device: DeviceRef::Mac(tv),
            availability: Availability::Maintenance,
        },
        b"avail-2",
    );
    assert_eq!(device(&reply).seq, resynced[0].seq + 1, "one effect only");

    // resync of every device: one Snapshot each.
    let reply = bed.request(&CommandRequest::Resync { device: None }, b"resync-all");
    let all = sessions(&reply);
    let listed: Vec<SessionId> = all.iter().map(|s| s.session).collect();
    assert!(
        listed.contains(&tv_session) && listed.contains(&box_session),
        "{all:?}"
    );
    for one in &all {
        assert!(matches!(
            bed.event(one.session, one.seq).event,
            Event::Snapshot { .. }
        ));
    }

    // inventory: the open sessions with their seqs, and an inventory published now.
    let asked = Instant::now();
    let reply = bed.request(&CommandRequest::Inventory, b"inventory");
    let CommandReply::Ok(ReplyBody::Inventory(inventory)) = &reply else {
        panic!("expected an inventory, got {reply:?}");
    };
    for one in &all {
        assert!(inventory.sessions.contains(one), "{one:?} in {inventory:?}");
    }
    bed.watch
        .wait_for(
            "an inventory published after the command",
            WAIT,
            |messages| {
                messages
                    .iter()
                    .find(|m| m.topic == format!("rae/v1/{SERIAL}/inventory") && m.at >= asked)
                    .map(|_| ())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));

    // ping.
    let reply = bed.request(&CommandRequest::Ping, b"ping");
    let CommandReply::Ok(ReplyBody::Pong(pong)) = &reply else {
        panic!("expected a pong, got {reply:?}");
    };
    assert_eq!(pong.sessions_open, 2);
    assert!(!pong.version.is_empty());

    // forget: Closed (Forgotten) at the next seq, and the registry closed the session.
    let before = bed.last_seq(box_session);
    let reply = bed.request(
        &CommandRequest::Forget {
            device: DeviceRef::Mac(box_mac),
        },
        b"forget",
    );
    let forgotten = device(&reply);
    assert_eq!(forgotten.session, box_session);
    assert_eq!(forgotten.seq, before + 1);
    let closed = bed.event(box_session, forgotten.seq);
    assert!(
        matches!(
            closed.event,
            Event::Closed {
                reason: CloseReason::Forgotten
            }
        ),
        "{closed:?}"
    );
    let row = bed.device_row(box_session);
    assert_eq!(row["close_reason"], "forgotten", "{row}");
    assert!(bed.show(box_mac).contains("(by cloud:lab-ci)"));

    // Every reply carried its request's correlation data (the waits matched on it), and
    // nothing else came back.
    for reply in bed.requester.replies() {
        assert!(reply.correlation.is_some(), "{reply:?}");
        assert_eq!(reply.topic, bed.requester.reply_topic());
    }
    bed.check_stream();
    // Ten requests: nine carried out, one answered as a duplicate.
    wait_counter(&bed, "ok", 9);
    assert_eq!(counter(&bed.spec, "received_cloud"), 10);
    assert_eq!(counter(&bed.spec, "duplicates"), 1);
    wait_counter(&bed, "replies_sent", 10);
    bed.agent.ensure_running().expect("the agent runs");
}

#[test]
fn refused_commands_get_typed_errors_and_the_agent_keeps_running() {
    let mut bed = bed("");
    let (tv, tv_session) = bed.dut("cmd-err", 12);
    let reply_topic = bed.requester.reply_topic().to_owned();
    let raw = |level: &str, payload: Vec<u8>, correlation: &[u8]| -> CommandReply {
        bed.requester
            .send_raw(level, payload, Some(&reply_topic), Some(correlation))
            .expect("sending");
        let reply = bed
            .requester
            .wait_reply(correlation, REPLY)
            .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", bed.agent.log_tail()));
        reply.decode().expect("a reply decodes")
    };

    // A payload that is not a request.
    let malformed = raw("resync", vec![1, 0xff, 0xff, 0xff], b"malformed");
    assert_eq!(error_kind(&malformed), ErrorKind::BadRequest);
    let empty = raw("ping", Vec::new(), b"empty");
    assert_eq!(error_kind(&empty), ErrorKind::BadRequest);
    // A level this agent does not know.
    let unknown = raw(
        "reboot",
        CommandRequest::Ping.encode().expect("encodes"),
        b"unknown",
    );
    assert_eq!(error_kind(&unknown), ErrorKind::UnknownCommand);
    // The topic says forget, the payload is a ping.
    let mismatch = raw(
        "forget",
        CommandRequest::Ping.encode().expect("encodes"),
        b"mismatch",
    );
    assert_eq!(error_kind(&mismatch), ErrorKind::BadRequest);
    let CommandReply::Error(e) = &mismatch else {
        unreachable!()
    };
    assert!(e.message.contains("topic says"), "{}", e.message);
    // A device the RAE does not have.
    let stranger = bed.request(
        &CommandRequest::Forget {
            device: DeviceRef::Mac(Mac([0x02, 0, 0, 0, 0, 0x99])),
        },
        b"stranger",
    );
    assert_eq!(error_kind(&stranger), ErrorKind::UnknownDevice);
    // An ESN that breaks the rule.
    let bad_esn = bed.request(
        &CommandRequest::SetEsn {
            device: DeviceRef::Mac(tv),
            esn: Some("has space".into()),
        },
        b"bad-esn",
    );
    assert_eq!(error_kind(&bad_esn), ErrorKind::BadRequest);

    // A Response Topic of another RAE, and none at all: not carried out, no reply.
    let before = bed.last_seq(tv_session);
    let resync = CommandRequest::Resync {
        device: Some(DeviceRef::Mac(tv)),
    }
    .encode()
    .expect("encodes");
    bed.requester
        .send_raw(
            "resync",
            resync.clone(),
            Some("rae/v1/OTHER-RAE/reply/lab-ci"),
            Some(b"foreign"),
        )
        .expect("sending");
    bed.requester
        .send_raw(
            "resync",
            resync.clone(),
            Some("rae/v1/LAB-CMD-1/status"),
            Some(b"not-reply"),
        )
        .expect("sending");
    bed.requester
        .send_raw("resync", resync, None, Some(b"none"))
        .expect("sending");
    wait_counter(&bed, "bad_response_topic", 3);
    // A ping after them: its reply comes after any they could have had.
    let pong = bed.request(&CommandRequest::Ping, b"after");
    assert!(matches!(pong, CommandReply::Ok(ReplyBody::Pong(_))));
    for correlation in [&b"foreign"[..], b"not-reply", b"none"] {
        assert!(bed.requester.replies_for(correlation).is_empty());
    }
    assert!(
        !bed.watch
            .messages()
            .iter()
            .any(|m| m.topic.contains("/reply/") && !m.topic.ends_with("/reply/lab-ci")),
        "no reply anywhere but the requester's reply topic"
    );
    // And no effect: the next change is the next seq.
    let reply = bed.request(
        &CommandRequest::SetAvailability {
            device: DeviceRef::Mac(tv),
            availability: Availability::InTest,
        },
        b"still-works",
    );
    assert_eq!(
        device(&reply),
        SessionSeq {
            session: tv_session,
            seq: before + 1
        }
    );

    bed.agent.ensure_running().expect("the agent keeps running");
    wait_counter(&bed, "error_bad_request", 4);
    wait_counter(&bed, "error_unknown_command", 1);
    wait_counter(&bed, "error_unknown_device", 1);
    wait_counter(&bed, "ok", 2);
    assert_eq!(counter(&bed.spec, "received_cloud"), 11);
    bed.check_stream();
}

#[test]
fn a_burst_over_the_rate_gets_rate_limited_replies_and_no_effect() {
    let mut bed = bed("[control]\nmax_commands_per_sec = 1\nburst = 3\n");
    let (tv, tv_session) = bed.dut("cmd-rate", 13);
    let before = bed.last_seq(tv_session);
    let resync = CommandRequest::Resync {
        device: Some(DeviceRef::Mac(tv)),
    };
    let correlations: Vec<Vec<u8>> = (0..12u8).map(|i| vec![b'r', i]).collect();
    for correlation in &correlations {
        bed.requester.send(&resync, correlation).expect("sending");
    }
    let replies: Vec<CommandReply> = correlations
        .iter()
        .map(|c| {
            bed.requester
                .wait_reply(c, REPLY)
                .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", bed.agent.log_tail()))
                .decode()
                .expect("decodes")
        })
        .collect();
    let limited = replies
        .iter()
        .filter(|r| matches!(r, CommandReply::Error(e) if e.kind == ErrorKind::RateLimited))
        .count();
    let done: Vec<SessionSeq> = replies
        .iter()
        .filter(|r| matches!(r, CommandReply::Ok(_)))
        .flat_map(sessions)
        .collect();
    assert_eq!(limited + done.len(), correlations.len(), "{replies:?}");
    assert!(
        limited >= 6,
        "a burst of 3 at 1/s: {limited} of 12 rate-limited"
    );
    // One Snapshot per command carried out, none for the refused ones.
    let seqs: Vec<u64> = done.iter().map(|s| s.seq).collect();
    let expected: Vec<u64> = (before + 1..=before + done.len() as u64).collect();
    assert_eq!(seqs, expected);
    let last = bed.event(tv_session, before + done.len() as u64);
    assert!(matches!(last.event, Event::Snapshot { .. }));
    wait_counter(&bed, "rate_limited", limited as u64);
    // A refused command retried later (new correlation data) runs.
    let retried = wait_until("a resync accepted after the burst", WAIT, || {
        let reply = bed.request(&resync, format!("retry-{:?}", Instant::now()).as_bytes());
        Ok(match reply {
            CommandReply::Ok(_) => Ok(reply),
            other => Err(format!("{other:?}")),
        })
    })
    .expect("a retry gets through");
    assert_eq!(sessions(&retried)[0].seq, before + done.len() as u64 + 1);
    bed.agent.ensure_running().expect("the agent keeps running");
    bed.check_stream();
}
