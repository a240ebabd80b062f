//! `raectl status`: what the daemon last wrote (capture, drops, broker, publisher, probes),
//! the outbox depth and the store's counters.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::store::{OutboxStats, StatusEntry};

use super::devices::insert_time;
use super::format::{bytes, duration_ms, relative, rfc3339_ms, terminal_safe, when};

/// Status older than this suggests the daemon is not running (it rewrites status every few
/// seconds while it runs).
pub const STALE_AFTER_MS: i64 = 30_000;

/// Everything `status` reads, in one place so it renders without the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    pub entries: Vec<StatusEntry>,
    pub outbox: OutboxStats,
    pub counters: Vec<(String, i64)>,
    pub serial: Option<String>,
}

/// The sections in the order they are shown: (key prefix, section name, title).
const SECTIONS: [(&str, &str, &str); 10] = [
    ("agent.", "agent", "agent"),
    ("capture.", "capture", "capture"),
    (
        "parse.drop.",
        "parse.drop",
        "frames dropped by the parsers, by reason",
    ),
    ("broker.", "broker", "broker"),
    ("publish.", "publish", "publisher"),
    ("registry.", "registry", "registry core"),
    ("probe.", "probe", "probes"),
    (
        "command.",
        "command",
        "commands (cloud cmd/ topics and raectl actions)",
    ),
    ("log.", "log", "log lines suppressed by the per-kind limit"),
    (
        "store.",
        "store",
        "registry database (disk floor, the last recovery from damage)",
    ),
];
const OTHER: (&str, &str) = ("other", "other");

/// The section index (`SECTIONS.len()` for other keys) and the key within it.
fn section_of(key: &str) -> (usize, &str) {
    SECTIONS
        .iter()
        .position(|(prefix, _, _)| key.starts_with(prefix))
        .map_or((SECTIONS.len(), key), |i| (i, &key[SECTIONS[i].0.len()..]))
}

/// Entries grouped by section, in section order, keys sorted within a section.
fn grouped(entries: &[StatusEntry]) -> Vec<(usize, Vec<(&str, &StatusEntry)>)> {
    let mut groups: Vec<(usize, Vec<(&str, &StatusEntry)>)> = Vec::new();
    let mut sorted: Vec<(usize, &str, &StatusEntry)> = entries
        .iter()
        .map(|entry| {
            let (section, name) = section_of(&entry.key);
            (section, name, entry)
        })
        .collect();
    sorted.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    for (section, name, entry) in sorted {
        match groups.last_mut() {
            Some((last, items)) if *last == section => items.push((name, entry)),
            _ => groups.push((section, vec![(name, entry)])),
        }
    }
    groups
}

fn section_names(index: usize) -> (&'static str, &'static str) {
    SECTIONS
        .get(index)
        .map_or(OTHER, |(_, name, title)| (*name, *title))
}

/// When the daemon last wrote any status entry.
fn last_update(entries: &[StatusEntry]) -> Option<i64> {
    entries.iter().map(|entry| entry.updated_ms).max()
}

/// A value as an operator reads it: `*_ms` keys holding a unix time become absolute plus
/// relative times.
fn display_value(name: &str, value: &str, now_ms: i64) -> String {
    match (name.ends_with("_ms"), value.parse::<i64>()) {
        (true, Ok(ms)) => when(ms, now_ms),
        _ => terminal_safe(value),
    }
}

