//! `raectl devices`: one line per session.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::store::DeviceRow;

use super::format::{relative, rfc3339_ms, terminal_safe, truncate, Table};

/// Longest hostname or vendor shown in the table; `show` prints them whole.
const CELL_MAX: usize = 32;

/// The devices as an aligned table, or a note when there are none.
pub fn devices_table(rows: &[DeviceRow], include_closed: bool, now_ms: i64) -> String {
    if rows.is_empty() {
        return match include_closed {
            true => "no devices: the registry has no sessions yet\n".to_owned(),
            false => "no open sessions (`raectl devices --all` includes closed ones)\n".to_owned(),
        };
    }
    let mut header = vec![
        "SESSION",
        "MAC",
        "IP",
        "HOSTNAME",
        "VENDOR",
        "REACHABILITY",
        "AVAILABILITY",
        "LAST SEEN",
    ];
    if include_closed {
        header.push("CLOSED");
    }
    let mut table = Table::new(header);
    for row in rows {
        let mut cells = vec![
            row.session.to_string(),
            row.mac.to_string(),
            row.ipv4.map_or_else(dash, |ip| ip.to_string()),
            text_cell(row.hostname.as_deref()),
            text_cell(row.vendor.as_deref()),
            row.reachability.to_string(),
            row.availability.to_string(),
            relative(row.last_seen_ms, now_ms),
        ];
        if include_closed {
            cells.push(match (row.closed_ms, row.close_reason) {
                (Some(at), Some(reason)) => format!("{reason} {}", relative(at, now_ms)),
                (Some(at), None) => relative(at, now_ms),
                (None, _) => "open".to_owned(),
            });
        }
        table.push(cells);
    }
    table.render()
}

/// One JSON document: `{"db": .., "now_ms": .., "devices": [..]}`.
pub fn devices_json(rows: &[DeviceRow], db: &Path, now_ms: i64) -> Value {
    json!({
        "db": db.display().to_string(),
        "now_ms": now_ms,
        "now": rfc3339_ms(now_ms),
        "devices": rows.iter().map(device_row_json).collect::<Vec<_>>(),
    })
}

/// A session row with its times as unix ms and RFC 3339 UTC; `show` extends it.
pub(super) fn device_row_json(row: &DeviceRow) -> Map<String, Value> {
    let mut object = Map::new();
    object.insert("session".into(), json!(row.session.to_string()));
    object.insert("mac".into(), json!(row.mac.to_string()));
    object.insert("ipv4".into(), json!(row.ipv4.map(|ip| ip.to_string())));
    object.insert("hostname".into(), json!(row.hostname));
    object.insert("vendor".into(), json!(row.vendor));
    object.insert("reachability".into(), json!(row.reachability.as_str()));
    object.insert("availability".into(), json!(row.availability.as_str()));
    insert_time(&mut object, "last_seen", Some(row.last_seen_ms));
    insert_time(&mut object, "opened", Some(row.opened_ms));
    insert_time(&mut object, "closed", row.closed_ms);
    object.insert(
        "close_reason".into(),
        json!(row.close_reason.map(|r| r.as_str())),
    );
    object.insert("last_seq".into(), json!(row.last_seq));
    object
}

/// `<name>_ms` (unix ms) and `<name>` (RFC 3339 UTC), both null when absent.
pub(super) fn insert_time(object: &mut Map<String, Value>, name: &str, ms: Option<i64>) {
    object.insert(format!("{name}_ms"), json!(ms));
    object.insert(name.to_owned(), json!(ms.map(rfc3339_ms)));
}

pub(super) fn dash() -> String {
    "-".to_owned()
}

fn text_cell(text: Option<&str>) -> String {
    text.map_or_else(dash, |t| truncate(&terminal_safe(t), CELL_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rae_proto::{Availability, CloseReason, Liveness, Mac, SessionId};

    fn row(n: u8, closed: bool) -> DeviceRow {
        DeviceRow {
            session: SessionId::from_bytes([n; 16]),
            mac: Mac([2, 0, 0, 0, 0, n]),
            ipv4: (!closed).then(|| std::net::Ipv4Addr::new(198, 18, 0, n)),
            hostname: Some(format!("host-{n}\x1b")),
            vendor: None,
            reachability: Liveness::Online,
            availability: Availability::Available,
            last_seen_ms: 100_000,
            opened_ms: 50_000,
            closed_ms: closed.then_some(110_000),
            close_reason: closed.then_some(CloseReason::Gone),
            last_seq: 7,
        }
    }

    #[test]
    fn the_table_has_a_header_and_one_aligned_line_per_device() {
        let text = devices_table(&[row(1, false), row(2, true)], true, 112_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("SESSION"), "{text}");
        let mac_column = lines[0].find("MAC").unwrap();
        assert_eq!(&lines[1][mac_column..mac_column + 17], "02:00:00:00:00:01");
        assert!(lines[1].contains("198.18.0.1") && lines[1].contains("12s ago"));
        assert!(lines[1].contains("host-1\\u{1b}"), "escaped: {text}");
        assert!(lines[1].ends_with("open"), "{text}");
        assert!(lines[2].ends_with("gone 2s ago"), "{text}");
    }

    #[test]
    fn no_devices_is_a_note_not_an_empty_table() {
        assert!(devices_table(&[], false, 0).contains("--all"));
    }

    #[test]
    fn json_has_times_in_ms_and_rfc3339() {
        let value = devices_json(&[row(2, true)], Path::new("/x/registry.db"), 0);
        let device = &value["devices"][0];
        assert_eq!(device["mac"], "02:00:00:00:00:02");
        assert_eq!(device["ipv4"], Value::Null);
        assert_eq!(device["closed_ms"], 110_000);
        assert_eq!(device["closed"], "1970-01-01T00:01:50.000Z");
        assert_eq!(device["close_reason"], "gone");
        assert_eq!(
            device["hostname"], "host-2\u{1b}",
            "JSON keeps the text as is"
        );
    }
}
