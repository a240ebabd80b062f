//! ICMPv6 neighbour discovery (RFC 4861): router solicitation and advertisement, neighbour
//! solicitation and advertisement. Other ICMPv6 types are Unsupported.
//!
//! Validation follows RFC 4861 sections 6.1 and 7.1 where it matters to an observer: hop limit
//! 255, code 0, a correct checksum, options of non-zero length inside the message, no
//! multicast target, and no source link-layer option from the unspecified address. Options
//! the agent does not read are length-checked and skipped.

use std::net::Ipv6Addr;

use super::bytes::{self, Field};
use super::checksum::Checksum;
use super::drops::{Detail, DropReason, Layer};
use super::ethernet::{self, EtherType, EthernetRepr, MacAddr, VlanTag};
use super::ipv4::protocol;
use super::ipv6::{self, Ipv6Repr};
use super::EmitError;

/// The ICMPv6 types of neighbour discovery.
pub mod message_type {
    pub const ROUTER_SOLICIT: u8 = 133;
    pub const ROUTER_ADVERT: u8 = 134;
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    pub const NEIGHBOR_ADVERT: u8 = 136;
}
use message_type as ty;

/// Neighbour discovery option types.
pub mod option {
    pub const SOURCE_LINK_ADDR: u8 = 1;
    pub const TARGET_LINK_ADDR: u8 = 2;
    pub const PREFIX_INFO: u8 = 3;
    pub const MTU: u8 = 5;
}

mod field {
    use super::Field;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const MIN_LEN: usize = 4;
    // Router advertisement.
    pub const CUR_HOP_LIMIT: usize = 4;
    pub const RA_FLAGS: usize = 5;
    pub const ROUTER_LIFETIME: usize = 6;
    pub const REACHABLE_TIME: usize = 8;
    pub const RETRANS_TIMER: usize = 12;
    // Neighbour advertisement.
    pub const NA_FLAGS: usize = 4;
    // Neighbour solicitation and advertisement.
    pub const TARGET: Field = 8..24;
    // Prefix information option, from the start of the option.
    pub const PREFIX_LEN: usize = 2;
    pub const PREFIX_FLAGS: usize = 3;
    pub const VALID_LIFETIME: usize = 4;
    pub const PREFERRED_LIFETIME: usize = 8;
    pub const PREFIX: Field = 16..32;
    // MTU option.
    pub const MTU: usize = 4;
}

/// The length of the fixed part of an ND message of type `msg_type` (0 if not ND).
pub fn header_len(msg_type: u8) -> usize {
    match msg_type {
        ty::ROUTER_SOLICIT => 8,
        ty::ROUTER_ADVERT => 16,
        ty::NEIGHBOR_SOLICIT | ty::NEIGHBOR_ADVERT => field::TARGET.end,
        _ => 0,
    }
}

fn drop(detail: Detail) -> DropReason {
    DropReason::new(Layer::Icmpv6, detail)
}

