//! Why a frame was dropped, and counters per reason.
//!
//! Every parser fails with a [`DropReason`]: the [`Layer`] that gave up and a [`Detail`] that
//! names the cause. Each detail belongs to one [`DropKind`]:
//! - `Truncated`: the bytes end before a fixed header, or before a length that the layer's own
//!   header declares (a short capture, or a sender that lies about its length).
//! - `Malformed`: the bytes are there but inconsistent (bad checksum, bad version, an option
//!   that runs past its message, ...). A bad checksum is a malformation with its own detail, so
//!   a NIC that mangles checksums stands out in the counters.
//! - `Unsupported`: well-formed, but not something the agent reads (a TCP segment, an IPv4
//!   fragment, a QinQ frame, ...).

use core::fmt;

/// The protocol layer a frame was dropped at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    Ethernet,
    Arp,
    Ipv4,
    Ipv6,
    Udp,
    Dhcp,
    Icmpv6,
    Mdns,
}

impl Layer {
    pub const ALL: [Layer; 8] = [
        Layer::Ethernet,
        Layer::Arp,
        Layer::Ipv4,
        Layer::Ipv6,
        Layer::Udp,
        Layer::Dhcp,
        Layer::Icmpv6,
        Layer::Mdns,
    ];

    /// A lowercase name, usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Ethernet => "ethernet",
            Layer::Arp => "arp",
            Layer::Ipv4 => "ipv4",
            Layer::Ipv6 => "ipv6",
            Layer::Udp => "udp",
            Layer::Dhcp => "dhcp",
            Layer::Icmpv6 => "icmpv6",
            Layer::Mdns => "mdns",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three classes of drop the agent reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropKind {
    Truncated,
    Malformed,
    Unsupported,
}

impl DropKind {
    pub const ALL: [DropKind; 3] = [
        DropKind::Truncated,
        DropKind::Malformed,
        DropKind::Unsupported,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropKind::Truncated => "truncated",
            DropKind::Malformed => "malformed",
            DropKind::Unsupported => "unsupported",
        }
    }
}

