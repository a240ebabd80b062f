//! A synthetic LAN for replay tests and the replay benchmark: `devices` DUTs behind an RAE,
//! one frame per device per second of capture time after each has joined.
//!
//! Joining is what real clients do: DHCP DISCOVER, the RAE's OFFER, REQUEST, the RAE's ACK,
//! an RFC 5227 probe and announcement, IPv6 DAD and an unsolicited advertisement, an mDNS
//! announcement and an SSDP NOTIFY. After that each second brings one of: an ARP request for
//! the gateway or reply to the RAE, a neighbour solicitation or advertisement, mDNS, SSDP, the
//! RAE's own ARP request (a frame about the RAE, not a device), or an ICMP echo (which the
//! parsers drop: the kernel filter would not have passed it, but mixed captures have them).
//! Every 300 s a device renews its lease (REQUEST + ACK). Devices whose index is 5 mod 33
//! leave after `leave_after` rounds. All addresses are 198.18.0.0/15 and 2001:db8::/32;
//! checksums are correct. The same arguments give the same bytes.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

use rae_agent::wire::checksum::Checksum;

/// 2025-01-01T00:00:00Z.
pub const START_NS: u64 = 1_735_689_600 * 1_000_000_000;
pub const RAE_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
pub const RAE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const BROADCAST: [u8; 6] = [0xff; 6];

pub fn device_mac(i: u32) -> [u8; 6] {
    let [_, a, b, c] = i.to_be_bytes();
    [0x02, 0x00, 0x5f, a, b, c]
}

pub fn device_v4(i: u32) -> Ipv4Addr {
    let host = 256 + i;
    Ipv4Addr::new(198, 18, (host >> 8) as u8, (host & 0xff) as u8)
}

pub fn device_v6(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, (i >> 16) as u16, i as u16)
}

pub fn device_link_local(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, (i >> 16) as u16, i as u16)
}

pub fn hostname(i: u32) -> String {
    format!("dut-{i:04}")
}

/// Whether device `i` goes quiet after `leave_after` rounds.
pub fn leaves(i: u32) -> bool {
    i % 33 == 5
}

/// SplitMix64: small, seeded, good enough to pick frame kinds.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut packet = vec![0x45, 0];
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, protocol, 0, 0]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    let sum = Checksum::new().add(&packet).finish();
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

pub fn udp4_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut datagram = Vec::with_capacity(len as usize);
    datagram.extend_from_slice(&ports.0.to_be_bytes());
    datagram.extend_from_slice(&ports.1.to_be_bytes());
    datagram.extend_from_slice(&len.to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    let mut sum = Checksum::new();
    sum.ipv4_pseudo_header(src, dst, 17, len).add(&datagram);
    datagram[6..8].copy_from_slice(&sum.finish().to_be_bytes());
    ethernet(dst_mac, src_mac, 0x0800, &ipv4(src, dst, 17, &datagram))
}

/// A DHCP message about device `i`: `op` 1 from the client, 2 from the server.
pub fn dhcp(i: u32, op: u8, msg_type: u8, yiaddr: Ipv4Addr, xid: u32) -> Vec<u8> {
    let mut msg = vec![op, 1, 6, 0];
    msg.extend_from_slice(&xid.to_be_bytes());
    msg.extend_from_slice(&[0, 0, 0x80, 0]);
    msg.extend_from_slice(&[0; 4]);
    msg.extend_from_slice(&yiaddr.octets());
    msg.extend_from_slice(&[0; 8]);
    msg.extend_from_slice(&device_mac(i));
    msg.extend_from_slice(&[0; 10 + 64 + 128]);
    msg.extend_from_slice(&[0x63, 0x82, 0x53, 0x63, 53, 1, msg_type]);
    if op == 1 {
        let name = hostname(i);
        msg.extend_from_slice(&[12, name.len() as u8]);
        msg.extend_from_slice(name.as_bytes());
        let vendor = b"SmartTV/7.1 (OEM)";
        msg.extend_from_slice(&[60, vendor.len() as u8]);
        msg.extend_from_slice(vendor);
        msg.extend_from_slice(&[61, 7, 1]);
        msg.extend_from_slice(&device_mac(i));
        msg.extend_from_slice(&[55, 6, 1, 3, 6, 12, 15, 28]);
        if msg_type == 3 {
            msg.extend_from_slice(&[50, 4]);
            msg.extend_from_slice(&device_v4(i).octets());
        }
    } else {
        msg.extend_from_slice(&[54, 4]);
        msg.extend_from_slice(&RAE_V4.octets());
        msg.extend_from_slice(&[51, 4, 0, 0, 0x0e, 0x10]);
    }
    msg.push(255);
    if op == 1 {
        udp4_frame(
            BROADCAST,
            device_mac(i),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            (68, 67),
            &msg,
        )
    } else {
        udp4_frame(device_mac(i), RAE_MAC, RAE_V4, yiaddr, (67, 68), &msg)
    }
}

