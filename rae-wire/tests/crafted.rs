//! Hand-built frames for Ethernet, IP, UDP, ARP and neighbour discovery, the frames the agent
//! emits (ARP probe, neighbour solicitation) against independently built bytes, and drop
//! counting over a mixed stream.

#[path = "fixtures/craft.rs"]
mod craft;

use std::net::Ipv6Addr;

use craft::{
    ethernet, icmpv6_frame, ipv4, ipv6, lladdr, nd, ns, udp4, udp4_frame, v4, v6, DUT_MAC, RAE_MAC,
};
use rae_wire::icmpv6::{self, NeighborFlags};
use rae_wire::{
    arp, ipv6 as wire_ipv6, parse_frame, ArpRepr, Detail, DropCounters, DropKind, DropReason,
    Frame, Layer, MacAddr, Message, NdpRepr, VlanTag,
};

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn dropped(frame: &[u8]) -> DropReason {
    parse_frame(frame).expect_err("frame should have been dropped")
}

fn ndp(frame: &[u8]) -> NdpRepr {
    match parse_frame(frame).map(|f| f.message) {
        Ok(Message::Ndp { ndp, .. }) => ndp,
        other => panic!("not neighbour discovery: {other:?}"),
    }
}

/// An ND frame from the DUT's link-local address with hop limit 255.
fn nd_frame(dst: Ipv6Addr, message: &[u8]) -> Vec<u8> {
    icmpv6_frame(DUT_MAC, RAE_MAC, v6("fe80::7"), dst, 255, message)
}

#[test]
fn ethernet_refuses_llc_and_stacked_tags() {
    let llc = ethernet(MacAddr::BROADCAST, DUT_MAC, 0x0026, &[0xaa; 46]);
    assert_eq!(
        dropped(&llc),
        DropReason::new(Layer::Ethernet, Detail::EtherType)
    );
    let lldp = ethernet(MacAddr::BROADCAST, DUT_MAC, 0x88cc, &[0; 46]);
    assert_eq!(
        dropped(&lldp),
        DropReason::new(Layer::Ethernet, Detail::EtherType)
    );
    let qinq = ethernet(
        MacAddr::BROADCAST,
        DUT_MAC,
        0x88a8,
        &[0x00, 0x0a, 0x81, 0x00, 0x00, 0x2a, 0x08, 0x06],
    );
    assert_eq!(
        dropped(&qinq),
        DropReason::new(Layer::Ethernet, Detail::VlanTagging)
    );
    assert_eq!(dropped(&qinq[..13]), DropReason::truncated(Layer::Ethernet));
}

#[test]
fn ip_and_udp_refusals() {
    let udp = udp4(v4(7), v4(1), 68, 67, b"x");
    let fragment = ethernet(
        RAE_MAC,
        DUT_MAC,
        0x0800,
        &ipv4(v4(7), v4(1), 17, 0x2000, &udp),
    );
    assert_eq!(
        dropped(&fragment),
        DropReason::new(Layer::Ipv4, Detail::Fragment)
    );

    let tcp = ethernet(
        RAE_MAC,
        DUT_MAC,
        0x0800,
        &ipv4(v4(7), v4(1), 6, 0x4000, &[0; 20]),
    );
    assert_eq!(
        dropped(&tcp),
        DropReason::new(Layer::Ipv4, Detail::IpProtocol)
    );

    let mut bad_sum = udp4_frame(v4(7), v4(1), 68, 67, b"x");
    bad_sum[14 + 8] = 1; // TTL changed, header checksum not
    assert_eq!(
        dropped(&bad_sum),
        DropReason::new(Layer::Ipv4, Detail::BadChecksum)
    );

    let dns = udp4_frame(v4(7), v4(1), 40000, 53, b"query");
    assert_eq!(dropped(&dns), DropReason::new(Layer::Udp, Detail::Port));

    // UDP claiming more than its IP packet holds.
    let mut long = udp4(v4(7), v4(1), 5353, 5353, b"abc");
    long[4..6].copy_from_slice(&20u16.to_be_bytes());
    let frame = ethernet(RAE_MAC, DUT_MAC, 0x0800, &ipv4(v4(7), v4(1), 17, 0, &long));
    assert_eq!(dropped(&frame), DropReason::truncated(Layer::Udp));

    // DHCP ports over IPv6 are not DHCPv4.
    let v6_dhcp = ethernet(
        RAE_MAC,
        DUT_MAC,
        0x86dd,
        &ipv6(
            v6("fe80::7"),
            v6("ff02::1"),
            17,
            1,
            &[0, 68, 0, 67, 0, 8, 0, 0],
        ),
    );
    assert_eq!(dropped(&v6_dhcp), DropReason::new(Layer::Udp, Detail::Port));

    let hop_by_hop = ethernet(
        RAE_MAC,
        DUT_MAC,
        0x86dd,
        &ipv6(v6("::"), v6("ff02::16"), 0, 1, &[58, 0, 5, 2, 0, 0, 1, 0]),
    );
    assert_eq!(
        dropped(&hop_by_hop),
        DropReason::new(Layer::Ipv6, Detail::ExtensionHeader)
    );

    // Ethernet padding after a short IPv4 packet is not part of the payload.
    let mut padded = udp4_frame(v4(7), v4(1), 5353, 5353, b"mdns");
    padded.extend_from_slice(&[0; 20]);
    match parse_frame(&padded).unwrap().message {
        Message::Mdns { payload, .. } => assert_eq!(payload, b"mdns"),
        other => panic!("not mDNS: {other:?}"),
    }
}

