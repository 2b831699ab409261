//! Messages that a hostile or broken producer writes into the results topic: sub stores
//! what it can, rejects the rest with a reason, and never stalls on any of them.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Runs `sub --once` over the topic into `table` and returns its log; fails the test
/// unless it exits 0 within a minute (a sub stuck retrying one batch never would).
fn sub_once(stack: &Stack, topic: &str, table: &str) -> String {
    let mut subscriber = Logged::spawn(
        metrics_flow(stack, topic).args(["sub", "--once", "--table", table, "--group", topic]),
    );
    let (status, log) = subscriber.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "sub exited {status}:\n{log}");
    log
}

fn json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

fn stored_ids(stack: &Stack, table: &str) -> Vec<String> {
    let mut ids: Vec<String> = stack
        .pg()
        .query(&format!("SELECT id::text FROM {table}"), &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    ids.sort();
    ids
}

fn ids_of(values: &[&Value]) -> Vec<String> {
    let mut ids: Vec<String> = values
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Each rejected row's reason, by offset.
fn reasons(stack: &Stack, table: &str) -> Vec<(i64, String)> {
    stack
        .pg()
        .query(
            &format!("SELECT kafka_offset, reason FROM {table}_rejected ORDER BY kafka_offset"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[test]
fn a_nul_in_any_text_field_is_rejected_with_postgres_reason_and_the_rest_is_stored() {
    let stack = Stack::shared();
    let topic = unique("nul");
    let valid: Vec<Value> = (0..3).map(check_value).collect();
    let mut poisoned = Vec::new();
    for field in [
        "error_text",
        "pattern",
        "target",
        "final_url",
        "http_version",
    ] {
        let mut value = check_value(1);
        value[field] = "before\u{0}after".into();
        poisoned.push(value);
    }
    let mut all = vec![valid[0].clone()];
    all.extend(poisoned.iter().cloned());
    all.extend(valid[1..].iter().cloned());
    produce_json(&stack, &topic, &all);

    let log = sub_once(&stack, &topic, &topic);
    assert_eq!(
        stored_ids(&stack, &topic),
        ids_of(&valid.iter().collect::<Vec<_>>())
    );
    let rejected = reasons(&stack, &topic);
    assert_eq!(
        rejected
            .iter()
            .map(|(offset, _)| *offset)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "{rejected:?}"
    );
    for (offset, reason) in &rejected {
        assert!(
            reason.contains("invalid byte sequence for encoding \"UTF8\": 0x00"),
            "offset {offset}: {reason}"
        );
    }
    // The batch's failure is logged with PostgreSQL's message and the column it names.
    assert!(
        log.contains("0x00") && log.contains("column"),
        "PostgreSQL's message and column are not in the log:\n{log}"
    );
}

#[test]
fn a_batch_refused_for_an_unforeseen_reason_is_bisected_down_to_the_offenders() {
    let stack = Stack::shared();
    let topic = unique("bisect");
    produce_json(&stack, &topic, &[check_value(0)]);
    sub_once(&stack, &topic, &topic);
    // A rule of the user's own that sub knows nothing about.
    stack
        .pg()
        .batch_execute(&format!(
            "ALTER TABLE {topic} ADD CONSTRAINT {topic}_sane CHECK (latency_ms < 1000)"
        ))
        .unwrap();
    let mut values: Vec<Value> = (1..=200).map(check_value).collect();
    for index in [7, 100, 199] {
        values[index]["latency_ms"] = 5000.0.into();
    }
    produce_json(&stack, &topic, &values);

    sub_once(&stack, &topic, &topic);
    assert_eq!(stack.count(&topic), 1 + 197);
    let rejected = reasons(&stack, &topic);
    assert_eq!(
        rejected
            .iter()
            .map(|(offset, _)| *offset)
            .collect::<Vec<_>>(),
        vec![8, 101, 200],
        "{rejected:?}"
    );
    for (_, reason) in &rejected {
        assert!(reason.contains(&format!("{topic}_sane")), "{reason}");
    }
}

#[test]
fn the_same_id_twice_is_stored_once_and_the_copy_rejected_as_a_duplicate() {
    let stack = Stack::shared();
    let topic = unique("dup");
    let original = check_value(0);
    let other = check_value(1);
    let mut same_id_other_time = check_value(2);
    same_id_other_time["id"] = original["id"].clone();
    same_id_other_time["checked_at"] = "2026-01-01T00:00:00Z".into();
    produce_json(
        &stack,
        &topic,
        &[
            original.clone(),
            original.clone(),
            other.clone(),
            original.clone(),
        ],
    );
    sub_once(&stack, &topic, &topic);
    // A replay of the same message in a later batch.
    produce_json(
        &stack,
        &topic,
        &[original.clone(), same_id_other_time.clone()],
    );
    sub_once(&stack, &topic, &topic);

    let mut expected = ids_of(&[&original, &other, &same_id_other_time]);
    expected.sort();
    assert_eq!(stored_ids(&stack, &topic), expected);
    let rejected = reasons(&stack, &topic);
    assert_eq!(
        rejected
            .iter()
            .map(|(offset, _)| *offset)
            .collect::<Vec<_>>(),
        vec![1, 3, 4],
        "{rejected:?}"
    );
    for (_, reason) in &rejected {
        assert!(reason.contains("duplicate"), "{reason}");
    }
}

#[test]
fn values_no_check_can_have_are_rejected_with_a_reason() {
    let stack = Stack::shared();
    let topic = unique("absurd");
    let cases: Vec<(&str, Value, &str)> = vec![
        ("checked_at", "9999-01-01T00:00:00Z".into(), "checked_at"),
        ("checked_at", "0001-01-01T00:00:00Z".into(), "checked_at"),
        ("latency_ms", (-5.0).into(), "latency_ms"),
        ("http_status", 0.into(), "http_status"),
        ("http_status", 700.into(), "http_status"),
        ("target", "".into(), "target"),
    ];
    let valid = check_value(0);
    let mut values = vec![valid.clone()];
    for (field, bad, _) in &cases {
        let mut value = check_value(1);
        value[*field] = bad.clone();
        values.push(value);
    }
    produce_json(&stack, &topic, &values);

    sub_once(&stack, &topic, &topic);
    assert_eq!(stored_ids(&stack, &topic), ids_of(&[&valid]));
    let rejected = reasons(&stack, &topic);
    assert_eq!(rejected.len(), cases.len(), "{rejected:?}");
    for ((_, reason), (field, bad, named)) in rejected.iter().zip(&cases) {
        assert!(reason.contains(named), "{field} = {bad}: {reason}");
    }
}

#[test]
fn tombstones_and_empty_values_are_rejected_with_their_key() {
    let stack = Stack::shared();
    let topic = unique("tomb");
    let valid = json(&check_value(0));
    produce_raw(
        &stack,
        &topic,
        &[
            (Some(b"http://tombstone.example/"), None),
            (Some(b"http://empty.example/"), Some(b"")),
            (Some(b"http://t0.example.test/health"), Some(&valid)),
        ],
    );
    sub_once(&stack, &topic, &topic);
    assert_eq!(stack.count(&topic), 1);
    let rows = stack
        .pg()
        .query(
            &format!(
                "SELECT kafka_key, payload, reason FROM {topic}_rejected ORDER BY kafka_offset"
            ),
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 2);
    let key: Option<Vec<u8>> = rows[0].get(0);
    let payload: Option<Vec<u8>> = rows[0].get(1);
    let reason: String = rows[0].get(2);
    assert_eq!(key.as_deref(), Some(&b"http://tombstone.example/"[..]));
    assert_eq!(
        payload, None,
        "a tombstone has no payload, not an empty one"
    );
    assert!(reason.contains("tombstone"), "{reason}");
    let key: Option<Vec<u8>> = rows[1].get(0);
    let payload: Option<Vec<u8>> = rows[1].get(1);
    let reason: String = rows[1].get(2);
    assert_eq!(key.as_deref(), Some(&b"http://empty.example/"[..]));
    assert_eq!(payload.as_deref(), Some(&b""[..]));
    assert!(reason.contains("empty"), "{reason}");
}
