//! Fleet mode against the real broker: `targets apply` and `list` on the targets
//! topic, and pubs sharing its targets through their consumer group.

mod common;

use std::time::{Duration, Instant};

use common::http::TestServer;

use common::*;

fn apply(stack: &Stack, topic: &str, file: &std::path::Path, extra: &[&str]) -> String {
    let output = run_ok(
        metrics_flow(stack, topic)
            .args(["targets", "apply"])
            .arg(file)
            .args(extra),
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn apply_writes_only_what_changed_and_a_dry_run_writes_nothing() {
    let stack = Stack::shared();
    let topic = unique("apply");
    let targets = format!("{topic}-targets");
    let dir = temp_dir("apply");
    let file = dir.path().join("targets.toml");
    let write_file = |body: &str| std::fs::write(&file, body).unwrap();
    write_file(
        "[[target]]\nurl = \"http://127.0.0.1:9/a\"\npattern = \"ok\"\n\
         [[target]]\nurl = \"http://user:s3cret@127.0.0.1:9/b\"\n\
         [[target]]\nurl = \"http://127.0.0.1:9/c\"\n",
    );

    let dry = apply(&stack, &topic, &file, &["--dry-run"]);
    assert!(
        dry.contains("3 added, 0 changed, 0 removed, 0 unchanged"),
        "{dry}"
    );
    let listed = run_ok(metrics_flow(&stack, &topic).args(["targets", "list", "--format", "json"]));
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).trim(),
        "[]",
        "a dry run wrote"
    );

    let first = apply(&stack, &topic, &file, &[]);
    assert!(
        first.contains("3 added, 0 changed, 0 removed, 0 unchanged"),
        "{first}"
    );
    let records = read_topic(&stack, &targets);
    assert_eq!(records.len(), 3);
    for (key, _) in &records {
        let key = String::from_utf8_lossy(key.as_deref().unwrap());
        assert!(!key.contains("s3cret"), "a password in a key: {key}");
    }

    let again = apply(&stack, &topic, &file, &[]);
    assert!(
        again.contains("0 added, 0 changed, 0 removed, 3 unchanged"),
        "{again}"
    );
    assert_eq!(
        read_topic(&stack, &targets).len(),
        3,
        "the second apply wrote"
    );

    // One pattern changed, one target removed, one added.
    write_file(
        "[[target]]\nurl = \"http://127.0.0.1:9/a\"\npattern = \"fine\"\n\
         [[target]]\nurl = \"http://user:s3cret@127.0.0.1:9/b\"\n\
         [[target]]\nurl = \"http://127.0.0.1:9/d\"\n",
    );
    let changed = apply(&stack, &topic, &file, &[]);
    assert!(
        changed.contains("1 added, 1 changed, 1 removed, 1 unchanged"),
        "{changed}"
    );
    let records = read_topic(&stack, &targets);
    assert_eq!(
        records.len(),
        6,
        "3 more records: an upsert each and a tombstone"
    );
    let tombstone = records
        .iter()
        .find(|(_, value)| value.is_none())
        .expect("a tombstone");
    assert_eq!(tombstone.0.as_deref(), Some(&b"http://127.0.0.1:9/c"[..]));

    let listed = run_ok(metrics_flow(&stack, &topic).args(["targets", "list", "--format", "json"]));
    // Reading to the end of each partition is how list knows it is done: no error.
    let log = String::from_utf8_lossy(&listed.stderr);
    assert!(!log.contains(" ERROR "), "{log}");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let urls: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            "http://127.0.0.1:9/a",
            "http://127.0.0.1:9/d",
            "http://user:***@127.0.0.1:9/b"
        ]
    );
    assert_eq!(listed[0]["pattern"], "fine");
}

#[test]
fn a_bad_file_exits_2_with_its_line() {
    let stack = Stack::shared();
    let topic = unique("applybad");
    let dir = temp_dir("applybad");
    let file = dir.path().join("targets.toml");
    std::fs::write(
        &file,
        "[[target]]\nurl = \"http://127.0.0.1:9/a\"\ntimeout = -1\n",
    )
    .unwrap();
    let output = metrics_flow(&stack, &topic)
        .args(["targets", "apply"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:3:", file.display())),
        "{stderr}"
    );
}

#[test]
fn fleet_mode_excludes_the_other_ways_of_naming_targets() {
    let stack = Stack::shared();
    let dir = temp_dir("mixing");
    let file = dir.path().join("targets.txt");
    std::fs::write(&file, "http://127.0.0.1:9/\n").unwrap();
    let file = file.to_str().unwrap().to_owned();
    for (flags, env) in [
        (vec!["--target", "http://127.0.0.1:9/"], None),
        (vec!["--targets-file", file.as_str()], None),
        (vec!["--shard", "1/2"], None),
        (vec![], Some(("TARGET", "http://127.0.0.1:9/"))),
    ] {
        let mut command = metrics_flow(&stack, "mixing");
        command
            .args(["pub", "--targets-topic", "mixing-targets"])
            .args(&flags);
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?} {env:?}: {stderr}");
        assert!(stderr.contains("--targets-topic"), "{stderr}");
    }
}

