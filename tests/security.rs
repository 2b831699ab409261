//! Managed-service setups against the real local stack started with MF_TLS=1: Kafka with
//! client certificates and with SASL-SCRAM over TLS, PostgreSQL with verify-full; each
//! working, each failing clearly when misconfigured, and no secret ever printed.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;

const SCRAM_PASSWORD: &str = "metrics-secret";

/// Where the TLS side of the stack listens; set by scripts/stack.sh with MF_TLS=1.
struct Tls {
    dir: PathBuf,
    ssl_broker: String,
    sasl_broker: String,
}

impl Tls {
    fn from_env() -> Tls {
        let get = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the tests through scripts/test.sh (stack with MF_TLS=1)")
            })
        };
        Tls {
            dir: PathBuf::from(get("MF_TLS_DIR")),
            ssl_broker: format!("localhost:{}", get("MF_KAFKA_SSL_PORT")),
            sasl_broker: format!("localhost:{}", get("MF_KAFKA_SASL_PORT")),
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// mTLS settings as env vars, the way a user of a managed Kafka would set them.
    fn mtls(&self, command: &mut Command, ca: &str, client: Option<(&str, &str)>) {
        command
            .env("KAFKA_BROKER", &self.ssl_broker)
            .env("KAFKA_SECURITY_PROTOCOL", "ssl")
            .env("SSL_CA_FILE", self.file(ca));
        match client {
            Some((cert, key)) => command
                .env("SSL_CERT_FILE", self.file(cert))
                .env("SSL_KEY_FILE", self.file(key)),
            None => command
                .env_remove("SSL_CERT_FILE")
                .env_remove("SSL_KEY_FILE"),
        };
    }

    fn scram(&self, command: &mut Command, mechanism: &str, password: &str) {
        command
            .env("KAFKA_BROKER", &self.sasl_broker)
            .env("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
            .env("SSL_CA_FILE", self.file("ca.pem"))
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_KEY_FILE")
            .env("KAFKA_SASL_MECHANISM", mechanism)
            .env("KAFKA_SASL_USERNAME", "metrics")
            .env("KAFKA_SASL_PASSWORD", password);
    }
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a command expected to fail at runtime: exit 1, a last line naming `what`.
fn assert_fails(command: &mut Command, what: &str) -> String {
    let output = command.output().expect("running metrics-flow");
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "expected exit 1:\n{text}");
    let last = text.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains(what),
        "last line '{last}' does not name {what}"
    );
    text
}

#[test]
fn kafka_with_client_certificates() {
    let stack = Stack::shared();
    let tls = Tls::from_env();
    let server = TestServer::start();
    let topic = unique("mtls");
    let target = server.url("/ok");

    let mut publish = metrics_flow(&stack, &topic);
    tls.mtls(&mut publish, "ca.pem", Some(("client.pem", "client.key")));
    run_ok(publish.args(["pub", "--once", "--target", &target]));
    let mut subscribe = metrics_flow(&stack, &topic);
    tls.mtls(&mut subscribe, "ca.pem", Some(("client.pem", "client.key")));
    run_ok(subscribe.args(["sub", "--once", "--table", &topic, "--group", &topic]));
    assert_eq!(stack.count(&topic), 1);

    let mut wrong_ca = metrics_flow(&stack, &topic);
    tls.mtls(
        &mut wrong_ca,
        "wrong-ca.pem",
        Some(("client.pem", "client.key")),
    );
    wrong_ca.env("CONNECT_DEADLINE", "3");
    assert_fails(
        wrong_ca.args(["pub", "--once", "--target", &target]),
        "Kafka at localhost",
    );

    let mut no_client_cert = metrics_flow(&stack, &topic);
    tls.mtls(&mut no_client_cert, "ca.pem", None);
    no_client_cert.env("CONNECT_DEADLINE", "3");
    assert_fails(
        no_client_cert.args(["pub", "--once", "--target", &target]),
        "Kafka at localhost",
    );
}

#[test]
fn kafka_with_sasl_scram_over_tls() {
    let stack = Stack::shared();
    let tls = Tls::from_env();
    let server = TestServer::start();
    let topic = unique("scram");
    let target = server.url("/ok");

    let mut publish = metrics_flow(&stack, &topic);
    tls.scram(&mut publish, "SCRAM-SHA-512", SCRAM_PASSWORD);
    let published = run_ok(publish.args(["pub", "--once", "--target", &target]));
    let mut subscribe = metrics_flow(&stack, &topic);
    tls.scram(&mut subscribe, "SCRAM-SHA-256", SCRAM_PASSWORD);
    let consumed = run_ok(subscribe.args(["sub", "--once", "--table", &topic, "--group", &topic]));
    assert_eq!(stack.count(&topic), 1);
    for output in [&published, &consumed] {
        assert!(
            !output_text(output).contains(SCRAM_PASSWORD),
            "the password was printed"
        );
    }

    for subcommand in [
        vec!["pub", "--once", "--target", &target],
        vec!["sub", "--once"],
    ] {
        let mut wrong_password = metrics_flow(&stack, &topic);
        tls.scram(&mut wrong_password, "SCRAM-SHA-256", "not-the-password-42");
        wrong_password.env("CONNECT_DEADLINE", "60");
        let started = std::time::Instant::now();
        let text = assert_fails(wrong_password.args(&subcommand), "Kafka at localhost");
        assert!(
            !text.contains("not-the-password-42"),
            "the password was printed:\n{text}"
        );
        // The real cause, not the "all brokers are down" that follows from it, and at
        // once: waiting does not mend a wrong password. (Bounded, not timed: retrying
        // would last the 60 s deadline.)
        let last = text.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.contains("invalid credentials"),
            "{subcommand:?}: {last}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{subcommand:?} retried a wrong password:\n{text}"
        );
    }
}

