//! Shared integration-test harness: the real stack's coordinates, a loopback HTTP server
//! that misbehaves on request, the built binary, and PostgreSQL queries.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the stack started by scripts/test.sh listens. Missing values fail the test:
/// these tests are meant to run against real services, never to skip quietly.
pub struct Stack {
    pub broker: String,
    pub dsn: String,
}

impl Stack {
    pub fn from_env() -> Stack {
        let get = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the tests through scripts/test.sh, which starts Kafka and PostgreSQL")
            })
        };
        Stack {
            broker: get("KAFKA_BROKER"),
            dsn: get("POSTGRESQL_DSN"),
        }
    }

    pub fn pg(&self) -> postgres::Client {
        postgres::Client::connect(&self.dsn, postgres::NoTls)
            .expect("connecting to the test PostgreSQL")
    }

    pub fn count(&self, table: &str) -> i64 {
        self.pg()
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .map(|row| row.get(0))
            .unwrap_or(0)
    }
}

/// A name no other test or earlier run has used, for topics, tables and groups.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// The binary under test with the stack's coordinates and a clean environment.
pub fn metrics_flow(stack: &Stack, topic: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_metrics-flow"));
    for var in [
        "TARGET",
        "PATTERN",
        "DELAY",
        "TIMEOUT",
        "KAFKA_TOPIC",
        "POSTGRESQL_TABLE",
        "KAFKA_GROUP",
    ] {
        command.env_remove(var);
    }
    command
        .env("KAFKA_BROKER", &stack.broker)
        .env("POSTGRESQL_DSN", &stack.dsn)
        .env("KAFKA_TOPIC", topic)
        .env("CONNECT_DEADLINE", "20")
        .env("RUST_LOG", "info");
    command
}

/// Runs to completion, failing the test (with both streams shown) unless it exits 0.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command.output().expect("starting metrics-flow");
    assert!(
        output.status.success(),
        "{command:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn spawn(command: &mut Command) -> Child {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting metrics-flow")
}

/// Polls `condition` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    condition()
}

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{name} failed");
}

/// Waits for the child to exit within `limit`, killing it and failing otherwise.
pub fn wait_exit(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, String) {
    let exited = wait_until(limit, || child.try_wait().expect("try_wait").is_some());
    if !exited {
        let _ = child.kill();
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(
        exited,
        "process did not exit within {limit:?}; stderr:\n{stderr}"
    );
    (child.wait().unwrap(), stderr)
}

/// A loopback HTTP/1.1 server. Routes:
/// `/ok` 200 "all is well"; `/delay/<ms>` waits, then 200 "slow but well";
/// `/status/<code>` that status.
pub struct TestServer {
    pub port: u16,
    pub requests: Arc<AtomicUsize>,
}

impl TestServer {
    pub fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = Arc::clone(&counter);
                thread::spawn(move || serve(stream, &counter));
            }
        });
        TestServer { port, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve(stream: TcpStream, counter: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().expect("cloning the socket"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    counter.fetch_add(1, Ordering::SeqCst);
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let (status, body) = route(&path);
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

fn route(path: &str) -> (u16, String) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["ok"] => (200, "all is well".into()),
        ["delay", ms] => {
            thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            (200, "slow but well".into())
        }
        ["status", code] => (code.parse().unwrap_or(500), "status page".into()),
        _ => (404, "no such route".into()),
    }
}

/// A loopback port with nothing listening on it.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
