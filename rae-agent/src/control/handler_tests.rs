//! The handler on a bare core (every mapping, error kind, duplicate and rate rule) and on the
//! store thread with the in-memory store (the reply waits for the commit).

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::Relaxed;

use rae_proto::{Availability, ErrorKind, Mac, RequesterId, SessionId};
use tokio::sync::oneshot;

use super::*;
use crate::config::{PublishConfig, RegistryConfig};
use crate::registry::{ArpKind, CoreConfig, Observation, ObservationKind, SeededSessionIds};
use crate::store::{MemoryStore, StoreOptions, StoreThreadOptions};

const DUT: Mac = Mac([0x02, 0, 0x5e, 0, 0, 7]);
const OTHER: Mac = Mac([0x02, 0, 0x5e, 0, 0, 8]);

fn serial() -> Serial {
    Serial::new("RAE-T").expect("serial")
}

fn core_with(macs: &[Mac]) -> Core<SeededSessionIds> {
    opened(macs).0
}

/// A core with a session per MAC, and the Changes that opened them.
fn opened(macs: &[Mac]) -> (Core<SeededSessionIds>, Vec<Change>) {
    let mut changes = Vec::new();
    let config = CoreConfig::new(
        &RegistryConfig::default(),
        &PublishConfig::default(),
        vec![],
    );
    let mut core = Core::new(&config, vec![], SeededSessionIds::new(7)).expect("core");
    for (i, mac) in macs.iter().enumerate() {
        let opened = core.apply(
            Observation {
                mac: *mac,
                at_ms: 1_000,
                kind: ObservationKind::Arp {
                    ip: Some(Ipv4Addr::new(198, 18, 0, 10 + i as u8)),
                    kind: ArpKind::Request,
                },
            },
            1_000,
        );
        assert!(!opened.is_empty(), "the session opens");
        changes.extend(opened);
    }
    (core, changes)
}

fn handler(per_sec: u32, burst: u32) -> Handler {
    let config = ControlConfig {
        max_commands_per_sec: per_sec,
        burst,
        ..ControlConfig::default()
    };
    Handler::new(&config, serial(), 0)
}

fn cloud(correlation: &[u8]) -> Origin {
    Origin::Cloud {
        requester: RequesterId::new("ci").expect("requester"),
        correlation: correlation.to_vec(),
    }
}

fn session_of(core: &Core<SeededSessionIds>, mac: Mac) -> SessionId {
    core.session(&DeviceRef::Mac(mac)).expect("open").session
}

fn error_kind(reply: &CommandReply) -> Option<ErrorKind> {
    match reply {
        CommandReply::Error(e) => Some(e.kind),
        CommandReply::Ok(_) => None,
    }
}

fn cause_of(change: &Change) -> &str {
    match change {
        Change::Updated { cause, .. }
        | Change::Snapshot { cause, .. }
        | Change::Closed { cause, .. } => &cause.summary,
        other => panic!("no cause in {other:?}"),
    }
}

#[test]
fn set_availability_and_esn_reply_the_seq_after_the_change_and_name_the_requester() {
    let mut core = core_with(&[DUT]);
    let mut h = handler(100, 100);
    let session = session_of(&core, DUT);
    let request = CommandRequest::SetAvailability {
        device: DeviceRef::Mac(DUT),
        availability: Availability::InTest,
    };
    let d = h.decide(&request, &cloud(b"1"), &mut core, 2_000);
    assert_eq!(
        d.reply,
        CommandReply::Ok(ReplyBody::Device(SessionSeq { session, seq: 2 }))
    );
    assert!(d.after_commit && !d.duplicate);
    assert_eq!(d.changes.len(), 1);
    assert_eq!(d.changes[0].seq(), Some(2));
    assert_eq!(
        cause_of(&d.changes[0]),
        "availability set to in_test (by cloud:ci)"
    );

    let set = CommandRequest::SetEsn {
        device: DeviceRef::Session(session),
        esn: Some("NFANDROID2-PRV-1234".into()),
    };
    let local = Origin::Local { uid: 1000 };
    let d = h.decide(&set, &local, &mut core, 2_100);
    assert_eq!(
        d.reply,
        CommandReply::Ok(ReplyBody::Device(SessionSeq { session, seq: 3 }))
    );
    assert_eq!(
        cause_of(&d.changes[0]),
        "ESN set to NFANDROID2-PRV-1234 (by raectl (uid 1000))"
    );
    let clear = CommandRequest::SetEsn {
        device: DeviceRef::Mac(DUT),
        esn: None,
    };
    let d = h.decide(&clear, &cloud(b"2"), &mut core, 2_200);
    assert_eq!(
        d.reply,
        CommandReply::Ok(ReplyBody::Device(SessionSeq { session, seq: 4 }))
    );
    assert!(cause_of(&d.changes[0]).starts_with("ESN cleared"));
    // Already in test: no event, the current seq, still after a commit (it may be pending).
    let d = h.decide(&request, &cloud(b"3"), &mut core, 2_300);
    assert!(d.changes.is_empty());
    assert_eq!(
        d.reply,
        CommandReply::Ok(ReplyBody::Device(SessionSeq { session, seq: 4 }))
    );
    assert!(d.after_commit);
    assert_eq!(h.counters().received_local.load(Relaxed), 1);
}

