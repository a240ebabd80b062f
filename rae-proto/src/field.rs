//! The device record split into addressable fields, the unit of the sink's convergence rule:
//! each field's stored value comes from the highest-seq event that carried it.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::mac::Mac;
use crate::record::{
    Availability, DeviceRecord, DialApp, MdnsService, Reachability, UpnpDescription,
};
use crate::text::Text;

/// One field of a [`DeviceRecord`] with its value. A Delta carries a list of these, each
/// [`FieldId`] at most once. The variant's wire index equals its [`FieldId`] number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    Mac(Mac),
    Ipv4(Option<Ipv4Addr>),
    Ipv6(Vec<Ipv6Addr>),
    DhcpClientId(Option<Vec<u8>>),
    Hostname(Option<Text>),
    Vendor(Option<String>),
    LocallyAdministered(bool),
    DhcpVendorClass(Option<Text>),
    DhcpParamRequestList(Vec<u8>),
    MdnsServices(Vec<MdnsService>),
    Upnp(Option<UpnpDescription>),
    DialApps(Vec<DialApp>),
    Esn(Option<String>),
    Reachability(Reachability),
    Availability(Availability),
    FirstSeen(i64),
    LastSeen(i64),
}

/// Names a field of the record. The numbers are stable: they are the wire index of the
/// matching [`Field`] variant, and the sink may store them. New fields get the next number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum FieldId {
    Mac = 0,
    Ipv4 = 1,
    Ipv6 = 2,
    DhcpClientId = 3,
    Hostname = 4,
    Vendor = 5,
    LocallyAdministered = 6,
    DhcpVendorClass = 7,
    DhcpParamRequestList = 8,
    MdnsServices = 9,
    Upnp = 10,
    DialApps = 11,
    Esn = 12,
    Reachability = 13,
    Availability = 14,
    FirstSeen = 15,
    LastSeen = 16,
}

impl FieldId {
    pub const COUNT: usize = 17;

    /// Every field, in number order.
    pub const ALL: [FieldId; Self::COUNT] = [
        Self::Mac,
        Self::Ipv4,
        Self::Ipv6,
        Self::DhcpClientId,
        Self::Hostname,
        Self::Vendor,
        Self::LocallyAdministered,
        Self::DhcpVendorClass,
        Self::DhcpParamRequestList,
        Self::MdnsServices,
        Self::Upnp,
        Self::DialApps,
        Self::Esn,
        Self::Reachability,
        Self::Availability,
        Self::FirstSeen,
        Self::LastSeen,
    ];

    pub const fn number(self) -> u8 {
        self as u8
    }

    pub fn from_number(number: u8) -> Option<Self> {
        Self::ALL.get(usize::from(number)).copied()
    }

    /// A stable snake_case name, fit for a column name or a log field.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Mac => "mac",
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
            Self::DhcpClientId => "dhcp_client_id",
            Self::Hostname => "hostname",
            Self::Vendor => "vendor",
            Self::LocallyAdministered => "locally_administered",
            Self::DhcpVendorClass => "dhcp_vendor_class",
            Self::DhcpParamRequestList => "dhcp_param_request_list",
            Self::MdnsServices => "mdns_services",
            Self::Upnp => "upnp",
            Self::DialApps => "dial_apps",
            Self::Esn => "esn",
            Self::Reachability => "reachability",
            Self::Availability => "availability",
            Self::FirstSeen => "first_seen_ms",
            Self::LastSeen => "last_seen_ms",
        }
    }
}

impl fmt::Display for FieldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Field {
    pub const fn id(&self) -> FieldId {
        match self {
            Self::Mac(_) => FieldId::Mac,
            Self::Ipv4(_) => FieldId::Ipv4,
            Self::Ipv6(_) => FieldId::Ipv6,
            Self::DhcpClientId(_) => FieldId::DhcpClientId,
            Self::Hostname(_) => FieldId::Hostname,
            Self::Vendor(_) => FieldId::Vendor,
            Self::LocallyAdministered(_) => FieldId::LocallyAdministered,
            Self::DhcpVendorClass(_) => FieldId::DhcpVendorClass,
            Self::DhcpParamRequestList(_) => FieldId::DhcpParamRequestList,
            Self::MdnsServices(_) => FieldId::MdnsServices,
            Self::Upnp(_) => FieldId::Upnp,
            Self::DialApps(_) => FieldId::DialApps,
            Self::Esn(_) => FieldId::Esn,
            Self::Reachability(_) => FieldId::Reachability,
            Self::Availability(_) => FieldId::Availability,
            Self::FirstSeen(_) => FieldId::FirstSeen,
            Self::LastSeen(_) => FieldId::LastSeen,
        }
    }
}

