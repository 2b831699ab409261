//! `sub`: the consumer loop. Offsets live in PostgreSQL beside the rows, are read back
//! on every assignment, and are fenced on every commit, so each message lands once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::kafka;
use super::message::CheckResult;
use super::pgconn::PgTarget;
use super::store::{self, AcceptedRow, Batch, CommitError, Origin, RejectedRow, TableName};
use crate::cli::SubArgs;
use crate::shutdown::{retry_until, retry_while_running, Shutdown};
use crate::sync::lock;

const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How long a batch PostgreSQL failed for no reason of its data waits to be retried.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long a consumer holds no partitions before it says why it waits.
const WAITING_NOTICE_AFTER: Duration = Duration::from_secs(3);
/// How long a consumer may hold no partitions before its group membership is checked.
const MEMBERSHIP_GRACE: Duration = Duration::from_secs(30);

pub fn run(args: SubArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    // Every setting is checked before anything is contacted, so bad input exits 2 at once.
    let kafka_config = consumer_config(&args)?;
    let pg = PgTarget::parse(&args.dsn)?;
    let mut client = retry_until(
        &pg.describe(),
        args.kafka.connect_deadline,
        &shutdown,
        || pg.connect(),
    )?;
    store::migrate(&mut client, &args.table)
        .with_context(|| format!("migrating the schema of {}", args.table))?;
    log::info!("storing into {} on {}", args.table, pg.describe());

    let sink = Sink {
        client,
        pg,
        table: args.table.clone(),
        topic: args.kafka.topic.clone(),
        shutdown: shutdown.clone(),
        batch: Batch::default(),
        batch_started: None,
        expected: BTreeMap::new(),
        at_end: BTreeSet::new(),
        totals: Totals::default(),
        fatal: None,
    };
    let sink = Arc::new(Mutex::new(sink));
    let in_hand = Arc::clone(&sink);
    // The signal thread must not wait for a sink busy writing or reconnecting.
    shutdown.on_forced_exit(move || match in_hand.try_lock() {
        Ok(sink) => format!(
            "a batch of {} message(s), which the next start reads again",
            sink.batch.len()
        ),
        Err(_) => "the batch being written, which the next start reads again".to_owned(),
    });
    let result = loop {
        let membership = Membership::new(&args.group);
        let consumer = join_group(&kafka_config, &membership, &sink, &args, &shutdown)?;
        match consume(&consumer, &args, &shutdown, membership) {
            // Dropping the consumer leaves the group; its replacement joins afresh and
            // resumes from the offsets stored in PostgreSQL.
            Ok(Ended::LeftGroup) => log::warn!(
                "this consumer is no longer a member of group {} although the topic exists; rejoining",
                args.group
            ),
            Ok(Ended::Finished) => break consumer.context().sink().flush(&consumer),
            // After a failure the batch in hand is not trusted; it will be re-read.
            Err(error) => break Err(error),
        }
    };
    let totals = lock(&sink).totals.clone();
    log::info!(
        "stored {} row(s) and {} rejected payload(s)",
        totals.rows,
        totals.rejected
    );
    result
}

