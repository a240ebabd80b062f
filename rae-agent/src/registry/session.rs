//! One open session as the core holds it, and how an observation changes its record.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rae_proto::{DeviceRecord, Liveness, SessionId, Text};

use super::observation::{ArpKind, DhcpMessage, ObservationKind};
use super::schedule::Timers;

/// An open session as the store keeps it: what the core needs to carry on after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredSession {
    pub session: SessionId,
    /// The seq of the session's latest event; the next one gets `seq + 1`.
    pub seq: u64,
    pub record: DeviceRecord,
}

/// What an observation says about an address of the device, which concerns the other
/// sessions holding it too (`conflict`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The device itself uses the IPv4 address (ARP sender, DHCP ciaddr, a probe answer).
    Uses(Ipv4Addr),
    /// The DHCP server gave the device the address: it is no one else's any more.
    Assigned(Ipv4Addr),
    /// The device released the address (DHCP RELEASE).
    Released(Ipv4Addr),
    /// The device vouched for the IPv6 address (an NS from it, the target of its NA or of its
    /// DAD probe, a probe answer), already added to its record; `new` when it was not there.
    Vouches { ip: Ipv6Addr, new: bool },
}

/// The core's state of one open session. `record` is the current record: the last
/// published one with `last_seen_ms` and the probe RTT moved on in place (neither is
/// published on its own).
///
/// Two clocks (see `core`): every time the session keeps for its own decisions (`heard_ms`,
/// `ipv6_heard`, `last_full_ms`) is on the core's monotonic clock; the record's
/// `first_seen_ms` and `last_seen_ms` are wall-clock stamps, written when the device was
/// heard and never read back for a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Session {
    pub id: SessionId,
    pub seq: u64,
    pub record: DeviceRecord,
    /// When the device was last heard (core clock); `record.last_seen_ms` is its wall stamp.
    pub heard_ms: i64,
    /// The host names by source: DHCP's wins, mDNS's fills in.
    pub dhcp_hostname: Option<Text>,
    pub mdns_hostname: Option<Text>,
    /// When each IPv6 address in the record was last vouched for.
    pub ipv6_heard: BTreeMap<Ipv6Addr, i64>,
    /// When the whole record was last published (Opened or Snapshot).
    pub last_full_ms: Option<i64>,
}

impl Session {
    /// A new session whose device was heard at `heard` (core clock).
    pub fn opened(id: SessionId, record: DeviceRecord, heard: i64, now: i64) -> Session {
        Session {
            id,
            seq: 1,
            record,
            heard_ms: heard,
            dhcp_hostname: None,
            mdns_hostname: None,
            ipv6_heard: BTreeMap::new(),
            last_full_ms: Some(now),
        }
    }

    /// A session from the store, whose wall stamps are taken as core times: the daemon's core
    /// clock starts at the wall clock (`crate::clock`). Which source a stored host name came
    /// from is not stored: a device that was seen doing DHCP is taken to have its name from
    /// DHCP.
    pub fn restored(restored: RestoredSession) -> Session {
        let RestoredSession {
            session,
            seq,
            record,
        } = restored;
        let did_dhcp = record.dhcp_client_id.is_some()
            || record.dhcp_vendor_class.is_some()
            || !record.dhcp_param_request_list.is_empty();
        let (dhcp_hostname, mdns_hostname) = if did_dhcp {
            (record.hostname.clone(), None)
        } else {
            (None, record.hostname.clone())
        };
        let heard_ms = record.last_seen_ms;
        let ipv6_heard = record.ipv6.iter().map(|ip| (*ip, heard_ms)).collect();
        Session {
            id: session,
            seq,
            record,
            heard_ms,
            dhcp_hostname,
            mdns_hostname,
            ipv6_heard,
            last_full_ms: None,
        }
    }

    pub fn to_restored(&self) -> RestoredSession {
        RestoredSession {
            session: self.id,
            seq: self.seq,
            record: self.record.clone(),
        }
    }

