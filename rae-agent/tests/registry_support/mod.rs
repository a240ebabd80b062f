//! Shared by the registry integration tests: a core with short, round timers, and builders
//! for the observations a LAN produces.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use rae_agent::registry::{
    ArpKind, Change, Core, CoreConfig, DhcpClient, DhcpMessage, NdpKind, Observation,
    ObservationKind, SeededSessionIds,
};
use rae_proto::{DeviceRecord, Field, Mac, SessionId, Text};

/// 2026-11-26, a plausible wall clock.
pub const T0: i64 = 1_795_600_000_000;
pub const SEC: i64 = 1000;
pub const OWN: Mac = Mac([0x02, 0x00, 0x5e, 0x00, 0x00, 0x01]);

pub fn config() -> CoreConfig {
    CoreConfig {
        probe_interval: Duration::from_secs(10),
        probe_timeout: Duration::from_secs(2),
        offline_after_misses: 3,
        gone_after: Duration::from_secs(600),
        snapshot_interval: Duration::from_secs(300),
        ipv6_expire_after: Duration::from_secs(120),
        conflict_note_interval: Duration::from_secs(60),
        max_ipv6_per_device: 4,
        own_macs: vec![OWN],
        max_sessions: 4096,
    }
}

pub fn core() -> Core<SeededSessionIds> {
    Core::new(&config(), Vec::new(), SeededSessionIds::new(1)).unwrap()
}

pub fn mac(last: u8) -> Mac {
    // A universally administered MAC in Samsung's 00:00:F0 block.
    Mac([0x00, 0x00, 0xf0, 0x00, 0x00, last])
}

pub fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, last)
}

pub fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

pub fn obs(mac: Mac, at_ms: i64, kind: ObservationKind) -> Observation {
    Observation { mac, at_ms, kind }
}

pub fn arp_reply(mac: Mac, ip: Ipv4Addr, at: i64) -> Observation {
    obs(
        mac,
        at,
        ObservationKind::Arp {
            ip: Some(ip),
            kind: ArpKind::Reply,
        },
    )
}

pub fn arp_announce(mac: Mac, ip: Ipv4Addr, at: i64) -> Observation {
    obs(
        mac,
        at,
        ObservationKind::Arp {
            ip: Some(ip),
            kind: ArpKind::Announcement,
        },
    )
}

pub fn probe_reply(mac: Mac, ip: Ipv4Addr, rtt_us: u32, at: i64) -> Observation {
    obs(
        mac,
        at,
        ObservationKind::ProbeReply {
            ip: IpAddr::V4(ip),
            rtt_us,
        },
    )
}

pub fn mdns(mac: Mac, at: i64) -> Observation {
    obs(mac, at, ObservationKind::Mdns { response: true })
}

pub fn ndp_advert(mac: Mac, ip: Ipv6Addr, at: i64) -> Observation {
    obs(
        mac,
        at,
        ObservationKind::Ndp {
            ip: Some(ip),
            kind: NdpKind::NeighborAdvert,
        },
    )
}

pub fn dhcp_request(mac: Mac, hostname: &str, at: i64) -> Observation {
    obs(
        mac,
        at,
        ObservationKind::DhcpClient(DhcpClient {
            message: DhcpMessage::Request,
            hostname: Some(Text::from(hostname)),
            vendor_class: Some(Text::from("udhcp 1.36.1")),
            param_request_list: Some(vec![1, 3, 6, 12, 15, 28, 42]),
            ..DhcpClient::default()
        }),
    )
}

pub fn dhcp_ack(mac: Mac, ip: Ipv4Addr, at: i64) -> Observation {
    obs(mac, at, ObservationKind::DhcpAck { ip })
}

/// The Changes with a seq, i.e. the events that are published.
pub fn published(changes: &[Change]) -> Vec<&Change> {
    changes.iter().filter(|c| c.seq().is_some()).collect()
}

/// The Changes of one session.
pub fn of(changes: &[Change], session: SessionId) -> Vec<&Change> {
    changes.iter().filter(|c| c.session() == session).collect()
}

/// The fields of the only Delta in `changes`, with its seq.
pub fn only_delta(changes: &[Change]) -> (u64, Vec<Field>) {
    let deltas: Vec<_> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Updated { seq, fields, .. } => Some((*seq, fields.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(deltas.len(), 1, "expected one Delta in {changes:#?}");
    deltas.into_iter().next().unwrap()
}

/// Opens a session for `mac` at `at` with an ARP announcement of `ip`; returns its id.
pub fn open(core: &mut Core<SeededSessionIds>, mac: Mac, ip: Ipv4Addr, at: i64) -> SessionId {
    let changes = core.apply(arp_announce(mac, ip, at), at);
    match changes.first() {
        Some(Change::Opened {
            session, seq: 1, ..
        }) => *session,
        other => panic!("expected Opened for {mac}, got {other:?}"),
    }
}

/// Ticks every 100 ms from `from` to `to` inclusive, collecting every Change.
pub fn tick_through(core: &mut Core<SeededSessionIds>, from: i64, to: i64) -> Vec<(i64, Change)> {
    let mut out = Vec::new();
    let mut now = from;
    while now <= to {
        out.extend(core.tick(now).into_iter().map(|c| (now, c)));
        now += 100;
    }
    out
}

/// Applies published events and `Seen`s in order, as the store and the sink would.
pub fn fold(changes: &[Change], session: SessionId) -> Option<DeviceRecord> {
    let mut record: Option<DeviceRecord> = None;
    for change in changes.iter().filter(|c| c.session() == session) {
        match change {
            Change::Opened { record: r, .. } | Change::Snapshot { record: r, .. } => {
                record = Some(r.clone());
            }
            Change::Updated { fields, .. } => {
                let current = record.as_mut()?;
                for field in fields {
                    current.apply(field.clone());
                }
            }
            Change::Seen { last_seen_ms, .. } => record.as_mut()?.last_seen_ms = *last_seen_ms,
            Change::Closed { .. } => return None,
            Change::Conflict { .. } => {}
        }
    }
    record
}
