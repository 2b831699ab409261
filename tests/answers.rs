//! What sub derives from the results, against the real database: hourly rollups equal
//! to a GROUP BY over the rows, statuses and incidents that follow the thresholds,
//! day partitions made and dropped, and the views.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use serde_json::Value;

/// A result for `target` at `at`, good or failed, with a latency in ms (or none).
fn result(target: &str, at: DateTime<Utc>, ok: bool, latency_ms: Option<f64>) -> Value {
    let mut value = check_value(1);
    value["target"] = target.into();
    value["checked_at"] = at
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        .into();
    value["ok"] = ok.into();
    value["http_status"] = if ok { 200 } else { 503 }.into();
    value["latency_ms"] = latency_ms.map_or(Value::Null, Value::from);
    value["error_kind"] = if ok { Value::Null } else { "status".into() };
    value["error_text"] = if ok {
        Value::Null
    } else {
        format!("failure at {at}").into()
    };
    value
}

/// Results of `target` one minute apart from `start`, following `pattern`: '+' a
/// good check, '-' a failed one.
fn run_of(target: &str, start: DateTime<Utc>, pattern: &str) -> Vec<Value> {
    pattern
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let at = start + chrono::Duration::minutes(i as i64);
            result(target, at, c == '+', Some(10.0 + i as f64))
        })
        .collect()
}

fn minute(start: DateTime<Utc>, i: i64) -> DateTime<Utc> {
    start + chrono::Duration::minutes(i)
}

fn sub_once(stack: &Stack, topic: &str, extra: &[&str]) -> String {
    let mut subscriber = Logged::spawn(
        metrics_flow(stack, topic)
            .args(["sub", "--once", "--table", topic, "--group", topic])
            .args(extra),
    );
    let (status, log) = subscriber.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "sub exited {status}:\n{log}");
    log
}

/// An hour boundary safely in the past, so that every result is a day or less old.
fn recent_start() -> DateTime<Utc> {
    let hour = chrono::Duration::hours(1);
    let an_hour_ago = Utc::now() - hour * 3;
    chrono::DurationRound::duration_trunc(an_hour_ago, hour).unwrap()
}

#[test]
fn hourly_rollups_equal_a_group_by_over_the_rows() {
    let stack = Stack::shared();
    let topic = unique("hourly");
    let start = recent_start();
    let latencies = [
        0.4, 5.0, 7.5, 30.0, 120.0, 800.0, 2_600.0, 9_000.0, 25_000.0,
    ];
    let mut values = Vec::new();
    for i in 0..120 {
        let target = format!("http://t{}.example/", i % 3);
        let at = start + chrono::Duration::seconds(i * 97);
        let latency = (i % 10 != 9).then(|| latencies[i as usize % latencies.len()]);
        values.push(result(&target, at, i % 4 != 0, latency));
    }
    produce_json(&stack, &topic, &values);
    sub_once(&stack, &topic, &[]);
    let hours = assert_hourly_matches_rows(&stack, &topic);
    assert!(
        hours >= 9,
        "3 targets over more than 3 hours: {hours} rollups"
    );
}

#[test]
fn incidents_follow_the_thresholds_and_flapping_opens_none() {
    let stack = Stack::shared();
    let topic = unique("incidents");
    let start = recent_start();
    let mut values = run_of("http://recovers.example/", start, "++---+-++");
    values.extend(run_of("http://flaps.example/", start, "+--+--+-+--+"));
    values.extend(run_of("http://down.example/", start, "+----"));
    produce_json(&stack, &topic, &values);
    sub_once(&stack, &topic, &["--down-after", "3", "--up-after", "2"]);

    let incidents = stack
        .pg()
        .query(
            &format!(
                "SELECT target, started_at, ended_at, error_kind, failed_checks
                 FROM {topic}_incidents ORDER BY target"
            ),
            &[],
        )
        .unwrap();
    assert_eq!(incidents.len(), 2, "no incident for the flapping target");
    let down = &incidents[0];
    assert_eq!(down.get::<_, String>(0), "http://down.example/");
    assert_eq!(down.get::<_, DateTime<Utc>>(1), minute(start, 1));
    assert_eq!(down.get::<_, Option<DateTime<Utc>>>(2), None, "still open");
    assert_eq!(down.get::<_, i32>(4), 4);
    let recovered = &incidents[1];
    assert_eq!(recovered.get::<_, DateTime<Utc>>(1), minute(start, 2));
    assert_eq!(
        recovered.get::<_, Option<DateTime<Utc>>>(2),
        Some(minute(start, 8))
    );
    assert_eq!(
        recovered.get::<_, Option<String>>(3).as_deref(),
        Some("status")
    );
    assert_eq!(recovered.get::<_, i32>(4), 4);

    let states: Vec<(String, String, DateTime<Utc>)> = stack
        .pg()
        .query(
            &format!("SELECT target, state, since FROM {topic}_status ORDER BY target"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        states,
        [
            (
                "http://down.example/".into(),
                "down".into(),
                minute(start, 1)
            ),
            ("http://flaps.example/".into(), "up".into(), start),
            (
                "http://recovers.example/".into(),
                "up".into(),
                minute(start, 7)
            ),
        ]
    );
    let open: i64 = stack
        .pg()
        .query_one(&format!("SELECT count(*) FROM {topic}_open_incidents"), &[])
        .unwrap()
        .get(0);
    assert_eq!(open, 1);
}

#[test]
fn a_late_result_counts_in_the_rollup_and_leaves_the_status_alone() {
    let stack = Stack::shared();
    let topic = unique("late");
    let start = recent_start();
    let target = "http://late.example/";
    let mut values = run_of(target, minute(start, 1), "+++");
    values.push(result(target, start, false, Some(99.0)));
    produce_json(&stack, &topic, &values);
    sub_once(&stack, &topic, &["--down-after", "1"]);

    let row = stack
        .pg()
        .query_one(
            &format!(
                "SELECT state, consecutive_successes, consecutive_failures, last_checked_at
                 FROM {topic}_status"
            ),
            &[],
        )
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "up",
        "the late failure opened nothing"
    );
    assert_eq!(row.get::<_, i32>(1), 3);
    assert_eq!(row.get::<_, i32>(2), 0);
    assert_eq!(row.get::<_, DateTime<Utc>>(3), minute(start, 3));
    assert_eq!(stack.count(&format!("{topic}_incidents")), 0);
    let (checks, ok): (i64, i64) = stack
        .pg()
        .query_one(
            &format!("SELECT sum(checks)::bigint, sum(ok_checks)::bigint FROM {topic}_hourly"),
            &[],
        )
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!((checks, ok), (4, 3), "the late result is counted");
    assert_hourly_matches_rows(&stack, &topic);
}

