//! ARP over Ethernet for IPv4 (RFC 826), with the RFC 5227 probe and announcement forms.

use std::net::Ipv4Addr;

use super::bytes::{self, Field};
use super::drops::{Detail, DropReason, Layer};
use super::ethernet::{self, EtherType, EthernetRepr, MacAddr, VlanTag};
use super::EmitError;

/// ARP hardware type for Ethernet.
pub const HARDWARE_ETHERNET: u16 = 1;

mod field {
    use super::Field;
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    /// Sender hardware address; the other addresses follow at offsets set by HLEN and PLEN.
    pub const SHA_START: usize = 8;
    /// The addresses for Ethernet/IPv4, the only pair the agent reads.
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
}

/// The length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::TPA.end;

/// An ARP operation the agent reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Request,
    Reply,
}

impl Operation {
    pub fn code(self) -> u16 {
        match self {
            Operation::Request => 1,
            Operation::Reply => 2,
        }
    }
}

/// A checked view of an ARP packet of any hardware and protocol type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps `buffer` after checking it holds the fixed part and all four addresses at the
    /// lengths the packet declares. Trailing bytes (Ethernet padding) are allowed.
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), DropReason> {
        let len = self.buffer.as_ref().len();
        if len < field::SHA_START || len < self.declared_len() {
            return Err(DropReason::truncated(Layer::Arp));
        }
        Ok(())
    }

    /// The fixed part plus two hardware and two protocol addresses.
    fn declared_len(&self) -> usize {
        let addrs = 2 * (usize::from(self.hardware_len()) + usize::from(self.protocol_len()));
        field::SHA_START + addrs
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn hardware_type(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::HTYPE)
    }

    pub fn protocol_type(&self) -> EtherType {
        EtherType(bytes::u16_at(self.buffer.as_ref(), field::PTYPE))
    }

    pub fn hardware_len(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::HLEN)
    }

    pub fn protocol_len(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::PLEN)
    }

    pub fn operation(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::OPER)
    }

    fn addr(&self, index: usize, hardware: bool) -> &[u8] {
        let hlen = usize::from(self.hardware_len());
        let plen = usize::from(self.protocol_len());
        // Addresses are laid out sha, spa, tha, tpa.
        let start = field::SHA_START + index * (hlen + plen) + if hardware { 0 } else { hlen };
        let len = if hardware { hlen } else { plen };
        bytes::slice(self.buffer.as_ref(), start..start + len)
    }

    pub fn sender_hardware_addr(&self) -> &[u8] {
        self.addr(0, true)
    }

    pub fn sender_protocol_addr(&self) -> &[u8] {
        self.addr(0, false)
    }

    pub fn target_hardware_addr(&self) -> &[u8] {
        self.addr(1, true)
    }

    pub fn target_protocol_addr(&self) -> &[u8] {
        self.addr(1, false)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes an Ethernet/IPv4 packet; the buffer holds at least [`PACKET_LEN`] bytes.
    fn write(&mut self, repr: &ArpRepr) {
        let buf = self.buffer.as_mut();
        bytes::put_u16(buf, field::HTYPE, HARDWARE_ETHERNET);
        bytes::put_u16(buf, field::PTYPE, EtherType::IPV4.0);
        bytes::put_u8(buf, field::HLEN, 6);
        bytes::put_u8(buf, field::PLEN, 4);
        bytes::put_u16(buf, field::OPER, repr.operation.code());
        bytes::put(buf, field::SHA.start, &repr.sender_mac.0);
        bytes::put(buf, field::SPA.start, &repr.sender_ip.octets());
        bytes::put(buf, field::THA.start, &repr.target_mac.0);
        bytes::put(buf, field::TPA.start, &repr.target_ip.octets());
    }
}

/// An Ethernet/IPv4 ARP request or reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    pub operation: Operation,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self, DropReason> {
        let packet = Packet::new_checked(packet.buffer.as_ref())?;
        if packet.hardware_type() != HARDWARE_ETHERNET {
            return Err(DropReason::new(Layer::Arp, Detail::HardwareType));
        }
        if packet.protocol_type() != EtherType::IPV4 {
            return Err(DropReason::new(Layer::Arp, Detail::ProtocolType));
        }
        if packet.hardware_len() != 6 || packet.protocol_len() != 4 {
            return Err(DropReason::new(Layer::Arp, Detail::BadAddressLength));
        }
        let operation = match packet.operation() {
            1 => Operation::Request,
            2 => Operation::Reply,
            _ => return Err(DropReason::new(Layer::Arp, Detail::Operation)),
        };
        let buf = packet.buffer;
        Ok(ArpRepr {
            operation,
            sender_mac: MacAddr(bytes::array(buf, field::SHA.start)),
            sender_ip: Ipv4Addr::from(bytes::array::<4>(buf, field::SPA.start)),
            target_mac: MacAddr(bytes::array(buf, field::THA.start)),
            target_ip: Ipv4Addr::from(bytes::array::<4>(buf, field::TPA.start)),
        })
    }

    /// A request asking who has `target_ip`, sent from `sender_ip`.
    pub fn request(sender_mac: MacAddr, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Self {
        ArpRepr {
            operation: Operation::Request,
            sender_mac,
            sender_ip,
            target_mac: MacAddr::ZERO,
            target_ip,
        }
    }

    /// An RFC 5227 probe: a request from 0.0.0.0, so no neighbour learns a mapping from it.
    /// The agent uses it to check that a device still answers for `target_ip`.
    pub fn probe(sender_mac: MacAddr, target_ip: Ipv4Addr) -> Self {
        ArpRepr::request(sender_mac, Ipv4Addr::UNSPECIFIED, target_ip)
    }

    /// RFC 5227 probe: a request whose sender IP is 0.0.0.0.
    pub fn is_probe(&self) -> bool {
        self.operation == Operation::Request && self.sender_ip.is_unspecified()
    }

    /// RFC 5227 announcement: a request whose sender and target IP are both the sender's
    /// (claimed) address.
    pub fn is_announcement(&self) -> bool {
        self.operation == Operation::Request && self.is_gratuitous()
    }

    /// Gratuitous ARP, request or reply: sender IP equals target IP (and is not 0.0.0.0).
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip && !self.sender_ip.is_unspecified()
    }

    pub fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the packet at the start of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        EmitError::check(PACKET_LEN, buf.len())?;
        Packet::new_unchecked(buf).write(self);
        Ok(PACKET_LEN)
    }
}

