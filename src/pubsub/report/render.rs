//! The report's lines as text: a table aligned for a terminal of 120 columns, JSON
//! whose field names are the columns, or CSV with the same header.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::query::Line;

/// The widest the table may be.
const WIDTH: usize = 120;
/// The widest a target may be in the table; longer ones are cut with "…".
const TARGET_WIDTH: usize = 40;

pub fn table(lines: &[Line], now: DateTime<Utc>) -> String {
    let shown: Vec<String> = lines.iter().map(shown_target).collect();
    let target_width = shown
        .iter()
        .map(|t| t.chars().count())
        .max()
        .unwrap_or(6)
        .clamp(6, TARGET_WIDTH);
    let header = [
        "STATE", "SINCE", "UP 24H", "UP 7D", "UP 30D", "P50", "P95", "INC", "TLS",
    ];
    let widths = [5, 7, 7, 7, 7, 7, 7, 3, 4];
    let fixed: usize = target_width + widths.iter().sum::<usize>() + widths.len() + 1;
    let error_width = WIDTH.saturating_sub(fixed).max(10);
    let mut out = String::new();
    let mut row = |target: &str, cells: [String; 9], error: &str| {
        let _ = write!(out, "{:<target_width$}", cut(target, target_width));
        for (cell, width) in cells.iter().zip(widths) {
            let _ = write!(out, " {cell:>width$}");
        }
        let _ = writeln!(out, " {}", cut(error, error_width));
    };
    row("TARGET", header.map(str::to_owned), "LAST ERROR");
    for (line, target) in lines.iter().zip(&shown) {
        let cells = [
            line.state.to_uppercase(),
            age(now, line.since),
            percent(line.uptime_24h),
            percent(line.uptime_7d),
            percent(line.uptime_30d),
            millis(line.p50_ms_24h),
            millis(line.p95_ms_24h),
            line.incidents_30d.to_string(),
            line.tls_days_left
                .map_or_else(|| "-".to_owned(), |d| format!("{d}d")),
        ];
        row(target, cells, line.last_error.as_deref().unwrap_or(""));
    }
    out
}

pub fn json(lines: &[Line]) -> String {
    let mut text = serde_json::to_string_pretty(lines).expect("report lines serialize");
    text.push('\n');
    text
}

pub const CSV_HEADER: [&str; 13] = [
    "target",
    "location",
    "state",
    "since",
    "last_checked_at",
    "uptime_24h",
    "uptime_7d",
    "uptime_30d",
    "p50_ms_24h",
    "p95_ms_24h",
    "incidents_30d",
    "last_error",
    "tls_days_left",
];

pub fn csv(lines: &[Line]) -> String {
    let mut out = CSV_HEADER.join(",");
    out.push('\n');
    let number = |n: Option<f64>| n.map_or_else(String::new, |n| format!("{n:.3}"));
    for line in lines {
        let fields = [
            line.target.clone(),
            line.location.clone().unwrap_or_default(),
            line.state.clone(),
            rfc3339(line.since),
            rfc3339(line.last_checked_at),
            number(line.uptime_24h),
            number(line.uptime_7d),
            number(line.uptime_30d),
            number(line.p50_ms_24h),
            number(line.p95_ms_24h),
            line.incidents_30d.to_string(),
            line.last_error.clone().unwrap_or_default(),
            line.tls_days_left
                .map(|d| d.to_string())
                .unwrap_or_default(),
        ];
        let quoted: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&quoted.join(","));
        out.push('\n');
    }
    out
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// RFC 4180: a field with a comma, a quote or a line break is quoted, quotes doubled.
fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

fn shown_target(line: &Line) -> String {
    match &line.location {
        Some(location) => format!("{} @{location}", line.target),
        None => line.target.clone(),
    }
}

/// `text` in at most `width` characters, cut with "…"; control characters escaped.
fn cut(text: &str, width: usize) -> String {
    let text = crate::error::one_line(text);
    if text.chars().count() <= width {
        return text;
    }
    let mut kept: String = text.chars().take(width.saturating_sub(1)).collect();
    kept.push('…');
    kept
}

/// How long ago, in the two largest units: "3d 4h", "5h 2m", "12m", "40s".
pub fn age(now: DateTime<Utc>, since: DateTime<Utc>) -> String {
    let seconds = (now - since).num_seconds().max(0);
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

pub fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |p| format!("{p:.2}%"))
}

pub fn millis(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(ms) if ms >= 1000.0 => format!("{:.1}s", ms / 1000.0),
        Some(ms) => format!("{ms:.1}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(target: &str, state: &str, error: Option<&str>) -> Line {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        Line {
            target: target.to_owned(),
            location: None,
            state: state.to_owned(),
            since: at,
            last_checked_at: at,
            uptime_24h: Some(99.5),
            uptime_7d: Some(99.95),
            uptime_30d: None,
            p50_ms_24h: Some(12.34),
            p95_ms_24h: Some(1500.0),
            incidents_30d: 2,
            last_error: error.map(str::to_owned),
            tls_days_left: Some(30),
        }
    }

    #[test]
    fn the_table_fits_120_columns_however_long_the_values() {
        let long = format!("https://example.com/{}", "x".repeat(200));
        let lines = [
            line(&long, "down", Some(&"timeout: ".repeat(40))),
            line("http://a.example/", "up", None),
        ];
        let now = lines[0].since + chrono::Duration::minutes(75);
        let text = table(&lines, now);
        for row in text.lines() {
            assert!(
                row.chars().count() <= WIDTH,
                "{} columns: {row}",
                row.chars().count()
            );
        }
        assert!(text.contains("DOWN") && text.contains("1h 15m") && text.contains("99.50%"));
        assert!(text.contains("12.3ms") && text.contains("1.5s") && text.contains("30d"));
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let text = csv(&[line("http://a.example/?q=1,2", "up", Some("say \"no\""))]);
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("\"http://a.example/?q=1,2\",,up,"), "{row}");
        assert!(row.contains("\"say \"\"no\"\"\""), "{row}");
        assert_eq!(text.lines().next().unwrap(), CSV_HEADER.join(","));
    }

    #[test]
    fn ages_read_in_two_units() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let ago = |s: i64| age(now, now - chrono::Duration::seconds(s));
        assert_eq!(ago(40), "40s");
        assert_eq!(ago(12 * 60 + 5), "12m");
        assert_eq!(ago(5 * 3600 + 120), "5h 2m");
        assert_eq!(ago(3 * 86_400 + 4 * 3600), "3d 4h");
    }
}
