//! pub keeps checking while Kafka is down; results wait in the producer's queue and are
//! delivered when the broker is back, none lost. Each test stops the broker, so it
//! holds the stack exclusively.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Stops Kafka until pub has made 10 more checks (or 30 s pass), then starts it again.
/// Returns whether pub kept checking meanwhile.
fn outage_of_ten_checks(server: &TestServer) -> bool {
    let outage = stop_service("kafka");
    let during = server.request_count();
    let kept_checking = wait_until(Duration::from_secs(30), || {
        server.request_count() >= during + 10
    });
    outage.start();
    kept_checking
}

#[test]
fn results_survive_a_broker_outage() {
    let stack = Stack::exclusive();
    let server = TestServer::start();
    let topic = unique("outage");
    let mut publisher = Logged::spawn(metrics_flow(&stack, &topic).args([
        "pub",
        "--delay",
        "0.2",
        "--target",
        &server.url("/ok"),
    ]));
    assert!(wait_until(Duration::from_secs(30), || server
        .request_count()
        >= 5));

    let kept_checking = outage_of_ten_checks(&server);
    assert!(kept_checking, "pub stopped checking while Kafka was down");

    let after = server.request_count();
    assert!(wait_until(Duration::from_secs(60), || server
        .request_count()
        >= after + 5));
    publisher.signal("INT");
    let (status, stderr) = publisher.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "pub exited {status}:\n{stderr}");
    // Each error librdkafka reports to pub once, not twice. (Its own log lines are
    // passed on as they come, and it does write some twice in the same millisecond,
    // e.g. "new leader-1 not found in cache" for two metadata answers.)
    let errors = stderr.lines().filter(|l| l.contains("] Kafka: "));
    let doubled = errors.clone().zip(errors.skip(1)).find(|(a, b)| a == b);
    assert!(doubled.is_none(), "logged twice in a row: {doubled:?}");
    let checks = server.request_count() as i64;

    run_ok(
        metrics_flow(&stack, &topic).args(["sub", "--once", "--table", &topic, "--group", &topic]),
    );
    let (rows, distinct) = stack.rows_and_ids(&topic);
    assert_eq!(
        rows, checks,
        "every check made, before, during and after the outage, is stored"
    );
    assert_eq!(distinct, rows, "no result stored twice");
}

#[test]
fn past_the_queue_bound_results_are_dropped_loudly() {
    let stack = Stack::exclusive();
    let server = TestServer::start();
    let topic = unique("bound");
    let mut publisher = Logged::spawn(metrics_flow(&stack, &topic).args([
        "pub",
        "--delay",
        "0.1",
        "--queue-max",
        "3",
        // Held checks start again after a second, so results are dropped.
        "--stall-limit",
        "1",
        "--target",
        &server.url("/ok"),
    ]));
    assert!(wait_until(Duration::from_secs(30), || server
        .request_count()
        >= 3));
    let kept_checking = outage_of_ten_checks(&server);
    publisher.signal("INT");
    let (status, stderr) = publisher.wait_exit(Duration::from_secs(60));
    assert!(kept_checking, "pub stopped checking while Kafka was down");
    assert_eq!(
        status.code(),
        Some(1),
        "results were lost, so the run failed:\n{stderr}"
    );
    assert!(
        stderr.contains("producer queue full"),
        "no loud drop in:\n{stderr}"
    );
    assert!(
        stderr.contains("no check starts until") && stderr.contains("--stall-limit"),
        "checks were not held first:\n{stderr}"
    );
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(last.contains("dropped on a full queue"), "{last}");
    assert!(
        stderr.matches("producer queue full").count() <= 4,
        "every drop got a line of its own:\n{stderr}"
    );

    run_ok(
        metrics_flow(&stack, &topic).args(["sub", "--once", "--table", &topic, "--group", &topic]),
    );
    let stored = stack.count(&topic);
    let checks = server.request_count() as i64;
    assert!(
        stored >= 3 && stored < checks,
        "{stored} of {checks} checks stored: the overflow was dropped"
    );
}

#[test]
fn a_stop_while_kafka_is_down_exits_1_saying_how_many_results_were_lost() {
    let stack = Stack::exclusive();
    let server = TestServer::start();
    let topic = unique("lost");
    let mut publisher = Logged::spawn(metrics_flow(&stack, &topic).args([
        "pub",
        "--delay",
        "0.2",
        "--flush-timeout",
        "2",
        "--target",
        &server.url("/ok"),
    ]));
    assert!(wait_until(Duration::from_secs(30), || server
        .request_count()
        >= 3));
    let outage = stop_service("kafka");
    let during = server.request_count();
    assert!(wait_until(Duration::from_secs(30), || server
        .request_count()
        >= during + 5));
    publisher.signal("INT");
    let (status, log) = publisher.wait_exit(Duration::from_secs(30));
    outage.start();
    assert_eq!(status.code(), Some(1), "{log}");
    let last = log.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains("not delivered") && last.contains("lost"),
        "the last line should say results were lost: {last}"
    );
}

