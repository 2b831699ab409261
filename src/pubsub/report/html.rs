//! The status page: one self-contained HTML file (inline CSS, no scripts, no external
//! assets), down targets first, each with its state, a bar of daily uptime over the
//! last 90 days and its recent incidents.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Duration, NaiveDate, Utc};

use super::query::{Incident, Key, Line};
use super::render::{age, millis, percent};

/// Days the uptime bar covers.
pub const BAR_DAYS: i32 = 90;

pub struct Page<'a> {
    pub lines: &'a [Line],
    pub daily: &'a BTreeMap<Key, BTreeMap<NaiveDate, f64>>,
    pub incidents: &'a BTreeMap<Key, Vec<Incident>>,
    pub now: DateTime<Utc>,
}

const STYLE: &str = "
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 62em; color: #1d232a; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
.summary { color: #58626d; margin-top: 0; }
section { border: 1px solid #d7dce1; border-radius: 6px; padding: .8em 1em; margin: 1em 0; }
section.down { border-color: #d1242f; background: #fff5f5; }
h2 { font-size: 1.05em; margin: 0 0 .3em; word-break: break-all; }
.state { display: inline-block; min-width: 3.4em; text-align: center; border-radius: 4px;
         color: #fff; font-size: .8em; padding: .1em .4em; margin-right: .5em; }
.up .state { background: #1a7f37; }
.down .state { background: #d1242f; }
.facts { color: #434b55; margin: 0 0 .5em; }
.bar { display: flex; gap: 1px; height: 1.6em; }
.bar span { flex: 1; border-radius: 1px; }
.bar .full { background: #2da44e; }
.bar .most { background: #d4a72c; }
.bar .some { background: #e16f24; }
.bar .poor { background: #d1242f; }
.bar .none { background: #e4e7ea; }
.legend { display: flex; justify-content: space-between; color: #6e7781; font-size: .8em; }
table { border-collapse: collapse; margin-top: .6em; font-size: .9em; width: 100%; }
th, td { text-align: left; padding: .15em .5em .15em 0; vertical-align: top; }
th { color: #58626d; font-weight: 600; }
.error { color: #6e7781; word-break: break-word; }
";

pub fn page(page: &Page<'_>) -> String {
    let down = page.lines.iter().filter(|l| l.state == "down").count();
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Status: {down} down of {total}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>Status</h1>\n<p class=\"summary\">{total} target(s): {down} down, {up} up. \
         Made {now} UTC by metrics-flow report.</p>\n",
        total = page.lines.len(),
        up = page.lines.len() - down,
        now = page.now.format("%Y-%m-%d %H:%M"),
    );
    for line in page.lines {
        target_section(&mut out, page, line);
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn target_section(out: &mut String, page: &Page<'_>, line: &Line) {
    let key: Key = (
        line.target.clone(),
        line.location.clone().unwrap_or_default(),
    );
    let name = match &line.location {
        Some(location) => format!("{} @{location}", line.target),
        None => line.target.clone(),
    };
    let _ = write!(
        out,
        "<section class=\"target {state}\">\n<h2><span class=\"state\">{state_upper}</span>{name}</h2>\n\
         <p class=\"facts\">{state} for {since} (since {since_at} UTC) · uptime 24 h {u24}, 7 d {u7}, \
         30 d {u30} · p50 {p50}, p95 {p95} · {incidents} incident(s) in 30 d{tls}</p>\n",
        state = escape(&line.state),
        state_upper = escape(&line.state.to_uppercase()),
        name = escape(&name),
        since = age(page.now, line.since),
        since_at = line.since.format("%Y-%m-%d %H:%M"),
        u24 = percent(line.uptime_24h),
        u7 = percent(line.uptime_7d),
        u30 = percent(line.uptime_30d),
        p50 = millis(line.p50_ms_24h),
        p95 = millis(line.p95_ms_24h),
        incidents = line.incidents_30d,
        tls = line
            .tls_days_left
            .map_or_else(String::new, |d| format!(" · TLS certificate: {d} days left")),
    );
    uptime_bar(out, page.daily.get(&key), page.now);
    if let Some(incidents) = page.incidents.get(&key) {
        incident_table(out, incidents);
    }
    out.push_str("</section>\n");
}

fn uptime_bar(out: &mut String, days: Option<&BTreeMap<NaiveDate, f64>>, now: DateTime<Utc>) {
    let today = now.date_naive();
    out.push_str("<div class=\"bar\" role=\"img\" aria-label=\"daily uptime, last 90 days\">");
    for back in (0..BAR_DAYS).rev() {
        let day = today - Duration::days(i64::from(back));
        let uptime = days.and_then(|d| d.get(&day)).copied();
        let (class, title) = match uptime {
            None => ("none", format!("{day}: no checks")),
            Some(p) => {
                let class = if p >= 99.9 {
                    "full"
                } else if p >= 99.0 {
                    "most"
                } else if p >= 95.0 {
                    "some"
                } else {
                    "poor"
                };
                (class, format!("{day}: {p:.2}% up"))
            }
        };
        let _ = write!(out, "<span class=\"{class}\" title=\"{title}\"></span>");
    }
    let _ = writeln!(
        out,
        "</div>\n<div class=\"legend\"><span>{}</span><span>today</span></div>",
        today - Duration::days(i64::from(BAR_DAYS - 1))
    );
}

fn incident_table(out: &mut String, incidents: &[Incident]) {
    out.push_str(
        "<table>\n<tr><th>Incident started</th><th>Ended</th><th>Lasted</th><th>Kind</th>\
         <th>Failed checks</th><th>Last error</th></tr>\n",
    );
    for incident in incidents {
        let (ended, lasted) = match incident.ended_at {
            Some(ended) => (
                format!("{} UTC", ended.format("%Y-%m-%d %H:%M")),
                age(ended, incident.started_at),
            ),
            None => ("ongoing".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            out,
            "<tr><td>{} UTC</td><td>{ended}</td><td>{lasted}</td><td>{}</td><td>{}</td>\
             <td class=\"error\">{}</td></tr>",
            incident.started_at.format("%Y-%m-%d %H:%M"),
            escape(incident.error_kind.as_deref().unwrap_or("-")),
            incident.failed_checks,
            escape(incident.last_error_text.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</table>\n");
}

/// Text as HTML: the five characters that could open markup are escaped.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_a_value_stays_text() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }
}
