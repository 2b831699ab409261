//! Deriving the hourly and daily rollups, statuses and incidents from rows stored already, once,
//! when a database written by an earlier release is upgraded: the same trackers sub
//! uses for each batch, fed every row in each target's order.

use std::collections::BTreeMap;
use std::time::Instant;

use postgres::Transaction;

use super::answers::store_trackers;
use super::derived::{bucket_counts_sql, Key, Period, Thresholds, Tracker};
use super::prepared::Prepared;
use crate::pubsub::message::{CheckResult, ErrorKind};
use crate::pubsub::table::TableName;

/// Rows fetched at a time from the stored results.
const FETCH: i32 = 10_000;
/// Targets whose derived rows are written at a time.
const TARGETS_PER_WRITE: usize = 1_000;

pub fn derived_tables(
    tx: &mut Transaction<'_>,
    table: &TableName,
    thresholds: Thresholds,
) -> Result<(), postgres::Error> {
    let started = Instant::now();
    let mut rollups = 0;
    for period in Period::ALL {
        let into = table.with_suffix(period.table_suffix());
        let column = period.column();
        rollups += tx.execute(
            &format!(
                "INSERT INTO {into} (target, location, {column}, checks, ok_checks,
                     latency_ms_sum, latency_ms_min, latency_ms_max, latency_buckets)
                 SELECT target, coalesce(location, ''),
                        date_trunc('{column}', checked_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
                        count(*), count(*) FILTER (WHERE ok), coalesce(sum(latency_ms), 0),
                        min(latency_ms), max(latency_ms), {buckets}
                 FROM {table} GROUP BY 1, 2, 3",
                buckets = bucket_counts_sql("latency_ms"),
            ),
            &[],
        )?;
    }
    if rollups == 0 {
        return Ok(());
    }
    let rows = replay(tx, table, thresholds)?;
    log::info!(
        "derived {rollups} hourly and daily rollup(s), statuses and incidents from {rows} stored row(s) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Feeds every stored row, target by target in time order, to the trackers; returns
/// how many rows it read.
fn replay(
    tx: &mut Transaction<'_>,
    table: &TableName,
    thresholds: Thresholds,
) -> Result<u64, postgres::Error> {
    let portal = tx.bind(
        &format!(
            "SELECT target, coalesce(location, ''), checked_at, ok, error_kind, error_text,
                    tls_expires_at, tls_days_left
             FROM {table}
             ORDER BY target, coalesce(location, ''), checked_at, kafka_partition, kafka_offset"
        ),
        &[],
    )?;
    let mut trackers: BTreeMap<Key, Tracker> = BTreeMap::new();
    let mut prepared = Prepared::default();
    let mut read = 0u64;
    loop {
        let rows = tx.query_portal(&portal, FETCH)?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let key: Key = (row.get(0), row.get(1));
            if !trackers.contains_key(&key) && trackers.len() >= TARGETS_PER_WRITE {
                store_trackers(tx, &mut prepared, table, &trackers)?;
                trackers.clear();
            }
            let mut check = CheckResult::example(0);
            check.target = key.0.clone();
            check.checked_at = row.get(2);
            check.ok = row.get(3);
            check.error_kind = row.get::<_, Option<&str>>(4).and_then(ErrorKind::parse);
            check.error_text = row.get(5);
            check.details.tls_expires_at = row.get(6);
            check.details.tls_days_left = row.get::<_, Option<i32>>(7).map(i64::from);
            trackers
                .entry(key)
                .or_insert_with(|| Tracker::new(None, None))
                .apply(&check, thresholds);
            read += 1;
        }
    }
    store_trackers(tx, &mut prepared, table, &trackers)?;
    Ok(read)
}
