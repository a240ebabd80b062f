//! The parsers against real traffic: `tests/fixtures/lab.pcap`, recorded by
//! `tests/fixtures/capture-lab.sh` from udhcpc, ISC dhclient, dnsmasq, busybox arping, the
//! Linux IPv6 stack and python mDNS/SSDP senders on a namespace LAN.

#[path = "fixtures/pcap.rs"]
mod pcap;

use std::net::{Ipv4Addr, Ipv6Addr};

use rae_wire::arp::Operation;
use rae_wire::dhcp::{BootOp, ClientFqdn, MessageType};
use rae_wire::{
    parse_frame, parse_frame_with, Detail, DhcpRepr, DropCounters, DropKind, DropReason, Frame,
    IpRepr, Layer, MacAddr, Message, NdpRepr, UdpChecksum,
};

const UDHCPC_MAC: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]);
const DHCLIENT_MAC: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x02]);
const STATIC_MAC: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x03]);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, last)
}

/// Every frame of the capture, parsed with UDP checksums skipped, as the capture thread does
/// for frames the kernel marks checksum-not-ready (everything a veth forwarded from a socket).
fn parsed(frames: &[Vec<u8>]) -> Vec<Result<Frame<'_>, DropReason>> {
    frames
        .iter()
        .map(|frame| parse_frame_with(frame, UdpChecksum::Skip))
        .collect()
}

fn dhcp_messages<'a>(parsed: &'a [Result<Frame<'a>, DropReason>]) -> Vec<&'a DhcpRepr<'a>> {
    parsed
        .iter()
        .filter_map(|frame| match frame {
            Ok(Frame {
                message: Message::Dhcp { dhcp, .. },
                ..
            }) => Some(dhcp),
            _ => None,
        })
        .collect()
}

#[test]
fn every_frame_is_read_or_dropped_for_the_expected_reason() {
    let frames = pcap::lab_frames();
    assert_eq!(frames.len(), 90, "lab.pcap changed: update this test");
    let (mut arp, mut dhcp, mut ndp, mut mdns, mut ssdp) = (0, 0, 0, 0, 0);
    let mut drops = DropCounters::new();
    for (i, result) in parsed(&frames).into_iter().enumerate() {
        match result {
            Ok(frame) => match frame.message {
                Message::Arp(_) => arp += 1,
                Message::Dhcp { .. } => dhcp += 1,
                Message::Ndp { .. } => ndp += 1,
                Message::Mdns { .. } => mdns += 1,
                Message::Ssdp { .. } => ssdp += 1,
            },
            Err(reason) => {
                assert_eq!(reason.kind(), DropKind::Unsupported, "frame {i}: {reason}");
                drops.record(reason);
            }
        }
    }
    // Counted independently with `tcpdump -nn -r lab.pcap`.
    assert_eq!((arp, dhcp, ndp, mdns, ssdp), (19, 15, 28, 2, 2));
    let expected = [
        // IPv4 ICMP echo request/reply, the ICMP port unreachable, one IGMP report.
        (DropReason::new(Layer::Ipv4, Detail::IpProtocol), 4),
        // MLDv2 reports come behind a hop-by-hop header.
        (DropReason::new(Layer::Ipv6, Detail::ExtensionHeader), 18),
        // ICMPv6 echo request/reply.
        (DropReason::new(Layer::Icmpv6, Detail::IcmpType), 2),
    ];
    assert_eq!(drops.iter().collect::<Vec<_>>(), expected);
}

#[test]
fn udp_checksums_left_to_offload_are_counted_when_verified() {
    let frames = pcap::lab_frames();
    let mut drops = DropCounters::new();
    for frame in &frames {
        if let Err(reason) = parse_frame(frame) {
            drops.record(reason);
        }
    }
    // Every datagram a UDP socket sent across the veth pair carries only the pseudo-header
    // sum (dnsmasq's 7 replies, dhclient's unicast RELEASE, 2 mDNS, 2 SSDP); udhcpc and
    // dhclient build their broadcasts on packet sockets and fill the checksum in.
    let bad_sum = DropReason::new(Layer::Udp, Detail::BadChecksum);
    assert_eq!(drops.get(bad_sum), 12);
    assert_eq!(drops.of_kind(Layer::Udp, DropKind::Malformed), 12);
    assert_eq!(drops.total(), 12 + 4 + 18 + 2);
}

#[test]
fn udhcpc_discover_carries_hostname_vendor_class_client_id_and_request_list() {
    let frames = pcap::lab_frames();
    let parsed = parsed(&frames);
    let messages = dhcp_messages(&parsed);
    let discover = messages
        .iter()
        .find(|m| m.message_type == MessageType::Discover && m.chaddr == UDHCPC_MAC)
        .expect("no DISCOVER from udhcpc");
    assert_eq!(discover.op, BootOp::Request);
    assert_eq!(
        discover.hostname.and_then(|t| t.as_str()),
        Some("tv-living")
    );
    assert_eq!(
        discover.vendor_class.and_then(|t| t.as_str()),
        Some("SmartTV/7.1 (OEM)")
    );
    let client_id = discover.client_id.expect("no client id");
    assert_eq!(client_id.kind, 1);
    assert_eq!(client_id.as_mac(), Some(UDHCPC_MAC));
    assert_eq!(
        discover.parameter_request_list,
        Some(&[1, 3, 6, 12, 15, 28, 42][..])
    );
    assert_eq!(discover.max_message_size, Some(576));
    assert_eq!(discover.ciaddr, Ipv4Addr::UNSPECIFIED);
}

