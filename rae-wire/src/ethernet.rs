//! Ethernet II frames, untagged or with one 802.1Q tag.
//!
//! Frames arrive without the FCS (AF_PACKET strips it). Short frames may carry padding after
//! the payload; the layers above cut their payload at their own declared length.

use core::fmt;

use super::bytes::{self, Field};
use super::drops::{Detail, DropReason, Layer};
use super::EmitError;

/// An IEEE 802 MAC address: the wire contract's type, so parsed frames and the registry
/// speak of the same thing.
pub use rae_proto::Mac as MacAddr;

/// An EtherType. Values below 0x0600 are 802.3 length fields, not types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EtherType(pub u16);

impl EtherType {
    pub const IPV4: EtherType = EtherType(0x0800);
    pub const ARP: EtherType = EtherType(0x0806);
    pub const VLAN: EtherType = EtherType(0x8100);
    pub const IPV6: EtherType = EtherType(0x86dd);
    pub const QINQ: EtherType = EtherType(0x88a8);
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:04x}", self.0)
    }
}

/// The tag control information of an 802.1Q tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VlanTag {
    /// The VLAN identifier, 0..=4095 (0 means priority-tagged only).
    pub id: u16,
    /// The priority code point, 0..=7.
    pub priority: u8,
    pub drop_eligible: bool,
}

impl VlanTag {
    pub fn from_tci(tci: u16) -> Self {
        VlanTag {
            id: tci & 0x0fff,
            // Masked to three bits, so the conversion cannot fail.
            priority: u8::try_from(tci >> 13).unwrap_or(0),
            drop_eligible: tci & 0x1000 != 0,
        }
    }

    /// The tag as 16 bits; out-of-range fields are masked to their widths.
    pub fn tci(self) -> u16 {
        (u16::from(self.priority & 0x07) << 13)
            | (u16::from(self.drop_eligible) << 12)
            | (self.id & 0x0fff)
    }
}

mod field {
    use super::Field;
    pub const DST: Field = 0..6;
    pub const SRC: Field = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const TCI: usize = 14;
    pub const INNER_ETHERTYPE: usize = 16;
    pub const HEADER_LEN: usize = 14;
    pub const TAGGED_HEADER_LEN: usize = 18;
}

/// A checked view of an Ethernet frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Frame { buffer }
    }

    /// Wraps `buffer` after checking it holds the whole header (with its tag, if tagged).
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let frame = Frame::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    pub fn check_len(&self) -> Result<(), DropReason> {
        let len = self.buffer.as_ref().len();
        if len < field::HEADER_LEN || len < self.header_len() {
            return Err(DropReason::truncated(Layer::Ethernet));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn dst(&self) -> MacAddr {
        MacAddr(bytes::array(self.buffer.as_ref(), field::DST.start))
    }

    pub fn src(&self) -> MacAddr {
        MacAddr(bytes::array(self.buffer.as_ref(), field::SRC.start))
    }

    /// The EtherType right after the addresses: the TPID when the frame is tagged.
    pub fn outer_ethertype(&self) -> EtherType {
        EtherType(bytes::u16_at(self.buffer.as_ref(), field::ETHERTYPE))
    }

    pub fn is_tagged(&self) -> bool {
        self.outer_ethertype() == EtherType::VLAN
    }

    pub fn vlan(&self) -> Option<VlanTag> {
        self.is_tagged()
            .then(|| VlanTag::from_tci(bytes::u16_at(self.buffer.as_ref(), field::TCI)))
    }

    /// The EtherType of the payload (after the tag, if tagged).
    pub fn ethertype(&self) -> EtherType {
        if self.is_tagged() {
            EtherType(bytes::u16_at(self.buffer.as_ref(), field::INNER_ETHERTYPE))
        } else {
            self.outer_ethertype()
        }
    }

    pub fn header_len(&self) -> usize {
        // Reading the TPID of a buffer shorter than the header would be out of bounds.
        if self.buffer.as_ref().len() >= field::HEADER_LEN && self.is_tagged() {
            field::TAGGED_HEADER_LEN
        } else {
            field::HEADER_LEN
        }
    }
}

impl<'a> Frame<&'a [u8]> {
    /// Everything after the header, padding included.
    pub fn payload(&self) -> &'a [u8] {
        bytes::rest(self.buffer, self.header_len())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_dst(&mut self, addr: MacAddr) {
        bytes::put(self.buffer.as_mut(), field::DST.start, &addr.0);
    }

    pub fn set_src(&mut self, addr: MacAddr) {
        bytes::put(self.buffer.as_mut(), field::SRC.start, &addr.0);
    }

    /// Writes the EtherType, or the 802.1Q tag followed by the EtherType.
    pub fn set_ethertype(&mut self, vlan: Option<VlanTag>, ethertype: EtherType) {
        let buf = self.buffer.as_mut();
        match vlan {
            Some(tag) => {
                bytes::put_u16(buf, field::ETHERTYPE, EtherType::VLAN.0);
                bytes::put_u16(buf, field::TCI, tag.tci());
                bytes::put_u16(buf, field::INNER_ETHERTYPE, ethertype.0);
            }
            None => bytes::put_u16(buf, field::ETHERTYPE, ethertype.0),
        }
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        bytes::rest_mut(self.buffer.as_mut(), start)
    }
}

/// The parsed Ethernet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    pub src: MacAddr,
    pub dst: MacAddr,
    pub vlan: Option<VlanTag>,
    /// The payload's EtherType (the inner one if tagged).
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Reads the header; refuses QinQ/802.1ad tagging and 802.3 length fields.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &Frame<&T>) -> Result<Self, DropReason> {
        let view = Frame::new_checked(frame.buffer.as_ref())?;
        let stacked = [EtherType::VLAN, EtherType::QINQ];
        if view.outer_ethertype() == EtherType::QINQ
            || (view.is_tagged() && stacked.contains(&view.ethertype()))
        {
            return Err(DropReason::new(Layer::Ethernet, Detail::VlanTagging));
        }
        if view.ethertype().0 < 0x0600 {
            return Err(DropReason::new(Layer::Ethernet, Detail::EtherType));
        }
        Ok(EthernetRepr {
            src: view.src(),
            dst: view.dst(),
            vlan: view.vlan(),
            ethertype: view.ethertype(),
        })
    }

    pub fn header_len(&self) -> usize {
        if self.vlan.is_some() {
            field::TAGGED_HEADER_LEN
        } else {
            field::HEADER_LEN
        }
    }

    /// Writes the header at the start of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        let need = self.header_len();
        EmitError::check(need, buf.len())?;
        let mut frame = Frame::new_unchecked(buf);
        frame.set_dst(self.dst);
        frame.set_src(self.src);
        frame.set_ethertype(self.vlan, self.ethertype);
        Ok(need)
    }
}