impl DeviceRecord {
    /// The value of one field.
    pub fn field(&self, id: FieldId) -> Field {
        match id {
            FieldId::Mac => Field::Mac(self.mac),
            FieldId::Ipv4 => Field::Ipv4(self.ipv4),
            FieldId::Ipv6 => Field::Ipv6(self.ipv6.clone()),
            FieldId::DhcpClientId => Field::DhcpClientId(self.dhcp_client_id.clone()),
            FieldId::Hostname => Field::Hostname(self.hostname.clone()),
            FieldId::Vendor => Field::Vendor(self.vendor.clone()),
            FieldId::LocallyAdministered => Field::LocallyAdministered(self.locally_administered),
            FieldId::DhcpVendorClass => Field::DhcpVendorClass(self.dhcp_vendor_class.clone()),
            FieldId::DhcpParamRequestList => {
                Field::DhcpParamRequestList(self.dhcp_param_request_list.clone())
            }
            FieldId::MdnsServices => Field::MdnsServices(self.mdns_services.clone()),
            FieldId::Upnp => Field::Upnp(self.upnp.clone()),
            FieldId::DialApps => Field::DialApps(self.dial_apps.clone()),
            FieldId::Esn => Field::Esn(self.esn.clone()),
            FieldId::Reachability => Field::Reachability(self.reachability),
            FieldId::Availability => Field::Availability(self.availability),
            FieldId::FirstSeen => Field::FirstSeen(self.first_seen_ms),
            FieldId::LastSeen => Field::LastSeen(self.last_seen_ms),
        }
    }

    /// Every field, in [`FieldId`] order: what a Snapshot stands for.
    pub fn fields(&self) -> Vec<Field> {
        FieldId::ALL.iter().map(|&id| self.field(id)).collect()
    }

    /// Sets the one record field that `field` names.
    pub fn apply(&mut self, field: Field) {
        match field {
            Field::Mac(v) => self.mac = v,
            Field::Ipv4(v) => self.ipv4 = v,
            Field::Ipv6(v) => self.ipv6 = v,
            Field::DhcpClientId(v) => self.dhcp_client_id = v,
            Field::Hostname(v) => self.hostname = v,
            Field::Vendor(v) => self.vendor = v,
            Field::LocallyAdministered(v) => self.locally_administered = v,
            Field::DhcpVendorClass(v) => self.dhcp_vendor_class = v,
            Field::DhcpParamRequestList(v) => self.dhcp_param_request_list = v,
            Field::MdnsServices(v) => self.mdns_services = v,
            Field::Upnp(v) => self.upnp = v,
            Field::DialApps(v) => self.dial_apps = v,
            Field::Esn(v) => self.esn = v,
            Field::Reachability(v) => self.reachability = v,
            Field::Availability(v) => self.availability = v,
            Field::FirstSeen(v) => self.first_seen_ms = v,
            Field::LastSeen(v) => self.last_seen_ms = v,
        }
    }

    /// The fields of `newer` that differ from `self`, in [`FieldId`] order: applying them to
    /// `self` gives `newer`. `LastSeen` is among them when it moved; the agent drops it when
    /// it is the only change, since `last_seen` never triggers a Delta by itself.
    pub fn diff(&self, newer: &DeviceRecord) -> Vec<Field> {
        FieldId::ALL
            .iter()
            .map(|&id| newer.field(id))
            .filter(|field| *field != self.field(field.id()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Evidence;

    #[test]
    fn numbers_names_and_order_are_consistent() {
        for (i, id) in FieldId::ALL.iter().enumerate() {
            assert_eq!(usize::from(id.number()), i);
            assert_eq!(FieldId::from_number(id.number()), Some(*id));
        }
        assert_eq!(FieldId::from_number(FieldId::COUNT as u8), None);
        let mut names: Vec<_> = FieldId::ALL.iter().map(|id| id.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FieldId::COUNT);
    }

    #[test]
    fn wire_index_is_the_field_number() {
        let record = DeviceRecord::new(Mac([0, 1, 2, 3, 4, 5]), Evidence::ArpReply, 7);
        for field in record.fields() {
            let bytes = postcard::to_allocvec(&field).unwrap();
            assert_eq!(bytes[0], field.id().number(), "{field:?}");
        }
    }

    #[test]
    fn diff_then_apply_reaches_the_newer_record() {
        let old = DeviceRecord::new(Mac([0, 1, 2, 3, 4, 5]), Evidence::ArpReply, 7);
        let mut new = old.clone();
        new.ipv4 = Some(Ipv4Addr::new(198, 18, 0, 10));
        new.hostname = Some(Text::from("tv"));
        new.last_seen_ms = 9;
        let diff = old.diff(&new);
        let ids: Vec<_> = diff.iter().map(Field::id).collect();
        assert_eq!(ids, [FieldId::Ipv4, FieldId::Hostname, FieldId::LastSeen]);
        let mut patched = old.clone();
        for field in diff {
            patched.apply(field);
        }
        assert_eq!(patched, new);
        assert!(new.diff(&new).is_empty());
    }
}
