//! Issue 15 on the real three-node KRaft cluster: a partition leader killed, every
//! node restarted in turn, sub's group coordinator killed mid-ingest, pub's schedule
//! through a broker's death, and bootstrapping through a dead address. Results are
//! accounted for by their ids: what pub says it delivered is in the topic and in
//! PostgreSQL once each, nothing else is, and sub's offsets run without a gap.
//!
//! One broker can't lose a leader, so a plain `cargo test` skips these (ignored);
//! scripts/test-cluster.sh starts the cluster and runs them with `--ignored`.
//! MF_CLUSTER_ROUNDS says how many times each test kills and restarts (default 1).
//! Timings are measured and printed (`--nocapture` shows them), never asserted.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use common::*;

/// Deadlines for conditions that should hold much sooner; they only stop a broken
/// run from hanging.
const LIMIT: Duration = Duration::from_secs(120);
/// Targets pub checks, each once a second.
const TARGETS: usize = 30;

/// MF_CLUSTER_ROUNDS, or 1.
fn rounds() -> usize {
    match std::env::var("MF_CLUSTER_ROUNDS") {
        Err(_) => 1,
        Ok(n) => n
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("MF_CLUSTER_ROUNDS={n:?} is not a number of rounds")),
    }
}

fn urls(site: &TestServer) -> Vec<String> {
    (0..TARGETS)
        .map(|i| site.url(&format!("/ok?n={i}")))
        .collect()
}

/// pub checking every URL once a second, its metrics served at `metrics`.
fn publisher(stack: &Stack, topic: &str, urls: &[String], metrics: &str) -> Command {
    let mut command = metrics_flow(stack, topic);
    command.args(["pub", "--delay", "1", "--metrics-listen", metrics]);
    for url in urls {
        command.args(["--target", url]);
    }
    command
}

/// sub with small batches, so an outage falls amid many transactions. Its connect
/// deadline outlasts a node's restart.
fn subscriber(stack: &Stack, topic: &str, table: &str) -> Command {
    let mut command = metrics_flow(stack, topic);
    command
        .args(["sub", "--table", table, "--group", topic])
        .args(["--batch-size", "500"])
        .env("BATCH_AGE_MS", "50")
        .env("CONNECT_DEADLINE", "120");
    command
}

/// pub checking the site's URLs every second into a fresh topic, and sub storing them
/// into a table of the same name: what the failover tests run through an outage.
struct Running {
    site: TestServer,
    topic: String,
    urls: Vec<String>,
    metrics: String,
    publisher: Logged,
    subscriber: Logged,
    counter: RowCounter,
}

impl Running {
    fn start(stack: &Stack, prefix: &str) -> Running {
        let site = TestServer::start();
        let topic = unique(prefix);
        let urls = urls(&site);
        let metrics = free_addr();
        let publisher = Logged::spawn(&mut publisher(stack, &topic, &urls, &metrics));
        let subscriber = Logged::spawn(&mut subscriber(stack, &topic, &topic));
        let counter = RowCounter::new(stack, &topic);
        Running {
            site,
            topic,
            urls,
            metrics,
            publisher,
            subscriber,
            counter,
        }
    }
}

/// Waits until the site has answered `more` requests beyond those it had: pub goes on
/// checking. Fails with pub's log if it does not.
fn checks_go_on(site: &TestServer, more: usize, publisher: &Logged, when: &str) {
    let from = site.request_count();
    assert!(
        wait_until(LIMIT, || site.request_count() >= from + more),
        "pub stopped checking {when}: {} of {more} checks; pub's log:\n{}",
        site.request_count() - from,
        publisher.log()
    );
}

/// A leader killed: which node, the partitions of the results topic it led, and
/// when it died, when the others led instead, and when it was started again.
struct Kill {
    node: i32,
    partitions: Vec<i32>,
    killed_at: DateTime<Utc>,
    elected_at: DateTime<Utc>,
    restarted_at: DateTime<Utc>,
}

