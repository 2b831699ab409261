//! Exactly once under failure, on the real stack: `sub` is killed, the broker and the
//! database restart under it, and consumers come and go in one group. Each case writes
//! a known number of valid messages straight into a topic with several partitions and
//! ends with exactly that many rows, each id once.
//!
//! The cases that restart a service of the stack hold it exclusively
//! ([`Stack::exclusive`]); the others share it. The services are restarted with
//! `scripts/stack.sh` and this process's environment, which scripts/test.sh set up:
//! the same MF_STACK_DIR, ports and MF_TLS, hence the same stack.

mod common;

use std::time::Duration;

use common::*;

/// Deadlines for conditions that should hold much sooner; they only stop a broken
/// run from hanging.
const INGEST_LIMIT: Duration = Duration::from_secs(150);
const EXIT_LIMIT: Duration = Duration::from_secs(60);

/// Incidents at every failure and every recovery, so that the messages of a run
/// (every seventh a failure) open and close many.
const THRESHOLDS: [&str; 4] = ["--down-after", "1", "--up-after", "1"];

/// `sub` on the test topic with small batches, so a run spans many transactions.
/// The connect deadline outlasts a service restart on a busy machine.
fn sub(stack: &Stack, topic: &str, table: &str, group: &str) -> std::process::Command {
    let mut command = metrics_flow(stack, topic);
    command
        .args(["sub", "--table", table, "--group", group])
        .args(THRESHOLDS)
        .args(["--batch-size", "500"])
        .env("BATCH_AGE_MS", "50")
        .env("CONNECT_DEADLINE", "120");
    command
}

/// SIGTERM, then a clean exit.
fn stop(subscriber: &mut Logged, name: &str) -> String {
    subscriber.signal("TERM");
    let (status, log) = subscriber.wait_exit(EXIT_LIMIT);
    assert!(status.success(), "{name} exited with {status}; log:\n{log}");
    log
}

/// The end state every case must reach: `n` rows, `n` distinct ids, nothing rejected,
/// and stored offsets that add up to the `n` messages of the topic.
fn assert_exactly(stack: &Stack, table: &str, topic: &str, n: usize) {
    let mut pg = stack.pg();
    let row = pg
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT id), count(DISTINCT kafka_partition) FROM {table}"
            ),
            &[],
        )
        .expect("counting rows");
    let (rows, ids, partitions): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(rows, n as i64, "rows stored for {n} messages");
    assert_eq!(ids, n as i64, "distinct ids stored for {n} messages");
    assert!(
        partitions >= 2,
        "the test topic should spread over several partitions, rows came from {partitions}"
    );
    let rejected: i64 = pg
        .query_one(&format!("SELECT count(*) FROM {table}_rejected"), &[])
        .expect("counting rejected rows")
        .get(0);
    assert_eq!(rejected, 0, "valid messages were rejected");
    let next: i64 = pg
        .query_one(
            &format!(
                "SELECT coalesce(sum(next_offset), 0)::bigint FROM {table}_offsets WHERE topic = $1"
            ),
            &[&topic],
        )
        .expect("reading stored offsets")
        .get(0);
    assert_eq!(
        next, n as i64,
        "stored offsets should cover exactly the {n} messages"
    );
    assert_derived_exactly(stack, table, topic);
}

/// The derived tables are exactly once too: the rollups equal a GROUP BY over the
/// rows, and the statuses and incidents equal those of one clean run over the same
/// messages, into a table of its own.
fn assert_derived_exactly(stack: &Stack, table: &str, topic: &str) {
    assert_hourly_matches_rows(stack, table);
    let clean = format!("{table}_c");
    run_ok(
        metrics_flow(stack, topic)
            .args([
                "sub",
                "--once",
                "--table",
                &clean,
                "--group",
                &unique("clean"),
            ])
            .args(THRESHOLDS),
    );
    let incidents = stack.count(&format!("{clean}_incidents"));
    assert!(incidents > 0, "the run should have had incidents");
    for (suffix, columns) in [
        (
            "_incidents",
            "target, location, started_at, ended_at, error_kind, failed_checks, last_error_text",
        ),
        (
            "_status",
            "target, location, state, since, last_checked_at, consecutive_failures,
             consecutive_successes, last_error_kind, last_error_text",
        ),
    ] {
        let differ: i64 = stack
            .pg()
            .query_one(
                &format!(
                    "SELECT count(*) FROM (
                         (SELECT {columns} FROM {table}{suffix}
                          EXCEPT ALL SELECT {columns} FROM {clean}{suffix})
                         UNION ALL
                         (SELECT {columns} FROM {clean}{suffix}
                          EXCEPT ALL SELECT {columns} FROM {table}{suffix})) d"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(differ, 0, "{table}{suffix} differs from a clean run's");
    }
    eprintln!("{incidents} incident(s), the same as a clean run's");
}

/// The rows a subscriber says it stored, from its last log line.
fn stored_by(log: &str) -> i64 {
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("stored") && line.contains("rejected payload"))
        .unwrap_or_else(|| panic!("no final 'stored ... row(s)' line in:\n{log}"));
    let after = &line[line.find("stored ").expect("'stored' in the line") + "stored ".len()..];
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no row count in {line:?}"))
}

