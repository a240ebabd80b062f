//! mDNS responses seen by the capture, decoded into the sender's host name and services, and
//! the service types they announce (which the querier then asks for).

use rae_proto::Mac;

use crate::probe::MdnsSettings;
use crate::registry::mdns::{mdns_decode, MdnsDecodeSettings, MdnsDecoded};
use crate::wire::DropReason;

/// The decoder with the agent's TXT key selection and bounds.
#[derive(Debug, Clone)]
pub struct MdnsDecoder {
    settings: MdnsDecodeSettings,
}

impl Default for MdnsDecoder {
    fn default() -> Self {
        MdnsDecoder {
            settings: MdnsDecodeSettings::from_browse(&MdnsSettings::default()),
        }
    }
}

impl MdnsDecoder {
    /// The observations and service types an mDNS packet from `src` carries (none for queries).
    pub fn decode(&self, src: Mac, payload: &[u8], at_ms: i64) -> Result<MdnsDecoded, DropReason> {
        mdns_decode(src, payload, at_ms, &self.settings)
    }
}