#[test]
fn dnsmasq_offers_and_acks_the_address_udhcpc_requests() {
    let frames = pcap::lab_frames();
    let parsed = parsed(&frames);
    let messages = dhcp_messages(&parsed);
    let to_udhcpc = |t| {
        messages
            .iter()
            .filter(move |m| m.message_type == t && m.chaddr == UDHCPC_MAC)
            .count()
    };
    assert_eq!(to_udhcpc(MessageType::Offer), 4);
    assert_eq!(to_udhcpc(MessageType::Request), 1);
    let request = messages
        .iter()
        .find(|m| m.message_type == MessageType::Request && m.chaddr == UDHCPC_MAC)
        .unwrap();
    assert_eq!(request.requested_ip, Some(ip(122)));
    assert_eq!(request.server_id, Some(ip(1)));
    let ack = messages
        .iter()
        .find(|m| m.message_type == MessageType::Ack && m.chaddr == UDHCPC_MAC)
        .expect("no ACK for udhcpc");
    assert_eq!(ack.op, BootOp::Reply);
    assert_eq!(ack.xid, request.xid);
    assert_eq!(ack.yiaddr, ip(122));
    assert_eq!(ack.lease_time, Some(3600));
    assert_eq!(ack.server_id, Some(ip(1)));
}

#[test]
fn dhclient_request_carries_a_wire_encoded_client_fqdn() {
    let frames = pcap::lab_frames();
    let parsed = parsed(&frames);
    let messages = dhcp_messages(&parsed);
    let request = messages
        .iter()
        .find(|m| m.message_type == MessageType::Request && m.chaddr == DHCLIENT_MAC)
        .expect("no REQUEST from dhclient");
    assert_eq!(request.requested_ip, Some(ip(123)));
    assert_eq!(
        request.hostname.and_then(|t| t.as_str()),
        Some("stb-kitchen")
    );
    assert_eq!(
        request.vendor_class.and_then(|t| t.as_str()),
        Some("STB-OS 4.2")
    );
    let fqdn = request.client_fqdn.expect("no option 81");
    assert!(fqdn.is_wire_encoded());
    assert_eq!(fqdn.flags & ClientFqdn::FLAG_S, 0, "server-update off");
    assert_eq!(fqdn.name, b"\x0bstb-kitchen\x03lab\x07example\x00");
    assert_eq!(
        fqdn.dotted_name().as_deref(),
        Some("stb-kitchen.lab.example")
    );

    // dnsmasq answers with S, O and E set and a partial name (no root label).
    let ack = messages
        .iter()
        .find(|m| m.message_type == MessageType::Ack && m.chaddr == DHCLIENT_MAC)
        .expect("no ACK for dhclient");
    let answer = ack.client_fqdn.expect("no option 81 in the ACK");
    let soe = ClientFqdn::FLAG_S | ClientFqdn::FLAG_O | ClientFqdn::FLAG_E;
    assert_eq!(answer.flags & soe, soe);
    assert_eq!((answer.rcode1, answer.rcode2), (255, 255));
    assert_eq!(answer.dotted_name().as_deref(), Some("stb-kitchen"));

    let release = messages
        .iter()
        .find(|m| m.message_type == MessageType::Release)
        .expect("no RELEASE");
    assert_eq!(release.chaddr, DHCLIENT_MAC);
    assert_eq!(release.ciaddr, ip(123));
}

#[test]
fn arp_requests_replies_probes_announcements_and_a_tagged_frame() {
    let frames = pcap::lab_frames();
    let arps: Vec<_> = parsed(&frames)
        .into_iter()
        .filter_map(|frame| match frame {
            Ok(Frame {
                ethernet,
                message: Message::Arp(arp),
            }) => Some((ethernet, arp)),
            _ => None,
        })
        .collect();
    let probes: Vec<_> = arps.iter().filter(|(_, a)| a.is_probe()).collect();
    // udhcpc's check of the offered address (-a) and `arping -D`.
    assert_eq!(probes.len(), 2);
    assert!(probes.iter().all(|(_, a)| a.sender_mac == UDHCPC_MAC));
    assert_eq!(probes[0].1.target_ip, ip(122));
    assert_eq!(probes[1].1.target_ip, ip(99));

    let announcements: Vec<_> = arps.iter().filter(|(_, a)| a.is_announcement()).collect();
    assert_eq!(announcements.len(), 2, "arping -U and the tagged one");
    assert_eq!(announcements[0].1.sender_ip, ip(122));

    let gratuitous_replies: Vec<_> = arps
        .iter()
        .filter(|(_, a)| a.is_gratuitous() && a.operation == Operation::Reply)
        .collect();
    assert_eq!(gratuitous_replies.len(), 1, "arping -A");

    let (tagged_eth, tagged) = announcements[1];
    let vlan = tagged_eth
        .vlan
        .expect("the VLAN 42 announcement lost its tag");
    assert_eq!((vlan.id, vlan.priority), (42, 5));
    assert_eq!(tagged.sender_mac, STATIC_MAC);
    assert_eq!(tagged.sender_ip, Ipv4Addr::new(198, 18, 42, 3));

    let reply = arps
        .iter()
        .find(|(_, a)| {
            a.operation == Operation::Reply && a.sender_ip == ip(122) && !a.is_gratuitous()
        })
        .expect("no ARP reply from udhcpc's host");
    assert_eq!(reply.1.sender_mac, UDHCPC_MAC);
    assert_eq!(reply.1.target_ip, ip(1));
}

