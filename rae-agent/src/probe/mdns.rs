//! mDNS / DNS-SD settings shared by the decoder of captured answers
//! ([`crate::registry::mdns`]) and the LAN-only querier ([`super::mdns_query`]): which TXT keys
//! are kept, how long values may be, and how many types, hosts and services are tracked.
//!
//! The agent once browsed with the `mdns-sd` crate; it joined the mDNS group on every interface
//! at start (IGMP/MLD on the router's WAN side), so it was replaced by passive decoding plus
//! queries sent on the LAN port only.

use std::time::Duration;

/// The DNS-SD service type enumeration (RFC 6763 §9).
pub const META_QUERY: &str = "_services._dns-sd._udp.local.";

/// Settings of mDNS browsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdnsSettings {
    /// TXT keys kept (case-insensitive); others are dropped.
    pub txt_keys: Vec<String>,
    /// Longest TXT value kept, bytes (longer ones are cut).
    pub max_txt_value: usize,
    /// Service types browsed at most.
    pub max_types: usize,
    pub max_hosts: usize,
    pub max_services_per_host: usize,
    /// Shortest time between two reports of one host.
    pub report_every: Duration,
    /// How often the type enumeration restarts (catching types that appeared since), and the
    /// shortest time before a type whose browse stopped is browsed again.
    pub rebrowse_every: Duration,
}

impl Default for MdnsSettings {
    fn default() -> Self {
        Self {
            txt_keys: [
                "md",
                "fn",
                "model",
                "manufacturer",
                "mf",
                "id",
                "deviceid",
                "ty",
            ]
            .map(str::to_owned)
            .to_vec(),
            max_txt_value: 128,
            max_types: 64,
            max_hosts: 512,
            max_services_per_host: 32,
            report_every: Duration::from_secs(10),
            rebrowse_every: Duration::from_secs(15 * 60),
        }
    }
}
