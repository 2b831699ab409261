//! The command line as a user meets it: help text, and usage errors that exit 2 in one line.

use std::process::Command;

fn metrics_flow(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_metrics-flow"))
        .args(args)
        .env_remove("TARGET")
        .env_remove("POSTGRESQL_DSN")
        .env("KAFKA_BROKER", "127.0.0.1:1")
        .output()
        .expect("running metrics-flow")
}

#[test]
fn help_names_every_env_var() {
    let pub_help = String::from_utf8(metrics_flow(&["pub", "--help"]).stdout).unwrap();
    for var in [
        "KAFKA_BROKER",
        "KAFKA_TOPIC",
        "KAFKA_SECURITY_PROTOCOL",
        "SSL_CA_FILE",
        "SSL_CERT_FILE",
        "SSL_KEY_FILE",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "CONNECT_DEADLINE",
        "TARGET",
        "PATTERN",
        "DELAY",
        "TIMEOUT",
        "CONCURRENCY",
    ] {
        assert!(
            pub_help.contains(&format!("env: {var}")),
            "pub --help lacks {var}:\n{pub_help}"
        );
    }
    let sub_help = String::from_utf8(metrics_flow(&["sub", "--help"]).stdout).unwrap();
    for var in [
        "KAFKA_BROKER",
        "POSTGRESQL_DSN",
        "POSTGRESQL_TABLE",
        "KAFKA_GROUP",
        "CONNECT_DEADLINE",
    ] {
        assert!(
            sub_help.contains(&format!("env: {var}")),
            "sub --help lacks {var}:\n{sub_help}"
        );
    }
}

#[test]
fn secrets_in_env_stay_out_of_help() {
    let output = Command::new(env!("CARGO_BIN_EXE_metrics-flow"))
        .args(["sub", "--help"])
        .env("KAFKA_SASL_PASSWORD", "hunter2-sasl")
        .env("POSTGRESQL_DSN", "host=h password=hunter2-pg")
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("KAFKA_SASL_PASSWORD"));
    assert!(!help.contains("hunter2"), "{help}");
}

#[test]
fn bad_input_exits_2_with_one_line() {
    for (args, expected) in [
        (
            vec!["pub", "--target", "http://x/", "--pattern", "(unclosed"],
            "invalid regex",
        ),
        (vec!["pub", "--target", "not a url"], "invalid URL"),
        (
            vec!["pub", "--target", "http://x/", "--delay", "soon"],
            "not a number of seconds",
        ),
        (vec!["pub"], "no targets"),
        (
            vec![
                "pub",
                "--target",
                "http://x/",
                "--ssl-ca-file",
                "/nonexistent/ca.pem",
            ],
            "--ssl-ca-file",
        ),
        (vec!["sub", "--dsn", "host=h sslmode=sometimes"], "sslmode"),
        (
            vec!["sub", "--table", "x; drop table y"],
            "not a table name",
        ),
        (vec!["pub", "--bogus-flag"], "--bogus-flag"),
    ] {
        let output = metrics_flow(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} -> {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?} printed:\n{stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{args:?}: '{stderr}' lacks '{expected}'"
        );
    }
}

#[test]
fn target_env_var_takes_a_comma_separated_list() {
    // An unparsable second entry proves both entries were read from TARGET.
    let output = Command::new(env!("CARGO_BIN_EXE_metrics-flow"))
        .arg("pub")
        .env("TARGET", "http://a.example/,nonsense")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("'nonsense'"));
}

#[test]
fn openssl_style_ssl_cert_file_alone_is_not_a_client_certificate() {
    // SSL_CERT_FILE is OpenSSL's CA-bundle variable on many machines; with no key it
    // must not switch Kafka to TLS. The refused broker on port 1 shows the plaintext
    // path was taken: the error is about reaching Kafka, not about certificates.
    let output = Command::new(env!("CARGO_BIN_EXE_metrics-flow"))
        .args(["pub", "--once", "--target", "http://127.0.0.1:1/"])
        .env("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
        .env_remove("SSL_KEY_FILE")
        .env("KAFKA_BROKER", "127.0.0.1:1")
        .env("CONNECT_DEADLINE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Kafka at 127.0.0.1:1 still unreachable"),
        "{stderr}"
    );
}

