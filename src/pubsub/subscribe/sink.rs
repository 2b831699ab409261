//! What sub has consumed and not yet committed, and committing it: the batch in hand,
//! the ledger of offsets, and the PostgreSQL session that stores both together.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::consumer::SinkConsumer;
use super::ledger::{Ledger, Start, Verdict};
use super::metrics::SubMetrics;
use super::session::Session;
use super::store::{AcceptedRow, Batch, CommitError, Origin, RejectedRow};
use super::writer::{Job, Keeping, Store, Writer};
use crate::pubsub::message::{CheckResult, Rejection};

pub struct Sink {
    writer: Writer,
    topic: String,
    retention_days: u32,
    pub ledger: Ledger,
    batch: Batch,
    batch_started: Option<Instant>,
    /// An unrecoverable error raised inside a callback, surfaced by the poll loop.
    pub fatal: Option<anyhow::Error>,
    metrics: Arc<SubMetrics>,
}

impl Sink {
    pub fn new(
        session: Session,
        table: crate::pubsub::table::TableName,
        topic: String,
        keeping: Keeping,
        metrics: Arc<SubMetrics>,
    ) -> anyhow::Result<Sink> {
        let store = Store::new(session, table, topic.clone(), keeping, Arc::clone(&metrics))?;
        Ok(Sink {
            writer: Writer::start(store)?,
            topic,
            retention_days: keeping.retention_days,
            ledger: Ledger::default(),
            batch: Batch::default(),
            batch_started: None,
            fatal: None,
            metrics,
        })
    }

    /// Partition upkeep, between batches: see [`Store::maintain`]. Skipped while a
    /// batch is being written; the poll loop comes back within 100 ms, and every
    /// [`Sink::send`] runs it before handing over the next batch.
    pub fn maintain(&mut self) {
        if let Some(mut store) = self.writer.idle_store() {
            store.maintain();
        }
    }

    /// How long until the batch in hand is old enough to be written.
    pub fn time_left(&self, batch_age: Duration) -> Duration {
        self.batch_started.map_or(batch_age, |started| {
            batch_age.saturating_sub(started.elapsed())
        })
    }

    /// Results stored so far, by this process.
    pub fn rows_stored(&self) -> u64 {
        self.metrics.rows_stored()
    }

    pub fn batch_len(&self) -> usize {
        self.batch.len()
    }

    /// Adds one message to the batch, unless PostgreSQL or the batch already holds it.
    pub fn accept(&mut self, message: &BorrowedMessage<'_>) {
        let (partition, offset) = (message.partition(), message.offset());
        match self.ledger.judge(partition, offset) {
            Verdict::Held | Verdict::NotAssigned => return,
            Verdict::TakeAfterGap { missing } => log::warn!(
                "partition {partition}: offsets {}..{} are gone from Kafka (retention?); continuing at {offset}",
                missing.start,
                missing.end
            ),
            Verdict::Take => {}
        }
        let origin = Origin {
            partition,
            offset,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
        };
        match CheckResult::decode(origin.payload.as_deref()).and_then(|c| self.kept(c)) {
            Ok(check) => self.batch.accepted.push(AcceptedRow { check, origin }),
            Err(reason) => {
                log::warn!("partition {partition} offset {offset} rejected: {reason}");
                self.batch.rejected.push(RejectedRow {
                    origin,
                    reason: reason.to_string(),
                });
            }
        }
        self.batch_started.get_or_insert_with(Instant::now);
    }

    /// A result older than the retention would land in a partition about to be
    /// dropped, or make one for a day long gone: it is refused instead.
    fn kept(&self, check: CheckResult) -> Result<CheckResult, Rejection> {
        let days = self.retention_days;
        if days > 0 && check.checked_at < Utc::now() - chrono::Duration::days(i64::from(days)) {
            return Err(Rejection::Invalid(format!(
                "checked_at {} is older than --retention-days {days}",
                check.checked_at.to_rfc3339()
            )));
        }
        Ok(check)
    }

    /// Hands the batch in hand to the writer, once the one before it is settled, and
    /// goes on reading meanwhile.
    pub fn send(&mut self, consumer: &SinkConsumer) -> anyhow::Result<()> {
        // Grouped while the batch before is still being written, so the writer does
        // not wait for it: after it, the writer idled 9 ms between batches.
        let batch = std::mem::take(&mut self.batch);
        let grouping = batch.grouping();
        let stored = self.settle(consumer, true)?;
        // The only moment the store is sure to be idle while a backlog drains: the
        // poll loop's own call finds a batch in flight every time then.
        self.maintain();
        // If the batch before was not stored, this one is read again after it.
        if !stored || batch.is_empty() {
            return Ok(());
        }
        self.batch_started = None;
        let job = Job {
            batch,
            grouping,
            expected: self.ledger.expected().clone(),
            next: self.ledger.pending().clone(),
        };
        // Taken as stored already, so that the next batch's fence expects it. If it
        // does not commit, settling drops the next batch and rewinds.
        self.ledger.committed();
        self.writer.hand_over(job)
    }