/// A checked view of an ICMPv6 message; for ND types, the fixed part is there too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), DropReason> {
        let len = self.buffer.as_ref().len();
        if len < field::MIN_LEN || len < header_len(self.msg_type()) {
            return Err(DropReason::truncated(Layer::Icmpv6));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn msg_type(&self) -> u8 {
        // Guarded so that check_len can ask before the length is known to be enough.
        self.buffer.as_ref().first().copied().unwrap_or(0)
    }

    pub fn code(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::CODE)
    }

    pub fn checksum(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// `read(buffer)` if the message is of type `msg_type`, whose fixed part `new_checked`
    /// has seen; `None` for other types, which lack the field.
    fn field_of<V>(&self, msg_type: u8, read: impl FnOnce(&[u8]) -> V) -> Option<V> {
        (self.msg_type() == msg_type).then(|| read(self.buffer.as_ref()))
    }

    /// Router advertisement: the hop limit hosts should use.
    pub fn cur_hop_limit(&self) -> Option<u8> {
        self.field_of(ty::ROUTER_ADVERT, |b| bytes::u8_at(b, field::CUR_HOP_LIMIT))
    }

    /// Router advertisement flags (M, O, and the rest as sent).
    pub fn router_flags(&self) -> Option<u8> {
        self.field_of(ty::ROUTER_ADVERT, |b| bytes::u8_at(b, field::RA_FLAGS))
    }

    /// Router advertisement: seconds this router serves as a default router.
    pub fn router_lifetime(&self) -> Option<u16> {
        self.field_of(ty::ROUTER_ADVERT, |b| {
            bytes::u16_at(b, field::ROUTER_LIFETIME)
        })
    }

    /// Router advertisement: milliseconds.
    pub fn reachable_time(&self) -> Option<u32> {
        self.field_of(ty::ROUTER_ADVERT, |b| {
            bytes::u32_at(b, field::REACHABLE_TIME)
        })
    }

    /// Router advertisement: milliseconds.
    pub fn retrans_timer(&self) -> Option<u32> {
        self.field_of(ty::ROUTER_ADVERT, |b| {
            bytes::u32_at(b, field::RETRANS_TIMER)
        })
    }

    /// Neighbour advertisement flags R, S, O.
    pub fn neighbor_flags(&self) -> Option<NeighborFlags> {
        self.field_of(ty::NEIGHBOR_ADVERT, |b| {
            NeighborFlags::from_byte(bytes::u8_at(b, field::NA_FLAGS))
        })
    }

    /// The target of a neighbour solicitation or advertisement.
    pub fn target(&self) -> Option<Ipv6Addr> {
        let msg_type = self.msg_type();
        if msg_type != ty::NEIGHBOR_SOLICIT && msg_type != ty::NEIGHBOR_ADVERT {
            return None;
        }
        self.field_of(msg_type, |b| {
            Ipv6Addr::from(bytes::array::<16>(b, field::TARGET.start))
        })
    }

    /// Verifies the checksum over the IPv6 pseudo-header.
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let msg = self.buffer.as_ref();
        let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        let mut sum = Checksum::new();
        sum.ipv6_pseudo_header(src, dst, protocol::ICMPV6, len)
            .add(msg);
        sum.finish() == 0
    }
}

impl<'a> Packet<&'a [u8]> {
    /// The options after the fixed part of an ND message (none for other types).
    pub fn options(&self) -> NdpOptions<'a> {
        let rest = match header_len(self.msg_type()) {
            0 => &[],
            start => bytes::rest(self.buffer, start),
        };
        NdpOptions { rest }
    }
}

/// Neighbour advertisement flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NeighborFlags {
    /// R: the sender is a router.
    pub router: bool,
    /// S: sent in answer to a solicitation (what a liveness probe waits for).
    pub solicited: bool,
    /// O: the advertisement should override a cached link-layer address.
    pub overrides: bool,
}

impl NeighborFlags {
    fn from_byte(byte: u8) -> Self {
        NeighborFlags {
            router: byte & 0x80 != 0,
            solicited: byte & 0x40 != 0,
            overrides: byte & 0x20 != 0,
        }
    }

    fn to_byte(self) -> u8 {
        (u8::from(self.router) << 7)
            | (u8::from(self.solicited) << 6)
            | (u8::from(self.overrides) << 5)
    }
}

/// A prefix information option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixInfo {
    pub prefix_len: u8,
    /// L: the prefix is on-link.
    pub on_link: bool,
    /// A: usable for stateless address autoconfiguration.
    pub autonomous: bool,
    pub valid_lifetime: u32,
    pub preferred_lifetime: u32,
    pub prefix: Ipv6Addr,
}

/// One ND option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NdpOption<'a> {
    SourceLinkAddr(MacAddr),
    TargetLinkAddr(MacAddr),
    PrefixInfo(PrefixInfo),
    Mtu(u32),
    /// An option the agent does not read: its type and everything after the length byte.
    Other {
        kind: u8,
        data: &'a [u8],
    },
}

