//! IPv4 headers (RFC 791), options included; fragments are refused.

use std::net::Ipv4Addr;

use super::bytes::{self, Field};
use super::checksum::Checksum;
use super::drops::{Detail, DropReason, Layer};
use super::EmitError;

/// IP protocol numbers the agent reads.
pub mod protocol {
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

mod field {
    use super::Field;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
    pub const MIN_HEADER_LEN: usize = 20;
}

/// The length of a header without options.
pub const HEADER_LEN: usize = field::MIN_HEADER_LEN;

const FLAG_MORE_FRAGMENTS: u16 = 0x2000;
const FLAG_DONT_FRAGMENT: u16 = 0x4000;
const FRAGMENT_OFFSET: u16 = 0x1fff;

/// A checked view of an IPv4 packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps `buffer` after checking the version, the header length and that the buffer
    /// holds `total_len` bytes (it may hold more: Ethernet padding).
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), DropReason> {
        let len = self.buffer.as_ref().len();
        if len < field::MIN_HEADER_LEN {
            return Err(DropReason::truncated(Layer::Ipv4));
        }
        if self.version() != 4 {
            return Err(DropReason::new(Layer::Ipv4, Detail::BadVersion));
        }
        let header_len = self.header_len();
        if header_len < field::MIN_HEADER_LEN {
            return Err(DropReason::new(Layer::Ipv4, Detail::BadHeaderLength));
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(DropReason::new(Layer::Ipv4, Detail::BadLength));
        }
        if len < header_len || len < total_len {
            return Err(DropReason::truncated(Layer::Ipv4));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::VER_IHL) >> 4
    }

    /// The header length in bytes (IHL times four).
    pub fn header_len(&self) -> usize {
        usize::from(bytes::u8_at(self.buffer.as_ref(), field::VER_IHL) & 0x0f) * 4
    }

    pub fn dscp_ecn(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::DSCP_ECN)
    }

    pub fn total_len(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::TOTAL_LEN)
    }

    pub fn ident(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::IDENT)
    }

    pub fn dont_fragment(&self) -> bool {
        bytes::u16_at(self.buffer.as_ref(), field::FLAGS_FRAG) & FLAG_DONT_FRAGMENT != 0
    }

    pub fn more_fragments(&self) -> bool {
        bytes::u16_at(self.buffer.as_ref(), field::FLAGS_FRAG) & FLAG_MORE_FRAGMENTS != 0
    }

    /// The fragment offset in 8-byte units.
    pub fn fragment_offset(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::FLAGS_FRAG) & FRAGMENT_OFFSET
    }

    pub fn ttl(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::TTL)
    }

    pub fn protocol(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::PROTOCOL)
    }

    pub fn checksum(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::array::<4>(self.buffer.as_ref(), field::SRC.start))
    }

    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::array::<4>(self.buffer.as_ref(), field::DST.start))
    }

    /// The options between the fixed header and the payload.
    pub fn options(&self) -> &[u8] {
        bytes::slice(
            self.buffer.as_ref(),
            field::MIN_HEADER_LEN..self.header_len(),
        )
    }

    pub fn verify_checksum(&self) -> bool {
        let header = bytes::slice(self.buffer.as_ref(), 0..self.header_len());
        Checksum::new().add(header).finish() == 0
    }
}

impl<'a> Packet<&'a [u8]> {
    /// The payload, cut at `total_len` (Ethernet padding is not part of it).
    pub fn payload(&self) -> &'a [u8] {
        bytes::slice(
            self.buffer,
            self.header_len()..usize::from(self.total_len()),
        )
    }
}

/// The parsed IPv4 header of an unfragmented packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    pub payload_len: usize,
}