    /// The next seq, now taken.
    pub fn bump(&mut self) -> u64 {
        self.seq = self.seq.saturating_add(1);
        self.seq
    }

    /// The common frame, taken in without the copy of the record that a Delta needs: an
    /// online device proves it is alive and at most vouches for an address that is its
    /// alone and already in its record. Returns `None`, having changed nothing, when the
    /// observation may change more than `last_seen_ms`, the probe RTT and when an address
    /// was heard ([`Session::absorb`] then takes it in); else whether `last_seen_ms` moved.
    /// `sole` tells whether an address is held by this device alone. `at` is on the core's
    /// clock, `wall_at` the same instant on the wall clock.
    pub fn refresh(
        &mut self,
        kind: &ObservationKind,
        at: i64,
        wall_at: i64,
        timers: &Timers,
        sole: impl Fn(IpAddr) -> bool,
    ) -> Option<bool> {
        if self.record.reachability.state != Liveness::Online {
            return None;
        }
        let ipv4 = self.record.ipv4;
        let holds_v4 = |ip: &Ipv4Addr| ipv4 == Some(*ip) && sole(IpAddr::V4(*ip));
        let holds_v6 = |ip: &Ipv6Addr| self.ipv6_heard.contains_key(ip) && sole(IpAddr::V6(*ip));
        let (vouched, rtt) = match kind {
            ObservationKind::Arp {
                kind: ArpKind::Probe,
                ..
            }
            | ObservationKind::Arp { ip: None, .. }
            | ObservationKind::Ndp { ip: None, .. }
            | ObservationKind::Mdns { .. }
            | ObservationKind::Ssdp { .. } => (None, None),
            ObservationKind::Arp { ip: Some(ip), .. } if holds_v4(ip) => (None, None),
            ObservationKind::Ndp { ip: Some(ip), .. } if holds_v6(ip) => (Some(*ip), None),
            ObservationKind::ProbeReply {
                ip: IpAddr::V4(ip),
                rtt_us,
            } if holds_v4(ip) => (None, Some(*rtt_us)),
            ObservationKind::ProbeReply {
                ip: IpAddr::V6(ip),
                rtt_us,
            } if holds_v6(ip) => (Some(*ip), Some(*rtt_us)),
            _ => return None,
        };
        let seen = self.heard_ms.max(at);
        // `absorb` would drop the addresses the new last_seen leaves unheard for too long.
        let ages = self.ipv6_heard.iter().any(|(ip, heard)| {
            let heard = if Some(*ip) == vouched {
                (*heard).max(at)
            } else {
                *heard
            };
            seen.saturating_sub(heard) > timers.ipv6_expire_ms
        });
        if ages {
            return None;
        }
        if let Some(heard) = vouched.and_then(|ip| self.ipv6_heard.get_mut(&ip)) {
            *heard = (*heard).max(at);
        }
        if rtt.is_some() {
            self.record.reachability.rtt_us = rtt;
        }
        let moved = seen != self.heard_ms;
        if moved {
            self.heard_ms = seen;
            self.record.last_seen_ms = wall_at;
        }
        Some(moved)
    }

