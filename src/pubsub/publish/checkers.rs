//! pub's checker threads: each takes the next due target from the schedule, checks
//! it and publishes the result itself, so a check passes through no other thread.

use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use super::probe::Probe;
use super::producer::Publisher;
use super::schedule::Dispatcher;
use crate::sync::lock;

/// What each checker thread needs: the probes, where to take due ones from, and where
/// to put results.
#[derive(Clone)]
pub struct Checker {
    pub probes: Arc<Vec<Probe>>,
    pub max_body_bytes: u64,
    pub dispatcher: Arc<Dispatcher>,
    pub publisher: Arc<Publisher>,
}

impl Checker {
    /// Checks due targets until the dispatcher has no more; each thread publishes its
    /// own results, so a check passes through no other thread.
    fn work(&self) {
        while let Some(due) = self.dispatcher.next() {
            let mut result = self.probes[due.index].check(self.max_body_bytes);
            result.details.schedule_lag_ms = Some(due.late.as_secs_f64() * 1000.0);
            self.publisher.publish(&result);
            self.dispatcher.completed(due.index);
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
