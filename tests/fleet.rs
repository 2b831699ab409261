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
    first.signal("INT");
    let (status, log) = first.wait_exit(limit);
    assert!(status.success(), "{log}");
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
    second.signal("INT");
    let (status, log) = second.wait_exit(limit);
    assert!(status.success(), "{log}");

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
