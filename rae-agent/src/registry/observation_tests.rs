use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rae_proto::Evidence;

use super::*;
use crate::wire::dhcp::{ClientId, Text as WireText};
use crate::wire::icmpv6::NeighborFlags;
use crate::wire::{EtherType, EthernetRepr, Ipv4Repr, Ipv6Repr, UdpRepr};

const DEVICE: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x07]);
const SERVER: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]);

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, last)
}

fn eth(src: MacAddr, ethertype: EtherType) -> EthernetRepr {
    EthernetRepr {
        src,
        dst: MacAddr::BROADCAST,
        vlan: None,
        ethertype,
    }
}

fn arp(operation: Operation, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Frame<'static> {
    Frame {
        ethernet: eth(DEVICE, EtherType::ARP),
        message: Message::Arp(ArpRepr {
            operation,
            sender_mac: DEVICE,
            sender_ip,
            target_mac: MacAddr::ZERO,
            target_ip,
        }),
    }
}

fn observed(frame: &Frame<'_>) -> Option<(Mac, ObservationKind)> {
    observations_from_frame(frame, 42).map(|obs| {
        assert_eq!(obs.at_ms, 42);
        (obs.mac, obs.kind)
    })
}

#[test]
fn arp_kinds_and_the_rfc5227_probe() {
    let device = Mac(DEVICE.0);
    let cases = [
        (
            arp(Operation::Request, Ipv4Addr::UNSPECIFIED, v4(7)),
            None,
            ArpKind::Probe,
        ),
        (
            arp(Operation::Request, v4(7), v4(7)),
            Some(v4(7)),
            ArpKind::Announcement,
        ),
        (
            arp(Operation::Request, v4(7), v4(1)),
            Some(v4(7)),
            ArpKind::Request,
        ),
        (
            arp(Operation::Reply, v4(7), v4(1)),
            Some(v4(7)),
            ArpKind::Reply,
        ),
    ];
    for (frame, ip, kind) in cases {
        assert_eq!(
            observed(&frame),
            Some((device, ObservationKind::Arp { ip, kind }))
        );
    }
    let reply = ObservationKind::Arp {
        ip: None,
        kind: ArpKind::Reply,
    };
    assert_eq!(reply.evidence(), Some(Evidence::ArpReply));
    let probe = ObservationKind::Arp {
        ip: None,
        kind: ArpKind::Probe,
    };
    assert_eq!(probe.evidence(), Some(Evidence::ArpAnnounce));
}

fn dhcp_frame(src: MacAddr, dhcp: DhcpRepr<'static>) -> Frame<'static> {
    Frame {
        ethernet: eth(src, EtherType::IPV4),
        message: Message::Dhcp {
            ip: Ipv4Repr {
                src: Ipv4Addr::UNSPECIFIED,
                dst: Ipv4Addr::BROADCAST,
                protocol: 17,
                ttl: 64,
                payload_len: 300,
            },
            udp: UdpRepr {
                src_port: 68,
                dst_port: 67,
            },
            dhcp,
        },
    }
}

fn dhcp(op: BootOp, message_type: MessageType) -> DhcpRepr<'static> {
    DhcpRepr {
        op,
        message_type,
        xid: 1,
        secs: 0,
        broadcast: false,
        hops: 0,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: Ipv4Addr::UNSPECIFIED,
        giaddr: Ipv4Addr::UNSPECIFIED,
        chaddr: DEVICE,
        hostname: None,
        requested_ip: None,
        lease_time: None,
        server_id: None,
        parameter_request_list: None,
        max_message_size: None,
        vendor_class: None,
        client_id: None,
        client_fqdn: None,
    }
}

#[test]
fn dhcp_request_keeps_raw_options() {
    static PRL: [u8; 4] = [1, 3, 6, 15];
    static HOST: [u8; 4] = [b't', b'v', 0xe9, 0];
    static CLIENT: [u8; 6] = DEVICE.0;
    let mut request = dhcp(BootOp::Request, MessageType::Request);
    request.requested_ip = Some(v4(9));
    request.hostname = Some(WireText(&HOST));
    request.vendor_class = Some(WireText(b"android-dhcp-13"));
    request.parameter_request_list = Some(&PRL);
    request.client_id = Some(ClientId {
        kind: 1,
        id: &CLIENT,
    });
    let (mac, kind) = observed(&dhcp_frame(DEVICE, request)).unwrap();
    assert_eq!(mac, Mac(DEVICE.0));
    let mut client_id = vec![1];
    client_id.extend_from_slice(&DEVICE.0);
    assert_eq!(
        kind,
        ObservationKind::DhcpClient(DhcpClient {
            message: DhcpMessage::Request,
            ciaddr: None,
            requested_ip: Some(v4(9)),
            hostname: Some(Text::new(HOST.to_vec())),
            vendor_class: Some(Text::new(b"android-dhcp-13".to_vec())),
            client_id: Some(client_id),
            param_request_list: Some(PRL.to_vec()),
        })
    );
    assert_eq!(kind.evidence(), Some(Evidence::DhcpRequest));
}

