//! Retrying a service that does not answer: within a deadline at start-up, for as long
//! as it takes once running, never for an error that waiting cannot cure.

use std::time::{Duration, Instant};

use crate::shutdown::Shutdown;

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
}
