//! mDNS messages (the UDP payload): parsing never panics; every name of a parsed message walks
//! to the end within the name bounds; an emitted query parses back. The decoder on top
//! (rae-agent's `registry::mdns::mdns_decode`) lives in the daemon crate and is not fuzzed here:
//! its tests feed it every prefix and byte flip of the recorded packets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rae_wire::mdns::{emit_query, query_len, rtype, DnsName, MdnsRepr, Packet, RecordData};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let Ok(repr) = MdnsRepr::parse(&packet) else {
        return;
    };
    let mut names: Vec<DnsName> = Vec::new();
    for name in repr
        .questions
        .iter()
        .map(|q| q.name)
        .chain(repr.records.iter().map(|r| r.name))
    {
        let wire: usize = name.labels().map(|l| l.len() + 1).sum::<usize>() + 1;
        assert!(wire <= 255, "{name:?} is {wire} bytes");
        assert!(name.labels().all(|l| !l.is_empty() && l.len() <= 63));
        if let Ok(owned) = DnsName::from_dotted(&name.to_dotted()) {
            names.push(owned);
        }
    }
    for record in &repr.records {
        if let RecordData::Txt(txt) = record.data {
            let _ = txt.attributes().count();
        }
    }
    names.truncate(8);
    let mut buf = vec![0u8; query_len(&names)];
    let len = emit_query(&names, rtype::PTR, &mut buf).unwrap();
    let again = MdnsRepr::parse(&Packet::new_checked(&buf[..len]).unwrap()).unwrap();
    assert_eq!(again.questions.len(), names.len());
});
