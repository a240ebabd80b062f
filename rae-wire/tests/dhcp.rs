//! DHCPv4 parsing against hand-built messages: every message type, the option rules, and
//! the raw bytes kept for text that is not UTF-8.

#[path = "fixtures/craft.rs"]
mod craft;

use std::net::Ipv4Addr;

use craft::{dhcp, dhcp_with_fields, udp4_frame, v4, DUT_MAC};
use rae_wire::dhcp::{self as wire_dhcp, BootOp, MessageType, Text};
use rae_wire::{parse_frame, Detail, DhcpRepr, DropReason, Layer, Message};

fn parse(bytes: &[u8]) -> Result<DhcpRepr<'_>, DropReason> {
    DhcpRepr::parse(&wire_dhcp::Packet::new_checked(bytes)?)
}

fn detail(bytes: &[u8]) -> Detail {
    let err = parse(bytes).expect_err("parsed a message that should be refused");
    assert_eq!(err.layer, Layer::Dhcp);
    err.detail
}

#[test]
fn every_message_type_code_is_read() {
    let named = [
        (1, MessageType::Discover),
        (2, MessageType::Offer),
        (3, MessageType::Request),
        (4, MessageType::Decline),
        (5, MessageType::Ack),
        (6, MessageType::Nak),
        (7, MessageType::Release),
        (8, MessageType::Inform),
        (9, MessageType::ForceRenew),
        (10, MessageType::LeaseQuery),
        (13, MessageType::LeaseActive),
        (18, MessageType::Tls),
    ];
    for (code, expected) in named {
        let msg = dhcp(1, &[53, 1, code, 255]);
        assert_eq!(parse(&msg).unwrap().message_type, expected, "code {code}");
    }
    for code in 0..=255u8 {
        let msg = dhcp(2, &[53, 1, code, 255]);
        let parsed = parse(&msg).unwrap().message_type;
        assert_eq!(parsed.code(), code);
        assert_eq!(
            matches!(parsed, MessageType::Other(_)),
            code == 0 || code > 18,
            "code {code}"
        );
    }
}

#[test]
fn fixed_fields_and_the_options_the_registry_reads() {
    let options = [
        &[53, 1, 3][..],
        &[61, 7, 1, 2, 0, 0x5e, 0x10, 0, 7],
        &[50, 4, 198, 18, 0, 7],
        &[54, 4, 198, 18, 0, 1],
        &[51, 4, 0, 0, 0x0e, 0x10],
        &[57, 2, 0x05, 0xdc],
        &[12, 6, b't', b'v', b'-', b'o', b'n', b'e'],
        &[60, 4, b'O', b'E', b'M', b'1'],
        &[55, 5, 1, 121, 3, 6, 15],
        &[81, 7, 0x00, 0, 0, b't', b'v', b'.', b'x'],
        &[255],
    ]
    .concat();
    let msg = dhcp(1, &options);
    let repr = parse(&msg).unwrap();
    assert_eq!(repr.op, BootOp::Request);
    assert_eq!(repr.message_type, MessageType::Request);
    assert_eq!(repr.xid, 0x3903_f326);
    assert_eq!(repr.secs, 3);
    assert!(repr.broadcast);
    assert_eq!(repr.chaddr, DUT_MAC);
    assert_eq!(repr.client_id.unwrap().as_mac(), Some(DUT_MAC));
    assert_eq!(repr.requested_ip, Some(v4(7)));
    assert_eq!(repr.server_id, Some(v4(1)));
    assert_eq!(repr.lease_time, Some(3600));
    assert_eq!(repr.max_message_size, Some(1500));
    assert_eq!(repr.hostname.unwrap().as_str(), Some("tv-one"));
    assert_eq!(repr.vendor_class.unwrap().as_str(), Some("OEM1"));
    // Order is part of the fingerprint: 121 before 3 stays so.
    assert_eq!(repr.parameter_request_list, Some(&[1, 121, 3, 6, 15][..]));
    let fqdn = repr.client_fqdn.unwrap();
    assert!(!fqdn.is_wire_encoded());
    assert_eq!(fqdn.dotted_name().as_deref(), Some("tv.x"));

    // The same message through the whole stack.
    let frame = udp4_frame(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, &msg);
    let parsed = parse_frame(&frame).unwrap();
    let Message::Dhcp {
        dhcp: via_frame,
        udp,
        ..
    } = parsed.message
    else {
        panic!("not DHCP: {parsed:?}");
    };
    assert_eq!(via_frame, repr);
    assert_eq!((udp.src_port, udp.dst_port), (68, 67));
}

