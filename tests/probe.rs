//! The prober against servers that really fail in each way: every failure becomes a
//! result with the right `error_kind`, and no check outlives its timeout.

mod common;

use std::collections::HashMap;

use common::*;

/// One stored result, as the columns and the published extras show it.
#[derive(Debug)]
struct Stored {
    table: String,
    ok: bool,
    http_status: Option<i32>,
    latency_ms: f64,
    error_kind: Option<String>,
    error_text: Option<String>,
    pattern_found: Option<bool>,
}

/// The table `check_once` stored its rows in.
fn rows_table(rows: &HashMap<String, Stored>) -> String {
    rows.values().next().expect("rows").table.clone()
}

/// Publishes one round of checks of `targets` and returns the stored rows by target.
fn check_once(stack: &Stack, extra_args: &[&str], targets: &[String]) -> HashMap<String, Stored> {
    let topic = unique("probe");
    let mut publish = metrics_flow(stack, &topic);
    publish.args(["pub", "--once"]).args(extra_args);
    for target in targets {
        publish.args(["--target", target]);
    }
    run_ok(&mut publish);
    run_ok(
        metrics_flow(stack, &topic).args(["sub", "--once", "--table", &topic, "--group", &topic]),
    );
    stack
        .pg()
        .query(
            &format!(
                "SELECT target, ok, http_status, latency_ms, error_kind, error_text, pattern_found FROM {topic}"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| {
            let stored = Stored {
                table: topic.clone(),
                ok: row.get(1),
                http_status: row.get(2),
                latency_ms: row.get(3),
                error_kind: row.get(4),
                error_text: row.get(5),
                pattern_found: row.get(6),
            };
            (row.get(0), stored)
        })
        .collect()
}

#[test]
fn every_failure_is_classified_and_bounded_by_the_timeout() {
    let stack = Stack::from_env();
    let server = TestServer::start();
    let tls = TlsServer::start(30);
    let unanswered = SaturatedListener::start();
    let expectations: Vec<(String, Option<&str>)> = vec![
        (server.url("/ok"), None),
        (server.url("/binary"), None),
        (server.url("/redirect-once"), None),
        (
            format!("http://127.0.0.1:{}/", closed_port()),
            Some("refused"),
        ),
        ("http://no-such-host.invalid/".into(), Some("dns")),
        (
            format!("http://127.0.0.1:{}/", unanswered.port),
            Some("connect_timeout"),
        ),
        (server.url("/stall-headers"), Some("timeout")),
        (server.url("/stall-body"), Some("timeout")),
        (server.url("/slowloris"), Some("timeout")),
        (server.url("/chunked-forever"), Some("timeout")),
        (server.url("/close-mid-body"), Some("reset")),
        (server.url("/garbage"), Some("protocol")),
        (tls.url("/"), Some("tls")),
        (server.url("/redirect-loop"), Some("too_many_redirects")),
        (server.url("/big/200000"), Some("body_too_large")),
        (server.url("/status/500"), Some("status")),
        (server.url("/big/100"), Some("pattern")),
    ];
    let targets: Vec<String> = expectations.iter().map(|(t, _)| t.clone()).collect();
    let rows = check_once(
        &stack,
        &[
            "--timeout",
            "2",
            "--max-body-bytes",
            "100000",
            "--pattern",
            "well|needle",
            "--concurrency",
            "20",
        ],
        &targets,
    );
    assert_eq!(
        rows.len(),
        expectations.len(),
        "one row per target: {rows:#?}"
    );
    for (target, kind) in &expectations {
        let row = &rows[target];
        assert_eq!(row.error_kind.as_deref(), *kind, "{target}: {row:?}");
        assert_eq!(row.ok, kind.is_none(), "{target}: {row:?}");
        assert_eq!(
            row.error_text.is_some(),
            kind.is_some(),
            "{target}: {row:?}"
        );
        // Bounded, not timed: a hung check would take the server's full 30 s stall.
        assert!(
            row.latency_ms < 2000.0 + 1500.0,
            "{target} took {} ms",
            row.latency_ms
        );
    }
    let binary = &rows[&server.url("/binary")];
    assert_eq!(
        binary.pattern_found,
        Some(true),
        "the regex must see past invalid UTF-8"
    );
    assert_eq!(rows[&server.url("/big/100")].pattern_found, Some(false));
    assert_eq!(rows[&server.url("/status/500")].http_status, Some(500));
    assert!(rows[&tls.url("/")]
        .error_text
        .as_deref()
        .unwrap()
        .contains("certificate verify failed"));
    let table_of = |target: &str| -> postgres::Row {
        let topic = rows_table(&rows);
        stack
            .pg()
            .query_one(
                &format!(
                    "SELECT dns_ms, connect_ms, tls_ms, ttfb_ms, redirects, final_url, body_bytes,
                            http_version, schedule_lag_ms FROM {topic} WHERE target = $1"
                ),
                &[&target],
            )
            .unwrap()
    };
    let redirected = table_of(&server.url("/redirect-once"));
    let dns: f64 = redirected.get(0);
    let connect: f64 = redirected.get(1);
    let ttfb: f64 = redirected.get(3);
    assert!(dns >= 0.0 && connect > 0.0, "dns {dns} connect {connect}");
    assert!(
        ttfb >= connect && ttfb <= rows[&server.url("/redirect-once")].latency_ms,
        "ttfb {ttfb}"
    );
    assert_eq!(
        redirected.get::<_, Option<f64>>(2),
        None,
        "no TLS on plain http"
    );
    assert_eq!(redirected.get::<_, Option<i32>>(4), Some(1));
    assert_eq!(
        redirected.get::<_, Option<String>>(5),
        Some(server.url("/ok"))
    );
    assert_eq!(
        redirected.get::<_, Option<i64>>(6),
        Some("all is well".len() as i64)
    );
    assert_eq!(
        redirected.get::<_, Option<String>>(7).as_deref(),
        Some("HTTP/1.1")
    );
    assert!(
        redirected.get::<_, Option<f64>>(8).is_some(),
        "schedule lag recorded"
    );
    let tls_failed = table_of(&tls.url("/"));
    assert!(
        tls_failed.get::<_, Option<f64>>(2).is_some(),
        "a failed handshake is still timed"
    );
    for stalled in [
        "/stall-headers",
        "/stall-body",
        "/slowloris",
        "/chunked-forever",
    ] {
        let took = rows[&server.url(stalled)].latency_ms;
        assert!(
            took >= 2000.0,
            "{stalled} ended after {took} ms, before its 2 s timeout"
        );
    }
}
