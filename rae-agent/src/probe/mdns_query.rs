//! DNS-SD queries on the LAN interface only, joining no multicast group.
//!
//! [`MdnsQuerier`] owns two UDP sockets (IPv4, and IPv6 when the interface has it) bound with
//! `SO_BINDTODEVICE` to the LAN interface, multicast leaving through it with TTL/hop limit 255
//! (RFC 6762 §11), loop off. It only sends: the answers are multicast to 224.0.0.251 /
//! ff02::fb and reach the agent through the capture (the kernel filter passes UDP 5353), where
//! [`crate::registry::mdns::mdns_decode`] reads them and returns the service types it learnt,
//! which come back here to be queried. No `IP_ADD_MEMBERSHIP`: nothing is ever sent
//! (no IGMP/MLD report) on any other interface.
//!
//! Source port: the sockets bind port 5353 (`SO_REUSEADDR` + `SO_REUSEPORT`, so a local
//! responder such as avahi keeps working), which makes the queries full mDNS queries that
//! responders answer by multicast (RFC 6762 §6). If 5353 is taken by a socket that does not
//! share it, an ephemeral port is used: the queries are then one-shot legacy queries, which
//! python-zeroconf and avahi answer by unicast to the querier's address and port (§6.7). The
//! capture sees those too (addressed to the host, from port 5353), and the socket receives
//! them; [`MdnsQuerier::run`] hands whatever the sockets receive to an optional channel, with
//! the sender's IP address only (mapping it to a MAC is the registry core's job).
//!
//! [`QueryPlan`] is the sans-IO schedule: the type enumeration at start, again `repeat_after`
//! later (the second query of RFC 6762 §5.2), then every `rebrowse_every`; each learnt type
//! the same way; at most one packet (of up to `max_questions` PTR questions) per `min_gap`.
//!
//! Limitation: the sockets stay bound to the interface index they were created on; if the
//! interface is deleted and created again, sends fail (counted) until the querier is rebuilt.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{self as sock, sockopt, AddressFamily, SockFlag, SockType};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::identify::interface_ipv4;
use super::mdns::{MdnsSettings, META_QUERY};
use super::ProbeError;
use crate::wire::mdns::{emit_query, query_len, rtype, DnsName};
use crate::wire::MDNS_PORT;

pub const MDNS_GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
pub const MDNS_GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb);
/// Largest query packet: stays in one frame on any LAN.
const MAX_QUERY: usize = 1200;
/// Largest datagram read from the sockets (an mDNS message is at most 9000 bytes, §17).
const MAX_ANSWER: usize = 9000;

/// Settings of the querier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdnsQuerySettings {
    /// How often the enumeration and every known type are asked again.
    pub rebrowse_every: Duration,
    /// When a name first asked is asked a second time.
    pub repeat_after: Duration,
    /// Service types queried at most (learnt types beyond are ignored).
    pub max_types: usize,
    /// Shortest time between two query packets: the total rate limit.
    pub min_gap: Duration,
    /// PTR questions per packet at most.
    pub max_questions: usize,
}

impl MdnsQuerySettings {
    /// The querier's settings from the browsing settings.
    pub fn from_browse(settings: &MdnsSettings) -> Self {
        Self {
            rebrowse_every: settings.rebrowse_every,
            max_types: settings.max_types,
            ..Self::default()
        }
    }
}

