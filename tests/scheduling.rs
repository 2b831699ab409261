//! pub's scheduling: a slow target does not hold the others back while the pool has
//! room, and a pool too small for its targets says so in the log.

mod common;

use std::time::Duration;

use common::*;

fn checks_of(stack: &Stack, table: &str, route: &str) -> i64 {
    stack
        .pg()
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE target LIKE '%' || $1"),
            &[&route],
        )
        .unwrap()
        .get(0)
}

/// Runs pub until the server has answered `requests`, stops it, stores what it published.
fn run_until(
    stack: &Stack,
    server: &TestServer,
    requests: usize,
    args: &[&str],
) -> (String, String) {
    let topic = unique("sched");
    // Logged drains stderr as it comes, so a chatty failure cannot stall pub on a pipe.
    let mut publisher = Logged::spawn(metrics_flow(stack, &topic).arg("pub").args(args));
    let reached = wait_until(Duration::from_secs(60), || {
        server.request_count() >= requests
    });
    publisher.signal("INT");
    let (status, stderr) = publisher.wait_exit(Duration::from_secs(30));
    assert!(
        reached,
        "the server saw only {} requests:\n{stderr}",
        server.request_count()
    );
    assert!(status.success(), "pub exited {status}:\n{stderr}");
    run_ok(
        metrics_flow(stack, &topic).args(["sub", "--once", "--table", &topic, "--group", &topic]),
    );
    (topic, stderr)
}

#[test]
fn a_slow_target_does_not_delay_the_others() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let slow = server.url("/delay/3000");
    let fast = server.url("/ok");
    let (table, _) = run_until(
        &stack,
        &server,
        12,
        &[
            "--delay",
            "0.2",
            "--concurrency",
            "4",
            "--timeout",
            "10",
            "--target",
            &slow,
            "--target",
            &fast,
        ],
    );
    let slow_checks = checks_of(&stack, &table, "/delay/3000");
    let fast_checks = checks_of(&stack, &table, "/ok");
    // While one 3 s check runs, the 0.2 s target keeps its own cadence.
    assert!(slow_checks >= 1, "the slow target was checked");
    assert!(
        fast_checks >= 5 * slow_checks,
        "fast target checked {fast_checks} times against {slow_checks} slow checks"
    );
}

#[test]
fn a_pool_that_cannot_keep_up_warns() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let a = server.url("/delay/1500?a");
    let b = server.url("/delay/1500?b");
    let (table, stderr) = run_until(
        &stack,
        &server,
        4,
        &[
            "--delay",
            "0.5",
            "--concurrency",
            "1",
            "--target",
            &a,
            "--target",
            &b,
        ],
    );
    assert!(
        stderr.contains("cannot keep up"),
        "no lag warning in:\n{stderr}"
    );
    let worst_lag: f64 = stack
        .pg()
        .query_one(&format!("SELECT max(schedule_lag_ms) FROM {table}"), &[])
        .unwrap()
        .get(0);
    assert!(
        worst_lag > 1000.0,
        "one target waited for the other's 1.5 s check, lag {worst_lag} ms"
    );
}

#[test]
fn a_long_run_with_kafka_up_never_fills_the_producer_queue() {
    // A result leaves the producer's queue once Kafka has acknowledged it and pub has
    // taken the delivery report, so with the broker up even a small bound must hold
    // however many checks a run makes.
    let stack = Stack::shared();
    let server = TestServer::start();
    let targets: Vec<String> = (0..40).map(|i| server.url(&format!("/ok?{i}"))).collect();
    let mut args = vec!["--delay", "0.1", "--queue-max", "100"];
    for target in &targets {
        args.extend(["--target", target.as_str()]);
    }
    let (table, stderr) = run_until(&stack, &server, 1000, &args);
    let summary = stderr.lines().filter(|l| l.contains("] published "));
    assert!(
        !stderr.contains("dropped the result"),
        "results dropped with Kafka up: {}",
        summary.collect::<Vec<_>>().join("\n")
    );
    assert_eq!(
        stack.count(&table),
        server.request_count() as i64,
        "every check made is stored"
    );
}

