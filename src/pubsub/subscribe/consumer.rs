//! sub's Kafka side: the consumer and its settings, the poll loop that feeds the sink,
//! and the rebalance hook that hands partitions to the sink and takes them back.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};

use super::membership::Membership;
use super::sink::Sink;
use crate::cli::SubArgs;
use crate::pubsub::kafka;
use crate::pubsub::metrics::Link;
use crate::shutdown::Shutdown;
use crate::sync::lock;

const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Why the consume loop returned without an error.
pub enum Ended {
    /// Stopped on request, or caught up with `--once`.
    Finished,
    /// The group went on without this consumer (see [`Membership::lost`]).
    LeftGroup,
}

pub type SinkConsumer = BaseConsumer<SinkContext>;

/// Creates a consumer around the shared sink, waits for the brokers and subscribes.
pub fn join_group(
    config: &rdkafka::ClientConfig,
    membership: &Membership,
    sink: &Arc<Mutex<Sink>>,
    kafka_link: &Arc<Link>,
    args: &SubArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<SinkConsumer> {
    let mut config = config.clone();
    config.set("client.id", &membership.client_id);
    let consumer: SinkConsumer = config
        .create_with_context(SinkContext {
            sink: Arc::clone(sink),
            last_error: kafka::LastError::default(),
            kafka_link: Arc::clone(kafka_link),
        })
        .context("creating the Kafka consumer")?;
    // Not subscribed yet, so polling here serves callbacks without taking messages.
    kafka::wait_for_brokers(
        consumer.client(),
        || {
            let _ = consumer.poll(Duration::ZERO);
        },
        &args.kafka,
        shutdown,
    )?;
    consumer
        .subscribe(&[&args.kafka.topic])
        .context("subscribing to the topic")?;
    log::info!("consuming {} as group {}", args.kafka.topic, args.group);
    Ok(consumer)
}

/// Polls messages into the sink and sends its batch to be written by size and age, until a stop request,
/// `--once` catching up, or the group losing this consumer.
pub fn consume(
    consumer: &SinkConsumer,
    args: &SubArgs,
    shutdown: &Shutdown,
    mut membership: Membership,
) -> anyhow::Result<Ended> {
    let mut last_progress = Instant::now();
    let mut reported = 0u64;
    while !shutdown.requested() {
        let wait = consumer.context().sink().time_left(args.batch_age);
        poll_once(consumer, args, wait.min(Duration::from_millis(100)));
        let mut sink = consumer.context().sink();
        if let Some(fatal) = sink.fatal.take() {
            return Err(fatal);
        }
        sink.settle(consumer, false)?;
        sink.maintain();
        if sink.batch_len() >= args.batch_size as usize || sink.time_left(args.batch_age).is_zero()
        {
            sink.send(consumer)?;
        }
        if args.once && sink.ledger.caught_up() {
            sink.flush(consumer)?;
            if sink.ledger.caught_up() {
                log::info!("caught up with every assigned partition");
                return Ok(Ended::Finished);
            }
        }
        let stored = sink.rows_stored();
        if last_progress.elapsed() >= PROGRESS_EVERY && stored != reported {
            log::info!("stored {stored} row(s) so far");
            reported = stored;
            last_progress = Instant::now();
        }
        let assigned = sink.ledger.is_assigned();
        drop(sink);
        membership.say_why_waiting(assigned, &args.kafka.topic, args.session_timeout);
        if membership.lost(consumer, assigned, &args.kafka.topic) {
            return Ok(Ended::LeftGroup);
        }
    }
    Ok(Ended::Finished)
}

fn poll_once(consumer: &SinkConsumer, args: &SubArgs, wait: Duration) {
    let context = consumer.context();
    match consumer.poll(wait) {
        None => {}
        Some(Ok(message)) => {
            context.last_error.answered();
            context.sink().accept(&message);
        }
        Some(Err(KafkaError::PartitionEOF(partition))) => {
            context.last_error.answered();
            context.sink().ledger.reached_end(partition);
        }
        Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition))) => {
            log::info!(
                "topic {} does not exist yet; waiting for it",
                args.kafka.topic
            );
        }
        Some(Err(error)) => context.last_error.error(&error, ""),
    }
}

pub fn consumer_config(args: &SubArgs) -> anyhow::Result<rdkafka::ClientConfig> {
    let mut config = kafka::client_config(&args.kafka)?;
    config
        .set("group.id", &args.group)
        // Kafka's committed offsets are a courtesy for lag tools; the truth is in PostgreSQL.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        // librdkafka prefetches up to 64 MiB by default; a quarter of that keeps
        // several batches in hand and the process small.
        .set("queued.max.messages.kbytes", "16384")
        // Past that mark librdkafka postpones each partition's next fetch by this much,
        // 1 s by default, while 16 MiB is about 0.5 s of sub's work: `sub --once` of
        // 200,000 results idled between refills and took 2.86-2.96 s, against 1.64-2.11
        // s at 5-100 ms. 0 polls in a loop (2.3-2.5 s, twice the CPU).
        .set("fetch.queue.backoff.ms", "100")
        // A topic that does not exist yet is noticed at the next metadata refresh.
        .set("topic.metadata.refresh.interval.ms", "5000")
        // Eager protocols only: the rebalance hook assigns whole sets at once.
        .set("partition.assignment.strategy", "range,roundrobin");
    kafka::set_group_session(&mut config, args.session_timeout);
    if args.metrics_listen.is_some() {
        kafka::report_broker_states(&mut config);
    }
    Ok(config)
}

/// Consumer context owning the database side, so the rebalance hook can flush before
/// partitions leave and read stored offsets before they arrive.
pub struct SinkContext {
    sink: Arc<Mutex<Sink>>,
    last_error: kafka::LastError,
    kafka_link: Arc<Link>,
}

impl kafka::KeepsLastError for SinkContext {
    fn last_error(&self) -> &kafka::LastError {
        &self.last_error
    }
}

impl SinkContext {
    /// A poisoned lock is taken anyway: only the polling thread uses the sink, so a
    /// panic there ends the run regardless.
    pub fn sink(&self) -> MutexGuard<'_, Sink> {
        lock(&self.sink)
    }
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.last_error.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if kafka::is_consumers_routine(&error) {
            log::debug!("{reason}");
        } else {
            self.last_error.error(&error, reason);
        }
    }

    fn stats_raw(&self, statistics: &[u8]) {
        kafka::record_broker_link(&self.kafka_link, statistics);
    }
}

impl ConsumerContext for SinkContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr as R;
        let mut sink = self.sink();
        match err {
            R::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                sink.on_assign(partitions);
                if let Err(error) = consumer.assign(partitions) {
                    log::error!("could not take the assigned partitions: {error}");
                }
            }
            R::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Err(error) = sink.flush(consumer) {
                    log::error!("batch dropped on revocation (it will be re-read): {error:#}");
                }
                sink.on_revoke();
                if let Err(error) = consumer.unassign() {
                    log::error!("could not release the revoked partitions: {error}");
                }
            }
            other => log::error!("rebalance failed: {other:?}"),
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(error) = result {
            log::warn!("Kafka offset commit failed (rows are safe in PostgreSQL): {error}");
        }
    }
}
