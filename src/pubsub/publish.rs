//! `pub`: per-target schedules, a bounded pool of blocking checkers, and the Kafka producer.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::kafka;
use super::message::CheckResult;
use super::probe::Prober;
use super::targets::{self, Target};
use crate::cli::PubArgs;
use crate::error::UsageError;
use crate::shutdown::Shutdown;

/// How long to wait for outstanding deliveries before giving up at exit.
const FLUSH_LIMIT: Duration = Duration::from_secs(30);
/// A check that starts later than this after its due time counts as late.
const LATE_AFTER: Duration = Duration::from_secs(1);
/// The longest the loop blocks waiting for a result, so stop requests and producer
/// events are served promptly.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How often a long run logs what it has done.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

pub fn run(args: PubArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let defaults = targets::Defaults {
        pattern: args.pattern.clone(),
        timeout: args.timeout,
        interval: args.delay,
    };
    let targets = targets::load(
        &args.targets,
        args.targets_file.as_deref(),
        args.shard,
        &defaults,
    )?;
    if targets.is_empty() {
        let why = match args.shard {
            Some(_) => "no targets in this shard",
            None => "no targets: give --target URL (TARGET) or --targets-file (TARGETS_FILE)",
        };
        return Err(UsageError::new(why).into());
    }
    let producer = build_producer(&args)?;
    let known_topics = kafka::wait_for_brokers(
        producer.client(),
        || producer.poll(Duration::ZERO),
        &args.kafka,
        &shutdown,
    )?;
    kafka::ensure_topic(
        &args.kafka,
        &known_topics,
        args.partitions.unwrap_or(-1),
        args.replication_factor.unwrap_or(-1),
    )?;
    let prober = Prober::new(&targets, args.max_body_bytes)?;
    let targets = Arc::new(targets);
    let pool = CheckerPool::start(usize::from(args.concurrency), prober, Arc::clone(&targets));
    let mut publisher = Publisher {
        producer: &producer,
        topic: &args.kafka.topic,
        dropped: 0,
        progress: Progress::new(),
    };
    let intervals: Vec<Duration> = targets.iter().map(|t| t.interval).collect();
    let mut schedule = Schedule::new(&intervals, args.once);
    log::info!(
        "checking {} target(s) every {:?} with up to {} at once",
        targets.len(),
        args.delay,
        args.concurrency
    );
    run_rounds(
        &mut schedule,
        &pool,
        &mut publisher,
        &shutdown,
        args.timeout,
    );
    drop(pool);
    finish(&producer, publisher.dropped, args.once)
}

/// Dispatches due checks while the pool has room and publishes results as they come.
fn run_rounds(
    schedule: &mut Schedule,
    pool: &CheckerPool,
    publisher: &mut Publisher,
    shutdown: &Shutdown,
    check_timeout: Duration,
) {
    let mut in_flight = 0usize;
    let mut lag = LagReport::default();
    let mut stop_deadline: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if shutdown.requested() {
            let deadline =
                *stop_deadline.get_or_insert(now + check_timeout + Duration::from_secs(5));
            if in_flight == 0 || now >= deadline {
                if in_flight > 0 {
                    log::warn!("{in_flight} check(s) still running at exit; not published");
                }
                return;
            }
        } else {
            while in_flight < pool.size {
                let Some((index, due)) = schedule.pop_due(now) else {
                    break;
                };
                let late = now.saturating_duration_since(due);
                lag.record(late);
                pool.dispatch(index, late);
                in_flight += 1;
            }
            if schedule.is_finished() && in_flight == 0 {
                return;
            }
        }
        // With the pool full, only a result can change anything: wait for one rather
        // than spin on targets that are due but cannot start.
        let next_due = schedule.next_due().filter(|_| in_flight < pool.size);
        let wait = next_due
            .map_or(IDLE_WAIT, |due| due.saturating_duration_since(now))
            .min(IDLE_WAIT);
        let first = match pool.results.recv_timeout(wait) {
            Ok(first) => Some(first),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Whatever else has finished meanwhile is taken in the same pass.
        for (index, result) in first.into_iter().chain(pool.results.try_iter()) {
            in_flight -= 1;
            schedule.completed(index);
            publisher.publish(&result);
        }
        publisher.producer.poll(Duration::ZERO);
        lag.maybe_warn();
        publisher
            .progress
            .maybe_report(publisher.producer.in_flight_count());
    }
}

