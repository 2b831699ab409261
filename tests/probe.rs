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
    let stack = Stack::shared();
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

/// body_bytes of each stored row, by target.
fn body_bytes(stack: &Stack, table: &str) -> HashMap<String, Option<i64>> {
    stack
        .pg()
        .query(&format!("SELECT target, body_bytes FROM {table}"), &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[test]
fn bodies_are_capped_after_decoding_and_a_body_of_exactly_the_cap_is_fine() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let exact = server.url("/big/1000");
    let over = server.url("/big/1001");
    let gzip = server.url("/gzip");
    let brotli = server.url("/brotli");
    let bomb = server.url("/gzip-bomb/50000000");
    let asks = server.url("/headers");
    let rows = check_once(
        &stack,
        &[
            "--max-body-bytes",
            "1000",
            "--timeout",
            "5",
            "--pattern",
            "x{1000}|all is well|(?i)accept-encoding: [^\\n]*gzip",
        ],
        &[
            exact.clone(),
            over.clone(),
            gzip.clone(),
            brotli.clone(),
            bomb.clone(),
            asks.clone(),
        ],
    );
    let sizes = body_bytes(&stack, &rows_table(&rows));
    assert!(rows[&exact].ok, "{:?}", rows[&exact]);
    assert_eq!(sizes[&exact], Some(1000));
    assert_eq!(rows[&over].error_kind.as_deref(), Some("body_too_large"));
    assert!(
        rows[&asks].ok,
        "pub does not ask for gzip: {:?}",
        rows[&asks]
    );
    let compressed = &rows[&gzip];
    assert!(compressed.ok, "{compressed:?}");
    assert_eq!(compressed.pattern_found, Some(true));
    assert_eq!(
        sizes[&gzip],
        Some("all is well, said the compressed body".len() as i64),
        "body_bytes is the decoded size"
    );
    assert_eq!(
        rows[&brotli].pattern_found,
        Some(true),
        "{:?}",
        rows[&brotli]
    );
    assert_eq!(
        sizes[&brotli],
        Some("all is well, said the brotli body".len() as i64)
    );
    let bomb = &rows[&bomb];
    assert_eq!(
        bomb.error_kind.as_deref(),
        Some("body_too_large"),
        "{bomb:?}"
    );
    assert!(bomb.latency_ms < 5000.0, "{bomb:?}");
}

#[test]
fn responses_past_the_header_limits_fail_as_protocol_with_a_clear_text() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let huge = server.url("/huge-headers");
    let many = server.url("/many-headers/200");
    let enough = server.url("/many-headers/100");
    let long_redirect = server.url("/redirect-long");
    let rows = check_once(
        &stack,
        &["--timeout", "5"],
        &[
            huge.clone(),
            many.clone(),
            enough.clone(),
            long_redirect.clone(),
        ],
    );
    assert!(rows[&enough].ok, "{:?}", rows[&enough]);
    for (target, says) in [
        (&huge, "response headers larger than 32 KiB"),
        (&many, "more than 128 response headers"),
        (&long_redirect, "request larger than 16 KiB"),
    ] {
        let row = &rows[target];
        assert_eq!(
            row.error_kind.as_deref(),
            Some("protocol"),
            "{target}: {row:?}"
        );
        let text = row.error_text.as_deref().unwrap_or_default();
        assert!(text.contains(says), "{target}: {text}");
    }
}

#[test]
fn tls_failures_give_openssl_verify_result() {
    let stack = Stack::shared();
    let servers = [
        (
            TlsServer::with(ServerCert::SelfSigned { days: 30 }),
            "self-signed certificate",
        ),
        (
            TlsServer::with(ServerCert::Expired),
            "certificate has expired",
        ),
        (TlsServer::with(ServerCert::OtherHost), "hostname mismatch"),
        (
            TlsServer::with(ServerCert::UnknownIssuer),
            "unable to get local issuer certificate",
        ),
    ];
    // The CA of the expired and the misnamed certificates is trusted, so what fails is
    // what each certificate is made to fail on.
    let dir = temp_dir("tlsreasons");
    let mut toml = String::new();
    for (server, _) in &servers {
        toml.push_str(&format!("[[target]]\nurl = \"{}\"\n", server.url("/")));
        if matches!(server.kind, ServerCert::Expired | ServerCert::OtherHost) {
            toml.push_str(&format!("ca_file = \"{}\"\n", server.ca_file.display()));
        }
    }
    let file = dir.path().join("targets.toml");
    std::fs::write(&file, toml).unwrap();
    let topic = unique("tlsreasons");
    run_ok(metrics_flow(&stack, &topic).args([
        "pub",
        "--once",
        "--timeout",
        "5",
        "--targets-file",
        &file.display().to_string(),
    ]));
    run_ok(
        metrics_flow(&stack, &topic).args(["sub", "--once", "--table", &topic, "--group", &topic]),
    );
    for (server, reason) in &servers {
        let row = stack
            .pg()
            .query_one(
                &format!("SELECT error_kind, error_text FROM {topic} WHERE target = $1"),
                &[&server.url("/")],
            )
            .unwrap();
        let kind: Option<String> = row.get(0);
        let text: Option<String> = row.get(1);
        assert_eq!(kind.as_deref(), Some("tls"), "{:?}", server.kind);
        let text = text.unwrap_or_default();
        assert!(text.contains(reason), "{:?}: {text}", server.kind);
    }
}
