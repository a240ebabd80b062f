//! How the device record maps onto columns, and the column arrays a batch binds to `UNNEST`.
//!
//! Every field has its value column(s) and a `{field}_seq` column. Lists that cannot travel
//! as a nested array through `UNNEST` go as text and are rebuilt in SQL: `ipv6` as a
//! comma-joined list (`TEXT[]` column), `upnp` as JSON (`JSONB` column), `pending_runs` as a
//! comma-joined list (`INT8[]` column: the runs flattened, `first,last,first,last,...`). mDNS services and DIAL apps are child rows.
//!
//! Text that PostgreSQL and CockroachDB cannot store (a NUL in `TEXT` or in a JSON string) is
//! kept with the NUL replaced by U+FFFD; byte strings of the record (`Text`, option 61) are
//! stored exactly as `BYTEA`.

use std::fmt::Write as _;

use rae_proto::{DialApp, DialAppState, Field, FieldId, MdnsService, Text, UpnpDescription};
use uuid::Uuid;

/// The SQL type of a column and how the value travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Bytes,
    Bool,
    /// Comma-joined text, stored as `TEXT[]`.
    TextList,
    /// JSON text, stored as `JSONB`.
    Json,
    /// Comma-joined integers, stored as `INT8[]`.
    IntList,
}

impl Kind {
    /// The array type the values are bound as.
    pub const fn bind_type(self) -> &'static str {
        match self {
            Self::Text | Self::TextList | Self::Json | Self::IntList => "TEXT[]",
            Self::Int => "INT8[]",
            Self::Bytes => "BYTEA[]",
            Self::Bool => "BOOL[]",
        }
    }

    /// The expression that turns the unnested value `b.{column}` into the stored one.
    pub fn select_expr(self, column: &str) -> String {
        match self {
            Self::TextList => format!(
                "CASE WHEN b.{column} IS NULL THEN NULL WHEN b.{column} = '' \
                 THEN ARRAY[]::TEXT[] ELSE string_to_array(b.{column}, ',') END"
            ),
            Self::Json => format!("b.{column}::JSONB"),
            Self::IntList => format!(
                "CASE WHEN b.{column} IS NULL THEN NULL WHEN b.{column} = '' \
                 THEN ARRAY[]::INT8[] ELSE string_to_array(b.{column}, ',')::INT8[] END"
            ),
            _ => format!("b.{column}"),
        }
    }
}

/// The value columns of a field (its `_seq` column aside). mDNS services and DIAL apps have
/// none: their values are child rows.
pub fn value_columns(id: FieldId) -> &'static [(&'static str, Kind)] {
    match id {
        FieldId::Mac => &[("mac", Kind::Text)],
        FieldId::Ipv4 => &[("ipv4", Kind::Text)],
        FieldId::Ipv6 => &[("ipv6", Kind::TextList)],
        FieldId::DhcpClientId => &[("dhcp_client_id", Kind::Bytes)],
        FieldId::Hostname => &[("hostname", Kind::Bytes)],
        FieldId::Vendor => &[("vendor", Kind::Text)],
        FieldId::LocallyAdministered => &[("locally_administered", Kind::Bool)],
        FieldId::DhcpVendorClass => &[("dhcp_vendor_class", Kind::Bytes)],
        FieldId::DhcpParamRequestList => &[("dhcp_param_request_list", Kind::Bytes)],
        FieldId::MdnsServices | FieldId::DialApps => &[],
        FieldId::Upnp => &[("upnp", Kind::Json)],
        FieldId::Esn => &[("esn", Kind::Text)],
        FieldId::Reachability => &[
            ("reachability", Kind::Text),
            ("reachability_evidence", Kind::Text),
            ("reachability_rtt_us", Kind::Int),
        ],
        FieldId::Availability => &[("availability", Kind::Text)],
        FieldId::FirstSeen => &[("first_seen_ms", Kind::Int)],
        FieldId::LastSeen => &[("last_seen_ms", Kind::Int)],
    }
}