/// Two pubs share two targets; when the first stops with Ctrl-C, the second checks
/// both, and every result names its probe and location.
#[test]
fn a_stopped_pub_hands_its_targets_to_the_other() {
    let stack = Stack::shared();
    let topic = unique("fleet");
    let site = TestServer::start();
    let dir = temp_dir("fleet");
    let file = dir.path().join("targets.toml");
    std::fs::write(
        &file,
        format!(
            "[[target]]\nurl = \"{}\"\ninterval = 0.5\n[[target]]\nurl = \"{}\"\ninterval = 0.5\n",
            site.url("/a"),
            site.url("/b")
        ),
    )
    .unwrap();
    apply(&stack, &topic, &file, &[]);
    let targets_topic = format!("{topic}-targets");
    let fleet_pub = |location: &str| {
        Logged::spawn(metrics_flow(&stack, &topic).args([
            "pub",
            "--targets-topic",
            &targets_topic,
            "--pub-group",
            &topic,
            "--location",
            location,
        ]))
    };
    let limit = Duration::from_secs(60);
    let mut first = fleet_pub("one");
    assert!(
        wait_until(limit, || first.log().contains("checking 2 in all")),
        "{}",
        first.log()
    );
    let mut second = fleet_pub("two");
    assert!(
        wait_until(limit, || second.log().contains("assigned partitions")),
        "{}",
        second.log()
    );
    let log = first.stop(limit);
    assert!(log.contains("leaving the fleet"), "{log}");
    assert!(
        wait_until(limit, || second.log().contains("checking 2 in all")),
        "{}",
        second.log()
    );
    // A result of each target from the second pub, after the first left.
    let started = Instant::now();
    let checked_by_second = || {
        let results = read_topic(&stack, &topic);
        ["/a", "/b"].iter().all(|path| {
            results.iter().any(|(_, value)| {
                let value: serde_json::Value =
                    serde_json::from_slice(value.as_deref().unwrap()).unwrap();
                value["location"] == "two" && value["target"] == site.url(path).as_str()
            })
        })
    };
    assert!(
        wait_until(limit, checked_by_second),
        "after {:?}",
        started.elapsed()
    );
    second.stop(limit);

    for (_, value) in read_topic(&stack, &topic) {
        let value: serde_json::Value = serde_json::from_slice(value.as_deref().unwrap()).unwrap();
        assert!(
            value["probe"].as_str().is_some_and(|p| !p.is_empty()),
            "{value}"
        );
        assert!(
            matches!(value["location"].as_str(), Some("one" | "two")),
            "{value}"
        );
    }
}

/// Writes `count` targets of `site`'s `/ok` route, each checked every `interval`
/// seconds, as the TOML file `targets apply` reads; `pattern_of` may give each one.
fn write_targets(
    file: &std::path::Path,
    site: &TestServer,
    indices: impl IntoIterator<Item = usize>,
    interval: f64,
    pattern_of: impl Fn(usize) -> Option<&'static str>,
) {
    let mut toml = String::new();
    for index in indices {
        toml.push_str(&format!(
            "[[target]]\nurl = \"{}\"\ninterval = {interval}\n",
            target_url(site, index)
        ));
        if let Some(pattern) = pattern_of(index) {
            toml.push_str(&format!("pattern = \"{pattern}\"\n"));
        }
    }
    std::fs::write(file, toml).unwrap();
}

fn target_url(site: &TestServer, index: usize) -> String {
    site.url(&format!("/ok?target={index}"))
}

/// A pub of the fleet whose group is the test's topic.
fn fleet_pub(stack: &Stack, topic: &str, location: &str) -> Logged {
    Logged::spawn(metrics_flow(stack, topic).args([
        "pub",
        "--targets-topic",
        &format!("{topic}-targets"),
        "--pub-group",
        topic,
        "--location",
        location,
    ]))
}

/// How many targets a fleet pub checks now, from its last "checking N in all";
/// None before its first assignment.
fn holding(pub_: &Logged) -> Option<usize> {
    pub_.log()
        .lines()
        .filter_map(|line| line.split("checking ").nth(1)?.strip_suffix(" in all"))
        .filter_map(|n| n.parse().ok())
        .next_back()
}