impl<'a> NdpOption<'a> {
    /// Reads an option whose whole bytes (type and length included) are `opt`.
    fn parse(opt: &'a [u8]) -> Result<Self, DropReason> {
        let kind = bytes::u8_at(opt, 0);
        let link_addr = || match opt {
            // One 8-byte unit: type, length, then the 6-byte Ethernet address.
            [_, _, mac @ ..] if opt.len() == 8 => mac.try_into().map(MacAddr).ok(),
            _ => None,
        };
        let parsed = match kind {
            option::SOURCE_LINK_ADDR => link_addr().map(NdpOption::SourceLinkAddr),
            option::TARGET_LINK_ADDR => link_addr().map(NdpOption::TargetLinkAddr),
            option::PREFIX_INFO if opt.len() == 32 => {
                let flags = bytes::u8_at(opt, field::PREFIX_FLAGS);
                Some(NdpOption::PrefixInfo(PrefixInfo {
                    prefix_len: bytes::u8_at(opt, field::PREFIX_LEN),
                    on_link: flags & 0x80 != 0,
                    autonomous: flags & 0x40 != 0,
                    valid_lifetime: bytes::u32_at(opt, field::VALID_LIFETIME),
                    preferred_lifetime: bytes::u32_at(opt, field::PREFERRED_LIFETIME),
                    prefix: Ipv6Addr::from(bytes::array::<16>(opt, field::PREFIX.start)),
                }))
            }
            option::PREFIX_INFO => None,
            option::MTU if opt.len() == 8 => Some(NdpOption::Mtu(bytes::u32_at(opt, field::MTU))),
            option::MTU => None,
            _ => Some(NdpOption::Other {
                kind,
                data: bytes::rest(opt, 2),
            }),
        };
        parsed.ok_or(drop(Detail::BadOption))
    }

    /// Bytes this option takes on the wire.
    fn wire_len(&self) -> usize {
        match self {
            NdpOption::SourceLinkAddr(_) | NdpOption::TargetLinkAddr(_) | NdpOption::Mtu(_) => 8,
            NdpOption::PrefixInfo(_) => 32,
            NdpOption::Other { data, .. } => 2 + data.len(),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let len_units = u8::try_from(self.wire_len() / 8).unwrap_or(0);
        match self {
            NdpOption::SourceLinkAddr(mac) | NdpOption::TargetLinkAddr(mac) => {
                let kind = if matches!(self, NdpOption::SourceLinkAddr(_)) {
                    option::SOURCE_LINK_ADDR
                } else {
                    option::TARGET_LINK_ADDR
                };
                bytes::put(out, 0, &[kind, len_units]);
                bytes::put(out, 2, &mac.0);
            }
            NdpOption::PrefixInfo(p) => {
                bytes::put(out, 0, &[option::PREFIX_INFO, len_units, p.prefix_len]);
                let flags = (u8::from(p.on_link) << 7) | (u8::from(p.autonomous) << 6);
                bytes::put_u8(out, field::PREFIX_FLAGS, flags);
                bytes::put_u32(out, field::VALID_LIFETIME, p.valid_lifetime);
                bytes::put_u32(out, field::PREFERRED_LIFETIME, p.preferred_lifetime);
                bytes::put_u32(out, 12, 0);
                bytes::put(out, field::PREFIX.start, &p.prefix.octets());
            }
            NdpOption::Mtu(mtu) => {
                bytes::put(out, 0, &[option::MTU, len_units, 0, 0]);
                bytes::put_u32(out, field::MTU, *mtu);
            }
            NdpOption::Other { kind, data } => {
                bytes::put(out, 0, &[*kind, len_units]);
                bytes::put(out, 2, data);
            }
        }
    }
}

/// The options of an ND message. Yields an error once and then stops.
#[derive(Clone, Debug)]
pub struct NdpOptions<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for NdpOptions<'a> {
    type Item = Result<NdpOption<'a>, DropReason>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        // A zero length would loop forever (RFC 4861 4.6 says discard the packet); a missing
        // length byte or a length past the message is malformed too.
        let len = self.rest.get(1).map_or(0, |units| usize::from(*units) * 8);
        let split = (len > 0).then(|| self.rest.split_at_checked(len)).flatten();
        let Some((opt, tail)) = split else {
            self.rest = &[];
            return Some(Err(drop(Detail::BadOption)));
        };
        self.rest = tail;
        Some(NdpOption::parse(opt))
    }
}