#[test]
fn hostnames_that_are_not_utf8_keep_their_bytes() {
    // "Salle-Télé" in Latin-1, as some TV firmware sends it.
    let latin1 = b"Salle-T\xe9l\xe9";
    let msg = dhcp(1, &[&[53, 1, 1, 12, 10][..], latin1, &[255]].concat());
    let hostname = parse(&msg).unwrap().hostname.unwrap();
    assert_eq!(hostname.as_bytes(), latin1);
    assert_eq!(hostname.as_str(), None);
    assert_eq!(hostname.to_string(), "Salle-T\\xe9l\\xe9");

    // A NUL-terminated hostname reads as text without the NUL; the bytes keep it.
    let msg = dhcp(1, &[53, 1, 1, 12, 3, b't', b'v', 0, 255]);
    let hostname = parse(&msg).unwrap().hostname.unwrap();
    assert_eq!(hostname.as_str(), Some("tv"));
    assert_eq!(hostname.as_bytes(), b"tv\0");

    // An empty hostname is kept as empty text rather than losing the whole message.
    let msg = dhcp(1, &[53, 1, 1, 12, 0, 255]);
    assert_eq!(parse(&msg).unwrap().hostname, Some(Text(b"")));

    // UTF-8 that is not ASCII is text.
    let name = "Télé-1".as_bytes();
    let msg = dhcp(1, &[&[53, 1, 1, 12, 8][..], name, &[255]].concat());
    assert_eq!(
        parse(&msg).unwrap().hostname.unwrap().as_str(),
        Some("Télé-1")
    );
}

#[test]
fn overloaded_file_and_sname_fields_are_read_in_order() {
    let file = [&[12, 9][..], b"from-file", &[60, 3, b'V', b'C', b'1', 255]].concat();
    let sname = [&[12, 10][..], b"from-sname", &[61, 3, 0, b'i', b'd', 255]].concat();
    let msg = dhcp_with_fields(1, &sname, &file, &[53, 1, 1, 52, 1, 3, 255]);
    let repr = parse(&msg).unwrap();
    // `file` comes before `sname`, and the first copy of an option wins.
    assert_eq!(repr.hostname.unwrap().as_str(), Some("from-file"));
    assert_eq!(repr.vendor_class.unwrap().as_str(), Some("VC1"));
    let client_id = repr.client_id.unwrap();
    assert_eq!((client_id.kind, client_id.id), (0, &b"id"[..]));

    // Without option 52 the same fields are a server and a file name, not options.
    let msg = dhcp_with_fields(1, &sname, &file, &[53, 1, 1, 255]);
    let repr = parse(&msg).unwrap();
    assert_eq!(
        (repr.hostname, repr.vendor_class, repr.client_id),
        (None, None, None)
    );

    // Overload 1: only `file`.
    let msg = dhcp_with_fields(1, &sname, &file, &[53, 1, 1, 52, 1, 1, 255]);
    let repr = parse(&msg).unwrap();
    assert_eq!(repr.hostname.unwrap().as_str(), Some("from-file"));
    assert_eq!(repr.client_id, None);

    // A broken option inside an overloaded field is as malformed as one in the options.
    let broken_file = [12, 200, b'x'];
    let msg = dhcp_with_fields(1, &[], &broken_file, &[53, 1, 1, 52, 1, 1, 255]);
    assert_eq!(detail(&msg), Detail::BadOption);
}