#[test]
fn neighbour_discovery_from_the_linux_stack_and_dnsmasq() {
    let frames = pcap::lab_frames();
    let nd: Vec<_> = parsed(&frames)
        .into_iter()
        .filter_map(|frame| match frame {
            Ok(Frame {
                ethernet,
                message: Message::Ndp { ip, ndp },
            }) => Some((ethernet, ip, ndp)),
            _ => None,
        })
        .collect();
    let count = |f: fn(&NdpRepr) -> bool| nd.iter().filter(|(_, _, n)| f(n)).count();
    assert_eq!(count(|n| matches!(n, NdpRepr::RouterSolicit { .. })), 4);
    assert_eq!(count(|n| matches!(n, NdpRepr::RouterAdvert { .. })), 4);
    assert_eq!(count(|n| matches!(n, NdpRepr::NeighborSolicit { .. })), 14);
    assert_eq!(count(|n| matches!(n, NdpRepr::NeighborAdvert { .. })), 6);

    let prefix: Ipv6Addr = "2001:db8:1::".parse().unwrap();
    for (eth, _, ndp) in &nd {
        if let NdpRepr::RouterAdvert {
            router_lifetime,
            source_mac,
            mtu,
            prefixes,
            ..
        } = ndp
        {
            assert_eq!(*router_lifetime, 600);
            assert_eq!(*source_mac, Some(eth.src));
            assert_eq!(*mtu, Some(1500));
            assert_eq!(prefixes.len(), 1);
            assert_eq!(prefixes[0].prefix, prefix);
            assert_eq!(prefixes[0].prefix_len, 64);
            assert!(prefixes[0].on_link && prefixes[0].autonomous);
        }
    }

    // Duplicate address detection: from ::, to the solicited-node group, no link-layer option.
    let dad: Vec<_> = nd
        .iter()
        .filter(|(_, ip, _)| ip.src.is_unspecified())
        .collect();
    assert_eq!(dad.len(), 8);
    for (eth, ip, ndp) in dad {
        let NdpRepr::NeighborSolicit { target, source_mac } = ndp else {
            panic!("DAD message is not a solicitation: {ndp:?}");
        };
        assert_eq!(*source_mac, None);
        assert_eq!(ip.dst, rae_wire::ipv6::solicited_node(*target));
        assert_eq!(eth.dst, rae_wire::ipv6::multicast_mac(ip.dst));
    }

    // udhcpc's host answers the bridge's solicitation for its SLAAC address.
    let slaac: Ipv6Addr = "2001:db8:1::5eff:fe10:1".parse().unwrap();
    let answer = nd.iter().find_map(|(eth, _, ndp)| match ndp {
        NdpRepr::NeighborAdvert { flags, target, .. } if *target == slaac => Some((eth, flags)),
        _ => None,
    });
    let (eth, flags) = answer.expect("no advertisement for the SLAAC address");
    assert_eq!(eth.src, UDHCPC_MAC);
    assert!(flags.solicited && !flags.router);
}

#[test]
fn mdns_and_ssdp_payloads_are_handed_out() {
    let frames = pcap::lab_frames();
    let parsed = parsed(&frames);
    let mut mdns = Vec::new();
    let mut ssdp = Vec::new();
    for frame in parsed.iter().flatten() {
        match &frame.message {
            Message::Mdns { ip, payload, .. } => mdns.push((ip, *payload)),
            Message::Ssdp { ip, payload, .. } => ssdp.push((ip, *payload)),
            _ => {}
        }
    }
    assert_eq!(mdns.len(), 2);
    assert!(matches!(mdns[0].0, IpRepr::V4(_)) && matches!(mdns[1].0, IpRepr::V6(_)));
    for (_, payload) in &mdns {
        // A response header (QR and AA set) with one answer, then the PTR owner name.
        assert_eq!(&payload[..12], &[0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert!(payload.windows(14).any(|w| w == b"Living Room TV"));
    }
    assert_eq!(ssdp.len(), 2);
    assert!(ssdp[0].1.starts_with(b"NOTIFY * HTTP/1.1\r\n"));
    assert_eq!(ssdp[0].0.dst(), Ipv4Addr::new(239, 255, 255, 250));
    assert!(ssdp[1].1.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(ssdp[1].1.ends_with(b"\r\n\r\n"));
}
