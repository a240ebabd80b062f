//! The synchronous heart of the daemon: captured frames, identification results and the passing
//! of time in; Changes for the store and probe frames for the LAN out. It owns the registry
//! core and the liveness prober, and does no I/O itself, so the daemon's own glue (frame to
//! observation, probe answers to RTTs, addresses to MACs) is tested without sockets.
//!
//! Every `now_ms` here is on the core clock (`crate::clock`); the wall clock enters only as
//! the offset given to [`Engine::set_wall_offset`], and a frame's capture stamp (wall clock)
//! only tells how long it waited, which moves its time back by at most [`MAX_FRAME_AGE_MS`].

use std::net::IpAddr;
use std::time::Instant;

use rae_proto::{DeviceRef, SessionSeq};
use tracing::{debug, warn};

use crate::capture::{CapturedFrame, PacketType};
use crate::probe::liveness::{LanAddrs, Liveness, LivenessCounters, ProbeFrame};
use crate::probe::Identified;
use crate::registry::{
    observations_from_frame, Action, ArpKind, Change, Core, NdpKind, Observation, ObservationKind,
    SessionIds,
};
use crate::wire::{DropCounters, Message};

/// How far a frame's capture stamp may put it before its processing: frames wait only in
/// the bounded queues between the capture thread and here. A larger gap is a wall-clock step
/// between the two readings, not a wait.
pub const MAX_FRAME_AGE_MS: i64 = 5_000;

/// What the engine did, for `raectl status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineCounters {
    pub frames: u64,
    /// Frames that failed to parse here although the capture thread had parsed them (never
    /// expected; kept by reason in `drops`).
    pub unparsable: u64,
    pub observations: u64,
    /// mDNS responses decoded into host names and services.
    pub mdns_decoded: u64,
    /// Identification results for an address no open session holds.
    pub unmatched_identifications: u64,
    pub changes: u64,
    /// ESNs from DIAL that the core refused (malformed).
    pub esn_refused: u64,
}

pub struct Engine<I: SessionIds> {
    core: Core<I>,
    liveness: Liveness,
    counters: EngineCounters,
    drops: DropCounters,
    mdns: super::mdns::MdnsDecoder,
    own_macs: std::collections::BTreeSet<rae_proto::Mac>,
    /// Service types learnt from mDNS answers, each once, for the querier to ask about.
    mdns_types: std::collections::BTreeSet<String>,
    new_mdns_types: Vec<String>,
    /// Wall minus core clock, as last given.
    wall_offset_ms: i64,
}

impl<I: SessionIds> Engine<I> {
    /// `own_macs`: the ones the core was configured with.
    pub fn new(core: Core<I>, liveness: Liveness, own_macs: &[rae_proto::Mac]) -> Self {
        Engine {
            core,
            liveness,
            counters: EngineCounters::default(),
            drops: DropCounters::default(),
            mdns: super::mdns::MdnsDecoder::default(),
            own_macs: own_macs.iter().copied().collect(),
            mdns_types: std::collections::BTreeSet::new(),
            new_mdns_types: Vec::new(),
            wall_offset_ms: 0,
        }
    }

    /// The wall clock's offset to the core clock, from now on (see `Core::set_wall_offset`).
    pub fn set_wall_offset(&mut self, offset_ms: i64) {
        self.wall_offset_ms = offset_ms;
        self.core.set_wall_offset(offset_ms);
    }

    /// When `frame` was captured, on the core clock: its wait in the queues, taken from its
    /// wall-clock stamp, bounded so that a step between the two readings cannot move it.
    fn captured_at(&self, frame: &CapturedFrame, now_ms: i64) -> i64 {
        let wall_now = now_ms.saturating_add(self.wall_offset_ms);
        let waited = wall_now
            .saturating_sub(frame.at_ms)
            .clamp(0, MAX_FRAME_AGE_MS);
        now_ms - waited
    }

    /// Service types learnt since the last call (for the mDNS querier).
    pub fn take_new_mdns_types(&mut self) -> Vec<String> {
        std::mem::take(&mut self.new_mdns_types)
    }

    pub fn core(&self) -> &Core<I> {
        &self.core
    }

    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    pub fn liveness(&self) -> LivenessCounters {
        self.liveness.counters()
    }

