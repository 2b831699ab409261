//! `--metrics-listen` against the real stack: the scrapes promtool accepts, counters
//! that agree with the topic and the table, `/healthz` through outages of Kafka and
//! PostgreSQL, the lag they cause, and scrapers that misbehave.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::http::TestServer;
use common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// A scrape of `/metrics`, checked by promtool.
fn scrape(addr: &str) -> String {
    let (status, body) = get(addr, "/metrics").expect("the endpoint answers");
    assert_eq!(status, 200, "{body}");
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(body.as_bytes());
    assert!(
        promtool.status.success(),
        "promtool rejects the scrape: {}\n{body}",
        String::from_utf8_lossy(&std::mem::take(&mut promtool.stdout))
            + String::from_utf8_lossy(&promtool.stderr)
    );
    body
}

trait WithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output;
}

impl WithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output {
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool runs (scripts/deps.sh installs Debian's prometheus package)");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

fn metric(addr: &str, name: &str) -> f64 {
    let text = scrape(addr);
    sample_sum(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn healthz(addr: &str) -> (u16, String) {
    get(addr, "/healthz").unwrap_or((0, "nothing answers".to_owned()))
}

fn wait_for_health(addr: &str, status: u16, what: &str) -> String {
    let mut last = (0, String::new());
    let reached = wait_until(LIMIT, || {
        last = healthz(addr);
        last.0 == status
    });
    assert!(reached, "{what}: /healthz stayed {} {}", last.0, last.1);
    last.1
}

fn write_targets(file: &std::path::Path, urls: &[String], interval: f64) {
    let toml: String = urls
        .iter()
        .map(|url| format!("[[target]]\nurl = \"{url}\"\ninterval = {interval}\n"))
        .collect();
    std::fs::write(file, toml).unwrap();
}

fn apply(stack: &Stack, topic: &str, file: &std::path::Path) {
    run_ok(
        metrics_flow(stack, topic)
            .args(["targets", "apply"])
            .arg(file),
    );
}

/// pub's counters against the topic: every check counted is in the topic or was
/// dropped (a producer queue of one result drops some), pub's last line says as many
/// were dropped, `targets` follows what the fleet gives it, and the histograms count
/// every check. Then sub's against the table.
#[test]
fn counters_agree_with_the_topic_and_the_table() {
    let stack = Stack::shared();
    let topic = unique("metrics");
    let site = TestServer::start();
    let dir = temp_dir("metrics");
    let file = dir.path().join("targets.toml");
    let urls: Vec<String> = (0..10).map(|i| site.url(&format!("/ok?n={i}"))).collect();
    write_targets(&file, &urls, 0.1);
    apply(&stack, &topic, &file);
    let pub_addr = free_addr();
    let mut publisher = Logged::spawn(metrics_flow(&stack, &topic).args([
        "pub",
        "--targets-topic",
        &format!("{topic}-targets"),
        "--pub-group",
        &topic,
        "--metrics-listen",
        &pub_addr,
        "--queue-max",
        "1",
    ]));
    assert!(
        wait_until(LIMIT, || get(&pub_addr, "/metrics").is_some_and(
            |(_, text)| {
                sample_sum(&text, "metrics_flow_checks_total").is_some_and(|n| n >= 50.0)
                    && sample_sum(&text, "metrics_flow_results_dropped_total")
                        .is_some_and(|n| n > 0.0)
            }
        )),
        "pub did not count 50 checks and a dropped result:\n{}",
        publisher.log()
    );
    assert_eq!(metric(&pub_addr, "metrics_flow_targets"), 10.0);

    // Every target removed: the fleet gives this pub nothing more to check.
    std::fs::write(&file, "").unwrap();
    apply(&stack, &topic, &file);
    assert!(
        wait_until(LIMIT, || metric(&pub_addr, "metrics_flow_targets") == 0.0
            && metric(&pub_addr, "metrics_flow_publish_queue") == 0.0),
        "targets or publish_queue never reached 0:\n{}",
        publisher.log()
    );
    let text = scrape(&pub_addr);
    let counted = sample_sum(&text, "metrics_flow_checks_total").unwrap();
    let published = read_topic(&stack, &topic).len() as f64;
    let dropped = sample_sum(&text, "metrics_flow_results_dropped_total").unwrap();
    let failed = sample_sum(&text, "metrics_flow_deliveries_failed_total").unwrap();
    assert_eq!(
        counted,
        published + dropped,
        "checks_total against the topic"
    );
    assert_eq!(failed, 0.0);
    assert_eq!(
        sample_sum(&text, "metrics_flow_check_duration_seconds_count"),
        Some(counted)
    );
    assert_eq!(
        sample_sum(&text, "metrics_flow_schedule_lag_seconds_count"),
        Some(counted)
    );
    publisher.signal("INT");
    let (status, log) = publisher.wait_exit(LIMIT);
    assert_eq!(
        status.code(),
        Some(1),
        "dropped results make pub exit 1: {log}"
    );
    assert!(
        log.contains(&format!("{dropped} dropped on a full queue")),
        "pub's last lines against results_dropped_total {dropped}:\n{log}"
    );

    let sub_addr = free_addr();
    let table = topic.clone();
    let mut sub = Logged::spawn(metrics_flow(&stack, &topic).args([
        "sub",
        "--table",
        &table,
        "--metrics-listen",
        &sub_addr,
    ]));
    assert!(
        wait_until(LIMIT, || get(&sub_addr, "/metrics").and_then(
            |(_, text)| sample_sum(&text, "metrics_flow_rows_stored_total")
        ) == Some(published)),
        "sub did not store {published} rows:\n{}",
        sub.log()
    );
    let text = scrape(&sub_addr);
    let rows = stack.count(&table) as f64;
    assert_eq!(
        sample_sum(&text, "metrics_flow_rows_stored_total"),
        Some(rows)
    );
    assert_eq!(sample_sum(&text, "metrics_flow_rejected_total"), Some(0.0));
    assert_eq!(sample_sum(&text, "metrics_flow_partition_lag"), Some(0.0));
    let partitions = text
        .lines()
        .filter(|l| l.starts_with("metrics_flow_partition_lag{"))
        .count();
    assert_eq!(
        sample_sum(&text, "metrics_flow_assigned_partitions"),
        Some(partitions as f64)
    );
    assert!(sample_sum(&text, "metrics_flow_batch_commit_seconds_count").unwrap() >= 1.0);
    // freshness_seconds beside what the table says.
    let table_age: f64 = stack
        .pg()
        .query_one(
            &format!("SELECT extract(epoch FROM now() - max(checked_at))::float8 FROM {table}"),
            &[],
        )
        .unwrap()
        .get(0);
    let freshness = metric(&sub_addr, "metrics_flow_freshness_seconds");
    assert!(
        (freshness - table_age).abs() < 2.0,
        "freshness_seconds {freshness} but the table's newest row is {table_age} s old"
    );
    sub.stop(LIMIT);
}

/// `/healthz` is 503 while Kafka is down, for pub and sub, and 200 again after;
/// while PostgreSQL is down, sub's is 503 and its lag grows, and both recover.
#[test]
fn healthz_and_lag_follow_outages() {
    let stack = Stack::exclusive();
    let topic = unique("healthz");
    let site = TestServer::start();
    let (pub_addr, sub_addr) = (free_addr(), free_addr());
    let publisher = Logged::spawn(metrics_flow(&stack, &topic).args([
        "pub",
        "--target",
        &site.url("/ok"),
        "--delay",
        "0.2",
        "--metrics-listen",
        &pub_addr,
    ]));
    let sub = Logged::spawn(metrics_flow(&stack, &topic).args([
        "sub",
        "--table",
        &topic,
        "--metrics-listen",
        &sub_addr,
    ]));
    wait_for_health(&pub_addr, 200, "pub at start");
    wait_for_health(&sub_addr, 200, "sub at start");
    assert!(
        wait_until(LIMIT, || metric(
            &sub_addr,
            "metrics_flow_rows_stored_total"
        ) >= 5.0),
        "sub stored nothing:\n{}",
        sub.log()
    );

    let sub_from = sub.log().len();
    let kafka = stop_service("kafka");
    let why = wait_for_health(&pub_addr, 503, "pub with Kafka down");
    assert!(why.contains("Kafka"), "{why}");
    let why = wait_for_health(&sub_addr, 503, "sub with Kafka down");
    assert!(why.contains("Kafka"), "{why}");
    // The outage outlasts sub's session, so its partitions are revoked now rather
    // than at some moment after Kafka returns, and the group is settled once they
    // are given back: a revocation while PostgreSQL is down would leave sub with no
    // partitions, and so no lag to show.
    assert!(
        wait_until(LIMIT, || sub.log()[sub_from..].contains("revoked")),
        "sub kept its partitions through the outage:\n{}",
        sub.log()
    );
    kafka.start();
    wait_for_health(&pub_addr, 200, "pub after Kafka returned");
    wait_for_health(&sub_addr, 200, "sub after Kafka returned");
    assert!(
        wait_until(LIMIT, || {
            let log = sub.log();
            let since = &log[sub_from..];
            since.rfind("assigned partitions") > since.rfind("revoked")
        }),
        "sub did not get its partitions back:\n{}",
        sub.log()
    );

    // sub back in its group and caught up before PostgreSQL goes.
    assert!(
        wait_until(LIMIT, || {
            let text = scrape(&sub_addr);
            sample_sum(&text, "metrics_flow_assigned_partitions") > Some(0.0)
                // At most a second of pub's results not yet stored.
                && sample_sum(&text, "metrics_flow_partition_lag").is_some_and(|lag| lag <= 5.0)
        }),
        "sub did not catch up after Kafka returned:\n{}",
        sub.log()
    );
    let stored_before = metric(&sub_addr, "metrics_flow_rows_stored_total");
    let postgres = stop_service("pg");
    let why = wait_for_health(&sub_addr, 503, "sub with PostgreSQL down");
    assert!(why.contains("PostgreSQL"), "{why}");
    assert_eq!(healthz(&pub_addr).0, 200, "pub does not need PostgreSQL");
    let lag = || metric(&sub_addr, "metrics_flow_partition_lag");
    let first = lag();
    assert!(
        wait_until(LIMIT, || lag() >= first + 5.0),
        "partition_lag did not grow from {first} while PostgreSQL was down:\n{}",
        sub.log()
    );
    postgres.start();
    wait_for_health(&sub_addr, 200, "sub after PostgreSQL returned");
    // With nothing more coming, sub catches up to the last result.
    let mut publisher = publisher;
    publisher.stop(LIMIT);
    assert!(
        wait_until(LIMIT, || lag() == 0.0),
        "partition_lag never returned to 0:\n{}",
        sub.log()
    );
    assert!(metric(&sub_addr, "metrics_flow_rows_stored_total") > stored_before);
    let mut sub = sub;
    sub.stop(LIMIT);
    assert_eq!(
        stack.count(&topic) as usize,
        read_topic(&stack, &topic).len(),
        "the table against the topic"
    );
}

#[test]
fn a_bad_address_or_a_port_in_use_exits_2_naming_the_flag() {
    let stack = Stack::shared();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for command in ["pub", "sub"] {
        for addr in ["nonsense", "127.0.0.1:99999", taken.as_str()] {
            let mut run = metrics_flow(&stack, "badlisten");
            run.args([command, "--metrics-listen", addr]);
            if command == "pub" {
                run.args(["--target", "http://127.0.0.1:9/"]);
            }
            let output = run.output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{command} {addr}: {stderr}");
            assert!(stderr.contains("--metrics-listen"), "{stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        }
    }
}

/// A scraper that connects and says nothing, and one that sends garbage, hold up
/// neither a real scrape nor the checks.
#[test]
fn silent_and_garbage_scrapers_stall_nothing() {
    let stack = Stack::shared();
    let topic = unique("scrapers");
    let site = TestServer::start();
    let addr = free_addr();
    let publisher = Logged::spawn(metrics_flow(&stack, &topic).args([
        "pub",
        "--target",
        &site.url("/ok"),
        "--delay",
        "0.1",
        "--metrics-listen",
        &addr,
    ]));
    wait_for_health(&addr, 200, "pub at start");
    let mut silent = TcpStream::connect(&addr).unwrap();
    let mut garbage = TcpStream::connect(&addr).unwrap();
    garbage
        .write_all(b"\x00\x01\x02 not http at all\r\n\r\n")
        .unwrap();
    let checks = metric(&addr, "metrics_flow_checks_total");
    assert!(
        wait_until(LIMIT, || metric(&addr, "metrics_flow_checks_total")
            >= checks + 5.0),
        "the checks stopped:\n{}",
        publisher.log()
    );
    // The scrapes above were answered while the silent scraper was still connected:
    // the endpoint has not closed it yet.
    silent.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let still_open =
        matches!(silent.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    assert!(
        still_open,
        "the silent connection was closed before the scrapes"
    );
    let mut answer = String::new();
    garbage.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

/// The README's alert rules are the file's, and promtool accepts them.
#[test]
fn the_example_alert_rules_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let rules = std::fs::read_to_string(format!("{root}/docs/alerts.yml")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    assert!(
        readme.contains(&rules),
        "the README's rules differ from docs/alerts.yml"
    );
    let output = std::process::Command::new("promtool")
        .args(["check", "rules", &format!("{root}/docs/alerts.yml")])
        .output()
        .expect("promtool runs (scripts/deps.sh installs Debian's prometheus package)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