/// Runs `args`, expecting exit 2 with one line; returns that line.
fn usage_error(args: &[&str]) -> String {
    let output = metrics_flow(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{args:?} -> {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}:\n{stderr}");
    stderr
}

#[test]
fn durations_have_one_floor_for_flags_and_files() {
    let dir = std::env::temp_dir().join(format!("mf-cli-durations-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (flag, value) in [
        ("--delay", "1e-9"),
        ("--delay", "0.05"),
        ("--delay", "1e9"),
        ("--timeout", "0.01"),
        ("--delay", "-1"),
        ("--timeout", "-0.5"),
    ] {
        let line = usage_error(&["pub", "--target", "http://x/", flag, value]);
        assert!(line.contains(flag), "{flag} {value}: {line}");
    }
    for (key, value) in [
        ("interval", "1e-9"),
        ("timeout", "0.01"),
        ("interval", "1e9"),
    ] {
        let file = dir.join(format!("{key}-{value}.toml"));
        std::fs::write(
            &file,
            format!("[[target]]\nurl = \"http://x/\"\n{key} = {value}\n"),
        )
        .unwrap();
        let line = usage_error(&["pub", "--targets-file", file.to_str().unwrap()]);
        assert!(line.contains(&format!("{}:3:", file.display())), "{line}");
        assert!(line.contains(key), "{line}");
    }
    // The same words for the same rule.
    let flag = usage_error(&["pub", "--target", "http://x/", "--delay", "0.05"]);
    let file = dir.join("floor.toml");
    std::fs::write(&file, "[[target]]\nurl = \"http://x/\"\ninterval = 0.05\n").unwrap();
    let key = usage_error(&["pub", "--targets-file", file.to_str().unwrap()]);
    let rule = |line: &str| {
        line.split("0.05")
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    assert_eq!(rule(&flag), rule(&key), "{flag} / {key}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_topic_names_are_refused_at_start() {
    for subcommand in ["pub", "sub"] {
        for topic in ["bad topic!", "", "..", &"t".repeat(250)] {
            let mut args = vec![subcommand, "--topic", topic];
            if subcommand == "pub" {
                args.extend(["--target", "http://x/"]);
            }
            let line = usage_error(&args);
            assert!(line.contains("--topic"), "{subcommand} {topic:?}: {line}");
        }
    }
}

#[test]
fn targets_files_without_targets_or_with_a_url_twice_are_refused() {
    let dir = std::env::temp_dir().join(format!("mf-cli-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "# nothing yet\n").unwrap();
    let line = usage_error(&["pub", "--targets-file", empty.to_str().unwrap()]);
    assert!(
        line.contains(&format!("{} holds no targets", empty.display())),
        "{line}"
    );
    let twice = dir.join("twice.toml");
    std::fs::write(
        &twice,
        "[[target]]\nurl = \"http://a.example/\"\n\n[[target]]\nurl = \"http://b.example/\"\n\n[[target]]\nurl = \"http://a.example/\"\n",
    )
    .unwrap();
    let line = usage_error(&["pub", "--targets-file", twice.to_str().unwrap()]);
    assert!(line.contains(&format!("{}:8:", twice.display())), "{line}");
    assert!(line.contains("line 2"), "names the first line too: {line}");
    let plain = dir.join("twice.txt");
    std::fs::write(
        &plain,
        "http://a.example/\nhttp://a.example/ other pattern\n",
    )
    .unwrap();
    let line = usage_error(&["pub", "--targets-file", plain.to_str().unwrap()]);
    assert!(
        line.contains(&format!("{}:2:", plain.display())) && line.contains("line 1"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_url_too_long_to_ever_be_sent_is_refused_at_start() {
    let long = format!("http://x.example/{}", "a".repeat(17_000));
    let line = usage_error(&["pub", "--target", &long]);
    assert!(line.contains("too long"), "{line}");
    assert!(
        line.len() < 400,
        "the line quotes the whole URL: {} bytes",
        line.len()
    );
}