fn finish(
    producer: &BaseProducer<DeliveryCounter>,
    dropped: u64,
    once: bool,
) -> anyhow::Result<()> {
    log::info!("flushing {} queued result(s)", producer.in_flight_count());
    if !flush(producer) {
        log::error!(
            "gave up flushing after {FLUSH_LIMIT:?}: {} result(s) not delivered",
            producer.in_flight_count()
        );
    }
    let context = producer.context();
    let failed = context.failed.load(Ordering::Relaxed);
    log::info!(
        "published {} result(s), {} failed delivery, {} dropped on a full queue",
        context.delivered.load(Ordering::Relaxed),
        failed,
        dropped
    );
    let undelivered = failed + dropped + producer.in_flight_count().max(0) as u64;
    // A one-shot run exists to deliver its results, so losing any is a failure. A
    // long-running one has already said so loudly, and a stop request still exits 0.
    if once && undelivered > 0 {
        anyhow::bail!("{undelivered} result(s) were not delivered to Kafka");
    }
    Ok(())
}

/// Waits for every queued result to be delivered, up to FLUSH_LIMIT. Polls in short
/// steps: rdkafka's own flush sleeps in 100 ms steps, which a short run would feel.
fn flush(producer: &BaseProducer<DeliveryCounter>) -> bool {
    let deadline = Instant::now() + FLUSH_LIMIT;
    while producer.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        producer.poll(Duration::from_millis(5));
    }
    true
}

fn build_producer(args: &PubArgs) -> anyhow::Result<BaseProducer<DeliveryCounter>> {
    let mut config = kafka::client_config(&args.kafka)?;
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Results wait here while Kafka is away; past this bound they are dropped loudly.
        .set("queue.buffering.max.messages", args.queue_max.to_string())
        // No age limit: a result waits for Kafka as long as the queue has room.
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5");
    config
        .create_with_context(DeliveryCounter::default())
        .context("creating the Kafka producer")
}

/// Counts delivery reports; every failure is logged once.
#[derive(Default)]
struct DeliveryCounter {
    delivered: AtomicU64,
    failed: AtomicU64,
    last_error: kafka::LastError,
}

impl ClientContext for DeliveryCounter {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.last_error.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.last_error.error(&error, reason);
    }
}

impl kafka::KeepsLastError for DeliveryCounter {
    fn last_error(&self) -> &kafka::LastError {
        &self.last_error
    }
}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                log::error!("a result was not delivered to Kafka: {error}");
            }
        }
    }
}

struct Publisher<'a> {
    producer: &'a BaseProducer<DeliveryCounter>,
    topic: &'a str,
    dropped: u64,
    progress: Progress,
}

/// Checks since the last progress line, so a long run shows it is alive and how it fares.
struct Progress {
    since: Instant,
    checks: u64,
    failed: u64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            since: Instant::now(),
            checks: 0,
            failed: 0,
        }
    }

    fn record(&mut self, ok: bool) {
        self.checks += 1;
        self.failed += u64::from(!ok);
    }

    fn maybe_report(&mut self, queued: i32) {
        if self.since.elapsed() < PROGRESS_EVERY {
            return;
        }
        log::info!(
            "{} check(s) in the last {:.0} s, {} failed; {queued} result(s) waiting for Kafka",
            self.checks,
            self.since.elapsed().as_secs_f64(),
            self.failed
        );
        *self = Progress::new();
    }
}

impl Publisher<'_> {
    /// Queues one result keyed by its target, so a target's results stay in order.
    fn publish(&mut self, result: &CheckResult) {
        self.progress.record(result.ok);
        log::debug!(
            "{} ok={} status={:?} {:.1} ms",
            result.target,
            result.ok,
            result.http_status,
            result.latency_ms.unwrap_or(f64::NAN)
        );
        let payload = result.encode();
        let record = BaseRecord::to(self.topic)
            .key(result.target.as_str())
            .payload(&payload);
        match self.producer.send(record) {
            Ok(()) => {}
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                self.dropped += 1;
                log::error!(
                    "producer queue full (Kafka unreachable?): dropped the result for {} ({} dropped so far)",
                    result.target,
                    self.dropped
                );
            }
            Err((error, _)) => {
                self.dropped += 1;
                log::error!("could not queue the result for {}: {error}", result.target);
            }
        }
    }
}

