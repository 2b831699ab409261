//! End to end on the real stack: pub checks a loopback server, publishes to Kafka 4.x,
//! and sub stores every result in PostgreSQL.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

struct Row {
    ok: bool,
    http_status: Option<i32>,
    latency_ms: Option<f64>,
    error_kind: Option<String>,
    pattern_found: Option<bool>,
}

fn row_for(stack: &Stack, table: &str, target: &str) -> Row {
    let row = stack
        .pg()
        .query_one(
            &format!(
                "SELECT ok, http_status, latency_ms, error_kind, pattern_found FROM {table} WHERE target = $1"
            ),
            &[&target],
        )
        .unwrap_or_else(|e| panic!("one row for {target}: {e}"));
    Row {
        ok: row.get(0),
        http_status: row.get(1),
        latency_ms: row.get(2),
        error_kind: row.get(3),
        pattern_found: row.get(4),
    }
}

#[test]
fn checks_flow_from_pub_through_kafka_into_postgres() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let topic = unique("e2e");
    let table = unique("e2e");
    let ok = server.url("/ok");
    let slow = server.url("/delay/300");
    let broken = server.url("/status/500");
    let refused = format!("http://127.0.0.1:{}/", closed_port());
    let unresolvable = "http://does-not-exist.invalid/".to_owned();

    run_ok(metrics_flow(&stack, &topic).args([
        "pub",
        "--once",
        "--pattern",
        "well",
        "--timeout",
        "5",
        "--target",
        &ok,
        "--target",
        &slow,
        "--target",
        &broken,
        "--target",
        &refused,
        "--target",
        &unresolvable,
    ]));
    let sub = run_ok(
        metrics_flow(&stack, &topic).args(["sub", "--once", "--table", &table, "--group", &topic]),
    );
    // A run that went well logs no error, from librdkafka or rdkafka's drop either.
    let sub_log = String::from_utf8_lossy(&sub.stderr);
    assert!(!sub_log.contains(" ERROR "), "{sub_log}");

    assert_eq!(stack.count(&table), 5);
    let row = row_for(&stack, &table, &ok);
    assert!(row.ok);
    assert_eq!(row.http_status, Some(200));
    assert_eq!(row.pattern_found, Some(true));
    assert_eq!(row.error_kind, None);

    let row = row_for(&stack, &table, &slow);
    assert!(row.ok);
    let latency = row.latency_ms.unwrap();
    assert!(
        (300.0..1300.0).contains(&latency),
        "the server waited 300 ms, latency_ms = {latency}"
    );

    let row = row_for(&stack, &table, &broken);
    assert!(!row.ok);
    assert_eq!(row.http_status, Some(500));
    assert_eq!(row.error_kind.as_deref(), Some("status"));
    assert_eq!(row.pattern_found, Some(false));

    let row = row_for(&stack, &table, &refused);
    assert!(!row.ok);
    assert_eq!(row.http_status, None);
    assert_eq!(row.error_kind.as_deref(), Some("refused"));
    assert_eq!(row.pattern_found, None);

    let row = row_for(&stack, &table, &unresolvable);
    assert_eq!(row.error_kind.as_deref(), Some("dns"));
}

#[test]
fn poison_messages_are_rejected_and_consumption_goes_on() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let topic = unique("poison");
    let table = unique("poison");
    let target = server.url("/ok");
    run_ok(metrics_flow(&stack, &topic).args(["pub", "--once", "--target", &target]));

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.broker)
        .create()
        .unwrap();
    let poison: [&[u8]; 4] = [
        b"not json at all",
        br#"{"v":2,"id":"x"}"#,
        br#"{"v":1,"id":"6c1f0d8e-2f55-4c4e-9a57-0f8f6d1f7a11"}"#,
        b"\xff\xfe",
    ];
    for payload in poison {
        producer
            .send(BaseRecord::<(), _>::to(&topic).payload(payload))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    run_ok(metrics_flow(&stack, &topic).args(["pub", "--once", "--target", &target]));

    run_ok(
        metrics_flow(&stack, &topic).args(["sub", "--once", "--table", &table, "--group", &topic]),
    );
    assert_eq!(stack.count(&table), 2);
    let rejected = format!("{table}_rejected");
    assert_eq!(stack.count(&rejected), 4);
    let reasons: Vec<String> = stack
        .pg()
        .query(
            &format!("SELECT reason FROM {rejected} ORDER BY reason"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unsupported schema version 2")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("missing required field")),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.iter().filter(|r| r.starts_with("not JSON")).count(),
        2,
        "{reasons:?}"
    );

    // Running again stores nothing twice.
    run_ok(
        metrics_flow(&stack, &topic).args(["sub", "--once", "--table", &table, "--group", &topic]),
    );
    assert_eq!(stack.count(&table), 2);
    assert_eq!(stack.count(&rejected), 4);
}

#[test]
fn ctrl_c_stops_both_subcommands_cleanly() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let topic = unique("stop");
    let table = unique("stop");
    let target = server.url("/ok");

    let mut publisher = Logged::spawn(
        metrics_flow(&stack, &topic).args(["pub", "--delay", "0.2", "--target", &target]),
    );
    assert!(
        wait_until(Duration::from_secs(30), || server.request_count() >= 3),
        "pub never checked"
    );
    publisher.signal("INT");
    let (status, stderr) = publisher.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "pub exited {status}: {stderr}");
    let checks = server.request_count();

    let mut subscriber = Logged::spawn(
        metrics_flow(&stack, &topic).args(["sub", "--table", &table, "--group", &topic]),
    );
    assert!(
        wait_until(Duration::from_secs(60), || stack.count(&table) as usize
            >= checks),
        "sub stored {} of {checks} rows",
        stack.count(&table)
    );
    subscriber.signal("TERM");
    let (status, stderr) = subscriber.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "sub exited {status}: {stderr}");
    assert_eq!(
        stack.count(&table) as usize,
        checks,
        "every check published exactly once"
    );
}

#[test]
fn results_kafka_refuses_are_logged_counted_and_fail_a_one_shot_run() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let topic = unique("refused");
    // Each result is larger than this topic takes, so the broker rejects every batch.
    create_topic(&stack, &topic, &[("max.message.bytes", "200")]);
    let output = metrics_flow(&stack, &topic)
        .args(["pub", "--once", "--target", &server.url("/ok?a")])
        .args(["--target", &server.url("/ok?b")])
        .output()
        .expect("running pub");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr
            .matches("a result was not delivered to Kafka")
            .count(),
        2,
        "each failed delivery is logged:\n{stderr}"
    );
    assert!(stderr.contains(", 2 failed delivery"), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "metrics-flow: 2 result(s) were not delivered to Kafka and are lost: 2 refused or failed"
        ),
        "{stderr}"
    );
}

#[test]
fn a_target_flag_takes_one_url_commas_and_all() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let topic = unique("commas");
    let with_commas = server.url("/ok?fields=id,name");
    let looks_like_two = format!("{},{}", server.url("/ok?a"), server.url("/status/500"));
    run_ok(metrics_flow(&stack, &topic).args([
        "pub",
        "--once",
        "--target",
        &with_commas,
        "--target",
        &looks_like_two,
    ]));
    run_ok(
        metrics_flow(&stack, &topic).args(["sub", "--once", "--table", &topic, "--group", &topic]),
    );
    let mut stored: Vec<String> = stack
        .pg()
        .query(&format!("SELECT target FROM {topic}"), &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    stored.sort();
    let mut expected = vec![with_commas, looks_like_two];
    expected.sort();
    assert_eq!(stored, expected);
}
