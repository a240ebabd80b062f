//! Liveness probes: a unicast ARP request for a device's IPv4 address and a unicast Neighbor
//! Solicitation (RFC 4861 NUD) for each of its IPv6 addresses, sent on the LAN port when the
//! registry core says a device's probe round is due.
//!
//! [`Liveness`] is the sans-IO part: the rate limit over all devices, the probes in flight and
//! the RTT of the answer that matches one. [`TxSocket`] is the I/O part: an AF_PACKET socket
//! that only sends (protocol 0: the kernel delivers it nothing). Answers come back through the
//! capture like any other frame; the daemon asks [`Liveness::answered`] whether a frame
//! answers a probe, to turn it into a `ProbeReply` with its RTT.
//!
//! The ARP request carries the LAN port's own IPv4 address when it has one (DUTs answer it like
//! any neighbour's); without one it is an RFC 5227 probe from 0.0.0.0, which hosts answer too.
//! Limitation: untagged frames only; a LAN port on a VLAN sub-interface is tagged by the kernel.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use rae_proto::Mac;

use super::ProbeError;
use crate::registry::ProbeRequest;
use crate::wire::{arp, icmpv6, ArpRepr};

/// The LAN port's own addresses, read from the kernel before each round (DHCP on the port
/// or a changed address takes effect without a restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LanAddrs {
    pub mac: Mac,
    pub ipv4: Option<Ipv4Addr>,
    /// The link-local address NS probes come from; `None` sends them from `::`.
    pub ipv6_link_local: Option<Ipv6Addr>,
}

impl LanAddrs {
    /// Reads the interface's MAC and addresses; fails when it has no MAC (missing interface).
    pub fn read(interface: &str) -> Result<LanAddrs, ProbeError> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(|errno| ProbeError::Socket {
            what: "listing interface addresses",
            source: errno.into(),
        })?;
        let mut mac = None;
        let mut ipv4 = None;
        let mut ipv6_link_local = None;
        for a in addrs.filter(|a| a.interface_name == interface) {
            let Some(address) = a.address else { continue };
            if let Some(link) = address.as_link_addr().and_then(|l| l.addr()) {
                mac = Some(Mac(link));
            } else if let Some(v4) = address.as_sockaddr_in() {
                ipv4.get_or_insert(v4.ip());
            } else if let Some(v6) = address.as_sockaddr_in6() {
                let ip = v6.ip();
                if ip.segments()[0] & 0xffc0 == 0xfe80 {
                    ipv6_link_local.get_or_insert(ip);
                }
            }
        }
        let mac = mac.ok_or_else(|| ProbeError::NoInterface {
            interface: interface.to_owned(),
        })?;
        Ok(LanAddrs {
            mac,
            ipv4,
            ipv6_link_local,
        })
    }
}

/// Counters of the liveness prober, for `raectl status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LivenessCounters {
    pub arp_sent: u64,
    pub ns_sent: u64,
    /// Probes not sent because the total rate was used up (the device's next round retries).
    pub rate_limited: u64,
    pub send_errors: u64,
    /// Frames that answered a probe in flight.
    pub answered: u64,
}

/// One frame to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeFrame {
    pub target: IpAddr,
    pub bytes: Vec<u8>,
}

/// The sans-IO prober: rate limit, probes in flight, RTTs.
#[derive(Debug)]
pub struct Liveness {
    max_per_sec: f64,
    tokens: f64,
    refilled: Option<Instant>,
    /// Probe in flight per address: when it went out and to which MAC.
    in_flight: HashMap<IpAddr, (Instant, Mac)>,
    /// A probe not answered within this is forgotten (its round's timeout has passed).
    answer_window: Duration,
    counters: LivenessCounters,
}

impl Liveness {
    pub fn new(max_per_sec: u32, answer_window: Duration) -> Liveness {
        let max_per_sec = f64::from(max_per_sec.max(1));
        Liveness {
            max_per_sec,
            tokens: max_per_sec,
            refilled: None,
            in_flight: HashMap::new(),
            answer_window,
            counters: LivenessCounters::default(),
        }
    }

