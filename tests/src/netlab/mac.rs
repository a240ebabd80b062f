//! MAC addresses as the lab writes and reads them (`ip`, `bridge`, dnsmasq leases).

use std::fmt;
use std::str::FromStr;

use super::error::LabError;

/// A 48-bit Ethernet address; text form `02:72:6c:01:00:00`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The lab's default for DUT `index` of lab `slot`: locally administered, unicast,
    /// and the same on every run, so failures can be compared across runs.
    pub fn for_dut(slot: u16, index: u32) -> MacAddr {
        let [.., hi, lo] = index.to_be_bytes();
        MacAddr([0x02, 0x72, 0x6c, (slot & 0xff) as u8, hi, lo])
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// The modified EUI-64 interface identifier SLAAC derives from this address.
    pub fn eui64_interface_id(&self) -> [u16; 4] {
        let [a, b, c, d, e, f] = self.0;
        [
            u16::from_be_bytes([a ^ 0x02, b]),
            u16::from_be_bytes([c, 0xff]),
            u16::from_be_bytes([0xfe, d]),
            u16::from_be_bytes([e, f]),
        ]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl FromStr for MacAddr {
    type Err = LabError;

    fn from_str(text: &str) -> Result<MacAddr, LabError> {
        let invalid = || LabError::Invalid {
            what: "MAC address",
            value: text.to_string(),
            why: "expected six hex octets separated by `:`",
        };
        let mut octets = [0u8; 6];
        let mut parts = text.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(invalid)?;
            if part.len() != 2 {
                return Err(invalid());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(MacAddr(octets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let mac = MacAddr([0x02, 0x72, 0x6c, 0x0c, 0x00, 0x2a]);
        assert_eq!(mac.to_string(), "02:72:6c:0c:00:2a");
        assert_eq!("02:72:6C:0c:00:2a".parse::<MacAddr>().unwrap(), mac);
        for bad in [
            "",
            "02:72:6c:0c:00",
            "02:72:6c:0c:00:2a:01",
            "2:72:6c:0c:00:2a",
            "02:72:6c:0c:00:zz",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn default_dut_macs_are_local_unicast_and_distinct() {
        let a = MacAddr::for_dut(3, 0);
        let b = MacAddr::for_dut(3, 1);
        let c = MacAddr::for_dut(4, 0);
        assert!(a != b && a != c);
        for mac in [a, b, c] {
            assert!(!mac.is_multicast());
            assert_eq!(mac.0[0] & 0x02, 0x02);
        }
    }

    #[test]
    fn eui64_flips_the_universal_local_bit() {
        let mac: MacAddr = "02:72:6c:fa:00:00".parse().unwrap();
        assert_eq!(mac.eui64_interface_id(), [0x0072, 0x6cff, 0xfefa, 0x0000]);
    }
}
