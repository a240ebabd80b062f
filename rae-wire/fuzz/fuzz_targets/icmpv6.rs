//! Neighbour discovery messages. The input is a 16-byte source address, a 16-byte destination
//! address, then the ICMPv6 message. The message is parsed as given and again with its
//! checksum fixed, so the fuzzer reaches the option parser instead of stopping at the
//! checksum; whatever parses must emit and parse back to itself.
#![no_main]

use std::net::Ipv6Addr;

use libfuzzer_sys::fuzz_target;
use rae_wire::checksum::Checksum;
use rae_wire::{icmpv6, Ipv6Repr, NdpRepr};

fn parse(ip: &Ipv6Repr, message: &[u8]) -> Option<NdpRepr> {
    let packet = icmpv6::Packet::new_checked(message).ok()?;
    let _ = packet.options().count();
    let _ = (
        packet.target(),
        packet.neighbor_flags(),
        packet.router_lifetime(),
    );
    NdpRepr::parse(ip, &packet).ok()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 32 {
        return;
    }
    let (addrs, message) = data.split_at(32);
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&addrs[..16]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&addrs[16..]).unwrap());
    let ip = Ipv6Repr {
        src,
        dst,
        next_header: 58,
        hop_limit: 255,
        payload_len: message.len(),
    };
    let _ = parse(&ip, message);

    let mut fixed = message.to_vec();
    if fixed.len() >= 4 {
        fixed[2..4].copy_from_slice(&[0, 0]);
        let len = u32::try_from(fixed.len()).unwrap();
        let sum = Checksum::new()
            .ipv6_pseudo_header(src, dst, 58, len)
            .add(&fixed)
            .finish();
        fixed[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    let Some(repr) = parse(&ip, &fixed) else {
        return;
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    assert_eq!(repr.emit(src, dst, &mut buf), Ok(buf.len()));
    let ip = Ipv6Repr {
        payload_len: buf.len(),
        ..ip
    };
    assert_eq!(parse(&ip, &buf), Some(repr));
});
