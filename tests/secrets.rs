//! A password in a target's URL is sent to the target and shown nowhere else: not in
//! logs at any level, errors, Kafka keys or values, nor in the table.

mod common;

use std::fs;

use common::*;

const SECRET: &str = "s3cret";

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn credentials_in_target_urls_are_sent_but_masked_everywhere_else() {
    let stack = Stack::shared();
    let server = TestServer::start();
    let topic = unique("secret");
    let with_password = format!("http://user:{SECRET}@127.0.0.1:{}/auth", server.port);
    let redirected = server.url("/redirect-with-credentials");

    let published = run_ok(metrics_flow(&stack, &topic).env("RUST_LOG", "debug").args([
        "pub",
        "--once",
        "--target",
        &with_password,
        "--target",
        &redirected,
    ]));
    let stored = run_ok(
        metrics_flow(&stack, &topic)
            .env("RUST_LOG", "debug")
            .args(["sub", "--once", "--table", &topic, "--group", &topic]),
    );
    for (what, output) in [("pub", &published), ("sub", &stored)] {
        let output = text(output);
        assert!(
            !output.contains(SECRET),
            "{what} printed the password:\n{output}"
        );
        assert!(
            !output.contains(BASIC_USER_S3CRET),
            "{what} printed the password, base64-encoded:\n{output}"
        );
    }
    for (key, value) in read_topic(&stack, &topic) {
        for bytes in [key, value].into_iter().flatten() {
            let bytes = String::from_utf8_lossy(&bytes);
            assert!(!bytes.contains(SECRET), "published: {bytes}");
        }
    }
    let rows = stack
        .pg()
        .query(
            &format!("SELECT t::text, target, ok, final_url FROM {topic} t ORDER BY target"),
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let whole: String = row.get(0);
        assert!(!whole.contains(SECRET), "stored: {whole}");
    }
    let by_target = |target: &str| {
        rows.iter()
            .find(|row| row.get::<_, String>(1) == target)
            .unwrap_or_else(|| panic!("no row for {target}"))
    };
    let masked = format!("http://user:***@127.0.0.1:{}/auth", server.port);
    let direct = by_target(&masked);
    assert!(direct.get::<_, bool>(2), "the password was not sent");
    let via_redirect = by_target(&redirected);
    assert!(
        via_redirect.get::<_, bool>(2),
        "the redirect's password was not sent"
    );
    assert_eq!(via_redirect.get::<_, Option<String>>(3), Some(masked));
}

#[test]
fn credentials_in_bad_urls_stay_out_of_usage_errors() {
    let stack = Stack::shared();
    let topic = unique("secret_usage");
    let dir = temp_dir("secret");
    let toml = dir.path().join("targets.toml");
    fs::write(
        &toml,
        format!("[[target]]\nurl = \"ftp://user:{SECRET}@example.com/\"\n"),
    )
    .unwrap();
    let plain = dir.path().join("targets.txt");
    fs::write(&plain, format!("gopher://user:{SECRET}@example.com/\n")).unwrap();
    for args in [
        vec![
            "pub".to_owned(),
            "--target".to_owned(),
            format!("ftp://user:{SECRET}@example.com/"),
        ],
        vec![
            "pub".to_owned(),
            "--targets-file".to_owned(),
            toml.display().to_string(),
        ],
        vec![
            "pub".to_owned(),
            "--targets-file".to_owned(),
            plain.display().to_string(),
        ],
    ] {
        let output = metrics_flow(&stack, &topic).args(&args).output().unwrap();
        let output_text = text(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output_text}");
        assert!(!output_text.contains(SECRET), "{args:?}: {output_text}");
        assert!(output_text.contains("user:***@"), "{args:?}: {output_text}");
    }
}
