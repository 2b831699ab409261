//! pub's Kafka side: the idempotent producer and its settings, queueing results keyed
//! by target, delivery reports served on a thread of their own, and the final flush.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::bindings::{rd_kafka_flush, rd_kafka_resp_err_t};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::metrics::PubMetrics;
use crate::cli::PubArgs;
use crate::pubsub::kafka;
use crate::pubsub::message::CheckResult;
use crate::pubsub::metrics::Link;
use crate::shutdown::Shutdown;
use crate::sync::lock;
use crate::throttle::Throttle;

/// How long one call serves delivery reports. rust-rdkafka rounds the wait left down
/// to whole milliseconds and so spins through the last one of every call: a long call
/// keeps that to a thousandth of a core.
const REPORT_WINDOW: Duration = Duration::from_secs(1);

pub type ResultProducer = BaseProducer<DeliveryCounter>;

/// A result that does not fit: what librdkafka says of a full queue, so that the held
/// ones are dropped and logged alike.
const QUEUE_FULL: KafkaError = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);

/// A producer whose connection to the cluster has begun on librdkafka's threads; see
/// [`StartedProducer::wait_for_cluster`].
pub struct StartedProducer(ResultProducer);

impl StartedProducer {
    pub fn start(args: &PubArgs, context: DeliveryCounter) -> anyhow::Result<StartedProducer> {
        build_producer(args, context).map(StartedProducer)
    }

    /// The producer once its brokers have answered, and what they said: whether the
    /// results topic exists is for [`TopicSetup`].
    pub fn wait_for_cluster(
        self,
        args: &PubArgs,
        shutdown: &Shutdown,
    ) -> anyhow::Result<(ResultProducer, kafka::Reached)> {
        let producer = self.0;
        let cluster = kafka::wait_for_brokers(
            producer.client(),
            || producer.poll(Duration::ZERO),
            &args.kafka,
            shutdown,
        )?;
        Ok((producer, cluster))
    }
}

/// Creates the results topic if it is missing, on a thread of its own while the first
/// checks run, then lets their held results go to librdkafka. On a broker started just
/// before, creating the topic took 133-140 ms, about as long as checking 2,000 targets;
/// the checks waited for it before.
pub struct TopicSetup {
    thread: Option<thread::JoinHandle<()>>,
}

impl TopicSetup {
    pub fn start(
        args: &PubArgs,
        cluster: kafka::Reached,
        publisher: &Arc<Publisher>,
    ) -> anyhow::Result<TopicSetup> {
        let kafka_args = args.kafka.clone();
        let partitions = args.partitions.unwrap_or(-1);
        let replication = args.replication_factor;
        let publisher = Arc::clone(publisher);
        let thread = thread::Builder::new()
            .name("topic-setup".into())
            .spawn(move || {
                let layout = kafka::TopicLayout {
                    name: &kafka_args.topic,
                    partitions,
                    replication,
                    config: &[],
                };
                if let Err(error) = kafka::ensure_topic(&kafka_args, &cluster, &layout) {
                    log::warn!(
                        "could not create topic {}: {error:#}; going on: the broker may create it on first write",
                        kafka_args.topic
                    );
                }
                publisher.release_held();
                log_topic_layout(&publisher.producer, &kafka_args.topic);
            })
            .context("starting the topic set-up thread")?;
        Ok(TopicSetup {
            thread: Some(thread),
        })
    }

    /// Waits until the topic is set up and the held results are with librdkafka.
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            // A panic there was reported on its own thread; the results it held are
            // counted as waiting, so the final summary says they were not delivered.
            let _ = thread.join();
        }
    }
}

/// Logs the topic's partition count. Asking matters beyond the log line: librdkafka
/// retries getting its idempotent producer id on each metadata answer, and its first
/// try, sent while it swaps the bootstrap connection for the broker's own, sometimes
/// fails and would otherwise wait out a 500 ms timer with every result held back.
fn log_topic_layout(producer: &ResultProducer, topic: &str) {
    match kafka::partition_count(producer.client(), topic, Duration::from_secs(5)) {
        Ok(0) => log::info!("publishing to {topic}, which the brokers do not list yet"),
        Ok(partitions) => log::info!("publishing to {topic} ({partitions} partition(s))"),
        Err(error) => log::warn!("could not look up topic {topic}: {error}"),
    }
}

/// Waits for every queued result to be delivered, up to `limit`, while the
/// delivery-report thread serves the reports. This is librdkafka's own flush, which
/// sends the batches still lingering at once (polling until the queue is empty would
/// wait out linger.ms) and sleeps on a condition variable meanwhile; rust-rdkafka's
/// wrapper of it serves reports itself, 100 ms at a time.
fn flush(producer: &ResultProducer, limit: Duration) -> bool {
    let limit_ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the pointer is the producer's own, alive for as long as it is borrowed,
    // and librdkafka allows rd_kafka_flush from any thread.
    let code = unsafe { rd_kafka_flush(producer.client().native_ptr(), limit_ms) };
    code == rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
}

