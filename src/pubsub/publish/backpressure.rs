//! Backpressure from the producer's queue to the schedule: while Kafka takes results
//! more slowly than pub makes them, no new check starts, so no result is made only to
//! be dropped; the delay shows in `schedule_lag_ms` instead.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::probe::Probe;
use super::schedule::Dispatcher;
use crate::sync::lock;
use crate::throttle::{more_like_it, Throttle};

enum Hold {
    /// Checks start when due.
    Free,
    /// No check starts, since this instant.
    Held(Instant),
    /// Held past the limit: checks start again, and results that find the queue full
    /// are dropped, until it drains.
    GaveUp,
}

pub struct Backpressure {
    dispatcher: Arc<Dispatcher<Probe>>,
    /// Waiting results at which checks stop: room is left for one result of every
    /// check in flight, so those are never dropped.
    high: u64,
    /// ... and at which they start again.
    low: u64,
    limit: Duration,
    hold: Mutex<Hold>,
    log: Mutex<Throttle<&'static str>>,
}

impl Backpressure {
    pub fn new(
        dispatcher: Arc<Dispatcher<Probe>>,
        queue_max: u32,
        in_flight: usize,
        limit: Duration,
    ) -> Backpressure {
        let queue_max = u64::from(queue_max);
        let high = queue_max
            .saturating_sub(in_flight as u64)
            .max(queue_max / 2)
            .max(1);
        Backpressure {
            dispatcher,
            high,
            low: high / 2,
            limit,
            hold: Mutex::new(Hold::Free),
            log: Mutex::default(),
        }
    }

    /// After a result was queued, with `waiting` results now waiting for Kafka.
    pub fn queued(&self, waiting: u64) {
        if waiting < self.high {
            return;
        }
        let mut hold = lock(&self.hold);
        if matches!(*hold, Hold::Free) {
            *hold = Hold::Held(Instant::now());
            self.dispatcher.hold(true);
            if let Some(unlogged) = lock(&self.log).admit("held", Instant::now()) {
                log::warn!(
                    "{waiting} results wait for Kafka: no check starts until it takes them (the delay shows in schedule_lag_ms){}",
                    more_like_it(unlogged)
                );
            }
        }
    }

    /// From the main loop, a few times a second: lets checks start again once the
    /// queue has drained, or once it has been held past the limit.
    pub fn tick(&self, waiting: u64) {
        let mut hold = lock(&self.hold);
        match *hold {
            Hold::Held(since) if waiting <= self.low => {
                *hold = Hold::Free;
                self.dispatcher.hold(false);
                if let Some(unlogged) = lock(&self.log).admit("released", Instant::now()) {
                    log::info!(
                        "Kafka took the queue down to {waiting} after {:.1} s; checking again{}",
                        since.elapsed().as_secs_f64(),
                        more_like_it(unlogged)
                    );
                }
            }
            Hold::Held(since) if since.elapsed() >= self.limit => {
                *hold = Hold::GaveUp;
                self.dispatcher.hold(false);
                log::error!(
                    "{waiting} results still wait for Kafka after {:.0} s (--stall-limit): checking again, and results that do not fit the queue are dropped",
                    since.elapsed().as_secs_f64()
                );
            }
            Hold::GaveUp if waiting <= self.low => {
                *hold = Hold::Free;
                log::info!(
                    "Kafka took the queue down to {waiting}; a full queue holds checks again"
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pressure(limit: Duration) -> Backpressure {
        let dispatcher = Arc::new(Dispatcher::new(Vec::new(), false));
        Backpressure::new(dispatcher, 100, 10, limit)
    }

    #[test]
    fn room_is_left_for_every_check_in_flight() {
        let p = pressure(Duration::from_secs(60));
        assert_eq!((p.high, p.low), (90, 45));
        let tiny = Backpressure::new(
            Arc::new(Dispatcher::new(Vec::new(), false)),
            3,
            32,
            Duration::ZERO,
        );
        assert_eq!((tiny.high, tiny.low), (1, 0));
    }

    #[test]
    fn checks_stop_at_the_high_mark_and_start_below_the_low_one() {
        let p = pressure(Duration::from_secs(60));
        p.queued(89);
        assert!(matches!(*lock(&p.hold), Hold::Free));
        p.queued(90);
        assert!(matches!(*lock(&p.hold), Hold::Held(_)));
        p.tick(46);
        assert!(matches!(*lock(&p.hold), Hold::Held(_)));
        p.tick(45);
        assert!(matches!(*lock(&p.hold), Hold::Free));
    }

    #[test]
    fn past_the_limit_checks_start_again_until_the_queue_drains() {
        let p = pressure(Duration::ZERO);
        p.queued(95);
        p.tick(95);
        assert!(matches!(*lock(&p.hold), Hold::GaveUp));
        // Given up, a full queue holds nothing...
        p.queued(100);
        assert!(matches!(*lock(&p.hold), Hold::GaveUp));
        // ... until it has drained once.
        p.tick(10);
        assert!(matches!(*lock(&p.hold), Hold::Free));
        p.queued(90);
        assert!(matches!(*lock(&p.hold), Hold::Held(_)));
    }
}
