//! The report's queries, on the tables sub derives (status, hourly and daily rollups,
//! incidents), never on the raw results: one line per target, and for the HTML page
//! each target's daily uptime and recent incidents.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use postgres::Client;
use serde::Serialize;

use crate::pubsub::subscribe::derived::{BUCKETS, LATENCY_BOUNDS_MS};
use crate::pubsub::table::TableName;

/// One target's line of the report. The JSON field names are the report's columns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub target: String,
    pub location: Option<String>,
    pub state: String,
    pub since: DateTime<Utc>,
    pub last_checked_at: DateTime<Utc>,
    pub uptime_24h: Option<f64>,
    pub uptime_7d: Option<f64>,
    pub uptime_30d: Option<f64>,
    pub p50_ms_24h: Option<f64>,
    pub p95_ms_24h: Option<f64>,
    pub incidents_30d: i64,
    pub last_error: Option<String>,
    pub tls_days_left: Option<i32>,
}

/// A target's key in the derived tables: its URL and its location (`""` for none).
pub type Key = (String, String);

/// The statuses with their uptimes, latency buckets and incident counts: down targets
/// first. The buckets are summed by index (`sum(latency_buckets[i])`), not unnested:
/// unnesting 24 hours of 5,000 targets took 0.7 s in bench-report.sh, this 0.1 s.
pub fn lines_sql(table: &TableName) -> String {
    let status = table.with_suffix("_status");
    let daily = table.with_suffix("_daily");
    let hourly = table.with_suffix("_hourly");
    let incidents = table.with_suffix("_incidents");
    format!(
        "SELECT s.target, s.location, s.state, s.since, s.last_checked_at, s.last_error_kind,
                s.last_error_text, s.tls_days_left,
                h.checks, h.ok_checks, d.checks_7d, d.ok_7d, d.checks_30d, d.ok_30d,
                coalesce(i.incidents, 0), h.latency_ms_max, {bucket_columns}
         FROM {status} s
         LEFT JOIN (
             SELECT target, location, sum(checks)::bigint AS checks,
                    sum(ok_checks)::bigint AS ok_checks,
                    max(latency_ms_max) AS latency_ms_max, {bucket_sums}
             FROM {hourly} WHERE hour >= now() - interval '24 hours'
             GROUP BY 1, 2) h USING (target, location)
         LEFT JOIN (
             SELECT target, location,
                    (sum(checks) FILTER (WHERE day >= now() - interval '7 days'))::bigint
                        AS checks_7d,
                    (sum(ok_checks) FILTER (WHERE day >= now() - interval '7 days'))::bigint
                        AS ok_7d,
                    sum(checks)::bigint AS checks_30d, sum(ok_checks)::bigint AS ok_30d
             FROM {daily} WHERE day >= now() - interval '30 days'
             GROUP BY 1, 2) d USING (target, location)
         LEFT JOIN (
             SELECT target, location, count(*) AS incidents
             FROM {incidents} WHERE started_at >= now() - interval '30 days'
             GROUP BY 1, 2) i USING (target, location)
         WHERE $1::text IS NULL OR strpos(s.target, $1) > 0
         ORDER BY s.state = 'up', s.target, s.location",
        bucket_columns = (1..=BUCKETS)
            .map(|i| format!("h.b{i}"))
            .collect::<Vec<_>>()
            .join(", "),
        bucket_sums = (1..=BUCKETS)
            .map(|i| format!("sum(latency_buckets[{i}])::bigint AS b{i}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// The columns of a line of [`lines_sql`] where its buckets begin.
const FIRST_BUCKET: usize = 16;

pub fn lines(
    client: &mut Client,
    table: &TableName,
    filter: Option<&str>,
) -> Result<Vec<Line>, postgres::Error> {
    let rows = client.query(&lines_sql(table), &[&filter])?;
    Ok(rows
        .iter()
        .map(|row| {
            let key: Key = (row.get(0), row.get(1));
            let percent = |checks: Option<i64>, ok: Option<i64>| match (checks, ok) {
                (Some(checks), Some(ok)) if checks > 0 => Some(100.0 * ok as f64 / checks as f64),
                _ => None,
            };
            let sum = |index: usize| row.get::<_, Option<i64>>(index);
            let last_error = match (
                row.get::<_, Option<String>>(5),
                row.get::<_, Option<String>>(6),
            ) {
                (Some(kind), Some(text)) => Some(format!("{kind}: {text}")),
                (kind, text) => kind.or(text),
            };
            let mut buckets = Buckets {
                counts: [0; BUCKETS],
                max_ms: row.get(15),
            };
            for (index, count) in buckets.counts.iter_mut().enumerate() {
                *count = row.get::<_, Option<i64>>(FIRST_BUCKET + index).unwrap_or(0);
            }
            Line {
                target: key.0.clone(),
                location: Some(key.1.clone()).filter(|l| !l.is_empty()),
                state: row.get(2),
                since: row.get(3),
                last_checked_at: row.get(4),
                uptime_24h: percent(sum(8), sum(9)),
                uptime_7d: percent(sum(10), sum(11)),
                uptime_30d: percent(sum(12), sum(13)),
                p50_ms_24h: buckets.quantile(0.50),
                p95_ms_24h: buckets.quantile(0.95),
                incidents_30d: row.get(14),
                last_error,
                tls_days_left: row.get(7),
            }
        })
        .collect())
}

/// Counts per latency bucket, and the largest latency seen, of one target.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Buckets {
    pub counts: [i64; BUCKETS],
    pub max_ms: Option<f64>,
}

impl Buckets {
    /// The latency under which a share `q` of the checks fell, interpolated linearly
    /// within its bucket (as Prometheus's histogram_quantile does); in the last,
    /// unbounded bucket, the largest latency seen. None without checks.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: i64 = self.counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0i64;
        for (index, &count) in self.counts.iter().enumerate() {
            if count > 0 && (below + count) as f64 >= rank {
                let Some(&upper) = LATENCY_BOUNDS_MS.get(index) else {
                    return self.max_ms.or(LATENCY_BOUNDS_MS.last().copied());
                };
                let lower = if index == 0 {
                    0.0
                } else {
                    LATENCY_BOUNDS_MS[index - 1]
                };
                let within = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += count;
        }
        self.max_ms
    }
}

/// One day's uptime of one target, for the page's bar.
pub fn daily_uptime(
    client: &mut Client,
    table: &TableName,
    filter: Option<&str>,
    days: i32,
) -> Result<BTreeMap<Key, BTreeMap<NaiveDate, f64>>, postgres::Error> {
    let daily = table.with_suffix("_daily");
    let rows = client.query(
        &format!(
            "SELECT target, location, (day AT TIME ZONE 'UTC')::date, checks, ok_checks
             FROM {daily}
             WHERE day >= now() - make_interval(days => $2) AND checks > 0
               AND ($1::text IS NULL OR strpos(target, $1) > 0)"
        ),
        &[&filter, &days],
    )?;
    let mut uptime: BTreeMap<Key, BTreeMap<NaiveDate, f64>> = BTreeMap::new();
    for row in rows {
        let (checks, ok): (i64, i64) = (row.get(3), row.get(4));
        let percent = 100.0 * ok as f64 / checks as f64;
        uptime
            .entry((row.get(0), row.get(1)))
            .or_default()
            .insert(row.get(2), percent);
    }
    Ok(uptime)
}

/// An incident, for the page.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub error_kind: Option<String>,
    pub failed_checks: i32,
    pub last_error_text: Option<String>,
}

/// The latest incidents of each target within `days`, newest first, at most `per_target`.
pub fn recent_incidents(
    client: &mut Client,
    table: &TableName,
    filter: Option<&str>,
    days: i32,
    per_target: i64,
) -> Result<BTreeMap<Key, Vec<Incident>>, postgres::Error> {
    let incidents = table.with_suffix("_incidents");
    let rows = client.query(
        &format!(
            "SELECT target, location, started_at, ended_at, error_kind, failed_checks,
                    last_error_text
             FROM (SELECT *, row_number() OVER (
                       PARTITION BY target, location ORDER BY started_at DESC) AS n
                   FROM {incidents}
                   WHERE started_at >= now() - make_interval(days => $2)
                     AND ($1::text IS NULL OR strpos(target, $1) > 0)) i
             WHERE n <= $3
             ORDER BY target, location, started_at DESC"
        ),
        &[&filter, &days, &per_target],
    )?;
    let mut recent: BTreeMap<Key, Vec<Incident>> = BTreeMap::new();
    for row in rows {
        recent
            .entry((row.get(0), row.get(1)))
            .or_default()
            .push(Incident {
                started_at: row.get(2),
                ended_at: row.get(3),
                error_kind: row.get(4),
                failed_checks: row.get(5),
                last_error_text: row.get(6),
            });
    }
    Ok(recent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(counts: &[(usize, i64)]) -> Buckets {
        let mut b = Buckets::default();
        for &(index, count) in counts {
            b.counts[index] = count;
        }
        b
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        // 100 checks, all between 10 and 25 ms: the median is half way.
        let b = buckets(&[(2, 100)]);
        assert_eq!(b.quantile(0.5), Some(17.5));
        assert_eq!(b.quantile(1.0), Some(25.0));
        // 90 fast, 10 slow: p50 in the first bucket, p95 in the 250-500 one.
        let b = buckets(&[(0, 90), (6, 10)]);
        assert_eq!(b.quantile(0.5), Some(5.0 * 50.0 / 90.0));
        assert_eq!(b.quantile(0.95), Some(250.0 + 250.0 * 0.5));
        assert_eq!(Buckets::default().quantile(0.5), None);
    }

    #[test]
    fn the_last_bucket_reads_as_the_largest_latency_seen() {
        let mut b = buckets(&[(BUCKETS - 1, 3)]);
        b.max_ms = Some(31_000.0);
        assert_eq!(b.quantile(0.5), Some(31_000.0));
    }
}
