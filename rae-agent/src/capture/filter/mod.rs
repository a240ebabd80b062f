//! The kernel filter: a classic BPF program that passes only the frames the agent parses.
//!
//! The kernel runs it on every frame the socket would otherwise queue, so bulk traffic
//! (video, downloads) is dropped in softirq context and never wakes the capture thread.
//! It passes:
//! - ARP;
//! - IPv4 UDP between ports 67/68 on both sides (DHCP, relays included), and IPv4 UDP
//!   from or to 5353 (mDNS) or 1900 (SSDP: NOTIFY and M-SEARCH to 1900, replies from it);
//! - IPv6 with next header 58 and ICMPv6 type 133..=136 (RS, RA, NS, NA);
//! - IPv6 UDP from or to 5353 or 1900.
//!
//! Layout: the program reads the frame as AF_PACKET hands it to socket filters, which is
//! always untagged: the receive path moves one 802.1Q/802.1ad tag into the skb before any
//! packet socket sees the frame, and the capture puts it back from `PACKET_AUXDATA`. So
//! frames of every VLAN pass, and the tag (if any) comes from the auxiliary data.
//!
//! Limitations (all shared with the parsers in [`crate::wire`], which would reject these
//! frames anyway):
//! - IPv4 fragments other than the first are dropped (they carry no UDP header); the
//!   header length (IHL) is honoured, so IPv4 options are fine.
//! - IPv6 extension headers are not walked: ND never uses them (RFC 4861 forbids
//!   fragmenting ND), but an mDNS/SSDP datagram behind one is not seen.
//! - A second, inner VLAN tag (QinQ), and a tag still in line in an outgoing frame (a
//!   device without VLAN offload), hide the ethertype and the frame is dropped.
//!
//! [`TCPDUMP_EXPRESSION`] is the same filter in pcap syntax; a unit test compiles it
//! with `tcpdump -dd` and checks that both programs decide alike on thousands of frames.

mod asm;
#[cfg(test)]
mod interpreter;
#[cfg(test)]
mod tests;

use asm::{Asm, Target::Label, Target::Next};
pub use asm::{AsmError, Insn};

/// Bytes of an accepted frame the kernel keeps. An Ethernet frame at MTU 1500 is 1514
/// bytes; the rest is headroom for a larger MTU. DHCP (at most 576 by default), ND and
/// SSDP fit easily; an mDNS response larger than this would be fragmented on a 1500-MTU
/// LAN, and fragments are not parsed. Longer frames are counted as truncated and dropped.
pub const SNAP_LEN: u32 = 2048;

/// The filter in pcap syntax, for `tcpdump -dd` and for people. IPv6 is written with raw
/// offsets because pcap's `icmp6`/`udp` also look behind a fragment header, which the
/// program (and the parsers) do not.
pub const TCPDUMP_EXPRESSION: &str = "arp \
    or (ip and udp and (src port 67 or src port 68) and (dst port 67 or dst port 68)) \
    or (ip and udp and (port 5353 or port 1900)) \
    or (ip6 and ip6[6] = 58 and ip6[40] >= 133 and ip6[40] <= 136) \
    or (ip6 and ip6[6] = 17 and (ip6[40:2] = 5353 or ip6[42:2] = 5353 \
        or ip6[40:2] = 1900 or ip6[42:2] = 1900))";

const ETHERTYPE: u32 = 12;
const ETH_HEADER: u32 = 14;
const ETH_P_ARP: u32 = 0x0806;
const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86dd;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_ICMPV6: u32 = 58;

// IPv4, from the start of the frame (the UDP ports are relative to X = the header length).
const V4_FLAGS_FRAGMENT: u32 = ETH_HEADER + 6;
const V4_PROTOCOL: u32 = ETH_HEADER + 9;
const V4_FRAGMENT_OFFSET_MASK: u32 = 0x1fff;
const V4_UDP_SRC: u32 = ETH_HEADER;
const V4_UDP_DST: u32 = ETH_HEADER + 2;

// IPv6: a fixed 40-byte header, then (with no extension headers) ICMPv6 or UDP.
const V6_NEXT_HEADER: u32 = ETH_HEADER + 6;
const V6_PAYLOAD: u32 = ETH_HEADER + 40;
const ICMPV6_RS: u32 = 133;
const ICMPV6_NA: u32 = 136;

const DHCP_SERVER: u32 = 67;
const DHCP_CLIENT: u32 = 68;
const MDNS: u32 = 5353;
const SSDP: u32 = 1900;

/// The program, ready for `SO_ATTACH_FILTER`. Fails only if the program text below has a
/// broken jump, which the unit tests would catch.
pub fn program() -> Result<Vec<Insn>, AsmError> {
    let mut a = Asm::new();
    a.ld_h(ETHERTYPE);
    a.jeq(ETH_P_ARP, Label("accept"), Next);
    a.jeq(ETH_P_IP, Label("ipv4"), Next);
    a.jeq(ETH_P_IPV6, Label("ipv6"), Label("reject"));

    a.label("ipv4");
    a.ld_b(V4_PROTOCOL);
    a.jeq(IPPROTO_UDP, Next, Label("reject"));
    a.ld_h(V4_FLAGS_FRAGMENT);
    // A non-first fragment has no UDP header where the ports would be read.
    a.jset(V4_FRAGMENT_OFFSET_MASK, Label("reject"), Next);
    // X = 4 * IHL, so the ports are found behind IPv4 options too.
    a.ldx_ipv4_header_len(ETH_HEADER);
    a.ld_h_x(V4_UDP_SRC);
    a.jeq(MDNS, Label("accept"), Next);
    a.jeq(SSDP, Label("accept"), Next);
    a.jeq(DHCP_SERVER, Label("v4_dhcp"), Next);
    a.jeq(DHCP_CLIENT, Label("v4_dhcp"), Label("v4_dst"));

    // From a DHCP port: DHCP if it goes to one too; otherwise the destination may still
    // be mDNS or SSDP.
    a.label("v4_dhcp");
    a.ld_h_x(V4_UDP_DST);
    a.jeq(DHCP_SERVER, Label("accept"), Next);
    a.jeq(DHCP_CLIENT, Label("accept"), Label("v4_dst_loaded"));

    a.label("v4_dst");
    a.ld_h_x(V4_UDP_DST);
    a.label("v4_dst_loaded");
    a.jeq(MDNS, Label("accept"), Next);
    a.jeq(SSDP, Label("accept"), Label("reject"));

    a.label("ipv6");
    a.ld_b(V6_NEXT_HEADER);
    a.jeq(IPPROTO_ICMPV6, Next, Label("v6_not_icmp"));
    a.ld_b(V6_PAYLOAD);
    a.jge(ICMPV6_RS, Next, Label("reject"));
    a.jgt(ICMPV6_NA, Label("reject"), Label("accept"));

    a.label("v6_not_icmp");
    a.jeq(IPPROTO_UDP, Next, Label("reject"));
    a.ld_h(V6_PAYLOAD);
    a.jeq(MDNS, Label("accept"), Next);
    a.jeq(SSDP, Label("accept"), Next);
    a.ld_h(V6_PAYLOAD + 2);
    a.jeq(MDNS, Label("accept"), Next);
    a.jeq(SSDP, Label("accept"), Label("reject"));

    a.label("accept");
    a.ret(SNAP_LEN);
    a.label("reject");
    a.ret(0);
    a.assemble()
}
