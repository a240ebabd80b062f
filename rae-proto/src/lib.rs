//! rae-proto: the wire contract between `rae-agent` on each RAE and `cloud-sink` in the cloud.
//! Pure data and pure functions: no I/O, no clock, no randomness.
//!
//! Parts:
//! - [`topic`]: MQTT topic names `rae/v1/{serial}/...`, built with `Display`, parsed with
//!   [`Topic::parse`] into typed values or a typed [`TopicError`]; subscription filters in
//!   [`topic::filter`].
//! - [`id`]: [`Serial`], [`SessionId`], [`RequesterId`] and their text rules.
//! - [`event`]: what an RAE publishes: [`Envelope`] (one device event: [`Event::Snapshot`],
//!   [`Event::Delta`], [`Event::Closed`]), [`Inventory`], [`Status`].
//! - [`record`]: the v1 [`DeviceRecord`] and its parts; [`field`]: the record as addressable
//!   [`Field`]s with stable [`FieldId`] numbers, the unit of the sink's per-field
//!   last-writer-wins rule; [`Mac`] and [`Text`] (bytes kept exactly, displayed lossily).
//! - [`command`]: cloud -> RAE [`CommandRequest`]s and their [`CommandReply`].
//! - [`codec`]: the byte form of every payload: a schema version byte ([`SCHEMA_VERSION`]) then
//!   `postcard`. Each payload type has `encode()` and `decode()`; decoding never panics.
//! - `strategy` (feature `proptest`): proptest strategies for every type, for other crates'
//!   property tests.
//!
//! Limits:
//! - Only schema v1 exists. Evolution within a version is by appending enum variants only
//!   (postcard writes variant indices and no field names); see [`codec`].
//! - Payloads over [`MAX_PAYLOAD_BYTES`] (256 KiB) are neither encoded nor decoded.
//! - postcard accepts over-long varints, so distinct byte strings can decode to the same value;
//!   encoding is canonical, so `encode(decode(b))` may be shorter than `b`.
//! - The record's list-ordering conventions (sorted IPv6, services, apps) are the agent's to
//!   keep; decoding does not enforce them.

pub mod codec;
pub mod command;
pub mod event;
pub mod field;
pub mod id;
pub mod mac;
pub mod record;
#[cfg(feature = "proptest")]
pub mod strategy;
pub mod text;
pub mod topic;

pub use codec::{ContentError, DecodeError, EncodeError, MAX_PAYLOAD_BYTES, SCHEMA_VERSION};
pub use command::{
    check_esn, CommandError, CommandKind, CommandReply, CommandRequest, DeviceRef,
    DeviceRefParseError, ErrorKind, EsnError, Pong, ReplyBody, MAX_ESN_LEN,
};
pub use event::{AgentState, CloseReason, Envelope, Event, Inventory, SessionSeq, Status};
pub use field::{Field, FieldId};
pub use id::{NameError, RequesterId, Serial, SessionId, SessionIdError, MAX_NAME_LEN};
pub use mac::{Mac, MacParseError};
pub use record::{
    Availability, AvailabilityParseError, DeviceRecord, DialApp, DialAppState, Evidence, Liveness,
    MdnsService, Reachability, TxtEntry, UpnpDescription,
};
pub use text::Text;
pub use topic::{Topic, TopicError};