/// A parsed neighbour discovery message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NdpRepr {
    RouterSolicit {
        source_mac: Option<MacAddr>,
    },
    RouterAdvert {
        cur_hop_limit: u8,
        /// M, O and the other bits as sent.
        flags: u8,
        /// Seconds; 0 means "not a default router".
        router_lifetime: u16,
        /// Milliseconds.
        reachable_time: u32,
        /// Milliseconds.
        retrans_timer: u32,
        source_mac: Option<MacAddr>,
        mtu: Option<u32>,
        prefixes: Vec<PrefixInfo>,
    },
    NeighborSolicit {
        target: Ipv6Addr,
        source_mac: Option<MacAddr>,
    },
    NeighborAdvert {
        flags: NeighborFlags,
        target: Ipv6Addr,
        target_mac: Option<MacAddr>,
    },
}

impl NdpRepr {
    pub const RA_FLAG_MANAGED: u8 = 0x80;
    pub const RA_FLAG_OTHER: u8 = 0x40;

    /// Parses and validates `packet`, which arrived in `ip` (whose hop limit and addresses
    /// take part in validation and in the checksum).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        ip: &Ipv6Repr,
        packet: &Packet<&T>,
    ) -> Result<Self, DropReason> {
        let packet = Packet::new_checked(packet.buffer.as_ref())?;
        let msg_type = packet.msg_type();
        if header_len(msg_type) == 0 {
            return Err(drop(Detail::IcmpType));
        }
        if !packet.verify_checksum(ip.src, ip.dst) {
            return Err(drop(Detail::BadChecksum));
        }
        if ip.hop_limit != 255 {
            return Err(drop(Detail::BadHopLimit));
        }
        if packet.code() != 0 {
            return Err(drop(Detail::BadCode));
        }
        let mut source_mac = None;
        let mut target_mac = None;
        let mut mtu = None;
        let mut prefixes = Vec::new();
        for opt in packet.options() {
            match opt? {
                NdpOption::SourceLinkAddr(mac) => {
                    source_mac.get_or_insert(mac);
                }
                NdpOption::TargetLinkAddr(mac) => {
                    target_mac.get_or_insert(mac);
                }
                NdpOption::Mtu(value) => {
                    mtu.get_or_insert(value);
                }
                NdpOption::PrefixInfo(info) => prefixes.push(info),
                NdpOption::Other { .. } => {}
            }
        }
        let from_unspecified = ip.src.is_unspecified();
        if from_unspecified && source_mac.is_some() {
            return Err(drop(Detail::BadOption));
        }
        // The typed accessors answer None only for a type without the field, which the
        // match below rules out; the fallbacks keep this total without an unwrap.
        let target = || match packet.target() {
            Some(target) if !target.is_multicast() => Ok(target),
            _ => Err(drop(Detail::BadTarget)),
        };
        Ok(match msg_type {
            ty::ROUTER_SOLICIT => NdpRepr::RouterSolicit { source_mac },
            ty::ROUTER_ADVERT => NdpRepr::RouterAdvert {
                cur_hop_limit: packet.cur_hop_limit().unwrap_or_default(),
                flags: packet.router_flags().unwrap_or_default(),
                router_lifetime: packet.router_lifetime().unwrap_or_default(),
                reachable_time: packet.reachable_time().unwrap_or_default(),
                retrans_timer: packet.retrans_timer().unwrap_or_default(),
                source_mac,
                mtu,
                prefixes,
            },
            ty::NEIGHBOR_SOLICIT => NdpRepr::NeighborSolicit {
                target: target()?,
                source_mac,
            },
            ty::NEIGHBOR_ADVERT => NdpRepr::NeighborAdvert {
                flags: packet.neighbor_flags().unwrap_or_default(),
                target: target()?,
                target_mac,
            },
            _ => return Err(drop(Detail::IcmpType)),
        })
    }

    fn msg_type(&self) -> u8 {
        match self {
            NdpRepr::RouterSolicit { .. } => ty::ROUTER_SOLICIT,
            NdpRepr::RouterAdvert { .. } => ty::ROUTER_ADVERT,
            NdpRepr::NeighborSolicit { .. } => ty::NEIGHBOR_SOLICIT,
            NdpRepr::NeighborAdvert { .. } => ty::NEIGHBOR_ADVERT,
        }
    }

    fn options(&self) -> Vec<NdpOption<'static>> {
        let mut out = Vec::new();
        match self {
            NdpRepr::RouterSolicit { source_mac } | NdpRepr::NeighborSolicit { source_mac, .. } => {
                out.extend(source_mac.map(NdpOption::SourceLinkAddr));
            }
            NdpRepr::RouterAdvert {
                source_mac,
                mtu,
                prefixes,
                ..
            } => {
                out.extend(source_mac.map(NdpOption::SourceLinkAddr));
                out.extend(mtu.map(NdpOption::Mtu));
                out.extend(prefixes.iter().copied().map(NdpOption::PrefixInfo));
            }
            NdpRepr::NeighborAdvert { target_mac, .. } => {
                out.extend(target_mac.map(NdpOption::TargetLinkAddr));
            }
        }
        out
    }

    pub fn buffer_len(&self) -> usize {
        self.options()
            .iter()
            .fold(header_len(self.msg_type()), |len, opt| len + opt.wire_len())
    }

    /// Writes the message with its checksum for a packet from `src` to `dst`; returns its
    /// length.
    pub fn emit(&self, src: Ipv6Addr, dst: Ipv6Addr, buf: &mut [u8]) -> Result<usize, EmitError> {
        let need = self.buffer_len();
        EmitError::check(need, buf.len())?;
        let msg = bytes::slice_mut(buf, 0..need);
        msg.fill(0);
        bytes::put_u8(msg, field::TYPE, self.msg_type());
        match self {
            NdpRepr::RouterSolicit { .. } => {}
            NdpRepr::RouterAdvert {
                cur_hop_limit,
                flags,
                router_lifetime,
                reachable_time,
                retrans_timer,
                ..
            } => {
                bytes::put_u8(msg, field::CUR_HOP_LIMIT, *cur_hop_limit);
                bytes::put_u8(msg, field::RA_FLAGS, *flags);
                bytes::put_u16(msg, field::ROUTER_LIFETIME, *router_lifetime);
                bytes::put_u32(msg, field::REACHABLE_TIME, *reachable_time);
                bytes::put_u32(msg, field::RETRANS_TIMER, *retrans_timer);
            }
            NdpRepr::NeighborSolicit { target, .. } => {
                bytes::put(msg, field::TARGET.start, &target.octets());
            }
            NdpRepr::NeighborAdvert { flags, target, .. } => {
                bytes::put_u8(msg, field::NA_FLAGS, flags.to_byte());
                bytes::put(msg, field::TARGET.start, &target.octets());
            }
        }
        let mut at = header_len(self.msg_type());
        for opt in self.options() {
            opt.write(bytes::rest_mut(msg, at));
            at += opt.wire_len();
        }
        let len = u32::try_from(need).map_err(|_| EmitError::TooLong {
            layer: Layer::Icmpv6,
            len: need,
        })?;
        let mut sum = Checksum::new();
        sum.ipv6_pseudo_header(src, dst, protocol::ICMPV6, len)
            .add(msg);
        let sum = sum.finish();
        bytes::put_u16(msg, field::CHECKSUM, sum);
        Ok(need)
    }
}