pub fn arp(
    op: u16,
    sender: [u8; 6],
    sender_ip: Ipv4Addr,
    target: [u8; 6],
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut packet = vec![0, 1, 8, 0, 6, 4];
    packet.extend_from_slice(&op.to_be_bytes());
    packet.extend_from_slice(&sender);
    packet.extend_from_slice(&sender_ip.octets());
    packet.extend_from_slice(&target);
    packet.extend_from_slice(&target_ip.octets());
    let dst = if op == 1 { BROADCAST } else { target };
    ethernet(dst, sender, 0x0806, &packet)
}

fn icmpv6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    body: &[u8],
) -> Vec<u8> {
    let mut icmp = body.to_vec();
    let mut sum = Checksum::new();
    sum.ipv6_pseudo_header(src, dst, 58, icmp.len() as u32)
        .add(&icmp);
    icmp[2..4].copy_from_slice(&sum.finish().to_be_bytes());
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[58, 255]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(&icmp);
    ethernet(dst_mac, src_mac, 0x86dd, &packet)
}

/// A neighbour solicitation from device `i` (from `::` for DAD) for `target`.
pub fn ns(i: u32, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let mut body = vec![135, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&t);
    if !src.is_unspecified() {
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&device_mac(i));
    }
    let g = group.octets();
    let mac = [0x33, 0x33, g[12], g[13], g[14], g[15]];
    icmpv6_frame(device_mac(i), mac, src, group, &body)
}

/// An unsolicited neighbour advertisement of `target` by device `i`, to all nodes.
pub fn na(i: u32, target: Ipv6Addr) -> Vec<u8> {
    let mut body = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    body.extend_from_slice(&target.octets());
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&device_mac(i));
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    icmpv6_frame(
        device_mac(i),
        [0x33, 0x33, 0, 0, 0, 1],
        device_link_local(i),
        all_nodes,
        &body,
    )
}

pub fn mdns(i: u32, response: bool) -> Vec<u8> {
    let mut dns = vec![
        0,
        0,
        if response { 0x84 } else { 0 },
        0,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
    ];
    let name = hostname(i);
    dns.push(name.len() as u8);
    dns.extend_from_slice(name.as_bytes());
    dns.extend_from_slice(&[
        5, b'l', b'o', b'c', b'a', b'l', 0, 0, 1, 0x80, 1, 0, 0, 0x11, 0x94, 0, 4,
    ]);
    dns.extend_from_slice(&device_v4(i).octets());
    let group = Ipv4Addr::new(224, 0, 0, 251);
    udp4_frame(
        [0x01, 0, 0x5e, 0, 0, 0xfb],
        device_mac(i),
        device_v4(i),
        group,
        (5353, 5353),
        &dns,
    )
}