/// Creates a consumer around the shared sink, waits for the brokers and subscribes.
fn join_group(
    config: &rdkafka::ClientConfig,
    membership: &Membership,
    sink: &Arc<Mutex<Sink>>,
    args: &SubArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<BaseConsumer<SinkContext>> {
    let mut config = config.clone();
    config.set("client.id", &membership.client_id);
    let consumer: BaseConsumer<SinkContext> = config
        .create_with_context(SinkContext {
            sink: Arc::clone(sink),
            last_error: kafka::LastError::default(),
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

/// Why the consume loop returned without an error.
enum Ended {
    /// Stopped on request, or caught up with `--once`.
    Finished,
    /// The group went on without this consumer, which librdkafka does not always
    /// notice after its coordinator restarts.
    LeftGroup,
}

/// Watches that a consumer holding no partitions is still a member of its group. An
/// idle member (more consumers than partitions) is listed by the broker and left alone.
struct Membership {
    client_id: String,
    group: String,
    unassigned_since: Option<Instant>,
    last_check: Option<Instant>,
    said_why_waiting: bool,
}

impl Membership {
    fn new(group: &str) -> Membership {
        // Unique per consumer, so the broker's member list can tell this one apart.
        let client_id = format!(
            "metrics-flow-sub-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        Membership {
            client_id,
            group: group.to_owned(),
            unassigned_since: None,
            last_check: None,
            said_why_waiting: false,
        }
    }

    /// Once per stretch without partitions, after WAITING_NOTICE_AFTER: a restarted
    /// consumer can wait that long for a member that died without leaving the group.
    fn say_why_waiting(&mut self, assigned: bool, args: &SubArgs) {
        if assigned {
            self.said_why_waiting = false;
            return;
        }
        let since = *self.unassigned_since.get_or_insert_with(Instant::now);
        if self.said_why_waiting || since.elapsed() < WAITING_NOTICE_AFTER {
            return;
        }
        self.said_why_waiting = true;
        log::info!(
            "waiting for partitions of {} from group {}: the group is rebalancing, and a member that stopped without leaving (killed, say) keeps its partitions until its session times out, within {} s (--session-timeout)",
            args.kafka.topic,
            self.group,
            args.session_timeout.as_secs_f64()
        );
    }

    fn lost(&mut self, consumer: &BaseConsumer<SinkContext>, assigned: bool, topic: &str) -> bool {
        if assigned {
            self.unassigned_since = None;
            return false;
        }
        let since = *self.unassigned_since.get_or_insert_with(Instant::now);
        let checked_lately = self
            .last_check
            .is_some_and(|t| t.elapsed() < MEMBERSHIP_GRACE);
        if since.elapsed() < MEMBERSHIP_GRACE || checked_lately {
            return false;
        }
        self.last_check = Some(Instant::now());
        let limit = Duration::from_secs(5);
        let topic_exists =
            kafka::partition_count(consumer.client(), topic, limit).is_ok_and(|n| n > 0);
        let listed = consumer
            .fetch_group_list(Some(&self.group), limit)
            .map(|list| {
                list.groups()
                    .iter()
                    .flat_map(|g| g.members())
                    .any(|m| m.client_id() == self.client_id)
            });
        log::debug!(
            "no partitions for {:.0} s; topic exists: {topic_exists}, listed in group {}: {listed:?}",
            since.elapsed().as_secs_f64(),
            self.group
        );
        topic_exists && matches!(listed, Ok(false))
    }
}

fn consume(
    consumer: &BaseConsumer<SinkContext>,
    args: &SubArgs,
    shutdown: &Shutdown,
    mut membership: Membership,
) -> anyhow::Result<Ended> {
    let mut last_progress = Instant::now();
    let mut reported = 0u64;
    while !shutdown.requested() {
        let wait = consumer.context().sink().time_left(args.batch_age);
        match consumer.poll(wait.min(Duration::from_millis(100))) {
            None => {}
            Some(Ok(message)) => {
                consumer.context().last_error.answered();
                consumer.context().sink().accept(&message);
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                consumer.context().last_error.answered();
                consumer.context().sink().at_end.insert(partition);
            }
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ))) => {
                log::info!(
                    "topic {} does not exist yet; waiting for it",
                    args.kafka.topic
                );
            }
            Some(Err(error)) => consumer.context().last_error.error(&error, ""),
        }
        let mut sink = consumer.context().sink();
        if let Some(fatal) = sink.fatal.take() {
            return Err(fatal);
        }
        if sink.batch.len() >= args.batch_size as usize || sink.time_left(args.batch_age).is_zero()
        {
            sink.flush(consumer)?;
        }
        if args.once && sink.caught_up() {
            sink.flush(consumer)?;
            if sink.caught_up() {
                log::info!("caught up with every assigned partition");
                return Ok(Ended::Finished);
            }
        }
        if last_progress.elapsed() >= PROGRESS_EVERY && sink.totals.rows != reported {
            log::info!("stored {} row(s) so far", sink.totals.rows);
            reported = sink.totals.rows;
            last_progress = Instant::now();
        }
        let assigned = !sink.expected.is_empty();
        drop(sink);
        membership.say_why_waiting(assigned, args);
        if membership.lost(consumer, assigned, &args.kafka.topic) {
            return Ok(Ended::LeftGroup);
        }
    }
    Ok(Ended::Finished)
}

fn consumer_config(args: &SubArgs) -> anyhow::Result<rdkafka::ClientConfig> {
    let mut config = kafka::client_config(&args.kafka)?;
    let session_ms = args.session_timeout.as_millis();
    config
        .set("group.id", &args.group)
        // Kafka's committed offsets are a courtesy for lag tools; the truth is in PostgreSQL.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        // Kafka's default of 45 s is how long a restarted sub waits for the partitions
        // of one that was killed; brokers accept 6 to 300 s unless configured otherwise.
        .set("session.timeout.ms", session_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (session_ms / 3).min(3000).to_string(),
        )
        // librdkafka prefetches up to 64 MiB by default; a quarter of that keeps
        // several batches in hand and the process small.
        .set("queued.max.messages.kbytes", "16384")
        // A topic that does not exist yet is noticed at the next metadata refresh.
        .set("topic.metadata.refresh.interval.ms", "5000")
        // Eager protocols only: the rebalance hook assigns whole sets at once.
        .set("partition.assignment.strategy", "range,roundrobin");
    Ok(config)
}

#[derive(Default, Clone)]
struct Totals {
    rows: u64,
    rejected: u64,
}

/// Consumer context owning the database side, so the rebalance hook can flush before
/// partitions leave and read stored offsets before they arrive.
struct SinkContext {
    sink: Arc<Mutex<Sink>>,
    last_error: kafka::LastError,
}

impl kafka::KeepsLastError for SinkContext {
    fn last_error(&self) -> &kafka::LastError {
        &self.last_error
    }
}

impl SinkContext {
    /// A poisoned lock is taken anyway: only the polling thread uses the sink, so a
    /// panic there ends the run regardless.
    fn sink(&self) -> MutexGuard<'_, Sink> {
        lock(&self.sink)
    }
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.last_error.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Reaching a partition's end is how `--once` knows it is done, and a topic that
        // does not exist yet is waited for (the poll loop says so): neither is a fault.
        if matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(
                    RDKafkaErrorCode::PartitionEOF | RDKafkaErrorCode::UnknownTopicOrPartition
                )
        ) {
            log::debug!("{reason}");
        } else {
            self.last_error.error(&error, reason);
        }
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

