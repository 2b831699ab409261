//! Storing what [`super::derived`] computes, inside the batch transaction: the hourly
//! and daily rollups are added to, and each target's status and incidents are read, advanced
//! and written back. Being in the transaction of the rows and the offsets, they are
//! exactly once too.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use postgres::Transaction;

use super::derived::{Grouping, Incident, Key, Period, State, Status, Sums, Thresholds, Tracker};
use super::prepared::Prepared;
use super::store::AcceptedRow;
use crate::pubsub::table::TableName;

/// Derives from the results a batch stores; `grouping` is theirs.
pub fn apply(
    tx: &mut Transaction<'_>,
    prepared: &mut Prepared,
    table: &TableName,
    rows: &[AcceptedRow],
    grouping: &Grouping,
    thresholds: Thresholds,
) -> Result<(), postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    for (period, sums) in Period::ALL.into_iter().zip(&grouping.rollups) {
        add_to_rollup(tx, prepared, table, period, sums)?;
    }
    let keys = grouping.checks_of.iter().map(|(key, _)| key);
    let mut trackers = load_trackers(tx, prepared, table, keys)?;
    for (key, positions) in &grouping.checks_of {
        let tracker = trackers.get_mut(key).expect("a tracker for every key");
        for &position in positions {
            tracker.apply(&rows[position].check, thresholds);
        }
    }
    store_trackers(tx, prepared, table, &trackers)
}

/// `{1,2,3}`: an int[] literal, so that one text[] parameter carries every row's buckets.
fn array_literal(counts: &[i32]) -> String {
    let items: Vec<String> = counts.iter().map(i32::to_string).collect();
    format!("{{{}}}", items.join(","))
}

pub fn add_to_rollup(
    tx: &mut Transaction<'_>,
    prepared: &mut Prepared,
    table: &TableName,
    period: Period,
    hours: &BTreeMap<(Key, DateTime<Utc>), Sums>,
) -> Result<(), postgres::Error> {
    let rollups = table.with_suffix(period.table_suffix());
    let column = period.column();
    let mut targets = Vec::with_capacity(hours.len());
    let mut locations = Vec::with_capacity(hours.len());
    let mut starts = Vec::with_capacity(hours.len());
    let mut checks = Vec::with_capacity(hours.len());
    let mut ok_checks = Vec::with_capacity(hours.len());
    let mut sums = Vec::with_capacity(hours.len());
    let mut mins = Vec::with_capacity(hours.len());
    let mut maxes = Vec::with_capacity(hours.len());
    let mut buckets = Vec::with_capacity(hours.len());
    for (((target, location), hour), sums_of_hour) in hours {
        targets.push(target.as_str());
        locations.push(location.as_str());
        starts.push(*hour);
        checks.push(sums_of_hour.checks);
        ok_checks.push(sums_of_hour.ok_checks);
        sums.push(sums_of_hour.latency_ms_sum);
        mins.push(sums_of_hour.latency_ms_min);
        maxes.push(sums_of_hour.latency_ms_max);
        buckets.push(array_literal(&sums_of_hour.latency_buckets));
    }
    let statement = prepared.statement(
        tx,
        &format!(
            "INSERT INTO {rollups} AS h (target, location, {column}, checks, ok_checks,
                 latency_ms_sum, latency_ms_min, latency_ms_max, latency_buckets)
             SELECT t, l, hr, c, o, s, mn, mx, b::int[]
             FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[],
                         $5::bigint[], $6::float8[], $7::float8[], $8::float8[], $9::text[])
                  AS u(t, l, hr, c, o, s, mn, mx, b)
             ON CONFLICT (target, location, {column}) DO UPDATE SET
                 checks = h.checks + EXCLUDED.checks,
                 ok_checks = h.ok_checks + EXCLUDED.ok_checks,
                 latency_ms_sum = h.latency_ms_sum + EXCLUDED.latency_ms_sum,
                 latency_ms_min = LEAST(h.latency_ms_min, EXCLUDED.latency_ms_min),
                 latency_ms_max = GREATEST(h.latency_ms_max, EXCLUDED.latency_ms_max),
                 latency_buckets = ARRAY(
                     SELECT a + b FROM unnest(h.latency_buckets, EXCLUDED.latency_buckets)
                     AS x(a, b))"
        ),
    )?;
    tx.execute(
        &statement,
        &[
            &targets, &locations, &starts, &checks, &ok_checks, &sums, &mins, &maxes, &buckets,
        ],
    )?;
    Ok(())
}

