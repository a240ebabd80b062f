//! Property tests: every value survives encode -> decode, every topic survives build -> parse,
//! and the field view of the record is exact.

use proptest::prelude::*;
use rae_proto::strategy;
use rae_proto::{
    CommandReply, CommandRequest, DeviceRecord, Envelope, Field, FieldId, Inventory, Mac,
    NameError, RequesterId, Serial, SessionId, SessionIdError, Status, Text, Topic, TopicError,
};

/// postcard round trip of a bare value (no envelope), for the parts of the payloads.
fn bare_round_trip<T>(value: &T) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = postcard::to_allocvec(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: T = postcard::from_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, value);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn envelope_round_trips(value in strategy::envelope()) {
        let bytes = value.encode().unwrap();
        prop_assert_eq!(bytes[0], rae_proto::SCHEMA_VERSION);
        prop_assert_eq!(Envelope::decode(&bytes).unwrap(), value);
    }

    #[test]
    fn inventory_round_trips(value in strategy::inventory()) {
        prop_assert_eq!(Inventory::decode(&value.encode().unwrap()).unwrap(), value);
    }

    #[test]
    fn status_round_trips(value in strategy::status()) {
        prop_assert_eq!(Status::decode(&value.encode().unwrap()).unwrap(), value);
    }

    #[test]
    fn command_request_round_trips(value in strategy::command_request()) {
        let bytes = value.encode().unwrap();
        prop_assert_eq!(CommandRequest::decode_for(value.kind(), &bytes).unwrap(), value);
    }

    #[test]
    fn command_reply_round_trips(value in strategy::command_reply()) {
        prop_assert_eq!(CommandReply::decode(&value.encode().unwrap()).unwrap(), value);
    }

    #[test]
    fn parts_round_trip(
        record in strategy::device_record(),
        field in strategy::field(),
        mac in strategy::mac(),
        text in strategy::text(),
        serial in strategy::serial(),
        session in strategy::session(),
        device in strategy::device_ref(),
        reachability in strategy::reachability(),
    ) {
        bare_round_trip(&record)?;
        bare_round_trip(&field)?;
        bare_round_trip(&mac)?;
        bare_round_trip(&text)?;
        bare_round_trip(&serial)?;
        bare_round_trip(&session)?;
        bare_round_trip(&device)?;
        bare_round_trip(&reachability)?;
    }

    #[test]
    fn topic_build_then_parse_is_identity(topic in strategy::topic()) {
        let text = topic.to_string();
        prop_assert_eq!(Topic::parse(&text).unwrap(), topic);
    }

    #[test]
    fn text_forms_round_trip(
        mac in strategy::mac(),
        session in strategy::session(),
        serial in strategy::serial(),
        requester in strategy::requester(),
    ) {
        prop_assert_eq!(mac.to_string().parse::<Mac>().unwrap(), mac);
        prop_assert_eq!(SessionId::parse(&session.to_string()).unwrap(), session);
        prop_assert_eq!(Serial::new(serial.to_string()).unwrap(), serial);
        prop_assert_eq!(RequesterId::new(requester.to_string()).unwrap(), requester);
    }

    /// Serials with a character outside the rule are refused, in the topic too.
    #[test]
    fn invalid_serials_are_typed_errors(
        head in "[A-Za-z0-9_-]{0,20}",
        bad in "[^A-Za-z0-9_-]",
        tail in "[A-Za-z0-9_-]{0,20}",
    ) {
        let text = format!("{head}{bad}{tail}");
        let ch = bad.chars().next().unwrap();
        let expected = NameError::InvalidChar { ch, index: head.len() };
        prop_assert_eq!(Serial::new(text.as_str()), Err(expected.clone()));
        if ch != '/' {
            prop_assert_eq!(
                Topic::parse(&format!("rae/v1/{text}/status")),
                Err(TopicError::BadSerial(expected))
            );
        }
    }

    #[test]
    fn overlong_serials_are_typed_errors(len in 65usize..200) {
        let text = "s".repeat(len);
        prop_assert_eq!(
            Topic::parse(&format!("rae/v1/{text}/inventory")),
            Err(TopicError::BadSerial(NameError::TooLong { len, max: 64 }))
        );
    }

    /// Any non-canonical session text (here: the uppercase, braced and simple forms of a real
    /// UUID, and arbitrary strings) is refused.
    #[test]
    fn invalid_session_texts_are_typed_errors(session in strategy::session(), junk in "\\PC{0,40}") {
        let uuid = session.as_uuid();
        let mut bad = vec![
            uuid.simple().to_string(),
            uuid.braced().to_string(),
            uuid.urn().to_string(),
        ];
        let upper = uuid.hyphenated().to_string().to_uppercase();
        if upper != session.to_string() {
            bad.push(upper);
        }
        if SessionId::parse(&junk).is_err() {
            bad.push(junk);
        }
        for text in bad {
            prop_assert_eq!(SessionId::parse(&text), Err(SessionIdError));
            // A `/` would split the level, which is another error, checked in the unit tests.
            if !text.contains('/') {
                prop_assert_eq!(
                    Topic::parse(&format!("rae/v1/rae-1/devices/{text}")),
                    Err(TopicError::BadSession(SessionIdError))
                );
            }
        }
    }

    #[test]
    fn text_keeps_bytes_exactly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let text = Text::new(bytes.clone());
        prop_assert_eq!(text.as_bytes(), bytes.as_slice());
        prop_assert_eq!(text.as_str().is_some(), std::str::from_utf8(&bytes).is_ok());
    }

    /// A Snapshot stands for all fields: applying a record's fields to any other record gives
    /// back the first record.
    #[test]
    fn fields_cover_the_whole_record(a in strategy::device_record(), b in strategy::device_record()) {
        let fields = a.fields();
        prop_assert_eq!(fields.len(), FieldId::COUNT);
        let ids: Vec<FieldId> = fields.iter().map(Field::id).collect();
        prop_assert_eq!(ids, FieldId::ALL.to_vec());
        let mut patched = b;
        for field in fields {
            patched.apply(field);
        }
        prop_assert_eq!(patched, a);
    }

    #[test]
    fn diff_is_minimal_and_exact(a in strategy::device_record(), b in strategy::device_record()) {
        let diff = a.diff(&b);
        for field in &diff {
            prop_assert_ne!(&a.field(field.id()), field);
        }
        let mut patched: DeviceRecord = a.clone();
        for field in diff {
            patched.apply(field);
        }
        prop_assert_eq!(patched, b);
    }
}
