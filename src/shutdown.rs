//! Ctrl-C and SIGTERM: a flag every loop checks, and sleeps that end early when it is set.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// Shared stop request; clones see the same flag.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl Shutdown {
    /// Installs the signal handler once for the whole process.
    pub fn install() -> anyhow::Result<Shutdown> {
        let shutdown = Shutdown::default();
        let handle = shutdown.clone();
        ctrlc::set_handler(move || {
            log::info!("stop requested; finishing work in hand");
            handle.request();
        })?;
        Ok(shutdown)
    }

    pub fn request(&self) {
        let (flag, wake) = &*self.inner;
        *lock(flag) = true;
        wake.notify_all();
    }

    pub fn requested(&self) -> bool {
        *lock(&self.inner.0)
    }

    /// Sleeps for `duration` unless a stop is requested first; returns true if it was.
    pub fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let (flag, wake) = &*self.inner;
        let mut stopped = lock(flag);
        while !*stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            stopped = wake
                .wait_timeout(stopped, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *stopped
    }
}

/// Calls `attempt` until it succeeds, backing off between failures, until `deadline`
/// has passed since the first try. Each failure is logged so a waiting user sees why.
pub fn retry_until<T>(
    what: &str,
    deadline: Duration,
    shutdown: &Shutdown,
    mut attempt: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(250);
    for attempt_number in 1.. {
        let error = match attempt() {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let waited = started.elapsed();
        if waited >= deadline || shutdown.requested() {
            return Err(error.context(format!(
                "{what} still unreachable after {:.0} s",
                waited.as_secs_f64()
            )));
        }
        log::warn!("{what} unreachable (attempt {attempt_number}): {error:#}; retrying");
        pause = pause.min(deadline - waited);
        if shutdown.sleep(pause) {
            return Err(error.context(format!("{what} unreachable and a stop was requested")));
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
    unreachable!("the retry loop only ends by returning")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_gives_up_at_the_deadline_with_context() {
        let mut calls = 0;
        let result: anyhow::Result<()> = retry_until(
            "test service",
            Duration::from_millis(300),
            &Shutdown::default(),
            || {
                calls += 1;
                anyhow::bail!("connection refused")
            },
        );
        let message = format!("{:#}", result.unwrap_err());
        assert!(
            message.contains("test service still unreachable"),
            "{message}"
        );
        assert!(message.contains("connection refused"), "{message}");
        assert!(calls >= 2, "retried only {calls} times");
    }

    #[test]
    fn retry_returns_the_first_success() {
        let mut calls = 0;
        let value = retry_until("svc", Duration::from_secs(5), &Shutdown::default(), || {
            calls += 1;
            if calls < 3 {
                anyhow::bail!("not yet")
            }
            Ok(calls)
        })
        .unwrap();
        assert_eq!(value, 3);
    }

    #[test]
    fn sleep_ends_early_on_request() {
        let shutdown = Shutdown::default();
        let other = shutdown.clone();
        let waker = std::thread::spawn(move || other.request());
        assert!(shutdown.sleep(Duration::from_secs(30)));
        waker.join().unwrap();
    }
}
