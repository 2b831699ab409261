//! `pub`: per-target schedules, a bounded pool of blocking checkers, and the Kafka producer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::bindings::{rd_kafka_flush, rd_kafka_resp_err_t};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::kafka;
use super::message::CheckResult;
use super::probe::Prober;
use super::schedule::Dispatcher;
use super::targets::{self, Target};
use crate::cli::PubArgs;
use crate::error::UsageError;
use crate::shutdown::Shutdown;
use crate::sync::lock;
use crate::throttle::Throttle;

/// The longest the main loop sleeps, so stop requests, lag warnings and progress lines
/// are served promptly.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long one call serves delivery reports. rust-rdkafka rounds the wait left down
/// to whole milliseconds and so spins through the last one of every call: a long call
/// keeps that to a thousandth of a core.
const REPORT_WINDOW: Duration = Duration::from_secs(1);
/// How often a long run logs what it has done.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// How long checks in flight at a stop request may take beyond their timeout.
const STOP_MARGIN: Duration = Duration::from_secs(5);

pub fn run(args: PubArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let targets = load_targets(&args)?;
    let producer = Arc::new(connect_producer(&args, &shutdown)?);
    let prober = Prober::new(&targets, args.max_body_bytes)?;
    let intervals: Vec<Duration> = targets.iter().map(|t| t.interval).collect();
    let dispatcher = Arc::new(Dispatcher::new(&intervals, args.once));
    let publisher = Arc::new(Publisher {
        producer: Arc::clone(&producer),
        topic: args.kafka.topic.clone(),
        queued: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        drop_log: Mutex::default(),
        progress: Progress::default(),
    });
    // A checker beyond one per target would never have work.
    let checkers = usize::from(args.concurrency).min(targets.len());
    let cadence = if args.once {
        "once".to_owned()
    } else {
        format!("every {:?}", args.delay)
    };
    log::info!(
        "checking {} target(s) {cadence} with up to {checkers} at once",
        targets.len()
    );
    let reports = DeliveryReports::serve(Arc::clone(&producer));
    let pool = CheckerPool::start(
        checkers,
        Checker {
            prober,
            targets: Arc::new(targets),
            dispatcher: Arc::clone(&dispatcher),
            publisher: Arc::clone(&publisher),
        },
    );
    // After the checkers start: the lookup needs librdkafka's connection to the broker
    // itself, which the broker wait did not need when the bootstrap connection
    // answered it, and results can queue meanwhile.
    let pool = Arc::new(pool);
    say_what_a_forced_exit_abandons(&shutdown, &pool, &publisher);
    log_topic_layout(&producer, &args.kafka.topic);
    wait_for_checkers(&pool, &dispatcher, &publisher, &shutdown, args.timeout);
    // Reports are still served during the final flush, which waits for them.
    let finished = finish(&publisher, args.flush_timeout);
    drop(reports);
    finished
}

fn say_what_a_forced_exit_abandons(
    shutdown: &Shutdown,
    pool: &Arc<CheckerPool>,
    publisher: &Arc<Publisher>,
) {
    let (pool, publisher) = (Arc::clone(pool), Arc::clone(publisher));
    shutdown.on_forced_exit(move || {
        format!(
            "{} check(s) in flight and {} result(s) not yet delivered to Kafka",
            pool.running(),
            publisher.waiting()
        )
    });
}

/// The targets this process checks: flags, environment and file, then this shard.
fn load_targets(args: &PubArgs) -> anyhow::Result<Vec<Target>> {
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
        let why = match (args.shard, &args.targets_file) {
            (Some(_), _) => "no targets in this shard".to_owned(),
            (None, Some(file)) => format!(
                "--targets-file (TARGETS_FILE): {} holds no targets",
                file.display()
            ),
            (None, None) => {
                "no targets: give --target URL (TARGET) or --targets-file (TARGETS_FILE)".to_owned()
            }
        };
        return Err(UsageError::new(why).into());
    }
    Ok(targets)
}

