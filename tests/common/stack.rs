//! The real stack that scripts/test.sh starts, and taking turns with it: tests that
//! stop or restart Kafka or PostgreSQL hold it exclusively, every other test holds it
//! shared, through a file lock that works across threads and test processes alike.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use super::process::{wait_until, Logged};

/// Where the stack started by scripts/test.sh listens. Missing values fail the test:
/// these tests are meant to run against real services, never to skip quietly.
/// Holding one is holding the stack's lock, shared or exclusive, until it is dropped.
#[derive(Clone)]
pub struct Stack {
    pub broker: String,
    pub dsn: String,
    _lock: Arc<File>,
}

impl Stack {
    /// For a test that leaves the services running: many such tests run at once.
    pub fn shared() -> Stack {
        Stack::locked(libc::LOCK_SH)
    }

    /// For a test that stops or restarts a service: it runs alone.
    pub fn exclusive() -> Stack {
        Stack::locked(libc::LOCK_EX)
    }

    fn locked(mode: libc::c_int) -> Stack {
        let get = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the tests through scripts/test.sh, which starts Kafka and PostgreSQL")
            })
        };
        let lock = lock_file();
        // SAFETY: flock(2) on a descriptor this function owns; it blocks until granted.
        let status = unsafe { libc::flock(lock.as_raw_fd(), mode) };
        assert_eq!(status, 0, "flock: {}", std::io::Error::last_os_error());
        Stack {
            broker: get("KAFKA_BROKER"),
            dsn: get("POSTGRESQL_DSN"),
            _lock: Arc::new(lock),
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

    /// The rows of a results table and its distinct ids: equal when no result is
    /// stored twice.
    pub fn rows_and_ids(&self, table: &str) -> (i64, i64) {
        self.pg()
            .query_one(
                &format!("SELECT count(*), count(DISTINCT id) FROM {table}"),
                &[],
            )
            .map(|row| (row.get(0), row.get(1)))
            .unwrap_or_else(|e| panic!("counting the rows and ids of {table}: {e}"))
    }
}

/// The lock file of the stack's state directory, as scripts/stack.sh chooses it. Each
/// call opens it anew: flock(2) locks belong to an open file, so two opens in one
/// process exclude each other as two processes do.
fn lock_file() -> File {
    let dir = stack_dir();
    std::fs::create_dir_all(&dir).expect("creating the stack directory");
    let path = dir.join("tests.lock");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// Counts a table's rows over one connection, reconnecting after a failure (a restarted
/// server), and reading 0 while the table or the server is not there.
pub struct RowCounter {
    dsn: String,
    sql: String,
    client: Option<postgres::Client>,
}

impl RowCounter {
    pub fn new(stack: &Stack, table: &str) -> RowCounter {
        RowCounter {
            dsn: stack.dsn.clone(),
            sql: format!("SELECT count(*) FROM {table}"),
            client: None,
        }
    }

    pub fn rows(&mut self) -> i64 {
        // A connection from before a restart fails once; a fresh one answers.
        match self.try_rows() {
            Some(rows) => rows,
            None => self.try_rows().unwrap_or(0),
        }
    }

    fn try_rows(&mut self) -> Option<i64> {
        if self.client.is_none() {
            self.client = postgres::Client::connect(&self.dsn, postgres::NoTls).ok();
        }
        let client = self.client.as_mut()?;
        match client.query_one(&self.sql, &[]) {
            Ok(row) => Some(row.get(0)),
            Err(_) => {
                self.client = None;
                None
            }
        }
    }
}

/// How long [`wait_rows`] waits: far more than an ingest of these tests' sizes needs,
/// so only a broken run reaches it.
pub const ROWS_LIMIT: Duration = Duration::from_secs(150);

/// Polls until the table holds at least `rows` rows, failing with the subscriber's log
/// if it exits or [`ROWS_LIMIT`] passes first. Returns the count seen.
pub fn wait_rows(counter: &mut RowCounter, rows: i64, subscriber: &mut Logged) -> i64 {
    let mut seen = 0;
    let mut exited = false;
    let reached = wait_until(ROWS_LIMIT, || {
        seen = counter.rows();
        exited = subscriber.has_exited();
        seen >= rows || exited
    });
    assert!(
        reached && seen >= rows,
        "waited for {rows} rows, saw {seen}{}; sub's log:\n{}",
        if exited { " and sub exited" } else { "" },
        subscriber.log()
    );
    seen
}

/// Runs `scripts/stack.sh ARGS...` of this repository with the test process's
/// environment, so MF_STACK_DIR, the MF_*_PORT variables and MF_TLS select the stack
/// the tests run against. Err holds the exit status and the script's stderr.
pub fn stack_script(args: &[&str]) -> Result<(), String> {
    stack_script_output(args).map(drop)
}

/// [`stack_script`], returning what the script wrote to stdout (a Kafka tool's answer,
/// say).
pub fn stack_script_output(args: &[&str]) -> Result<String, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack.sh");
    let output = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| format!("could not run {script}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{script} {} exited with {}:\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A stopped service of the stack. `start` brings it back and fails the test if the
/// script does; if the test fails first, dropping the guard still starts it, so later
/// tests find the stack whole.
pub struct Stopped {
    service: &'static str,
    running: bool,
}

pub fn stop_service(service: &'static str) -> Stopped {
    if let Err(error) = stack_script(&["stop", service]) {
        panic!("could not stop {service} with scripts/stack.sh: {error}");
    }
    Stopped {
        service,
        running: false,
    }
}

impl Stopped {
    pub fn start(mut self) {
        self.running = true;
        if let Err(error) = stack_script(&["start", self.service]) {
            panic!(
                "could not start {} again with scripts/stack.sh: {error}",
                self.service
            );
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.running {
            if let Err(error) = stack_script(&["start", self.service]) {
                eprintln!("could not start {} again: {error}", self.service);
            }
        }
    }
}

/// The stack's state directory, as scripts/stack.sh chooses it.
fn stack_dir() -> std::path::PathBuf {
    std::env::var_os("MF_STACK_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/.stack").into())
}

/// Kafka frozen with SIGSTOP, as a stalled broker (a long GC pause, a saturated
/// disk) is: connections stay open and nothing answers. Dropping it thaws Kafka.
pub struct Frozen {
    pid: String,
}

pub fn freeze_kafka() -> Frozen {
    let pid_file = stack_dir().join("kafka/kafka.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", pid_file.display()))
        .trim()
        .to_owned();
    let status = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    assert!(status.success(), "kill -STOP {pid} failed");
    Frozen { pid }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.pid]).status();
    }
}
