//! Checks of what sub stored against itself: the derived tables against the rows they
//! were derived from.

use metrics_flow::pubsub::subscribe::derived::bucket_counts_sql;

use super::stack::Stack;

/// Fails unless `<table>_hourly` and `<table>_daily` hold exactly a GROUP BY over
/// `<table>`'s rows (sums to 6 decimals, as the two sides add in different orders).
/// Returns the hourly rollups.
pub fn assert_hourly_matches_rows(stack: &Stack, table: &str) -> usize {
    assert_rollups_match_rows(stack, table, "day", "_daily");
    assert_rollups_match_rows(stack, table, "hour", "_hourly")
}

fn assert_rollups_match_rows(stack: &Stack, table: &str, period: &str, suffix: &str) -> usize {
    let from_rows = format!(
        "SELECT target, coalesce(location, '') AS location,
                date_trunc('{period}', checked_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS start,
                count(*) AS checks, count(*) FILTER (WHERE ok) AS ok_checks,
                round(coalesce(sum(latency_ms), 0)::numeric, 6) AS latency_ms_sum,
                min(latency_ms) AS latency_ms_min, max(latency_ms) AS latency_ms_max,
                {} AS latency_buckets
         FROM {table} GROUP BY 1, 2, 3",
        bucket_counts_sql("latency_ms")
    );
    let rollups = format!(
        "SELECT target, location, {period}, checks, ok_checks,
                round(latency_ms_sum::numeric, 6), latency_ms_min, latency_ms_max,
                latency_buckets
         FROM {table}{suffix}"
    );
    let mut pg = stack.pg();
    let count = |sql: &str, pg: &mut postgres::Client| -> i64 {
        pg.query_one(&format!("SELECT count(*) FROM ({sql}) d"), &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    };
    let missing = count(&format!("{from_rows} EXCEPT {rollups}"), &mut pg);
    let extra = count(&format!("{rollups} EXCEPT {from_rows}"), &mut pg);
    let rows = count(&from_rows, &mut pg);
    assert_eq!(
        (missing, extra),
        (0, 0),
        "{table}{suffix} differs from a GROUP BY over {table}: {missing} group(s) missing or different, {extra} extra"
    );
    rows as usize
}
