//! rae-wire: pure parsers and emitters for the frames rae-agent sniffs and sends.
//!
//! The pure half of the agent's frame handling, in its own crate so that what parses untrusted
//! bytes is built and fuzzed (`fuzz/`) without the daemon's runtime, database and socket crates:
//! it depends on rae-proto (for [`MacAddr`]) and thiserror only. The I/O half (the AF_PACKET
//! socket, its BPF filter, the raw sends) is rae-agent's `capture` and `probe`; rae-agent
//! re-exports this crate as `rae_agent::wire`.
//!
//! Each protocol module follows smoltcp's `wire` shape: a checked view `Packet<T: AsRef<[u8]>>`
//! (`new_checked` verifies every length the accessors rely on, after which no accessor
//! panics), byte offsets in a private `mod field`, and a plain `Repr` with `parse` and `emit`.
//! Every failure is a [`DropReason`] (layer + detail), which the capture thread counts in
//! [`DropCounters`]. Nothing here does I/O, reads a clock, or allocates except where noted
//! (router advertisement prefixes, emitted frames).
//!
//! Parts:
//! - [`ethernet`]: Ethernet II with one 802.1Q tag; [`MacAddr`].
//! - [`arp`]: Ethernet/IPv4 ARP with RFC 5227 probe/announcement classification; emits the
//!   ARP probe frame used for IPv4 liveness checks.
//! - [`ipv4`], [`ipv6`], [`udp`]: just enough IP and UDP to reach the payloads below.
//! - [`dhcp`]: DHCPv4 with options 12, 50, 51, 53, 54, 55, 57, 60, 61, 81 (and overload, 52).
//! - [`icmpv6`]: neighbour discovery RS/RA/NS/NA; emits the NS frame for IPv6 liveness checks.
//! - [`mdns`]: DNS messages as mDNS uses them (PTR, SRV, TXT, A, AAAA; compression pointers
//!   bounded); emits the DNS-SD queries the agent sends.
//! - [`checksum`]: the Internet checksum; [`drops`]: drop reasons and counters.
//! - [`parse_frame`]: one call from a captured frame to a typed [`Message`]. mDNS (UDP 5353)
//!   and SSDP (UDP 1900) payloads are classified and handed out undecoded ([`mdns`] decodes
//!   the former on request).
//!
//! Limitations:
//! - One 802.1Q tag at most (QinQ/802.1ad is Unsupported). On most NICs AF_PACKET delivers the
//!   tag out of band (`PACKET_AUXDATA`, `tp_vlan_tci`) rather than in the frame; the capture
//!   side must put it back for [`EthernetRepr::vlan`] to be set.
//! - IPv4 fragments are Unsupported; IPv6 extension headers are not walked (Unsupported).
//! - UDP checksums of frames the kernel marks `TP_STATUS_CSUMNOTREADY` (sent by this host, or
//!   forwarded over veth with checksum offload) are not filled in yet: pass
//!   [`UdpChecksum::Skip`] for those. IPv4 header and ICMPv6 checksums are always verified;
//!   the kernel always completes them.
//! - DHCP options split per RFC 3396 are not concatenated (the first part wins).

use std::net::IpAddr;

pub mod arp;
mod bytes;
pub mod checksum;
pub mod dhcp;
pub mod drops;
pub mod ethernet;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod mdns;
pub mod udp;

pub use arp::ArpRepr;
pub use dhcp::DhcpRepr;
pub use drops::{Detail, DropCounters, DropKind, DropReason, Layer};
pub use ethernet::{EtherType, EthernetRepr, MacAddr, VlanTag};
pub use icmpv6::NdpRepr;
pub use ipv4::Ipv4Repr;
pub use ipv6::Ipv6Repr;
pub use udp::UdpRepr;

pub const DHCP_SERVER_PORT: u16 = 67;
pub const DHCP_CLIENT_PORT: u16 = 68;
pub const MDNS_PORT: u16 = 5353;
pub const SSDP_PORT: u16 = 1900;

/// Whether to verify UDP checksums (see the module limitations for when not to).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum UdpChecksum {
    #[default]
    Verify,
    Skip,
}

/// The IP header a UDP datagram came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpRepr {
    V4(Ipv4Repr),
    V6(Ipv6Repr),
}

impl IpRepr {
    pub fn src(&self) -> IpAddr {
        match self {
            IpRepr::V4(ip) => ip.src.into(),
            IpRepr::V6(ip) => ip.src.into(),
        }
    }

    pub fn dst(&self) -> IpAddr {
        match self {
            IpRepr::V4(ip) => ip.dst.into(),
            IpRepr::V6(ip) => ip.dst.into(),
        }
    }
}

/// A captured frame the agent reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub ethernet: EthernetRepr,
    pub message: Message<'a>,
}

impl Frame<'_> {
    /// The 802.1Q VLAN id, if the frame was tagged.
    pub fn vlan_id(&self) -> Option<u16> {
        self.ethernet.vlan.map(|tag| tag.id)
    }
}