/// A producer whose brokers have answered, with the topic created if it was missing.
fn connect_producer(
    args: &PubArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<BaseProducer<DeliveryCounter>> {
    let producer = build_producer(args)?;
    let known_topics = kafka::wait_for_brokers(
        producer.client(),
        || producer.poll(Duration::ZERO),
        &args.kafka,
        shutdown,
    )?;
    kafka::ensure_topic(
        &args.kafka,
        &known_topics,
        args.partitions.unwrap_or(-1),
        args.replication_factor.unwrap_or(-1),
    )?;
    Ok(producer)
}

/// Serves the periodic log lines and a stop request while the checkers work; returns
/// once they have all stopped, or when checks still running at a stop request have
/// outlived their timeout (they are then abandoned, unpublished).
fn wait_for_checkers(
    pool: &CheckerPool,
    dispatcher: &Dispatcher,
    publisher: &Publisher,
    shutdown: &Shutdown,
    check_timeout: Duration,
) {
    let mut stop_deadline: Option<Instant> = None;
    let mut since_report = Instant::now();
    loop {
        if pool.wait_until_stopped(IDLE_WAIT) {
            return;
        }
        if shutdown.requested() && stop_deadline.is_none() {
            dispatcher.stop();
            stop_deadline = Some(Instant::now() + check_timeout + STOP_MARGIN);
        }
        if stop_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            log::warn!(
                "{} check(s) still running at exit; not published",
                pool.running()
            );
            return;
        }
        dispatcher.warn_if_lagging();
        if since_report.elapsed() >= PROGRESS_EVERY {
            publisher
                .progress
                .report(since_report.elapsed(), publisher.waiting());
            since_report = Instant::now();
        }
    }
}

/// Logs the topic's partition count. Asking matters beyond the log line: librdkafka
/// retries getting its idempotent producer id on each metadata answer, and its first
/// try, sent while it swaps the bootstrap connection for the broker's own, sometimes
/// fails and would otherwise wait out a 500 ms timer with every result held back.
fn log_topic_layout(producer: &BaseProducer<DeliveryCounter>, topic: &str) {
    match kafka::partition_count(producer.client(), topic, Duration::from_secs(5)) {
        Ok(0) => log::info!("publishing to {topic}, which the brokers do not list yet"),
        Ok(partitions) => log::info!("publishing to {topic} ({partitions} partition(s))"),
        Err(error) => log::warn!("could not look up topic {topic}: {error}"),
    }
}

/// Flushes, sums up the run, and fails it if any result it made was not delivered: a
/// result a user asked to keep must not vanish behind a success status.
fn finish(publisher: &Publisher, flush_timeout: Duration) -> anyhow::Result<()> {
    log::info!("flushing {} queued result(s)", publisher.waiting());
    if !flush(&publisher.producer, flush_timeout) {
        log::error!(
            "gave up flushing after {flush_timeout:?} (--flush-timeout): {} result(s) not delivered",
            publisher.waiting()
        );
    }
    let context = publisher.producer.context();
    let failed = context.failed.load(Ordering::Relaxed);
    let dropped = publisher.dropped.load(Ordering::Relaxed);
    let waiting = publisher.waiting();
    log::info!(
        "published {} result(s), {} failed delivery, {} dropped on a full queue",
        context.delivered.load(Ordering::Relaxed),
        failed,
        dropped
    );
    let undelivered = failed + dropped + waiting;
    if undelivered > 0 {
        anyhow::bail!(
            "{undelivered} result(s) were not delivered to Kafka and are lost: {failed} refused or failed, {dropped} dropped on a full queue (--queue-max), {waiting} still queued at exit (--flush-timeout)"
        );
    }
    Ok(())
}

/// Waits for every queued result to be delivered, up to `limit`, while the
/// delivery-report thread serves the reports. This is librdkafka's own flush, which
/// sends the batches still lingering at once (polling until the queue is empty would
/// wait out linger.ms) and sleeps on a condition variable meanwhile; rust-rdkafka's
/// wrapper of it serves reports itself, 100 ms at a time.
fn flush(producer: &BaseProducer<DeliveryCounter>, limit: Duration) -> bool {
    let limit_ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the pointer is the producer's own, alive for as long as it is borrowed,
    // and librdkafka allows rd_kafka_flush from any thread.
    let code = unsafe { rd_kafka_flush(producer.client().native_ptr(), limit_ms) };
    code == rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
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
        // Kafka's CPU per result falls with the batch size: at 5 ms (the default) the
        // broker spent 30-110 ms of CPU per 1,000 results in bench-pub.sh, at 50 ms
        // 10-50 ms. A result waits at most this long; the final flush waits for none.
        .set("linger.ms", "50")
        // librdkafka spaces out connection attempts by half this (50 ms by default), and
        // a fresh producer needs two: the bootstrap address, then the broker it names.
        // At 20 ms the first results can leave about 40 ms sooner; retries after a lost
        // connection still back off exponentially up to reconnect.backoff.max.ms.
        .set("reconnect.backoff.ms", "20");
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
                self.last_error.answered();
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                log::error!("a result was not delivered to Kafka: {error}");
            }
        }
    }
}