/// A whole Ethernet frame carrying `arp`, from `arp.sender_mac` to `dst` (broadcast for a
/// first probe; the device's MAC for a unicast liveness check), padded to the Ethernet minimum.
pub fn build_frame(dst: MacAddr, vlan: Option<VlanTag>, arp: &ArpRepr) -> Vec<u8> {
    let header = EthernetRepr {
        src: arp.sender_mac,
        dst,
        vlan,
        ethertype: EtherType::ARP,
    };
    // `build` sizes the buffer for the header and PACKET_LEN, so neither write can fail; the
    // fallback keeps this function total without an unwrap.
    ethernet::build(&header, PACKET_LEN, |payload| arp.emit(payload)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, last)
    }

    const MAC: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x07]);

    fn packet(op: u16, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
        let mut p = vec![0x00, 0x01, 0x08, 0x00, 0x06, 0x04];
        p.extend_from_slice(&op.to_be_bytes());
        p.extend_from_slice(&MAC.0);
        p.extend_from_slice(&spa.octets());
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&tpa.octets());
        p
    }

    fn parse(bytes: &[u8]) -> Result<ArpRepr, DropReason> {
        ArpRepr::parse(&Packet::new_checked(bytes)?)
    }

    #[test]
    fn classifies_request_probe_announcement_and_gratuitous_reply() {
        let request = parse(&packet(1, ip(7), ip(1))).unwrap();
        assert_eq!(request.operation, Operation::Request);
        assert_eq!(request.sender_mac, MAC);
        assert_eq!((request.sender_ip, request.target_ip), (ip(7), ip(1)));
        assert!(!request.is_probe() && !request.is_announcement() && !request.is_gratuitous());

        let probe = parse(&packet(1, Ipv4Addr::UNSPECIFIED, ip(7))).unwrap();
        assert!(probe.is_probe() && !probe.is_announcement() && !probe.is_gratuitous());

        let announcement = parse(&packet(1, ip(7), ip(7))).unwrap();
        assert!(announcement.is_announcement() && announcement.is_gratuitous());
        assert!(!announcement.is_probe());

        let gratuitous_reply = parse(&packet(2, ip(7), ip(7))).unwrap();
        assert!(gratuitous_reply.is_gratuitous() && !gratuitous_reply.is_announcement());
    }

    #[test]
    fn refuses_other_types_operations_and_lengths() {
        let mut other = packet(1, ip(7), ip(1));
        other[1] = 6; // IEEE 802 hardware
        assert_eq!(parse(&other).unwrap_err().detail, Detail::HardwareType);

        let mut other = packet(1, ip(7), ip(1));
        other[2..4].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(parse(&other).unwrap_err().detail, Detail::ProtocolType);

        assert_eq!(
            parse(&packet(3, ip(7), ip(1))).unwrap_err().detail,
            Detail::Operation
        );

        let mut other = packet(1, ip(7), ip(1));
        other[4] = 8;
        other.extend_from_slice(&[0; 4]);
        assert_eq!(parse(&other).unwrap_err().detail, Detail::BadAddressLength);
    }

    #[test]
    fn every_truncation_is_truncated_and_padding_is_ignored() {
        let full = packet(2, ip(1), ip(7));
        for len in 0..full.len() {
            assert_eq!(
                parse(&full[..len]).unwrap_err(),
                DropReason::truncated(Layer::Arp),
                "{len} bytes"
            );
        }
        let mut padded = full.clone();
        padded.extend_from_slice(&[0; 18]);
        assert_eq!(parse(&padded).unwrap(), parse(&full).unwrap());
    }

    #[test]
    fn probe_frame_round_trips() {
        let probe = ArpRepr::probe(MAC, ip(9));
        let frame = build_frame(MacAddr::BROADCAST, None, &probe);
        assert_eq!(frame.len(), ethernet::MIN_FRAME_LEN);
        let eth = ethernet::Frame::new_checked(&frame[..]).unwrap();
        let header = EthernetRepr::parse(&eth).unwrap();
        assert_eq!(header.ethertype, EtherType::ARP);
        assert_eq!((header.src, header.dst), (MAC, MacAddr::BROADCAST));
        let parsed = parse(eth.payload()).unwrap();
        assert_eq!(parsed, probe);
        assert!(parsed.is_probe());
    }
}