/// What a frame carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Arp(ArpRepr),
    /// DHCPv4 between ports 67 and 68 (either way, relays included).
    Dhcp {
        ip: Ipv4Repr,
        udp: UdpRepr,
        dhcp: DhcpRepr<'a>,
    },
    /// ICMPv6 neighbour discovery.
    Ndp {
        ip: Ipv6Repr,
        ndp: NdpRepr,
    },
    /// UDP to or from port 5353; the payload is not decoded here.
    Mdns {
        ip: IpRepr,
        udp: UdpRepr,
        payload: &'a [u8],
    },
    /// UDP to or from port 1900; the payload is not decoded here.
    Ssdp {
        ip: IpRepr,
        udp: UdpRepr,
        payload: &'a [u8],
    },
}

/// Parses a captured frame, verifying every checksum.
pub fn parse_frame(frame: &[u8]) -> Result<Frame<'_>, DropReason> {
    parse_frame_with(frame, UdpChecksum::Verify)
}

/// Parses a captured frame; `udp_checksum` says whether UDP checksums are trustworthy.
pub fn parse_frame_with(frame: &[u8], udp_checksum: UdpChecksum) -> Result<Frame<'_>, DropReason> {
    let view = ethernet::Frame::new_checked(frame)?;
    let ethernet = EthernetRepr::parse(&view)?;
    let payload = view.payload();
    let message = match ethernet.ethertype {
        EtherType::ARP => Message::Arp(ArpRepr::parse(&arp::Packet::new_checked(payload)?)?),
        EtherType::IPV4 => parse_ipv4(payload, udp_checksum)?,
        EtherType::IPV6 => parse_ipv6(payload, udp_checksum)?,
        _ => return Err(DropReason::new(Layer::Ethernet, Detail::EtherType)),
    };
    Ok(Frame { ethernet, message })
}

fn parse_ipv4(bytes: &[u8], udp_checksum: UdpChecksum) -> Result<Message<'_>, DropReason> {
    let packet = ipv4::Packet::new_checked(bytes)?;
    let ip = Ipv4Repr::parse(&packet)?;
    if ip.protocol != ipv4::protocol::UDP {
        return Err(DropReason::new(Layer::Ipv4, Detail::IpProtocol));
    }
    parse_udp(IpRepr::V4(ip), packet.payload(), udp_checksum)
}

fn parse_ipv6(bytes: &[u8], udp_checksum: UdpChecksum) -> Result<Message<'_>, DropReason> {
    let packet = ipv6::Packet::new_checked(bytes)?;
    let ip = Ipv6Repr::parse(&packet)?;
    match ip.next_header {
        ipv4::protocol::ICMPV6 => {
            let icmp = icmpv6::Packet::new_checked(packet.payload())?;
            let ndp = NdpRepr::parse(&ip, &icmp)?;
            Ok(Message::Ndp { ip, ndp })
        }
        ipv4::protocol::UDP => parse_udp(IpRepr::V6(ip), packet.payload(), udp_checksum),
        next if ipv6::EXTENSION_HEADERS.contains(&next) => {
            Err(DropReason::new(Layer::Ipv6, Detail::ExtensionHeader))
        }
        _ => Err(DropReason::new(Layer::Ipv6, Detail::IpProtocol)),
    }
}

/// Which of the agent's UDP protocols a port pair belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UdpService {
    Dhcp,
    Mdns,
    Ssdp,
}

fn classify(ip: &IpRepr, src_port: u16, dst_port: u16) -> Option<UdpService> {
    let dhcp = [DHCP_SERVER_PORT, DHCP_CLIENT_PORT];
    let ports = [src_port, dst_port];
    if matches!(ip, IpRepr::V4(_)) && ports.iter().all(|port| dhcp.contains(port)) {
        Some(UdpService::Dhcp)
    } else if ports.contains(&MDNS_PORT) {
        Some(UdpService::Mdns)
    } else if ports.contains(&SSDP_PORT) {
        Some(UdpService::Ssdp)
    } else {
        None
    }
}

fn parse_udp(
    ip: IpRepr,
    bytes: &[u8],
    udp_checksum: UdpChecksum,
) -> Result<Message<'_>, DropReason> {
    let packet = udp::Packet::new_checked(bytes)?;
    // Classify first, so traffic the agent does not read costs no checksum.
    let service = classify(&ip, packet.src_port(), packet.dst_port())
        .ok_or(DropReason::new(Layer::Udp, Detail::Port))?;
    let udp = UdpRepr::parse(&ip, &packet, udp_checksum)?;
    let payload = packet.payload();
    Ok(match (service, ip) {
        (UdpService::Dhcp, IpRepr::V4(v4)) => {
            let dhcp = DhcpRepr::parse(&dhcp::Packet::new_checked(payload)?)?;
            Message::Dhcp { ip: v4, udp, dhcp }
        }
        // `classify` only returns Dhcp for IPv4; an IPv6 pair on those ports is not read.
        (UdpService::Dhcp, IpRepr::V6(_)) => return Err(DropReason::new(Layer::Udp, Detail::Port)),
        (UdpService::Mdns, ip) => Message::Mdns { ip, udp, payload },
        (UdpService::Ssdp, ip) => Message::Ssdp { ip, udp, payload },
    })
}

/// Why a packet could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    #[error("emit buffer holds {have} bytes, {need} needed")]
    BufferTooSmall { need: usize, have: usize },
    #[error("{len} bytes do not fit the {layer} length field")]
    TooLong { layer: Layer, len: usize },
}

impl EmitError {
    pub(crate) fn check(need: usize, have: usize) -> Result<(), EmitError> {
        if have < need {
            return Err(EmitError::BufferTooSmall { need, have });
        }
        Ok(())
    }
}
