//! When each target is due, and the hand-out of due targets to checker threads that
//! pull their own work (no dispatcher thread between them and the schedule).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// A check that starts later than this after its due time counts as late.
const LATE_AFTER: Duration = Duration::from_secs(1);
/// The shortest gap between two "cannot keep up" warnings.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// When each target is due next. A target is re-armed only once its check completes,
/// so one target never has two checks in flight.
struct Schedule {
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    last_due: Vec<Instant>,
    intervals: Vec<Duration>,
}

impl Schedule {
    /// `all_now`: every target is due at once instead of spread over its interval.
    fn new(intervals: &[Duration], all_now: bool) -> Schedule {
        let start = Instant::now();
        let count = intervals.len();
        // Spread first checks over one interval so many targets do not fire together.
        let first_due: Vec<Instant> = intervals
            .iter()
            .enumerate()
            .map(|(i, interval)| {
                if all_now {
                    start
                } else {
                    start + interval.mul_f64(i as f64 / count as f64)
                }
            })
            .collect();
        let due = first_due
            .iter()
            .enumerate()
            .map(|(i, at)| Reverse((*at, i)))
            .collect();
        Schedule {
            due,
            last_due: first_due,
            intervals: intervals.to_vec(),
        }
    }

    fn pop_due(&mut self, now: Instant) -> Option<(usize, Instant)> {
        let Reverse((at, index)) = *self.due.peek()?;
        if at > now {
            return None;
        }
        self.due.pop();
        Some((index, at))
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }

    /// Re-arms a target whose check has finished and returns when it is due again.
    /// A one-shot run never comes here: nothing is re-armed in it.
    fn rearm(&mut self, index: usize) -> Instant {
        // Keep the cadence of the original slot; if the check overran its slot,
        // start the next one as soon as possible rather than bursting to catch up.
        let next = (self.last_due[index] + self.intervals[index]).max(Instant::now());
        self.last_due[index] = next;
        self.due.push(Reverse((next, index)));
        next
    }

    fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

/// Counts checks that started late and says so now and then.
#[derive(Default)]
struct LagReport {
    late: u64,
    worst: Duration,
    last_warning: Option<Instant>,
}

impl LagReport {
    fn record(&mut self, lag: Duration) {
        if lag > LATE_AFTER {
            self.late += 1;
            self.worst = self.worst.max(lag);
        }
    }

    fn maybe_warn(&mut self) {
        if self.late == 0 || self.last_warning.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        log::warn!(
            "the checker pool cannot keep up: {} check(s) started more than {:?} late, worst {:.1} s; raise --concurrency",
            self.late,
            LATE_AFTER,
            self.worst.as_secs_f64()
        );
        self.late = 0;
        self.worst = Duration::ZERO;
        self.last_warning = Some(Instant::now());
    }
}

/// A target handed to a checker: its index and how late it starts.
pub struct Due {
    pub index: usize,
    pub late: Duration,
}

struct State {
    schedule: Schedule,
    lag: LagReport,
    stopping: bool,
    /// Whether some idle checker is already sleeping until the next due time; the
    /// others sleep without a deadline, so one due time wakes one thread, not all.
    timer_held: bool,
}

/// The schedule shared by the checker threads. Each takes the next due target itself,
/// so a check costs no thread hand-off when targets are already due.
pub struct Dispatcher {
    /// Consistent across a panicking checker: every change to it is a single heap
    /// operation or flag store.
    state: Mutex<State>,
    /// A one-shot run re-arms nothing: its completions need not take the lock, and once
    /// the schedule is empty there is no more work.
    once: bool,
    /// The idle checker that holds the timer waits here.
    timer: Condvar,
    /// Every other idle checker waits here.
    idle: Condvar,
}

impl Dispatcher {
    /// `once`: every target is due now and none is re-armed.
    pub fn new(intervals: &[Duration], once: bool) -> Dispatcher {
        Dispatcher {
            state: Mutex::new(State {
                schedule: Schedule::new(intervals, once),
                lag: LagReport::default(),
                stopping: false,
                timer_held: false,
            }),
            once,
            timer: Condvar::new(),
            idle: Condvar::new(),
        }
    }

