//! DHCP messages (the UDP payload): parse, and whatever parses must emit and parse back to
//! itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rae_wire::{dhcp, DhcpRepr};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = dhcp::Packet::new_checked(data) else {
        return;
    };
    let _ = packet.options().count();
    let Ok(repr) = DhcpRepr::parse(&packet) else {
        return;
    };
    let _ = repr.hostname.map(|t| (t.as_str(), t.to_string()));
    let _ = repr.client_fqdn.map(|f| f.dotted_name());
    let mut buf = vec![0u8; repr.buffer_len()];
    assert_eq!(repr.emit(&mut buf), Ok(buf.len()));
    let again = DhcpRepr::parse(&dhcp::Packet::new_checked(&buf[..]).unwrap()).unwrap();
    assert_eq!(again, repr);
});