impl Default for MdnsQuerySettings {
    fn default() -> Self {
        let browse = MdnsSettings::default();
        Self {
            rebrowse_every: browse.rebrowse_every,
            repeat_after: Duration::from_secs(1),
            max_types: browse.max_types,
            min_gap: Duration::from_millis(250),
            max_questions: 16,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Planned {
    name: DnsName,
    text: String,
    due: Instant,
    /// Asked once so far: the next ask is `repeat_after` later, not a whole interval.
    first: bool,
}

/// The sans-IO query schedule (see the module documentation).
#[derive(Clone, Debug)]
pub struct QueryPlan {
    settings: MdnsQuerySettings,
    /// The enumeration first, then the learnt types.
    names: Vec<Planned>,
    next_send: Instant,
    /// Types refused because `max_types` were known, or unusable as names.
    pub refused: u64,
}

impl QueryPlan {
    pub fn new(settings: MdnsQuerySettings, now: Instant) -> Self {
        let mut plan = Self {
            settings,
            names: Vec::new(),
            next_send: now,
            refused: 0,
        };
        if let Ok(name) = DnsName::from_dotted(META_QUERY) {
            plan.names.push(Planned {
                name,
                text: META_QUERY.to_owned(),
                due: now,
                first: true,
            });
        }
        plan
    }

    /// Adds types to query; the new ones are due now. Returns how many were new.
    pub fn learn(&mut self, types: &[String], now: Instant) -> usize {
        let mut added = 0;
        for ty in types {
            if self.names.iter().any(|p| p.text.eq_ignore_ascii_case(ty)) {
                continue;
            }
            let Ok(name) = DnsName::from_dotted(ty) else {
                self.refused += 1;
                continue;
            };
            if self.names.len() > self.settings.max_types {
                self.refused += 1;
                continue;
            }
            self.names.push(Planned {
                name,
                text: ty.clone(),
                due: now,
                first: true,
            });
            added += 1;
        }
        added
    }

    /// Names the plan queries (the enumeration included).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|p| p.text.as_str())
    }

    /// When [`QueryPlan::poll`] has something to send.
    pub fn next_due(&self) -> Option<Instant> {
        let due = self.names.iter().map(|p| p.due).min()?;
        Some(due.max(self.next_send))
    }

    /// The names to ask in one packet now, if any is due and the rate limit allows.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<DnsName>> {
        if now < self.next_send {
            return None;
        }
        let mut batch = Vec::new();
        let mut len = query_len(&[]);
        for planned in self.names.iter_mut().filter(|p| p.due <= now) {
            let grown = len + planned.name.as_wire().len() + 4;
            if batch.len() >= self.settings.max_questions || grown > MAX_QUERY {
                break;
            }
            len = grown;
            batch.push(planned.name.clone());
            planned.due = if planned.first {
                now + self.settings.repeat_after
            } else {
                now + self.settings.rebrowse_every
            };
            planned.first = false;
        }
        if batch.is_empty() {
            return None;
        }
        self.next_send = now + self.settings.min_gap;
        Some(batch)
    }
}

/// The querier's counters, readable while it runs.
#[derive(Debug, Default)]
pub struct MdnsQueryStats {
    /// Query packets sent (one per address family).
    pub queries_sent: AtomicU64,
    pub send_failures: AtomicU64,
    /// Datagrams the sockets received (unicast answers to legacy queries).
    pub answers_received: AtomicU64,
    /// Received datagrams not handed on: no output channel, or it was full.
    pub answers_dropped: AtomicU64,
    /// Learnt types not queried (too many, or not a usable name).
    pub types_refused: AtomicU64,
}

/// A datagram one of the querier's sockets received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketAnswer {
    pub src: SocketAddr,
    pub payload: Vec<u8>,
}

/// The querier's sockets and schedule settings.
#[derive(Debug)]
pub struct MdnsQuerier {
    v4: std::net::UdpSocket,
    v6: Option<std::net::UdpSocket>,
    ifindex: u32,
    interface: String,
    settings: MdnsQuerySettings,
    stats: Arc<MdnsQueryStats>,
}

fn socket_err(what: &'static str) -> impl Fn(nix::errno::Errno) -> ProbeError {
    move |errno| ProbeError::Socket {
        what,
        source: std::io::Error::from(errno),
    }
}