pub fn seq_column(id: FieldId) -> String {
    format!("{}_seq", id.name())
}

/// One value of one column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Text(Option<String>),
    Int(Option<i64>),
    Bytes(Option<Vec<u8>>),
    Bool(Option<bool>),
}

impl Cell {
    pub fn null(kind: Kind) -> Self {
        match kind {
            Kind::Text | Kind::TextList | Kind::Json | Kind::IntList => Self::Text(None),
            Kind::Int => Self::Int(None),
            Kind::Bytes => Self::Bytes(None),
            Kind::Bool => Self::Bool(None),
        }
    }
}

/// The value cells of a field, in [`value_columns`] order.
pub fn cells(field: &Field) -> Vec<Cell> {
    let text = |t: &Option<Text>| Cell::Bytes(t.as_ref().map(|t| t.as_bytes().to_vec()));
    match field {
        Field::Mac(mac) => vec![Cell::Text(Some(mac.to_string()))],
        Field::Ipv4(ip) => vec![Cell::Text(ip.map(|ip| ip.to_string()))],
        Field::Ipv6(ips) => {
            let joined: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
            vec![Cell::Text(Some(joined.join(",")))]
        }
        Field::DhcpClientId(id) => vec![Cell::Bytes(id.clone())],
        Field::Hostname(name) => vec![text(name)],
        Field::Vendor(vendor) => vec![Cell::Text(vendor.as_deref().map(storable))],
        Field::LocallyAdministered(flag) => vec![Cell::Bool(Some(*flag))],
        Field::DhcpVendorClass(class) => vec![text(class)],
        Field::DhcpParamRequestList(list) => vec![Cell::Bytes(Some(list.clone()))],
        Field::MdnsServices(_) | Field::DialApps(_) => vec![],
        Field::Upnp(upnp) => vec![Cell::Text(upnp.as_ref().map(upnp_json))],
        Field::Esn(esn) => vec![Cell::Text(esn.as_deref().map(storable))],
        Field::Reachability(r) => vec![
            Cell::Text(Some(r.state.as_str().to_owned())),
            Cell::Text(Some(r.evidence.to_string())),
            Cell::Int(r.rtt_us.map(i64::from)),
        ],
        Field::Availability(a) => vec![Cell::Text(Some(a.as_str().to_owned()))],
        Field::FirstSeen(ms) | Field::LastSeen(ms) => vec![Cell::Int(Some(*ms))],
    }
}

/// Text as the databases can store it: a NUL becomes U+FFFD.
pub fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// A JSON string literal of `text` (NULs replaced, see [`storable`]).
fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push('\u{FFFD}'),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_opt_string(out: &mut String, text: Option<&str>) {
    match text {
        Some(text) => json_string(out, text),
        None => out.push_str("null"),
    }
}

/// `{"friendly_name": .., "manufacturer": .., "model_name": .., "model_number": ..,
/// "serial_number": .., "udn": ..}`, absent parts as `null`.
pub fn upnp_json(upnp: &UpnpDescription) -> String {
    let mut out = String::from("{");
    let parts = [
        ("friendly_name", &upnp.friendly_name),
        ("manufacturer", &upnp.manufacturer),
        ("model_name", &upnp.model_name),
        ("model_number", &upnp.model_number),
        ("serial_number", &upnp.serial_number),
        ("udn", &upnp.udn),
    ];
    for (i, (key, value)) in parts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(&mut out, key);
        out.push(':');
        json_opt_string(&mut out, value.as_deref());
    }
    out.push('}');
    out
}