/// The status in sections, then the outbox and the store's counters.
pub fn status_text(report: &StatusReport, db: &Path, now_ms: i64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "database  {}", db.display());
    if let Some(serial) = &report.serial {
        let _ = writeln!(out, "serial    {}", terminal_safe(serial));
    }
    match last_update(&report.entries) {
        None => out.push_str(
            "note: the daemon has written no status to this database yet \
             (has rae-agent run with this state dir?)\n",
        ),
        Some(at) => {
            let _ = writeln!(out, "status    written by rae-agent {}", when(at, now_ms));
            if now_ms.saturating_sub(at) > STALE_AFTER_MS {
                let _ = writeln!(
                    out,
                    "warning: the status is {} old (the daemon rewrites it every few seconds): \
                     rae-agent may be down; check `systemctl status rae-agent`",
                    duration_ms(now_ms.saturating_sub(at))
                );
            }
        }
    }
    for (section, items) in grouped(&report.entries) {
        let (_, title) = section_names(section);
        let _ = writeln!(out, "\n{title}");
        let width = items.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        for (name, entry) in items {
            let _ = writeln!(
                out,
                "  {:<width$}  {}",
                terminal_safe(name),
                display_value(name, &entry.value, now_ms)
            );
        }
    }
    let outbox = &report.outbox;
    let _ = writeln!(out, "\noutbox (events waiting for the broker's ack)");
    let _ = writeln!(out, "  rows    {}", outbox.rows);
    let _ = writeln!(out, "  bytes   {}", bytes(outbox.bytes));
    let oldest = outbox.oldest_created_ms.map_or_else(
        || "-".to_owned(),
        |at| format!("{} ({})", relative(at, now_ms), rfc3339_ms(at)),
    );
    let _ = writeln!(out, "  oldest  {oldest}");
    let _ = writeln!(out, "\nstore counters");
    if report.counters.is_empty() {
        out.push_str("  none\n");
    }
    let width = report
        .counters
        .iter()
        .map(|(k, _)| k.len())
        .max()
        .unwrap_or(0);
    for (key, value) in &report.counters {
        let _ = writeln!(out, "  {:<width$}  {value}", terminal_safe(key));
    }
    out
}