/// A UDP socket bound to `interface`, on port 5353 if it can share it, else an ephemeral one.
fn bound_socket(
    family: AddressFamily,
    interface: &str,
) -> Result<(std::net::UdpSocket, bool), ProbeError> {
    let fd: OwnedFd = sock::socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(socket_err("creating the mDNS query socket"))?;
    sock::setsockopt(&fd, sockopt::BindToDevice, &interface.into()).map_err(socket_err(
        "binding the mDNS query socket to the LAN interface",
    ))?;
    sock::setsockopt(&fd, sockopt::ReuseAddr, &true)
        .map_err(socket_err("setting SO_REUSEADDR on the mDNS query socket"))?;
    sock::setsockopt(&fd, sockopt::ReusePort, &true)
        .map_err(socket_err("setting SO_REUSEPORT on the mDNS query socket"))?;
    let any = |port| -> SocketAddr {
        match family {
            AddressFamily::Inet6 => SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            _ => SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        }
    };
    if family == AddressFamily::Inet6 {
        sock::setsockopt(&fd, sockopt::Ipv6V6Only, &true)
            .map_err(socket_err("setting IPV6_V6ONLY on the mDNS query socket"))?;
    }
    let bind = |addr: SocketAddr| match addr {
        SocketAddr::V4(a) => sock::bind(fd.as_raw_fd(), &sock::SockaddrIn::from(a)),
        SocketAddr::V6(a) => sock::bind(fd.as_raw_fd(), &sock::SockaddrIn6::from(a)),
    };
    let full = match bind(any(MDNS_PORT)) {
        Ok(()) => true,
        Err(nix::errno::Errno::EADDRINUSE) => {
            bind(any(0)).map_err(socket_err("binding the mDNS query socket"))?;
            false
        }
        Err(errno) => return Err(socket_err("binding the mDNS query socket to 5353")(errno)),
    };
    Ok((std::net::UdpSocket::from(fd), full))
}