    /// One captured frame, processed at `now_ms` (core clock; `now` for probe RTTs).
    pub fn frame(&mut self, frame: &CapturedFrame, now_ms: i64, now: Instant) -> Vec<Change> {
        self.counters.frames += 1;
        let at_ms = self.captured_at(frame, now_ms);
        let parsed = match frame.parse() {
            Ok(parsed) => parsed,
            Err(reason) => {
                self.counters.unparsable += 1;
                self.drops.record(reason);
                return Vec::new();
            }
        };
        let mut changes = Vec::new();
        if frame.packet_type == PacketType::Outgoing
            && !self.own_macs.contains(&parsed.ethernet.src)
        {
            // Sent by this host, from a MAC it did not have when last asked (a bridge takes
            // a port's MAC when ports join): it is ours, never a device.
            self.own_macs.insert(parsed.ethernet.src);
            let own: Vec<rae_proto::Mac> = self.own_macs.iter().copied().collect();
            changes.extend(self.core.set_own_macs(&own, now_ms));
        }
        let mut observations = Vec::new();
        if let Message::Mdns { payload, .. } = &parsed.message {
            match self.mdns.decode(parsed.ethernet.src, payload, at_ms) {
                Ok(decoded) => {
                    if !decoded.observations.is_empty() {
                        self.counters.mdns_decoded += 1;
                    }
                    observations.extend(decoded.observations);
                    for service_type in decoded.types {
                        // Bounded by the decoder's max_types per packet and the querier's
                        // own max_types; the set only remembers what was handed over.
                        if self.mdns_types.len() < 256
                            && self.mdns_types.insert(service_type.clone())
                        {
                            self.new_mdns_types.push(service_type);
                        }
                    }
                }
                Err(reason) => self.drops.record(reason),
            }
        }
        if let Some(obs) = observations_from_frame(&parsed, at_ms) {
            // The liveness observation first, so the session exists before its details.
            observations.insert(0, self.as_probe_reply(obs, now));
        }
        changes.extend(self.apply_all(observations, now_ms));
        changes
    }

    /// An ARP reply or neighbour advertisement that answers a probe in flight becomes a
    /// `ProbeReply` carrying the RTT; everything else passes unchanged.
    fn as_probe_reply(&mut self, obs: Observation, now: Instant) -> Observation {
        let answer = match &obs.kind {
            ObservationKind::Arp {
                ip: Some(ip),
                kind: ArpKind::Reply,
            } => Some(IpAddr::V4(*ip)),
            ObservationKind::Ndp {
                ip: Some(ip),
                kind: NdpKind::NeighborAdvert,
            } => Some(IpAddr::V6(*ip)),
            _ => None,
        };
        let Some(ip) = answer else { return obs };
        match self.liveness.answered(ip, obs.mac, now) {
            Some(rtt_us) => Observation {
                kind: ObservationKind::ProbeReply { ip, rtt_us },
                ..obs
            },
            None => obs,
        }
    }

    /// What SSDP/UPnP/DIAL identification learnt about the device at an address.
    pub fn identified(&mut self, found: Identified, now_ms: i64) -> Vec<Change> {
        let Some(mac) = self.core.mac_for_ip(found.ip) else {
            self.counters.unmatched_identifications += 1;
            debug!(ip = %found.ip, "identified a device no open session holds");
            return Vec::new();
        };
        let mut out = self.apply_all(
            vec![
                Observation {
                    mac,
                    at_ms: now_ms,
                    kind: ObservationKind::Upnp(found.upnp),
                },
                Observation {
                    mac,
                    at_ms: now_ms,
                    kind: ObservationKind::Dial {
                        apps: found.dial_apps,
                    },
                },
            ],
            now_ms,
        );
        if let Some(esn) = found.esn {
            let unchanged = self
                .core
                .session(&DeviceRef::Mac(mac))
                .is_some_and(|s| s.record.esn.as_deref() == Some(esn.as_str()));
            if !unchanged {
                let action = Action::SetEsn {
                    device: DeviceRef::Mac(mac),
                    esn: Some(esn),
                };
                match self.core.act(&action, "dial", now_ms) {
                    Ok(changes) => {
                        self.counters.changes += changes.len() as u64;
                        out.extend(changes);
                    }
                    Err(err) => {
                        self.counters.esn_refused += 1;
                        debug!(%mac, %err, "DIAL offered an ESN the registry refuses");
                    }
                }
            }
        }
        out
    }

    /// Observations that arrive by address (answers to queries read from a socket).
    pub fn by_address(
        &mut self,
        ip: IpAddr,
        kinds: Vec<ObservationKind>,
        now_ms: i64,
    ) -> Vec<Change> {
        let Some(mac) = self.core.mac_for_ip(ip) else {
            self.counters.unmatched_identifications += 1;
            return Vec::new();
        };
        let observations = kinds
            .into_iter()
            .map(|kind| Observation {
                mac,
                at_ms: now_ms,
                kind,
            })
            .collect();
        self.apply_all(observations, now_ms)
    }