/// The stored status and open incident of each target and location of `keys`.
pub fn load_trackers<'a>(
    tx: &mut Transaction<'_>,
    prepared: &mut Prepared,
    table: &TableName,
    keys: impl Iterator<Item = &'a Key>,
) -> Result<BTreeMap<Key, Tracker>, postgres::Error> {
    let mut trackers: BTreeMap<Key, Tracker> = keys
        .map(|key| (key.clone(), Tracker::new(None, None)))
        .collect();
    let targets: Vec<&str> = trackers.keys().map(|(t, _)| t.as_str()).collect();
    let locations: Vec<&str> = trackers.keys().map(|(_, l)| l.as_str()).collect();
    let status = table.with_suffix("_status");
    let statement = prepared.statement(
        tx,
        &format!(
            "SELECT target, location, state, since, last_checked_at, consecutive_failures,
                    consecutive_successes, last_error_kind, last_error_text, run_started_at,
                    run_error_kind, tls_expires_at, tls_days_left
             FROM {status}
             WHERE (target, location) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
        ),
    )?;
    let rows = tx.query(&statement, &[&targets, &locations])?;
    let mut stored: Vec<(Key, Status)> = rows
        .iter()
        .map(|row| {
            let key = (row.get(0), row.get(1));
            let status = Status {
                state: State::parse(row.get(2)),
                since: row.get(3),
                last_checked_at: row.get(4),
                consecutive_failures: row.get(5),
                consecutive_successes: row.get(6),
                last_error_kind: row.get(7),
                last_error_text: row.get(8),
                run_started_at: row.get(9),
                run_error_kind: row.get(10),
                tls_expires_at: row.get(11),
                tls_days_left: row.get::<_, Option<i32>>(12).map(i64::from),
            };
            (key, status)
        })
        .collect();
    let incidents = table.with_suffix("_incidents");
    let statement = prepared.statement(
        tx,
        &format!(
            "SELECT target, location, id, started_at, error_kind, failed_checks, last_error_text
             FROM {incidents}
             WHERE ended_at IS NULL
               AND (target, location) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
        ),
    )?;
    let rows = tx.query(&statement, &[&targets, &locations])?;
    let open: BTreeMap<Key, Incident> = rows
        .iter()
        .map(|row| {
            let incident = Incident {
                id: Some(row.get(2)),
                started_at: row.get(3),
                ended_at: None,
                error_kind: row.get(4),
                failed_checks: row.get(5),
                last_error_text: row.get(6),
            };
            ((row.get(0), row.get(1)), incident)
        })
        .collect();
    for (key, status) in stored.drain(..) {
        let open = open.get(&key).cloned();
        trackers.insert(key, Tracker::new(Some(status), open));
    }
    Ok(trackers)
}

/// Writes back every status a batch changed, and the incidents it opened or advanced.
pub fn store_trackers(
    tx: &mut Transaction<'_>,
    prepared: &mut Prepared,
    table: &TableName,
    trackers: &BTreeMap<Key, Tracker>,
) -> Result<(), postgres::Error> {
    let changed: Vec<(&Key, &Tracker)> = trackers.iter().filter(|(_, t)| t.changed).collect();
    if changed.is_empty() {
        return Ok(());
    }
    store_statuses(tx, prepared, table, &changed)?;
    store_incidents(tx, prepared, table, &changed)
}

fn store_statuses(
    tx: &mut Transaction<'_>,
    prepared: &mut Prepared,
    table: &TableName,
    changed: &[(&Key, &Tracker)],
) -> Result<(), postgres::Error> {
    let statuses: Vec<(&Key, &Status)> = changed
        .iter()
        .filter_map(|(key, tracker)| tracker.status.as_ref().map(|s| (*key, s)))
        .collect();
    let column = |f: &dyn Fn(&Status) -> Option<String>| -> Vec<Option<String>> {
        statuses.iter().map(|(_, s)| f(s)).collect()
    };
    let targets: Vec<&str> = statuses.iter().map(|((t, _), _)| t.as_str()).collect();
    let locations: Vec<&str> = statuses.iter().map(|((_, l), _)| l.as_str()).collect();
    let states: Vec<&str> = statuses.iter().map(|(_, s)| s.state.as_str()).collect();
    let since: Vec<DateTime<Utc>> = statuses.iter().map(|(_, s)| s.since).collect();
    let last: Vec<DateTime<Utc>> = statuses.iter().map(|(_, s)| s.last_checked_at).collect();
    let failures: Vec<i32> = statuses
        .iter()
        .map(|(_, s)| s.consecutive_failures)
        .collect();
    let successes: Vec<i32> = statuses
        .iter()
        .map(|(_, s)| s.consecutive_successes)
        .collect();
    let error_kinds = column(&|s| s.last_error_kind.clone());
    let error_texts = column(&|s| s.last_error_text.clone());
    let run_started: Vec<DateTime<Utc>> = statuses.iter().map(|(_, s)| s.run_started_at).collect();
    let run_kinds = column(&|s| s.run_error_kind.clone());
    let tls_expires: Vec<Option<DateTime<Utc>>> =
        statuses.iter().map(|(_, s)| s.tls_expires_at).collect();
    let tls_days: Vec<Option<i32>> = statuses
        .iter()
        .map(|(_, s)| {
            s.tls_days_left
                .map(|d| d.clamp(i32::MIN.into(), i32::MAX.into()) as i32)
        })
        .collect();
    let status = table.with_suffix("_status");
    let statement = prepared.statement(
        tx,
        &format!(
            "INSERT INTO {status} (target, location, state, since, last_checked_at,
                 consecutive_failures, consecutive_successes, last_error_kind, last_error_text,
                 run_started_at, run_error_kind, tls_expires_at, tls_days_left)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[],
                 $5::timestamptz[], $6::int[], $7::int[], $8::text[], $9::text[],
                 $10::timestamptz[], $11::text[], $12::timestamptz[], $13::int[])
             ON CONFLICT (target, location) DO UPDATE SET
                 state = EXCLUDED.state, since = EXCLUDED.since,
                 last_checked_at = EXCLUDED.last_checked_at,
                 consecutive_failures = EXCLUDED.consecutive_failures,
                 consecutive_successes = EXCLUDED.consecutive_successes,
                 last_error_kind = EXCLUDED.last_error_kind,
                 last_error_text = EXCLUDED.last_error_text,
                 run_started_at = EXCLUDED.run_started_at,
                 run_error_kind = EXCLUDED.run_error_kind,
                 tls_expires_at = EXCLUDED.tls_expires_at,
                 tls_days_left = EXCLUDED.tls_days_left"
        ),
    )?;
    tx.execute(
        &statement,
        &[
            &targets,
            &locations,
            &states,
            &since,
            &last,
            &failures,
            &successes,
            &error_kinds,
            &error_texts,
            &run_started,
            &run_kinds,
            &tls_expires,
            &tls_days,
        ],
    )?;
    Ok(())
}