/// Kills the node that leads the most partitions of `topic`, waits for new leaders,
/// lets pub make three more rounds of checks with the node dead, then starts it again
/// and waits until every replica is back in sync.
fn kill_the_busiest_leader(
    cluster: &Cluster,
    topic: &str,
    site: &TestServer,
    publisher: &Logged,
) -> Kill {
    let (node, partitions) = cluster.busiest_leader(topic);
    let watch = EndsWatch::start(
        &cluster.stack,
        topic,
        cluster.partitions(topic).len() as i32,
    );
    let killed_at = Utc::now();
    let down = cluster.kill(node);
    let leaders = cluster.wait_for_leaders_other_than(node, topic, &partitions);
    let elected_at = Utc::now();
    checks_go_on(site, 3 * TARGETS, publisher, "with a node dead");
    let restarted_at = Utc::now();
    let restart = down.start();
    let synced = cluster.wait_fully_replicated();
    let moved: Vec<String> = watch
        .finish()
        .iter()
        .map(|(p, at)| match at {
            Some(at) => format!("{p}: {:.1} s", at.as_secs_f64()),
            None => format!("{p}: never"),
        })
        .collect();
    eprintln!(
        "killed node {node}, leader of partitions {partitions:?}; new leaders {leaders:?} {:.1} s later; \
         restarted after {:.1} s down, in {restart:.1?}; all replicas in sync {synced:.1?} after that; \
         each partition's end first moved (s after the kill) {}",
        seconds(elected_at - killed_at),
        seconds(restarted_at - killed_at),
        moved.join(", ")
    );
    Kill {
        node,
        partitions,
        killed_at,
        elected_at,
        restarted_at,
    }
}

fn seconds(span: chrono::TimeDelta) -> f64 {
    span.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// The longest gap between consecutive values of timestamp `column` in `table`, among
/// those in `from..to`, in seconds, and when it ended.
fn longest_gap(
    pg: &mut postgres::Client,
    table: &str,
    column: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (f64, Option<DateTime<Utc>>) {
    let row = pg
        .query_one(
            &format!(
                "SELECT coalesce(extract(epoch FROM gap), 0)::float8, at FROM (
                     SELECT {column} - lag({column}) OVER (ORDER BY {column}) AS gap, {column} AS at
                     FROM {table} WHERE {column} >= $1 AND {column} < $2) g
                 WHERE gap IS NOT NULL ORDER BY gap DESC LIMIT 1"
            ),
            &[&from, &to],
        )
        .ok();
    row.map_or((0.0, None), |row| (row.get(0), Some(row.get(1))))
}

/// What a kill cost, from the stored rows: how soon results made after it reached
/// PostgreSQL from the partitions the dead node had led, the checks stored for each
/// whole second it was down, and how late they started.
struct Outage {
    /// Checks stored per second of the outage, by `checked_at`.
    per_second: Vec<i64>,
    /// Checks made while the node was down that started over 1 s late.
    late: i64,
    worst_lag_ms: f64,
    worst_lag_before_ms: f64,
}

fn measure(stack: &Stack, table: &str, kill: &Kill) -> Outage {
    let mut pg = stack.pg();
    let first: Option<DateTime<Utc>> = pg
        .query_one(
            &format!(
                "SELECT min(received_at) FROM {table}
                 WHERE kafka_partition = ANY($1) AND checked_at > $2"
            ),
            &[&kill.partitions, &kill.killed_at],
        )
        .unwrap()
        .get(0);
    let per_second: Vec<i64> = pg
        .query(
            &format!(
                "SELECT s, count(t.id) FROM generate_series(
                     date_trunc('second', $1::timestamptz) + interval '1 second',
                     date_trunc('second', $2::timestamptz) - interval '1 second',
                     interval '1 second') AS s
                 LEFT JOIN {table} t ON t.checked_at >= s AND t.checked_at < s + interval '1 second'
                 GROUP BY s ORDER BY s"
            ),
            &[&kill.killed_at, &kill.restarted_at],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(1))
        .collect();
    let lag = |pg: &mut postgres::Client, from: DateTime<Utc>, to: DateTime<Utc>| -> (i64, f64) {
        let row = pg
            .query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE schedule_lag_ms > 1000),
                            coalesce(max(schedule_lag_ms), 0)
                     FROM {table} WHERE checked_at >= $1 AND checked_at < $2"
                ),
                &[&from, &to],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let (late, worst_lag_ms) = lag(&mut pg, kill.killed_at, kill.restarted_at);
    let before = kill.killed_at - chrono::TimeDelta::seconds(10);
    let (_, worst_lag_before_ms) = lag(&mut pg, before, kill.killed_at);
    let (gap, gap_end) = longest_gap(
        &mut pg,
        table,
        "checked_at",
        kill.killed_at,
        kill.restarted_at,
    );
    let (stall, stall_end) = longest_gap(
        &mut pg,
        table,
        "received_at",
        before,
        kill.restarted_at + chrono::TimeDelta::seconds(10),
    );
    let after = |at: Option<DateTime<Utc>>, since: DateTime<Utc>| {
        at.map_or("never".to_owned(), |at| {
            format!("{:.1} s", seconds(at - since))
        })
    };
    eprintln!(
        "node {} down: first result made after the kill stored from partitions {:?} {} after the kill, {} after the new leaders were seen",
        kill.node,
        kill.partitions,
        after(first, kill.killed_at),
        after(first, kill.elected_at)
    );
    eprintln!(
        "  checks stored per second down: {per_second:?}; longest gap between checks {gap:.3} s (ending {} after the kill); \
         longest stall in storing (received_at) {stall:.3} s (ending {} after the kill)",
        after(gap_end, kill.killed_at),
        after(stall_end, kill.killed_at)
    );
    eprintln!(
        "  schedule lag: worst {worst_lag_ms:.1} ms while down, {worst_lag_before_ms:.1} ms in the 10 s before; {late} check(s) over 1 s late"
    );
    Outage {
        per_second,
        late,
        worst_lag_ms,
        worst_lag_before_ms,
    }
}

