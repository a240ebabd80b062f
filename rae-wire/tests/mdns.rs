//! The mDNS parser against real python3-zeroconf packets (`fixtures/mdns/zeroconf-*.bin`: UDP
//! payloads recorded with tcpdump between two namespaces: the responder's probe, announcement,
//! answers to `_services._dns-sd._udp.local.` and `_googlecast._tcp.local.` PTR queries, and
//! its goodbye) and hand-built ones. What the agent makes of them (hosts, services) is
//! rae-agent's `registry::mdns`, tested in rae-agent/tests/mdns_decode.rs.

#[path = "fixtures/dns.rs"]
mod dns;

use std::net::Ipv4Addr;

use dns::{fixture, message, name, record, RESPONSE};
use rae_wire::mdns::{
    emit_query, query_len, rtype, DnsName, MdnsRepr, Packet, RecordData, Section, TxtAttribute,
    MAX_POINTERS,
};
use rae_wire::{Detail, DropReason, EmitError, Layer};

fn parse(bytes: &[u8]) -> Result<MdnsRepr<'_>, DropReason> {
    MdnsRepr::parse(&Packet::new_checked(bytes)?)
}

fn mdns(detail: Detail) -> DropReason {
    DropReason::new(Layer::Mdns, detail)
}

#[test]
fn zeroconf_announcement_parses_with_compression_cache_flush_and_ttls() {
    let bytes = fixture("announcement");
    let repr = parse(&bytes).unwrap();
    assert!(repr.header.response && repr.header.authoritative);
    assert!(repr.questions.is_empty());
    let summary: Vec<(u16, bool, u32, Section)> = repr
        .records
        .iter()
        .map(|r| (r.rtype, r.cache_flush, r.ttl, r.section))
        .collect();
    assert_eq!(
        summary,
        vec![
            (rtype::PTR, false, 4500, Section::Answer),
            (rtype::SRV, true, 120, Section::Answer),
            (rtype::TXT, true, 4500, Section::Answer),
            (rtype::A, true, 120, Section::Answer),
        ]
    );
    let names: Vec<String> = repr.records.iter().map(|r| r.name.to_dotted()).collect();
    assert_eq!(
        names,
        [
            "_googlecast._tcp.local.",
            "Lab Cast._googlecast._tcp.local.",
            "Lab Cast._googlecast._tcp.local.",
            "lab-cast.local."
        ]
    );
    let RecordData::Srv { port, target, .. } = repr.records[1].data else {
        panic!("not an SRV: {:?}", repr.records[1]);
    };
    assert_eq!(
        (port, target.to_dotted().as_str()),
        (8009, "lab-cast.local.")
    );
    let RecordData::Txt(txt) = repr.records[2].data else {
        panic!("not a TXT: {:?}", repr.records[2]);
    };
    let attributes: Vec<TxtAttribute<'_>> = txt.attributes().collect();
    assert_eq!(attributes[0].key, b"md");
    assert_eq!(attributes[0].value, Some(&b"Chromecast Ultra"[..]));
    assert_eq!(attributes[3].value, None, "a bare key");
    assert_eq!(
        repr.records[3].data,
        RecordData::A(Ipv4Addr::new(198, 19, 253, 1))
    );
}

#[test]
fn answer_to_a_ptr_query_puts_the_rest_in_the_additional_section() {
    let bytes = fixture("ptr-answer");
    let repr = parse(&bytes).unwrap();
    let sections: Vec<Section> = repr.records.iter().map(|r| r.section).collect();
    assert_eq!(sections[0], Section::Answer);
    assert!(sections[1..].iter().all(|s| *s == Section::Additional));
}

#[test]
fn queries_parse_as_questions() {
    for name in ["probe-query", "meta-query"] {
        let bytes = fixture(name);
        let repr = parse(&bytes).unwrap();
        assert!(!repr.header.response);
        assert_eq!(repr.questions.len(), 1, "{name}");
    }
    // The probe asks for a unicast answer and proposes its records in the authority section.
    let bytes = fixture("probe-query");
    let probe = parse(&bytes).unwrap();
    assert!(probe.questions[0].unicast_response);
    assert_eq!(probe.records[0].section, Section::Authority);
    assert!(!parse(&fixture("meta-query")).unwrap().questions[0].unicast_response);
}

#[test]
fn every_prefix_and_byte_flip_of_the_fixtures_is_handled_without_panic() {
    for name in ["announcement", "ptr-answer", "goodbye", "probe-query"] {
        let bytes = fixture(name);
        for len in 0..bytes.len() {
            let result = parse(&bytes[..len]);
            if len < 12 {
                assert_eq!(result, Err(DropReason::truncated(Layer::Mdns)));
            }
        }
        for at in 0..bytes.len() {
            for flip in [0x01, 0x40, 0x80, 0xc0, 0xff] {
                let mut bent = bytes.clone();
                bent[at] ^= flip;
                if let Ok(repr) = parse(&bent) {
                    for record in &repr.records {
                        assert!(record.name.to_dotted().len() < 4 * 255);
                    }
                }
            }
        }
    }
}

