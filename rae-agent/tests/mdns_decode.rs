//! The mDNS decoder (`registry::mdns`: what a response says about its sender) against real
//! python3-zeroconf packets and hand-built ones. The packets and the message builders are the
//! parser's fixtures (rae-wire/tests/fixtures/), whose own tests check the parse itself.

#[path = "../../rae-wire/tests/fixtures/dns.rs"]
mod dns;

use dns::{fixture, message, name, record, srv, txt, RESPONSE};
use rae_agent::registry::mdns::{mdns_decode, mdns_observations, MdnsDecodeSettings};
use rae_agent::registry::ObservationKind;
use rae_agent::wire::mdns::rtype;
use rae_proto::{Mac, MdnsService, Text, TxtEntry};

const DUT: Mac = Mac([0x02, 0, 0x5e, 0x10, 0, 0x20]);

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
    let kinds = kinds(&fixture("ptr-answer"));
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
fn queries_say_nothing() {
    for name in ["probe-query", "meta-query"] {
        assert!(kinds(&fixture(name)).is_empty(), "{name}");
    }
}

#[test]
fn every_prefix_and_byte_flip_of_the_fixtures_is_decoded_without_panic() {
    let settings = MdnsDecodeSettings::default();
    for name in [
        "announcement",
        "ptr-answer",
        "goodbye",
        "probe-query",
        "meta-answer",
    ] {
        let bytes = fixture(name);
        for len in 0..bytes.len() {
            let _ = mdns_decode(DUT, &bytes[..len], 0, &settings);
        }
        for at in 0..bytes.len() {
            for flip in [0x01, 0x40, 0x80, 0xc0, 0xff] {
                let mut bent = bytes.clone();
                bent[at] ^= flip;
                let _ = mdns_decode(DUT, &bent, 0, &settings);
            }
        }
    }
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