/// The id of a result as published.
fn id_of(payload: &Option<Vec<u8>>) -> Uuid {
    let value: serde_json::Value = serde_json::from_slice(payload.as_deref().unwrap_or_default())
        .unwrap_or_else(|e| panic!("a result in the topic is not JSON: {e}"));
    value["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("a result in the topic has no id: {value}"))
}

/// The probe id pub says its results carry.
fn probe_of(log: &str) -> String {
    log.lines()
        .find_map(|line| line.split("results carry probe ").nth(1))
        .unwrap_or_else(|| panic!("pub never said which probe it is:\n{log}"))
        .trim()
        .to_owned()
}

/// Fails unless sub's offsets agree with its rows and with Kafka: per partition the
/// stored rows and rejected payloads hold every offset from 0 once, without a gap,
/// up to `<table>_offsets`' next offset, which is where the partition ends.
/// Returns the rows accounted for.
fn assert_offsets_agree(cluster: &Cluster, table: &str, topic: &str) -> i64 {
    let rows = cluster
        .stack
        .pg()
        .query(
            &format!(
                "SELECT coalesce(o.kafka_partition, r.kafka_partition), o.next_offset,
                        coalesce(r.n, 0), coalesce(r.offsets, 0), r.lo, r.hi
                 FROM (SELECT * FROM {table}_offsets WHERE topic = $1) o
                 FULL JOIN (
                     SELECT kafka_partition, count(*) AS n,
                            count(DISTINCT kafka_offset) AS offsets,
                            min(kafka_offset) AS lo, max(kafka_offset) AS hi
                     FROM (SELECT kafka_partition, kafka_offset FROM {table}
                           UNION ALL
                           SELECT kafka_partition, kafka_offset FROM {table}_rejected) x
                     GROUP BY kafka_partition) r
                 ON r.kafka_partition = o.kafka_partition
                 ORDER BY 1"
            ),
            &[&topic],
        )
        .expect("reading offsets and rows");
    let mut total = 0;
    let partitions = cluster.partitions(topic).len();
    assert_eq!(
        rows.len(),
        partitions,
        "{table}_offsets and the rows should cover all {partitions} partitions of {topic}"
    );
    for row in rows {
        let partition: i32 = row.get(0);
        let next: Option<i64> = row.get(1);
        let (n, offsets, lo, hi): (i64, i64, Option<i64>, Option<i64>) =
            (row.get(2), row.get(3), row.get(4), row.get(5));
        let (_, end) = cluster.watermarks(topic, partition);
        eprintln!(
            "partition {partition}: {n} row(s), offsets {lo:?}..={hi:?}, next offset stored {next:?}, Kafka's end {end}"
        );
        assert_eq!(n, offsets, "partition {partition}: an offset stored twice");
        assert_eq!(
            lo,
            Some(0),
            "partition {partition}: rows should start at offset 0"
        );
        assert_eq!(
            hi.map(|hi| hi + 1),
            next,
            "partition {partition}: {table}_offsets against the last row stored"
        );
        assert_eq!(
            Some(n),
            next,
            "partition {partition}: a gap in the offsets stored"
        );
        assert_eq!(
            next,
            Some(end),
            "partition {partition}: the stored offset should be where Kafka's partition ends"
        );
        total += n;
    }
    total
}

/// pub's results counted every way: what it made (the site's requests: every target
/// answers, so each check is one request), what it says it delivered, failed or
/// dropped, what the topic holds and what the table holds.
struct Tally {
    produced: u64,
    summary: PubSummary,
    stored: usize,
    duplicated: usize,
}

/// Fails unless every result pub counted as delivered is in the topic and in the
/// table exactly once, nothing else is in either, and what it made is what it
/// delivered plus what it says failed or was dropped.
fn assert_delivered_stored_once(
    cluster: &Cluster,
    topic: &str,
    urls: &[String],
    produced: usize,
    pub_log: &str,
) -> Tally {
    let stack = &cluster.stack;
    let summary = pub_summary(pub_log);
    let published: Vec<Uuid> = read_topic(stack, topic)
        .iter()
        .map(|(_, payload)| id_of(payload))
        .collect();
    let topic_ids: BTreeSet<Uuid> = published.iter().copied().collect();
    let mut pg = stack.pg();
    let rows = pg
        .query(&format!("SELECT id, target, probe, ok FROM {topic}"), &[])
        .expect("reading the rows");
    let table_ids: BTreeSet<Uuid> = rows.iter().map(|row| row.get(0)).collect();
    let rejected: i64 = pg
        .query_one(&format!("SELECT count(*) FROM {topic}_rejected"), &[])
        .unwrap()
        .get(0);
    let tally = Tally {
        produced: produced as u64,
        summary,
        stored: rows.len(),
        duplicated: (rows.len() - table_ids.len())
            + (published.len() - topic_ids.len())
            + rejected as usize,
    };
    eprintln!(
        "produced {}; pub: delivered {}, failed {}, dropped {}; in the topic {} ({} distinct); \
         stored {} ({} distinct), rejected {rejected}; duplicated {}",
        tally.produced,
        summary.delivered,
        summary.failed,
        summary.dropped,
        published.len(),
        topic_ids.len(),
        rows.len(),
        table_ids.len(),
        tally.duplicated
    );
    assert_eq!(
        summary.delivered,
        tally.produced - summary.failed - summary.dropped,
        "every check pub made is delivered, or counted as failed or dropped"
    );
    assert_eq!(
        published.len() as u64,
        summary.delivered,
        "the topic holds what pub counted as delivered"
    );
    assert_eq!(
        topic_ids.len(),
        published.len(),
        "a result twice in the topic"
    );
    assert_eq!(
        rows.len() as u64,
        summary.delivered,
        "stored against delivered"
    );
    assert_eq!(table_ids.len(), rows.len(), "a result stored twice");
    assert_eq!(rejected, 0, "results were rejected");
    let strangers = table_ids.symmetric_difference(&topic_ids).count();
    assert_eq!(
        strangers, 0,
        "ids stored but never published, or published but not stored"
    );
    let probe = probe_of(pub_log);
    for row in &rows {
        let (target, row_probe, ok): (String, Option<String>, bool) =
            (row.get(1), row.get(2), row.get(3));
        assert!(
            urls.contains(&target),
            "a result for {target}, not checked here"
        );
        assert_eq!(
            row_probe.as_deref(),
            Some(probe.as_str()),
            "a result of another probe"
        );
        assert!(
            ok,
            "a failed check of {target}: the site answers every check"
        );
    }
    tally
}

/// Ctrl-C to pub, which flushes; exits 0 exactly when it lost nothing. Returns its log.
fn stop_pub(publisher: &mut Logged) -> String {
    publisher.signal("INT");
    let (status, log) = publisher.wait_exit(LIMIT);
    let summary = pub_summary(&log);
    assert_eq!(
        status.success(),
        summary.failed + summary.dropped == 0,
        "pub exits 0 exactly when every result was delivered ({status}):\n{log}"
    );
    log
}

#[test]
#[ignore = "needs the three-node cluster: scripts/test-cluster.sh"]
fn a_killed_leader_and_a_rolling_restart_lose_and_duplicate_nothing() {
    let cluster = Cluster::exclusive();
    let stack = &cluster.stack;
    let began = Utc::now();
    let Running {
        site,
        topic,
        urls,
        metrics,
        mut publisher,
        mut subscriber,
        mut counter,
    } = Running::start(stack, "cl_roll");
    wait_rows(&mut counter, TARGETS as i64, &mut subscriber);
    let layout = cluster.partitions(&topic);
    eprintln!("{topic}: {layout:?}");
    assert!(
        layout.iter().all(|p| p.replicas.len() == 3),
        "every partition of the results topic should have 3 replicas: {layout:?}"
    );

    let mut kills = Vec::new();
    let started = Instant::now();
    for round in 1..=rounds() {
        kills.push(kill_the_busiest_leader(&cluster, &topic, &site, &publisher));
        for node in 1..=3 {
            let down = cluster.stop(node);
            checks_go_on(&site, TARGETS, &publisher, "with a node stopped");
            let restart = down.start();
            let synced = cluster.wait_fully_replicated();
            eprintln!(
                "round {round}: node {node} stopped, started again in {restart:.1?}, all replicas in sync {synced:.1?} after that"
            );
        }
    }
    let restarted = Utc::now();
    eprintln!("{} round(s) in {:.1?}", rounds(), started.elapsed());
    checks_go_on(&site, TARGETS, &publisher, "after the restarts");
    let failed_so_far = get(&metrics, "/metrics")
        .and_then(|(_, text)| sample_sum(&text, "metrics_flow_deliveries_failed_total"));
    let log = stop_pub(&mut publisher);
    let produced = site.request_count();
    let delivered = pub_summary(&log).delivered;
    wait_rows(&mut counter, delivered as i64, &mut subscriber);
    subscriber.stop(LIMIT);

    let tally = assert_delivered_stored_once(&cluster, &topic, &urls, produced, &log);
    assert_offsets_agree(&cluster, &topic, &topic);
    assert!(
        failed_so_far.is_some_and(|failed| failed <= tally.summary.failed as f64),
        "deliveries_failed_total was {failed_so_far:?} before the stop, {} failed at the end",
        tally.summary.failed
    );
    let mut pg = stack.pg();
    let after: i64 = pg
        .query_one(
            &format!("SELECT count(*) FROM {topic} WHERE checked_at > $1"),
            &[&restarted],
        )
        .unwrap()
        .get(0);
    assert!(after > 0, "nothing checked after the restarts was stored");
    for kill in &kills {
        measure(stack, &topic, kill);
    }
    let now = Utc::now();
    let (gap, at) = longest_gap(&mut pg, &topic, "checked_at", began, now);
    let (stall, stall_at) = longest_gap(&mut pg, &topic, "received_at", began, now);
    let since_kill =
        |at: Option<DateTime<Utc>>| at.map_or(f64::NAN, |at| seconds(at - kills[0].killed_at));
    eprintln!(
        "delivered {}, stored {}, duplicated {}, failed {} (dropped {}); longest gap between checks stored {gap:.3} s \
         (ending {:.1} s after the first kill); longest stall in storing {stall:.3} s (ending {:.1} s after the first kill)",
        tally.summary.delivered,
        tally.stored,
        tally.duplicated,
        tally.summary.failed,
        tally.summary.dropped,
        since_kill(at),
        since_kill(stall_at)
    );
}

#[test]
#[ignore = "needs the three-node cluster: scripts/test-cluster.sh"]
fn sub_loses_its_group_coordinator_mid_ingest_and_stores_everything_once() {
    let cluster = Cluster::exclusive();
    let stack = &cluster.stack;
    let topic = unique("cl_coord");
    create_topic_with(stack, &topic, 3, 3, &[]);
    // Results keep arriving, a chunk at a time, all through the test.
    const CHUNK: usize = 200;
    let stop = Arc::new(AtomicBool::new(false));
    let producing = {
        let (stack, topic, stop) = (stack.clone(), topic.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut producer = CheckProducer::idempotent(&stack, &topic);
            while !stop.load(Ordering::SeqCst) {
                producer.send(CHUNK);
                producer.flush();
                std::thread::sleep(Duration::from_millis(100));
            }
            producer.sent()
        })
    };
    let mut counter = RowCounter::new(stack, &topic);
    let mut subscriber = Logged::spawn(&mut subscriber(stack, &topic, &topic));
    wait_rows(&mut counter, 1, &mut subscriber);

    for round in 1..=rounds() {
        let coordinator = cluster.coordinator(&topic);
        let before = counter.rows();
        let from = subscriber.log().len();
        let killed = Instant::now();
        let down = cluster.kill(coordinator);
        wait_rows(&mut counter, before + 4 * CHUNK as i64, &mut subscriber);
        let storing = killed.elapsed();
        let successor = cluster.coordinator(&topic);
        let found = killed.elapsed();
        let during = subscriber.log()[from..].to_owned();
        let restart = down.start();
        let synced = cluster.wait_fully_replicated();
        eprintln!(
            "round {round}: killed node {coordinator}, sub's group coordinator, at {before} rows; \
             {} more rows stored {storing:.1?} after; the tool named node {successor} coordinator {found:.1?} after; \
             restarted in {restart:.1?}, all replicas in sync {synced:.1?} later",
            4 * CHUNK
        );
        eprintln!("sub's log meanwhile:\n{during}");
        assert_ne!(
            successor, coordinator,
            "the dead node still coordinates the group"
        );
        // A coordinator's failover is no rebalance: a sub whose session ran out
        // first gave its partitions up and waited for its own ghost to time out.
        assert!(
            !during.contains("revoked"),
            "sub lost its partitions while node {coordinator} was down"
        );
    }

    stop.store(true, Ordering::SeqCst);
    let sent = producing.join().expect("the producer thread failed") as i64;
    wait_rows(&mut counter, sent, &mut subscriber);
    let log = subscriber.stop(LIMIT);
    let (rows, ids) = stack.rows_and_ids(&topic);
    let rejected = stack.count(&format!("{topic}_rejected"));
    eprintln!("sent {sent}; stored {rows} ({ids} distinct ids), rejected {rejected}");
    assert_eq!(
        rows, sent,
        "rows stored for the results sent; sub's log:\n{log}"
    );
    assert_eq!(ids, rows, "a result stored twice");
    assert_eq!(rejected, 0, "results rejected; sub's log:\n{log}");
    assert_eq!(assert_offsets_agree(&cluster, &topic, &topic), sent);
    assert_hourly_matches_rows(stack, &topic);
}