fn build_producer(args: &PubArgs, context: DeliveryCounter) -> anyhow::Result<ResultProducer> {
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
    if args.metrics_listen.is_some() {
        kafka::report_broker_states(&mut config);
    }
    config
        .create_with_context(context)
        .context("creating the Kafka producer")
}

/// Counts delivery reports; every failure is logged once.
pub struct DeliveryCounter {
    delivered: AtomicU64,
    last_error: kafka::LastError,
    /// Its `deliveries_failed` counts the failed reports.
    metrics: Arc<PubMetrics>,
    kafka: Arc<Link>,
}

impl DeliveryCounter {
    pub fn new(metrics: &Arc<PubMetrics>, kafka: &Arc<Link>) -> DeliveryCounter {
        DeliveryCounter {
            delivered: AtomicU64::new(0),
            last_error: kafka::LastError::default(),
            metrics: Arc::clone(metrics),
            kafka: Arc::clone(kafka),
        }
    }
}

impl ClientContext for DeliveryCounter {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.last_error.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.last_error.error(&error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        kafka::record_broker_link(&self.kafka, statistics);
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
                self.metrics.deliveries_failed.inc();
                log::error!("a result was not delivered to Kafka: {error}");
            }
        }
    }
}

/// A result ready for the producer: its key (the target) and its message.
type Encoded = (String, Vec<u8>);

/// Queues results for Kafka; shared by the checker threads.
pub struct Publisher {
    producer: Arc<ResultProducer>,
    topic: String,
    /// Results taken: by the producer, each to end up delivered or failed in its
    /// context, or held below.
    queued: AtomicU64,
    /// Until the results topic is set up ([`TopicSetup`]), the results made meanwhile,
    /// keyed by target and in order; `None` once they went to the producer. Held, not
    /// sent: a producer's metadata request for a missing topic has the broker create it
    /// with the broker's defaults, not the layout pub asks for.
    held: Mutex<Option<Vec<Encoded>>>,
    /// At most this many are held (--queue-max); beyond, a result is dropped as on a
    /// full producer queue.
    hold_max: usize,
    /// Drops are logged once per throttle window, by kind: one line per check would
    /// flood the log for as long as Kafka is away.
    drop_log: Mutex<Throttle<String>>,
    pub progress: Progress,
    /// Its `results_dropped` counts the drops.
    metrics: Arc<PubMetrics>,
}

/// Checks since the last progress line, so a long run shows it is alive and how it fares.
#[derive(Default)]
pub struct Progress {
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
    pub fn report(&self, period: Duration, queued: u64) {
        log::info!(
            "{} check(s) in the last {:.0} s, {} failed; {queued} result(s) waiting for Kafka",
            self.checks.swap(0, Ordering::Relaxed),
            period.as_secs_f64(),
            self.failed.swap(0, Ordering::Relaxed)
        );
    }
}

impl Publisher {
    /// `hold`: results wait in the publisher until [`Publisher::release_held`].
    pub fn new(
        producer: Arc<ResultProducer>,
        topic: &str,
        hold: bool,
        queue_max: u32,
    ) -> Publisher {
        let metrics = Arc::clone(&producer.context().metrics);
        Publisher {
            metrics,
            producer,
            topic: topic.to_owned(),
            queued: AtomicU64::new(0),
            held: Mutex::new(hold.then(Vec::new)),
            hold_max: queue_max as usize,
            drop_log: Mutex::default(),
            progress: Progress::default(),
        }
    }

