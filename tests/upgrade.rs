//! Upgrading a database that an earlier release wrote: sub migrates it on its first
//! start and keeps every row.

mod common;

use common::*;

/// Creates the tables an earlier release made, from tests/fixtures, under `table`.
fn create_from_fixture(stack: &Stack, fixture: &str, table: &str) {
    let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
    let sql = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    stack
        .pg()
        .batch_execute(&sql.replace("{table}", table))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
}

#[test]
fn results_stored_twice_by_schema_version_2_move_aside_and_no_row_is_lost() {
    let stack = Stack::shared();
    let topic = unique("upgrade2");
    let table = topic.clone();
    create_from_fixture(&stack, "schema_v2.sql", &table);
    // 50 results, and one of them stored three times, as version 2 allowed.
    stack
        .pg()
        .batch_execute(&format!(
            "INSERT INTO {table} (id, checked_at, target, ok, http_status, latency_ms,
                                  kafka_partition, kafka_offset)
             SELECT gen_random_uuid(), now() - n * interval '1 minute',
                    'http://t' || n % 5 || '.example/', true, 200, n, 0, n
             FROM generate_series(0, 49) n;
             INSERT INTO {table} (id, checked_at, target, ok, kafka_partition, kafka_offset)
             SELECT id, checked_at, target, ok, 0, 50 + copy
             FROM {table}, generate_series(0, 1) copy WHERE kafka_offset = 7;"
        ))
        .unwrap();
    assert_eq!(stack.count(&table), 52);
    produce_checks(&stack, &topic, 2);

    run_ok(
        metrics_flow(&stack, &topic).args(["sub", "--once", "--table", &table, "--group", &topic]),
    );
    assert_eq!(
        stack.count(&table),
        50 + 2,
        "one copy of the repeated result stays"
    );
    let reasons: Vec<String> = stack
        .pg()
        .query(&format!("SELECT reason FROM {table}_rejected"), &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        reasons.len(),
        2,
        "the two extra copies are kept aside: {reasons:?}"
    );
    for reason in &reasons {
        assert!(
            reason.contains("duplicate") && reason.contains("upgrade"),
            "{reason}"
        );
    }
    let versions: Vec<i32> = stack
        .pg()
        .query(
            &format!("SELECT version FROM {table}_migrations ORDER BY 1"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    // The old rows are one partition now, and what sub derives was derived from them.
    let partitions: Vec<String> = stack
        .pg()
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = to_regclass($1)",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        partitions
            .iter()
            .any(|p| p.starts_with(&format!("{table}_before"))),
        "{partitions:?}"
    );
    assert_hourly_matches_rows(&stack, &table);
    let statuses = stack.count(&format!("{table}_status"));
    let targets: i64 = stack
        .pg()
        .query_one(&format!("SELECT count(DISTINCT target) FROM {table}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(statuses, targets, "a status for each target, old or new");
    // The same result again is now refused by the unique (id, checked_at).
    let copy = stack.pg().execute(
        &format!(
            "INSERT INTO {table} (id, checked_at, target, ok, kafka_partition, kafka_offset)
             SELECT id, checked_at, target, ok, 0, 99 FROM {table} WHERE kafka_offset = 7"
        ),
        &[],
    );
    assert!(copy.is_err(), "a second copy was accepted");
}