/// IP_MULTICAST_IF by interface index and address (std has no setter for it).
fn set_multicast_if_v4(
    socket: &std::net::UdpSocket,
    ifindex: u32,
    addr: Ipv4Addr,
) -> std::io::Result<()> {
    let value = libc::ip_mreqn {
        imr_multiaddr: libc::in_addr { s_addr: 0 },
        imr_address: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        imr_ifindex: i32::try_from(ifindex).unwrap_or(0),
    };
    // SAFETY: the fd is open for the lifetime of `socket`, and `value` is an `ip_mreqn` that
    // outlives the call; the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::ip_mreqn>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// IPV6_MULTICAST_IF by interface index (std has no setter for it).
fn set_multicast_if_v6(socket: &std::net::UdpSocket, ifindex: u32) -> std::io::Result<()> {
    let value = libc::c_int::try_from(ifindex).unwrap_or(0);
    // SAFETY: as above, with a `c_int` value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_IF,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn io_err(what: &'static str) -> impl Fn(std::io::Error) -> ProbeError {
    move |source| ProbeError::Socket { what, source }
}

fn bind_v6(interface: &str, ifindex: u32) -> Result<std::net::UdpSocket, ProbeError> {
    let (socket, _) = bound_socket(AddressFamily::Inet6, interface)?;
    set_multicast_if_v6(&socket, ifindex).map_err(io_err("setting IPV6_MULTICAST_IF"))?;
    let fd = OwnedFd::from(
        socket
            .try_clone()
            .map_err(io_err("cloning the IPv6 socket"))?,
    );
    sock::setsockopt(&fd, sockopt::Ipv6MulticastHops, &255)
        .map_err(socket_err("setting the IPv6 multicast hop limit"))?;
    socket
        .set_multicast_loop_v6(false)
        .map_err(io_err("disabling IPv6 multicast loop"))?;
    Ok(socket)
}

impl MdnsQuerier {
    /// Binds the sockets to `interface` (see the module documentation). Fails if the interface
    /// has no IPv4 address; IPv6 is used when its socket can be set up, else skipped.
    pub fn bind(interface: &str, settings: MdnsQuerySettings) -> Result<Self, ProbeError> {
        let addr = interface_ipv4(interface)?;
        let ifindex = nix::net::if_::if_nametoindex(interface)
            .map_err(socket_err("looking up the LAN interface index"))?;
        let (v4, full) = bound_socket(AddressFamily::Inet, interface)?;
        if !full {
            info!(%interface, "mDNS port 5353 is taken: querying from an ephemeral port (legacy unicast answers)");
        }
        set_multicast_if_v4(&v4, ifindex, addr).map_err(io_err("setting IP_MULTICAST_IF"))?;
        v4.set_multicast_ttl_v4(255)
            .map_err(io_err("setting the IPv4 multicast TTL"))?;
        v4.set_multicast_loop_v4(false)
            .map_err(io_err("disabling IPv4 multicast loop"))?;
        let v6 = match bind_v6(interface, ifindex) {
            Ok(socket) => Some(socket),
            Err(cause) => {
                info!(%interface, %cause, "mDNS queries over IPv4 only");
                None
            }
        };
        Ok(Self {
            v4,
            v6,
            ifindex,
            interface: interface.to_owned(),
            settings,
            stats: Arc::default(),
        })
    }

    pub fn stats(&self) -> Arc<MdnsQueryStats> {
        Arc::clone(&self.stats)
    }

    /// The local addresses of the sockets (IPv4, then IPv6 if any).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        [Some(&self.v4), self.v6.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// The device the IPv4 socket is bound to (`SO_BINDTODEVICE`), as the kernel reports it.
    pub fn bound_device(&self) -> Result<String, ProbeError> {
        let fd = self
            .v4
            .try_clone()
            .map_err(io_err("cloning the IPv4 socket"))?;
        let name = sock::getsockopt(&OwnedFd::from(fd), sockopt::BindToDevice)
            .map_err(socket_err("reading SO_BINDTODEVICE"))?;
        Ok(name.to_string_lossy().into_owned())
    }

    /// Queries until `shutdown` turns true (or its sender goes away). Types sent on `types`
    /// are queried as they come; datagrams the sockets receive go to `answers` if given.
    pub async fn run(
        self,
        mut types: mpsc::Receiver<Vec<String>>,
        answers: Option<mpsc::Sender<SocketAnswer>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ProbeError> {
        let register = |s: std::net::UdpSocket| {
            UdpSocket::from_std(s).map_err(io_err("registering an mDNS socket with the runtime"))
        };
        let v4 = register(self.v4)?;
        let v6 = self.v6.map(register).transpose()?;
        let targets = [
            SocketAddr::V4(SocketAddrV4::new(MDNS_GROUP_V4, MDNS_PORT)),
            SocketAddr::V6(SocketAddrV6::new(MDNS_GROUP_V6, MDNS_PORT, 0, self.ifindex)),
        ];
        let stats = self.stats;
        let mut plan = QueryPlan::new(self.settings, Instant::now());
        let mut failing = false;
        let mut types_open = true;
        let (mut buf4, mut buf6) = (vec![0u8; MAX_ANSWER], vec![0u8; MAX_ANSWER]);
        let mut packet = vec![0u8; MAX_QUERY];
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let wake = plan.next_due();
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() { return Ok(()) },
                learnt = types.recv(), if types_open => match learnt {
                    Some(list) => {
                        let before = plan.refused;
                        plan.learn(&list, Instant::now());
                        stats.types_refused.fetch_add(plan.refused - before, Ordering::Relaxed);
                    }
                    None => types_open = false,
                },
                () = sleep_until(wake) => {}
                got = v4.recv_from(&mut buf4) => {
                    on_answer(got, &buf4, answers.as_ref(), &stats);
                }
                got = recv_opt(v6.as_ref(), &mut buf6) => {
                    on_answer(got, &buf6, answers.as_ref(), &stats);
                }
            }
            let Some(names) = plan.poll(Instant::now()) else {
                continue;
            };
            let len = match emit_query(&names, rtype::PTR, &mut packet) {
                Ok(len) => len,
                Err(cause) => {
                    warn!(%cause, "mDNS query not built");
                    continue;
                }
            };
            let sockets = [Some(&v4), v6.as_ref()];
            for (socket, target) in sockets.into_iter().zip(targets) {
                let Some(socket) = socket else { continue };
                match socket.send_to(&packet[..len], target).await {
                    Ok(_) => {
                        stats.queries_sent.fetch_add(1, Ordering::Relaxed);
                        if std::mem::take(&mut failing) {
                            info!(interface = %self.interface, "mDNS queries are sent again");
                        }
                    }
                    Err(cause) => {
                        stats.send_failures.fetch_add(1, Ordering::Relaxed);
                        if !std::mem::replace(&mut failing, true) {
                            warn!(interface = %self.interface, %cause, %target, "mDNS query not sent; retried on schedule");
                        }
                    }
                }
            }
        }
    }
}

