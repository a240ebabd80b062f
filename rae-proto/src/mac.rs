//! The device's Ethernet address.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A 48-bit MAC address. Text form `aa:bb:cc:dd:ee:ff` (lowercase); parsing also accepts
/// uppercase digits and `-` separators, as printed on labels and by other tools.
/// On the wire: the 6 bytes, no length prefix.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Mac(pub [u8; 6]);

/// Why a text is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "MAC address must be six two-digit hex octets separated by `:` or `-`, e.g. aa:bb:cc:dd:ee:ff"
)]
pub struct MacParseError;

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    pub const ZERO: Mac = Mac([0; 6]);

    pub const fn new(octets: [u8; 6]) -> Self {
        Self(octets)
    }

    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The U/L bit: set on addresses the device made up itself, which is how phones and TVs
    /// randomize their MAC per network. Such a MAC says nothing about the vendor.
    pub const fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The I/G bit: a group address never identifies one device.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub const fn is_broadcast(&self) -> bool {
        matches!(self.0, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
    }

    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// The first three octets, the vendor's OUI (meaningful only when not locally administered).
    pub const fn oui(&self) -> [u8; 3] {
        [self.0[0], self.0[1], self.0[2]]
    }
}

impl From<[u8; 6]> for Mac {
    fn from(octets: [u8; 6]) -> Self {
        Self(octets)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({self})")
    }
}

impl FromStr for Mac {
    type Err = MacParseError;

    fn from_str(text: &str) -> Result<Self, MacParseError> {
        let bytes = text.as_bytes();
        if bytes.len() != 17 {
            return Err(MacParseError);
        }
        let separator = bytes[2];
        if separator != b':' && separator != b'-' {
            return Err(MacParseError);
        }
        let mut octets = [0u8; 6];
        for (i, octet) in octets.iter_mut().enumerate() {
            let at = i * 3;
            if i > 0 && bytes[at - 1] != separator {
                return Err(MacParseError);
            }
            let hex = text.get(at..at + 2).ok_or(MacParseError)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(MacParseError);
            }
            *octet = u8::from_str_radix(hex, 16).map_err(|_| MacParseError)?;
        }
        Ok(Self(octets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_accepted_forms() {
        let mac = Mac([0x02, 0x1a, 0xff, 0x00, 0x9b, 0xc0]);
        assert_eq!(mac.to_string(), "02:1a:ff:00:9b:c0");
        assert_eq!("02:1a:ff:00:9b:c0".parse::<Mac>(), Ok(mac));
        assert_eq!("02-1A-FF-00-9B-C0".parse::<Mac>(), Ok(mac));
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "02:1a:ff:00:9b",
            "02:1a:ff:00:9b:c0:11",
            "02:1a-ff:00:9b:c0",
            "02:1a:ff:00:9b:g0",
            "+2:1a:ff:00:9b:c0",
            "021a.ff00.9bc0.",
            "02:1a:ff:00:9b:ć",
        ] {
            assert_eq!(bad.parse::<Mac>(), Err(MacParseError), "{bad}");
        }
    }

    #[test]
    fn bits() {
        assert!(Mac([0x02, 0, 0, 0, 0, 1]).is_locally_administered());
        assert!(Mac([0xda, 0, 0, 0, 0, 1]).is_locally_administered());
        assert!(!Mac([0x00, 0x1a, 0x11, 0, 0, 1]).is_locally_administered());
        assert!(Mac([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert_eq!(Mac([0x00, 0x1a, 0x11, 1, 2, 3]).oui(), [0x00, 0x1a, 0x11]);
    }
}
