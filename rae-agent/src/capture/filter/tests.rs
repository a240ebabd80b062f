//! The filter against hand-built frames, a plain-Rust statement of what it should pass,
//! and the program tcpdump compiles from [`TCPDUMP_EXPRESSION`].

use std::process::Command;

use super::interpreter::{parse_tcpdump_dd, run, Verdict};
use super::*;

const PORTS: [u16; 9] = [67, 68, 5353, 1900, 53, 1901, 5354, 0, 0x4300];

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]);
    frame.extend(ethertype.to_be_bytes());
    frame.extend(payload);
    frame
}

/// An IPv4 header of `ihl` words (options zero-filled) followed by `payload`.
fn ipv4(protocol: u8, flags_fragment: u16, ihl: u8, payload: &[u8]) -> Vec<u8> {
    let header_len = usize::from(ihl) * 4;
    let mut packet = vec![0u8; header_len.max(20)];
    packet[0] = 0x40 | (ihl & 0x0f);
    let total = (packet.len() + payload.len()) as u16;
    packet[2..4].copy_from_slice(&total.to_be_bytes());
    packet[6..8].copy_from_slice(&flags_fragment.to_be_bytes());
    packet[8] = 64;
    packet[9] = protocol;
    packet[12..16].copy_from_slice(&[198, 18, 7, 100]);
    packet[16..20].copy_from_slice(&[255, 255, 255, 255]);
    packet.truncate(header_len.max(20));
    packet.extend(payload);
    packet
}

fn ipv6(next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend((payload.len() as u16).to_be_bytes());
    packet.extend([next_header, 255]);
    packet.extend([0xfe, 0x80].iter().chain([0u8; 13].iter()).chain(&[1]));
    packet.extend([0xff, 0x02].iter().chain([0u8; 13].iter()).chain(&[2]));
    packet.extend(payload);
    packet
}

fn udp(src: u16, dst: u16) -> Vec<u8> {
    let mut datagram = Vec::new();
    datagram.extend(src.to_be_bytes());
    datagram.extend(dst.to_be_bytes());
    datagram.extend(16u16.to_be_bytes());
    datagram.extend([0, 0]);
    datagram.extend(b"payload!");
    datagram
}

fn icmpv6(kind: u8) -> Vec<u8> {
    let mut message = vec![kind, 0, 0, 0];
    message.extend([0u8; 20]);
    message
}

fn v4_udp(src: u16, dst: u16) -> Vec<u8> {
    eth(0x0800, &ipv4(17, 0, 5, &udp(src, dst)))
}

fn v6_udp(src: u16, dst: u16) -> Vec<u8> {
    eth(0x86dd, &ipv6(17, &udp(src, dst)))
}

fn v6_icmp(kind: u8) -> Vec<u8> {
    eth(0x86dd, &ipv6(58, &icmpv6(kind)))
}

fn arp() -> Vec<u8> {
    let mut body = vec![0, 1, 8, 0, 6, 4, 0, 1];
    body.extend([0x02, 0, 0x5e, 0x10, 0, 1, 198, 18, 7, 100]);
    body.extend([0, 0, 0, 0, 0, 0, 198, 18, 7, 1]);
    eth(0x0806, &body)
}

/// What the filter is meant to pass, written as plain code. Like tcpdump, it reads the
/// ports wherever the IPv4 header length says, even a bogus one below 5 (the parsers
/// reject those).
fn intended(frame: &[u8]) -> bool {
    let byte = |at: usize| frame.get(at).copied();
    let word = |at: usize| Some(u16::from_be_bytes([byte(at)?, byte(at + 1)?]));
    let either = |port: u16| port == 5353 || port == 1900;
    let dhcp = |port: u16| port == 67 || port == 68;
    let v4 = || -> Option<bool> {
        if byte(23)? != 17 || word(20)? & 0x1fff != 0 {
            return Some(false);
        }
        let x = usize::from(byte(14)? & 0x0f) * 4;
        let src = word(14 + x)?;
        if either(src) {
            return Some(true);
        }
        let dst = word(16 + x)?;
        Some((dhcp(src) && dhcp(dst)) || either(dst))
    };
    let v6 = || -> Option<bool> {
        match byte(20)? {
            58 => Some((133..=136).contains(&byte(54)?)),
            17 => Some(either(word(54)?) || either(word(56)?)),
            _ => Some(false),
        }
    };
    match word(12) {
        Some(0x0806) => true,
        Some(0x0800) => v4().unwrap_or(false),
        Some(0x86dd) => v6().unwrap_or(false),
        _ => false,
    }
}

