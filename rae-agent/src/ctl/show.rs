//! `raectl show`: one session's whole record and its recent history with evidence.

use std::fmt::Write as _;

use rae_proto::{DeviceRecord, Reachability, Text};
use serde_json::{json, Value};

use crate::store::{DeviceRow, HistoryRow};

use super::devices::{dash, device_row_json, insert_time};
use super::events::{event_json, history_body};
use super::format::{hex, rfc3339_ms, terminal_safe, when};

/// What `show` prints: the session row, its full record and its newest history rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDetail {
    pub row: DeviceRow,
    pub record: DeviceRecord,
    /// Oldest first.
    pub history: Vec<HistoryRow>,
    /// How many rows were asked for (said in the heading).
    pub history_limit: usize,
}

const LABEL: usize = 20;

fn line(out: &mut String, label: &str, value: impl AsRef<str>) {
    let _ = writeln!(out, "{label:<LABEL$}{}", value.as_ref());
}

/// Continuation lines of a multi-line value, indented under the value column.
fn more(out: &mut String, value: impl AsRef<str>) {
    let _ = writeln!(out, "{:LABEL$}{}", "", value.as_ref());
}

/// Device text quoted (so blanks show), with control characters escaped.
fn quoted(text: &Text) -> String {
    format!("\"{}\"", terminal_safe(&text.to_string_lossy()))
}

fn optional(value: Option<String>) -> String {
    value.unwrap_or_else(dash)
}

fn reachability(r: &Reachability) -> String {
    match r.rtt_us {
        Some(rtt) => format!(
            "{} (evidence {}, rtt {}.{:03} ms)",
            r.state,
            r.evidence,
            rtt / 1000,
            rtt % 1000
        ),
        None => format!("{} (evidence {})", r.state, r.evidence),
    }
}