/// One JSON document; `status` nests entries by section (`.status.broker.connected`).
pub fn status_json(report: &StatusReport, db: &Path, now_ms: i64) -> Value {
    let mut status = Map::new();
    for (section, items) in grouped(&report.entries) {
        let (name, _) = section_names(section);
        let values: Map<String, Value> = items
            .into_iter()
            .map(|(key, entry)| (key.to_owned(), json!(entry.value)))
            .collect();
        status.insert(name.to_owned(), Value::Object(values));
    }
    let last = last_update(&report.entries);
    let mut object = Map::new();
    object.insert("db".into(), json!(db.display().to_string()));
    object.insert("serial".into(), json!(report.serial));
    insert_time(&mut object, "now", Some(now_ms));
    insert_time(&mut object, "status_updated", last);
    object.insert(
        "stale".into(),
        json!(match last {
            Some(at) => now_ms.saturating_sub(at) > STALE_AFTER_MS,
            None => true,
        }),
    );
    object.insert("status".into(), Value::Object(status));
    let mut outbox = Map::new();
    outbox.insert("rows".into(), json!(report.outbox.rows));
    outbox.insert("bytes".into(), json!(report.outbox.bytes));
    insert_time(
        &mut outbox,
        "oldest_created",
        report.outbox.oldest_created_ms,
    );
    outbox.insert(
        "oldest_age_ms".into(),
        json!(report
            .outbox
            .oldest_created_ms
            .map(|at| now_ms.saturating_sub(at))),
    );
    object.insert("outbox".into(), Value::Object(outbox));
    object.insert(
        "counters".into(),
        Value::Object(
            report
                .counters
                .iter()
                .map(|(key, value)| (key.clone(), json!(value)))
                .collect(),
        ),
    );
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str, updated_ms: i64) -> StatusEntry {
        StatusEntry {
            key: key.into(),
            value: value.into(),
            updated_ms,
        }
    }

    fn report(entries: Vec<StatusEntry>) -> StatusReport {
        StatusReport {
            entries,
            outbox: OutboxStats {
                rows: 3,
                bytes: 2048,
                oldest_created_ms: Some(40_000),
            },
            counters: vec![("outbox_coalesced_events".into(), 4)],
            serial: Some("RAE-1".into()),
        }
    }

    fn sample() -> StatusReport {
        report(vec![
            entry("zz.custom", "1", 50_000),
            entry("broker.connected", "yes", 50_000),
            entry("parse.drop.truncated", "7", 50_000),
            entry("capture.frames", "1200", 50_000),
            entry("agent.started_ms", "20000", 50_000),
            entry("agent.version", "0.1.0", 55_000),
        ])
    }

    #[test]
    fn sections_come_in_a_fixed_order_with_unknown_keys_last() {
        let text = status_text(&sample(), Path::new("/db"), 60_000);
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing in\n{text}"))
        };
        assert!(at("\nagent\n") < at("\ncapture\n"));
        assert!(at("\ncapture\n") < at("frames dropped by the parsers"));
        assert!(at("frames dropped by the parsers") < at("\nbroker\n"));
        assert!(at("\nbroker\n") < at("\nother\n"));
        assert!(at("\nother\n") < at("\noutbox"));
        assert!(text.contains("  truncated  7"), "{text}");
        assert!(text.contains("  zz.custom  1"), "{text}");
        assert!(text.contains("started_ms  1970-01-01T00:00:20.000Z (40s ago)"));
        assert!(text.contains("written by rae-agent 1970-01-01T00:00:55.000Z (5s ago)"));
        assert!(text.contains("  bytes   2048 B (2.0 KiB)"), "{text}");
        assert!(text.contains("  oldest  20s ago"), "{text}");
        assert!(text.contains("  outbox_coalesced_events  4"), "{text}");
        assert!(!text.contains("warning"), "{text}");
    }

    #[test]
    fn the_bounds_show_in_text_and_json() {
        let mut report = report(vec![
            entry("registry.max_sessions", "4096", 50_000),
            entry("registry.sessions_refused", "12", 50_000),
            entry("log.suppressed", "30", 50_000),
            entry("log.suppressed.registry.session_refused", "2", 50_000),
            entry("store.disk_low", "true", 50_000),
        ]);
        report.counters.push(("outbox_vanished_sessions".into(), 3));
        let text = status_text(&report, Path::new("/db"), 60_000);
        let log = text
            .find(
                "
log lines suppressed by the per-kind limit
",
            )
            .unwrap_or_else(|| {
                panic!(
                    "no log section in
{text}"
                )
            });
        assert!(
            text.find(
                "
registry core
"
            )
            .is_some_and(|r| r < log),
            "{text}"
        );
        assert!(text.contains("  sessions_refused  12"), "{text}");
        assert!(
            text.contains("  suppressed.registry.session_refused  2"),
            "{text}"
        );
        assert!(text.contains("  disk_low  true"), "{text}");
        let json = status_json(&report, Path::new("/db"), 60_000);
        assert_eq!(json["status"]["log"]["suppressed"], "30");
        assert_eq!(json["status"]["registry"]["max_sessions"], "4096");
        assert_eq!(json["counters"]["outbox_vanished_sessions"], 3);
    }

    #[test]
    fn a_recovery_shows_in_its_own_section_and_counter() {
        let mut report = report(vec![
            entry("store.recovered_ms", "40000", 40_000),
            entry(
                "store.recovered_moved_to",
                "/s/registry.db.corrupt-x",
                40_000,
            ),
            entry("probe.arp_sent", "3", 50_000),
        ]);
        report.counters.push(("integrity_recoveries".into(), 1));
        let text = status_text(&report, Path::new("/db"), 60_000);
        let section = text
            .find("\nregistry database (disk floor, the last recovery from damage)\n")
            .unwrap_or_else(|| panic!("no store section in\n{text}"));
        assert!(
            text.find("\nprobes\n").is_some_and(|p| p < section),
            "{text}"
        );
        assert!(
            text.contains("  recovered_ms        1970-01-01T00:00:40.000Z (20s ago)"),
            "{text}"
        );
        assert!(text.contains("  integrity_recoveries     1"), "{text}");
        let json = status_json(&report, Path::new("/db"), 60_000);
        assert_eq!(
            json["status"]["store"]["recovered_moved_to"],
            "/s/registry.db.corrupt-x"
        );
        assert_eq!(json["counters"]["integrity_recoveries"], 1);
    }

    #[test]
    fn old_status_warns_that_the_daemon_may_be_down() {
        let text = status_text(&sample(), Path::new("/db"), 55_000 + STALE_AFTER_MS + 1);
        assert!(text.contains("warning: the status is 30s old"), "{text}");
        assert!(text.contains("may be down"), "{text}");
    }

    #[test]
    fn no_status_is_a_note() {
        let text = status_text(&report(Vec::new()), Path::new("/db"), 0);
        assert!(
            text.contains("note: the daemon has written no status"),
            "{text}"
        );
        assert!(text.contains("outbox"), "{text}");
    }

    #[test]
    fn json_nests_by_section() {
        let value = status_json(&sample(), Path::new("/db"), 60_000);
        assert_eq!(value["status"]["broker"]["connected"], "yes");
        assert_eq!(value["status"]["parse.drop"]["truncated"], "7");
        assert_eq!(value["status"]["other"]["zz.custom"], "1");
        assert_eq!(value["status_updated_ms"], 55_000);
        assert_eq!(value["stale"], false);
        assert_eq!(value["outbox"]["oldest_age_ms"], 20_000);
        assert_eq!(value["counters"]["outbox_coalesced_events"], 4);
    }
}
