//! The device record, schema v1: everything the RAE knows about one device session.
//!
//! Enum variants are encoded by their index, in declaration order: new variants are only ever
//! appended, and the wire index of each is written next to it.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::mac::Mac;
use crate::text::Text;

/// One device as the RAE sees it. A Snapshot carries all of it; a Delta carries some of its
/// fields as [`Field`](crate::Field)s.
///
/// Times are unix milliseconds on the RAE's clock, informational only: ordering comes from `seq`.
/// Conventions the agent keeps, so that equal states compare equal: `ipv6` is sorted and free of
/// duplicates; `mdns_services` is sorted by (type, instance); `dial_apps` by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub mac: Mac,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
    /// DHCP option 61, raw (usually a type byte followed by the hardware address).
    pub dhcp_client_id: Option<Vec<u8>>,
    /// DHCP option 12, or the mDNS host name when DHCP gave none.
    pub hostname: Option<Text>,
    /// Organisation owning the MAC's OUI; `None` when unknown or locally administered.
    pub vendor: Option<String>,
    /// The MAC's U/L bit, i.e. a randomized MAC; the agent sets it from
    /// [`Mac::is_locally_administered`].
    pub locally_administered: bool,
    /// DHCP option 60, raw.
    pub dhcp_vendor_class: Option<Text>,
    /// DHCP option 55 in the order the client sent it (the order is part of the fingerprint).
    /// Empty when no request carried the option.
    pub dhcp_param_request_list: Vec<u8>,
    pub mdns_services: Vec<MdnsService>,
    pub upnp: Option<UpnpDescription>,
    pub dial_apps: Vec<DialApp>,
    /// The device's test identity (e.g. a Netflix ESN), from DIAL additional data or an operator.
    pub esn: Option<String>,
    pub reachability: Reachability,
    pub availability: Availability,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

impl DeviceRecord {
    /// A record for a device first seen at `now_ms`, with only what one frame can tell.
    pub fn new(mac: Mac, evidence: Evidence, now_ms: i64) -> Self {
        Self {
            mac,
            ipv4: None,
            ipv6: Vec::new(),
            dhcp_client_id: None,
            hostname: None,
            vendor: None,
            locally_administered: mac.is_locally_administered(),
            dhcp_vendor_class: None,
            dhcp_param_request_list: Vec::new(),
            mdns_services: Vec::new(),
            upnp: None,
            dial_apps: Vec::new(),
            esn: None,
            reachability: Reachability {
                state: Liveness::Online,
                evidence,
                rtt_us: None,
            },
            availability: Availability::Available,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
        }
    }
}

/// One DNS-SD service instance the device announced.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MdnsService {
    /// Service type with domain, e.g. `_googlecast._tcp.local.`.
    pub service_type: String,
    /// Instance name (UTF-8 per DNS-SD), e.g. `Living Room TV`.
    pub instance: String,
    pub port: u16,
    /// The TXT entries the agent selected as useful (model, id, firmware ...), in the order
    /// the device sent them.
    pub txt: Vec<TxtEntry>,
}

/// One TXT record entry. `value` is `None` for a bare `key` (a boolean attribute) and
/// `Some` (possibly empty) for `key=value`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxtEntry {
    pub key: String,
    pub value: Option<Text>,
}

/// The parts of a UPnP device description (`<device>` element) that identify the device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UpnpDescription {
    pub friendly_name: Option<String>,
    pub manufacturer: Option<String>,
    pub model_name: Option<String>,
    pub model_number: Option<String>,
    pub serial_number: Option<String>,
    /// Unique Device Name, e.g. `uuid:2fac1234-31f8-11b4-a222-08002b34c003`.
    pub udn: Option<String>,
}

/// One DIAL application as last queried on the device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DialApp {
    /// Application name as in the DIAL REST URL, e.g. `Netflix`, `YouTube`.
    pub name: String,
    pub state: DialAppState,
    /// The `<additionalData>` element's content, verbatim.
    pub additional_data: Option<String>,
}

/// The `<state>` of a DIAL application.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DialAppState {
    /// wire index 0
    Running,
    /// wire index 1
    Stopped,
    /// wire index 2; `installable=URL`, the URL kept (empty when the device gave none).
    Installable(String),
    /// wire index 3
    Hidden,
    /// wire index 4; any other value, verbatim.
    Other(String),
}

impl DialAppState {
    /// Maps the text of a DIAL `<state>` element.
    pub fn from_dial(text: &str) -> Self {
        match text.trim() {
            "running" => Self::Running,
            "stopped" => Self::Stopped,
            "hidden" => Self::Hidden,
            "installable" => Self::Installable(String::new()),
            other => match other.strip_prefix("installable=") {
                Some(url) => Self::Installable(url.to_owned()),
                None => Self::Other(other.to_owned()),
            },
        }
    }
}