#[test]
fn neighbour_messages_and_their_options() {
    let target = v6("2001:db8::1");
    let nonce = [14, 1, 1, 2, 3, 4, 5, 6]; // an option the agent skips
    let frame = nd_frame(
        v6("ff02::1:ff00:1"),
        &ns(target, &[nonce.to_vec(), lladdr(1, DUT_MAC)].concat()),
    );
    assert_eq!(
        ndp(&frame),
        NdpRepr::NeighborSolicit {
            target,
            source_mac: Some(DUT_MAC)
        }
    );

    let mut fixed = vec![0xe0, 0, 0, 0]; // R, S, O
    fixed.extend_from_slice(&target.octets());
    let frame = nd_frame(v6("fe80::1"), &nd(136, 0, &fixed, &lladdr(2, DUT_MAC)));
    let flags = NeighborFlags {
        router: true,
        solicited: true,
        overrides: true,
    };
    assert_eq!(
        ndp(&frame),
        NdpRepr::NeighborAdvert {
            flags,
            target,
            target_mac: Some(DUT_MAC)
        }
    );

    let frame = nd_frame(v6("ff02::2"), &nd(133, 0, &[0; 4], &[]));
    assert_eq!(ndp(&frame), NdpRepr::RouterSolicit { source_mac: None });

    let mut ra_fixed = vec![64, 0xc0, 0x07, 0x08]; // M and O set, lifetime 1800
    ra_fixed.extend_from_slice(&30_000u32.to_be_bytes());
    ra_fixed.extend_from_slice(&1_000u32.to_be_bytes());
    let mut prefix = vec![3, 4, 48, 0x80];
    prefix.extend_from_slice(&86_400u32.to_be_bytes());
    prefix.extend_from_slice(&14_400u32.to_be_bytes());
    prefix.extend_from_slice(&[0; 4]);
    prefix.extend_from_slice(&v6("2001:db8:7::").octets());
    let mtu = [5, 1, 0, 0, 0, 0, 0x05, 0xdc];
    let options = [lladdr(1, DUT_MAC), mtu.to_vec(), prefix].concat();
    let frame = nd_frame(v6("ff02::1"), &nd(134, 0, &ra_fixed, &options));
    let NdpRepr::RouterAdvert {
        cur_hop_limit,
        flags,
        router_lifetime,
        reachable_time,
        retrans_timer,
        source_mac,
        mtu,
        prefixes,
    } = ndp(&frame)
    else {
        panic!("not an RA");
    };
    assert_eq!(
        (
            cur_hop_limit,
            router_lifetime,
            reachable_time,
            retrans_timer
        ),
        (64, 1800, 30_000, 1_000)
    );
    assert_eq!(flags & NdpRepr::RA_FLAG_MANAGED, NdpRepr::RA_FLAG_MANAGED);
    assert_eq!(flags & NdpRepr::RA_FLAG_OTHER, NdpRepr::RA_FLAG_OTHER);
    assert_eq!((source_mac, mtu), (Some(DUT_MAC), Some(1500)));
    assert_eq!(prefixes.len(), 1);
    let p = prefixes[0];
    assert_eq!(
        (p.prefix, p.prefix_len, p.on_link, p.autonomous),
        (v6("2001:db8:7::"), 48, true, false)
    );
    assert_eq!((p.valid_lifetime, p.preferred_lifetime), (86_400, 14_400));
}