#[test]
fn relayed_client_messages_are_not_the_device_speaking() {
    let request = dhcp(BootOp::Request, MessageType::Discover);
    assert_eq!(observed(&dhcp_frame(SERVER, request)), None);
}

#[test]
fn server_ack_names_the_client_address() {
    let mut ack = dhcp(BootOp::Reply, MessageType::Ack);
    ack.yiaddr = v4(20);
    let (mac, kind) = observed(&dhcp_frame(SERVER, ack)).unwrap();
    assert_eq!(mac, Mac(DEVICE.0));
    assert_eq!(kind, ObservationKind::DhcpAck { ip: v4(20) });
    assert_eq!(kind.evidence(), None, "an ACK is the server speaking");
    // An ACK to an INFORM (yiaddr 0) and an OFFER assign nothing.
    assert_eq!(
        observed(&dhcp_frame(SERVER, dhcp(BootOp::Reply, MessageType::Ack))),
        None
    );
    let mut offer = dhcp(BootOp::Reply, MessageType::Offer);
    offer.yiaddr = v4(20);
    assert_eq!(observed(&dhcp_frame(SERVER, offer)), None);
}

fn ndp_frame(src_mac: MacAddr, src: Ipv6Addr, ndp: NdpRepr) -> Frame<'static> {
    Frame {
        ethernet: eth(src_mac, EtherType::IPV6),
        message: Message::Ndp {
            ip: Ipv6Repr {
                src,
                dst: "ff02::1".parse().unwrap(),
                next_header: 58,
                hop_limit: 255,
                payload_len: 32,
            },
            ndp,
        },
    }
}

#[test]
fn ndp_vouches_for_targets_sources_and_dad_targets() {
    let lla: Ipv6Addr = "fe80::7".parse().unwrap();
    let global: Ipv6Addr = "2001:db8::7".parse().unwrap();
    let device = Mac(DEVICE.0);
    let advert = NdpRepr::NeighborAdvert {
        flags: NeighborFlags::default(),
        target: global,
        target_mac: Some(DEVICE),
    };
    assert_eq!(
        observed(&ndp_frame(SERVER, lla, advert)),
        Some((
            device,
            ObservationKind::Ndp {
                ip: Some(global),
                kind: NdpKind::NeighborAdvert
            }
        ))
    );
    // DAD: from ::, no source option; the tentative target is the device's (Ethernet
    // source) address to be.
    let dad = NdpRepr::NeighborSolicit {
        target: global,
        source_mac: None,
    };
    assert_eq!(
        observed(&ndp_frame(DEVICE, Ipv6Addr::UNSPECIFIED, dad)),
        Some((
            device,
            ObservationKind::Ndp {
                ip: Some(global),
                kind: NdpKind::DadProbe
            }
        ))
    );
    // An ordinary solicitation vouches for its source, not for the target it resolves.
    let ns = NdpRepr::NeighborSolicit {
        target: "2001:db8::1".parse().unwrap(),
        source_mac: Some(DEVICE),
    };
    assert_eq!(
        observed(&ndp_frame(DEVICE, global, ns)),
        Some((
            device,
            ObservationKind::Ndp {
                ip: Some(global),
                kind: NdpKind::NeighborSolicit
            }
        ))
    );
    // A DAD probe for a multicast target claims nothing, but the device is alive.
    let odd = NdpRepr::NeighborSolicit {
        target: "ff02::1".parse().unwrap(),
        source_mac: None,
    };
    assert_eq!(
        observed(&ndp_frame(DEVICE, Ipv6Addr::UNSPECIFIED, odd)),
        Some((
            device,
            ObservationKind::Ndp {
                ip: None,
                kind: NdpKind::DadProbe
            }
        ))
    );
    let rs = NdpRepr::RouterSolicit {
        source_mac: Some(DEVICE),
    };
    assert_eq!(
        observed(&ndp_frame(DEVICE, lla, rs)),
        Some((
            device,
            ObservationKind::Ndp {
                ip: Some(lla),
                kind: NdpKind::RouterSolicit
            }
        ))
    );
    let ra = NdpRepr::RouterAdvert {
        cur_hop_limit: 64,
        flags: 0,
        router_lifetime: 1800,
        reachable_time: 0,
        retrans_timer: 0,
        source_mac: Some(SERVER),
        mtu: None,
        prefixes: Vec::new(),
    };
    assert_eq!(observed(&ndp_frame(SERVER, lla, ra)), None);
}

