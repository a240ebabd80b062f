//! Decoders face untrusted bytes: arbitrary, truncated, oversized, or from a newer schema.
//! Every such input is an error (or, for arbitrary bytes that happen to be valid, a value that
//! round-trips), and no input panics.

use std::fs;
use std::path::Path;

use proptest::prelude::*;
use rae_proto::strategy;
use rae_proto::{
    CommandReply, CommandRequest, DecodeError, Envelope, Inventory, Status, Topic,
    MAX_PAYLOAD_BYTES, SCHEMA_VERSION,
};

/// Runs every decoder on `bytes`; those that succeed must re-encode to a value that decodes
/// the same. Returns how many decoders accepted the bytes.
fn decode_everything(bytes: &[u8]) -> usize {
    fn check<T: PartialEq + std::fmt::Debug>(
        decoded: Result<T, DecodeError>,
        encode: impl Fn(&T) -> Vec<u8>,
        decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
    ) -> usize {
        match decoded {
            Ok(value) => {
                let again =
                    decode(&encode(&value)).expect("a decoded value re-encodes and decodes");
                assert_eq!(again, value);
                1
            }
            Err(_) => 0,
        }
    }
    let mut accepted = 0;
    accepted += check(
        Envelope::decode(bytes),
        |v| v.encode().unwrap(),
        Envelope::decode,
    );
    accepted += check(
        Inventory::decode(bytes),
        |v| v.encode().unwrap(),
        Inventory::decode,
    );
    accepted += check(
        Status::decode(bytes),
        |v| v.encode().unwrap(),
        Status::decode,
    );
    accepted += check(
        CommandRequest::decode(bytes),
        |v| v.encode().unwrap(),
        CommandRequest::decode,
    );
    accepted += check(
        CommandReply::decode(bytes),
        |v| v.encode().unwrap(),
        CommandReply::decode,
    );
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(topic) = Topic::parse(text) {
            assert_eq!(topic.to_string(), text, "a parsed topic has one text form");
        }
    }
    accepted
}

/// Decodes with the decoder the vector's file name calls for.
fn decode_as(name: &str, bytes: &[u8]) -> Result<(), DecodeError> {
    match name.split('-').next() {
        Some("envelope") => Envelope::decode(bytes).map(drop),
        Some("inventory") => Inventory::decode(bytes).map(drop),
        Some("status") => Status::decode(bytes).map(drop),
        Some("request") => CommandRequest::decode(bytes).map(drop),
        Some("reply") => CommandReply::decode(bytes).map(drop),
        _ => panic!("vector {name} names no payload kind"),
    }
}

fn golden_vectors() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/v1");
    let mut vectors: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("golden vectors missing at {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "bin"))
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&path).unwrap())
        })
        .collect();
    vectors.sort();
    assert!(
        vectors.len() >= 20,
        "expected the golden vectors in {}",
        dir.display()
    );
    vectors
}

#[test]
fn every_truncation_of_every_vector_is_an_error() {
    for (name, bytes) in golden_vectors() {
        decode_as(&name, &bytes).unwrap_or_else(|e| panic!("{name} must decode: {e}"));
        for len in 0..bytes.len() {
            let result = decode_as(&name, &bytes[..len]);
            assert!(result.is_err(), "{name} cut to {len} bytes decoded");
            decode_everything(&bytes[..len]);
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    for (name, mut bytes) in golden_vectors() {
        bytes.push(0);
        let error = decode_as(&name, &bytes).unwrap_err();
        assert!(
            matches!(error, DecodeError::TrailingBytes { count: 1, .. }),
            "{name}: {error}"
        );
    }
}

#[test]
fn a_newer_schema_version_is_refused_clearly() {
    for (name, mut bytes) in golden_vectors() {
        for version in SCHEMA_VERSION + 1..=u8::MAX {
            bytes[0] = version;
            let error = decode_as(&name, &bytes).unwrap_err();
            assert_eq!(
                error,
                DecodeError::UnsupportedVersion {
                    found: version,
                    max_supported: SCHEMA_VERSION
                }
            );
            assert_eq!(
                error.to_string(),
                format!(
                    "schema version {version} is newer than the newest this decoder supports (1); \
                     upgrade rae-proto to read it"
                )
            );
        }
        bytes[0] = 0;
        assert_eq!(decode_as(&name, &bytes), Err(DecodeError::VersionZero));
    }
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let (_, valid) = golden_vectors()
        .into_iter()
        .find(|(n, _)| n == "envelope-snapshot-full")
        .unwrap();
    let mut big = valid.clone();
    big.resize(MAX_PAYLOAD_BYTES + 1, 0);
    let error = Envelope::decode(&big).unwrap_err();
    assert_eq!(
        error,
        DecodeError::TooLarge {
            payload: "device event",
            len: MAX_PAYLOAD_BYTES + 1,
            max: MAX_PAYLOAD_BYTES
        }
    );
    assert_eq!(
        error.to_string(),
        "device event payload is 262145 bytes, more than the 262144 allowed"
    );
    assert_eq!(decode_everything(&big), 0);
    assert_eq!(decode_everything(&vec![0xff; 4 * MAX_PAYLOAD_BYTES]), 0);
}

#[test]
fn the_size_cap_is_exact() {
    // version + Error variant + ErrorKind + 3-byte length varint + message
    let fits = CommandReply::bad_request("x".repeat(MAX_PAYLOAD_BYTES - 6));
    let bytes = fits.encode().unwrap();
    assert_eq!(bytes.len(), MAX_PAYLOAD_BYTES);
    assert_eq!(CommandReply::decode(&bytes).unwrap(), fits);
    let too_big = CommandReply::bad_request("x".repeat(MAX_PAYLOAD_BYTES - 5));
    assert!(too_big.encode().is_err());
}

#[test]
fn huge_length_prefixes_fail_without_allocating_them() {
    // An inventory whose session count claims u64::MAX entries.
    let mut bytes = vec![SCHEMA_VERSION, 5];
    bytes.extend_from_slice(b"rae-1");
    bytes.push(0); // at_ms
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert!(matches!(
        Inventory::decode(&bytes),
        Err(DecodeError::Malformed { .. })
    ));
    // A status whose version string claims 2^63 bytes.
    let mut bytes = vec![SCHEMA_VERSION, 5];
    bytes.extend_from_slice(b"rae-1");
    bytes.push(0); // Online
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert!(matches!(
        Status::decode(&bytes),
        Err(DecodeError::Malformed { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    /// Past the version byte, so that the postcard decoders see the noise.
    #[test]
    fn arbitrary_v1_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = vec![SCHEMA_VERSION];
        bytes.extend_from_slice(&body);
        decode_everything(&bytes);
    }

    #[test]
    fn arbitrary_topics_never_panic(text in "(rae/v1/)?[a-z0-9/+#-]{0,80}") {
        decode_everything(text.as_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn truncated_envelopes_are_errors(value in strategy::envelope(), cut in any::<prop::sample::Index>()) {
        let bytes = value.encode().unwrap();
        let len = cut.index(bytes.len());
        prop_assert!(Envelope::decode(&bytes[..len]).is_err());
    }

    #[test]
    fn mutated_envelopes_never_panic(
        value in strategy::envelope(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = value.encode().unwrap();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        decode_everything(&bytes);
    }
}