#[test]
fn resync_one_or_all_and_forget() {
    let mut core = core_with(&[DUT, OTHER]);
    let mut h = handler(100, 100);
    let dut = session_of(&core, DUT);
    let other = session_of(&core, OTHER);
    let one = CommandRequest::Resync {
        device: Some(DeviceRef::Mac(DUT)),
    };
    let d = h.decide(&one, &cloud(b"1"), &mut core, 2_000);
    assert_eq!(
        d.reply,
        CommandReply::Ok(ReplyBody::Sessions(vec![SessionSeq {
            session: dut,
            seq: 2
        }]))
    );
    assert!(matches!(
        d.changes.as_slice(),
        [Change::Snapshot { seq: 2, .. }]
    ));
    assert_eq!(cause_of(&d.changes[0]), "resync (by cloud:ci)");

    let all = CommandRequest::Resync { device: None };
    let d = h.decide(&all, &cloud(b"2"), &mut core, 2_100);
    let mut expected = vec![
        SessionSeq {
            session: dut,
            seq: 3,
        },
        SessionSeq {
            session: other,
            seq: 2,
        },
    ];
    expected.sort();
    assert_eq!(d.reply, CommandReply::Ok(ReplyBody::Sessions(expected)));
    assert_eq!(d.changes.len(), 2);

    let forget = CommandRequest::Forget {
        device: DeviceRef::Session(dut),
    };
    let d = h.decide(&forget, &cloud(b"3"), &mut core, 2_200);
    assert_eq!(
        d.reply,
        CommandReply::Ok(ReplyBody::Device(SessionSeq {
            session: dut,
            seq: 4
        }))
    );
    assert!(matches!(
        d.changes.as_slice(),
        [Change::Closed { seq: 4, .. }]
    ));
    assert!(core.session(&DeviceRef::Mac(DUT)).is_none());
    assert_eq!(h.counters().received_local.load(Relaxed), 0);
}