#[test]
fn neighbour_discovery_validation() {
    let target = v6("2001:db8::1");
    let group = v6("ff02::1:ff00:1");
    let icmp = |detail| DropReason::new(Layer::Icmpv6, detail);

    let zero_len = ns(target, &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        dropped(&nd_frame(group, &zero_len)),
        icmp(Detail::BadOption)
    );
    let past_end = ns(target, &[1, 2, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        dropped(&nd_frame(group, &past_end)),
        icmp(Detail::BadOption)
    );
    let lone_type = ns(target, &[1]);
    assert_eq!(
        dropped(&nd_frame(group, &lone_type)),
        icmp(Detail::BadOption)
    );
    let wide_lladdr = ns(target, &[1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        dropped(&nd_frame(group, &wide_lladdr)),
        icmp(Detail::BadOption)
    );

    let routed = icmpv6_frame(DUT_MAC, RAE_MAC, v6("fe80::7"), group, 64, &ns(target, &[]));
    assert_eq!(dropped(&routed), icmp(Detail::BadHopLimit));
    let code = nd(135, 1, &[&[0; 4][..], &target.octets()].concat(), &[]);
    assert_eq!(dropped(&nd_frame(group, &code)), icmp(Detail::BadCode));
    let multicast_target = ns(v6("ff02::1"), &[]);
    assert_eq!(
        dropped(&nd_frame(group, &multicast_target)),
        icmp(Detail::BadTarget)
    );
    let dad_with_lladdr = icmpv6_frame(
        DUT_MAC,
        RAE_MAC,
        Ipv6Addr::UNSPECIFIED,
        group,
        255,
        &ns(target, &lladdr(1, DUT_MAC)),
    );
    assert_eq!(dropped(&dad_with_lladdr), icmp(Detail::BadOption));

    let mut bad_sum = nd_frame(group, &ns(target, &[]));
    let last = bad_sum.len() - 1;
    bad_sum[last] ^= 1;
    assert_eq!(dropped(&bad_sum), icmp(Detail::BadChecksum));

    let short = nd(135, 0, &[0; 12], &[]);
    assert_eq!(
        dropped(&nd_frame(group, &short)),
        DropReason::truncated(Layer::Icmpv6)
    );
    let echo = nd(128, 0, &[0, 1, 0, 1], b"ping");
    assert_eq!(dropped(&nd_frame(group, &echo)), icmp(Detail::IcmpType));
}

#[test]
fn arp_probe_frame_is_byte_exact_and_round_trips() {
    // Laid out by hand from RFC 826 and RFC 5227 section 2.1.1.
    let expected = hex("ffffffffffff 02005e1000aa 0806
         0001 0800 06 04 0001 02005e1000aa 00000000 000000000000 c6120007
         000000000000000000000000000000000000");
    let probe = ArpRepr::probe(RAE_MAC, v4(7));
    let frame = arp::build_frame(MacAddr::BROADCAST, None, &probe);
    assert_eq!(frame, expected);
    let parsed = parse_frame(&frame).unwrap();
    assert_eq!(parsed.message, Message::Arp(probe));
    assert!(probe.is_probe() && !probe.is_gratuitous());

    // Unicast to the known MAC, from the RAE's own address, on VLAN 42.
    let request = ArpRepr::request(RAE_MAC, v4(1), v4(7));
    let tag = VlanTag {
        id: 42,
        priority: 0,
        drop_eligible: false,
    };
    let frame = arp::build_frame(DUT_MAC, Some(tag), &request);
    let parsed = parse_frame(&frame).unwrap();
    assert_eq!(
        (parsed.ethernet.dst, parsed.ethernet.src),
        (DUT_MAC, RAE_MAC)
    );
    assert_eq!(parsed.vlan_id(), Some(42));
    assert_eq!(parsed.message, Message::Arp(request));
}

#[test]
fn neighbor_solicitation_frame_is_byte_exact_and_round_trips() {
    // Built independently (python struct + RFC 1071 sum) for fe80::5eff:fe10:aa asking for
    // 2001:db8:1::5eff:fe10:1 through its solicited-node group.
    let expected = hex("3333ff100001 02005e1000aa 86dd
         6000000000203aff fe8000000000000000005efffe1000aa ff0200000000000000000001ff100001
         870031cd00000000 20010db80001000000005efffe100001 010102005e1000aa");
    let src = v6("fe80::5eff:fe10:aa");
    let target = v6("2001:db8:1::5eff:fe10:1");
    let frame = icmpv6::neighbor_solicitation_frame(RAE_MAC, src, target, None, None);
    assert_eq!(frame, expected);

    let Frame { ethernet, message } = parse_frame(&frame).unwrap();
    let Message::Ndp { ip, ndp } = message else {
        panic!("not ND")
    };
    assert_eq!(ethernet.dst, MacAddr([0x33, 0x33, 0xff, 0x10, 0x00, 0x01]));
    assert_eq!(
        (ip.src, ip.dst, ip.hop_limit),
        (src, wire_ipv6::solicited_node(target), 255)
    );
    assert_eq!(
        ndp,
        NdpRepr::NeighborSolicit {
            target,
            source_mac: Some(RAE_MAC)
        }
    );

    // Unicast NUD probe to the device's known MAC and address.
    let frame = icmpv6::neighbor_solicitation_frame(RAE_MAC, src, target, Some(DUT_MAC), None);
    let Frame { ethernet, message } = parse_frame(&frame).unwrap();
    let Message::Ndp { ip, .. } = message else {
        panic!("not ND")
    };
    assert_eq!((ethernet.dst, ip.dst), (DUT_MAC, target));

    // From the unspecified address (DAD) there is no source link-layer option.
    let frame =
        icmpv6::neighbor_solicitation_frame(RAE_MAC, Ipv6Addr::UNSPECIFIED, target, None, None);
    assert_eq!(frame.len(), expected.len() - 8);
    let Frame { message, .. } = parse_frame(&frame).unwrap();
    let Message::Ndp { ndp, .. } = message else {
        panic!("not ND")
    };
    assert_eq!(
        ndp,
        NdpRepr::NeighborSolicit {
            target,
            source_mac: None
        }
    );

    // Tagged.
    let tag = VlanTag {
        id: 7,
        priority: 6,
        drop_eligible: false,
    };
    let frame = icmpv6::neighbor_solicitation_frame(RAE_MAC, src, target, None, Some(tag));
    assert_eq!(parse_frame(&frame).unwrap().ethernet.vlan, Some(tag));
}

#[test]
fn a_mixed_stream_is_counted_by_layer_and_reason() {
    let good = arp::build_frame(MacAddr::BROADCAST, None, &ArpRepr::probe(RAE_MAC, v4(7)));
    let mut bad_udp_sum = udp4_frame(v4(7), v4(1), 5353, 5353, b"mdns");
    let last = bad_udp_sum.len() - 1;
    bad_udp_sum[last] ^= 0xff;
    let stream: Vec<Vec<u8>> = vec![
        good.clone(),
        good[..20].to_vec(),
        good[..10].to_vec(),
        bad_udp_sum.clone(),
        bad_udp_sum,
        udp4_frame(v4(7), v4(1), 40000, 53, b"dns"),
        ethernet(MacAddr::BROADCAST, DUT_MAC, 0x0800, &[0x45, 0, 0, 10]),
    ];
    let mut counters = DropCounters::new();
    let mut read = 0;
    for frame in &stream {
        match parse_frame(frame) {
            Ok(_) => read += 1,
            Err(reason) => counters.record(reason),
        }
    }
    assert_eq!(read, 1);
    assert_eq!(counters.get(DropReason::truncated(Layer::Arp)), 1);
    assert_eq!(counters.get(DropReason::truncated(Layer::Ethernet)), 1);
    assert_eq!(
        counters.get(DropReason::new(Layer::Udp, Detail::BadChecksum)),
        2
    );
    assert_eq!(counters.of_kind(Layer::Udp, DropKind::Unsupported), 1);
    assert_eq!(counters.get(DropReason::truncated(Layer::Ipv4)), 1);
    assert_eq!(counters.total(), 6);
    let labels: Vec<String> = counters
        .iter()
        .map(|(reason, count)| {
            format!(
                "{} {} {}={count}",
                reason.layer,
                reason.kind(),
                reason.detail
            )
        })
        .collect();
    assert_eq!(
        labels,
        [
            "ethernet truncated truncated=1",
            "arp truncated truncated=1",
            "ipv4 truncated truncated=1",
            "udp malformed bad_checksum=2",
            "udp unsupported port=1",
        ]
    );
}