/// Frames around every decision the filter makes, each also cut short at the lengths
/// where a field it reads begins or ends.
fn corpus() -> Vec<Vec<u8>> {
    let mut frames = vec![arp(), eth(0x88cc, &[0; 46]), eth(0x8100, &arp()[12..])];
    for ethertype in [0x0800u16, 0x86dd, 0x0806, 0x8100, 0x88a8] {
        frames.push(eth(ethertype, &[]));
    }
    for protocol in [17u8, 6, 1] {
        for fragment in [0u16, 0x4000, 0x2000, 0x0001, 0x1fff, 0x3fff] {
            for ihl in [5u8, 6, 15, 0, 4] {
                for src in PORTS {
                    for dst in PORTS {
                        let packet = ipv4(protocol, fragment, ihl, &udp(src, dst));
                        frames.push(eth(0x0800, &packet));
                    }
                }
            }
        }
    }
    for next_header in [17u8, 58, 6, 0, 44, 43] {
        for src in PORTS {
            for dst in PORTS {
                frames.push(eth(0x86dd, &ipv6(next_header, &udp(src, dst))));
            }
        }
        for kind in [1u8, 128, 129, 130, 132, 133, 134, 135, 136, 137, 143, 255] {
            frames.push(eth(0x86dd, &ipv6(next_header, &icmpv6(kind))));
        }
    }
    let cuts = [
        0usize, 1, 12, 13, 14, 15, 20, 21, 22, 23, 24, 34, 35, 36, 37, 38, 54, 55, 56, 57, 58,
    ];
    let mut cut_frames = Vec::new();
    for frame in &frames {
        for cut in cuts.iter().copied().filter(|c| *c < frame.len()) {
            cut_frames.push(frame[..cut].to_vec());
        }
    }
    frames.extend(cut_frames);
    frames
}

fn accepts(program: &[Insn], frame: &[u8]) -> bool {
    match run(program, frame) {
        Verdict::Invalid(why) => panic!("program is invalid ({why}): {program:?}"),
        verdict => verdict.accepts(),
    }
}

#[test]
fn the_program_assembles_and_keeps_snap_len_bytes_of_what_it_passes() {
    let program = program().unwrap();
    assert!(program.len() < 64, "{} instructions", program.len());
    assert_eq!(run(&program, &arp()), Verdict::Keep(SNAP_LEN));
    assert_eq!(run(&program, &v4_udp(80, 443)), Verdict::Keep(0));
}

#[test]
fn passes_the_frames_the_agent_parses() {
    let program = program().unwrap();
    let wanted = [
        ("ARP", arp()),
        ("DHCP DISCOVER 68->67", v4_udp(68, 67)),
        ("DHCP OFFER 67->68", v4_udp(67, 68)),
        ("DHCP relay 67->67", v4_udp(67, 67)),
        (
            "DHCP behind IPv4 options",
            eth(0x0800, &ipv4(17, 0, 6, &udp(68, 67))),
        ),
        (
            "DHCP with DF set",
            eth(0x0800, &ipv4(17, 0x4000, 5, &udp(68, 67))),
        ),
        (
            "first fragment of mDNS",
            eth(0x0800, &ipv4(17, 0x2000, 5, &udp(5353, 5353))),
        ),
        ("mDNS v4", v4_udp(5353, 5353)),
        ("mDNS v4 legacy unicast query", v4_udp(40000, 5353)),
        ("mDNS v4 legacy unicast answer", v4_udp(5353, 40000)),
        ("SSDP NOTIFY / M-SEARCH v4", v4_udp(40000, 1900)),
        ("SSDP reply v4", v4_udp(1900, 40000)),
        ("mDNS v6", v6_udp(5353, 5353)),
        ("SSDP reply v6", v6_udp(1900, 40001)),
        ("SSDP M-SEARCH v6", v6_udp(40001, 1900)),
        ("RS", v6_icmp(133)),
        ("RA", v6_icmp(134)),
        ("NS", v6_icmp(135)),
        ("NA", v6_icmp(136)),
    ];
    for (what, frame) in wanted {
        assert!(accepts(&program, &frame), "{what} was dropped");
        assert!(intended(&frame), "the reference drops {what}");
    }
}

