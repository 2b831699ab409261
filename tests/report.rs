//! `metrics-flow report` against what a real sub stored: the lines in each format, the
//! HTML page, and clear messages when there is nothing to report from.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use serde_json::Value;

fn result(target: &str, at: DateTime<Utc>, ok: bool) -> Value {
    let mut value = check_value(1);
    value["target"] = target.into();
    value["checked_at"] = at
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        .into();
    value["ok"] = ok.into();
    value["http_status"] = if ok { 200 } else { 503 }.into();
    value["error_kind"] = if ok { Value::Null } else { "status".into() };
    value["error_text"] = if ok {
        Value::Null
    } else {
        "status 503 is not in 200-299".into()
    };
    value["tls_days_left"] = 42.into();
    value["tls_expires_at"] = (at + chrono::Duration::days(42))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        .into();
    value
}

fn report(stack: &Stack, table: &str, args: &[&str]) -> std::process::Output {
    metrics_flow(stack, table)
        .args(["report", "--table", table])
        .args(args)
        .output()
        .expect("running report")
}

fn stdout_of(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Three targets: one up, one down since its third failure, one that recovered.
fn stored_targets(stack: &Stack, topic: &str) {
    let start = Utc::now() - chrono::Duration::hours(2);
    let minute = |i: i64| start + chrono::Duration::minutes(i);
    let mut values = Vec::new();
    for (target, pattern) in [
        ("https://up.example/", "++++++"),
        ("https://down.example/<b>", "+++---"),
        ("https://back.example/", "+---++"),
    ] {
        for (i, c) in pattern.chars().enumerate() {
            values.push(result(target, minute(i as i64), c == '+'));
        }
    }
    produce_json(stack, topic, &values);
    let mut subscriber = Logged::spawn(
        metrics_flow(stack, topic).args(["sub", "--once", "--table", topic, "--group", topic]),
    );
    let (status, log) = subscriber.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{log}");
}

#[test]
fn the_report_answers_in_every_format_with_down_targets_first() {
    let stack = Stack::shared();
    let topic = unique("report");
    stored_targets(&stack, &topic);

    let json: Vec<Value> =
        serde_json::from_str(&stdout_of(&report(&stack, &topic, &["--format", "json"]))).unwrap();
    let targets: Vec<&str> = json.iter().map(|l| l["target"].as_str().unwrap()).collect();
    assert_eq!(
        targets,
        [
            "https://down.example/<b>",
            "https://back.example/",
            "https://up.example/"
        ],
        "down first, then by target"
    );
    let down = &json[0];
    assert_eq!(down["state"], "down");
    assert_eq!(down["incidents_30d"], 1);
    assert_eq!(down["uptime_24h"], 50.0);
    assert_eq!(down["tls_days_left"], 42);
    assert!(
        down["last_error"].as_str().unwrap().contains("status 503"),
        "{down}"
    );
    assert!(down["p50_ms_24h"].as_f64().is_some() && down["p95_ms_24h"].as_f64().is_some());
    let up = &json[2];
    assert_eq!(
        (up["state"].as_str(), up["uptime_7d"].as_f64()),
        (Some("up"), Some(100.0))
    );
    for field in [
        "target",
        "location",
        "state",
        "since",
        "last_checked_at",
        "uptime_24h",
        "uptime_7d",
        "uptime_30d",
        "p50_ms_24h",
        "p95_ms_24h",
        "incidents_30d",
        "last_error",
        "tls_days_left",
    ] {
        assert!(up.get(field).is_some(), "no {field} in {up}");
    }

    let table = stdout_of(&report(&stack, &topic, &[]));
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert!(
        rows[1].contains("DOWN") && rows[1].starts_with("https://down"),
        "{table}"
    );
    for row in &rows {
        assert!(
            row.chars().count() <= 120,
            "{} columns: {row}",
            row.chars().count()
        );
    }

    let csv = stdout_of(&report(&stack, &topic, &["--format", "csv"]));
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.starts_with("target,location,state,since,"), "{csv}");

    let one = stdout_of(&report(
        &stack,
        &topic,
        &["--format", "json", "--target", "back.ex"],
    ));
    let one: Vec<Value> = serde_json::from_str(&one).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["incidents_30d"], 1);
}

#[test]
fn the_status_page_is_self_contained_and_shows_every_target() {
    let stack = Stack::shared();
    let topic = unique("page");
    stored_targets(&stack, &topic);
    let dir = temp_dir("page");
    let file = dir.path().join("status.html");
    stdout_of(&report(&stack, &topic, &["--html", file.to_str().unwrap()]));
    let page = std::fs::read_to_string(&file).unwrap();
    for target in ["https://up.example/", "https://back.example/"] {
        assert!(page.contains(target), "{target} missing");
    }
    assert!(
        page.contains("https://down.example/&lt;b&gt;") && !page.contains("<b>"),
        "a target's text is escaped"
    );
    let down = page.find("class=\"target down\"").expect("a down section");
    let up = page.find("class=\"target up\"").expect("an up section");
    assert!(down < up, "down targets first");
    assert_eq!(page.matches("class=\"target down\"").count(), 1);
    assert_eq!(page.matches("class=\"target up\"").count(), 2);
    assert!(page.contains("ongoing"), "the open incident is listed");
    for external in ["src=", "href=", "url(", "@import", "<script", "<link"] {
        assert!(
            !page.contains(external),
            "the page loads something: {external}"
        );
    }
    assert_eq!(
        page.matches("<span class=\"").count() - 3,
        3 * 90,
        "90 days per target"
    );
}

#[test]
fn nothing_to_report_from_gets_one_clear_line() {
    let stack = Stack::shared();
    let never = unique("never");
    let output = report(&stack, &never, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no table") && stderr.contains(&never),
        "{stderr}"
    );

    // Tables made, nothing stored in them: a message, and an empty report.
    let empty = unique("empty");
    produce_raw(&stack, &empty, &[(Some(b"k"), Some(b"not a result"))]);
    run_ok(
        metrics_flow(&stack, &empty).args(["sub", "--once", "--table", &empty, "--group", &empty]),
    );
    let output = report(&stack, &empty, &["--format", "json"]);
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "[]");
    assert!(String::from_utf8_lossy(&output.stderr).contains("no targets yet"));

    let output = metrics_flow(&stack, &empty)
        .args(["report", "--dsn", "host=h frobnicate=1 password=hunter2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("hunter2"));
}