    /// Commits the batch in hand and waits until it is: at a revoke, at the end.
    pub fn flush(&mut self, consumer: &SinkConsumer) -> anyhow::Result<()> {
        self.send(consumer)?;
        self.settle(consumer, true).map(drop)
    }

    /// Takes the outcome of the batch in flight, if it is done (or, with `wait`,
    /// once it is). After a failure or a fence, what was read since is dropped too,
    /// consumption restarts from the stored offsets, and it returns false.
    pub fn settle(&mut self, consumer: &SinkConsumer, wait: bool) -> anyhow::Result<bool> {
        let Some(outcome) = self.writer.outcome(wait)? else {
            return Ok(true);
        };
        match outcome.result {
            Ok(()) => {
                self.tell_kafka(consumer, &outcome.job.next);
                return Ok(true);
            }
            Err(CommitError::Fenced { partition }) => {
                log::warn!("partition {partition} was taken over; re-reading from stored offsets");
            }
            Err(CommitError::Refused(error) | CommitError::Database(error)) => {
                self.writer.store().recover(&error)?;
            }
            Err(error @ CommitError::Unsendable(_)) => return Err(error.into()),
        }
        self.rewind(consumer)?;
        Ok(false)
    }

    /// Kafka's committed offsets are a courtesy for lag tools; the truth is in
    /// PostgreSQL, so a failure here loses nothing.
    fn tell_kafka(&self, consumer: &SinkConsumer, next: &BTreeMap<i32, i64>) {
        let mut offsets = TopicPartitionList::new();
        for (&partition, &next) in next {
            let _ = offsets.add_partition_offset(&self.topic, partition, Offset::Offset(next));
        }
        if let Err(error) = consumer.commit(&offsets, CommitMode::Async) {
            log::warn!("Kafka offset commit failed (rows are safe in PostgreSQL): {error}");
        }
    }

    /// Reloads the stored offsets of every assigned partition and seeks to them.
    fn rewind(&mut self, consumer: &SinkConsumer) -> anyhow::Result<()> {
        let partitions = self.ledger.partitions();
        let stored = self
            .stored_offsets(&partitions)
            .context("reading stored offsets")?;
        self.metrics.assigned(partitions.clone(), &stored);
        self.batch = Batch::default();
        self.batch_started = None;
        for (partition, start) in self.ledger.rewind(&stored) {
            consumer
                .seek(
                    &self.topic,
                    partition,
                    offset(start),
                    Duration::from_secs(10),
                )
                .with_context(|| format!("seeking partition {partition}"))?;
        }
        Ok(())
    }

    /// Points each newly assigned partition at the offset PostgreSQL holds for it.
    pub fn on_assign(&mut self, partitions: &mut TopicPartitionList) {
        let numbers: Vec<i32> = partitions
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        self.metrics.assigned(numbers.clone(), &BTreeMap::new());
        // A failure ends the run, but the hook must assign something: see
        // Ledger::assign for why starting from nothing stored is safe meanwhile.
        let stored = self.stored_offsets(&numbers).unwrap_or_else(|error| {
            self.fatal = Some(error.context("reading stored offsets on assignment"));
            BTreeMap::new()
        });
        for (partition, start) in self.ledger.assign(&numbers, &stored) {
            let _ = partitions.set_partition_offset(&self.topic, partition, offset(start));
        }
        self.metrics.assigned(self.ledger.partitions(), &stored);
        log::info!("assigned partitions {:?}", self.ledger.partitions());
    }

    /// Gives every partition up, with the batch in hand (it is read again by whoever
    /// gets the partitions).
    pub fn on_revoke(&mut self) {
        log::info!("partitions {:?} revoked", self.ledger.revoke());
        self.metrics.revoked();
        self.batch = Batch::default();
        self.batch_started = None;
    }

    fn stored_offsets(&mut self, partitions: &[i32]) -> anyhow::Result<BTreeMap<i32, i64>> {
        self.writer.store().stored_offsets(partitions)
    }
}

fn offset(start: Start) -> Offset {
    match start {
        Start::At(offset) => Offset::Offset(offset),
        Start::Beginning => Offset::Beginning,
    }
}
