//! The replay's output: a line per Change (text or JSON) and the summary.
//!
//! Field values are written as JSON values in both forms, so a text line reads
//! `ipv4="198.18.0.122" hostname="tv"` and a JSON line carries the same values. Raw bytes
//! that are not UTF-8 (DHCP host names often are not) are shown lossily; a client id is hex.

use std::fmt::Write as _;
use std::io::{self, Write};

use rae_proto::{DeviceRecord, Field, Mac};

use super::pcap::CaptureFormat;
use super::{ReplayReport, ReplayStage};
use crate::registry::{Change, ConflictKind};

/// `2025-11-26T07:41:18.737Z` from unix milliseconds (proleptic Gregorian, UTC).
pub(super) fn utc(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000
    )
}

fn json_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt<T>(value: Option<T>, f: impl FnOnce(T) -> String) -> String {
    value.map_or_else(|| "null".to_owned(), f)
}

fn json_list<T>(items: impl IntoIterator<Item = T>, f: impl Fn(T) -> String) -> String {
    let items: Vec<String> = items.into_iter().map(f).collect();
    format!("[{}]", items.join(","))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The field's value as JSON.
fn value(field: &Field) -> String {
    match field {
        Field::Mac(mac) => json_str(&mac.to_string()),
        Field::Ipv4(ip) => json_opt(*ip, |ip| json_str(&ip.to_string())),
        Field::Ipv6(ips) => json_list(ips, |ip| json_str(&ip.to_string())),
        Field::DhcpClientId(id) => json_opt(id.as_deref(), |id| json_str(&hex(id))),
        Field::Hostname(text) | Field::DhcpVendorClass(text) => {
            json_opt(text.as_ref(), |t| json_str(&t.to_string_lossy()))
        }
        Field::Vendor(text) | Field::Esn(text) => json_opt(text.as_deref(), json_str),
        Field::LocallyAdministered(flag) => flag.to_string(),
        Field::DhcpParamRequestList(list) => json_list(list, |code| code.to_string()),
        Field::MdnsServices(services) => json_list(services, |s| {
            format!(
                "{{\"type\":{},\"instance\":{},\"port\":{}}}",
                json_str(&s.service_type),
                json_str(&s.instance),
                s.port
            )
        }),
        Field::Upnp(upnp) => json_opt(upnp.as_ref(), |u| {
            let part = |v: &Option<String>| json_opt(v.as_deref(), json_str);
            format!(
                "{{\"friendly_name\":{},\"manufacturer\":{},\"model_name\":{},\"udn\":{}}}",
                part(&u.friendly_name),
                part(&u.manufacturer),
                part(&u.model_name),
                part(&u.udn)
            )
        }),
        Field::DialApps(apps) => json_list(apps, |a| {
            format!(
                "{{\"name\":{},\"state\":{}}}",
                json_str(&a.name),
                json_str(&a.state.to_string())
            )
        }),
        Field::Reachability(r) => format!(
            "{{\"state\":\"{}\",\"evidence\":\"{}\",\"rtt_us\":{}}}",
            r.state,
            r.evidence,
            json_opt(r.rtt_us, |rtt| rtt.to_string())
        ),
        Field::Availability(a) => json_str(a.as_str()),
        Field::FirstSeen(ms) | Field::LastSeen(ms) => ms.to_string(),
    }
}

/// The fields worth a line of an opened session: the ones it has, not the empty defaults.
fn present(record: &DeviceRecord) -> Vec<Field> {
    record
        .fields()
        .into_iter()
        .filter(|field| match field {
            Field::Mac(_) => false,
            Field::Ipv4(v) => v.is_some(),
            Field::Ipv6(v) => !v.is_empty(),
            Field::DhcpClientId(v) => v.is_some(),
            Field::Hostname(v) | Field::DhcpVendorClass(v) => v.is_some(),
            Field::Vendor(v) | Field::Esn(v) => v.is_some(),
            Field::DhcpParamRequestList(v) => !v.is_empty(),
            Field::MdnsServices(v) => !v.is_empty(),
            Field::Upnp(v) => v.is_some(),
            Field::DialApps(v) => !v.is_empty(),
            _ => true,
        })
        .collect()
}

struct Line {
    at_ms: i64,
    kind: &'static str,
    mac: Option<Mac>,
    seq: Option<u64>,
    /// (name, JSON value)
    fields: Vec<(String, String)>,
    cause: Option<String>,
}

fn fields(list: &[Field]) -> Vec<(String, String)> {
    list.iter()
        .map(|f| (f.id().to_string(), value(f)))
        .collect()
}

/// One Change as a line; `mac` is the session's MAC for Changes that do not carry it.
pub(super) fn change(
    change: &Change,
    mac: Option<Mac>,
    json: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    let line = match change {
        Change::Opened { record, cause, .. } | Change::Snapshot { record, cause, .. } => Line {
            at_ms: cause.at_ms,
            kind: if matches!(change, Change::Opened { .. }) {
                "opened"
            } else {
                "snapshot"
            },
            mac: Some(record.mac),
            seq: change.seq(),
            fields: fields(&present(record)),
            cause: Some(cause.summary.clone()),
        },
        Change::Updated {
            mac,
            fields: f,
            cause,
            ..
        } => Line {
            at_ms: cause.at_ms,
            kind: "updated",
            mac: Some(*mac),
            seq: change.seq(),
            fields: fields(f),
            cause: Some(cause.summary.clone()),
        },
        Change::Closed {
            mac, reason, cause, ..
        } => Line {
            at_ms: cause.at_ms,
            kind: "closed",
            mac: Some(*mac),
            seq: change.seq(),
            fields: vec![("reason".to_owned(), json_str(&reason.to_string()))],
            cause: Some(cause.summary.clone()),
        },
        Change::Seen { last_seen_ms, .. } => Line {
            at_ms: *last_seen_ms,
            kind: "seen",
            mac,
            seq: None,
            fields: Vec::new(),
            cause: None,
        },
        Change::Conflict {
            mac,
            ip,
            others,
            kind,
            cause,
            ..
        } => {
            let mut f = vec![
                ("ip".to_owned(), json_str(&ip.to_string())),
                ("conflict".to_owned(), json_str(kind.as_str())),
                (
                    "others".to_owned(),
                    json_list(others, |m| json_str(&m.to_string())),
                ),
            ];
            if let ConflictKind::FlipFlop { flips } = kind {
                f.push(("flips".to_owned(), flips.to_string()));
            }
            Line {
                at_ms: cause.at_ms,
                kind: "conflict",
                mac: Some(*mac),
                seq: None,
                fields: f,
                cause: Some(cause.summary.clone()),
            }
        }
    };
    let session = change.session().to_string();
    if json {
        let mut text = format!(
            "{{\"at_ms\":{},\"time\":\"{}\",\"change\":\"{}\",\"mac\":{},\"session\":\"{session}\",\"seq\":{}",
            line.at_ms,
            utc(line.at_ms),
            line.kind,
            json_opt(line.mac, |m| json_str(&m.to_string())),
            json_opt(line.seq, |s| s.to_string()),
        );
        text.push_str(",\"fields\":{");
        let body: Vec<String> = line
            .fields
            .iter()
            .map(|(name, value)| format!("{}:{value}", json_str(name)))
            .collect();
        text.push_str(&body.join(","));
        text.push('}');
        if let Some(cause) = &line.cause {
            let _ = write!(text, ",\"cause\":{}", json_str(cause));
        }
        text.push('}');
        writeln!(out, "{text}")
    } else {
        let mut text = format!(
            "{} {:<8} {} {session}",
            utc(line.at_ms),
            line.kind,
            line.mac.map_or_else(|| "-".to_owned(), |m| m.to_string()),
        );
        if let Some(seq) = line.seq {
            let _ = write!(text, " seq={seq}");
        }
        for (name, value) in &line.fields {
            let _ = write!(text, " {name}={value}");
        }
        if let Some(cause) = &line.cause {
            let _ = write!(text, " ({cause})");
        }
        writeln!(out, "{text}")
    }
}

fn format_name(format: CaptureFormat) -> &'static str {
    match format {
        CaptureFormat::Pcap { nanos: false, .. } => "pcap",
        CaptureFormat::Pcap { nanos: true, .. } => "pcap-ns",
        CaptureFormat::Pcapng => "pcapng",
    }
}