impl Ipv4Repr {
    /// Checks the header checksum and refuses fragments (the agent's DHCP, mDNS and SSDP
    /// messages fit one frame; reassembly would need state this pure layer does not keep).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self, DropReason> {
        let packet = Packet::new_checked(packet.buffer.as_ref())?;
        if !packet.verify_checksum() {
            return Err(DropReason::new(Layer::Ipv4, Detail::BadChecksum));
        }
        if packet.more_fragments() || packet.fragment_offset() != 0 {
            return Err(DropReason::new(Layer::Ipv4, Detail::Fragment));
        }
        Ok(Ipv4Repr {
            src: packet.src(),
            dst: packet.dst(),
            protocol: packet.protocol(),
            ttl: packet.ttl(),
            payload_len: usize::from(packet.total_len()).saturating_sub(packet.header_len()),
        })
    }

    /// Bytes needed for the header emitted by [`Ipv4Repr::emit`] (no options).
    pub fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header with DF set and a correct checksum; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        EmitError::check(HEADER_LEN, buf.len())?;
        let total = HEADER_LEN
            .checked_add(self.payload_len)
            .and_then(|total| u16::try_from(total).ok())
            .ok_or(EmitError::TooLong {
                layer: Layer::Ipv4,
                len: self.payload_len,
            })?;
        let header = bytes::slice_mut(buf, 0..HEADER_LEN);
        bytes::put_u8(header, field::VER_IHL, 0x45);
        bytes::put_u8(header, field::DSCP_ECN, 0);
        bytes::put_u16(header, field::TOTAL_LEN, total);
        bytes::put_u16(header, field::IDENT, 0);
        bytes::put_u16(header, field::FLAGS_FRAG, FLAG_DONT_FRAGMENT);
        bytes::put_u8(header, field::TTL, self.ttl);
        bytes::put_u8(header, field::PROTOCOL, self.protocol);
        bytes::put_u16(header, field::CHECKSUM, 0);
        bytes::put(header, field::SRC.start, &self.src.octets());
        bytes::put(header, field::DST.start, &self.dst.octets());
        let sum = Checksum::new().add(header).finish();
        bytes::put_u16(header, field::CHECKSUM, sum);
        Ok(HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr() -> Ipv4Repr {
        Ipv4Repr {
            src: Ipv4Addr::new(198, 18, 0, 1),
            dst: Ipv4Addr::BROADCAST,
            protocol: protocol::UDP,
            ttl: 64,
            payload_len: 4,
        }
    }

    fn emitted() -> Vec<u8> {
        let mut buf = vec![0u8; 24];
        repr().emit(&mut buf).unwrap();
        buf[20..].copy_from_slice(b"data");
        buf
    }

    fn parse(bytes: &[u8]) -> Result<Ipv4Repr, DropReason> {
        Ipv4Repr::parse(&Packet::new_checked(bytes)?)
    }

    #[test]
    fn emit_then_parse_round_trips() {
        let buf = emitted();
        assert_eq!(parse(&buf).unwrap(), repr());
        assert_eq!(Packet::new_checked(&buf[..]).unwrap().payload(), b"data");
    }

    #[test]
    fn options_move_the_payload_and_padding_is_cut() {
        // IHL 6: one 4-byte option (router alert), then the payload, then Ethernet padding.
        let mut buf = emitted();
        buf[0] = 0x46;
        buf[2..4].copy_from_slice(&28u16.to_be_bytes());
        buf.splice(20..20, [0x94, 0x04, 0x00, 0x00]);
        buf.extend_from_slice(&[0; 6]);
        buf[10..12].copy_from_slice(&[0, 0]);
        let sum = Checksum::new().add(&buf[..24]).finish();
        buf[10..12].copy_from_slice(&sum.to_be_bytes());
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.options(), &[0x94, 0x04, 0x00, 0x00]);
        assert_eq!(packet.payload(), b"data");
        assert_eq!(parse(&buf).unwrap().payload_len, 4);
    }

    #[test]
    fn refuses_bad_headers() {
        let good = emitted();
        let detail = |mutate: fn(&mut Vec<u8>)| {
            let mut buf = good.clone();
            mutate(&mut buf);
            parse(&buf).unwrap_err().detail
        };
        assert_eq!(detail(|b| b[0] = 0x65), Detail::BadVersion);
        assert_eq!(detail(|b| b[0] = 0x44), Detail::BadHeaderLength);
        assert_eq!(detail(|b| b[3] = 19), Detail::BadLength);
        assert_eq!(detail(|b| b[3] = 25), Detail::Truncated);
        assert_eq!(detail(|b| b[0] = 0x4f), Detail::BadLength);
        assert_eq!(
            detail(|b| {
                b[0] = 0x4f;
                b[3] = 60;
            }),
            Detail::Truncated
        );
        assert_eq!(detail(|b| b[8] = 63), Detail::BadChecksum);
        assert_eq!(detail(|b| b.truncate(19)), Detail::Truncated);
    }

    #[test]
    fn refuses_fragments() {
        for flags in [0x2000u16, 0x0001] {
            let mut buf = emitted();
            buf[6..8].copy_from_slice(&flags.to_be_bytes());
            buf[10..12].copy_from_slice(&[0, 0]);
            let sum = Checksum::new().add(&buf[..20]).finish();
            buf[10..12].copy_from_slice(&sum.to_be_bytes());
            assert_eq!(parse(&buf).unwrap_err().detail, Detail::Fragment);
        }
    }
}