/// Log lines written between two lengths of a log.
fn lines_between(log: &str, from: usize, to: usize) -> Vec<String> {
    log[from..to.min(log.len())]
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_outage_is_logged_as_it_changes_not_line_by_line() {
    let stack = Stack::exclusive();
    let server = TestServer::start();
    let topic = unique("quiet");
    let publisher = Logged::spawn(metrics_flow(&stack, &topic).args([
        "pub",
        "--delay",
        "0.5",
        "--target",
        &server.url("/ok"),
    ]));
    let subscriber = Logged::spawn(
        metrics_flow(&stack, &topic).args(["sub", "--table", &topic, "--group", &topic]),
    );
    assert!(
        wait_until(Duration::from_secs(60), || stack.count(&topic) >= 2),
        "nothing stored before the outage:\n{}",
        subscriber.log()
    );
    let (pub_from, sub_from) = (publisher.log().len(), subscriber.log().len());
    let outage = stop_service("kafka");
    let down = std::time::Instant::now();
    // Ten seconds of outage, measured by pub's own checks going on meanwhile.
    let during = server.request_count();
    assert!(wait_until(Duration::from_secs(60), || {
        server.request_count() >= during + 20 && down.elapsed() >= Duration::from_secs(10)
    }));
    let (pub_to, sub_to) = (publisher.log().len(), subscriber.log().len());
    outage.start();
    let seconds = down.elapsed().as_secs_f64();
    for (name, log, from, to) in [
        ("pub", publisher.log(), pub_from, pub_to),
        ("sub", subscriber.log(), sub_from, sub_to),
    ] {
        let lines = lines_between(&log, from, to);
        assert!(
            lines.len() <= 10,
            "{name} wrote {} lines in a {seconds:.0} s outage:\n{}",
            lines.len(),
            lines.join("\n")
        );
        let contradiction = lines
            .iter()
            .find(|l| l.contains(" 0/") && l.contains("brokers are down"));
        assert!(contradiction.is_none(), "{name}: {contradiction:?}");
    }
    let stored = stack.count(&topic);
    assert!(
        wait_until(Duration::from_secs(90), || stack.count(&topic) > stored + 2),
        "sub did not resume after the outage:\n{}",
        subscriber.log()
    );
}

/// A broker frozen for a few seconds under load: pub holds new checks back while its
/// queue is full, drops nothing, and has every result it made delivered.
#[test]
fn a_stalled_broker_holds_checks_back_and_drops_nothing() {
    let stack = Stack::exclusive();
    let server = TestServer::start();
    let topic = unique("stall");
    let mut args = vec!["pub", "--delay", "0.1", "--queue-max", "200"];
    let targets: Vec<String> = (0..50).map(|i| server.url(&format!("/ok?{i}"))).collect();
    for target in &targets {
        args.extend(["--target", target.as_str()]);
    }
    let mut publisher = Logged::spawn(metrics_flow(&stack, &topic).args(&args));
    assert!(
        wait_until(Duration::from_secs(30), || {
            publisher.log().contains("publishing to")
        }),
        "{}",
        publisher.log()
    );
    let frozen = freeze_kafka();
    assert!(
        wait_until(Duration::from_secs(30), || publisher
            .log()
            .contains("no check starts until")),
        "checks were not held while Kafka was frozen:\n{}",
        publisher.log()
    );
    // Held: the site gets no more requests than the checks already in flight.
    let held_at = server.request_count();
    let held_for = Instant::now();
    // The stall's length is the experiment: 3 s, well inside the default
    // --stall-limit of 60 s.
    std::thread::sleep(Duration::from_secs(3));
    let made_while_held = server.request_count() - held_at;
    drop(frozen);
    assert!(
        wait_until(Duration::from_secs(60), || publisher
            .log()
            .contains("checking again")),
        "checks did not start again after Kafka thawed:\n{}",
        publisher.log()
    );
    eprintln!(
        "held {:.1} s; {made_while_held} requests while held",
        held_for.elapsed().as_secs_f64()
    );
    assert!(
        made_while_held <= 50,
        "{made_while_held} checks started while held (50 targets, so at most one each in flight)"
    );
    publisher.signal("INT");
    let (status, log) = publisher.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "results were lost:\n{log}");
    assert!(log.contains(" 0 dropped on a full queue"), "{log}");
    let published = pub_summary(&log).delivered as usize;
    // Whether the broker holds every result pub counted as delivered through a
    // stall is issue 15's question (a leader failover): one CI run here found 265 in
    // the topic against 269 counted, which eleven runs by hand did not repeat.
    eprintln!(
        "{} results in the topic, {published} counted as delivered",
        read_topic(&stack, &topic).len()
    );
    // A check can also fail before the site counts its request; it is published too.
    assert!(
        published >= server.request_count(),
        "{published} results delivered for {} requests answered",
        server.request_count()
    );
}
