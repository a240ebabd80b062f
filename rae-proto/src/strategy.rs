//! proptest strategies for every wire type (feature `proptest`), so that the agent's and the
//! sink's property tests draw from the same values as this crate's round-trip tests.
//!
//! Every strategy yields only values that encode: seq from 1, each Delta field at most once,
//! sizes far below the payload cap.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

use crate::command::{
    CommandError, CommandKind, CommandReply, CommandRequest, DeviceRef, ErrorKind, ReplyBody,
};
use crate::event::{AgentState, CloseReason, Envelope, Event, Inventory, SessionSeq, Status};
use crate::field::{Field, FieldId};
use crate::id::{RequesterId, Serial, SessionId};
use crate::mac::Mac;
use crate::record::{
    Availability, DeviceRecord, DialApp, DialAppState, Evidence, Liveness, MdnsService,
    Reachability, TxtEntry, UpnpDescription,
};
use crate::text::Text;
use crate::topic::Topic;

const NAME: &str = "[A-Za-z0-9_-]{1,64}";

fn short_string() -> impl Strategy<Value = String> {
    "\\PC{0,16}"
}

pub fn serial() -> impl Strategy<Value = Serial> {
    NAME.prop_filter_map("serial rule", |s| Serial::new(s).ok())
}

pub fn requester() -> impl Strategy<Value = RequesterId> {
    NAME.prop_filter_map("requester rule", |s| RequesterId::new(s).ok())
}

pub fn session() -> impl Strategy<Value = SessionId> {
    any::<[u8; 16]>().prop_map(SessionId::from_bytes)
}

pub fn mac() -> impl Strategy<Value = Mac> {
    any::<[u8; 6]>().prop_map(Mac)
}

/// Mostly UTF-8, sometimes arbitrary bytes, like hostnames on a real LAN.
pub fn text() -> impl Strategy<Value = Text> {
    prop_oneof![
        short_string().prop_map(Text::from),
        vec(any::<u8>(), 0..24).prop_map(Text::from),
    ]
}

pub fn dial_app_state() -> impl Strategy<Value = DialAppState> {
    prop_oneof![
        Just(DialAppState::Running),
        Just(DialAppState::Stopped),
        short_string().prop_map(DialAppState::Installable),
        Just(DialAppState::Hidden),
        short_string().prop_map(DialAppState::Other),
    ]
}

pub fn mdns_service() -> impl Strategy<Value = MdnsService> {
    let txt = (short_string(), option::of(text())).prop_map(|(key, value)| TxtEntry { key, value });
    (short_string(), short_string(), any::<u16>(), vec(txt, 0..4)).prop_map(
        |(service_type, instance, port, txt)| MdnsService {
            service_type,
            instance,
            port,
            txt,
        },
    )
}

pub fn upnp() -> impl Strategy<Value = UpnpDescription> {
    let part = || option::of(short_string());
    (part(), part(), part(), part(), part(), part()).prop_map(
        |(friendly_name, manufacturer, model_name, model_number, serial_number, udn)| {
            UpnpDescription {
                friendly_name,
                manufacturer,
                model_name,
                model_number,
                serial_number,
                udn,
            }
        },
    )
}

pub fn dial_app() -> impl Strategy<Value = DialApp> {
    (short_string(), dial_app_state(), option::of(short_string())).prop_map(
        |(name, state, additional_data)| DialApp {
            name,
            state,
            additional_data,
        },
    )
}

pub fn evidence() -> impl Strategy<Value = Evidence> {
    prop_oneof![
        Just(Evidence::ArpReply),
        Just(Evidence::ArpAnnounce),
        Just(Evidence::DhcpRequest),
        Just(Evidence::NdpAdvert),
        Just(Evidence::NdpSolicit),
        Just(Evidence::MdnsResponse),
        Just(Evidence::SsdpReply),
        Just(Evidence::SsdpNotify),
        Just(Evidence::HttpDescription),
        any::<u32>().prop_map(|count| Evidence::ProbeMissed { count }),
    ]
}

pub fn reachability() -> impl Strategy<Value = Reachability> {
    let state = prop_oneof![Just(Liveness::Online), Just(Liveness::Offline)];
    (state, evidence(), option::of(any::<u32>())).prop_map(|(state, evidence, rtt_us)| {
        Reachability {
            state,
            evidence,
            rtt_us,
        }
    })
}

pub fn availability() -> impl Strategy<Value = Availability> {
    select(Availability::ALL.to_vec())
}