#[test]
fn a_stop_lets_checks_in_flight_finish_and_publishes_them() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let topic = unique("inflight");
    let slow = server.url("/delay/1500");
    let stalled = server.url("/stall-headers");
    let mut publisher = Logged::spawn(metrics_flow(&stack, &topic).args([
        "pub",
        "--delay",
        "30",
        "--timeout",
        "3",
        "--target",
        &slow,
        "--target",
        &stalled,
    ]));
    // Both requests have reached the server: both checks are in flight.
    assert!(wait_until(Duration::from_secs(30), || server
        .request_count()
        >= 2));
    publisher.signal("INT");
    let (status, stderr) = publisher.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "pub exited {status}:\n{stderr}");
    run_ok(
        metrics_flow(&stack, &topic).args(["sub", "--once", "--table", &topic, "--group", &topic]),
    );
    let rows = stack
        .pg()
        .query(
            &format!("SELECT target, ok, error_kind, latency_ms FROM {topic}"),
            &[],
        )
        .unwrap();
    let outcome = |target: &str| {
        let row = rows
            .iter()
            .find(|r| r.get::<_, String>(0) == target)
            .unwrap_or_else(|| panic!("no result for {target}:\n{stderr}"));
        (
            row.get::<_, bool>(1),
            row.get::<_, Option<String>>(2),
            row.get::<_, f64>(3),
        )
    };
    let (slow_ok, _, slow_ms) = outcome(&slow);
    assert!(
        slow_ok && slow_ms >= 1500.0,
        "the slow check ran to its end"
    );
    let (_, stalled_kind, stalled_ms) = outcome(&stalled);
    assert_eq!(stalled_kind.as_deref(), Some("timeout"));
    assert!(
        stalled_ms < 3000.0 + 1500.0,
        "the stalled check ended at its timeout"
    );
    assert_eq!(rows.len(), 2, "one round, nothing else");
}

#[test]
fn a_second_stop_request_exits_at_once_saying_what_was_abandoned() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let topic = unique("force");
    let mut publisher = Logged::spawn(metrics_flow(&stack, &topic).args([
        "pub",
        "--timeout",
        "30",
        "--target",
        &server.url("/stall-headers"),
    ]));
    assert!(wait_until(Duration::from_secs(30), || server
        .request_count()
        >= 1));
    publisher.signal("INT");
    assert!(wait_until(Duration::from_secs(10), || publisher
        .log()
        .contains("stop requested")));
    publisher.signal("INT");
    // Bounded, not timed: without the second request pub waits out the 30 s check.
    let (status, log) = publisher.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{log}");
    let last = log.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains("abandoned") && last.contains("1 check"),
        "the last line should say what was abandoned: {last}"
    );
}

#[test]
fn a_run_starts_no_more_checker_threads_than_it_has_targets() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let topic = unique("threads");
    // A long run keeps its idle checkers, so every thread it started is still there.
    let mut publisher = Logged::spawn(metrics_flow(&stack, &topic).args([
        "pub",
        "--concurrency",
        "65535",
        "--target",
        &server.url("/ok?1"),
        "--target",
        &server.url("/ok?2"),
    ]));
    assert!(
        wait_until(Duration::from_secs(30), || server.request_count() >= 2),
        "{}",
        publisher.log()
    );
    let threads = publisher.threads();
    assert!(threads < 40, "{threads} threads for two targets");
    publisher.stop(Duration::from_secs(30));

    let once = run_ok(metrics_flow(&stack, &topic).args([
        "pub",
        "--once",
        "--target",
        &server.url("/ok"),
    ]));
    let log = String::from_utf8_lossy(&once.stderr);
    assert!(
        !log.contains("every"),
        "a one-shot run has no interval: {log}"
    );
}
