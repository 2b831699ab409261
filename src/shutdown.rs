//! Ctrl-C and SIGTERM: a flag every loop checks, sleeps that end early when it is set,
//! a second request that exits at once, and retries that give up on a stop request.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// Says what a forced exit abandons, from the state of the run at that moment.
type Abandoned = Box<dyn Fn() -> String + Send>;

/// Shared stop request; clones see the same flag.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<(Mutex<bool>, Condvar)>,
    abandoned: Arc<Mutex<Option<Abandoned>>>,
}

impl Shutdown {
    /// Installs the signal handler once for the whole process. The first request lets
    /// work in hand finish; a second one exits at once, saying what it abandons.
    pub fn install() -> anyhow::Result<Shutdown> {
        let shutdown = Shutdown::default();
        let handle = shutdown.clone();
        ctrlc::set_handler(move || {
            if handle.requested() {
                handle.exit_now();
            }
            log::info!("stop requested; finishing work in hand (a second request exits at once)");
            handle.request();
        })?;
        Ok(shutdown)
    }

    /// Sets what a forced exit reports as abandoned.
    pub fn on_forced_exit(&self, abandoned: impl Fn() -> String + Send + 'static) {
        *lock(&self.abandoned) = Some(Box::new(abandoned));
    }

    fn exit_now(&self) -> ! {
        let abandoned = lock(&self.abandoned)
            .as_ref()
            .map_or_else(|| "the work in hand".to_owned(), |describe| describe());
        eprintln!("metrics-flow: a second stop request: exiting at once; abandoned {abandoned}");
        std::process::exit(1)
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

/// An error that waiting cannot cure, such as a wrong password or a missing database:
/// the retry functions below return it at once instead of retrying.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Permanent(pub anyhow::Error);

/// The first pause between two attempts, doubled after each failure up to a cap.
const FIRST_PAUSE: Duration = Duration::from_millis(250);

/// Calls `attempt` until it succeeds, backing off between failures, until `deadline`
/// has passed since the first try. Each failure is logged so a waiting user sees why.
/// This is for start-up; a service lost later is waited for by [`retry_while_running`].
pub fn retry_until<T>(
    what: &str,
    deadline: Duration,
    shutdown: &Shutdown,
    mut attempt: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    for attempt_number in 1.. {
        let error = match attempt() {
            Ok(value) => return Ok(value),
            Err(error) if error.is::<Permanent>() => return Err(error),
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

/// The longest pause between attempts to reach a service lost mid-run.
const OUTAGE_PAUSE_CAP: Duration = Duration::from_secs(10);
/// How often a long outage is summed up in the log.
const OUTAGE_SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// Calls `attempt` until it succeeds, for as long as it takes, unless the error is
/// [`Permanent`] or a stop is requested. The first failure is logged at once, then a
/// summary at most every OUTAGE_SUMMARY_EVERY; returns the value and how long the
/// outage lasted.
pub fn retry_while_running<T>(
    what: &str,
    shutdown: &Shutdown,
    mut attempt: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Duration)> {
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    let mut last_said: Option<Instant> = None;
    for attempts in 1.. {
        let error = match attempt() {
            Ok(value) => return Ok((value, started.elapsed())),
            Err(error) if error.is::<Permanent>() => return Err(error),
            Err(error) => error,
        };
        match last_said {
            None => log::warn!("{what} unreachable: {error:#}; retrying until it is back"),
            Some(said) if said.elapsed() >= OUTAGE_SUMMARY_EVERY => log::warn!(
                "{what} still unreachable after {:.0} s ({attempts} attempts): {error:#}",
                started.elapsed().as_secs_f64()
            ),
            Some(_) => {}
        }
        if last_said.is_none_or(|said| said.elapsed() >= OUTAGE_SUMMARY_EVERY) {
            last_said = Some(Instant::now());
        }
        if shutdown.sleep(pause) {
            return Err(error.context(format!("{what} unreachable and a stop was requested")));
        }
        pause = (pause * 2).min(OUTAGE_PAUSE_CAP);
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
    fn a_permanent_error_is_not_retried() {
        let mut calls = 0;
        let mut fail = || -> anyhow::Result<()> {
            calls += 1;
            Err(Permanent(anyhow::anyhow!("password authentication failed")).into())
        };
        let shutdown = Shutdown::default();
        let error = retry_until("db", Duration::from_secs(30), &shutdown, &mut fail).unwrap_err();
        assert!(format!("{error:#}").contains("password authentication failed"));
        let error = retry_while_running("db", &shutdown, &mut fail).unwrap_err();
        assert!(error.is::<Permanent>());
        assert_eq!(calls, 2, "each function tried once");
    }

    #[test]
    fn a_running_retry_outlasts_any_deadline_and_ends_on_a_stop() {
        let mut calls = 0;
        let (value, _) = retry_while_running("svc", &Shutdown::default(), || {
            calls += 1;
            if calls < 4 {
                anyhow::bail!("refused")
            }
            Ok(calls)
        })
        .unwrap();
        assert_eq!(value, 4);
        let shutdown = Shutdown::default();
        let stopper = shutdown.clone();
        let error = retry_while_running("svc", &shutdown, || -> anyhow::Result<()> {
            stopper.request();
            anyhow::bail!("refused")
        })
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("stop was requested"),
            "{error:#}"
        );
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
