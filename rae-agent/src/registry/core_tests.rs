//! `publish_update`: what counts as a change of a record.

use rae_proto::{Reachability, Text};

use super::*;

fn session() -> Session {
    let record = DeviceRecord::new(Mac([0, 0, 0xf0, 0, 0, 1]), Evidence::ArpReply, 1_000);
    Session::opened(SessionId::from_bytes([1; 16]), record, 1_000, 1_000)
}

#[test]
fn rtt_alone_is_no_change_and_last_seen_alone_is_seen() {
    let mut s = session();
    let before = s.record.clone();
    s.record.reachability.rtt_us = Some(700);
    let mut out = Vec::new();
    publish_update(&mut s, &before, cause(), &mut out);
    assert!(out.is_empty());
    s.record.last_seen_ms = 2_000;
    publish_update(&mut s, &before, cause(), &mut out);
    assert_eq!(
        out,
        vec![Change::Seen {
            session: s.id,
            last_seen_ms: 2_000
        }]
    );
    assert_eq!(s.seq, 1);
}

#[test]
fn a_transition_carries_the_current_rtt_and_last_seen_rides_along() {
    let mut s = session();
    s.record.reachability.rtt_us = Some(700);
    let before = s.record.clone();
    s.record.reachability.state = Liveness::Offline;
    s.record.reachability.evidence = Evidence::ProbeMissed { count: 3 };
    s.record.hostname = Some(Text::from("tv"));
    s.record.last_seen_ms = 1_500;
    let mut out = Vec::new();
    publish_update(&mut s, &before, cause(), &mut out);
    let [Change::Updated { seq: 2, fields, .. }] = out.as_slice() else {
        panic!("expected one Delta, got {out:?}");
    };
    assert_eq!(
        fields,
        &vec![
            Field::Hostname(Some(Text::from("tv"))),
            Field::Reachability(Reachability {
                state: Liveness::Offline,
                evidence: Evidence::ProbeMissed { count: 3 },
                rtt_us: Some(700),
            }),
            Field::LastSeen(1_500),
        ]
    );
}

fn cause() -> Cause {
    Cause {
        at_ms: 0,
        summary: String::new(),
    }
}