/// The database connection plus everything consumed but not yet committed.
struct Sink {
    client: postgres::Client,
    pg: PgTarget,
    table: TableName,
    topic: String,
    shutdown: Shutdown,
    batch: Batch,
    batch_started: Option<Instant>,
    /// Per assigned partition, the next offset PostgreSQL holds (None: no row yet).
    expected: BTreeMap<i32, Option<i64>>,
    /// Assigned partitions that reached their end and have nothing newer in hand.
    at_end: BTreeSet<i32>,
    totals: Totals,
    /// An unrecoverable error raised inside a callback, surfaced by the main loop.
    fatal: Option<anyhow::Error>,
}

impl Sink {
    fn time_left(&self, batch_age: Duration) -> Duration {
        self.batch_started.map_or(batch_age, |started| {
            batch_age.saturating_sub(started.elapsed())
        })
    }

    fn caught_up(&self) -> bool {
        !self.expected.is_empty()
            && self.batch.is_empty()
            && self.expected.keys().all(|p| self.at_end.contains(p))
    }

    /// Adds one message to the batch, unless PostgreSQL already holds it.
    fn accept(&mut self, message: &BorrowedMessage<'_>) {
        let partition = message.partition();
        let offset = message.offset();
        let Some(&stored) = self.expected.get(&partition) else {
            return; // a straggler from a partition no longer ours
        };
        let next = self.batch.next_offsets.get(&partition).copied().or(stored);
        match next {
            Some(next) if offset < next => return,
            Some(next) if offset > next => log::warn!(
                "partition {partition}: offsets {next}..{offset} are gone from Kafka (retention?); continuing at {offset}"
            ),
            _ => {}
        }
        let origin = Origin {
            partition,
            offset,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
        };
        match CheckResult::decode(origin.payload.as_deref()) {
            Ok(check) => self.batch.accepted.push(AcceptedRow { check, origin }),
            Err(reason) => {
                log::warn!("partition {partition} offset {offset} rejected: {reason}");
                self.batch.rejected.push(RejectedRow {
                    origin,
                    reason: reason.to_string(),
                });
            }
        }
        self.batch.next_offsets.insert(partition, offset + 1);
        self.batch_started.get_or_insert_with(Instant::now);
        self.at_end.remove(&partition);
    }

