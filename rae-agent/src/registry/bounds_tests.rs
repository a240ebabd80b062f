//! The session cap in the core: evict the least recently heard offline session, refuse when
//! none is offline, never more than `max_sessions` open.

use std::net::Ipv4Addr;
use std::time::Duration;

use rae_proto::{CloseReason, DeviceRef, Liveness, Mac};

use crate::registry::{
    ArpKind, Change, Core, CoreConfig, Observation, ObservationKind, SeededSessionIds,
};

const T0: i64 = 1_795_600_000_000;

fn config(max_sessions: usize) -> CoreConfig {
    CoreConfig {
        probe_interval: Duration::from_millis(1000),
        probe_timeout: Duration::from_millis(300),
        offline_after_misses: 2,
        gone_after: Duration::from_secs(60),
        max_sessions,
        ..CoreConfig::default()
    }
}

fn core(max_sessions: usize) -> Core<SeededSessionIds> {
    Core::new(&config(max_sessions), vec![], SeededSessionIds::new(3)).expect("valid config")
}

fn mac(n: u16) -> Mac {
    let [hi, lo] = n.to_be_bytes();
    Mac([0x02, 0, 0, 0, hi, lo])
}

fn announce(n: u16, at_ms: i64) -> Observation {
    let [hi, lo] = n.to_be_bytes();
    Observation {
        mac: mac(n),
        at_ms,
        kind: ObservationKind::Arp {
            ip: Some(Ipv4Addr::new(198, 18, hi, lo)),
            kind: ArpKind::Announcement,
        },
    }
}

fn opened(changes: &[Change]) -> bool {
    changes.iter().any(|c| matches!(c, Change::Opened { .. }))
}

fn closed(changes: &[Change]) -> Vec<(Mac, CloseReason, u64)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Closed {
                mac, reason, seq, ..
            } => Some((*mac, *reason, *seq)),
            _ => None,
        })
        .collect()
}

fn state(core: &Core<SeededSessionIds>, n: u16) -> Option<Liveness> {
    core.session(&DeviceRef::Mac(mac(n)))
        .map(|s| s.record.reachability.state)
}

#[test]
fn at_the_cap_with_every_session_online_a_new_mac_is_refused_and_counted() {
    let mut core = core(3);
    for n in 1..=3 {
        assert!(opened(&core.apply(announce(n, T0), T0)));
    }
    let changes = core.apply(announce(4, T0 + 10), T0 + 10);
    assert!(changes.is_empty(), "refused, no event: {changes:?}");
    assert_eq!(core.sessions().count(), 3);
    assert_eq!(core.cap_counters().refused, 1);
    assert_eq!(core.cap_counters().evicted, 0);
    // The devices already tracked keep their sessions and are still heard.
    assert!(core.apply(announce(2, T0 + 20), T0 + 20).len() <= 1);
    assert_eq!(state(&core, 2), Some(Liveness::Online));
}

#[test]
fn at_the_cap_the_least_recently_heard_offline_session_is_evicted_with_a_closed_event() {
    let mut core = core(3);
    core.apply(announce(1, T0), T0);
    core.apply(announce(2, T0 + 100), T0 + 100);
    // Both go offline after two missed rounds; 3 is heard throughout.
    let mut t = T0;
    while t < T0 + 4_000 {
        t += 250;
        core.tick(t);
        core.apply(announce(3, t), t);
    }
    assert_eq!(state(&core, 1), Some(Liveness::Offline));
    assert_eq!(state(&core, 2), Some(Liveness::Offline));
    let seq_of_1 = core.session(&DeviceRef::Mac(mac(1))).map(|s| s.seq);
    let changes = core.apply(announce(4, t), t);
    assert!(opened(&changes), "the new MAC got a session: {changes:?}");
    let evicted = closed(&changes);
    assert_eq!(
        evicted,
        [(mac(1), CloseReason::Gone, seq_of_1.expect("open") + 1)],
        "the offline session heard least recently goes, with the next seq"
    );
    assert_eq!(core.cap_counters().evicted, 1);
    assert_eq!(core.sessions().count(), 3);
    // The next one takes 2; then only online sessions are left and 6 is refused.
    assert_eq!(closed(&core.apply(announce(5, t), t))[0].0, mac(2));
    assert!(core.apply(announce(6, t), t).is_empty());
    assert_eq!(core.cap_counters().evicted, 2);
    assert_eq!(core.cap_counters().refused, 1);
}

#[test]
fn a_session_back_online_is_no_longer_a_candidate() {
    let mut core = core(2);
    core.apply(announce(1, T0), T0);
    core.apply(announce(2, T0), T0);
    let mut t = T0;
    while t < T0 + 4_000 {
        t += 250;
        core.tick(t);
    }
    assert_eq!(state(&core, 1), Some(Liveness::Offline));
    assert_eq!(core.cap.offline_len(), 2);
    // 1 talks again: online, out of the index; 2 is the one to go.
    core.apply(announce(1, t), t);
    assert_eq!(state(&core, 1), Some(Liveness::Online));
    assert_eq!(core.cap.offline_len(), 1);
    let changes = core.apply(announce(3, t), t);
    assert_eq!(closed(&changes)[0].0, mac(2));
    assert_eq!(core.cap.offline_len(), 0);
}

#[test]
fn a_flood_never_exceeds_the_cap_and_the_index_matches_the_sessions() {
    let cap = 64;
    let mut core = core(cap);
    let mut t = T0;
    for n in 0..5_000u16 {
        t += 7;
        core.apply(announce(n, t), t);
        if n % 50 == 0 {
            core.tick(t);
        }
        assert!(core.sessions().count() <= cap);
    }
    let offline = core
        .sessions()
        .filter(|s| s.record.reachability.state == Liveness::Offline)
        .count();
    assert_eq!(core.cap.offline_len(), offline);
    let c = core.cap_counters();
    assert!(c.evicted > 0 && c.refused > 0, "both paths ran: {c:?}");
    // Every MAC got a session (open, or evicted later) or was refused; none was gone yet.
    let open = core.sessions().count() as u64;
    assert_eq!(open + c.evicted + c.refused, 5_000, "{c:?}");
}