/// Checks pub counts as started over a second late: schedule_lag_seconds beyond its
/// 1 s bucket (the lag pub itself warns about).
fn late_checks(metrics: &str) -> f64 {
    let (_, text) = get(metrics, "/metrics").expect("pub's metrics endpoint answers");
    let all = sample(&text, "metrics_flow_schedule_lag_seconds_count");
    let on_time = bucket(&text, "metrics_flow_schedule_lag_seconds", 1.0);
    match (all, on_time) {
        (Some(all), Some(on_time)) => all - on_time,
        _ => panic!("no schedule_lag_seconds histogram with a 1 s bucket in:\n{text}"),
    }
}

#[test]
#[ignore = "needs the three-node cluster: scripts/test-cluster.sh"]
fn pub_keeps_its_schedule_while_a_broker_is_down() {
    let cluster = Cluster::exclusive();
    let stack = &cluster.stack;
    let Running {
        site,
        topic,
        urls,
        metrics,
        mut publisher,
        mut subscriber,
        mut counter,
    } = Running::start(stack, "cl_sched");
    wait_rows(&mut counter, 2 * TARGETS as i64, &mut subscriber);

    let mut outages = Vec::new();
    for _ in 1..=rounds() {
        let late_before = late_checks(&metrics);
        let from = publisher.log().len();
        let kill = kill_the_busiest_leader(&cluster, &topic, &site, &publisher);
        let lines = publisher.log()[from..].to_owned();
        let late_after = late_checks(&metrics);
        outages.push((kill, lines, late_after - late_before));
    }
    let log = stop_pub(&mut publisher);
    let produced = site.request_count();
    wait_rows(
        &mut counter,
        pub_summary(&log).delivered as i64,
        &mut subscriber,
    );
    subscriber.stop(LIMIT);
    assert_delivered_stored_once(&cluster, &topic, &urls, produced, &log);

    for (kill, lines, late) in &outages {
        let outage = measure(stack, &topic, kill);
        eprintln!(
            "node {}: {late} check(s) counted over 1 s late by schedule_lag_seconds; pub's log meanwhile:\n{lines}",
            kill.node
        );
        for sign in ["cannot keep up", "no check starts until"] {
            assert!(
                !lines.contains(sign),
                "pub fell behind its schedule while node {} was down ({sign:?}):\n{lines}",
                kill.node
            );
        }
        assert_eq!(
            *late, 0.0,
            "checks started over 1 s late while node {} was down",
            kill.node
        );
        assert_eq!(
            outage.late, 0,
            "stored checks made while node {} was down say they started over 1 s late (worst {:.0} ms, {:.0} ms before)",
            kill.node, outage.worst_lag_ms, outage.worst_lag_before_ms
        );
        assert!(
            !outage.per_second.is_empty() && outage.per_second.iter().all(|&n| n > 0),
            "a second without a check stored while node {} was down: {:?}",
            kill.node,
            outage.per_second
        );
    }
}

