//! pub's checker threads: each takes the next due target from the schedule, checks
//! it and publishes the result itself, so a check passes through no other thread.

use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use super::backpressure::Backpressure;
use super::probe::Probe;
use super::producer::Publisher;
use super::schedule::Dispatcher;
use crate::sync::lock;

/// Who made a check: stamped on every result.
pub struct Origin {
    /// `--location`, if given.
    pub location: Option<String>,
    /// This pub process: its host, its pid and a random part, so that a restarted
    /// process on the same host is another probe.
    pub probe: String,
}

impl Origin {
    pub fn new(location: Option<String>) -> Origin {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "pub".to_owned());
        let random = uuid::Uuid::new_v4().simple().to_string();
        Origin {
            location,
            probe: format!("{host}-{}-{}", std::process::id(), &random[..8]),
        }
    }
}

/// What each checker thread needs: where to take due probes from, and where to put
/// results.
#[derive(Clone)]
pub struct Checker {
    pub max_body_bytes: u64,
    pub dispatcher: Arc<Dispatcher<Probe>>,
    pub publisher: Arc<Publisher>,
    pub backpressure: Arc<Backpressure>,
    pub origin: Arc<Origin>,
}

impl Checker {
    /// Checks due targets until the dispatcher has no more; each thread publishes its
    /// own results, so a check passes through no other thread.
    fn work(&self) {
        while let Some(due) = self.dispatcher.next() {
            let mut result = due.work.check(self.max_body_bytes);
            let details = &mut result.details;
            details.schedule_lag_ms = Some(due.late.as_secs_f64() * 1000.0);
            details.location.clone_from(&self.origin.location);
            details.probe = Some(self.origin.probe.clone());
            self.publisher.publish(&result);
            self.backpressure.queued(self.publisher.waiting());
            self.dispatcher.completed(&due);
        }
    }
}

/// Blocking checker threads, counted so the main thread can wait for them to finish.
pub struct CheckerPool {
    running: Arc<(Mutex<usize>, Condvar)>,
}

impl CheckerPool {
    pub fn start(size: usize, checker: Checker) -> CheckerPool {
        let running = Arc::new((Mutex::new(size), Condvar::new()));
        for n in 0..size {
            let checker = checker.clone();
            let running = Arc::clone(&running);
            // Threads are not joined: at a stop, one stuck past its timeout is abandoned.
            thread::Builder::new()
                .name(format!("checker-{n}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    let _exit = CountsExit(running);
                    checker.work();
                })
                .expect("spawning a checker thread");
        }
        CheckerPool { running }
    }

    pub fn running(&self) -> usize {
        *lock(&self.running.0)
    }

    /// Waits up to `limit` for every checker to have stopped; true if they have.
    pub fn wait_until_stopped(&self, limit: Duration) -> bool {
        let (count, changed) = &*self.running;
        let count = lock(count);
        let (count, _) = changed
            .wait_timeout_while(count, limit, |running| *running > 0)
            .unwrap_or_else(|e| e.into_inner());
        *count == 0
    }
}

/// Takes a checker off the running count when its thread ends, even by a panic.
struct CountsExit(Arc<(Mutex<usize>, Condvar)>);

impl Drop for CountsExit {
    fn drop(&mut self) {
        let (count, changed) = &*self.0;
        *lock(count) -= 1;
        changed.notify_all();
    }
}