/// New incidents in one INSERT, advanced ones in one UPDATE: an upgrade's backfill
/// writes thousands at a time (one statement each took 28.7 s per million rows in
/// bench-upgrade.sh with 20,000 incidents).
fn store_incidents(
    tx: &mut Transaction<'_>,
    prepared: &mut Prepared,
    table: &TableName,
    changed: &[(&Key, &Tracker)],
) -> Result<(), postgres::Error> {
    let incidents = table.with_suffix("_incidents");
    let all = changed
        .iter()
        .flat_map(|(key, tracker)| tracker.incidents.iter().map(move |i| (*key, i)));
    let (existing, new): (Vec<_>, Vec<_>) = all.partition(|(_, i)| i.id.is_some());
    if !new.is_empty() {
        let targets: Vec<&str> = new.iter().map(|((t, _), _)| t.as_str()).collect();
        let locations: Vec<&str> = new.iter().map(|((_, l), _)| l.as_str()).collect();
        let started: Vec<DateTime<Utc>> = new.iter().map(|(_, i)| i.started_at).collect();
        let ended: Vec<Option<DateTime<Utc>>> = new.iter().map(|(_, i)| i.ended_at).collect();
        let kinds: Vec<Option<&str>> = new.iter().map(|(_, i)| i.error_kind.as_deref()).collect();
        let failed: Vec<i32> = new.iter().map(|(_, i)| i.failed_checks).collect();
        let texts: Vec<Option<&str>> = new
            .iter()
            .map(|(_, i)| i.last_error_text.as_deref())
            .collect();
        let statement = prepared.statement(
            tx,
            &format!(
                "INSERT INTO {incidents} (target, location, started_at, ended_at, error_kind,
                     failed_checks, last_error_text)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[],
                     $4::timestamptz[], $5::text[], $6::int[], $7::text[])"
            ),
        )?;
        tx.execute(
            &statement,
            &[
                &targets, &locations, &started, &ended, &kinds, &failed, &texts,
            ],
        )?;
    }
    if !existing.is_empty() {
        let ids: Vec<i64> = existing.iter().filter_map(|(_, i)| i.id).collect();
        let ended: Vec<Option<DateTime<Utc>>> = existing.iter().map(|(_, i)| i.ended_at).collect();
        let failed: Vec<i32> = existing.iter().map(|(_, i)| i.failed_checks).collect();
        let texts: Vec<Option<&str>> = existing
            .iter()
            .map(|(_, i)| i.last_error_text.as_deref())
            .collect();
        let statement = prepared.statement(
            tx,
            &format!(
                "UPDATE {incidents} i SET ended_at = u.ended_at,
                     failed_checks = u.failed_checks, last_error_text = u.last_error_text
                 FROM unnest($1::bigint[], $2::timestamptz[], $3::int[], $4::text[])
                     AS u(id, ended_at, failed_checks, last_error_text)
                 WHERE i.id = u.id"
            ),
        )?;
        tx.execute(&statement, &[&ids, &ended, &failed, &texts])?;
    }
    Ok(())
}