pub fn device_record() -> impl Strategy<Value = DeviceRecord> {
    let identity = (
        mac(),
        option::of(any::<[u8; 4]>().prop_map(Ipv4Addr::from)),
        vec(any::<[u8; 16]>().prop_map(Ipv6Addr::from), 0..4),
        option::of(vec(any::<u8>(), 0..20)),
        option::of(text()),
        option::of(short_string()),
        any::<bool>(),
    );
    let fingerprint_and_services = (
        option::of(text()),
        vec(any::<u8>(), 0..16),
        vec(mdns_service(), 0..3),
        option::of(upnp()),
        vec(dial_app(), 0..3),
        option::of(short_string()),
    );
    let state = (reachability(), availability(), any::<i64>(), any::<i64>());
    (identity, fingerprint_and_services, state).prop_map(
        |(
            (mac, ipv4, ipv6, dhcp_client_id, hostname, vendor, locally_administered),
            (dhcp_vendor_class, dhcp_param_request_list, mdns_services, upnp, dial_apps, esn),
            (reachability, availability, first_seen_ms, last_seen_ms),
        )| DeviceRecord {
            mac,
            ipv4,
            ipv6,
            dhcp_client_id,
            hostname,
            vendor,
            locally_administered,
            dhcp_vendor_class,
            dhcp_param_request_list,
            mdns_services,
            upnp,
            dial_apps,
            esn,
            reachability,
            availability,
            first_seen_ms,
            last_seen_ms,
        },
    )
}

/// Any one field, of any kind.
pub fn field() -> impl Strategy<Value = Field> {
    (device_record(), select(FieldId::ALL.to_vec())).prop_map(|(record, id)| record.field(id))
}

/// The fields of a Delta: distinct ids, in any order.
pub fn delta_fields() -> impl Strategy<Value = Vec<Field>> {
    (
        device_record(),
        subsequence(FieldId::ALL.to_vec(), 0..=FieldId::COUNT).prop_shuffle(),
    )
        .prop_map(|(record, ids)| ids.into_iter().map(|id| record.field(id)).collect())
}

pub fn close_reason() -> impl Strategy<Value = CloseReason> {
    prop_oneof![Just(CloseReason::Gone), Just(CloseReason::Forgotten)]
}

pub fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        device_record().prop_map(|record| Event::Snapshot {
            record: Box::new(record)
        }),
        delta_fields().prop_map(|fields| Event::Delta { fields }),
        close_reason().prop_map(|reason| Event::Closed { reason }),
    ]
}

pub fn seq() -> impl Strategy<Value = u64> {
    1..=u64::MAX
}

pub fn envelope() -> impl Strategy<Value = Envelope> {
    (serial(), session(), seq(), any::<i64>(), event()).prop_map(
        |(serial, session, seq, at_ms, event)| Envelope {
            serial,
            session,
            seq,
            at_ms,
            event,
        },
    )
}

pub fn session_seq() -> impl Strategy<Value = SessionSeq> {
    (session(), seq()).prop_map(|(session, seq)| SessionSeq { session, seq })
}

pub fn inventory() -> impl Strategy<Value = Inventory> {
    (serial(), any::<i64>(), vec(session_seq(), 0..8)).prop_map(|(serial, at_ms, sessions)| {
        Inventory {
            serial,
            at_ms,
            sessions,
        }
    })
}

pub fn status() -> impl Strategy<Value = Status> {
    let state = prop_oneof![Just(AgentState::Online), Just(AgentState::Offline)];
    (serial(), state, short_string(), any::<i64>()).prop_map(
        |(serial, state, agent_version, at_ms)| Status {
            serial,
            state,
            agent_version,
            at_ms,
        },
    )
}

pub fn command_kind() -> impl Strategy<Value = CommandKind> {
    select(CommandKind::ALL.to_vec())
}

pub fn device_ref() -> impl Strategy<Value = DeviceRef> {
    prop_oneof![
        session().prop_map(DeviceRef::Session),
        mac().prop_map(DeviceRef::Mac)
    ]
}

pub fn command_request() -> impl Strategy<Value = CommandRequest> {
    prop_oneof![
        (device_ref(), availability()).prop_map(|(device, availability)| {
            CommandRequest::SetAvailability {
                device,
                availability,
            }
        }),
        (device_ref(), option::of(short_string()))
            .prop_map(|(device, esn)| CommandRequest::SetEsn { device, esn }),
        option::of(device_ref()).prop_map(|device| CommandRequest::Resync { device }),
        device_ref().prop_map(|device| CommandRequest::Forget { device }),
        Just(CommandRequest::Inventory),
    ]
}

pub fn command_reply() -> impl Strategy<Value = CommandReply> {
    let body = prop_oneof![
        Just(ReplyBody::Done),
        session_seq().prop_map(ReplyBody::Device),
        vec(session_seq(), 0..8).prop_map(ReplyBody::Sessions),
        inventory().prop_map(ReplyBody::Inventory),
    ];
    let kind = prop_oneof![
        Just(ErrorKind::UnknownDevice),
        Just(ErrorKind::BadRequest),
        Just(ErrorKind::Internal),
    ];
    prop_oneof![
        body.prop_map(CommandReply::Ok),
        (kind, short_string())
            .prop_map(|(kind, message)| CommandReply::Error(CommandError { kind, message })),
    ]
}

pub fn topic() -> impl Strategy<Value = Topic> {
    prop_oneof![
        (serial(), session()).prop_map(|(serial, session)| Topic::Device { serial, session }),
        serial().prop_map(|serial| Topic::Inventory { serial }),
        serial().prop_map(|serial| Topic::Status { serial }),
        (serial(), command_kind()).prop_map(|(serial, command)| Topic::Command { serial, command }),
        (serial(), requester()).prop_map(|(serial, requester)| Topic::Reply { serial, requester }),
    ]
}