    /// Timers: offline and gone transitions, periodic Snapshots, and the probes due now.
    pub fn tick(
        &mut self,
        now_ms: i64,
        now: Instant,
        lan: Option<&LanAddrs>,
    ) -> (Vec<Change>, Vec<ProbeFrame>) {
        let changes = self.core.tick(now_ms);
        self.counters.changes += changes.len() as u64;
        let due = self.core.due_probes(now_ms);
        let frames = match lan {
            Some(lan) if !due.is_empty() => self.liveness.frames(&due, lan, now),
            _ => Vec::new(),
        };
        (changes, frames)
    }

    /// The host's interface MACs, re-read: see [`Core::set_own_macs`].
    pub fn set_own_macs(&mut self, macs: &[rae_proto::Mac], now_ms: i64) -> Vec<Change> {
        self.own_macs = macs.iter().copied().collect();
        let out = self.core.set_own_macs(macs, now_ms);
        self.counters.changes += out.len() as u64;
        out
    }

    pub fn send_failed(&mut self, target: IpAddr) {
        self.liveness.send_failed(target);
    }

    pub fn next_deadline(&self, now_ms: i64) -> Option<i64> {
        self.core.next_deadline(now_ms)
    }

    pub fn inventory(&self) -> Vec<SessionSeq> {
        self.core.inventory()
    }

    pub fn act(
        &mut self,
        action: &Action,
        by: &str,
        now_ms: i64,
    ) -> Result<Vec<Change>, crate::registry::ActionError> {
        self.core.act(action, by, now_ms)
    }

