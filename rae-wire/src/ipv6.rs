//! The IPv6 fixed header (RFC 8200).
//!
//! Extension headers are not walked: a packet whose next header is not the transport the
//! caller wants is refused as Unsupported (`extension_header` for the known extension types).
//! Neighbour discovery and the UDP the agent reads come without them in practice.

use std::net::Ipv6Addr;

use super::bytes::{self, Field};
use super::drops::{Detail, DropReason, Layer};
use super::ethernet::MacAddr;
use super::EmitError;

mod field {
    use super::Field;
    pub const VER_TC_FLOW: usize = 0;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Field = 8..24;
    pub const DST: Field = 24..40;
}

pub const HEADER_LEN: usize = field::DST.end;

/// Next-header values of the IPv6 extension headers (IANA "IPv6 Extension Header Types").
pub const EXTENSION_HEADERS: [u8; 9] = [0, 43, 44, 50, 51, 60, 135, 139, 140];

/// A checked view of an IPv6 packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps `buffer` after checking the version and that the buffer holds the payload length
    /// the header declares (it may hold more: Ethernet padding).
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), DropReason> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(DropReason::truncated(Layer::Ipv6));
        }
        if self.version() != 6 {
            return Err(DropReason::new(Layer::Ipv6, Detail::BadVersion));
        }
        if len - HEADER_LEN < usize::from(self.payload_len()) {
            return Err(DropReason::truncated(Layer::Ipv6));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::VER_TC_FLOW) >> 4
    }

    pub fn traffic_class(&self) -> u8 {
        let word = bytes::u16_at(self.buffer.as_ref(), field::VER_TC_FLOW);
        // Bits 4..12 of the first word; the shift and mask leave eight bits.
        u8::try_from((word >> 4) & 0xff).unwrap_or(0)
    }

    pub fn flow_label(&self) -> u32 {
        bytes::u32_at(self.buffer.as_ref(), field::VER_TC_FLOW) & 0x000f_ffff
    }

    pub fn payload_len(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }

    pub fn next_header(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::NEXT_HEADER)
    }

    pub fn hop_limit(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::HOP_LIMIT)
    }

    pub fn src(&self) -> Ipv6Addr {
        Ipv6Addr::from(bytes::array::<16>(self.buffer.as_ref(), field::SRC.start))
    }

    pub fn dst(&self) -> Ipv6Addr {
        Ipv6Addr::from(bytes::array::<16>(self.buffer.as_ref(), field::DST.start))
    }
}

impl<'a> Packet<&'a [u8]> {
    /// The payload, cut at the declared payload length.
    pub fn payload(&self) -> &'a [u8] {
        let end = HEADER_LEN.saturating_add(usize::from(self.payload_len()));
        bytes::slice(self.buffer, HEADER_LEN..end)
    }
}

/// The parsed IPv6 fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv6Repr {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next_header: u8,
    pub hop_limit: u8,
    pub payload_len: usize,
}

impl Ipv6Repr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self, DropReason> {
        let packet = Packet::new_checked(packet.buffer.as_ref())?;
        Ok(Ipv6Repr {
            src: packet.src(),
            dst: packet.dst(),
            next_header: packet.next_header(),
            hop_limit: packet.hop_limit(),
            payload_len: usize::from(packet.payload_len()),
        })
    }

    pub fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 40-byte header (traffic class and flow label zero); returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        EmitError::check(HEADER_LEN, buf.len())?;
        let payload_len = u16::try_from(self.payload_len).map_err(|_| EmitError::TooLong {
            layer: Layer::Ipv6,
            len: self.payload_len,
        })?;
        bytes::put_u32(buf, field::VER_TC_FLOW, 6 << 28);
        bytes::put_u16(buf, field::PAYLOAD_LEN, payload_len);
        bytes::put_u8(buf, field::NEXT_HEADER, self.next_header);
        bytes::put_u8(buf, field::HOP_LIMIT, self.hop_limit);
        bytes::put(buf, field::SRC.start, &self.src.octets());
        bytes::put(buf, field::DST.start, &self.dst.octets());
        Ok(HEADER_LEN)
    }
}

/// The solicited-node multicast address of `addr` (RFC 4291 section 2.7.1): ff02::1:ffXX:XXXX
/// with the low 24 bits of `addr`.
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
    ])
}

/// The Ethernet address an IPv6 multicast group maps to (RFC 2464 section 7): 33:33 and the
/// low 32 bits of the group.
pub fn multicast_mac(group: Ipv6Addr) -> MacAddr {
    let o = group.octets();
    MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr() -> Ipv6Repr {
        Ipv6Repr {
            src: "fe80::1".parse().unwrap(),
            dst: "2001:db8::7".parse().unwrap(),
            next_header: 17,
            hop_limit: 255,
            payload_len: 3,
        }
    }

    #[test]
    fn emit_then_parse_round_trips_and_cuts_padding() {
        let mut buf = vec![0u8; 40];
        repr().emit(&mut buf).unwrap();
        buf.extend_from_slice(b"abc\0\0");
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Ipv6Repr::parse(&packet).unwrap(), repr());
        assert_eq!(packet.payload(), b"abc");
        assert_eq!(packet.traffic_class(), 0);
        assert_eq!(packet.flow_label(), 0);
    }

    #[test]
    fn refuses_short_and_wrong_version() {
        let mut buf = vec![0u8; 43];
        repr().emit(&mut buf).unwrap();
        for len in 0..buf.len() {
            assert_eq!(
                Packet::new_checked(&buf[..len]).unwrap_err(),
                DropReason::truncated(Layer::Ipv6),
                "{len} bytes"
            );
        }
        buf[0] = 0x45;
        assert_eq!(
            Packet::new_checked(&buf[..]).unwrap_err().detail,
            Detail::BadVersion
        );
    }

    #[test]
    fn solicited_node_group_and_its_mac() {
        let addr: Ipv6Addr = "2001:db8::2aa:ff:fe28:9c5a".parse().unwrap();
        let group = solicited_node(addr);
        assert_eq!(group, "ff02::1:ff28:9c5a".parse::<Ipv6Addr>().unwrap());
        assert_eq!(multicast_mac(group).to_string(), "33:33:ff:28:9c:5a");
    }
}