#[test]
fn postgres_with_verify_full() {
    let stack = Stack::shared();
    let tls = Tls::from_env();
    let server = TestServer::start();
    let topic = unique("pgtls");
    run_ok(metrics_flow(&stack, &topic).args(["pub", "--once", "--target", &server.url("/ok")]));
    let port = stack
        .dsn
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix("port="))
        .expect("the stack DSN names its port")
        .to_owned();
    let dsn = |host: &str, ca: &str| {
        format!(
            "{host} port={port} user=metrics password=metrics dbname=metrics sslmode=verify-full sslrootcert={}",
            tls.file(ca)
        )
    };

    let good = format!(
        "postgres://metrics:metrics@localhost:{port}/metrics?sslmode=verify-full&sslrootcert={}",
        tls.file("ca.pem")
    );
    run_ok(
        metrics_flow(&stack, &topic)
            .env("POSTGRESQL_DSN", &good)
            .args(["sub", "--once", "--table", &topic, "--group", &topic]),
    );
    assert_eq!(stack.count(&topic), 1);
    // The other modes connect too; verify-ca skips only the host name check.
    for mode in ["disable", "prefer", "require"] {
        let dsn = format!("host=localhost port={port} user=metrics password=metrics dbname=metrics sslmode={mode}");
        run_ok(
            metrics_flow(&stack, &topic)
                .env("POSTGRESQL_DSN", &dsn)
                .args(["sub", "--once", "--table", &topic, "--group", &topic]),
        );
    }
    run_ok(
        metrics_flow(&stack, &topic)
            .env(
                "POSTGRESQL_DSN",
                dsn("host=wrong-name.example hostaddr=127.0.0.1", "ca.pem")
                    .replace("verify-full", "verify-ca"),
            )
            .args(["sub", "--once", "--table", &topic, "--group", &topic]),
    );
    assert_eq!(
        stack.count(&topic),
        1,
        "the same group stored nothing twice"
    );

    for (dsn, case) in [
        (dsn("host=localhost", "wrong-ca.pem"), "wrong CA"),
        (
            dsn("host=wrong-name.example hostaddr=127.0.0.1", "ca.pem"),
            "wrong host name",
        ),
    ] {
        let mut command = metrics_flow(&stack, &topic);
        command
            .env("POSTGRESQL_DSN", &dsn)
            .env("CONNECT_DEADLINE", "2");
        let text = assert_fails(
            command.args(["sub", "--once", "--table", &topic]),
            "PostgreSQL at",
        );
        assert!(
            text.contains("certificate verify failed") || text.contains("certificate"),
            "{case}: {text}"
        );
        assert!(
            !text.contains("password=metrics"),
            "{case}: DSN secret printed:\n{text}"
        );
    }
}

#[test]
fn invalid_security_settings_exit_2_naming_the_setting() {
    let stack = Stack::shared();
    let tls = Tls::from_env();
    let topic = unique("badcfg");
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("SSL_CA_FILE", "/nonexistent/ca.pem".into())],
            "SSL_CA_FILE",
        ),
        (
            vec![
                ("SSL_CERT_FILE", tls.file("client.pem")),
                ("SSL_KEY_FILE", tls.file("wrong-client.key")),
            ],
            "does not match",
        ),
        (
            vec![
                ("SSL_CERT_FILE", tls.file("client.pem")),
                ("SSL_KEY_FILE", "/nonexistent/key.pem".into()),
            ],
            "SSL_KEY_FILE",
        ),
        (vec![("KAFKA_SASL_MECHANISM", "GSSAPI".into())], "GSSAPI"),
        (
            vec![(
                "POSTGRESQL_DSN",
                "host=h password=hunter2 port=notaport".into(),
            )],
            "POSTGRESQL_DSN",
        ),
    ];
    for (vars, expected) in cases {
        let mut command = metrics_flow(&stack, &topic);
        for (name, value) in &vars {
            command.env(name, value);
        }
        let output = command.args(["sub", "--once"]).output().unwrap();
        let text = output_text(&output);
        assert_eq!(output.status.code(), Some(2), "{vars:?}: {text}");
        assert_eq!(text.trim_end().lines().count(), 1, "{vars:?}: {text}");
        assert!(
            text.contains(expected),
            "{vars:?}: '{text}' lacks '{expected}'"
        );
        assert!(
            !text.contains("hunter2"),
            "{vars:?}: secret printed: {text}"
        );
    }
}