    /// Commits the batch in PostgreSQL, then tells Kafka. A batch PostgreSQL refuses
    /// for its data is sorted out row by row. On a lost connection or a fence, the
    /// batch is dropped and consumption restarts from the stored offsets.
    fn flush(&mut self, consumer: &BaseConsumer<SinkContext>) -> anyhow::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_started = None;
        let committed = match store::commit_batch(
            &mut self.client,
            &self.table,
            &self.topic,
            &batch,
            &self.expected,
        ) {
            Ok(()) => Ok(batch),
            Err(CommitError::Refused(error)) => {
                log::warn!(
                    "PostgreSQL refused a batch of {}: {}; finding the message(s) it refuses",
                    batch.len(),
                    store::describe(&error)
                );
                store::commit_sorting_out(
                    &mut self.client,
                    &self.table,
                    &self.topic,
                    batch,
                    &self.expected,
                )
            }
            Err(other) => Err(other),
        };
        match committed {
            Ok(batch) => {
                self.committed(consumer, &batch);
                Ok(())
            }
            Err(CommitError::Fenced { partition }) => {
                log::warn!("partition {partition} was taken over; re-reading from stored offsets");
                self.rewind(consumer)
            }
            Err(CommitError::Refused(error) | CommitError::Database(error)) => {
                self.recover(consumer, &error)
            }
        }
    }

    fn committed(&mut self, consumer: &BaseConsumer<SinkContext>, batch: &Batch) {
        self.totals.rows += batch.accepted.len() as u64;
        self.totals.rejected += batch.rejected.len() as u64;
        for (&partition, &next) in &batch.next_offsets {
            self.expected.insert(partition, Some(next));
        }
        self.commit_to_kafka(consumer, &batch.next_offsets);
    }

    /// After a failed batch: waits for PostgreSQL if the connection is gone, gives up
    /// on errors no retry can cure (a dropped table, a revoked privilege), and
    /// otherwise pauses; then re-reads from the stored offsets.
    fn recover(
        &mut self,
        consumer: &BaseConsumer<SinkContext>,
        error: &postgres::Error,
    ) -> anyhow::Result<()> {
        let reason = store::describe(error);
        log::error!("writing a batch failed: {reason}; rolling back");
        let connected =
            !self.client.is_closed() && self.client.is_valid(Duration::from_secs(5)).is_ok();
        if !connected {
            self.reconnect()?;
        } else if error
            .code()
            .is_some_and(|code| code.code().starts_with("42"))
        {
            anyhow::bail!("storing into {} failed: {reason}", self.table);
        } else if self.shutdown.sleep(RETRY_PAUSE) {
            return Ok(());
        }
        self.rewind(consumer)
    }

    fn commit_to_kafka(&self, consumer: &BaseConsumer<SinkContext>, next: &BTreeMap<i32, i64>) {
        let mut offsets = TopicPartitionList::new();
        for (&partition, &offset) in next {
            let _ = offsets.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
        }
        if let Err(error) = consumer.commit(&offsets, CommitMode::Async) {
            log::warn!("Kafka offset commit failed (rows are safe in PostgreSQL): {error}");
        }
    }

    /// Connects again, waiting for PostgreSQL however long it is away: the connect
    /// deadline is for start-up only.
    fn reconnect(&mut self) -> anyhow::Result<()> {
        if !self.client.is_closed() && self.client.is_valid(Duration::from_secs(5)).is_ok() {
            return Ok(());
        }
        let pg = self.pg.clone();
        let (client, outage) =
            retry_while_running(&pg.describe(), &self.shutdown, || pg.connect())?;
        self.client = client;
        log::info!(
            "reconnected to {} after {:.0} s",
            pg.describe(),
            outage.as_secs_f64()
        );
        Ok(())
    }

    /// Reloads the stored offsets of every assigned partition and seeks to them.
    fn rewind(&mut self, consumer: &BaseConsumer<SinkContext>) -> anyhow::Result<()> {
        let partitions: Vec<i32> = self.expected.keys().copied().collect();
        let stored = store::stored_offsets(&mut self.client, &self.table, &self.topic, &partitions)
            .context("reading stored offsets")?;
        for partition in partitions {
            let next = stored.get(&partition).copied();
            self.expected.insert(partition, next);
            self.at_end.remove(&partition);
            let position = next.map_or(Offset::Beginning, Offset::Offset);
            consumer
                .seek(&self.topic, partition, position, Duration::from_secs(10))
                .with_context(|| format!("seeking partition {partition}"))?;
        }
        Ok(())
    }

    /// Points each newly assigned partition at the offset PostgreSQL holds for it.
    fn on_assign(&mut self, partitions: &mut TopicPartitionList) {
        let numbers: Vec<i32> = partitions
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        let stored = match self.stored_offsets_with_retry(&numbers) {
            Ok(stored) => stored,
            Err(error) => {
                self.fatal = Some(error.context("reading stored offsets on assignment"));
                BTreeMap::new()
            }
        };
        for partition in numbers {
            let next = stored.get(&partition).copied();
            let position = next.map_or(Offset::Beginning, Offset::Offset);
            let _ = partitions.set_partition_offset(&self.topic, partition, position);
            self.expected.insert(partition, next);
            self.at_end.remove(&partition);
        }
        log::info!(
            "assigned partitions {:?}",
            self.expected.keys().collect::<Vec<_>>()
        );
    }

    fn on_revoke(&mut self) {
        log::info!(
            "partitions {:?} revoked",
            self.expected.keys().collect::<Vec<_>>()
        );
        self.expected.clear();
        self.at_end.clear();
        self.batch = Batch::default();
        self.batch_started = None;
    }

    fn stored_offsets_with_retry(
        &mut self,
        partitions: &[i32],
    ) -> anyhow::Result<BTreeMap<i32, i64>> {
        match store::stored_offsets(&mut self.client, &self.table, &self.topic, partitions) {
            Ok(stored) => Ok(stored),
            Err(error) => {
                log::warn!("reading stored offsets failed: {error}; reconnecting");
                self.reconnect()?;
                Ok(store::stored_offsets(
                    &mut self.client,
                    &self.table,
                    &self.topic,
                    partitions,
                )?)
            }
        }
    }
}
