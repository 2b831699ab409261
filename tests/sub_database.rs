//! sub and the database it is given: it refuses tables it did not create, runs with
//! no more than row privileges once the schema is current, and tells a wrong password
//! or database apart from an outage.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The stack's DSN with another user and password.
fn dsn_as(stack: &Stack, user: &str, password: &str) -> String {
    stack
        .dsn
        .split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some(("user", _)) => format!("user={user}"),
            Some(("password", _)) => format!("password={password}"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn exists(stack: &Stack, relation: &str) -> bool {
    stack
        .pg()
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&relation])
        .unwrap()
        .get(0)
}

#[test]
fn sub_refuses_a_table_it_did_not_create_and_changes_nothing() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let topic = unique("foreign");
    stack
        .pg()
        .batch_execute(&format!(
            "CREATE TABLE {topic} (id integer, note text); INSERT INTO {topic} VALUES (1, 'mine')"
        ))
        .unwrap();
    run_ok(metrics_flow(&stack, &topic).args(["pub", "--once", "--target", &server.url("/ok")]));

    let output = metrics_flow(&stack, &topic)
        .args(["sub", "--once", "--table", &topic, "--group", &topic])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains(&topic) && last.contains(&format!("{topic}_migrations")),
        "the last line should name the table and the missing ledger: {last}"
    );
    let columns: i64 = stack
        .pg()
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = $1",
            &[&topic],
        )
        .unwrap()
        .get(0);
    assert_eq!(columns, 2, "sub changed the table's columns");
    assert_eq!(stack.count(&topic), 1);
    for suffix in ["_migrations", "_rejected", "_offsets"] {
        let sibling = format!("{topic}{suffix}");
        assert!(!exists(&stack, &sibling), "sub created {sibling}");
    }
}

#[test]
fn a_current_schema_needs_only_row_privileges() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let topic = unique("grants");
    let target = server.url("/ok");
    run_ok(metrics_flow(&stack, &topic).args(["pub", "--once", "--target", &target]));
    let first = run_ok(
        metrics_flow(&stack, &topic).args(["sub", "--once", "--table", &topic, "--group", &topic]),
    );
    let mut grants = String::from(
        "GRANT CONNECT ON DATABASE metrics TO metrics_limited;
         GRANT USAGE ON SCHEMA public TO metrics_limited;",
    );
    for suffix in [
        "",
        "_rejected",
        "_offsets",
        "_migrations",
        "_hourly",
        "_daily",
        "_status",
        "_incidents",
    ] {
        grants.push_str(&format!(
            "GRANT SELECT, INSERT, UPDATE ON {topic}{suffix} TO metrics_limited;"
        ));
    }
    stack.pg().batch_execute(&grants).unwrap();

    run_ok(metrics_flow(&stack, &topic).args(["pub", "--once", "--target", &target]));
    let limited = run_ok(
        metrics_flow(&stack, &topic)
            .env(
                "POSTGRESQL_DSN",
                dsn_as(&stack, "metrics_limited", "limited"),
            )
            .args(["sub", "--once", "--table", &topic, "--group", &topic]),
    );
    assert_eq!(stack.count(&topic), 2);
    // Nothing to migrate is also nothing to say: no "already exists, skipping" notices.
    for output in [&first, &limited] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("already exists"), "{stderr}");
    }
}

#[test]
fn wrong_credentials_and_missing_databases_fail_at_once_with_postgres_reason() {
    let stack = Stack::shared();
    let topic = unique("badauth");
    let no_database = stack
        .dsn
        .replace("dbname=metrics", "dbname=no_such_database");
    for (dsn, reason) in [
        (
            dsn_as(&stack, "metrics", "wrong-password-42"),
            "password authentication failed",
        ),
        (no_database, "does not exist"),
    ] {
        let started = Instant::now();
        let output = metrics_flow(&stack, &topic)
            .env("POSTGRESQL_DSN", &dsn)
            .env("CONNECT_DEADLINE", "60")
            .args(["sub", "--once"])
            .output()
            .unwrap();
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        let last = stderr.trim_end().lines().last().unwrap_or_default();
        assert!(last.contains(reason), "{last}");
        assert!(!stderr.contains("retrying"), "not an outage:\n{stderr}");
        assert!(!stderr.contains("wrong-password-42"), "{stderr}");
        // Bounded, not timed: retrying would last the whole 60 s deadline.
        assert!(took < Duration::from_secs(30), "took {took:?}:\n{stderr}");
    }
}

#[test]
fn an_unknown_dsn_key_is_named() {
    let stack = Stack::shared();
    let topic = unique("dsnkey");
    for (dsn, key) in [
        (format!("{} frobnicate=yes", stack.dsn), "frobnicate"),
        (format!("{} port=notaport", stack.dsn), "port"),
        (
            "postgres://metrics:hunter2@127.0.0.1:1/metrics?frobnicate=yes".to_owned(),
            "frobnicate",
        ),
    ] {
        let output = metrics_flow(&stack, &topic)
            .env("POSTGRESQL_DSN", &dsn)
            .args(["sub", "--once"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&format!("'{key}'")), "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}
