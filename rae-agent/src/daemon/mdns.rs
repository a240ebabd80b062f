//! mDNS responses seen by the capture, decoded into the sender's host name and services.

use rae_proto::Mac;

use crate::registry::Observation;
use crate::wire::DropReason;

/// The observations an mDNS packet from `src` carries (none for queries).
pub fn decode(src: Mac, payload: &[u8], at_ms: i64) -> Result<Vec<Observation>, DropReason> {
    let _ = (src, payload, at_ms);
    Ok(Vec::new())
}
