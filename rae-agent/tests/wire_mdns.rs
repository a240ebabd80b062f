//! The mDNS parser and decoder against real python3-zeroconf packets
//! (`tests/fixtures/mdns/zeroconf-*.bin`: UDP payloads recorded with tcpdump between two
//! namespaces: the responder's probe, announcement, answers to `_services._dns-sd._udp.local.`
//! and `_googlecast._tcp.local.` PTR queries, and its goodbye) and hand-built ones.

use std::net::Ipv4Addr;

use rae_agent::registry::mdns::{mdns_decode, mdns_observations, MdnsDecodeSettings};
use rae_agent::registry::ObservationKind;
use rae_agent::wire::mdns::{
    emit_query, query_len, rtype, DnsName, MdnsRepr, Packet, RecordData, Section, TxtAttribute,
    MAX_POINTERS,
};
use rae_agent::wire::{Detail, DropReason, EmitError, Layer};
use rae_proto::{Mac, MdnsService, Text, TxtEntry};

const DUT: Mac = Mac([0x02, 0, 0x5e, 0x10, 0, 0x20]);

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/mdns/zeroconf-{name}.bin",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn parse(bytes: &[u8]) -> Result<MdnsRepr<'_>, DropReason> {
    MdnsRepr::parse(&Packet::new_checked(bytes)?)
}

fn mdns(detail: Detail) -> DropReason {
    DropReason::new(Layer::Mdns, detail)
}

fn entry(key: &str, value: Option<&str>) -> TxtEntry {
    TxtEntry {
        key: key.into(),
        value: value.map(Text::from),
    }
}

fn lab_cast() -> MdnsService {
    MdnsService {
        service_type: "_googlecast._tcp.local.".into(),
        instance: "Lab Cast".into(),
        port: 8009,
        txt: vec![
            entry("md", Some("Chromecast Ultra")),
            entry("fn", Some("Lab")),
            entry("id", Some("0123abcd")),
            entry("ty", None),
        ],
    }
}

fn kinds(payload: &[u8]) -> Vec<ObservationKind> {
    mdns_observations(DUT, payload, 7, &MdnsDecodeSettings::default())
        .unwrap()
        .into_iter()
        .inspect(|o| assert_eq!((o.mac, o.at_ms), (DUT, 7)))
        .map(|o| o.kind)
        .collect()
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
fn zeroconf_announcement_gives_host_and_service() {
    assert_eq!(
        kinds(&fixture("announcement")),
        vec![
            ObservationKind::MdnsHost {
                hostname: Text::from("lab-cast")
            },
            ObservationKind::MdnsService(lab_cast()),
        ]
    );
}

#[test]
fn answer_to_a_ptr_query_resolves_from_the_additional_section() {
    let bytes = fixture("ptr-answer");
    let repr = parse(&bytes).unwrap();
    let sections: Vec<Section> = repr.records.iter().map(|r| r.section).collect();
    assert_eq!(sections[0], Section::Answer);
    assert!(sections[1..].iter().all(|s| *s == Section::Additional));
    let kinds = kinds(&bytes);
    assert!(
        kinds.contains(&ObservationKind::MdnsService(lab_cast())),
        "{kinds:?}"
    );
    assert!(kinds.contains(&ObservationKind::MdnsHost {
        hostname: Text::from("lab-cast")
    }));
}

#[test]
fn answer_to_the_type_enumeration_gives_the_type() {
    let decoded = mdns_decode(
        DUT,
        &fixture("meta-answer"),
        0,
        &MdnsDecodeSettings::default(),
    )
    .unwrap();
    assert_eq!(decoded.types, vec!["_googlecast._tcp.local.".to_string()]);
    assert!(decoded.observations.is_empty());
}

#[test]
fn goodbye_withdraws_the_service_and_names_no_host() {
    assert_eq!(
        kinds(&fixture("goodbye")),
        vec![ObservationKind::MdnsServiceGone {
            service_type: "_googlecast._tcp.local.".into(),
            instance: "Lab Cast".into(),
        }]
    );
}

#[test]
fn queries_parse_but_say_nothing() {
    for name in ["probe-query", "meta-query"] {
        let bytes = fixture(name);
        let repr = parse(&bytes).unwrap();
        assert!(!repr.header.response);
        assert_eq!(repr.questions.len(), 1, "{name}");
        assert!(kinds(&bytes).is_empty(), "{name}");
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
            let cut = &bytes[..len];
            let result = parse(cut);
            if len < 12 {
                assert_eq!(result, Err(DropReason::truncated(Layer::Mdns)));
            }
            let _ = mdns_decode(DUT, cut, 0, &MdnsDecodeSettings::default());
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
                let _ = mdns_decode(DUT, &bent, 0, &MdnsDecodeSettings::default());
            }
        }
    }
}

/// Hand-built messages: a header with the given counts, then `body`.
fn message(flags: u16, counts: [u16; 4], body: &[u8]) -> Vec<u8> {
    let mut msg = vec![0, 0];
    msg.extend_from_slice(&flags.to_be_bytes());
    for count in counts {
        msg.extend_from_slice(&count.to_be_bytes());
    }
    msg.extend_from_slice(body);
    msg
}

fn name(text: &str) -> Vec<u8> {
    DnsName::from_dotted(text).unwrap().as_wire().to_vec()
}

/// A record: owner name bytes, type, class, TTL, rdata.
fn record(owner: &[u8], rtype: u16, class: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
    let mut out = owner.to_vec();
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&class.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
    out
}