#[test]
fn drops_everything_else() {
    let program = program().unwrap();
    let mut tcp_to_ssdp = v4_udp(40000, 1900);
    tcp_to_ssdp[23] = 6;
    let unwanted = [
        ("TCP to port 1900", tcp_to_ssdp),
        ("DNS", v4_udp(40000, 53)),
        ("bulk UDP from the DHCP client port", v4_udp(68, 9999)),
        ("bulk UDP to the DHCP server port", v4_udp(9999, 67)),
        (
            "non-first fragment",
            eth(0x0800, &ipv4(17, 0x0001, 5, &udp(68, 67))),
        ),
        (
            "last fragment",
            eth(0x0800, &ipv4(17, 0x00b9, 5, &udp(5353, 5353))),
        ),
        ("ICMPv4", eth(0x0800, &ipv4(1, 0, 5, &icmpv6(8)))),
        ("echo request v6", v6_icmp(128)),
        ("MLD report", v6_icmp(143)),
        ("redirect", v6_icmp(137)),
        (
            "NS behind a hop-by-hop header",
            eth(0x86dd, &ipv6(0, &icmpv6(135))),
        ),
        ("DHCP ports over IPv6", v6_udp(68, 67)),
        ("LLDP", eth(0x88cc, &[0; 46])),
        ("ARP tagged in line", eth(0x8100, &arp()[12..])),
        ("runt", vec![0xff; 13]),
        (
            "IPv4 cut before the protocol",
            v4_udp(68, 67)[..23].to_vec(),
        ),
        (
            "DHCP cut before the destination port",
            v4_udp(68, 67)[..36].to_vec(),
        ),
        ("ICMPv6 cut before the type", v6_icmp(135)[..54].to_vec()),
    ];
    for (what, frame) in unwanted {
        assert!(!accepts(&program, &frame), "{what} was passed");
        assert!(!intended(&frame), "the reference passes {what}");
    }
}

#[test]
fn the_program_decides_every_corpus_frame_as_intended() {
    let program = program().unwrap();
    let frames = corpus();
    let passed = frames.iter().filter(|f| intended(f)).count();
    assert!(
        passed > 500 && passed < frames.len() / 2,
        "corpus too one-sided: {passed} of {} pass",
        frames.len()
    );
    for frame in &frames {
        assert_eq!(
            accepts(&program, frame),
            intended(frame),
            "frame {frame:02x?}"
        );
    }
}

#[test]
fn the_program_decides_like_the_one_tcpdump_compiles_from_the_same_expression() {
    let output = Command::new("tcpdump")
        .args(["-dd", "-y", "EN10MB", TCPDUMP_EXPRESSION])
        .output()
        .unwrap_or_else(|e| panic!("running `tcpdump -dd` (is tcpdump installed?): {e}"));
    assert!(
        output.status.success(),
        "tcpdump -dd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs = parse_tcpdump_dd(&String::from_utf8_lossy(&output.stdout)).unwrap();
    let ours = program().unwrap();
    let frames = corpus();
    let mut differ = Vec::new();
    for frame in &frames {
        if accepts(&theirs, frame) != accepts(&ours, frame) {
            differ.push(frame);
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} frames decided differently, e.g. {:02x?}\ntcpdump's program: {theirs:?}",
        differ.len(),
        frames.len(),
        differ.first()
    );
}

#[test]
fn the_interpreter_reads_tcpdump_output_and_runs_it() {
    let text = "{ 0x28, 0, 0, 0x0000000c },\n{ 0x15, 0, 1, 0x00000806 },\n\
                { 0x6, 0, 0, 0x00040000 },\n{ 0x6, 0, 0, 0x00000000 },\n";
    let arp_only = parse_tcpdump_dd(text).unwrap();
    assert_eq!(run(&arp_only, &arp()), Verdict::Keep(0x40000));
    assert_eq!(run(&arp_only, &v4_udp(68, 67)), Verdict::Keep(0));
    assert_eq!(run(&arp_only, &[0u8; 5]), Verdict::Keep(0));
    assert!(parse_tcpdump_dd("{ 0x28, 0, 0 },").is_err());
    assert!(parse_tcpdump_dd("(000) ldh [12]").is_err());
}