/// A whole Ethernet frame with a neighbour solicitation for `target`, the IPv6 liveness probe.
///
/// With `unicast_to` set it is a unicast NUD probe (RFC 4861 7.3.3) to the device's known MAC
/// and to `target` itself; without, it goes to the solicited-node group of `target` and its
/// 33:33:ff:xx:xx:xx MAC. From the unspecified address (duplicate address detection) no source
/// link-layer option is sent, as RFC 4861 7.2.2 requires. Hop limit 255, checksum computed.
pub fn neighbor_solicitation_frame(
    src_mac: MacAddr,
    src_ip: Ipv6Addr,
    target: Ipv6Addr,
    unicast_to: Option<MacAddr>,
    vlan: Option<VlanTag>,
) -> Vec<u8> {
    let (dst_mac, dst_ip) = match unicast_to {
        Some(mac) => (mac, target),
        None => {
            let group = ipv6::solicited_node(target);
            (ipv6::multicast_mac(group), group)
        }
    };
    let ns = NdpRepr::NeighborSolicit {
        target,
        source_mac: (!src_ip.is_unspecified()).then_some(src_mac),
    };
    let ip = Ipv6Repr {
        src: src_ip,
        dst: dst_ip,
        next_header: protocol::ICMPV6,
        hop_limit: 255,
        payload_len: ns.buffer_len(),
    };
    let header = EthernetRepr {
        src: src_mac,
        dst: dst_mac,
        vlan,
        ethertype: EtherType::IPV6,
    };
    let len = ip.header_len() + ns.buffer_len();
    // `build` sizes the buffer from these same lengths, so the writes cannot fail; the
    // fallback keeps the function total without an unwrap.
    ethernet::build(&header, len, |payload| {
        let at = ip.emit(payload)?;
        ns.emit(src_ip, dst_ip, bytes::rest_mut(payload, at))
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_specific_fields_exist_only_for_their_type() {
        let rs = [ty::ROUTER_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
        let packet = Packet::new_checked(&rs[..]).unwrap();
        assert_eq!(packet.target(), None);
        assert_eq!(packet.neighbor_flags(), None);
        assert_eq!(packet.router_lifetime(), None);

        let mut na = [0u8; 24];
        na[0] = ty::NEIGHBOR_ADVERT;
        na[4] = 0x40;
        let packet = Packet::new_checked(&na[..]).unwrap();
        assert_eq!(packet.target(), Some(Ipv6Addr::UNSPECIFIED));
        let flags = packet.neighbor_flags().unwrap();
        assert!(flags.solicited && !flags.router && !flags.overrides);
        assert_eq!(packet.cur_hop_limit(), None);

        // An echo request is only four bytes of header to this view.
        let echo = [128, 0, 0, 0];
        let packet = Packet::new_checked(&echo[..]).unwrap();
        assert_eq!((packet.target(), packet.retrans_timer()), (None, None));
        assert_eq!(packet.options().count(), 0);
    }

    #[test]
    fn short_nd_messages_are_truncated() {
        for (msg_type, len) in [(133u8, 8usize), (134, 16), (135, 24), (136, 24)] {
            let mut msg = vec![0u8; len];
            msg[0] = msg_type;
            assert!(Packet::new_checked(&msg[..]).is_ok());
            assert_eq!(
                Packet::new_checked(&msg[..len - 1]).unwrap_err(),
                DropReason::truncated(Layer::Icmpv6)
            );
        }
    }

    #[test]
    fn options_yield_one_error_then_stop() {
        let mut rs = vec![ty::ROUTER_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
        rs.extend_from_slice(&[1, 1, 2, 0, 0x5e, 0, 0, 1]);
        rs.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0]);
        rs.extend_from_slice(&[1, 1, 2, 0, 0x5e, 0, 0, 2]);
        let packet = Packet::new_checked(&rs[..]).unwrap();
        let mut options = packet.options();
        let first = MacAddr([2, 0, 0x5e, 0, 0, 1]);
        assert_eq!(options.next(), Some(Ok(NdpOption::SourceLinkAddr(first))));
        assert_eq!(options.next(), Some(Err(drop(Detail::BadOption))));
        assert_eq!(options.next(), None);
    }

    #[test]
    fn neighbor_flags_survive_a_byte_round_trip() {
        for byte in [0u8, 0x80, 0x40, 0x20, 0xe0, 0xa0] {
            assert_eq!(NeighborFlags::from_byte(byte).to_byte(), byte);
        }
    }
}