impl fmt::Display for DialAppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Running => f.write_str("running"),
            Self::Stopped => f.write_str("stopped"),
            Self::Installable(url) if url.is_empty() => f.write_str("installable"),
            Self::Installable(url) => write!(f, "installable={url}"),
            Self::Hidden => f.write_str("hidden"),
            Self::Other(text) => f.write_str(text),
        }
    }
}

/// Whether the device answers, why the agent thinks so, and how fast it last answered a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reachability {
    pub state: Liveness,
    /// The latest observation that decided `state`.
    pub evidence: Evidence,
    /// Round-trip time of the last answered ARP/NDP probe, in microseconds.
    pub rtt_us: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Liveness {
    /// wire index 0
    Online,
    /// wire index 1
    Offline,
}

impl Liveness {
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the agent last saw of the device. All but `ProbeMissed` are frames from the device and
/// make it online; `ProbeMissed` is the hysteresis that makes it offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Evidence {
    /// wire index 0: a reply to the agent's ARP probe.
    ArpReply,
    /// wire index 1: an ARP request or gratuitous ARP the device sent on its own.
    ArpAnnounce,
    /// wire index 2: a DHCP DISCOVER, REQUEST or INFORM.
    DhcpRequest,
    /// wire index 3: a Neighbor Advertisement (solicited by a probe or not).
    NdpAdvert,
    /// wire index 4: a Neighbor or Router Solicitation the device sent.
    NdpSolicit,
    /// wire index 5: an mDNS response or announcement.
    MdnsResponse,
    /// wire index 6: an SSDP M-SEARCH response.
    SsdpReply,
    /// wire index 7: an SSDP NOTIFY.
    SsdpNotify,
    /// wire index 8: a UPnP or DIAL description fetched over HTTP.
    HttpDescription,
    /// wire index 9: this many consecutive liveness probes went unanswered.
    ProbeMissed { count: u32 },
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ArpReply => f.write_str("arp_reply"),
            Self::ArpAnnounce => f.write_str("arp_announce"),
            Self::DhcpRequest => f.write_str("dhcp_request"),
            Self::NdpAdvert => f.write_str("ndp_advert"),
            Self::NdpSolicit => f.write_str("ndp_solicit"),
            Self::MdnsResponse => f.write_str("mdns_response"),
            Self::SsdpReply => f.write_str("ssdp_reply"),
            Self::SsdpNotify => f.write_str("ssdp_notify"),
            Self::HttpDescription => f.write_str("http_description"),
            Self::ProbeMissed { count } => write!(f, "probe_missed({count})"),
        }
    }
}

/// Whether test automation may take the device. Set by an operator (`raectl`) or a cloud command,
/// never by the agent on its own.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Availability {
    /// wire index 0
    #[default]
    Available,
    /// wire index 1
    InTest,
    /// wire index 2
    Maintenance,
}

/// Why a text is not an availability.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("availability must be one of `available`, `in_test`, `maintenance`")]
pub struct AvailabilityParseError;

impl Availability {
    pub const ALL: [Availability; 3] = [Self::Available, Self::InTest, Self::Maintenance];

    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::InTest => "in_test",
            Self::Maintenance => "maintenance",
        }
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Availability {
    type Err = AvailabilityParseError;
    fn from_str(text: &str) -> Result<Self, AvailabilityParseError> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == text)
            .ok_or(AvailabilityParseError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_record_takes_the_flag_from_the_mac() {
        let record = DeviceRecord::new(Mac([0x06, 1, 2, 3, 4, 5]), Evidence::DhcpRequest, 42);
        assert!(record.locally_administered);
        assert_eq!(record.first_seen_ms, 42);
        assert_eq!(record.last_seen_ms, 42);
        assert_eq!(record.reachability.state, Liveness::Online);
        assert_eq!(record.availability, Availability::Available);
    }

    #[test]
    fn dial_state_text() {
        for (text, state) in [
            ("running", DialAppState::Running),
            ("stopped", DialAppState::Stopped),
            ("hidden", DialAppState::Hidden),
            ("installable", DialAppState::Installable(String::new())),
            (
                "installable=https://store.example/app",
                DialAppState::Installable("https://store.example/app".into()),
            ),
            ("suspended", DialAppState::Other("suspended".into())),
        ] {
            assert_eq!(DialAppState::from_dial(text), state);
            assert_eq!(state.to_string(), text);
        }
    }

    #[test]
    fn availability_text() {
        for a in Availability::ALL {
            assert_eq!(a.as_str().parse::<Availability>(), Ok(a));
        }
        assert_eq!("busy".parse::<Availability>(), Err(AvailabilityParseError));
    }
}
