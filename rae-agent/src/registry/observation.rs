//! What one parsed frame, probe result or fetched description tells about one device,
//! independent of the wire types; and [`observations_from_frame`], the pure map from a
//! captured [`Frame`] to the [`Observation`] it carries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rae_proto::{DialApp, Evidence, Mac, MdnsService, Text, UpnpDescription};

use crate::wire::arp::Operation;
use crate::wire::dhcp::{BootOp, MessageType};
use crate::wire::{ArpRepr, DhcpRepr, Frame, IpRepr, MacAddr, Message, NdpRepr};

/// Something learnt about the device `mac` at `at_ms` (capture time, unix ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub mac: Mac,
    pub at_ms: i64,
    pub kind: ObservationKind,
}

/// What was learnt. Kinds whose [`evidence`](ObservationKind::evidence) is `Some` come from
/// the device itself: they make it alive and may open its session. The others (a server's
/// DHCP ACK, names and services resolved by the mDNS browser) only fill in fields of a session
/// that is already open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObservationKind {
    /// A DHCP message the device sent.
    DhcpClient(DhcpClient),
    /// The DHCP server acknowledged `ip` for the device: the authoritative address.
    DhcpAck { ip: Ipv4Addr },
    /// An ARP packet the device sent; `ip` is its sender address, `None` for 0.0.0.0.
    Arp { ip: Option<Ipv4Addr>, kind: ArpKind },
    /// A neighbour discovery message the device sent; `ip` is the address it vouches for
    /// (the target of an advertisement or of a DAD probe, else the source), `None` for `::`
    /// or multicast.
    Ndp { ip: Option<Ipv6Addr>, kind: NdpKind },
    /// The device answered the agent's liveness probe for `ip`, `rtt_us` after it was sent.
    /// `mac` is the device that answered, which need not be the one probed.
    ProbeReply { ip: IpAddr, rtt_us: u32 },
    /// The device sent an mDNS packet (`response`: an answer or announcement, else a query).
    Mdns { response: bool },
    /// The mDNS host name the device announced.
    MdnsHost { hostname: Text },
    /// A DNS-SD service the device announced (added, or updated when (type, instance) is known).
    MdnsService(MdnsService),
    /// The device withdrew a service (a goodbye packet, TTL 0).
    MdnsServiceGone {
        service_type: String,
        instance: String,
    },
    /// The device sent an SSDP packet.
    Ssdp { kind: SsdpKind },
    /// The device's UPnP description was fetched.
    Upnp(UpnpDescription),
    /// The device's DIAL applications were queried: the complete list, any order.
    Dial { apps: Vec<DialApp> },
}

/// The fields of a client's DHCP message that the registry reads. Options absent from the
/// message are `None` and leave the record's value as it was.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DhcpClient {
    pub message: DhcpMessage,
    /// `ciaddr` when not 0.0.0.0: an address the client holds (RENEWING, REBINDING, INFORM,
    /// RELEASE).
    pub ciaddr: Option<Ipv4Addr>,
    /// Option 50: an address the client asks for, not yet its own.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 12, raw.
    pub hostname: Option<Text>,
    /// Option 60, raw.
    pub vendor_class: Option<Text>,
    /// Option 61, raw: the type byte then the identifier.
    pub client_id: Option<Vec<u8>>,
    /// Option 55, order kept.
    pub param_request_list: Option<Vec<u8>>,
}