async fn recv_opt(
    socket: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

fn on_answer(
    got: std::io::Result<(usize, SocketAddr)>,
    buf: &[u8],
    answers: Option<&mpsc::Sender<SocketAnswer>>,
    stats: &MdnsQueryStats,
) {
    let (len, src) = match got {
        Ok(got) => got,
        Err(cause) => {
            debug!(%cause, "mDNS socket read failed");
            return;
        }
    };
    stats.answers_received.fetch_add(1, Ordering::Relaxed);
    let answer = SocketAnswer {
        src,
        payload: buf.get(..len).unwrap_or_default().to_vec(),
    };
    let handed = answers.is_some_and(|tx| tx.try_send(answer).is_ok());
    if !handed {
        stats.answers_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(tokio::time::Instant::from_std(when)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> MdnsQuerySettings {
        MdnsQuerySettings {
            rebrowse_every: Duration::from_secs(900),
            repeat_after: Duration::from_secs(1),
            max_types: 2,
            min_gap: Duration::from_millis(250),
            max_questions: 16,
        }
    }

    fn texts(names: &[DnsName]) -> Vec<String> {
        names.iter().map(|n| format!("{n:?}")).collect()
    }

    #[test]
    fn enumeration_then_repeat_then_rebrowse_with_learnt_types_rate_limited() {
        let t0 = Instant::now();
        let mut plan = QueryPlan::new(settings(), t0);
        assert_eq!(plan.next_due(), Some(t0));
        let first = plan.poll(t0).unwrap();
        assert_eq!(texts(&first), vec![format!("DnsName({META_QUERY:?})")]);
        assert_eq!(plan.poll(t0), None, "nothing else is due");

        let types = [
            "_a._tcp.local.",
            "_A._tcp.local.",
            "_b._udp.local.",
            "_c._tcp.local.",
        ];
        let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            plan.learn(&types, t0),
            2,
            "duplicates and the third type refused"
        );
        assert_eq!(plan.refused, 1);
        // The rate limit holds the learnt types back until min_gap has passed.
        assert_eq!(plan.next_due(), Some(t0 + Duration::from_millis(250)));
        assert_eq!(plan.poll(t0 + Duration::from_millis(100)), None);
        let second = plan.poll(t0 + Duration::from_millis(250)).unwrap();
        assert_eq!(second.len(), 2);
        // At 1 s the enumeration repeats, at 1.25 s the types; then nothing for 15 minutes.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(plan.poll(t1).map(|b| b.len()), Some(1));
        let t2 = t1 + Duration::from_millis(250);
        assert_eq!(plan.poll(t2).map(|b| b.len()), Some(2));
        assert_eq!(plan.next_due(), Some(t1 + Duration::from_secs(900)));
        // After the interval everything due goes in one packet.
        let later = t2 + Duration::from_secs(900);
        assert_eq!(plan.poll(later).map(|b| b.len()), Some(3));
    }

    #[test]
    fn unusable_type_names_are_refused() {
        let t0 = Instant::now();
        let mut plan = QueryPlan::new(settings(), t0);
        assert_eq!(plan.learn(&["a..b".to_string(), "x".repeat(70)], t0), 0);
        assert_eq!(plan.refused, 2);
        assert_eq!(plan.names().count(), 1);
    }
}
