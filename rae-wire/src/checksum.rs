//! The Internet checksum (RFC 1071) and the IPv4/IPv6 pseudo-headers.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A running one's-complement sum. Data may be added in pieces of any length: an odd byte
/// left over from one piece pairs with the first byte of the next.
#[derive(Clone, Copy, Debug, Default)]
pub struct Checksum {
    // Wide enough that no realistic packet can overflow it before folding.
    sum: u64,
    odd: Option<u8>,
}

impl Checksum {
    pub fn new() -> Self {
        Checksum::default()
    }

    pub fn add(&mut self, data: &[u8]) -> &mut Self {
        let mut data = data;
        if let Some(high) = self.odd.take() {
            match data.split_first() {
                Some((low, tail)) => {
                    self.sum += u64::from(u16::from_be_bytes([high, *low]));
                    data = tail;
                }
                None => {
                    self.odd = Some(high);
                    return self;
                }
            }
        }
        let mut words = data.chunks_exact(2);
        for word in &mut words {
            if let [high, low] = word {
                self.sum += u64::from(u16::from_be_bytes([*high, *low]));
            }
        }
        if let [last] = words.remainder() {
            self.odd = Some(*last);
        }
        self
    }

    pub fn add_u16(&mut self, value: u16) -> &mut Self {
        self.add(&value.to_be_bytes())
    }

    pub fn add_u32(&mut self, value: u32) -> &mut Self {
        self.add(&value.to_be_bytes())
    }

    /// Adds the IPv4 pseudo-header (RFC 768).
    pub fn ipv4_pseudo_header(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: u8,
        length: u16,
    ) -> &mut Self {
        self.add(&src.octets())
            .add(&dst.octets())
            .add(&[0, protocol])
            .add_u16(length)
    }

    /// Adds the IPv6 pseudo-header (RFC 8200 section 8.1).
    pub fn ipv6_pseudo_header(
        &mut self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        next_header: u8,
        length: u32,
    ) -> &mut Self {
        self.add(&src.octets())
            .add(&dst.octets())
            .add_u32(length)
            .add(&[0, 0, 0, next_header])
    }

    /// The checksum to put in a header: the complement of the folded sum. Over data that
    /// already holds a correct checksum this is 0.
    pub fn finish(&self) -> u16 {
        let mut sum = self.sum + self.odd.map_or(0, |high| u64::from(high) << 8);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        // The loop leaves sum <= 0xffff, so the conversion never fails.
        !u16::try_from(sum).unwrap_or(u16::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // The worked example of RFC 1071 section 3: the sum of these words is ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(Checksum::new().add(&data).finish(), !0xddf2);
    }

    #[test]
    fn pieces_of_any_length_sum_like_the_whole() {
        let data: Vec<u8> = (0u8..=200).map(|b| b.wrapping_mul(37)).collect();
        let whole = Checksum::new().add(&data).finish();
        for cut in 0..data.len() {
            let (a, b) = data.split_at(cut);
            assert_eq!(
                Checksum::new().add(a).add(b).finish(),
                whole,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_correct_checksum_verifies_to_zero() {
        // An IPv4 header 198.18.0.1 -> 198.18.0.199 with its checksum ad8d in bytes 10-11.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xad, 0x8d, 198, 18, 0, 1,
            198, 18, 0, 199,
        ];
        assert_eq!(Checksum::new().add(&header).finish(), 0);
    }
}
