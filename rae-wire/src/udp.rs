//! UDP datagrams (RFC 768) over IPv4 or IPv6.

use super::bytes;
use super::checksum::Checksum;
use super::drops::{Detail, DropReason, Layer};
use super::ipv4::protocol;
use super::{EmitError, IpRepr, UdpChecksum};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

pub const HEADER_LEN: usize = 8;

/// A checked view of a UDP datagram. The buffer is the whole IP payload.
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
        if len < HEADER_LEN {
            return Err(DropReason::truncated(Layer::Udp));
        }
        let declared = usize::from(self.len());
        if declared < HEADER_LEN {
            return Err(DropReason::new(Layer::Udp, Detail::BadLength));
        }
        if len < declared {
            return Err(DropReason::truncated(Layer::Udp));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header plus payload.
    pub fn len(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::LENGTH)
    }

    /// True if the length field is zero (which `new_checked` refuses).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn checksum(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Verifies the checksum over the pseudo-header of `ip`. A zero checksum means "none"
    /// over IPv4, and is invalid over IPv6 (RFC 8200 section 8.1).
    pub fn verify_checksum(&self, ip: &IpRepr) -> bool {
        if self.checksum() == 0 {
            return matches!(ip, IpRepr::V4(_));
        }
        let datagram = bytes::slice(self.buffer.as_ref(), 0..usize::from(self.len()));
        pseudo_header(ip, self.len()).add(datagram).finish() == 0
    }
}

impl<'a> Packet<&'a [u8]> {
    pub fn payload(&self) -> &'a [u8] {
        bytes::slice(self.buffer, HEADER_LEN..usize::from(self.len()))
    }
}

fn pseudo_header(ip: &IpRepr, udp_len: u16) -> Checksum {
    let mut sum = Checksum::new();
    match ip {
        IpRepr::V4(v4) => sum.ipv4_pseudo_header(v4.src, v4.dst, protocol::UDP, udp_len),
        IpRepr::V6(v6) => sum.ipv6_pseudo_header(v6.src, v6.dst, protocol::UDP, udp_len.into()),
    };
    sum
}

/// The parsed UDP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
}

impl UdpRepr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        ip: &IpRepr,
        packet: &Packet<&T>,
        checksum: UdpChecksum,
    ) -> Result<Self, DropReason> {
        let packet = Packet::new_checked(packet.buffer.as_ref())?;
        if checksum == UdpChecksum::Verify && !packet.verify_checksum(ip) {
            return Err(DropReason::new(Layer::Udp, Detail::BadChecksum));
        }
        Ok(UdpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
        })
    }

    /// Writes header and `payload` with a correct checksum; returns the datagram length.
    pub fn emit(&self, ip: &IpRepr, payload: &[u8], buf: &mut [u8]) -> Result<usize, EmitError> {
        let total = HEADER_LEN.saturating_add(payload.len());
        let too_long = EmitError::TooLong {
            layer: Layer::Udp,
            len: payload.len(),
        };
        let length = u16::try_from(total).map_err(|_| too_long)?;
        EmitError::check(total, buf.len())?;
        let datagram = bytes::slice_mut(buf, 0..total);
        bytes::put_u16(datagram, field::SRC_PORT, self.src_port);
        bytes::put_u16(datagram, field::DST_PORT, self.dst_port);
        bytes::put_u16(datagram, field::LENGTH, length);
        bytes::put_u16(datagram, field::CHECKSUM, 0);
        bytes::put(datagram, HEADER_LEN, payload);
        let sum = pseudo_header(ip, length).add(datagram).finish();
        // Zero means "no checksum" on the wire, so a computed zero is sent as all ones.
        let sum = if sum == 0 { 0xffff } else { sum };
        bytes::put_u16(datagram, field::CHECKSUM, sum);
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ipv4Repr, Ipv6Repr};
    use std::net::Ipv4Addr;

    fn v4() -> IpRepr {
        IpRepr::V4(Ipv4Repr {
            src: Ipv4Addr::new(198, 18, 0, 1),
            dst: Ipv4Addr::new(198, 18, 0, 50),
            protocol: protocol::UDP,
            ttl: 64,
            payload_len: 13,
        })
    }

    fn v6() -> IpRepr {
        IpRepr::V6(Ipv6Repr {
            src: "fe80::1".parse().unwrap(),
            dst: "ff02::fb".parse().unwrap(),
            next_header: protocol::UDP,
            hop_limit: 255,
            payload_len: 13,
        })
    }

    const REPR: UdpRepr = UdpRepr {
        src_port: 5353,
        dst_port: 5353,
    };

    fn datagram(ip: &IpRepr) -> Vec<u8> {
        let mut buf = vec![0u8; 13];
        assert_eq!(REPR.emit(ip, b"hello", &mut buf).unwrap(), 13);
        buf
    }

    #[test]
    fn emit_then_parse_round_trips_over_both_families() {
        for ip in [v4(), v6()] {
            let buf = datagram(&ip);
            let packet = Packet::new_checked(&buf[..]).unwrap();
            assert!(packet.verify_checksum(&ip));
            assert_eq!(
                UdpRepr::parse(&ip, &packet, UdpChecksum::Verify).unwrap(),
                REPR
            );
            assert_eq!(packet.payload(), b"hello");
        }
    }

    #[test]
    fn checksums_are_enforced_unless_skipped() {
        let ip = v4();
        let mut buf = datagram(&ip);
        buf[8] ^= 0x20;
        let packet = Packet::new_checked(&buf[..]).unwrap();
        let err = UdpRepr::parse(&ip, &packet, UdpChecksum::Verify).unwrap_err();
        assert_eq!(err, DropReason::new(Layer::Udp, Detail::BadChecksum));
        assert_eq!(
            UdpRepr::parse(&ip, &packet, UdpChecksum::Skip).unwrap(),
            REPR
        );

        // Zero: "not computed" over IPv4, forbidden over IPv6.
        buf[6..8].copy_from_slice(&[0, 0]);
        let packet = Packet::new_checked(&buf[..]).unwrap();
        assert!(UdpRepr::parse(&v4(), &packet, UdpChecksum::Verify).is_ok());
        assert!(UdpRepr::parse(&v6(), &packet, UdpChecksum::Verify).is_err());
    }

    #[test]
    fn refuses_bad_lengths() {
        let buf = datagram(&v4());
        let mut short_field = buf.clone();
        short_field[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&short_field[..]).unwrap_err().detail,
            Detail::BadLength
        );
        for len in 0..buf.len() {
            assert_eq!(
                Packet::new_checked(&buf[..len]).unwrap_err(),
                DropReason::truncated(Layer::Udp)
            );
        }
    }
}
