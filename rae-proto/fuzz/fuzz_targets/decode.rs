//! Feeds arbitrary bytes to every rae-proto decoder and to the topic parser. A decoder may
//! refuse the bytes but must not panic; whatever it accepts must survive encode -> decode,
//! and an accepted topic must have been written in its one canonical form.
//!
//! Seed corpus: `fuzz/seed-corpus.sh` copies the golden vectors and a few topics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rae_proto::{CommandReply, CommandRequest, Envelope, Inventory, Status, Topic};

macro_rules! round_trip {
    ($ty:ty, $data:expr) => {
        if let Ok(value) = <$ty>::decode($data) {
            let bytes = value
                .encode()
                .expect("a decoded value encodes: it was within the size cap and the rules");
            assert!(
                bytes.len() <= $data.len(),
                "encoding is never longer than an accepted input"
            );
            let again = <$ty>::decode(&bytes).expect("an encoded value decodes");
            assert_eq!(again, value);
        }
    };
}

fuzz_target!(|data: &[u8]| {
    round_trip!(Envelope, data);
    round_trip!(Inventory, data);
    round_trip!(Status, data);
    round_trip!(CommandRequest, data);
    round_trip!(CommandReply, data);
    if let Ok(value) = CommandRequest::decode(data) {
        assert_eq!(CommandRequest::decode_for(value.kind(), data), Ok(value));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(topic) = Topic::parse(text) {
            assert_eq!(topic.to_string(), text);
        }
    }
});