#[test]
fn sigkill_during_ingest_neither_loses_nor_duplicates() {
    let stack = Stack::shared();
    let topic = unique("eo_kill");
    let table = unique("eo_kill");
    const N: usize = 50_000;
    const KILLS: usize = 5;
    produce_checks(&stack, &topic, N);

    let mut counter = RowCounter::new(&stack, &table);
    let mut killed_at = Vec::new();
    for round in 1..=KILLS {
        // A fresh group for every run: the killed process stays a member of its group
        // until its session times out (45 s), and a newcomer to that group would wait
        // for it. Which group it is doesn't matter for what is stored: the offsets
        // come from PostgreSQL.
        let group = format!("{topic}_{round}");
        let mut subscriber = Logged::spawn(&mut sub(&stack, &topic, &table, &group));
        let target = (N * round / (KILLS + 1)) as i64;
        let before = counter.rows();
        let seen = wait_rows(&mut counter, target.max(before + 1), &mut subscriber);
        subscriber.kill();
        killed_at.push(seen);
    }
    eprintln!("rows when sub was killed: {killed_at:?}");

    run_ok(
        metrics_flow(&stack, &topic)
            .args(["sub", "--once", "--table", &table])
            .args(["--group", &format!("{topic}_last")])
            .args(THRESHOLDS),
    );
    assert_exactly(&stack, &table, &topic, N);
}

/// Ingests 20,000 messages with `service` restarted once rows start to arrive, then
/// 10,000 more; returns sub's log after checking the end state.
fn restart_mid_ingest(service: &'static str, name: &str) -> String {
    let stack = Stack::exclusive();
    let topic = unique(name);
    let table = unique(name);
    const BEFORE: usize = 20_000;
    const AFTER: usize = 10_000;
    produce_checks(&stack, &topic, BEFORE);

    let mut counter = RowCounter::new(&stack, &table);
    let mut subscriber = Logged::spawn(&mut sub(&stack, &topic, &table, &topic));
    wait_rows(&mut counter, 1, &mut subscriber);
    let before_restart = counter.rows();
    stop_service(service).start();
    eprintln!(
        "rows when {service} was stopped: {before_restart}; once it was back: {}; of {BEFORE} then",
        counter.rows()
    );
    produce_checks(&stack, &topic, AFTER);

    wait_rows(&mut counter, (BEFORE + AFTER) as i64, &mut subscriber);
    let log = stop(&mut subscriber, "sub");
    assert_exactly(&stack, &table, &topic, BEFORE + AFTER);
    log
}

#[test]
fn a_broker_restart_mid_ingest_loses_and_duplicates_nothing() {
    restart_mid_ingest("kafka", "eo_broker");
}

#[test]
fn a_database_restart_mid_ingest_loses_and_duplicates_nothing() {
    let log = restart_mid_ingest("pg", "eo_pg");
    assert!(
        log.contains("reconnected"),
        "sub should have lost and regained PostgreSQL; log:\n{log}"
    );
}

