//! Property tests: no input makes a parser panic, every truncation of every fixture is an
//! error or a valid parse, and what the emitters write parses back to what was emitted.

#[path = "fixtures/craft.rs"]
mod craft;
#[path = "fixtures/pcap.rs"]
mod pcap;

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use rae_wire::arp::{self, Operation};
use rae_wire::dhcp::{self, BootOp, ClientFqdn, ClientId, MessageType, Text};
use rae_wire::icmpv6::{self, NeighborFlags, PrefixInfo};
use rae_wire::{
    ethernet, ipv4, ipv6, parse_frame, parse_frame_with, udp, ArpRepr, DhcpRepr, EthernetRepr,
    IpRepr, Ipv4Repr, Ipv6Repr, MacAddr, Message, NdpRepr, UdpChecksum, UdpRepr, VlanTag,
};

/// Runs every parser of the crate over `bytes`, at every layer, in both checksum modes.
/// Panics are the failure; results are not inspected.
fn parse_everything(bytes: &[u8]) {
    let _ = parse_frame(bytes);
    let _ = parse_frame_with(bytes, UdpChecksum::Skip);
    if let Ok(frame) = ethernet::Frame::new_checked(bytes) {
        let _ = EthernetRepr::parse(&frame);
        let _ = (
            frame.dst(),
            frame.src(),
            frame.vlan(),
            frame.ethertype(),
            frame.payload(),
        );
    }
    if let Ok(packet) = arp::Packet::new_checked(bytes) {
        let _ = ArpRepr::parse(&packet);
        let _ = (packet.sender_hardware_addr(), packet.target_protocol_addr());
    }
    if let Ok(packet) = ipv4::Packet::new_checked(bytes) {
        let _ = Ipv4Repr::parse(&packet);
        let _ = (packet.options(), packet.payload(), packet.verify_checksum());
    }
    let ip6 = Ipv6Repr {
        src: "fe80::1".parse().unwrap(),
        dst: "ff02::1".parse().unwrap(),
        next_header: 58,
        hop_limit: 255,
        payload_len: bytes.len(),
    };
    if let Ok(packet) = ipv6::Packet::new_checked(bytes) {
        let _ = Ipv6Repr::parse(&packet);
        let _ = (
            packet.payload(),
            packet.traffic_class(),
            packet.flow_label(),
        );
    }
    if let Ok(packet) = udp::Packet::new_checked(bytes) {
        let _ = UdpRepr::parse(&IpRepr::V6(ip6), &packet, UdpChecksum::Verify);
        let _ = packet.payload();
    }
    if let Ok(packet) = dhcp::Packet::new_checked(bytes) {
        let _ = DhcpRepr::parse(&packet);
        let _ = packet.options().count();
    }
    if let Ok(packet) = icmpv6::Packet::new_checked(bytes) {
        let _ = NdpRepr::parse(&ip6, &packet);
        let _ = packet.options().count();
        let _ = (
            packet.target(),
            packet.neighbor_flags(),
            packet.router_lifetime(),
        );
    }
}

fn fixtures() -> Vec<Vec<u8>> {
    let mut frames = pcap::lab_frames();
    frames.extend(craft::sample_frames());
    frames
}

#[test]
fn every_truncation_of_every_fixture_is_an_error_or_a_parse() {
    for (i, frame) in fixtures().iter().enumerate() {
        for len in 0..=frame.len() {
            parse_everything(&frame[..len]);
            // Cutting a frame can only lose information: a cut before the end of what the
            // headers declare must be refused.
            if let Ok(parsed) = parse_frame_with(&frame[..len], UdpChecksum::Skip) {
                let whole = parse_frame_with(frame, UdpChecksum::Skip);
                assert!(
                    whole.is_ok(),
                    "fixture {i}: prefix of {len} parsed, whole did not"
                );
                if let Message::Arp(_) = parsed.message {
                    assert!(
                        len >= 14 + arp::PACKET_LEN,
                        "fixture {i}: ARP read from {len} bytes"
                    );
                }
            }
        }
    }
}

fn mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(MacAddr)
}

fn ipv4_addr() -> impl Strategy<Value = Ipv4Addr> {
    any::<[u8; 4]>().prop_map(Ipv4Addr::from)
}

fn ipv6_addr() -> impl Strategy<Value = Ipv6Addr> {
    any::<[u8; 16]>().prop_map(Ipv6Addr::from)
}

fn unicast_ipv6() -> impl Strategy<Value = Ipv6Addr> {
    ipv6_addr().prop_filter("multicast", |a| !a.is_multicast())
}