/// pub or sub given one address: the dead node's.
fn with_only(stack: &Stack, topic: &str, dead: &str, args: &[&str]) -> Command {
    let mut command = metrics_flow(stack, topic);
    command
        .env("KAFKA_BROKER", dead)
        .env("CONNECT_DEADLINE", "5")
        .args(args);
    command
}

#[test]
#[ignore = "needs the three-node cluster: scripts/test-cluster.sh"]
fn a_dead_bootstrap_address_fails_alone_and_is_skipped_among_live_ones() {
    let cluster = Cluster::exclusive();
    let stack = &cluster.stack;
    let site = TestServer::start();
    let topic = unique("cl_boot");
    let urls = urls(&site);
    // Made while every node runs: a topic of 3 replicas can't be made with one down.
    create_topic_with(stack, &topic, 3, 3, &[]);
    cluster.wait_fully_replicated();
    let node = 3;
    let dead = cluster.address(node);
    let down = cluster.stop(node);
    assert!(!cluster.runs(node), "node {node} still runs");

    let mut pub_args = vec!["pub", "--once"];
    for url in &urls {
        pub_args.extend(["--target", url.as_str()]);
    }
    let sub_args = ["sub", "--once", "--table", &topic, "--group", &topic];
    for args in [&pub_args[..], &sub_args[..]] {
        let started = Instant::now();
        let output = with_only(stack, &topic, &dead, args)
            .output()
            .expect("running metrics-flow");
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.trim_end().lines().last().unwrap_or_default();
        eprintln!(
            "{} with only the dead {dead}: {} after {took:.1?} (--connect-deadline 5): {last}",
            args[0], output.status
        );
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            last.contains(&dead) && last.contains("still unreachable after"),
            "the last line should say the broker stayed unreachable: {last}"
        );
    }

    let brokers = format!("{dead},{},{}", cluster.address(1), cluster.address(2));
    let started = Instant::now();
    run_ok(
        metrics_flow(stack, &topic)
            .env("KAFKA_BROKER", &brokers)
            .args(&pub_args),
    );
    let published = started.elapsed();
    let started = Instant::now();
    run_ok(
        metrics_flow(stack, &topic)
            .env("KAFKA_BROKER", &brokers)
            .args(sub_args),
    );
    let stored = started.elapsed();
    let (rows, ids) = stack.rows_and_ids(&topic);
    eprintln!(
        "with {brokers}: pub --once took {published:.1?}, sub --once {stored:.1?}; {rows} row(s), {ids} distinct"
    );
    assert_eq!((rows, ids), (TARGETS as i64, TARGETS as i64));
    let restart = down.start();
    let synced = cluster.wait_fully_replicated();
    eprintln!("node {node} started again in {restart:.1?}, in sync {synced:.1?} later");
}