impl fmt::Display for DropKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The precise cause of a drop. Each detail implies its [`DropKind`] (see [`Detail::kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detail {
    // Truncated.
    /// Shorter than the fixed header or the length the header declares.
    Truncated,

    // Malformed.
    /// A header or transport checksum does not verify (a UDP checksum of zero over IPv6 too).
    BadChecksum,
    /// A length field smaller than its own header, or otherwise inconsistent.
    BadLength,
    /// The IP version nibble does not match the EtherType.
    BadVersion,
    /// IPv4 IHL below 5.
    BadHeaderLength,
    /// ARP or DHCP hardware/protocol address lengths that do not fit their types.
    BadAddressLength,
    /// A DHCP `op` other than BOOTREQUEST or BOOTREPLY.
    BadOpcode,
    /// The DHCP magic cookie is missing.
    BadMagicCookie,
    /// An option that runs past its message, has length zero where that is forbidden, or has
    /// the wrong size for its code.
    BadOption,
    /// An ICMPv6 neighbour discovery message with a code other than 0.
    BadCode,
    /// A neighbour discovery message that did not arrive with hop limit 255 (so it was routed).
    BadHopLimit,
    /// A neighbour solicitation or advertisement whose target is a multicast address.
    BadTarget,
    /// A DNS name with a label over 63 bytes, over 255 bytes in all, a compression pointer
    /// that does not point backwards, or a reserved label type.
    BadName,

    // Unsupported.
    /// An EtherType the agent does not read (or an 802.3 length field).
    EtherType,
    /// VLAN tagging other than one 802.1Q tag (QinQ, 802.1ad).
    VlanTagging,
    /// An ARP or DHCP hardware type other than Ethernet.
    HardwareType,
    /// An ARP protocol type other than IPv4.
    ProtocolType,
    /// An ARP operation other than request or reply (RARP, InARP), or a DNS opcode other
    /// than QUERY (mDNS ignores the others, RFC 6762 §18.3).
    Operation,
    /// An IPv4 fragment.
    Fragment,
    /// An IPv6 extension header between the fixed header and the transport.
    ExtensionHeader,
    /// An IP protocol other than UDP (or ICMPv6 over IPv6).
    IpProtocol,
    /// UDP ports that are neither DHCP, mDNS nor SSDP.
    Port,
    /// An ICMPv6 type other than router/neighbour solicitation/advertisement.
    IcmpType,
    /// A BOOTP message without a DHCP message type option.
    Bootp,
}

impl Detail {
    pub const ALL: [Detail; 24] = [
        Detail::Truncated,
        Detail::BadChecksum,
        Detail::BadLength,
        Detail::BadVersion,
        Detail::BadHeaderLength,
        Detail::BadAddressLength,
        Detail::BadOpcode,
        Detail::BadMagicCookie,
        Detail::BadOption,
        Detail::BadCode,
        Detail::BadHopLimit,
        Detail::BadTarget,
        Detail::BadName,
        Detail::EtherType,
        Detail::VlanTagging,
        Detail::HardwareType,
        Detail::ProtocolType,
        Detail::Operation,
        Detail::Fragment,
        Detail::ExtensionHeader,
        Detail::IpProtocol,
        Detail::Port,
        Detail::IcmpType,
        Detail::Bootp,
    ];

    pub fn kind(self) -> DropKind {
        match self {
            Detail::Truncated => DropKind::Truncated,
            Detail::BadChecksum
            | Detail::BadLength
            | Detail::BadVersion
            | Detail::BadHeaderLength
            | Detail::BadAddressLength
            | Detail::BadOpcode
            | Detail::BadMagicCookie
            | Detail::BadOption
            | Detail::BadCode
            | Detail::BadHopLimit
            | Detail::BadTarget
            | Detail::BadName => DropKind::Malformed,
            Detail::EtherType
            | Detail::VlanTagging
            | Detail::HardwareType
            | Detail::ProtocolType
            | Detail::Operation
            | Detail::Fragment
            | Detail::ExtensionHeader
            | Detail::IpProtocol
            | Detail::Port
            | Detail::IcmpType
            | Detail::Bootp => DropKind::Unsupported,
        }
    }

    /// A snake_case name, usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Detail::Truncated => "truncated",
            Detail::BadChecksum => "bad_checksum",
            Detail::BadLength => "bad_length",
            Detail::BadVersion => "bad_version",
            Detail::BadHeaderLength => "bad_header_length",
            Detail::BadAddressLength => "bad_address_length",
            Detail::BadOpcode => "bad_opcode",
            Detail::BadMagicCookie => "bad_magic_cookie",
            Detail::BadOption => "bad_option",
            Detail::BadCode => "bad_code",
            Detail::BadHopLimit => "bad_hop_limit",
            Detail::BadTarget => "bad_target",
            Detail::BadName => "bad_name",
            Detail::EtherType => "ethertype",
            Detail::VlanTagging => "vlan_tagging",
            Detail::HardwareType => "hardware_type",
            Detail::ProtocolType => "protocol_type",
            Detail::Operation => "operation",
            Detail::Fragment => "fragment",
            Detail::ExtensionHeader => "extension_header",
            Detail::IpProtocol => "ip_protocol",
            Detail::Port => "port",
            Detail::IcmpType => "icmp_type",
            Detail::Bootp => "bootp",
        }
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a frame was dropped: where, and what was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
#[error("{layer}: {} ({detail})", detail.kind())]
pub struct DropReason {
    pub layer: Layer,
    pub detail: Detail,
}

impl DropReason {
    pub const fn new(layer: Layer, detail: Detail) -> Self {
        DropReason { layer, detail }
    }

    pub const fn truncated(layer: Layer) -> Self {
        DropReason::new(layer, Detail::Truncated)
    }

    pub fn kind(&self) -> DropKind {
        self.detail.kind()
    }
}

const LAYERS: usize = Layer::ALL.len();
const DETAILS: usize = Detail::ALL.len();

/// Drop counts per layer and detail. Plain counters: the capture thread owns one and
/// reports snapshots; nothing here reads a clock or logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropCounters {
    counts: [[u64; DETAILS]; LAYERS],
}

impl Default for DropCounters {
    fn default() -> Self {
        DropCounters::new()
    }
}

impl DropCounters {
    pub const fn new() -> Self {
        DropCounters {
            counts: [[0; DETAILS]; LAYERS],
        }
    }

    pub fn record(&mut self, reason: DropReason) {
        let slot = &mut self.counts[reason.layer as usize][reason.detail as usize];
        *slot = slot.saturating_add(1);
    }

    /// Drops for exactly this layer and detail.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.layer as usize][reason.detail as usize]
    }

    /// Drops at `layer` of `kind`, all details together.
    pub fn of_kind(&self, layer: Layer, kind: DropKind) -> u64 {
        Detail::ALL
            .iter()
            .filter(|detail| detail.kind() == kind)
            .fold(0u64, |sum, detail| {
                sum.saturating_add(self.get(DropReason::new(layer, *detail)))
            })
    }

    pub fn total(&self) -> u64 {
        self.counts
            .iter()
            .flatten()
            .fold(0u64, |sum, count| sum.saturating_add(*count))
    }

    /// The non-zero counters, ordered by layer then detail.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        Layer::ALL.iter().flat_map(move |layer| {
            Detail::ALL.iter().filter_map(move |detail| {
                let reason = DropReason::new(*layer, *detail);
                let count = self.get(reason);
                (count > 0).then_some((reason, count))
            })
        })
    }

    /// Adds another set of counters into this one (for example a per-interface set into a total).
    pub fn merge(&mut self, other: &DropCounters) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            for (a, b) in mine.iter_mut().zip(theirs.iter()) {
                *a = a.saturating_add(*b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_tables_match_discriminants() {
        for (i, layer) in Layer::ALL.iter().enumerate() {
            assert_eq!(*layer as usize, i, "{layer} out of place in Layer::ALL");
        }
        for (i, detail) in Detail::ALL.iter().enumerate() {
            assert_eq!(*detail as usize, i, "{detail} out of place in Detail::ALL");
        }
    }

    #[test]
    fn counters_count_per_reason_and_kind() {
        let mut counters = DropCounters::new();
        let bad_sum = DropReason::new(Layer::Udp, Detail::BadChecksum);
        let short = DropReason::truncated(Layer::Udp);
        let tcp = DropReason::new(Layer::Ipv4, Detail::IpProtocol);
        counters.record(bad_sum);
        counters.record(bad_sum);
        counters.record(short);
        counters.record(tcp);

        assert_eq!(counters.get(bad_sum), 2);
        assert_eq!(counters.get(short), 1);
        assert_eq!(counters.of_kind(Layer::Udp, DropKind::Malformed), 2);
        assert_eq!(counters.of_kind(Layer::Udp, DropKind::Truncated), 1);
        assert_eq!(counters.of_kind(Layer::Ipv4, DropKind::Unsupported), 1);
        assert_eq!(counters.of_kind(Layer::Ipv4, DropKind::Malformed), 0);
        assert_eq!(counters.total(), 4);
        let listed: Vec<_> = counters.iter().collect();
        assert_eq!(listed, vec![(tcp, 1), (short, 1), (bad_sum, 2)]);

        let mut sum = DropCounters::default();
        sum.merge(&counters);
        sum.merge(&counters);
        assert_eq!(sum.get(bad_sum), 4);
        assert_eq!(sum.total(), 8);
    }

    #[test]
    fn reason_displays_layer_kind_and_detail() {
        let reason = DropReason::new(Layer::Ipv4, Detail::BadChecksum);
        assert_eq!(reason.to_string(), "ipv4: malformed (bad_checksum)");
        assert_eq!(reason.kind(), DropKind::Malformed);
        assert_eq!(
            DropReason::truncated(Layer::Dhcp).to_string(),
            "dhcp: truncated (truncated)"
        );
    }
}