fn vlan() -> impl Strategy<Value = Option<VlanTag>> {
    option::of(any::<u16>().prop_map(VlanTag::from_tci))
}

fn text(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..600)) {
        parse_everything(&bytes);
    }

    #[test]
    fn mutated_fixtures_never_panic(
        pick in any::<prop::sample::Index>(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let frames = fixtures();
        let mut frame = frames[pick.index(frames.len())].clone();
        for (at, byte) in edits {
            let i = at.index(frame.len());
            frame[i] = byte;
        }
        parse_everything(&frame);
    }

    #[test]
    fn arp_frames_round_trip(
        sender_mac in mac(),
        sender_ip in ipv4_addr(),
        target_mac in mac(),
        target_ip in ipv4_addr(),
        reply in any::<bool>(),
        dst in mac(),
        tag in vlan(),
    ) {
        let repr = ArpRepr {
            operation: if reply { Operation::Reply } else { Operation::Request },
            sender_mac,
            sender_ip,
            target_mac,
            target_ip,
        };
        let frame = arp::build_frame(dst, tag, &repr);
        let parsed = parse_frame(&frame).unwrap();
        prop_assert_eq!(parsed.message, Message::Arp(repr));
        prop_assert_eq!((parsed.ethernet.dst, parsed.ethernet.src, parsed.ethernet.vlan), (dst, sender_mac, tag));
    }

    #[test]
    fn neighbor_solicitation_frames_round_trip(
        src_mac in mac(),
        src_ip in ipv6_addr(),
        target in unicast_ipv6(),
        unicast in option::of(mac()),
        tag in vlan(),
    ) {
        let frame = icmpv6::neighbor_solicitation_frame(src_mac, src_ip, target, unicast, tag);
        let parsed = parse_frame(&frame).unwrap();
        let Message::Ndp { ip, ndp } = parsed.message else { panic!("not ND") };
        let source_mac = (!src_ip.is_unspecified()).then_some(src_mac);
        prop_assert_eq!(ndp, NdpRepr::NeighborSolicit { target, source_mac });
        prop_assert_eq!(ip.hop_limit, 255);
        prop_assert_eq!(parsed.ethernet.vlan, tag);
        match unicast {
            Some(mac) => prop_assert_eq!((parsed.ethernet.dst, ip.dst), (mac, target)),
            None => {
                prop_assert_eq!(ip.dst, ipv6::solicited_node(target));
                prop_assert_eq!(parsed.ethernet.dst, ipv6::multicast_mac(ip.dst));
            }
        }
    }

    #[test]
    fn ndp_messages_round_trip(
        kind in 0u8..4,
        src in unicast_ipv6().prop_filter("unspecified", |a| !a.is_unspecified()),
        dst in ipv6_addr(),
        target in unicast_ipv6(),
        macs in (option::of(mac()), option::of(mac())),
        numbers in (any::<u8>(), any::<u8>(), any::<u16>(), any::<u32>(), any::<u32>()),
        mtu in option::of(any::<u32>()),
        flags in any::<(bool, bool, bool)>(),
        prefixes in vec((any::<u8>(), any::<bool>(), any::<bool>(), any::<u32>(), any::<u32>(), ipv6_addr()), 0..4),
    ) {
        let (hop, ra_flags, lifetime, reachable, retrans) = numbers;
        let repr = match kind {
            0 => NdpRepr::RouterSolicit { source_mac: macs.0 },
            1 => NdpRepr::RouterAdvert {
                cur_hop_limit: hop,
                flags: ra_flags,
                router_lifetime: lifetime,
                reachable_time: reachable,
                retrans_timer: retrans,
                source_mac: macs.0,
                mtu,
                prefixes: prefixes
                    .iter()
                    .map(|&(prefix_len, on_link, autonomous, valid_lifetime, preferred_lifetime, prefix)| PrefixInfo {
                        prefix_len, on_link, autonomous, valid_lifetime, preferred_lifetime, prefix,
                    })
                    .collect(),
            },
            2 => NdpRepr::NeighborSolicit { target, source_mac: macs.0 },
            _ => NdpRepr::NeighborAdvert {
                flags: NeighborFlags { router: flags.0, solicited: flags.1, overrides: flags.2 },
                target,
                target_mac: macs.1,
            },
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        prop_assert_eq!(repr.emit(src, dst, &mut buf).unwrap(), buf.len());
        let ip = Ipv6Repr { src, dst, next_header: 58, hop_limit: 255, payload_len: buf.len() };
        let packet = icmpv6::Packet::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(NdpRepr::parse(&ip, &packet).unwrap(), repr);
    }

    #[test]
    fn dhcp_messages_round_trip(
        reply in any::<bool>(),
        code in any::<u8>(),
        numbers in (any::<u32>(), any::<u16>(), any::<bool>(), any::<u8>()),
        addrs in (ipv4_addr(), ipv4_addr(), ipv4_addr(), ipv4_addr()),
        chaddr in mac(),
        hostname in option::of(text(255)),
        vendor_class in option::of(text(255)),
        prl in option::of(text(255)),
        client_id in option::of((any::<u8>(), vec(any::<u8>(), 1..254))),
        fqdn in option::of((any::<[u8; 3]>(), text(252))),
        scalars in (option::of(ipv4_addr()), option::of(any::<u32>()), option::of(ipv4_addr()), option::of(any::<u16>())),
    ) {
        let (xid, secs, broadcast, hops) = numbers;
        let repr = DhcpRepr {
            op: if reply { BootOp::Reply } else { BootOp::Request },
            message_type: MessageType::from_code(code),
            xid,
            secs,
            broadcast,
            hops,
            ciaddr: addrs.0,
            yiaddr: addrs.1,
            siaddr: addrs.2,
            giaddr: addrs.3,
            chaddr,
            hostname: hostname.as_deref().map(Text),
            requested_ip: scalars.0,
            lease_time: scalars.1,
            server_id: scalars.2,
            parameter_request_list: prl.as_deref(),
            max_message_size: scalars.3,
            vendor_class: vendor_class.as_deref().map(Text),
            client_id: client_id.as_ref().map(|(kind, id)| ClientId { kind: *kind, id }),
            client_fqdn: fqdn.as_ref().map(|([flags, rcode1, rcode2], name)| ClientFqdn {
                flags: *flags, rcode1: *rcode1, rcode2: *rcode2, name,
            }),
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        prop_assert_eq!(repr.emit(&mut buf).unwrap(), buf.len());
        let packet = dhcp::Packet::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(DhcpRepr::parse(&packet).unwrap(), repr);

        // And through the whole stack, with checksums.
        let src = Ipv4Addr::new(198, 18, 0, 1);
        let frame = craft::udp4_frame(src, Ipv4Addr::BROADCAST, 67, 68, &buf);
        let Message::Dhcp { dhcp, .. } = parse_frame(&frame).unwrap().message else { panic!("not DHCP") };
        prop_assert_eq!(dhcp, repr);
    }

    #[test]
    fn ip_and_udp_headers_round_trip(
        src in ipv4_addr(),
        dst in ipv4_addr(),
        ttl in any::<u8>(),
        ports in (any::<u16>(), any::<u16>()),
        payload in vec(any::<u8>(), 0..300),
        src6 in ipv6_addr(),
        dst6 in ipv6_addr(),
    ) {
        let udp_repr = UdpRepr { src_port: ports.0, dst_port: ports.1 };
        let v4 = Ipv4Repr { src, dst, protocol: 17, ttl, payload_len: 8 + payload.len() };
        let v6 = Ipv6Repr { src: src6, dst: dst6, next_header: 17, hop_limit: ttl, payload_len: 8 + payload.len() };
        for ip in [IpRepr::V4(v4), IpRepr::V6(v6)] {
            let mut buf = vec![0u8; 48 + payload.len()];
            let header_len = match ip {
                IpRepr::V4(v4) => v4.emit(&mut buf).unwrap(),
                IpRepr::V6(v6) => v6.emit(&mut buf).unwrap(),
            };
            let len = udp_repr.emit(&ip, &payload, &mut buf[header_len..]).unwrap();
            let packet = &buf[..header_len + len];
            let datagram = match ip {
                IpRepr::V4(_) => {
                    let view = ipv4::Packet::new_checked(packet).unwrap();
                    prop_assert_eq!(IpRepr::V4(Ipv4Repr::parse(&view).unwrap()), ip);
                    view.payload()
                }
                IpRepr::V6(_) => {
                    let view = ipv6::Packet::new_checked(packet).unwrap();
                    prop_assert_eq!(IpRepr::V6(Ipv6Repr::parse(&view).unwrap()), ip);
                    view.payload()
                }
            };
            let view = udp::Packet::new_checked(datagram).unwrap();
            prop_assert_eq!(UdpRepr::parse(&ip, &view, UdpChecksum::Verify).unwrap(), udp_repr);
            prop_assert_eq!(view.payload(), &payload[..]);
        }
    }
}