/// Waits until every pub has been assigned its share and between them they check
/// `total` targets. (A share can hold no target: few targets hash to few partitions.)
fn wait_for_fleet(pubs: &[&Logged], total: usize) {
    let settled = wait_until(Duration::from_secs(90), || {
        let held: Option<Vec<usize>> = pubs.iter().map(|p| holding(p)).collect();
        held.is_some_and(|held| held.iter().sum::<usize>() == total)
    });
    let logs: Vec<String> = pubs.iter().map(|p| p.log()).collect();
    assert!(
        settled,
        "the fleet never settled on {total}:\n{}",
        logs.join("\n---\n")
    );
}

/// Waits until the site has answered `more` requests beyond those it had answered.
fn wait_for_checks(site: &TestServer, more: usize) {
    let target = site.request_count() + more;
    assert!(
        wait_until(Duration::from_secs(60), || site.request_count() >= target),
        "the site answered {} of {target} requests",
        site.request_count()
    );
}

/// The results in `topic`, decoded.
fn results(stack: &Stack, topic: &str) -> Vec<metrics_flow::pubsub::message::CheckResult> {
    read_topic(stack, topic)
        .into_iter()
        .map(|(_, value)| {
            metrics_flow::pubsub::message::CheckResult::decode(value.as_deref())
                .expect("pub publishes valid results")
        })
        .collect()
}

/// The fleet scenario: three pubs share 300 targets checked every second;
/// one is killed, a fourth joins, another stops with Ctrl-C. Every target is checked
/// by exactly one pub in steady state, no target goes unchecked for longer than the
/// interval, the session timeout and a margin, and two pubs check the same target in
/// the same second only while it moves.
#[test]
fn a_fleet_keeps_every_target_checked_through_a_kill_a_join_and_a_stop() {
    const TARGETS: usize = 300;
    let stack = Stack::shared();
    let topic = unique("fleet300");
    let site = TestServer::start();
    let dir = temp_dir("fleet300");
    let file = dir.path().join("targets.toml");
    write_targets(&file, &site, 0..TARGETS, 1.0, |_| None);
    apply(&stack, &topic, &file, &[]);

    let mut killed = fleet_pub(&stack, &topic, "a");
    let mut stopped = fleet_pub(&stack, &topic, "b");
    let staying = fleet_pub(&stack, &topic, "c");
    wait_for_fleet(&[&killed, &stopped, &staying], TARGETS);

    let window_start = chrono::Utc::now();
    // Five rounds of checks of every target.
    wait_for_checks(&site, 5 * TARGETS);
    let window_end = chrono::Utc::now();

    killed.kill();
    let killed_at = Instant::now();
    wait_for_fleet(&[&stopped, &staying], TARGETS);
    eprintln!(
        "after SIGKILL the others held every target after {:.1} s",
        killed_at.elapsed().as_secs_f64()
    );

    let joined = fleet_pub(&stack, &topic, "d");
    wait_for_fleet(&[&stopped, &staying, &joined], TARGETS);

    stopped.signal("INT");
    let stopped_at = Instant::now();
    let (status, log) = stopped.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    wait_for_fleet(&[&staying, &joined], TARGETS);
    eprintln!(
        "after Ctrl-C the others held every target after {:.1} s",
        stopped_at.elapsed().as_secs_f64()
    );
    wait_for_checks(&site, 3 * TARGETS);
    let checked_until = chrono::Utc::now();
    for mut pub_ in [staying, joined] {
        pub_.stop(Duration::from_secs(60));
    }

    let results = results(&stack, &topic);
    let mut by_target: std::collections::HashMap<
        String,
        Vec<(chrono::DateTime<chrono::Utc>, String)>,
    > = Default::default();
    for result in results {
        let probe = result
            .details
            .probe
            .clone()
            .expect("every result names its probe");
        by_target
            .entry(result.target.clone())
            .or_default()
            .push((result.checked_at, probe));
    }
    assert_eq!(by_target.len(), TARGETS, "some target was never checked");

    let mut longest_gap = (0.0, String::new());
    let mut most_doubled = (0, String::new());
    for (target, checks) in &mut by_target {
        checks.sort();
        let in_window: std::collections::BTreeSet<&str> = checks
            .iter()
            .filter(|(at, _)| (window_start..window_end).contains(at))
            .map(|(_, probe)| probe.as_str())
            .collect();
        assert_eq!(
            in_window.len(),
            1,
            "{target} was checked by {in_window:?} in steady state"
        );
        let after: Vec<&(chrono::DateTime<chrono::Utc>, String)> = checks
            .iter()
            .filter(|(at, _)| (window_start..checked_until).contains(at))
            .collect();
        for pair in after.windows(2) {
            let gap = (pair[1].0 - pair[0].0).as_seconds_f64();
            if gap > longest_gap.0 {
                longest_gap = (gap, target.clone());
            }
        }
        let last = after.last().expect("checked after the window").0;
        let tail = (checked_until - last).as_seconds_f64();
        assert!(
            tail < 2.0,
            "{target} was last checked {tail:.1} s before the end"
        );
        // Seconds in which two pubs checked this target.
        let mut probes_by_second: std::collections::BTreeMap<
            i64,
            std::collections::BTreeSet<&str>,
        > = Default::default();
        for (at, probe) in &after {
            probes_by_second
                .entry(at.timestamp())
                .or_default()
                .insert(probe);
        }
        let doubled = probes_by_second.values().filter(|p| p.len() > 1).count();
        if doubled > most_doubled.0 {
            most_doubled = (doubled, target.clone());
        }
    }
    eprintln!(
        "longest gap {:.1} s ({}); most seconds checked twice: {} ({})",
        longest_gap.0, longest_gap.1, most_doubled.0, most_doubled.1
    );
    // The interval (1 s) and the session timeout (10 s); then the survivors hear of
    // the rebalance at their next heartbeat (1 s), take the partitions in the
    // cooperative protocol's rounds, read them to their end, and spread the first
    // checks over the interval (1 s). 6 s covers those, twice over for a loaded
    // machine; the longest gaps measured here were 11.6 to 14.1 s.
    assert!(
        longest_gap.0 < 1.0 + 10.0 + 6.0,
        "{} went unchecked for {:.1} s",
        longest_gap.1,
        longest_gap.0
    );
    // A target can move twice after the window: to the pub that joins, and away
    // from the one that stops. Each move may overlap a check of the old owner still
    // in flight with the new owner's first check, in one second.
    assert!(
        most_doubled.0 <= 2,
        "{} was checked by two pubs in the same second {} times",
        most_doubled.1,
        most_doubled.0
    );
}