#[test]
fn inventory_and_ping_answer_without_changes() {
    let mut core = core_with(&[DUT, OTHER]);
    let mut h = handler(100, 100);
    let d = h.decide(&CommandRequest::Inventory, &cloud(b"1"), &mut core, 2_000);
    let CommandReply::Ok(ReplyBody::Inventory(inventory)) = &d.reply else {
        panic!("an inventory: {:?}", d.reply);
    };
    assert_eq!(inventory.serial, serial());
    assert_eq!(inventory.sessions, core.inventory());
    assert!(d.changes.is_empty() && d.after_commit && d.inventory);

    let d = h.decide(&CommandRequest::Ping, &cloud(b"2"), &mut core, 2_000);
    let CommandReply::Ok(ReplyBody::Pong(pong)) = &d.reply else {
        panic!("a pong: {:?}", d.reply);
    };
    assert_eq!(pong.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(pong.sessions_open, 2);
    assert!(!d.after_commit && !d.inventory);
}

#[test]
fn unknown_devices_and_bad_esns_get_typed_errors_and_no_effect() {
    let mut core = core_with(&[DUT]);
    let mut h = handler(100, 100);
    let stranger = DeviceRef::Mac(Mac([0x02, 0, 0, 0, 0, 0x99]));
    let unknown_session = DeviceRef::Session(SessionId::from_bytes([9; 16]));
    let requests = [
        CommandRequest::SetAvailability {
            device: stranger,
            availability: Availability::Maintenance,
        },
        CommandRequest::SetEsn {
            device: unknown_session,
            esn: None,
        },
        CommandRequest::Resync {
            device: Some(stranger),
        },
        CommandRequest::Forget {
            device: unknown_session,
        },
    ];
    for (i, request) in requests.iter().enumerate() {
        let d = h.decide(request, &cloud(&[i as u8]), &mut core, 2_000);
        assert_eq!(
            error_kind(&d.reply),
            Some(ErrorKind::UnknownDevice),
            "{request:?}"
        );
        assert!(d.changes.is_empty() && !d.after_commit);
    }
    let CommandReply::Error(e) = h.decide(&requests[0], &cloud(b"x"), &mut core, 2_000).reply
    else {
        panic!("an error");
    };
    assert_eq!(e.message, "unknown device: mac 02:00:00:00:00:99");
    for esn in ["", "has space", &"E".repeat(129)] {
        let request = CommandRequest::SetEsn {
            device: DeviceRef::Mac(DUT),
            esn: Some(esn.to_owned()),
        };
        let d = h.decide(&request, &Origin::Local { uid: 0 }, &mut core, 2_000);
        assert_eq!(error_kind(&d.reply), Some(ErrorKind::BadRequest), "{esn:?}");
        assert!(d.changes.is_empty());
    }
    assert_eq!(core.session(&DeviceRef::Mac(DUT)).expect("open").seq, 1);
}

#[test]
fn a_cloud_command_seen_again_gets_the_same_reply_and_no_second_effect() {
    let mut core = core_with(&[DUT]);
    let mut h = handler(100, 100);
    let request = CommandRequest::Resync {
        device: Some(DeviceRef::Mac(DUT)),
    };
    let first = h.decide(&request, &cloud(b"same"), &mut core, 2_000);
    assert_eq!(first.changes.len(), 1);
    let again = h.decide(&request, &cloud(b"same"), &mut core, 3_000);
    assert!(again.duplicate && again.changes.is_empty() && again.after_commit);
    assert_eq!(
        again.reply.encode().expect("encodes"),
        first.reply.encode().expect("encodes"),
        "byte-identical"
    );
    // An error reply is remembered too.
    let stranger = CommandRequest::Forget {
        device: DeviceRef::Mac(Mac([0x02, 0, 0, 0, 0, 0x99])),
    };
    let refused = h.decide(&stranger, &cloud(b"e"), &mut core, 3_000);
    assert_eq!(
        h.decide(&stranger, &cloud(b"e"), &mut core, 3_000).reply,
        refused.reply
    );
    // Other correlation data: a new command.
    let other = h.decide(&request, &cloud(b"other"), &mut core, 3_000);
    assert_eq!(other.changes.len(), 1);
    assert_eq!(other.changes[0].seq(), Some(3));
    // raectl actions are not deduplicated.
    let local = Origin::Local { uid: 0 };
    assert_eq!(
        h.decide(&request, &local, &mut core, 3_000).changes.len(),
        1
    );
    assert_eq!(
        h.decide(&request, &local, &mut core, 3_000).changes.len(),
        1
    );
    // After the window (600 s by default) the same pair runs again.
    let later = h.decide(&request, &cloud(b"same"), &mut core, 2_000 + 600_000);
    assert!(!later.duplicate);
    assert_eq!(later.changes.len(), 1);
    assert!(h.counters().duplicate_evicted_aged.load(Relaxed) >= 1);
}

#[test]
fn over_the_rate_a_command_is_refused_without_effect_and_not_remembered() {
    let mut core = core_with(&[DUT]);
    let mut h = handler(1, 3);
    let request = CommandRequest::Resync {
        device: Some(DeviceRef::Mac(DUT)),
    };
    let replies: Vec<Decision> = (0..5u8)
        .map(|i| h.decide(&request, &cloud(&[i]), &mut core, 2_000))
        .collect();
    let limited = replies
        .iter()
        .filter(|d| error_kind(&d.reply) == Some(ErrorKind::RateLimited))
        .count();
    assert_eq!(limited, 2, "a burst of 3 at 1/s");
    assert!(replies[3..]
        .iter()
        .all(|d| d.changes.is_empty() && !d.after_commit));
    assert_eq!(core.session(&DeviceRef::Mac(DUT)).expect("open").seq, 4);
    // The refused one, retried once a token is back, runs.
    let retried = h.decide(&request, &cloud(&[4]), &mut core, 3_000);
    assert_eq!(retried.changes.len(), 1);
    // Local actions share the bucket.
    let local = h.decide(&request, &Origin::Local { uid: 0 }, &mut core, 3_000);
    assert_eq!(error_kind(&local.reply), Some(ErrorKind::RateLimited));
}

fn store() -> StoreHandle {
    let (handle, _thread) = StoreHandle::spawn(
        MemoryStore::new(StoreOptions::default()),
        serial(),
        StoreThreadOptions::default(),
    )
    .expect("store thread");
    handle
}

async fn run(
    h: &mut Handler,
    core: &mut Core<SeededSessionIds>,
    store: &StoreHandle,
    request: CommandRequest,
    origin: Origin,
) -> CommandReply {
    let (reply, answer) = oneshot::channel();
    let job = Job {
        request,
        origin,
        reply,
    };
    h.handle(job, core, store, 2_000).await.expect("handled");
    answer.await.expect("a reply")
}

#[tokio::test]
async fn the_reply_comes_once_the_change_is_committed_and_is_counted() {
    let store = store();
    let (mut core, opened) = opened(&[DUT]);
    // The session as the store knows it.
    store.submit(opened).await.expect("submit");
    store.flush().await.expect("flush");
    let mut h = handler(100, 100);
    let inventory = store.inventory_watch();
    let request = CommandRequest::SetAvailability {
        device: DeviceRef::Mac(DUT),
        availability: Availability::Maintenance,
    };
    let reply = run(&mut h, &mut core, &store, request.clone(), cloud(b"1")).await;
    let CommandReply::Ok(ReplyBody::Device(seq)) = reply else {
        panic!("ok: {reply:?}");
    };
    assert_eq!(
        inventory.borrow().as_slice(),
        &[seq],
        "committed before the reply"
    );
    let again = run(&mut h, &mut core, &store, request, cloud(b"1")).await;
    assert_eq!(again, CommandReply::Ok(ReplyBody::Device(seq)));

    let notified = h.inventory_requests();
    let listed = run(
        &mut h,
        &mut core,
        &store,
        CommandRequest::Inventory,
        cloud(b"2"),
    )
    .await;
    assert!(matches!(listed, CommandReply::Ok(ReplyBody::Inventory(_))));
    tokio::time::timeout(std::time::Duration::from_secs(5), notified.notified())
        .await
        .expect("the publisher is asked for the inventory");
    let pong = run(
        &mut h,
        &mut core,
        &store,
        CommandRequest::Ping,
        Origin::Local { uid: 7 },
    )
    .await;
    assert!(matches!(pong, CommandReply::Ok(ReplyBody::Pong(_))));

    let c = h.counters();
    assert_eq!(c.ok.load(Relaxed), 3);
    assert_eq!(c.duplicates.load(Relaxed), 1);
    assert_eq!(c.received_local.load(Relaxed), 1);
    let entries = c.entries();
    assert!(entries.contains(&("command.ok".to_owned(), "3".to_owned())));
    assert!(entries.contains(&("command.duplicates".to_owned(), "1".to_owned())));
}

#[tokio::test]
async fn a_store_that_stopped_gets_an_internal_reply() {
    let store = store();
    store.shutdown().await.expect("shutdown");
    let mut core = core_with(&[DUT]);
    let mut h = handler(100, 100);
    let (reply, answer) = oneshot::channel();
    let job = Job {
        request: CommandRequest::Resync { device: None },
        origin: Origin::Local { uid: 0 },
        reply,
    };
    // The submit fails, or (when the thread has not let go of its queue yet) the flush does.
    let _ = h.handle(job, &mut core, &store, 2_000).await;
    let reply = answer.await.expect("a reply");
    assert_eq!(error_kind(&reply), Some(ErrorKind::Internal));
    assert_eq!(h.counters().error_internal.load(Relaxed), 1);
}