pub fn ssdp_notify(i: u32) -> Vec<u8> {
    let text = format!(
        "NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nCACHE-CONTROL: max-age=1800\r\n\
         LOCATION: http://{}:49152/description.xml\r\nNT: upnp:rootdevice\r\nNTS: ssdp:alive\r\n\
         USN: uuid:00000000-0000-4000-8000-{:012x}::upnp:rootdevice\r\n\r\n",
        device_v4(i),
        i
    );
    let group = Ipv4Addr::new(239, 255, 255, 250);
    udp4_frame(
        [0x01, 0, 0x5e, 0x7f, 0xff, 0xfa],
        device_mac(i),
        device_v4(i),
        group,
        (1900, 1900),
        text.as_bytes(),
    )
}

pub fn icmp_echo(i: u32) -> Vec<u8> {
    let mut echo = vec![8, 0, 0, 0, 0, 1, 0, 1];
    echo.extend_from_slice(&[0xab; 56]);
    let sum = Checksum::new().add(&echo).finish();
    echo[2..4].copy_from_slice(&sum.to_be_bytes());
    ethernet(
        RAE_MAC,
        device_mac(i),
        0x0800,
        &ipv4(device_v4(i), RAE_V4, 1, &echo),
    )
}

/// The frames device `i` sends to join the LAN.
pub fn join(i: u32) -> Vec<Vec<u8>> {
    let xid = 0x1000_0000 | i;
    vec![
        dhcp(i, 1, 1, Ipv4Addr::UNSPECIFIED, xid),
        dhcp(i, 2, 2, device_v4(i), xid),
        dhcp(i, 1, 3, Ipv4Addr::UNSPECIFIED, xid),
        dhcp(i, 2, 5, device_v4(i), xid),
        arp(
            1,
            device_mac(i),
            Ipv4Addr::UNSPECIFIED,
            [0; 6],
            device_v4(i),
        ),
        arp(1, device_mac(i), device_v4(i), [0; 6], device_v4(i)),
        ns(i, Ipv6Addr::UNSPECIFIED, device_v6(i)),
        na(i, device_v6(i)),
        mdns(i, true),
        ssdp_notify(i),
    ]
}

/// One frame of device `i`'s steady traffic, picked by `rng`.
pub fn chatter(i: u32, rng: &mut Rng) -> Vec<u8> {
    match rng.below(100) {
        0..=29 => arp(1, device_mac(i), device_v4(i), [0; 6], RAE_V4),
        30..=39 => arp(2, device_mac(i), device_v4(i), RAE_MAC, RAE_V4),
        40..=49 => ns(
            i,
            device_link_local(i),
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1),
        ),
        50..=59 => na(i, device_v6(i)),
        60..=74 => mdns(i, true),
        75..=79 => mdns(i, false),
        80..=89 => ssdp_notify(i),
        90..=94 => arp(1, RAE_MAC, RAE_V4, [0; 6], device_v4(i)),
        _ => icmp_echo(i),
    }
}

/// Calls `sink(at_ns, frame)` for every frame of the LAN, in time order: `rounds` seconds,
/// device `i` speaking in its own slot of each second.
pub fn generate(
    devices: u32,
    rounds: u32,
    leave_after: u32,
    seed: u64,
    mut sink: impl FnMut(u64, &[u8]),
) {
    let mut rng = Rng(seed);
    let slot_ns = 1_000_000_000 / u64::from(devices.max(1));
    for round in 0..rounds {
        for i in 0..devices {
            let at = START_NS + u64::from(round) * 1_000_000_000 + u64::from(i) * slot_ns;
            if round == 0 {
                let frames = join(i);
                let step = slot_ns / (frames.len() as u64 + 1);
                for (k, frame) in frames.iter().enumerate() {
                    sink(at + k as u64 * step, frame);
                }
                continue;
            }
            if leaves(i) && round >= leave_after {
                continue;
            }
            if round % 300 == 0 {
                let xid = 0x2000_0000 | i;
                sink(at, &dhcp(i, 1, 3, Ipv4Addr::UNSPECIFIED, xid));
                sink(at + slot_ns / 2, &dhcp(i, 2, 5, device_v4(i), xid));
                continue;
            }
            sink(at, &chatter(i, &mut rng));
        }
    }
}
