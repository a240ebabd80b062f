//! `raectl events` and the history part of `raectl show`: one line per history row.

use std::collections::HashMap;

use rae_proto::{Mac, SessionId};
use serde_json::{json, Value};

use crate::store::{DeviceRow, HistoryRow};

use super::format::{rfc3339_ms, terminal_safe};

/// Which MAC each session belongs to: history rows name only the session.
#[derive(Debug, Clone, Default)]
pub struct SessionMacs(HashMap<SessionId, Mac>);

impl SessionMacs {
    pub fn from_rows(rows: &[DeviceRow]) -> SessionMacs {
        SessionMacs(rows.iter().map(|row| (row.session, row.mac)).collect())
    }

    pub fn get(&self, session: &SessionId) -> Option<Mac> {
        self.0.get(session).copied()
    }

    /// Whether every row's session is known; when not, the caller re-reads the sessions.
    pub fn knows_all(&self, rows: &[HistoryRow]) -> bool {
        rows.iter().all(|row| self.0.contains_key(&row.session))
    }
}

/// `TIME  MAC  SESSION  KIND  SEQ  SUMMARY | FIELDS`, fixed widths so that lines printed one
/// at a time by `--follow` still line up. The session shows its first 8 hex digits.
pub fn event_line(row: &HistoryRow, mac: Option<Mac>) -> String {
    let mac = mac.map_or_else(|| "?".to_owned(), |mac| mac.to_string());
    let session = row.session.to_string();
    format!(
        "{}  {mac:<17}  {}  {}",
        rfc3339_ms(row.at_ms),
        &session[..8],
        history_body(row)
    )
}

/// `KIND  SEQ  SUMMARY | FIELDS`, the part `show` prints under its own time column.
pub(super) fn history_body(row: &HistoryRow) -> String {
    let seq = row
        .seq
        .map_or_else(|| "-".to_owned(), |seq| format!("#{seq}"));
    let mut text = format!(
        "{:<9}  {seq:>5}  {}",
        row.kind.as_str(),
        terminal_safe(&row.summary)
    );
    if !row.fields.is_empty() {
        text.push_str(" | ");
        text.push_str(&terminal_safe(&row.fields));
    }
    text
}

/// One history row as a JSON object (`raectl events --json` prints one per line).
pub fn event_json(row: &HistoryRow, mac: Option<Mac>) -> Value {
    json!({
        "id": row.id,
        "session": row.session.to_string(),
        "mac": mac.map(|mac| mac.to_string()),
        "seq": row.seq,
        "kind": row.kind.as_str(),
        "at_ms": row.at_ms,
        "at": rfc3339_ms(row.at_ms),
        "recorded_ms": row.recorded_ms,
        "recorded": rfc3339_ms(row.recorded_ms),
        "summary": row.summary,
        "fields": row.fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HistoryKind;

    fn history(kind: HistoryKind, seq: Option<u64>, fields: &str) -> HistoryRow {
        HistoryRow {
            id: 42,
            session: SessionId::from_bytes([0xab; 16]),
            seq,
            at_ms: 1_700_000_000_123,
            recorded_ms: 1_700_000_000_200,
            kind,
            summary: "DHCP REQUEST from 02:00:00:00:00:01".to_owned(),
            fields: fields.to_owned(),
        }
    }

    #[test]
    fn a_line_names_time_device_kind_seq_cause_and_fields() {
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        let line = event_line(
            &history(HistoryKind::Updated, Some(3), "ipv4=198.18.0.1"),
            Some(mac),
        );
        assert_eq!(
            line,
            "2023-11-14T22:13:20.123Z  02:00:00:00:00:01  abababab  updated       #3  \
             DHCP REQUEST from 02:00:00:00:00:01 | ipv4=198.18.0.1"
        );
        let line = event_line(&history(HistoryKind::Conflict, None, ""), None);
        assert!(line.contains("  ?    "), "{line}");
        assert!(line.ends_with("conflict       -  DHCP REQUEST from 02:00:00:00:00:01"));
    }

    #[test]
    fn json_carries_ids_and_both_time_forms() {
        let value = event_json(&history(HistoryKind::Opened, Some(1), ""), None);
        assert_eq!(value["id"], 42);
        assert_eq!(value["kind"], "opened");
        assert_eq!(value["seq"], 1);
        assert_eq!(value["mac"], Value::Null);
        assert_eq!(value["at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(value["recorded_ms"], 1_700_000_000_200i64);
    }

    #[test]
    fn session_macs_know_which_sessions_they_cover() {
        let macs = SessionMacs::default();
        let rows = [history(HistoryKind::Opened, Some(1), "")];
        assert!(!macs.knows_all(&rows));
        assert!(macs.knows_all(&[]));
    }
}