    pub fn counters(&self) -> LivenessCounters {
        self.counters
    }

    /// The frames to send for `probes` now, within the rate limit; the rest are counted as
    /// rate-limited and dropped (the core schedules the device's next round anyway).
    pub fn frames(
        &mut self,
        probes: &[ProbeRequest],
        lan: &LanAddrs,
        now: Instant,
    ) -> Vec<ProbeFrame> {
        self.refill(now);
        self.in_flight
            .retain(|_, (sent, _)| now.duration_since(*sent) < self.answer_window);
        let mut out = Vec::new();
        for probe in probes {
            let targets = probe
                .ipv4
                .map(IpAddr::V4)
                .into_iter()
                .chain(probe.ipv6.iter().copied().map(IpAddr::V6));
            for target in targets {
                if self.tokens < 1.0 {
                    self.counters.rate_limited += 1;
                    continue;
                }
                self.tokens -= 1.0;
                let bytes = match target {
                    IpAddr::V4(ip) => {
                        self.counters.arp_sent += 1;
                        let request = match lan.ipv4 {
                            Some(own) => ArpRepr::request(lan.mac, own, ip),
                            None => ArpRepr::probe(lan.mac, ip),
                        };
                        arp::build_frame(probe.mac, None, &request)
                    }
                    IpAddr::V6(ip) => {
                        self.counters.ns_sent += 1;
                        let src = lan.ipv6_link_local.unwrap_or(Ipv6Addr::UNSPECIFIED);
                        icmpv6::neighbor_solicitation_frame(lan.mac, src, ip, Some(probe.mac), None)
                    }
                };
                self.in_flight.insert(target, (now, probe.mac));
                out.push(ProbeFrame { target, bytes });
            }
        }
        out
    }

    /// A send failed: the probe is not in flight.
    pub fn send_failed(&mut self, target: IpAddr) {
        self.counters.send_errors += 1;
        self.in_flight.remove(&target);
    }

    /// Whether a frame from `from` vouching for `ip` (an ARP reply's sender, an NA's target)
    /// answers a probe in flight; if so, the RTT in microseconds. Each probe is answered once.
    pub fn answered(&mut self, ip: IpAddr, from: Mac, now: Instant) -> Option<u32> {
        let (sent, _) = self.in_flight.remove(&ip)?;
        let rtt = now.duration_since(sent);
        if rtt >= self.answer_window {
            return None;
        }
        // Another MAC answering for the address is still an answer (the core records who).
        let _ = from;
        self.counters.answered += 1;
        Some(u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX))
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.refilled {
            let earned = now.duration_since(last).as_secs_f64() * self.max_per_sec;
            self.tokens = (self.tokens + earned).min(self.max_per_sec);
        }
        self.refilled = Some(now);
    }
}

/// An AF_PACKET socket that sends whole Ethernet frames on one interface and receives nothing.
#[derive(Debug)]
pub struct TxSocket {
    fd: OwnedFd,
    ifindex: i32,
    interface: String,
}