    fn apply_all(&mut self, observations: Vec<Observation>, now_ms: i64) -> Vec<Change> {
        let mut out = Vec::new();
        let before = self.core.cap_counters();
        for obs in observations {
            self.counters.observations += 1;
            out.extend(self.core.apply(obs, now_ms));
        }
        self.counters.changes += out.len() as u64;
        let after = self.core.cap_counters();
        // Per kind at most `log.max_per_minute` lines: a MAC flood must not flood the log.
        if after.refused > before.refused && crate::log_limit::allow("registry.session_refused") {
            warn!(
                max_sessions = self.core.max_sessions(),
                refused = after.refused,
                "session cap reached and every session online: a new device was refused"
            );
        }
        if after.evicted > before.evicted && crate::log_limit::allow("registry.session_evicted") {
            warn!(
                max_sessions = self.core.max_sessions(),
                evicted = after.evicted,
                "session cap reached: the offline session heard least recently was closed \
                 to make room for a new device"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use rae_proto::Mac;

    use super::*;
    use crate::config::{PublishConfig, RegistryConfig};
    use crate::registry::{CoreConfig, SeededSessionIds};
    use crate::wire::{arp, ArpRepr};

    const DUT: Mac = Mac([0x02, 0, 0x5e, 0, 0, 7]);
    const BRIDGE: Mac = Mac([0x7e, 0x2a, 0x79, 0x39, 0xe4, 0x61]);

    fn engine() -> Engine<SeededSessionIds> {
        let config = CoreConfig::new(
            &RegistryConfig::default(),
            &PublishConfig::default(),
            vec![],
        );
        let core = Core::new(&config, vec![], SeededSessionIds::new(7)).expect("core");
        Engine::new(core, Liveness::new(100, Duration::from_secs(10)), &[])
    }

    fn announcement(mac: Mac, ip: Ipv4Addr, packet_type: PacketType, at_ms: i64) -> CapturedFrame {
        let repr = ArpRepr::request(mac, ip, ip);
        CapturedFrame {
            at_ms,
            bytes: arp::build_frame(Mac::BROADCAST, None, &repr),
            csum_not_ready: false,
            vlan: None,
            packet_type,
        }
    }

    #[test]
    fn a_frame_this_host_sent_from_a_new_mac_marks_it_own_and_closes_its_session() {
        let mut e = engine();
        let now = Instant::now();
        let ip = Ipv4Addr::new(198, 18, 0, 1);
        // Before the bridge's MAC is known as ours, a broadcast from it looks like a device...
        let opened = e.frame(
            &announcement(BRIDGE, ip, PacketType::Broadcast, 1_000),
            1_000,
            now,
        );
        assert!(opened.iter().any(|c| matches!(c, Change::Opened { .. })));
        // ...until the host is seen sending from it: Closed, and never reopened.
        let changes = e.frame(
            &announcement(BRIDGE, ip, PacketType::Outgoing, 2_000),
            2_000,
            now,
        );
        assert!(changes
            .iter()
            .any(|c| matches!(c, Change::Closed { mac, .. } if *mac == BRIDGE)));
        let again = e.frame(
            &announcement(BRIDGE, ip, PacketType::Broadcast, 3_000),
            3_000,
            now,
        );
        assert!(
            again.is_empty(),
            "own MAC must not open a session: {again:?}"
        );
        // A device is unaffected.
        let dut = e.frame(
            &announcement(
                DUT,
                Ipv4Addr::new(198, 18, 0, 7),
                PacketType::Broadcast,
                3_000,
            ),
            3_000,
            now,
        );
        assert!(dut.iter().any(|c| matches!(c, Change::Opened { .. })));
    }

    #[test]
    fn a_frames_wait_comes_from_its_stamp_but_a_wall_step_cannot_move_it() {
        let mut e = engine();
        let now = Instant::now();
        let core_now = 100_000;
        e.set_wall_offset(-3_600_000);
        let wall_now = core_now - 3_600_000;
        // Captured 300 ms ago by the wall clock: heard 300 ms ago, stamped on the wall clock.
        let opened = e.frame(
            &announcement(
                DUT,
                Ipv4Addr::new(198, 18, 0, 7),
                PacketType::Broadcast,
                wall_now - 300,
            ),
            core_now,
            now,
        );
        let Some(Change::Opened { record, .. }) = opened.first() else {
            panic!("expected the session to open: {opened:?}");
        };
        assert_eq!(record.last_seen_ms, wall_now - 300);
        // Stamped just before the wall clock went back an hour: taken as just captured.
        let other = Mac([0x02, 0, 0x5e, 0, 0, 8]);
        let opened = e.frame(
            &announcement(
                other,
                Ipv4Addr::new(198, 18, 0, 8),
                PacketType::Broadcast,
                core_now,
            ),
            core_now,
            now,
        );
        let Some(Change::Opened { record, .. }) = opened.first() else {
            panic!("expected the session to open: {opened:?}");
        };
        assert_eq!(record.last_seen_ms, wall_now);
        // Stamped before a step forward: at most MAX_FRAME_AGE_MS early.
        e.set_wall_offset(3_600_000);
        let third = Mac([0x02, 0, 0x5e, 0, 0, 9]);
        let opened = e.frame(
            &announcement(
                third,
                Ipv4Addr::new(198, 18, 0, 9),
                PacketType::Broadcast,
                core_now,
            ),
            core_now,
            now,
        );
        let Some(Change::Opened { record, .. }) = opened.first() else {
            panic!("expected the session to open: {opened:?}");
        };
        assert_eq!(record.last_seen_ms, core_now + 3_600_000 - MAX_FRAME_AGE_MS);
    }

    #[test]
    fn an_arp_reply_to_a_probe_in_flight_carries_the_rtt() {
        let mut e = engine();
        let now = Instant::now();
        let ip = Ipv4Addr::new(198, 18, 0, 7);
        e.frame(
            &announcement(DUT, ip, PacketType::Broadcast, 1_000),
            1_000,
            now,
        );
        let lan = LanAddrs {
            mac: BRIDGE,
            ipv4: Some(Ipv4Addr::new(198, 18, 0, 1)),
            ipv6_link_local: None,
        };
        // Ticks until the session's probe round is due.
        let mut sent = Vec::new();
        for step in 0..40 {
            let (_, frames) = e.tick(1_000 + step * 500, now, Some(&lan));
            sent.extend(frames);
            if !sent.is_empty() {
                break;
            }
        }
        assert!(!sent.is_empty(), "a probe went out within 20 s");
        let reply = ArpRepr {
            operation: crate::wire::arp::Operation::Reply,
            sender_mac: DUT,
            sender_ip: ip,
            target_mac: BRIDGE,
            target_ip: Ipv4Addr::new(198, 18, 0, 1),
        };
        let frame = CapturedFrame {
            at_ms: 30_000,
            bytes: arp::build_frame(BRIDGE, None, &reply),
            csum_not_ready: false,
            vlan: None,
            packet_type: PacketType::Host,
        };
        e.frame(&frame, 30_000, now + Duration::from_millis(2));
        assert_eq!(e.liveness().answered, 1);
    }
}