    /// Takes in what `kind` says about the device. The address it claims concerns other
    /// sessions too and is returned for the core to settle (an IPv6 address is in the record
    /// already, an IPv4 one not yet). `at` is when it was seen (core clock), `wall_at` the
    /// same instant on the wall clock.
    pub fn absorb(
        &mut self,
        kind: &ObservationKind,
        at: i64,
        wall_at: i64,
        timers: &Timers,
    ) -> Option<Claim> {
        if kind.evidence().is_some() && at > self.heard_ms {
            self.heard_ms = at;
            self.record.last_seen_ms = wall_at;
        }
        let mut claim = None;
        match kind {
            ObservationKind::DhcpClient(dhcp) => {
                if let Some(name) = &dhcp.hostname {
                    self.dhcp_hostname = Some(name.clone());
                }
                if let Some(class) = &dhcp.vendor_class {
                    self.record.dhcp_vendor_class = Some(class.clone());
                }
                if let Some(id) = &dhcp.client_id {
                    self.record.dhcp_client_id = Some(id.clone());
                }
                if let Some(list) = &dhcp.param_request_list {
                    self.record.dhcp_param_request_list.clone_from(list);
                }
                claim = match (dhcp.message, dhcp.ciaddr) {
                    (DhcpMessage::Release, Some(ip)) => Some(Claim::Released(ip)),
                    (DhcpMessage::Request | DhcpMessage::Inform, Some(ip)) => Some(Claim::Uses(ip)),
                    _ => None,
                };
            }
            ObservationKind::DhcpAck { ip } => claim = Some(Claim::Assigned(*ip)),
            ObservationKind::Arp { ip: Some(ip), kind } if *kind != ArpKind::Probe => {
                claim = Some(Claim::Uses(*ip));
            }
            ObservationKind::Arp { .. } => {}
            ObservationKind::Ndp { ip: Some(ip), .. } => claim = self.heard_ipv6(*ip, at, timers),
            ObservationKind::Ndp { ip: None, .. } => {}
            ObservationKind::ProbeReply { ip, rtt_us } => {
                self.record.reachability.rtt_us = Some(*rtt_us);
                match ip {
                    IpAddr::V4(ip) => claim = Some(Claim::Uses(*ip)),
                    IpAddr::V6(ip) => claim = self.heard_ipv6(*ip, at, timers),
                }
            }
            ObservationKind::Mdns { .. } | ObservationKind::Ssdp { .. } => {}
            ObservationKind::MdnsHost { hostname } => self.mdns_hostname = Some(hostname.clone()),
            ObservationKind::MdnsService(service) => {
                let services = &mut self.record.mdns_services;
                services.retain(|s| {
                    (&s.service_type, &s.instance) != (&service.service_type, &service.instance)
                });
                services.push(service.clone());
                services.sort();
            }
            ObservationKind::MdnsServiceGone {
                service_type,
                instance,
            } => self
                .record
                .mdns_services
                .retain(|s| (&s.service_type, &s.instance) != (service_type, instance)),
            ObservationKind::Upnp(description) => self.record.upnp = Some(description.clone()),
            ObservationKind::Dial { apps } => {
                let mut apps = apps.clone();
                apps.sort();
                apps.dedup_by(|a, b| a.name == b.name);
                self.record.dial_apps = apps;
            }
        }
        self.record.hostname = self
            .dhcp_hostname
            .clone()
            .or_else(|| self.mdns_hostname.clone());
        self.expire_ipv6(timers);
        claim
    }

    fn heard_ipv6(&mut self, ip: Ipv6Addr, at: i64, timers: &Timers) -> Option<Claim> {
        let new = !self.ipv6_heard.contains_key(&ip);
        let heard = self.ipv6_heard.entry(ip).or_insert(at);
        *heard = (*heard).max(at);
        while self.ipv6_heard.len() > timers.max_ipv6 {
            // The least recently heard goes; among equals, the lowest address (deterministic).
            let oldest = self
                .ipv6_heard
                .iter()
                .min_by_key(|(ip, heard)| (**heard, **ip))
                .map(|(ip, _)| *ip);
            match oldest {
                Some(oldest) => self.ipv6_heard.remove(&oldest),
                None => break,
            };
        }
        Some(Claim::Vouches { ip, new })
    }

    /// When the next IPv6 address ages out: `ipv6_expire_after` after it was last vouched
    /// for, counted only for addresses the device was heard without since (a silent device
    /// keeps them all: its silence says nothing about any one address).
    pub fn ipv6_age_at(&self, timers: &Timers) -> Option<i64> {
        let seen = self.heard_ms;
        self.ipv6_heard
            .values()
            .filter(|heard| **heard < seen)
            .min()
            .map(|heard| {
                heard
                    .saturating_add(timers.ipv6_expire_ms)
                    .saturating_add(1)
            })
    }