/// Blocking worker threads that run checks handed to them by index.
struct CheckerPool {
    size: usize,
    jobs: Option<Sender<(usize, Duration)>>,
    results: Receiver<(usize, CheckResult)>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl CheckerPool {
    fn start(size: usize, prober: Prober, targets: Arc<Vec<Target>>) -> CheckerPool {
        let (jobs, job_queue) = mpsc::channel::<(usize, Duration)>();
        let (result_sink, results) = mpsc::channel();
        let job_queue = Arc::new(Mutex::new(job_queue));
        let workers = (0..size)
            .map(|n| {
                let job_queue = Arc::clone(&job_queue);
                let result_sink = result_sink.clone();
                let prober = prober.clone();
                let targets = Arc::clone(&targets);
                thread::Builder::new()
                    .name(format!("checker-{n}"))
                    .stack_size(256 * 1024)
                    .spawn(move || loop {
                        let next = job_queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((index, late)) = next else { return };
                        let mut result = prober.check(index, &targets[index]);
                        result.details.schedule_lag_ms = Some(late.as_secs_f64() * 1000.0);
                        if result_sink.send((index, result)).is_err() {
                            return;
                        }
                    })
                    .expect("spawning a checker thread")
            })
            .collect();
        CheckerPool {
            size,
            jobs: Some(jobs),
            results,
            workers,
        }
    }

    fn dispatch(&self, index: usize, late: Duration) {
        if let Some(jobs) = &self.jobs {
            jobs.send((index, late))
                .expect("checker threads outlive the pool");
        }
    }
}

impl Drop for CheckerPool {
    fn drop(&mut self) {
        self.jobs = None;
        // Workers still inside a check are left to finish on their own; joining them
        // here would make exit wait for a misbehaving server.
        for worker in self.workers.drain(..) {
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
    }
}

/// When each target is due next. A target is re-armed only once its check completes,
/// so one target never has two checks in flight.
struct Schedule {
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    last_due: Vec<Instant>,
    intervals: Vec<Duration>,
    once: bool,
    outstanding: usize,
}

impl Schedule {
    fn new(intervals: &[Duration], once: bool) -> Schedule {
        let start = Instant::now();
        let count = intervals.len();
        // Spread first checks over one interval so many targets do not fire together.
        let first_due: Vec<Instant> = intervals
            .iter()
            .enumerate()
            .map(|(i, interval)| {
                if once {
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
            once,
            outstanding: count,
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

    fn completed(&mut self, index: usize) {
        if self.once {
            self.outstanding -= 1;
            return;
        }
        // Keep the cadence of the original slot; if the check overran its slot,
        // start the next one as soon as possible rather than bursting to catch up.
        let mut next = self.last_due[index] + self.intervals[index];
        let now = Instant::now();
        if next < now {
            next = now;
        }
        self.last_due[index] = next;
        self.due.push(Reverse((next, index)));
    }

    fn is_finished(&self) -> bool {
        self.once && self.outstanding == 0
    }
}

/// Tracks how late checks start against their schedule and warns when the pool lags.
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
        if self.late == 0
            || self
                .last_warning
                .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_checks_are_spread_over_one_interval() {
        let schedule = Schedule::new(&[Duration::from_secs(40); 4], false);
        let mut dues: Vec<Instant> = schedule.last_due.clone();
        dues.sort();
        let gaps: Vec<u64> = dues.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert_eq!(gaps, vec![10, 10, 10]);
    }

    #[test]
    fn once_schedules_everything_now_and_finishes() {
        let mut schedule = Schedule::new(&[Duration::from_secs(30); 2], true);
        let now = Instant::now();
        let a = schedule.pop_due(now).unwrap().0;
        let b = schedule.pop_due(now).unwrap().0;
        assert!(schedule.pop_due(now).is_none());
        assert!(!schedule.is_finished());
        schedule.completed(a);
        schedule.completed(b);
        assert!(schedule.is_finished());
    }

    #[test]
    fn a_completed_target_is_due_one_interval_after_its_slot() {
        let mut schedule = Schedule::new(&[Duration::from_secs(30)], false);
        let (index, due) = schedule.pop_due(Instant::now()).unwrap();
        schedule.completed(index);
        assert_eq!(schedule.next_due(), Some(due + Duration::from_secs(30)));
    }
}