/// A changed pattern takes effect within seconds while the fleet runs, and a removed
/// target stops being checked.
#[test]
fn a_live_change_reaches_the_running_fleet() {
    let stack = Stack::shared();
    let topic = unique("fleetlive");
    let site = TestServer::start();
    let dir = temp_dir("fleetlive");
    let file = dir.path().join("targets.toml");
    write_targets(&file, &site, 0..4, 0.5, |_| Some("missing"));
    apply(&stack, &topic, &file, &[]);
    let first = fleet_pub(&stack, &topic, "one");
    let second = fleet_pub(&stack, &topic, "two");
    wait_for_fleet(&[&first, &second], 4);

    // Target 0 looks for a word the page has; target 2 goes.
    write_targets(&file, &site, [0, 1, 3], 0.5, |i| match i {
        0 => Some("well"),
        _ => Some("missing"),
    });
    let changed = apply(&stack, &topic, &file, &[]);
    assert!(
        changed.contains("0 added, 1 changed, 1 removed, 2 unchanged"),
        "{changed}"
    );
    let applied = Instant::now();
    let changed_url = target_url(&site, 0);
    let found = wait_until(Duration::from_secs(30), || {
        results(&stack, &topic).iter().any(|r| {
            r.target == changed_url
                && r.pattern.as_deref() == Some("well")
                && r.pattern_found == Some(true)
        })
    });
    assert!(found, "the new pattern never showed up in the results");
    eprintln!(
        "the new pattern was in the results {:.1} s after the apply",
        applied.elapsed().as_secs_f64()
    );

    let removed_url = target_url(&site, 2);
    let removal = format!("target removed: {removed_url}");
    assert!(
        wait_until(Duration::from_secs(30), || {
            first.log().contains(&removal) || second.log().contains(&removal)
        }),
        "no pub removed {removed_url}:\n{}\n---\n{}",
        first.log(),
        second.log()
    );
    let removed_at = chrono::Utc::now();
    // Three more checks of each remaining target after the removal.
    let checked_since = |results: &[metrics_flow::pubsub::message::CheckResult], url: &str| {
        results
            .iter()
            .filter(|r| r.target == url && r.checked_at > removed_at)
            .count()
    };
    let remaining: Vec<String> = [0, 1, 3].iter().map(|&i| target_url(&site, i)).collect();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let results = results(&stack, &topic);
            remaining
                .iter()
                .all(|url| checked_since(&results, url) >= 3)
        }),
        "the remaining targets were not checked three times after the removal"
    );
    let results = results(&stack, &topic);
    assert_eq!(
        checked_since(&results, &removed_url),
        0,
        "{removed_url} was checked after its removal"
    );
    for mut pub_ in [first, second] {
        pub_.stop(Duration::from_secs(60));
    }
}