fn srv(port: u16, target: &str) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 0];
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&name(target));
    out
}

fn txt(strings: &[&[u8]]) -> Vec<u8> {
    strings
        .iter()
        .flat_map(|s| std::iter::once(s.len() as u8).chain(s.iter().copied()))
        .collect()
}

const RESPONSE: u16 = 0x8400;

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

fn service_packet(instance_label: &[u8], txt_rdata: Option<&[u8]>, ttl: u32) -> Vec<u8> {
    let ty = name("_http._tcp.local");
    let mut full = vec![instance_label.len() as u8];
    full.extend_from_slice(instance_label);
    full.extend_from_slice(&ty);
    let mut body = record(&ty, rtype::PTR, 1, ttl, &full);
    body.extend(record(
        &full,
        rtype::SRV,
        0x8001,
        120,
        &srv(80, "printer.local"),
    ));
    let mut count = 2;
    if let Some(rdata) = txt_rdata {
        body.extend(record(&full, rtype::TXT, 0x8001, 4500, rdata));
        count += 1;
    }
    message(RESPONSE, [0, 1, 0, count - 1], &body)
}

#[test]
fn txt_selection_keeps_first_occurrence_caps_values_and_ignores_case() {
    let rdata = txt(&[
        b"MD=Printer 9000",
        b"md=second",
        b"secret=x",
        b"=nokey",
        b"",
        b"fn=abcdefghij",
    ]);
    let settings = MdnsDecodeSettings {
        max_txt_value: 4,
        ..MdnsDecodeSettings::default()
    };
    let packet = service_packet(b"Office. 2nd floor", Some(&rdata), 120);
    let observations = mdns_observations(DUT, &packet, 0, &settings).unwrap();
    assert_eq!(
        observations.into_iter().map(|o| o.kind).collect::<Vec<_>>(),
        vec![ObservationKind::MdnsService(MdnsService {
            service_type: "_http._tcp.local.".into(),
            instance: "Office. 2nd floor".into(),
            port: 80,
            txt: vec![entry("MD", Some("Prin")), entry("fn", Some("abcd"))],
        })]
    );
}

#[test]
fn a_service_needs_srv_and_txt_and_a_unicast_sender() {
    assert!(kinds(&service_packet(b"P", None, 120)).is_empty());
    let packet = service_packet(b"P", Some(&txt(&[b"id=1"])), 120);
    for src in [Mac::BROADCAST, Mac::ZERO, Mac([0x01, 0, 0x5e, 0, 0, 0xfb])] {
        let got = mdns_observations(src, &packet, 0, &MdnsDecodeSettings::default()).unwrap();
        assert!(got.is_empty(), "{src}: {got:?}");
    }
    assert_eq!(
        kinds(&service_packet(b"P", None, 0)),
        vec![ObservationKind::MdnsServiceGone {
            service_type: "_http._tcp.local.".into(),
            instance: "P".into(),
        }]
    );
}

#[test]
fn services_and_types_per_packet_are_bounded() {
    let meta = name("_services._dns-sd._udp.local");
    let mut body = Vec::new();
    for i in 0..10 {
        body.extend(record(
            &meta,
            rtype::PTR,
            1,
            4500,
            &name(&format!("_t{i}._tcp.local")),
        ));
    }
    // Not service types: the meta name itself, a subtype and a non-local domain.
    for odd in [
        "_services._dns-sd._udp.local",
        "_x._sub._http._tcp.local",
        "_y._tcp.example",
    ] {
        body.extend(record(&meta, rtype::PTR, 1, 4500, &name(odd)));
    }
    for i in 0..10 {
        let ty = name("_http._tcp.local");
        body.extend(record(
            &ty,
            rtype::PTR,
            1,
            0,
            &name(&format!("i{i}._http._tcp.local")),
        ));
    }
    let packet = message(RESPONSE, [0, 23, 0, 0], &body);
    let settings = MdnsDecodeSettings {
        max_services: 3,
        max_types: 4,
        ..MdnsDecodeSettings::default()
    };
    let decoded = mdns_decode(DUT, &packet, 0, &settings).unwrap();
    assert_eq!(
        decoded.types,
        [
            "_t0._tcp.local.",
            "_t1._tcp.local.",
            "_t2._tcp.local.",
            "_t3._tcp.local."
        ]
    );
    assert_eq!(decoded.observations.len(), 3);

    let all = mdns_decode(DUT, &packet, 0, &MdnsDecodeSettings::default()).unwrap();
    assert_eq!(all.types.len(), 10, "{:?}", all.types);
}

#[test]
fn hosts_come_from_local_address_records_only_once_each() {
    let mut body = record(&name("TV.local"), rtype::A, 0x8001, 120, &[198, 18, 0, 9]);
    body.extend(record(
        &name("tv.local"),
        rtype::AAAA,
        0x8001,
        120,
        &[0x20; 16],
    ));
    body.extend(record(
        &name("gone.local"),
        rtype::A,
        1,
        0,
        &[198, 18, 0, 8],
    ));
    body.extend(record(
        &name("www.example"),
        rtype::A,
        1,
        120,
        &[198, 18, 0, 7],
    ));
    body.extend(record(
        &name("chaos.local"),
        rtype::A,
        3,
        120,
        &[198, 18, 0, 6],
    ));
    let packet = message(RESPONSE, [0, 5, 0, 0], &body);
    assert_eq!(
        kinds(&packet),
        vec![ObservationKind::MdnsHost {
            hostname: Text::from("TV")
        }]
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
