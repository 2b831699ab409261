//! The binary under test as a process: a clean environment pointing at the stack, a
//! run to completion, and a running process whose log is drained on a thread.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::stack::Stack;

/// The binary under test with the stack's coordinates and a clean environment.
/// MF_TEST_BINARY runs another build instead, e.g. an older one to see a test fail.
pub fn metrics_flow(stack: &Stack, topic: &str) -> Command {
    let binary = std::env::var_os("MF_TEST_BINARY")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_metrics-flow").into());
    let mut command = Command::new(binary);
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

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{name} failed");
}

/// A running process whose stderr a thread keeps reading into memory, so a chatty
/// process never blocks on a full pipe and its log can be searched while it runs.
/// Dropping it kills the process, so a failed test leaves nothing behind.
pub struct Logged {
    child: Child,
    log: Arc<std::sync::Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Logged {
    pub fn spawn(command: &mut Command) -> Logged {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting metrics-flow");
        let mut pipe = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let reader = thread::spawn(move || {
            let mut line = Vec::new();
            while matches!(pipe.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
        });
        Logged {
            child,
            log,
            reader: Some(reader),
        }
    }

    /// What the process has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn signal(&self, name: &str) {
        signal(&self.child, name);
    }

    /// The number of threads the process runs now, from /proc.
    pub fn threads(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("reading the process's status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("a Threads line")
    }

    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_reader();
    }

    /// Ctrl-C, then waits for the process to exit within `limit`; fails the test
    /// unless it exits 0. Returns what it wrote to stderr.
    pub fn stop(&mut self, limit: Duration) -> String {
        self.signal("INT");
        let (status, log) = self.wait_exit(limit);
        assert!(status.success(), "{log}");
        log
    }

    /// Waits for the process to exit within `limit`, killing it and failing otherwise.
    pub fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let exited = wait_until(limit, || self.has_exited());
        if !exited {
            self.kill();
        }
        let status = self.child.wait().expect("waiting for the process");
        self.join_reader();
        let log = self.log();
        assert!(
            exited,
            "process did not exit within {limit:?}; stderr:\n{log}"
        );
        (status, log)
    }

    fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if !self.has_exited() {
            self.kill();
        }
    }
}

/// What pub's summary line at exit says became of its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubSummary {
    /// Acknowledged by Kafka.
    pub delivered: u64,
    /// Refused by Kafka, or failed on the way (`deliveries_failed_total`).
    pub failed: u64,
    /// Never queued: the producer's queue was full (`results_dropped_total`).
    pub dropped: u64,
}

/// Reads pub's last "published N result(s), F failed delivery, D dropped on a full
/// queue" line; fails the test if the log has none.
pub fn pub_summary(log: &str) -> PubSummary {
    let counts = log
        .lines()
        .rev()
        .find_map(|line| {
            let counts: Vec<u64> = line
                .split("] published ")
                .nth(1)?
                .split(", ")
                .map(|part| part.split(' ').next()?.parse().ok())
                .collect::<Option<_>>()?;
            (counts.len() == 3).then_some(counts)
        })
        .unwrap_or_else(|| {
            panic!("no summary line ('published ... result(s)') in pub's log:\n{log}")
        });
    PubSummary {
        delivered: counts[0],
        failed: counts[1],
        dropped: counts[2],
    }
}