    /// The earliest time at which the core has to look at this session again by itself: it
    /// is gone, goes offline or an IPv6 address ages out. Probe rounds and Snapshot slots
    /// are not in it: they sit on the session's fixed grid (`schedule`).
    pub fn expiry_at(&self, timers: &Timers) -> i64 {
        let heard = self.heard_ms;
        let mut at = timers.gone_at(heard);
        if self.record.reachability.state == Liveness::Online {
            at = at.min(timers.offline_at(self.id, heard));
        }
        if let Some(age) = self.ipv6_age_at(timers) {
            at = at.min(age);
        }
        at
    }

    /// Drops the IPv6 addresses that have aged out by `now` (see [`Session::ipv6_age_at`]);
    /// returns them.
    pub fn age_ipv6(&mut self, now: i64, timers: &Timers) -> Vec<Ipv6Addr> {
        let seen = self.heard_ms;
        let aged: Vec<Ipv6Addr> = self
            .ipv6_heard
            .iter()
            .filter(|(_, heard)| {
                **heard < seen
                    && i128::from(now) - i128::from(**heard) > i128::from(timers.ipv6_expire_ms)
            })
            .map(|(ip, _)| *ip)
            .collect();
        for ip in &aged {
            self.ipv6_heard.remove(ip);
        }
        self.sync_ipv6_list();
        aged
    }

    /// Takes `ip` off the record: another device took it over.
    pub fn forget_ipv6(&mut self, ip: Ipv6Addr) {
        if self.ipv6_heard.remove(&ip).is_some() {
            self.sync_ipv6_list();
        }
    }

    fn sync_ipv6_list(&mut self) {
        if self.record.ipv6.len() != self.ipv6_heard.len()
            || !self.record.ipv6.iter().eq(self.ipv6_heard.keys())
        {
            self.record.ipv6 = self.ipv6_heard.keys().copied().collect();
        }
    }

    /// Drops the IPv6 addresses the device has gone on without for `ipv6_expire_after`. An
    /// unheard device keeps them all: its silence says nothing about any one address.
    fn expire_ipv6(&mut self, timers: &Timers) {
        let now = self.heard_ms;
        self.ipv6_heard
            .retain(|_, heard| now.saturating_sub(*heard) <= timers.ipv6_expire_ms);
        self.sync_ipv6_list();
    }
}

#[cfg(test)]
mod tests {
    use rae_proto::{Evidence, Mac};

    use super::*;
    use crate::registry::schedule::CoreConfig;

    fn restored(dhcp: bool) -> Session {
        let mut record = DeviceRecord::new(Mac([0, 0, 0xf0, 0, 0, 1]), Evidence::ArpReply, 1);
        record.hostname = Some(Text::from("tv"));
        if dhcp {
            record.dhcp_param_request_list = vec![1, 3, 6];
        }
        Session::restored(RestoredSession {
            session: SessionId::from_bytes([1; 16]),
            seq: 4,
            record,
        })
    }

    #[test]
    fn a_restored_name_is_taken_as_dhcp_s_when_the_device_did_dhcp() {
        let timers = Timers::new(&CoreConfig::default()).unwrap();
        let mdns = ObservationKind::MdnsHost {
            hostname: Text::from("tv.local"),
        };
        let mut session = restored(true);
        session.absorb(&mdns, 2, 2, &timers);
        assert_eq!(session.record.hostname, Some(Text::from("tv")));
        let mut session = restored(false);
        session.absorb(&mdns, 2, 2, &timers);
        assert_eq!(session.record.hostname, Some(Text::from("tv.local")));
        assert_eq!(session.seq, 4);
        assert_eq!(session.last_full_ms, None);
    }
}