/// The TXT entries as a JSON array of `{"key": k, "value": v}`: `value` is `null` for a bare
/// key, a string when the value is UTF-8 without NUL, and otherwise absent with
/// `"value_hex"` holding the bytes.
pub fn txt_json(service: &MdnsService) -> String {
    let mut out = String::from("[");
    for (i, entry) in service.txt.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"key\":");
        json_string(&mut out, &entry.key);
        match &entry.value {
            None => out.push_str(",\"value\":null"),
            Some(value) => match value.as_str().filter(|s| !s.contains('\0')) {
                Some(text) => {
                    out.push_str(",\"value\":");
                    json_string(&mut out, text);
                }
                None => {
                    out.push_str(",\"value_hex\":\"");
                    for byte in value.as_bytes() {
                        let _ = write!(out, "{byte:02x}");
                    }
                    out.push('"');
                }
            },
        }
        out.push('}');
    }
    out.push(']');
    out
}

/// `device_mdns_services` rows of a batch, as column arrays.
#[derive(Debug, Default)]
pub struct MdnsRows {
    pub session: Vec<Uuid>,
    pub position: Vec<i64>,
    pub service_type: Vec<String>,
    pub instance: Vec<String>,
    pub port: Vec<i64>,
    pub txt: Vec<String>,
}

impl MdnsRows {
    pub fn push(&mut self, session: Uuid, services: &[MdnsService]) {
        for (position, service) in (0_i64..).zip(services) {
            self.session.push(session);
            self.position.push(position);
            self.service_type.push(storable(&service.service_type));
            self.instance.push(storable(&service.instance));
            self.port.push(i64::from(service.port));
            self.txt.push(txt_json(service));
        }
    }
}

/// `device_dial_apps` rows of a batch, as column arrays.
#[derive(Debug, Default)]
pub struct DialRows {
    pub session: Vec<Uuid>,
    pub position: Vec<i64>,
    pub name: Vec<String>,
    pub state: Vec<String>,
    pub state_detail: Vec<Option<String>>,
    pub additional_data: Vec<Option<String>>,
}

impl DialRows {
    pub fn push(&mut self, session: Uuid, apps: &[DialApp]) {
        for (position, app) in (0_i64..).zip(apps) {
            let (state, detail) = match &app.state {
                DialAppState::Running => ("running", None),
                DialAppState::Stopped => ("stopped", None),
                DialAppState::Installable(url) => ("installable", Some(storable(url))),
                DialAppState::Hidden => ("hidden", None),
                DialAppState::Other(text) => ("other", Some(storable(text))),
            };
            self.session.push(session);
            self.position.push(position);
            self.name.push(storable(&app.name));
            self.state.push(state.to_owned());
            self.state_detail.push(detail);
            self.additional_data
                .push(app.additional_data.as_deref().map(storable));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rae_proto::TxtEntry;

    #[test]
    fn every_field_has_as_many_cells_as_columns() {
        let record = rae_proto::DeviceRecord::new(
            rae_proto::Mac([2, 0, 0, 0, 0, 1]),
            rae_proto::Evidence::ArpReply,
            1,
        );
        for field in record.fields() {
            let cells = cells(&field);
            let columns = value_columns(field.id());
            assert_eq!(cells.len(), columns.len(), "{:?}", field.id());
            for (cell, (_, kind)) in cells.iter().zip(columns) {
                assert_eq!(
                    std::mem::discriminant(cell),
                    std::mem::discriminant(&Cell::null(*kind))
                );
            }
        }
    }

    #[test]
    fn json_escapes_and_keeps_bytes() {
        let service = MdnsService {
            service_type: "_x._tcp.local.".into(),
            instance: "i".into(),
            port: 1,
            txt: vec![
                TxtEntry {
                    key: "a\"\\\n\0".into(),
                    value: None,
                },
                TxtEntry {
                    key: "b".into(),
                    value: Some(Text::from(&[0xff, 0x00][..])),
                },
                TxtEntry {
                    key: "c".into(),
                    value: Some(Text::from("v")),
                },
            ],
        };
        assert_eq!(
            txt_json(&service),
            "[{\"key\":\"a\\\"\\\\\\u000a\u{FFFD}\",\"value\":null},\
             {\"key\":\"b\",\"value_hex\":\"ff00\"},{\"key\":\"c\",\"value\":\"v\"}]"
        );
    }
}
