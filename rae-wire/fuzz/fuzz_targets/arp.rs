//! ARP packets: parse, and whatever parses must emit and parse back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rae_wire::{arp, ArpRepr};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = arp::Packet::new_checked(data) else {
        return;
    };
    let _ = (packet.sender_hardware_addr(), packet.target_protocol_addr());
    let Ok(repr) = ArpRepr::parse(&packet) else {
        return;
    };
    let _ = (
        repr.is_probe(),
        repr.is_announcement(),
        repr.is_gratuitous(),
    );
    let mut buf = [0u8; arp::PACKET_LEN];
    assert_eq!(repr.emit(&mut buf), Ok(arp::PACKET_LEN));
    let again = ArpRepr::parse(&arp::Packet::new_checked(&buf[..]).unwrap()).unwrap();
    assert_eq!(again, repr);
});