/// The smallest Ethernet frame without FCS; shorter frames are padded with zeros on emit,
/// because not every driver (veth, for one) pads them.
pub const MIN_FRAME_LEN: usize = 60;

/// Builds a whole frame: header, payload written by `write_payload`, zero padding to the
/// Ethernet minimum.
pub(crate) fn build(
    header: &EthernetRepr,
    payload_len: usize,
    write_payload: impl FnOnce(&mut [u8]) -> Result<usize, EmitError>,
) -> Result<Vec<u8>, EmitError> {
    let len = header.header_len().saturating_add(payload_len);
    let mut buf = vec![0u8; len.max(MIN_FRAME_LEN)];
    let header_len = header.emit(&mut buf)?;
    write_payload(bytes::rest_mut(&mut buf, header_len))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAGGED_ARP_HEAD: [u8; 18] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x5e, 0x10, 0x00, 0x01, 0x81, 0x00, 0xa0,
        0x2a, 0x08, 0x06,
    ];

    #[test]
    fn parses_an_802_1q_tag() {
        let frame = Frame::new_checked(&TAGGED_ARP_HEAD[..]).unwrap();
        let repr = EthernetRepr::parse(&frame).unwrap();
        assert_eq!(repr.dst, MacAddr::BROADCAST);
        assert_eq!(repr.src.to_string(), "02:00:5e:10:00:01");
        assert!(repr.src.is_locally_administered());
        assert_eq!(
            repr.vlan,
            Some(VlanTag {
                id: 42,
                priority: 5,
                drop_eligible: false
            })
        );
        assert_eq!(repr.ethertype, EtherType::ARP);
        assert!(frame.payload().is_empty());
    }

    #[test]
    fn a_tag_without_room_for_its_inner_type_is_truncated() {
        let short = &TAGGED_ARP_HEAD[..16];
        assert_eq!(
            Frame::new_checked(short).unwrap_err(),
            DropReason::truncated(Layer::Ethernet)
        );
        assert!(Frame::new_checked(&TAGGED_ARP_HEAD[..13]).is_err());
    }

    #[test]
    fn stacked_tags_and_length_fields_are_unsupported() {
        let mut qinq = TAGGED_ARP_HEAD;
        qinq[16..18].copy_from_slice(&[0x81, 0x00]);
        let frame = Frame::new_checked(&qinq[..]).unwrap();
        assert_eq!(
            EthernetRepr::parse(&frame).unwrap_err().detail,
            Detail::VlanTagging
        );

        let mut llc = TAGGED_ARP_HEAD;
        llc[12..14].copy_from_slice(&[0x00, 0x26]);
        let frame = Frame::new_checked(&llc[..]).unwrap();
        assert_eq!(
            EthernetRepr::parse(&frame).unwrap_err().detail,
            Detail::EtherType
        );
    }

    #[test]
    fn emit_round_trips_with_and_without_tag() {
        for vlan in [None, Some(VlanTag::from_tci(0xa02a))] {
            let repr = EthernetRepr {
                src: MacAddr([0x02, 0, 0x5e, 0x10, 0, 1]),
                dst: MacAddr::BROADCAST,
                vlan,
                ethertype: EtherType::IPV6,
            };
            let mut buf = [0u8; 18];
            let len = repr.emit(&mut buf).unwrap();
            assert_eq!(len, repr.header_len());
            let parsed = EthernetRepr::parse(&Frame::new_checked(&buf[..len]).unwrap()).unwrap();
            assert_eq!(parsed, repr);
        }
        let repr = EthernetRepr {
            src: MacAddr::ZERO,
            dst: MacAddr::ZERO,
            vlan: None,
            ethertype: EtherType::ARP,
        };
        assert!(repr.emit(&mut [0u8; 13]).is_err());
    }
}
