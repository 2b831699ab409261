//! When each target is due, and the hand-out of due targets to checker threads that
//! pull their own work (no dispatcher thread between them and the schedule).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// A check that starts later than this after its due time counts as late.
const LATE_AFTER: Duration = Duration::from_secs(1);
/// The shortest gap between two "cannot keep up" warnings.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// One place in the schedule: the work in it (a probe), its interval, and which
/// version of it this is.
struct Slot<T> {
    work: Option<Arc<T>>,
    interval: Duration,
    /// Bumped whenever the slot's work changes, so that what was queued for an older
    /// version (and a check of it still in flight) is not re-armed.
    generation: u64,
    last_due: Instant,
}

/// When each target is due next. A target is re-armed only once its check completes,
/// so one target never has two checks in flight. Targets can come and go (fleet
/// mode): a slot emptied or changed leaves stale entries in the heap, skipped when
/// they come up.
struct Schedule<T> {
    due: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    slots: Vec<Slot<T>>,
    free: Vec<usize>,
}

impl<T> Schedule<T> {
    fn new() -> Schedule<T> {
        Schedule {
            due: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Places work first due at `first_due`; returns its slot.
    fn place(&mut self, work: Arc<T>, interval: Duration, first_due: Instant) -> usize {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    work: None,
                    interval,
                    generation: 0,
                    last_due: first_due,
                });
                self.slots.len() - 1
            }
        };
        self.fill(slot, work, interval, first_due);
        slot
    }

    fn fill(&mut self, slot: usize, work: Arc<T>, interval: Duration, due: Instant) {
        let entry = &mut self.slots[slot];
        entry.work = Some(work);
        entry.interval = interval;
        entry.generation += 1;
        entry.last_due = due;
        self.due.push(Reverse((due, slot, entry.generation)));
    }

    fn remove(&mut self, slot: usize) {
        let entry = &mut self.slots[slot];
        if entry.work.take().is_some() {
            entry.generation += 1;
            self.free.push(slot);
        }
    }

    fn is_current(&self, slot: usize, generation: u64) -> bool {
        let entry = &self.slots[slot];
        entry.work.is_some() && entry.generation == generation
    }

    /// Drops the stale entries at the top of the heap.
    fn skip_stale(&mut self) {
        while let Some(&Reverse((_, slot, generation))) = self.due.peek() {
            if self.is_current(slot, generation) {
                return;
            }
            self.due.pop();
        }
    }

    fn pop_due(&mut self, now: Instant) -> Option<Due<T>> {
        self.skip_stale();
        let Reverse((at, slot, generation)) = *self.due.peek()?;
        if at > now {
            return None;
        }
        self.due.pop();
        let work = Arc::clone(self.slots[slot].work.as_ref()?);
        Some(Due {
            slot,
            generation,
            work,
            late: now.saturating_duration_since(at),
        })
    }

    fn next_due(&mut self) -> Option<Instant> {
        self.skip_stale();
        self.due.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Re-arms a target whose check has finished and returns when it is due again;
    /// nothing if the target was changed or removed meanwhile. A one-shot run never
    /// comes here: nothing is re-armed in it.
    fn rearm(&mut self, slot: usize, generation: u64) -> Option<Instant> {
        if !self.is_current(slot, generation) {
            return None;
        }
        let entry = &mut self.slots[slot];
        // Keep the cadence of the original slot; if the check overran its slot,
        // start the next one as soon as possible rather than bursting to catch up.
        let next = (entry.last_due + entry.interval).max(Instant::now());
        entry.last_due = next;
        self.due.push(Reverse((next, slot, generation)));
        Some(next)
    }

    fn is_empty(&mut self) -> bool {
        self.skip_stale();
        self.due.is_empty()
    }
}

