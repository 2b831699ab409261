//! Targets from a file: per-target rules from TOML applied to real responses, plain
//! files, file errors that name the line, and shards that split a file without overlap.

mod common;

use std::collections::BTreeSet;
use std::fs;

use common::*;

/// Runs one `pub --once` with `args`, drains it with `sub --once`, returns the table name.
fn publish_and_store(stack: &Stack, args: &[&str]) -> String {
    let topic = unique("tfile");
    run_ok(
        metrics_flow(stack, &topic)
            .args(["pub", "--once"])
            .args(args),
    );
    run_ok(
        metrics_flow(stack, &topic).args(["sub", "--once", "--table", &topic, "--group", &topic]),
    );
    topic
}

#[test]
fn toml_rules_apply_per_target() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let tls = TlsServer::start(30);
    let dir = temp_dir("toml");
    fs::copy(&tls.cert_file, dir.path().join("server-ca.pem")).unwrap();
    let file = dir.path().join("targets.toml");
    fs::write(
        &file,
        format!(
            r#"
[[target]]
url = "{post}"
method = "post"
body = "hello"
headers = {{ X-Test = "1" }}
pattern = "^POST$"

[[target]]
url = "{missing}"
expect_status = [404, "500-599"]

[[target]]
url = "{ok}"
forbid_pattern = "well"

[[target]]
url = "{redirect}"
follow_redirects = false
expect_status = ["300-399"]

[[target]]
url = "{tls_url}"
ca_file = "server-ca.pem"
pattern = "over tls"

[[target]]
url = "{tls_unverified}"
tls_verify = false
"#,
            post = server.url("/method"),
            missing = server.url("/status/404"),
            ok = server.url("/ok"),
            redirect = server.url("/redirect-once"),
            tls_url = tls.url("/"),
            tls_unverified = tls.url("/unverified"),
        ),
    )
    .unwrap();
    let table = publish_and_store(&stack, &["--targets-file", file.to_str().unwrap()]);
    let row = |target: &str| {
        stack
            .pg()
            .query_one(
                &format!(
                    "SELECT ok, http_status, error_kind, pattern_found, tls_days_left, redirects
                     FROM {table} WHERE target = $1"
                ),
                &[&target],
            )
            .unwrap_or_else(|e| panic!("{target}: {e}"))
    };
    let r = row(&server.url("/method"));
    assert!(
        r.get::<_, bool>(0),
        "POST with a body was sent and matched ^POST$"
    );
    assert_eq!(r.get::<_, Option<bool>>(3), Some(true));
    let r = row(&server.url("/status/404"));
    assert!(r.get::<_, bool>(0), "404 is expected for this target");
    let r = row(&server.url("/ok"));
    assert!(!r.get::<_, bool>(0));
    assert_eq!(r.get::<_, Option<String>>(2).as_deref(), Some("pattern"));
    let r = row(&server.url("/redirect-once"));
    assert!(r.get::<_, bool>(0), "the 302 itself is the expected answer");
    assert_eq!(r.get::<_, Option<i32>>(1), Some(302));
    let r = row(&tls.url("/"));
    assert!(r.get::<_, bool>(0), "trusted through ca_file");
    let days: i32 = r.get::<_, Option<i32>>(4).expect("TLS expiry recorded");
    assert!(
        (29..=30).contains(&days),
        "certificate made for 30 days shows {days} left"
    );
    let r = row(&tls.url("/unverified"));
    assert!(
        r.get::<_, bool>(0),
        "tls_verify = false accepts a self-signed certificate"
    );
}

#[test]
fn plain_file_and_shards_split_without_overlap() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let dir = temp_dir("plain");
    let file = dir.path().join("targets.txt");
    let urls: Vec<String> = (0..24).map(|i| server.url(&format!("/ok?n={i}"))).collect();
    let mut text = String::from("# one target per line, an optional pattern after it\n\n");
    for (i, url) in urls.iter().enumerate() {
        let pattern = if i % 2 == 0 { " all is well" } else { "" };
        text.push_str(&format!("{url}{pattern}\n"));
    }
    fs::write(&file, text).unwrap();
    let file = file.to_str().unwrap();

    let mut seen = Vec::new();
    for shard in ["1/3", "2/3", "3/3"] {
        let table = publish_and_store(&stack, &["--targets-file", file, "--shard", shard]);
        let targets: Vec<String> = stack
            .pg()
            .query(&format!("SELECT target FROM {table} WHERE ok"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!targets.is_empty(), "shard {shard} got nothing");
        seen.extend(targets);
    }
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(
        seen.len(),
        urls.len(),
        "each target checked by exactly one shard"
    );
    assert_eq!(distinct, urls.iter().collect::<BTreeSet<_>>());
}

#[test]
fn file_errors_exit_2_naming_file_and_line() {
    let stack = Stack::shared();
    let dir = temp_dir("bad");
    let plain = dir.path().join("bad.txt");
    fs::write(&plain, "http://ok.example/\n\nnot-a-url pattern\n").unwrap();
    let toml = dir.path().join("bad.toml");
    fs::write(
        &toml,
        "[[target]]\nurl = \"http://ok.example/\"\ntimout = 5\n",
    )
    .unwrap();
    for (file, expected) in [(&plain, "bad.txt:3:"), (&toml, "bad.toml:3:")] {
        let output = metrics_flow(&stack, "unused")
            .args(["pub", "--once", "--targets-file", file.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "'{stderr}' lacks '{expected}'");
    }
}

#[test]
fn a_pattern_with_a_nul_is_published_in_a_form_postgres_can_store() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let dir = temp_dir("nul");
    let file = dir.path().join("targets.toml");
    // TOML's own escape: the regex holds a NUL character, which matches a NUL byte.
    let toml = format!(
        "[[target]]\nurl = \"{}\"\npattern = \"all is well|\\u0000\"\n",
        server.url("/ok")
    );
    fs::write(&file, toml).unwrap();
    let table = publish_and_store(&stack, &["--targets-file", file.to_str().unwrap()]);
    let rows = stack
        .pg()
        .query(&format!("SELECT ok, pattern FROM {table}"), &[])
        .unwrap();
    assert_eq!(rows.len(), 1, "the result was stored, not rejected");
    assert!(rows[0].get::<_, bool>(0));
    assert_eq!(rows[0].get::<_, String>(1), "all is well|\\x00");
    assert_eq!(stack.count(&format!("{table}_rejected")), 0);
}