/// Every field of the record, one per line (lists one item per line), then the history.
pub fn show_text(detail: &DeviceDetail, now_ms: i64) -> String {
    let (row, record) = (&detail.row, &detail.record);
    let mut out = String::new();
    line(&mut out, "session", row.session.to_string());
    line(
        &mut out,
        "state",
        match (row.closed_ms, row.close_reason) {
            (None, _) => "open".to_owned(),
            (Some(_), Some(reason)) => format!("closed ({reason})"),
            (Some(_), None) => "closed".to_owned(),
        },
    );
    line(&mut out, "seq", row.last_seq.to_string());
    line(&mut out, "opened", when(row.opened_ms, now_ms));
    line(
        &mut out,
        "closed",
        optional(row.closed_ms.map(|at| when(at, now_ms))),
    );
    line(&mut out, "mac", record.mac.to_string());
    line(
        &mut out,
        "randomized mac",
        match record.locally_administered {
            true => "yes (locally administered)",
            false => "no",
        },
    );
    line(
        &mut out,
        "ipv4",
        optional(record.ipv4.map(|ip| ip.to_string())),
    );
    list(
        &mut out,
        "ipv6",
        record.ipv6.iter().map(ToString::to_string),
    );
    line(
        &mut out,
        "hostname",
        optional(record.hostname.as_ref().map(quoted)),
    );
    line(
        &mut out,
        "dhcp client id",
        optional(record.dhcp_client_id.as_deref().map(hex)),
    );
    line(
        &mut out,
        "vendor",
        optional(record.vendor.as_deref().map(terminal_safe)),
    );
    line(
        &mut out,
        "vendor class",
        optional(record.dhcp_vendor_class.as_ref().map(quoted)),
    );
    line(
        &mut out,
        "param request list",
        match record.dhcp_param_request_list.is_empty() {
            true => dash(),
            false => join(record.dhcp_param_request_list.iter().map(u8::to_string)),
        },
    );
    list(
        &mut out,
        "mdns services",
        record.mdns_services.iter().map(|service| {
            let mut text = format!(
                "\"{}\" {} port {}",
                terminal_safe(&service.instance),
                terminal_safe(&service.service_type),
                service.port
            );
            for entry in &service.txt {
                text.push(' ');
                text.push_str(&terminal_safe(&entry.key));
                if let Some(value) = &entry.value {
                    let _ = write!(text, "={}", terminal_safe(&value.to_string_lossy()));
                }
            }
            text
        }),
    );
    match &record.upnp {
        None => line(&mut out, "upnp", dash()),
        Some(upnp) => list(
            &mut out,
            "upnp",
            [
                ("friendly name", &upnp.friendly_name),
                ("manufacturer", &upnp.manufacturer),
                ("model name", &upnp.model_name),
                ("model number", &upnp.model_number),
                ("serial number", &upnp.serial_number),
                ("udn", &upnp.udn),
            ]
            .into_iter()
            .map(|(name, value)| {
                format!("{name}: {}", optional(value.as_deref().map(terminal_safe)))
            }),
        ),
    }
    list(
        &mut out,
        "dial apps",
        record.dial_apps.iter().map(|app| {
            let mut text = format!("{} {}", terminal_safe(&app.name), app.state);
            if let Some(data) = &app.additional_data {
                let _ = write!(text, " ({})", terminal_safe(data));
            }
            text
        }),
    );
    line(
        &mut out,
        "esn",
        optional(record.esn.as_deref().map(terminal_safe)),
    );
    line(&mut out, "reachability", reachability(&record.reachability));
    line(&mut out, "availability", record.availability.to_string());
    line(&mut out, "first seen", when(record.first_seen_ms, now_ms));
    line(&mut out, "last seen", when(record.last_seen_ms, now_ms));

    let _ = writeln!(
        out,
        "\nhistory (newest {} of this session, oldest first):",
        detail.history_limit
    );
    if detail.history.is_empty() {
        out.push_str("  none kept\n");
    }
    for row in &detail.history {
        let _ = writeln!(out, "  {}  {}", rfc3339_ms(row.at_ms), history_body(row));
    }
    out
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// A list value: `-` when empty, else one item per line.
fn list(out: &mut String, label: &str, items: impl Iterator<Item = String>) {
    let mut items = items.peekable();
    if items.peek().is_none() {
        line(out, label, dash());
        return;
    }
    let mut first = true;
    for item in items {
        match first {
            true => line(out, label, item),
            false => more(out, item),
        }
        first = false;
    }
}

fn text_json(text: &Option<Text>) -> Value {
    json!(text.as_ref().map(|t| t.to_string_lossy()))
}

/// The record with every field; device text is lossy UTF-8, the client id hex.
fn record_json(record: &DeviceRecord) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("mac".into(), json!(record.mac.to_string()));
    object.insert("ipv4".into(), json!(record.ipv4.map(|ip| ip.to_string())));
    object.insert(
        "ipv6".into(),
        json!(record
            .ipv6
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()),
    );
    object.insert("hostname".into(), text_json(&record.hostname));
    object.insert(
        "dhcp_client_id".into(),
        json!(record.dhcp_client_id.as_deref().map(hex)),
    );
    object.insert("vendor".into(), json!(record.vendor));
    object.insert("randomized".into(), json!(record.locally_administered));
    object.insert(
        "dhcp_vendor_class".into(),
        text_json(&record.dhcp_vendor_class),
    );
    object.insert(
        "dhcp_param_request_list".into(),
        json!(record.dhcp_param_request_list),
    );
    object.insert(
        "mdns_services".into(),
        record
            .mdns_services
            .iter()
            .map(|s| {
                json!({
                    "service_type": s.service_type,
                    "instance": s.instance,
                    "port": s.port,
                    "txt": s.txt.iter().map(|entry| json!({
                        "key": entry.key,
                        "value": text_json(&entry.value),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    );
    object.insert(
        "upnp".into(),
        record.upnp.as_ref().map_or(Value::Null, |u| {
            json!({
                "friendly_name": u.friendly_name,
                "manufacturer": u.manufacturer,
                "model_name": u.model_name,
                "model_number": u.model_number,
                "serial_number": u.serial_number,
                "udn": u.udn,
            })
        }),
    );
    object.insert(
        "dial_apps".into(),
        record
            .dial_apps
            .iter()
            .map(|app| {
                json!({
                    "name": app.name,
                    "state": app.state.to_string(),
                    "additional_data": app.additional_data,
                })
            })
            .collect(),
    );
    object.insert("esn".into(), json!(record.esn));
    object.insert(
        "reachability".into(),
        json!({
            "state": record.reachability.state.as_str(),
            "evidence": record.reachability.evidence.to_string(),
            "rtt_us": record.reachability.rtt_us,
        }),
    );
    object.insert("availability".into(), json!(record.availability.as_str()));
    insert_time(&mut object, "first_seen", Some(record.first_seen_ms));
    insert_time(&mut object, "last_seen", Some(record.last_seen_ms));
    Value::Object(object)
}

/// `{<the devices row>, "record": {..}, "history": [..]}`.
pub fn show_json(detail: &DeviceDetail) -> Value {
    let mut object = device_row_json(&detail.row);
    object.insert("record".into(), record_json(&detail.record));
    object.insert(
        "history".into(),
        detail
            .history
            .iter()
            .map(|row| event_json(row, Some(detail.row.mac)))
            .collect(),
    );
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HistoryKind;
    use rae_proto::{
        Availability, DialApp, DialAppState, Evidence, Liveness, Mac, MdnsService, SessionId,
        TxtEntry, UpnpDescription,
    };

    fn detail() -> DeviceDetail {
        let mac = Mac([0x02, 0, 0, 0, 0, 9]);
        let mut record = DeviceRecord::new(mac, Evidence::ArpReply, 1_000);
        record.ipv4 = Some("198.18.0.9".parse().unwrap());
        record.ipv6 = vec![
            "2001:db8::9".parse().unwrap(),
            "2001:db8::a".parse().unwrap(),
        ];
        record.hostname = Some(Text::new(b"tv\xff".to_vec()));
        record.dhcp_client_id = Some(vec![1, 2, 0, 0, 0, 0, 9]);
        record.dhcp_param_request_list = vec![1, 3, 6];
        record.mdns_services = vec![MdnsService {
            service_type: "_googlecast._tcp.local.".into(),
            instance: "Living Room".into(),
            port: 8009,
            txt: vec![TxtEntry {
                key: "md".into(),
                value: Some(Text::from("Chromecast")),
            }],
        }];
        record.upnp = Some(UpnpDescription {
            friendly_name: Some("Living Room".into()),
            ..UpnpDescription::default()
        });
        record.dial_apps = vec![DialApp {
            name: "Netflix".into(),
            state: DialAppState::Running,
            additional_data: Some("<esn>NFX-1</esn>".into()),
        }];
        record.esn = Some("NFX-1".into());
        record.reachability.rtt_us = Some(1_234);
        let session = SessionId::from_bytes([7; 16]);
        DeviceDetail {
            row: DeviceRow {
                session,
                mac,
                ipv4: record.ipv4,
                hostname: Some("tv\u{fffd}".into()),
                vendor: None,
                reachability: Liveness::Online,
                availability: Availability::Available,
                last_seen_ms: 1_000,
                opened_ms: 1_000,
                closed_ms: None,
                close_reason: None,
                last_seq: 2,
            },
            record,
            history: vec![HistoryRow {
                id: 5,
                session,
                seq: Some(2),
                at_ms: 1_000,
                recorded_ms: 1_001,
                kind: HistoryKind::Updated,
                summary: "ARP reply".into(),
                fields: "ipv4=198.18.0.9".into(),
            }],
            history_limit: 20,
        }
    }

    #[test]
    fn text_shows_every_field_and_the_history() {
        let text = show_text(&detail(), 61_000);
        let field = |label: &str, value: &str| format!("{label:<LABEL$}{value}");
        for expected in [
            field("session", "07070707-0707-0707-0707-070707070707"),
            field("state", "open"),
            format!("{}\n{:LABEL$}2001:db8::a", field("ipv6", "2001:db8::9"), ""),
            field("hostname", "\"tv\u{fffd}\""),
            field("dhcp client id", "01:02:00:00:00:00:09"),
            field("randomized mac", "yes (locally administered)"),
            field("param request list", "1, 3, 6"),
            "\"Living Room\" _googlecast._tcp.local. port 8009 md=Chromecast".to_owned(),
            field("upnp", "friendly name: Living Room"),
            field("dial apps", "Netflix running (<esn>NFX-1</esn>)"),
            field("esn", "NFX-1"),
            field("reachability", "online (evidence arp_reply, rtt 1.234 ms)"),
            field("last seen", "1970-01-01T00:00:01.000Z (1m00s ago)"),
            "history (newest 20".to_owned(),
            "updated       #2  ARP reply | ipv4=198.18.0.9".to_owned(),
        ] {
            assert!(text.contains(&expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn json_has_the_record_and_history() {
        let value = show_json(&detail());
        assert_eq!(value["session"], "07070707-0707-0707-0707-070707070707");
        let record = &value["record"];
        assert_eq!(record["ipv6"][1], "2001:db8::a");
        assert_eq!(record["dhcp_client_id"], "01:02:00:00:00:00:09");
        assert_eq!(record["mdns_services"][0]["txt"][0]["value"], "Chromecast");
        assert_eq!(record["dial_apps"][0]["state"], "running");
        assert_eq!(record["reachability"]["rtt_us"], 1234);
        assert_eq!(record["first_seen"], "1970-01-01T00:00:01.000Z");
        assert_eq!(value["history"][0]["fields"], "ipv4=198.18.0.9");
        assert_eq!(value["history"][0]["mac"], "02:00:00:00:00:09");
    }
}