/// The summary: counts a user checks, then the speed.
pub(super) fn summary(report: &ReplayReport, json: bool, out: &mut dyn Write) -> io::Result<()> {
    let c = &report.changes;
    let stage = match report.stage {
        ReplayStage::Parse => "parse",
        ReplayStage::Apply => "apply",
    };
    let drops: Vec<(String, u64)> = report
        .drops
        .iter()
        .map(|(reason, n)| (format!("{}.{}", reason.layer, reason.detail), n))
        .collect();
    let truncated = report.truncated_record.map(|t| {
        (
            t.offset,
            format!(
                "record at byte {} cut short: {} of {} bytes",
                t.offset, t.present, t.needed
            ),
        )
    });
    let secs = report.elapsed.as_secs_f64();
    if json {
        let drops = drops
            .iter()
            .map(|(name, n)| format!("{}:{n}", json_str(name)))
            .collect::<Vec<_>>()
            .join(",");
        writeln!(
            out,
            "{{\"summary\":{{\"format\":\"{}\",\"stage\":\"{stage}\",\"frames_read\":{},\"bytes_read\":{},\
             \"snap_truncated\":{},\"parsed\":{},\"dropped\":{},\"drops\":{{{drops}}},\
             \"observations\":{},\"without_observation\":{},\"changes\":{{\"opened\":{},\"updated\":{},\
             \"snapshot\":{},\"closed\":{},\"seen\":{},\"conflict\":{}}},\"ticks\":{},\
             \"sessions_opened\":{},\"sessions_open\":{},\"truncated_record\":{},\
             \"first_ms\":{},\"last_ms\":{},\"elapsed_ms\":{:.3},\"frames_per_sec\":{:.0}}}}}",
            format_name(report.format),
            report.frames_read,
            report.bytes_read,
            report.snap_truncated,
            report.parsed,
            report.dropped(),
            report.observations,
            report.without_observation,
            c.opened,
            c.updated,
            c.snapshot,
            c.closed,
            c.seen,
            c.conflict,
            report.ticks,
            report.sessions_opened,
            report.open_sessions.len(),
            json_opt(report.truncated_record, |t| format!(
                "{{\"offset\":{},\"present\":{},\"needed\":{}}}",
                t.offset, t.present, t.needed
            )),
            json_opt(report.first_ms, |ms| ms.to_string()),
            json_opt(report.last_ms, |ms| ms.to_string()),
            secs * 1000.0,
            report.frames_per_sec(),
        )
    } else {
        writeln!(
            out,
            "--- replay summary ({}, stage {stage})",
            format_name(report.format)
        )?;
        if let (Some(first), Some(last)) = (report.first_ms, report.last_ms) {
            writeln!(out, "capture:        {} .. {}", utc(first), utc(last))?;
        }
        writeln!(
            out,
            "frames read:    {} ({} bytes)",
            report.frames_read, report.bytes_read
        )?;
        writeln!(out, "parsed:         {}", report.parsed)?;
        writeln!(out, "snap_truncated: {}", report.snap_truncated)?;
        writeln!(out, "dropped:        {}", report.dropped())?;
        for (name, n) in &drops {
            writeln!(out, "  {name}: {n}")?;
        }
        match &truncated {
            Some((_, text)) => writeln!(out, "truncated_record: 1 ({text})")?,
            None => writeln!(out, "truncated_record: 0")?,
        }
        if report.stage == ReplayStage::Apply {
            writeln!(
                out,
                "observations:   {} ({} parsed frames without one)",
                report.observations, report.without_observation
            )?;
            writeln!(
                out,
                "changes:        {} (opened {}, updated {}, snapshot {}, closed {}, seen {}, conflict {}); {} ticks",
                c.total(), c.opened, c.updated, c.snapshot, c.closed, c.seen, c.conflict, report.ticks
            )?;
            writeln!(
                out,
                "sessions:       {} opened, {} open at the end",
                report.sessions_opened,
                report.open_sessions.len()
            )?;
        }
        writeln!(
            out,
            "elapsed:        {:.3} s, {:.0} frames/s",
            secs,
            report.frames_per_sec()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_764_142_878_737), "2025-11-26T07:41:18.737Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn json_strings_escape_controls_and_quotes() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
