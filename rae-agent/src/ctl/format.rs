//! Small formatters shared by the renderers: times (RFC 3339 UTC and "12s ago"), byte counts,
//! hex, terminal-safe text and aligned tables. Written here rather than pulled from a date
//! crate: the binary runs on a router's flash and only ever needs UTC.

use std::fmt::Write as _;

/// `2024-05-01T12:00:03.250Z`: RFC 3339 in UTC with milliseconds, for a unix time in ms.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let millis = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, exact for every i64 day count a unix time in ms can produce).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A duration in ms as an operator reads it: `850ms`, `12s`, `4m05s`, `3h07m`, `2d04h`.
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.unsigned_abs();
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms}ms"),
        1..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// How long before `now_ms` the time `at_ms` was: `12s ago`, or `in 3s` when the clock of
/// whoever wrote it was ahead of ours.
pub fn relative(at_ms: i64, now_ms: i64) -> String {
    let age = now_ms.saturating_sub(at_ms);
    match age {
        age if age < 0 => format!("in {}", duration_ms(age)),
        age if age < 1000 => "just now".to_owned(),
        age => format!("{} ago", duration_ms(age)),
    }
}

/// Absolute and relative: `2024-05-01T12:00:03.250Z (12s ago)`.
pub fn when(at_ms: i64, now_ms: i64) -> String {
    format!("{} ({})", rfc3339_ms(at_ms), relative(at_ms, now_ms))
}

/// `3456 B (3.4 KiB)`; the exact count first so nothing is hidden by rounding.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{count} B ({value:.1} {})", UNITS[unit])
}

/// Lowercase hex, bytes separated by `:` (how DHCP client ids are usually written).
pub fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 3);
    for (i, byte) in bytes.iter().enumerate() {
        if i > 0 {
            text.push(':');
        }
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// Device-sent text made safe for a terminal: control characters (an escape sequence in a
/// DHCP hostname could rewrite the operator's screen) are shown escaped.
pub fn terminal_safe(text: &str) -> String {
    let mut safe = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            safe.extend(c.escape_default());
        } else {
            safe.push(c);
        }
    }
    safe
}

/// At most `max` characters, the last one `…` when something was cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Columns padded to their widest cell, two spaces apart, without trailing blanks.
#[derive(Debug, Clone, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Table {
        Table {
            rows: vec![header.into_iter().map(Into::into).collect()],
        }
    }

    pub fn push<S: Into<String>>(&mut self, row: impl IntoIterator<Item = S>) {
        self.rows.push(row.into_iter().map(Into::into).collect());
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|col| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(col))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (col, cell) in row.iter().enumerate() {
                if col > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[col].saturating_sub(cell.chars().count());
                line.push_str(&" ".repeat(pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        // `date -u -d @1700000000` and a leap day.
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn rfc3339_round_trips_through_the_day_count_for_every_day_of_four_centuries() {
        // Each day's date is one after the previous one's: no gaps, no repeats.
        let mut previous = civil_from_days(-1);
        for day in 0..146_097 {
            let date = civil_from_days(day);
            let next_in_month = (previous.0, previous.1, previous.2 + 1);
            let next_month = match previous.1 {
                12 => (previous.0 + 1, 1, 1),
                m => (previous.0, m + 1, 1),
            };
            assert!(
                date == next_in_month || date == next_month,
                "day {day}: {previous:?} then {date:?}"
            );
            previous = date;
        }
        assert_eq!(previous, (2369, 12, 31));
    }

    #[test]
    fn durations_and_relative_times_read_naturally() {
        assert_eq!(duration_ms(850), "850ms");
        assert_eq!(duration_ms(12_400), "12s");
        assert_eq!(duration_ms(245_000), "4m05s");
        assert_eq!(duration_ms(3 * 3_600_000 + 7 * 60_000), "3h07m");
        assert_eq!(duration_ms(2 * 86_400_000 + 4 * 3_600_000), "2d04h");
        assert_eq!(relative(10_000, 22_000), "12s ago");
        assert_eq!(relative(10_000, 10_400), "just now");
        assert_eq!(relative(13_000, 10_000), "in 3s");
        assert_eq!(
            when(1_700_000_000_123, 1_700_000_060_123),
            "2023-11-14T22:13:20.123Z (1m00s ago)"
        );
    }

    #[test]
    fn bytes_hex_and_text() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3456), "3456 B (3.4 KiB)");
        assert_eq!(bytes(16 * 1024 * 1024), "16777216 B (16.0 MiB)");
        assert_eq!(hex(&[1, 0x02, 0xab]), "01:02:ab");
        assert_eq!(hex(&[]), "");
        assert_eq!(terminal_safe("tv\x1b[2J\n"), "tv\\u{1b}[2J\\n");
        assert_eq!(terminal_safe("Wohnzimmer-TV"), "Wohnzimmer-TV");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abcd", 4), "abcd");
    }

    #[test]
    fn table_aligns_columns_by_characters() {
        let mut table = Table::new(["A", "LONG HEADER", "C"]);
        table.push(["wide cell", "x", ""]);
        table.push(["é", "y", "z"]);
        assert_eq!(
            table.render(),
            "A          LONG HEADER  C\n\
             wide cell  x\n\
             é          y            z\n"
        );
    }
}