#[test]
fn names_that_loop_jump_forward_or_grow_too_long_are_malformed() {
    let a = |owner: &[u8]| record(owner, rtype::A, 1, 120, &[198, 18, 0, 1]);
    // A pointer to its own label run.
    let looped = message(RESPONSE, [0, 1, 0, 0], &a(&[1, b'x', 0xc0, 12]));
    assert_eq!(parse(&looped), Err(mdns(Detail::BadName)));
    // Extended (0x40) and reserved (0x80) label types.
    for kind in [0x40, 0x80] {
        let odd = message(RESPONSE, [0, 1, 0, 0], &a(&[kind, 0]));
        assert_eq!(parse(&odd), Err(mdns(Detail::BadName)));
    }
    // 5 labels of 63 bytes: 320 bytes on the wire.
    let long = vec!["y".repeat(63); 5].join(".");
    let mut owner = Vec::new();
    for label in long.split('.') {
        owner.push(label.len() as u8);
        owner.extend_from_slice(label.as_bytes());
    }
    owner.push(0);
    let too_long = message(RESPONSE, [0, 1, 0, 0], &a(&owner));
    assert_eq!(parse(&too_long), Err(mdns(Detail::BadName)));
    // Chains of pointers to pointers: MAX_POINTERS jumps are followed, one more is not.
    assert!(parse(&pointer_chain(MAX_POINTERS)).is_ok());
    assert_eq!(
        parse(&pointer_chain(MAX_POINTERS + 1)),
        Err(mdns(Detail::BadName))
    );
}

/// A message whose last record's owner name takes `jumps` pointer jumps to reach `h.local`:
/// the pointers sit in the rdata of a record of an unread type, each pointing at the one
/// before it.
fn pointer_chain(jumps: usize) -> Vec<u8> {
    let a = |owner: &[u8]| record(owner, rtype::A, 1, 120, &[198, 18, 0, 1]);
    let mut body = a(&name("h.local"));
    let rdata_start = 12 + body.len() + 1 + 10;
    let mut pointers = Vec::new();
    let mut target = 12usize;
    for i in 0..jumps - 1 {
        pointers.extend_from_slice(&[0xc0 | (target >> 8) as u8, target as u8]);
        target = rdata_start + 2 * i;
    }
    body.extend(record(&[0], 47, 1, 120, &pointers));
    body.extend(a(&[0xc0 | (target >> 8) as u8, target as u8]));
    message(RESPONSE, [0, 3, 0, 0], &body)
}

#[test]
fn bad_lengths_truncation_and_opcodes_are_reported() {
    let a5 = record(&name("h.local"), rtype::A, 1, 120, &[1, 2, 3, 4, 5]);
    assert_eq!(
        parse(&message(RESPONSE, [0, 1, 0, 0], &a5)),
        Err(mdns(Detail::BadLength))
    );
    let mut ptr_rdata = name("x._http._tcp.local");
    ptr_rdata.push(0);
    let ptr = record(&name("_http._tcp.local"), rtype::PTR, 1, 120, &ptr_rdata);
    assert_eq!(
        parse(&message(RESPONSE, [0, 1, 0, 0], &ptr)),
        Err(mdns(Detail::BadLength)),
        "a PTR name must fill its rdata"
    );
    let bad_txt = record(&name("x.local"), rtype::TXT, 1, 120, &[5, b'a']);
    assert_eq!(
        parse(&message(RESPONSE, [0, 1, 0, 0], &bad_txt)),
        Err(mdns(Detail::BadLength))
    );
    let short_srv = record(&name("x.local"), rtype::SRV, 1, 120, &[0, 0, 0, 0, 0]);
    assert_eq!(
        parse(&message(RESPONSE, [0, 1, 0, 0], &short_srv)),
        Err(mdns(Detail::BadLength))
    );
    // Two answers announced, one present.
    let a = record(&name("h.local"), rtype::A, 1, 120, &[1, 2, 3, 4]);
    assert_eq!(
        parse(&message(RESPONSE, [0, 2, 0, 0], &a)),
        Err(DropReason::truncated(Layer::Mdns))
    );
    // Opcode 5 (UPDATE) and a non-zero response code.
    for flags in [RESPONSE | 5 << 11, RESPONSE | 3] {
        assert_eq!(
            parse(&message(flags, [0, 1, 0, 0], &a)),
            Err(mdns(Detail::Operation))
        );
    }
    // Unknown types are skipped by their length; what follows is read.
    let mut body = record(&name("h.local"), 47, 1, 120, &[0xde, 0xad]);
    body.extend(a);
    let msg = message(RESPONSE, [0, 2, 0, 0], &body);
    let repr = parse(&msg).unwrap();
    assert_eq!(repr.records[0].data, RecordData::Other(&[0xde, 0xad]));
    assert_eq!(
        repr.records[1].data,
        RecordData::A(Ipv4Addr::new(1, 2, 3, 4))
    );
}

#[test]
fn emitted_queries_parse_back_to_their_questions() {
    let names: Vec<DnsName> = ["_services._dns-sd._udp.local.", r"a\.b._http._tcp.local"]
        .iter()
        .map(|n| DnsName::from_dotted(n).unwrap())
        .collect();
    let mut buf = vec![0u8; query_len(&names)];
    assert_eq!(emit_query(&names, rtype::PTR, &mut buf), Ok(buf.len()));
    let repr = parse(&buf).unwrap();
    assert!(!repr.header.response);
    assert_eq!(repr.header.id, 0);
    let asked: Vec<(String, u16, u16, bool)> = repr
        .questions
        .iter()
        .map(|q| (q.name.to_dotted(), q.qtype, q.qclass, q.unicast_response))
        .collect();
    assert_eq!(
        asked,
        vec![
            ("_services._dns-sd._udp.local.".into(), rtype::PTR, 1, false),
            (r"a\.b._http._tcp.local.".into(), rtype::PTR, 1, false),
        ]
    );
    let mut small = vec![0u8; buf.len() - 1];
    assert_eq!(
        emit_query(&names, rtype::PTR, &mut small),
        Err(EmitError::BufferTooSmall {
            need: buf.len(),
            have: buf.len() - 1
        })
    );
}