#[test]
fn pads_missing_end_and_duplicates() {
    // Pads anywhere; no end option at all.
    let msg = dhcp(
        1,
        &[0, 0, 53, 1, 8, 0, 12, 2, b'h', b'1', 0, 12, 2, b'h', b'2'],
    );
    let repr = parse(&msg).unwrap();
    assert_eq!(repr.message_type, MessageType::Inform);
    assert_eq!(repr.hostname.unwrap().as_str(), Some("h1"));
    // Bytes after `end` are ignored, broken or not.
    let msg = dhcp(1, &[53, 1, 4, 255, 12, 99]);
    assert_eq!(parse(&msg).unwrap().message_type, MessageType::Decline);
}

#[test]
fn broken_options_are_malformed() {
    let cases: [&[u8]; 11] = [
        &[53, 1, 1, 12, 10, b'a', b'b'], // runs past the end
        &[53, 1, 1, 12],                 // no length byte
        &[53, 2, 1, 1, 255],             // message type of two bytes
        &[53, 1, 1, 50, 3, 198, 18, 0],  // requested IP of three bytes
        &[53, 1, 1, 51, 2, 0, 1],        // lease time of two bytes
        &[53, 1, 1, 54, 5, 1, 2, 3, 4, 5],
        &[53, 1, 1, 57, 1, 5],
        &[53, 1, 1, 61, 1, 1],      // client id without an id
        &[53, 1, 1, 81, 2, 0, 0],   // FQDN without rcodes
        &[53, 1, 1, 52, 1, 4, 255], // overload value out of range
        &[53, 1, 1, 52, 2, 1, 1, 255],
    ];
    for options in cases {
        assert_eq!(
            detail(&dhcp(1, options)),
            Detail::BadOption,
            "options {options:?}"
        );
    }
}

#[test]
fn refuses_bootp_bad_cookies_opcodes_and_hardware() {
    assert_eq!(detail(&dhcp(1, &[12, 2, b'h', b'1', 255])), Detail::Bootp);
    assert_eq!(detail(&dhcp(3, &[53, 1, 1, 255])), Detail::BadOpcode);

    let mut msg = dhcp(1, &[53, 1, 1, 255]);
    msg[236] = 0x64;
    assert_eq!(detail(&msg), Detail::BadMagicCookie);

    let mut msg = dhcp(1, &[53, 1, 1, 255]);
    msg[1] = 32; // InfiniBand
    assert_eq!(detail(&msg), Detail::HardwareType);
    msg[1] = 1;
    msg[2] = 8;
    assert_eq!(detail(&msg), Detail::BadAddressLength);

    let msg = dhcp(1, &[]);
    for len in 0..240 {
        assert_eq!(
            parse(&msg[..len]).unwrap_err(),
            DropReason::truncated(Layer::Dhcp),
            "{len} bytes"
        );
    }
}

#[test]
fn client_fqdn_names_decode_or_refuse() {
    let fqdn = |flags: u8, name: &[u8]| {
        let body = [&[flags, 0, 0][..], name].concat();
        let options = [
            &[53, 1, 3, 81, u8::try_from(body.len()).unwrap()][..],
            &body,
            &[255],
        ]
        .concat();
        dhcp(1, &options)
    };
    let cases: [(u8, &[u8], Option<&str>); 6] = [
        (0x04, b"\x02tv\x03lab\x00", Some("tv.lab")),
        (0x04, b"\x02tv\x03lab", Some("tv.lab")), // partial: no root label
        (0x04, b"\x02tv\x09lab", None),           // label past the end
        (0x04, b"\xc0\x0c", None),                // compression pointer
        (0x00, b"tv.lab", Some("tv.lab")),
        (0x00, b"t\xffv", None),
    ];
    for (flags, name, expected) in cases {
        let msg = fqdn(flags, name);
        let repr = parse(&msg).unwrap();
        let parsed = repr.client_fqdn.unwrap();
        assert_eq!(parsed.name, name);
        assert_eq!(parsed.dotted_name().as_deref(), expected, "name {name:?}");
    }
}
