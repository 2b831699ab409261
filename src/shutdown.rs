//! Ctrl-C and SIGTERM: a flag every loop checks, sleeps that end early when it is set,
//! and a second request that exits at once.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_ends_early_on_request() {
        let shutdown = Shutdown::default();
        let other = shutdown.clone();
        let waker = std::thread::spawn(move || other.request());
        assert!(shutdown.sleep(Duration::from_secs(30)));
        waker.join().unwrap();
    }
}