/// The client message types; servers' types never reach [`DhcpClient`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DhcpMessage {
    Discover,
    #[default]
    Request,
    Inform,
    Release,
    Decline,
    /// Any other type sent from the client port (option 53 code).
    Other(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArpKind {
    /// RFC 5227 probe: a request from 0.0.0.0, checking that an address is free.
    Probe,
    /// RFC 5227 announcement (gratuitous request): the sender claims its address.
    Announcement,
    /// An ordinary request: the sender resolves someone else's address.
    Request,
    Reply,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NdpKind {
    NeighborSolicit,
    NeighborAdvert,
    RouterSolicit,
    /// Duplicate Address Detection (RFC 4862 5.4): a solicitation from `::` for the address
    /// the device is about to use. Often the only frame that shows a SLAAC address of a
    /// device that then talks from its link-local address alone.
    DadProbe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SsdpKind {
    Notify,
    /// An answer to an M-SEARCH.
    Response,
    /// An M-SEARCH the device sent.
    Search,
}

impl ObservationKind {
    /// The reachability evidence this observation is, when it comes from the device itself.
    pub fn evidence(&self) -> Option<Evidence> {
        Some(match self {
            ObservationKind::DhcpClient(_) => Evidence::DhcpRequest,
            ObservationKind::Arp {
                kind: ArpKind::Reply,
                ..
            } => Evidence::ArpReply,
            ObservationKind::Arp { .. } => Evidence::ArpAnnounce,
            ObservationKind::Ndp {
                kind: NdpKind::NeighborAdvert,
                ..
            } => Evidence::NdpAdvert,
            ObservationKind::Ndp { .. } => Evidence::NdpSolicit,
            ObservationKind::ProbeReply {
                ip: IpAddr::V4(_), ..
            } => Evidence::ArpReply,
            ObservationKind::ProbeReply {
                ip: IpAddr::V6(_), ..
            } => Evidence::NdpAdvert,
            // v1 evidence has one mDNS kind; a query proves liveness just as well.
            ObservationKind::Mdns { .. } => Evidence::MdnsResponse,
            ObservationKind::Ssdp {
                kind: SsdpKind::Response,
            } => Evidence::SsdpReply,
            // An M-SEARCH is the device speaking unprompted, like a NOTIFY.
            ObservationKind::Ssdp { .. } => Evidence::SsdpNotify,
            ObservationKind::Upnp(_) | ObservationKind::Dial { .. } => Evidence::HttpDescription,
            ObservationKind::DhcpAck { .. }
            | ObservationKind::MdnsHost { .. }
            | ObservationKind::MdnsService(_)
            | ObservationKind::MdnsServiceGone { .. } => return None,
        })
    }

    /// One line for an operator, the start of a Change's cause.
    pub fn describe(&self) -> String {
        match self {
            ObservationKind::DhcpClient(dhcp) => {
                let mut text = format!("DHCP {}", dhcp.message.name());
                if let Some(ip) = dhcp.ciaddr {
                    text.push_str(&format!(" ciaddr {ip}"));
                }
                if let Some(ip) = dhcp.requested_ip {
                    text.push_str(&format!(" requested {ip}"));
                }
                if let Some(name) = &dhcp.hostname {
                    text.push_str(&format!(" option 12 = {name}"));
                }
                text
            }
            ObservationKind::DhcpAck { ip } => format!("DHCP ACK {ip}"),
            ObservationKind::Arp { ip, kind } => {
                let kind = match kind {
                    ArpKind::Probe => "probe",
                    ArpKind::Announcement => "announcement",
                    ArpKind::Request => "request",
                    ArpKind::Reply => "reply",
                };
                match ip {
                    Some(ip) => format!("ARP {kind} from {ip}"),
                    None => format!("ARP {kind}"),
                }
            }
            ObservationKind::Ndp { ip, kind } => {
                let kind = match kind {
                    NdpKind::NeighborSolicit => "neighbor solicitation",
                    NdpKind::NeighborAdvert => "neighbor advertisement",
                    NdpKind::RouterSolicit => "router solicitation",
                    NdpKind::DadProbe => "duplicate address detection",
                };
                match ip {
                    Some(ip) => format!("{kind} for {ip}"),
                    None => kind.to_owned(),
                }
            }
            ObservationKind::ProbeReply { ip, rtt_us } => {
                format!("probe of {ip} answered in {rtt_us} us")
            }
            ObservationKind::Mdns { response: true } => "mDNS response".to_owned(),
            ObservationKind::Mdns { response: false } => "mDNS query".to_owned(),
            ObservationKind::MdnsHost { hostname } => format!("mDNS host name {hostname}"),
            ObservationKind::MdnsService(service) => format!(
                "mDNS service {} {} port {}",
                service.service_type, service.instance, service.port
            ),
            ObservationKind::MdnsServiceGone {
                service_type,
                instance,
            } => format!("mDNS service {service_type} {instance} withdrawn"),
            ObservationKind::Ssdp { kind } => match kind {
                SsdpKind::Notify => "SSDP NOTIFY".to_owned(),
                SsdpKind::Response => "SSDP response".to_owned(),
                SsdpKind::Search => "SSDP M-SEARCH".to_owned(),
            },
            ObservationKind::Upnp(_) => "UPnP description fetched".to_owned(),
            ObservationKind::Dial { apps } => format!("DIAL query, {} apps", apps.len()),
        }
    }
}

impl DhcpMessage {
    pub fn name(&self) -> String {
        match self {
            DhcpMessage::Discover => "DISCOVER".to_owned(),
            DhcpMessage::Request => "REQUEST".to_owned(),
            DhcpMessage::Inform => "INFORM".to_owned(),
            DhcpMessage::Release => "RELEASE".to_owned(),
            DhcpMessage::Decline => "DECLINE".to_owned(),
            DhcpMessage::Other(code) => format!("type {code}"),
        }
    }
}

/// Whether `addr` can name one device: not zero, broadcast or multicast.
fn is_device(addr: MacAddr) -> bool {
    addr.is_unicast() && addr != MacAddr::ZERO
}

/// The observation a captured frame carries, if any.
///
/// - DHCP from a client (BOOTREQUEST whose Ethernet source is `chaddr`; relayed copies are
///   not the device speaking): [`ObservationKind::DhcpClient`] for `chaddr`.
/// - DHCP ACK from a server: [`ObservationKind::DhcpAck`] of `yiaddr` for `chaddr`.
/// - ARP: about the sender MAC; a 0.0.0.0 sender (an RFC 5227 probe) is alive but claims
///   no address.
/// - NDP: about the source link-layer option, else the Ethernet source; an advertisement
///   vouches for its target, a solicitation for its source, and a solicitation from `::`
///   (a DAD probe) for its target, the address the device is about to use. Router
///   advertisements are the router's business, not a device's. The source address of an
///   advertisement is not taken (one address per observation): it is the target itself or
///   the link-local address, which the device's solicitations show.
/// - mDNS and SSDP: the Ethernet source is alive; their content is decoded elsewhere.
///
/// Frames from the agent's own MACs are filtered by the core, which knows them.
pub fn observations_from_frame(frame: &Frame<'_>, at_ms: i64) -> Option<Observation> {
    let src = frame.ethernet.src;
    let (device, kind) = match &frame.message {
        Message::Arp(arp) => (arp.sender_mac, arp_kind(arp)),
        Message::Dhcp { dhcp, .. } => (dhcp.chaddr, dhcp_kind(dhcp, src)?),
        Message::Ndp { ip, ndp } => ndp_kind(ndp, ip.src, src)?,
        Message::Mdns { payload, .. } => {
            // The QR bit of the DNS header: set on responses and announcements.
            let response = payload.get(2).is_some_and(|flags| flags & 0x80 != 0);
            (src, ObservationKind::Mdns { response })
        }
        Message::Ssdp { ip, payload, .. } => (src, ssdp_kind(ip, payload)?),
    };
    is_device(device).then_some(Observation {
        mac: device,
        at_ms,
        kind,
    })
}

fn arp_kind(arp: &ArpRepr) -> ObservationKind {
    let kind = if arp.operation == Operation::Reply {
        ArpKind::Reply
    } else if arp.is_probe() {
        ArpKind::Probe
    } else if arp.is_announcement() {
        ArpKind::Announcement
    } else {
        ArpKind::Request
    };
    let ip = Some(arp.sender_ip).filter(|ip| is_host_v4(*ip));
    ObservationKind::Arp { ip, kind }
}

fn is_host_v4(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast())
}

fn is_host_v6(ip: Ipv6Addr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast() || ip.is_loopback())
}

fn dhcp_kind(dhcp: &DhcpRepr<'_>, src: MacAddr) -> Option<ObservationKind> {
    match dhcp.op {
        BootOp::Reply if dhcp.message_type == MessageType::Ack => {
            let ip = dhcp.yiaddr;
            // An ACK to an INFORM carries no yiaddr: it assigns nothing.
            is_host_v4(ip).then_some(ObservationKind::DhcpAck { ip })
        }
        BootOp::Reply => None,
        BootOp::Request if src != dhcp.chaddr => None,
        BootOp::Request => {
            let message = match dhcp.message_type {
                MessageType::Discover => DhcpMessage::Discover,
                MessageType::Request => DhcpMessage::Request,
                MessageType::Inform => DhcpMessage::Inform,
                MessageType::Release => DhcpMessage::Release,
                MessageType::Decline => DhcpMessage::Decline,
                other => DhcpMessage::Other(other.code()),
            };
            let client_id = dhcp.client_id.map(|id| {
                let mut raw = vec![id.kind];
                raw.extend_from_slice(id.id);
                raw
            });
            Some(ObservationKind::DhcpClient(DhcpClient {
                message,
                ciaddr: Some(dhcp.ciaddr).filter(|ip| is_host_v4(*ip)),
                requested_ip: dhcp.requested_ip.filter(|ip| is_host_v4(*ip)),
                hostname: dhcp.hostname.map(|t| Text::new(t.as_bytes())),
                vendor_class: dhcp.vendor_class.map(|t| Text::new(t.as_bytes())),
                client_id,
                param_request_list: dhcp.parameter_request_list.map(<[u8]>::to_vec),
            }))
        }
    }
}

fn ndp_kind(ndp: &NdpRepr, ip_src: Ipv6Addr, src: MacAddr) -> Option<(MacAddr, ObservationKind)> {
    let source_ip = Some(ip_src).filter(|ip| is_host_v6(*ip));
    Some(match ndp {
        NdpRepr::NeighborSolicit { target, .. } if ip_src.is_unspecified() => (
            // RFC 4862 5.4.3: a DAD probe carries no source link-layer option.
            src,
            ObservationKind::Ndp {
                ip: Some(*target).filter(|ip| is_host_v6(*ip)),
                kind: NdpKind::DadProbe,
            },
        ),
        NdpRepr::NeighborSolicit { source_mac, .. } => (
            source_mac.unwrap_or(src),
            ObservationKind::Ndp {
                ip: source_ip,
                kind: NdpKind::NeighborSolicit,
            },
        ),
        NdpRepr::NeighborAdvert {
            target, target_mac, ..
        } => (
            target_mac.unwrap_or(src),
            ObservationKind::Ndp {
                ip: Some(*target).filter(|ip| is_host_v6(*ip)),
                kind: NdpKind::NeighborAdvert,
            },
        ),
        NdpRepr::RouterSolicit { source_mac } => (
            source_mac.unwrap_or(src),
            ObservationKind::Ndp {
                ip: source_ip,
                kind: NdpKind::RouterSolicit,
            },
        ),
        NdpRepr::RouterAdvert { .. } => return None,
    })
}

fn ssdp_kind(ip: &IpRepr, payload: &[u8]) -> Option<ObservationKind> {
    // Multicast sources cannot be a device speaking; the start line tells the message.
    if ip.src().is_multicast() {
        return None;
    }
    let kind = if payload.starts_with(b"NOTIFY ") {
        SsdpKind::Notify
    } else if payload.starts_with(b"M-SEARCH ") {
        SsdpKind::Search
    } else if payload.starts_with(b"HTTP/1.") {
        SsdpKind::Response
    } else {
        return None;
    };
    Some(ObservationKind::Ssdp { kind })
}

#[cfg(test)]
#[path = "observation_tests.rs"]
mod tests;