#[test]
fn consumers_joining_and_leaving_a_group_share_the_work_exactly_once() {
    let stack = Stack::shared();
    let topic = unique("eo_group");
    let table = unique("eo_group");
    const CHUNK: usize = 500;
    const CHUNKS: usize = 60;
    const N: usize = CHUNK * CHUNKS;

    // Messages keep arriving, a chunk at a time, while consumers join and leave.
    produce_checks(&stack, &topic, CHUNK);
    let producing = {
        let stack = stack.clone();
        let topic = topic.clone();
        std::thread::spawn(move || {
            let mut producer = CheckProducer::new(&stack, &topic);
            for _ in 1..CHUNKS {
                producer.send(CHUNK);
                producer.flush();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let mut counter = RowCounter::new(&stack, &table);
    let mut first = Logged::spawn(&mut sub(&stack, &topic, &table, &topic));
    let before_second = wait_rows(&mut counter, 1, &mut first);
    let mut second = Logged::spawn(&mut sub(&stack, &topic, &table, &topic));
    let joined = wait_until(INGEST_LIMIT, || {
        second.log().contains("assigned partitions [") || second.has_exited()
    });
    assert!(
        joined && !second.has_exited(),
        "the second sub never got partitions; its log:\n{}",
        second.log()
    );
    wait_rows(&mut counter, before_second + 1, &mut first);
    let first_log = stop(&mut first, "the first sub");

    producing.join().expect("the producer thread failed");
    wait_rows(&mut counter, N as i64, &mut second);
    let second_log = stop(&mut second, "the second sub");
    assert_exactly(&stack, &table, &topic, N);
    assert_eq!(
        stored_by(&first_log) + stored_by(&second_log),
        N as i64,
        "what the two subs say they stored should add up to the {N} messages"
    );
    assert!(
        second_log.matches("assigned partitions").count() >= 2,
        "the second sub should have been assigned partitions again when the first left; log:\n{second_log}"
    );
}

#[test]
fn a_database_outage_longer_than_the_connect_deadline_is_waited_out() {
    let stack = Stack::exclusive();
    let topic = unique("eo_pgdown");
    let table = unique("eo_pgdown");
    const BEFORE: usize = 20_000;
    const AFTER: usize = 5_000;
    produce_checks(&stack, &topic, BEFORE);

    let mut counter = RowCounter::new(&stack, &table);
    // The deadline is for start-up; a running sub outlasts an outage four times as long.
    let mut subscriber =
        Logged::spawn(sub(&stack, &topic, &table, &topic).env("CONNECT_DEADLINE", "2"));
    wait_rows(&mut counter, 1, &mut subscriber);
    let outage = stop_service("pg");
    let down = std::time::Instant::now();
    let from = subscriber.log().len();
    let outlasted = wait_until(Duration::from_secs(60), || {
        down.elapsed() >= Duration::from_secs(8) || subscriber.has_exited()
    });
    let during = subscriber.log()[from..].to_owned();
    assert!(
        outlasted && !subscriber.has_exited(),
        "sub gave up during the outage:\n{during}"
    );
    outage.start();
    produce_checks(&stack, &topic, AFTER);
    wait_rows(&mut counter, (BEFORE + AFTER) as i64, &mut subscriber);
    let log = stop(&mut subscriber, "sub");
    assert_exactly(&stack, &table, &topic, BEFORE + AFTER);
    assert!(
        during.lines().count() <= 12,
        "an 8 s outage should take a few lines, not {}:\n{during}",
        during.lines().count()
    );
    assert!(log.contains("reconnected"), "{log}");
}

#[test]
fn a_sub_restarted_after_sigkill_says_why_it_waits_and_soon_gets_its_partitions() {
    let stack = Stack::shared();
    let topic = unique("eo_rejoin");
    let table = unique("eo_rejoin");
    const N: usize = 5_000;
    produce_checks(&stack, &topic, N);
    let mut counter = RowCounter::new(&stack, &table);
    let mut killed = Logged::spawn(&mut sub(&stack, &topic, &table, &topic));
    wait_rows(&mut counter, 1, &mut killed);
    killed.kill();

    let restarted = std::time::Instant::now();
    let mut subscriber = Logged::spawn(&mut sub(&stack, &topic, &table, &topic));
    let assigned = wait_until(Duration::from_secs(90), || {
        subscriber.log().contains("assigned partitions [")
    });
    let took = restarted.elapsed();
    let log = subscriber.log();
    assert!(assigned, "no partitions after {took:?}:\n{log}");
    let waiting = log
        .lines()
        .position(|l| l.contains("waiting for partitions"))
        .unwrap_or_else(|| panic!("sub never said why it waits:\n{log}"));
    let got = log
        .lines()
        .position(|l| l.contains("assigned partitions ["))
        .unwrap();
    assert!(waiting < got, "{log}");
    // The dead member holds the partitions until its session times out: 20 s by
    // default, where Kafka's own default is 45 s. The margin covers the rebalance.
    assert!(took < Duration::from_secs(35), "took {took:?}:\n{log}");
    wait_rows(&mut counter, N as i64, &mut subscriber);
    stop(&mut subscriber, "sub");
    assert_exactly(&stack, &table, &topic, N);
}