impl TxSocket {
    pub fn open(interface: &str) -> Result<TxSocket, ProbeError> {
        let name = std::ffi::CString::new(interface).map_err(|_| ProbeError::Socket {
            what: "naming the LAN interface",
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(ProbeError::Socket {
                what: "finding the LAN interface",
                source: io::Error::last_os_error(),
            });
        }
        // Protocol 0: the socket is bound to no ethertype, so the kernel queues nothing to it.
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(ProbeError::Socket {
                what: "opening the probe socket (needs CAP_NET_RAW)",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a fresh, valid descriptor we own from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(TxSocket {
            fd,
            ifindex: ifindex as i32,
            interface: interface.to_owned(),
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Sends one frame (destination MAC first); never blocks for long (a full queue is an error).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        if frame.len() < 14 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `addr` outlive the call; lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of_val(&addr) as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parse_frame, Message};
    use rae_proto::SessionId;

    const DEVICE: Mac = Mac([0x02, 0, 0x5e, 0, 0, 9]);
    const OWN: Mac = Mac([0x02, 0, 0x5e, 0, 0, 1]);

    fn lan() -> LanAddrs {
        LanAddrs {
            mac: OWN,
            ipv4: Some(Ipv4Addr::new(198, 18, 0, 1)),
            ipv6_link_local: Some("fe80::1".parse().expect("address")),
        }
    }

    fn probe(v4: Option<Ipv4Addr>, v6: &[&str]) -> ProbeRequest {
        ProbeRequest {
            session: SessionId::from_bytes([1; 16]),
            mac: DEVICE,
            ipv4: v4,
            ipv6: v6.iter().map(|s| s.parse().expect("address")).collect(),
        }
    }

    #[test]
    fn a_probe_is_a_unicast_arp_request_and_an_ns_per_address() {
        let mut l = Liveness::new(100, Duration::from_secs(5));
        let now = Instant::now();
        let frames = l.frames(
            &[probe(Some(Ipv4Addr::new(198, 18, 0, 9)), &["2001:db8::9"])],
            &lan(),
            now,
        );
        assert_eq!(frames.len(), 2);
        let arp = parse_frame(&frames[0].bytes).expect("ARP frame parses");
        assert_eq!(arp.ethernet.dst, DEVICE);
        match arp.message {
            Message::Arp(a) => {
                assert_eq!(a.sender_ip, Ipv4Addr::new(198, 18, 0, 1));
                assert_eq!(a.target_ip, Ipv4Addr::new(198, 18, 0, 9));
            }
            other => panic!("expected ARP, got {other:?}"),
        }
        let ns = parse_frame(&frames[1].bytes).expect("NS frame parses");
        assert_eq!(ns.ethernet.dst, DEVICE);
        assert!(matches!(ns.message, Message::Ndp { .. }));
        assert_eq!(l.counters().arp_sent, 1);
        assert_eq!(l.counters().ns_sent, 1);
    }

    #[test]
    fn the_total_rate_is_capped_and_the_excess_counted() {
        let mut l = Liveness::new(3, Duration::from_secs(5));
        let now = Instant::now();
        let many: Vec<_> = (1..=5)
            .map(|i| probe(Some(Ipv4Addr::new(198, 18, 0, i)), &[]))
            .collect();
        assert_eq!(l.frames(&many, &lan(), now).len(), 3);
        assert_eq!(l.counters().rate_limited, 2);
        // A second later the bucket is full again.
        let later = now + Duration::from_secs(1);
        assert_eq!(l.frames(&many, &lan(), later).len(), 3);
    }

    #[test]
    fn an_answer_gives_the_rtt_once_and_late_answers_none() {
        let mut l = Liveness::new(100, Duration::from_secs(2));
        let now = Instant::now();
        let ip = Ipv4Addr::new(198, 18, 0, 9);
        l.frames(&[probe(Some(ip), &[])], &lan(), now);
        let rtt = l.answered(ip.into(), DEVICE, now + Duration::from_millis(3));
        assert_eq!(rtt, Some(3000));
        assert_eq!(
            l.answered(ip.into(), DEVICE, now + Duration::from_millis(4)),
            None
        );
        l.frames(
            &[probe(Some(ip), &[])],
            &lan(),
            now + Duration::from_secs(10),
        );
        assert_eq!(
            l.answered(ip.into(), DEVICE, now + Duration::from_secs(13)),
            None,
            "an answer after the window is not this probe's"
        );
    }

    #[test]
    fn without_an_own_ipv4_the_arp_is_an_rfc5227_probe() {
        let mut l = Liveness::new(100, Duration::from_secs(5));
        let mut addrs = lan();
        addrs.ipv4 = None;
        let frames = l.frames(
            &[probe(Some(Ipv4Addr::new(198, 18, 0, 9)), &[])],
            &addrs,
            Instant::now(),
        );
        match parse_frame(&frames[0].bytes).expect("parses").message {
            Message::Arp(a) => assert!(a.is_probe()),
            other => panic!("expected ARP, got {other:?}"),
        }
    }
}
