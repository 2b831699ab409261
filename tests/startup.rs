//! Starting up against the real stack: waiting for a topic, creating one, giving up on
//! unreachable services with a clear reason, and concurrent schema migrations.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

#[test]
fn sub_waits_for_a_topic_that_does_not_exist_yet() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let topic = unique("later");
    let mut subscriber = Logged::spawn(
        metrics_flow(&stack, &topic).args(["sub", "--table", &topic, "--group", &topic]),
    );
    // The table exists once sub has migrated, which happens before it subscribes.
    assert!(wait_until(Duration::from_secs(30), || stack
        .pg()
        .query(&format!("SELECT 1 FROM {topic}"), &[])
        .is_ok()));
    assert!(!subscriber.has_exited(), "sub exited instead of waiting");

    run_ok(metrics_flow(&stack, &topic).args(["pub", "--once", "--target", &server.url("/ok")]));
    let stored = wait_until(Duration::from_secs(60), || stack.count(&topic) == 1);
    subscriber.signal("TERM");
    let (status, stderr) = subscriber.wait_exit(Duration::from_secs(20));
    assert!(stored, "the result never arrived:\n{stderr}");
    assert!(status.success(), "{status}: {stderr}");
}

#[test]
fn pub_creates_a_missing_topic_with_the_requested_partitions() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let topic = unique("created");
    run_ok(metrics_flow(&stack, &topic).args([
        "pub",
        "--once",
        "--partitions",
        "7",
        "--target",
        &server.url("/ok"),
    ]));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.broker)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), 7);
}

#[test]
fn unreachable_services_exit_1_naming_them() {
    let stack = Stack::shared();
    let topic = unique("unreachable");
    let closed = closed_port();
    let cases = [
        (
            metrics_flow(&stack, &topic)
                .env("KAFKA_BROKER", format!("127.0.0.1:{closed}"))
                .args(["pub", "--once", "--target", "http://127.0.0.1:1/"])
                .env("CONNECT_DEADLINE", "2")
                .output(),
            "Kafka at 127.0.0.1",
        ),
        (
            metrics_flow(&stack, &topic)
                .env(
                    "POSTGRESQL_DSN",
                    format!("host=127.0.0.1 port={closed} user=u password=hunter2 dbname=d"),
                )
                .env("CONNECT_DEADLINE", "2")
                .args(["sub", "--once"])
                .output(),
            "PostgreSQL at 127.0.0.1",
        ),
    ];
    for (output, what) in cases {
        let output = output.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        let last = stderr.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.contains(what) && last.contains("still unreachable"),
            "{last}"
        );
        assert!(
            stderr.contains("retrying"),
            "each attempt is logged:\n{stderr}"
        );
        assert!(!stderr.contains("hunter2"), "password printed:\n{stderr}");
    }
}

#[test]
fn concurrent_starts_migrate_the_schema_once() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let topic = unique("migrate");
    run_ok(metrics_flow(&stack, &topic).args(["pub", "--once", "--target", &server.url("/ok")]));
    let table = format!("race.{topic}");
    let mut starts: Vec<_> = (0..4)
        .map(|_| {
            Logged::spawn(
                metrics_flow(&stack, &topic)
                    .args(["sub", "--once", "--table", &table, "--group", &topic]),
            )
        })
        .collect();
    for child in &mut starts {
        let (status, stderr) = child.wait_exit(Duration::from_secs(60));
        assert!(status.success(), "{status}: {stderr}");
    }
    let versions: Vec<i32> = stack
        .pg()
        .query(
            &format!("SELECT version FROM race.{topic}_migrations ORDER BY version"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    assert_eq!(stack.count(&table), 1, "one group, one row");
}