fn udp_frame(port: u16, payload: &'static [u8]) -> Frame<'static> {
    let ip = IpRepr::V4(Ipv4Repr {
        src: v4(7),
        dst: Ipv4Addr::new(239, 255, 255, 250),
        protocol: 17,
        ttl: 1,
        payload_len: payload.len() + 8,
    });
    let udp = UdpRepr {
        src_port: port,
        dst_port: port,
    };
    let message = if port == 5353 {
        Message::Mdns { ip, udp, payload }
    } else {
        Message::Ssdp { ip, udp, payload }
    };
    Frame {
        ethernet: eth(DEVICE, EtherType::IPV4),
        message,
    }
}

#[test]
fn mdns_and_ssdp_are_liveness_from_the_source() {
    let device = Mac(DEVICE.0);
    let answer = udp_frame(5353, &[0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(
        observed(&answer),
        Some((device, ObservationKind::Mdns { response: true }))
    );
    let query = udp_frame(5353, &[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        observed(&query),
        Some((device, ObservationKind::Mdns { response: false }))
    );
    for (payload, kind) in [
        (&b"NOTIFY * HTTP/1.1\r\n"[..], SsdpKind::Notify),
        (&b"M-SEARCH * HTTP/1.1\r\n"[..], SsdpKind::Search),
        (&b"HTTP/1.1 200 OK\r\n"[..], SsdpKind::Response),
    ] {
        assert_eq!(
            observed(&udp_frame(1900, payload)),
            Some((device, ObservationKind::Ssdp { kind }))
        );
    }
    assert_eq!(observed(&udp_frame(1900, b"GARBAGE")), None);
    assert_eq!(
        ObservationKind::Ssdp {
            kind: SsdpKind::Response
        }
        .evidence(),
        Some(Evidence::SsdpReply)
    );
}

#[test]
fn group_and_zero_addresses_are_no_device() {
    let mut frame = arp(Operation::Reply, v4(7), v4(1));
    if let Message::Arp(arp) = &mut frame.message {
        arp.sender_mac = MacAddr::ZERO;
    }
    assert_eq!(observed(&frame), None);
    let mut frame = udp_frame(5353, &[0, 0, 0x84, 0]);
    frame.ethernet.src = MacAddr([0x01, 0, 0x5e, 0, 0, 0xfb]);
    assert_eq!(observed(&frame), None);
}

#[test]
fn probe_replies_and_descriptions_are_evidence() {
    let v6 = ObservationKind::ProbeReply {
        ip: IpAddr::V6("2001:db8::7".parse().unwrap()),
        rtt_us: 300,
    };
    assert_eq!(v6.evidence(), Some(Evidence::NdpAdvert));
    assert_eq!(
        ObservationKind::Dial { apps: Vec::new() }.evidence(),
        Some(Evidence::HttpDescription)
    );
    assert_eq!(
        ObservationKind::MdnsHost {
            hostname: Text::from("tv")
        }
        .evidence(),
        None
    );
}

#[test]
fn descriptions_name_what_was_seen() {
    let kind = ObservationKind::DhcpClient(DhcpClient {
        message: DhcpMessage::Request,
        requested_ip: Some(v4(9)),
        hostname: Some(Text::from("tv")),
        ..DhcpClient::default()
    });
    assert_eq!(
        kind.describe(),
        "DHCP REQUEST requested 198.18.0.9 option 12 = tv"
    );
    let kind = ObservationKind::Arp {
        ip: Some(v4(7)),
        kind: ArpKind::Announcement,
    };
    assert_eq!(kind.describe(), "ARP announcement from 198.18.0.7");
}