    /// Blocks until a target is due and hands it out; None once the run is over (a stop
    /// was requested, or a one-shot run has handed out every target).
    pub fn next(&self) -> Option<Due> {
        let mut state = lock(&self.state);
        loop {
            if state.stopping || (self.once && state.schedule.is_empty()) {
                return None;
            }
            let now = Instant::now();
            if let Some((index, due)) = state.schedule.pop_due(now) {
                let late = now.saturating_duration_since(due);
                state.lag.record(late);
                return Some(Due { index, late });
            }
            if state.timer_held {
                state = self.idle.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.timer_held = true;
            state = match state.schedule.next_due() {
                Some(at) => {
                    let wait = at.saturating_duration_since(now);
                    let woken = self.timer.wait_timeout(state, wait);
                    woken.unwrap_or_else(|e| e.into_inner()).0
                }
                None => self.timer.wait(state).unwrap_or_else(|e| e.into_inner()),
            };
            state.timer_held = false;
            // This thread is about to check (or re-take the timer); another idle one
            // takes over the wait for the target after.
            self.idle.notify_one();
        }
    }

    /// A check has finished: its target is due again one interval after its slot.
    pub fn completed(&self, index: usize) {
        if self.once {
            return;
        }
        let mut state = lock(&self.state);
        let earliest_before = state.schedule.next_due();
        let next = state.schedule.rearm(index);
        // Only a new earliest due time changes how long the idle checkers sleep.
        if earliest_before.is_none_or(|at| next < at) {
            if state.timer_held {
                self.timer.notify_one();
            } else {
                self.idle.notify_one();
            }
        }
    }

    /// Hands out nothing more; idle checkers return from `next` at once.
    pub fn stop(&self) {
        lock(&self.state).stopping = true;
        self.timer.notify_all();
        self.idle.notify_all();
    }

    /// Warns (at most every few seconds) when checks have been starting late.
    pub fn warn_if_lagging(&self) {
        lock(&self.state).lag.maybe_warn();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{mpsc, Arc};
    use std::thread;

    #[test]
    fn first_checks_are_spread_over_one_interval() {
        let schedule = Schedule::new(&[Duration::from_secs(40); 4], false);
        let mut dues: Vec<Instant> = schedule.last_due.clone();
        dues.sort();
        let gaps: Vec<u64> = dues.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert_eq!(gaps, vec![10, 10, 10]);
    }

    #[test]
    fn once_hands_out_each_target_one_time_then_ends() {
        let dispatcher = Dispatcher::new(&[Duration::from_secs(30); 3], true);
        let mut handed: Vec<usize> = std::iter::from_fn(|| dispatcher.next())
            .map(|due| due.index)
            .collect();
        handed.sort();
        assert_eq!(handed, vec![0, 1, 2]);
        dispatcher.completed(0);
        assert!(dispatcher.next().is_none());
    }

    #[test]
    fn a_completed_target_is_due_one_interval_after_its_slot() {
        let mut schedule = Schedule::new(&[Duration::from_secs(30)], false);
        let (index, due) = schedule.pop_due(Instant::now()).unwrap();
        assert_eq!(schedule.rearm(index), due + Duration::from_secs(30));
        assert_eq!(schedule.next_due(), Some(due + Duration::from_secs(30)));
    }

    #[test]
    fn an_idle_checker_wakes_when_its_target_comes_due() {
        let interval = Duration::from_millis(50);
        let created = Instant::now();
        let dispatcher = Arc::new(Dispatcher::new(&[interval], false));
        let first = dispatcher.next().expect("due at once");
        dispatcher.completed(first.index);
        // Several idle threads: exactly one gets the target, one interval after its slot.
        let (handed_out, results) = mpsc::channel();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let dispatcher = Arc::clone(&dispatcher);
                let handed_out = handed_out.clone();
                thread::spawn(move || {
                    let due = dispatcher.next().map(|due| (due.index, Instant::now()));
                    handed_out.send(due).unwrap();
                })
            })
            .collect();
        let (index, at) = results
            .recv()
            .unwrap()
            .expect("the first to return has work");
        dispatcher.stop();
        waiters.into_iter().for_each(|w| w.join().unwrap());
        assert_eq!(index, first.index);
        assert!(at >= created + interval, "handed out early");
        let others: Vec<_> = results.try_iter().collect();
        assert!(
            others.iter().all(Option::is_none),
            "handed out twice: {others:?}"
        );
        assert_eq!(others.len(), 2);
    }

    #[test]
    fn stop_releases_every_idle_checker() {
        let dispatcher = Arc::new(Dispatcher::new(&[Duration::from_secs(3600); 2], false));
        // Both targets are due within the hour but not now (spread), bar the first.
        let _first = dispatcher.next();
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let dispatcher = Arc::clone(&dispatcher);
                thread::spawn(move || dispatcher.next().is_none())
            })
            .collect();
        dispatcher.stop();
        for waiter in waiters {
            assert!(
                waiter.join().unwrap(),
                "an idle checker got work after stop"
            );
        }
    }
}