    /// Flushes, sums up the run, and fails it if any result it made was not delivered: a
    /// result a user asked to keep must not vanish behind a success status.
    pub fn finish(&self, flush_timeout: Duration) -> anyhow::Result<()> {
        log::info!("flushing {} queued result(s)", self.waiting());
        if !flush(&self.producer, flush_timeout) {
            log::error!(
                "gave up flushing after {flush_timeout:?} (--flush-timeout): {} result(s) not delivered",
                self.waiting()
            );
        }
        let context = self.producer.context();
        let failed = self.metrics.deliveries_failed.get();
        let dropped = self.metrics.results_dropped.get();
        let waiting = self.waiting();
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

    /// Results taken but not yet reported delivered or failed. Counted here because
    /// librdkafka's queue length also counts the log lines and events it has not
    /// handed over yet. A report served before its send was counted reads as 0.
    pub fn waiting(&self) -> u64 {
        let context = self.producer.context();
        let reported =
            context.delivered.load(Ordering::Relaxed) + self.metrics.deliveries_failed.get();
        self.queued.load(Ordering::Relaxed).saturating_sub(reported)
    }

    /// Queues one result keyed by its target, so a target's results stay in order.
    pub fn publish(&self, result: &CheckResult) {
        self.progress.record(result.ok);
        self.metrics.checked(result);
        log::debug!(
            "{} ok={} status={:?} {:.1} ms",
            result.target,
            result.ok,
            result.http_status,
            result.latency_ms.unwrap_or(f64::NAN)
        );
        let payload = result.encode();
        {
            let mut held = lock(&self.held);
            if let Some(held) = held.as_mut() {
                if held.len() < self.hold_max {
                    held.push((result.target.clone(), payload));
                    self.queued.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.dropped(&result.target, QUEUE_FULL);
                }
                return;
            }
        }
        if self.send(&result.target, &payload) {
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands the held results to the producer, and every later one straight to it.
    /// They go under the lock, so no later result of a target overtakes a held one.
    pub fn release_held(&self) {
        let mut held = lock(&self.held);
        let Some(results) = held.take() else {
            return;
        };
        for (target, payload) in results {
            // Counted when held; a drop now takes it back.
            if !self.send(&target, &payload) {
                self.queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether the producer took it; a result it refused is counted and logged as dropped.
    fn send(&self, target: &str, payload: &[u8]) -> bool {
        let record = BaseRecord::to(&self.topic).key(target).payload(payload);
        match self.producer.send(record) {
            Ok(()) => true,
            Err((error, _)) => {
                self.dropped(target, error);
                false
            }
        }
    }

    fn dropped(&self, target: &str, error: KafkaError) {
        self.metrics.results_dropped.inc();
        let dropped = self.metrics.results_dropped.get();
        let kind = format!("{:?}", error.rdkafka_error_code());
        if lock(&self.drop_log).admit(kind, Instant::now()).is_none() {
            return;
        }
        match error {
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => log::error!(
                "producer queue full (Kafka unreachable?): dropped the result for {target} ({dropped} dropped so far)"
            ),
            error => log::error!(
                "could not queue the result for {target}: {error} ({dropped} dropped so far)"
            ),
        }
    }
}

/// A thread that serves the producer's delivery reports as they arrive, until dropped.
/// A result counts against --queue-max until its report has been served, so reports
/// cannot wait for a quiet moment of the main loop.
pub struct DeliveryReports {
    stop: Arc<AtomicBool>,
}

impl DeliveryReports {
    pub fn serve(producer: Arc<ResultProducer>) -> DeliveryReports {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;

    /// A real producer with no broker to try, so whatever it took stays in its queue,
    /// where it can be counted, and no connection error is queued beside it.
    fn offline_publisher(hold: bool, queue_max: u32) -> Publisher {
        let metrics = Arc::new(PubMetrics::new());
        let context = DeliveryCounter::new(&metrics, &Link::new("Kafka"));
        let producer: ResultProducer = ClientConfig::new()
            .create_with_context(context)
            .expect("creating an offline producer");
        Publisher::new(Arc::new(producer), "results", hold, queue_max)
    }

    /// Results in the producer's queue: its length, once the log events queued beside
    /// them (a producer without brokers warns of it) are served.
    fn taken(publisher: &Publisher) -> i32 {
        publisher.producer.poll(Duration::ZERO);
        publisher.producer.in_flight_count()
    }

    #[test]
    fn held_results_reach_the_producer_only_when_released_and_in_order() {
        let publisher = offline_publisher(true, 100);
        let results: Vec<_> = (0..3).map(CheckResult::example).collect();
        for result in &results {
            publisher.publish(result);
        }
        assert_eq!(taken(&publisher), 0);
        assert_eq!(publisher.waiting(), 3, "held results count as waiting");
        publisher.release_held();
        assert_eq!(taken(&publisher), 3);
        assert_eq!(publisher.waiting(), 3);
        publisher.publish(&CheckResult::example(3));
        assert_eq!(taken(&publisher), 4, "sent once released");
        assert_eq!(publisher.waiting(), 4);
        assert_eq!(publisher.metrics.results_dropped.get(), 0);
    }

    #[test]
    fn results_beyond_the_queue_limit_are_dropped_while_held() {
        let publisher = offline_publisher(true, 2);
        for n in 0..5 {
            publisher.publish(&CheckResult::example(n));
        }
        assert_eq!(publisher.waiting(), 2);
        assert_eq!(publisher.metrics.results_dropped.get(), 3);
        publisher.release_held();
        assert_eq!(taken(&publisher), 2);
    }

    #[test]
    fn an_existing_topic_holds_nothing() {
        let publisher = offline_publisher(false, 100);
        publisher.publish(&CheckResult::example(0));
        assert_eq!(taken(&publisher), 1);
        publisher.release_held();
        assert_eq!(taken(&publisher), 1);
    }
}