/// The day partitions of the results table, as dates.
fn partition_days(stack: &Stack, table: &str) -> Vec<String> {
    let mut days: Vec<String> = stack
        .pg()
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = to_regclass($1)",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect();
    days.sort();
    days
}

#[test]
fn each_day_gets_a_partition_and_old_ones_are_dropped_whole() {
    let stack = Stack::shared();
    let topic = unique("days");
    let now = Utc::now();
    let day = |days_ago: i64| now - chrono::Duration::days(days_ago);
    let name = |at: DateTime<Utc>| format!("{topic}_d{}", at.format("%Y%m%d"));
    let target = "http://days.example/";
    produce_json(
        &stack,
        &topic,
        &[
            result(target, day(9), true, Some(1.0)),
            result(target, day(3), true, Some(1.0)),
            result(target, day(0), true, Some(1.0)),
            result(target, now + chrono::Duration::days(2), true, Some(1.0)),
        ],
    );
    sub_once(&stack, &topic, &[]);
    assert_eq!(stack.count(&topic), 3);
    let days = partition_days(&stack, &topic);
    for at in [day(9), day(3), day(0)] {
        assert!(days.contains(&name(at)), "no partition for {at}: {days:?}");
    }
    let reasons: Vec<String> = stack
        .pg()
        .query(&format!("SELECT reason FROM {topic}_rejected"), &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("ahead"), "{reasons:?}");

    // With five days kept, the partition of nine days ago goes, and a result of seven
    // days ago is refused.
    produce_json(&stack, &topic, &[result(target, day(7), true, Some(1.0))]);
    let log = sub_once(&stack, &topic, &["--retention-days", "5"]);
    let days = partition_days(&stack, &topic);
    assert!(!days.contains(&name(day(9))), "{days:?}");
    assert!(days.contains(&name(day(3))), "{days:?}");
    assert!(
        log.contains(&format!("dropped partition \"{}\"", name(day(9)))),
        "{log}"
    );
    assert_eq!(stack.count(&topic), 2);
    let older: i64 = stack
        .pg()
        .query_one(
            &format!(
                "SELECT count(*) FROM {topic}_rejected WHERE reason LIKE '%older than --retention-days 5%'"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(older, 1);
    let hourly = format!("{topic}_hourly");
    let rollup_name = |at: DateTime<Utc>| format!("{hourly}_d{}", at.format("%Y%m%d"));
    assert!(
        partition_days(&stack, &hourly).contains(&rollup_name(day(9))),
        "--retention-days alone keeps the rollups"
    );

    // Rollups kept two days: their partitions of three and nine days ago go, the
    // results of three days ago stay, and so do the daily rollups.
    let log = sub_once(&stack, &topic, &["--rollup-retention-days", "2"]);
    let rollups = partition_days(&stack, &hourly);
    for at in [day(9), day(3)] {
        assert!(!rollups.contains(&rollup_name(at)), "{rollups:?}");
        assert!(
            log.contains(&format!("dropped partition \"{}\"", rollup_name(at))),
            "{log}"
        );
    }
    assert!(rollups.contains(&rollup_name(day(0))), "{rollups:?}");
    assert!(partition_days(&stack, &topic).contains(&name(day(3))));
    assert_eq!(stack.count(&topic), 2);
    let daily: i64 = stack
        .pg()
        .query_one(
            &format!("SELECT sum(checks)::bigint FROM {topic}_daily"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(daily, 3, "daily rollups are kept");
}

#[test]
fn the_views_answer_the_common_questions() {
    let stack = Stack::shared();
    let topic = unique("views");
    let start = recent_start();
    let mut values = run_of("http://a.example/", start, "++++");
    values.extend(run_of("http://b.example/", start, "+---"));
    produce_json(&stack, &topic, &values);
    sub_once(&stack, &topic, &[]);
    let latest: Vec<(String, DateTime<Utc>)> = stack
        .pg()
        .query(
            &format!("SELECT target, checked_at FROM {topic}_latest ORDER BY target"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        latest,
        [
            ("http://a.example/".into(), minute(start, 3)),
            ("http://b.example/".into(), minute(start, 3)),
        ]
    );
    let uptime: Vec<(String, i64, f64)> = stack
        .pg()
        .query(
            &format!(
                "SELECT target, checks, uptime_percent::float8 FROM {topic}_daily_uptime ORDER BY target"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        uptime,
        [
            ("http://a.example/".into(), 4, 100.0),
            ("http://b.example/".into(), 4, 25.0),
        ]
    );
    let open: Vec<String> = stack
        .pg()
        .query(&format!("SELECT target FROM {topic}_open_incidents"), &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(open, ["http://b.example/"]);
}