/// First due times for `count` targets starting `from`: spread over each one's
/// interval so many targets do not fire together, or all at once.
fn spread(from: Instant, intervals: &[Duration], all_now: bool) -> Vec<Instant> {
    let count = intervals.len();
    intervals
        .iter()
        .enumerate()
        .map(|(i, interval)| {
            if all_now {
                from
            } else {
                from + interval.mul_f64(i as f64 / count as f64)
            }
        })
        .collect()
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

/// A target handed to a checker: its work, how late it starts, and its place.
pub struct Due<T> {
    pub work: Arc<T>,
    pub late: Duration,
    slot: usize,
    generation: u64,
}

struct State<T> {
    schedule: Schedule<T>,
    lag: LagReport,
    stopping: bool,
    /// No target is handed out while held (see `backpressure`).
    held: bool,
    /// Whether some idle checker is already sleeping until the next due time; the
    /// others sleep without a deadline, so one due time wakes one thread, not all.
    timer_held: bool,
}

/// The schedule shared by the checker threads. Each takes the next due target itself,
/// so a check costs no thread hand-off when targets are already due.
pub struct Dispatcher<T> {
    /// Consistent across a panicking checker: every change to it is a single heap
    /// operation or flag store.
    state: Mutex<State<T>>,
    /// A one-shot run re-arms nothing: its completions need not take the lock, and once
    /// the schedule is empty there is no more work.
    once: bool,
    /// The idle checker that holds the timer waits here.
    timer: Condvar,
    /// Every other idle checker waits here.
    idle: Condvar,
}

impl<T> Dispatcher<T> {
    /// `once`: every target is due now and none is re-armed. Each work item comes
    /// with its interval.
    pub fn new(work: Vec<(T, Duration)>, once: bool) -> Dispatcher<T> {
        let mut schedule = Schedule::new();
        let intervals: Vec<Duration> = work.iter().map(|(_, interval)| *interval).collect();
        let dues = spread(Instant::now(), &intervals, once);
        for ((item, interval), due) in work.into_iter().zip(dues) {
            schedule.place(Arc::new(item), interval, due);
        }
        Dispatcher {
            state: Mutex::new(State {
                schedule,
                lag: LagReport::default(),
                stopping: false,
                held: false,
                timer_held: false,
            }),
            once,
            timer: Condvar::new(),
            idle: Condvar::new(),
        }
    }

    /// Blocks until a target is due and hands it out; None once the run is over (a stop
    /// was requested, or a one-shot run has handed out every target).
    pub fn next(&self) -> Option<Due<T>> {
        let mut state = lock(&self.state);
        loop {
            if state.stopping || (self.once && state.schedule.is_empty()) {
                return None;
            }
            if state.held {
                state = self.idle.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let now = Instant::now();
            if let Some(due) = state.schedule.pop_due(now) {
                state.lag.record(due.late);
                return Some(due);
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

    /// A check has finished: its target is due again one interval after its slot,
    /// unless it was changed or removed meanwhile.
    pub fn completed(&self, due: &Due<T>) {
        if self.once {
            return;
        }
        let mut state = lock(&self.state);
        let earliest_before = state.schedule.next_due();
        if let Some(next) = state.schedule.rearm(due.slot, due.generation) {
            self.wake_if_earlier(&*state, earliest_before, next);
        }
    }

    /// Adds targets, their first checks spread over their intervals from now; returns
    /// their slots, in order.
    pub fn add(&self, work: Vec<(T, Duration)>) -> Vec<usize> {
        let mut state = lock(&self.state);
        let earliest_before = state.schedule.next_due();
        let intervals: Vec<Duration> = work.iter().map(|(_, interval)| *interval).collect();
        let dues = spread(Instant::now(), &intervals, false);
        let slots = work
            .into_iter()
            .zip(&dues)
            .map(|((item, interval), &due)| state.schedule.place(Arc::new(item), interval, due))
            .collect();
        if let Some(&first) = dues.iter().min() {
            self.wake_if_earlier(&*state, earliest_before, first);
        }
        slots
    }

    /// Changes the target in a slot; the new version is due at once. A check of the
    /// old one still in flight finishes, and is not re-armed.
    pub fn replace(&self, slot: usize, item: T, interval: Duration) {
        let mut state = lock(&self.state);
        let earliest_before = state.schedule.next_due();
        let now = Instant::now();
        state.schedule.fill(slot, Arc::new(item), interval, now);
        self.wake_if_earlier(&*state, earliest_before, now);
    }

    /// How many targets are scheduled now.
    pub fn scheduled(&self) -> usize {
        let state = lock(&self.state);
        state.schedule.slots.len() - state.schedule.free.len()
    }

    /// Stops scheduling the target in a slot; a check of it in flight finishes.
    pub fn remove(&self, slot: usize) {
        lock(&self.state).schedule.remove(slot);
    }

    /// Only a new earliest due time changes how long the idle checkers sleep.
    fn wake_if_earlier(&self, state: &State<T>, earliest_before: Option<Instant>, next: Instant) {
        if earliest_before.is_none_or(|at| next < at) {
            if state.timer_held {
                self.timer.notify_one();
            } else {
                self.idle.notify_one();
            }
        }
    }

    /// Holds every target back, or lets them go again; a held target is handed out,
    /// late, once released.
    pub fn hold(&self, held: bool) {
        lock(&self.state).held = held;
        if !held {
            self.timer.notify_all();
            self.idle.notify_all();
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
    use std::sync::mpsc;
    use std::thread;

    /// Work items named by number, each with the same interval.
    fn numbered(count: usize, interval: Duration) -> Vec<(usize, Duration)> {
        (0..count).map(|n| (n, interval)).collect()
    }

    #[test]
    fn first_checks_are_spread_over_one_interval() {
        let mut dues = spread(Instant::now(), &[Duration::from_secs(40); 4], false);
        dues.sort();
        let gaps: Vec<u64> = dues.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert_eq!(gaps, vec![10, 10, 10]);
    }

    #[test]
    fn once_hands_out_each_target_one_time_then_ends() {
        let dispatcher = Dispatcher::new(numbered(3, Duration::from_secs(30)), true);
        let dues: Vec<Due<usize>> = std::iter::from_fn(|| dispatcher.next()).collect();
        let mut handed: Vec<usize> = dues.iter().map(|due| *due.work).collect();
        handed.sort();
        assert_eq!(handed, vec![0, 1, 2]);
        dispatcher.completed(&dues[0]);
        assert!(dispatcher.next().is_none());
    }

    #[test]
    fn a_completed_target_is_due_one_interval_after_its_slot() {
        let mut schedule = Schedule::new();
        let start = Instant::now();
        schedule.place(Arc::new(()), Duration::from_secs(30), start);
        let due = schedule.pop_due(start).unwrap();
        let next = start + Duration::from_secs(30);
        assert_eq!(schedule.rearm(due.slot, due.generation), Some(next));
        assert_eq!(schedule.next_due(), Some(next));
    }

    #[test]
    fn a_removed_or_changed_target_is_not_rearmed_and_its_slot_is_reused() {
        let mut schedule = Schedule::new();
        let start = Instant::now();
        let interval = Duration::from_secs(30);
        let a = schedule.place(Arc::new("a"), interval, start);
        let b = schedule.place(Arc::new("b"), interval, start);
        let in_flight = schedule.pop_due(start).unwrap();
        assert_eq!(*in_flight.work, "a");
        // Removed while its check runs: the check's completion re-arms nothing.
        schedule.remove(a);
        assert_eq!(schedule.rearm(in_flight.slot, in_flight.generation), None);
        // b's queued entry goes stale when b changes; only the new version comes up.
        schedule.fill(b, Arc::new("b2"), interval, start);
        let due = schedule.pop_due(start).unwrap();
        assert_eq!(*due.work, "b2");
        assert!(
            schedule.pop_due(start).is_none(),
            "the stale entry of b came up"
        );
        assert!(schedule.is_empty());
        // The freed slot takes the next target.
        assert_eq!(schedule.place(Arc::new("c"), interval, start), a);
        assert_eq!(*schedule.pop_due(start).unwrap().work, "c");
    }

    #[test]
    fn an_added_target_wakes_an_idle_checker() {
        let dispatcher = Arc::new(Dispatcher::new(Vec::new(), false));
        let waiter = {
            let dispatcher = Arc::clone(&dispatcher);
            thread::spawn(move || dispatcher.next().map(|due| *due.work))
        };
        dispatcher.add(vec![("new", Duration::from_secs(60))]);
        assert_eq!(waiter.join().unwrap(), Some("new"));
    }

    #[test]
    fn an_idle_checker_wakes_when_its_target_comes_due() {
        let interval = Duration::from_millis(50);
        let created = Instant::now();
        let dispatcher = Arc::new(Dispatcher::new(numbered(1, interval), false));
        let first = dispatcher.next().expect("due at once");
        dispatcher.completed(&first);
        // Several idle threads: exactly one gets the target, one interval after its slot.
        let (handed_out, results) = mpsc::channel();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let dispatcher = Arc::clone(&dispatcher);
                let handed_out = handed_out.clone();
                thread::spawn(move || {
                    let due = dispatcher.next().map(|due| (*due.work, Instant::now()));
                    handed_out.send(due).unwrap();
                })
            })
            .collect();
        let (work, at) = results
            .recv()
            .unwrap()
            .expect("the first to return has work");
        dispatcher.stop();
        waiters.into_iter().for_each(|w| w.join().unwrap());
        assert_eq!(work, *first.work);
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
        let dispatcher = Arc::new(Dispatcher::new(
            numbered(2, Duration::from_secs(3600)),
            false,
        ));
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