/// Queues results for Kafka; shared by the checker threads.
struct Publisher {
    producer: Arc<BaseProducer<DeliveryCounter>>,
    topic: String,
    /// Results the producer took; each ends up delivered or failed in its context.
    queued: AtomicU64,
    dropped: AtomicU64,
    /// Drops are logged once per throttle window, by kind: one line per check would
    /// flood the log for as long as Kafka is away.
    drop_log: Mutex<Throttle<String>>,
    progress: Progress,
}

/// Checks since the last progress line, so a long run shows it is alive and how it fares.
#[derive(Default)]
struct Progress {
    checks: AtomicU64,
    failed: AtomicU64,
}

impl Progress {
    fn record(&self, ok: bool) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Logs the counts since the last report and starts counting afresh.
    fn report(&self, period: Duration, queued: u64) {
        log::info!(
            "{} check(s) in the last {:.0} s, {} failed; {queued} result(s) waiting for Kafka",
            self.checks.swap(0, Ordering::Relaxed),
            period.as_secs_f64(),
            self.failed.swap(0, Ordering::Relaxed)
        );
    }
}

impl Publisher {
    /// Results taken but not yet reported delivered or failed. Counted here because
    /// librdkafka's queue length also counts the log lines and events it has not
    /// handed over yet. A report served before its send was counted reads as 0.
    fn waiting(&self) -> u64 {
        let context = self.producer.context();
        let reported =
            context.delivered.load(Ordering::Relaxed) + context.failed.load(Ordering::Relaxed);
        self.queued.load(Ordering::Relaxed).saturating_sub(reported)
    }

    /// Queues one result keyed by its target, so a target's results stay in order.
    fn publish(&self, result: &CheckResult) {
        self.progress.record(result.ok);
        log::debug!(
            "{} ok={} status={:?} {:.1} ms",
            result.target,
            result.ok,
            result.http_status,
            result.latency_ms.unwrap_or(f64::NAN)
        );
        let payload = result.encode();
        let record = BaseRecord::to(&self.topic)
            .key(result.target.as_str())
            .payload(&payload);
        let Err((error, _)) = self.producer.send(record) else {
            self.queued.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let kind = format!("{:?}", error.rdkafka_error_code());
        if lock(&self.drop_log).admit(kind, Instant::now()).is_none() {
            return;
        }
        match error {
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => log::error!(
                "producer queue full (Kafka unreachable?): dropped the result for {} ({dropped} dropped so far)",
                result.target
            ),
            error => log::error!(
                "could not queue the result for {}: {error} ({dropped} dropped so far)",
                result.target
            ),
        }
    }
}

/// What each checker thread needs: the targets, where to take due ones from, and where
/// to put results.
#[derive(Clone)]
struct Checker {
    prober: Prober,
    targets: Arc<Vec<Target>>,
    dispatcher: Arc<Dispatcher>,
    publisher: Arc<Publisher>,
}

impl Checker {
    /// Checks due targets until the dispatcher has no more; each thread publishes its
    /// own results, so a check passes through no other thread.
    fn work(&self) {
        while let Some(due) = self.dispatcher.next() {
            let mut result = self.prober.check(due.index, &self.targets[due.index]);
            result.details.schedule_lag_ms = Some(due.late.as_secs_f64() * 1000.0);
            self.publisher.publish(&result);
            self.dispatcher.completed(due.index);
        }
    }
}

/// A thread that serves the producer's delivery reports as they arrive, until dropped.
/// A result counts against --queue-max until its report has been served, so reports
/// cannot wait for a quiet moment of the main loop.
struct DeliveryReports {
    stop: Arc<AtomicBool>,
}

impl DeliveryReports {
    fn serve(producer: Arc<BaseProducer<DeliveryCounter>>) -> DeliveryReports {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        // Not joined: the process may end while it waits out a poll window, which is
        // harmless once the final flush has seen every report served.
        thread::Builder::new()
            .name("delivery-reports".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    producer.poll(REPORT_WINDOW);
                }
            })
            .expect("spawning the delivery report thread");
        DeliveryReports { stop }
    }
}

impl Drop for DeliveryReports {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Blocking checker threads, counted so the main thread can wait for them to finish.
struct CheckerPool {
    running: Arc<(Mutex<usize>, Condvar)>,
}

impl CheckerPool {
    fn start(size: usize, checker: Checker) -> CheckerPool {
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

    fn running(&self) -> usize {
        *lock(&self.running.0)
    }

    /// Waits up to `limit` for every checker to have stopped; true if they have.
    fn wait_until_stopped(&self, limit: Duration) -> bool {
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
