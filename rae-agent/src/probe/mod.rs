//! Active probing of LAN devices: liveness, DNS-SD queries and SSDP/UPnP/DIAL identification.
//!
//! Parts:
//! - [`liveness`]: unicast ARP requests and Neighbor Solicitations on the probe schedule the
//!   registry core sets, rate-limited in total; matches answers to RTTs.
//! - [`mdns_query`]: DNS-SD queries (type enumeration, then each type) sent on the LAN port
//!   only, joining no group; the answers come back through the capture. [`mdns`]: the shared
//!   settings (TXT keys kept, bounds).
//! - [`identify`]: M-SEARCH from the LAN address, then per answering device its UPnP
//!   description and DIAL applications ([`Identified`]), each device rate-limited by
//!   [`limiter`].
//! - [`ssdp`], [`upnp`], [`dial`]: pure parsers (SSDP messages, device descriptions, DIAL
//!   application resources); [`http`]: the minimal GET client they are fetched with.
//!
//! Each task owns its socket or daemon and sends typed results, keyed by IP address, on a
//! bounded channel; mapping an address to a device (MAC) is the registry core's job.
//!
//! Network rule: HTTP goes only to the address the device answered from; a LOCATION or
//! Application-URL naming another host is ignored, redirects are not followed, names are
//! never resolved.
//!
//! Limitations: SSDP is IPv4 only (no `[FF02::C]` search); NOTIFYs reach identification only if
//! another part (capture) hands them to [`identify::Sightings`].

pub mod dial;
pub mod http;
pub mod identify;
pub mod limiter;
pub mod liveness;
pub mod mdns;
pub mod mdns_query;
pub mod ssdp;
pub mod upnp;

pub use identify::{Identified, SsdpSearch, SsdpSettings};
pub use limiter::FetchLimits;
pub use mdns::MdnsSettings;

/// Why a probe task or an identification failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{what}: {source}")]
    Socket {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("interface {interface} has no IPv4 address")]
    NoIpv4 { interface: String },
    #[error("interface {interface} does not exist or has no MAC address")]
    NoInterface { interface: String },
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        source: http::HttpError,
    },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: u16 },
    #[error("document at {url}: {source}")]
    Xml { url: String, source: upnp::XmlError },
}
