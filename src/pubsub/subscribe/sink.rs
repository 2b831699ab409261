//! What sub has consumed and not yet committed, and committing it: the batch in hand,
//! the ledger of offsets, and the PostgreSQL session that stores both together.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use anyhow::Context;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::consumer::SinkConsumer;
use super::derived::Thresholds;
use super::ledger::{Ledger, Start, Verdict};
use super::metrics::SubMetrics;
use super::partitions::{day_of, Partitions};
use super::session::Session;
use super::store::{
    self, AcceptedRow, Advance, Batch, CommitError, Destination, Origin, RejectedRow,
};
use crate::pubsub::message::{CheckResult, Rejection};
use crate::pubsub::table::TableName;

/// How often partitions are made ahead and expired ones dropped.
const MAINTAIN_EVERY: Duration = Duration::from_secs(3600);

/// What sub keeps, and what it derives.
#[derive(Debug, Clone, Copy)]
pub struct Keeping {
    pub thresholds: Thresholds,
    /// Days of results kept; 0 keeps them forever.
    pub retention_days: u32,
    /// Days of hourly rollups kept; 0 keeps them forever.
    pub rollup_retention_days: u32,
}

pub struct Sink {
    session: Session,
    table: TableName,
    topic: String,
    keeping: Keeping,
    partitions: Partitions,
    maintained: Option<Instant>,
    pub ledger: Ledger,
    batch: Batch,
    batch_started: Option<Instant>,
    /// An unrecoverable error raised inside a callback, surfaced by the poll loop.
    pub fatal: Option<anyhow::Error>,
    metrics: Arc<SubMetrics>,
}

impl Sink {
    pub fn new(
        mut session: Session,
        table: TableName,
        topic: String,
        keeping: Keeping,
        metrics: Arc<SubMetrics>,
    ) -> anyhow::Result<Sink> {
        let partitions = Partitions::load(session.client(), &table)
            .map_err(|e| anyhow::anyhow!(store::describe(&e)))
            .with_context(|| format!("listing the partitions of {table}"))?;
        Ok(Sink {
            session,
            table,
            topic,
            keeping,
            partitions,
            maintained: None,
            ledger: Ledger::default(),
            batch: Batch::default(),
            batch_started: None,
            fatal: None,
            metrics,
        })
    }

    /// Now and then (at start, then hourly): makes today's and tomorrow's partitions,
    /// and drops those past the retention, saying so for each. A failure is logged
    /// and tried again at the next round: nothing waits for it.
    pub fn maintain(&mut self) {
        self.session.notice_a_lost_connection();
        if self
            .maintained
            .is_some_and(|at| at.elapsed() < MAINTAIN_EVERY)
        {
            return;
        }
        self.maintained = Some(Instant::now());
        let now = Utc::now();
        let ahead: BTreeSet<_> = [now, now + chrono::Duration::days(1)]
            .into_iter()
            .map(day_of)
            .collect();
        let client = self.session.client();
        if let Err(error) = self.partitions.ensure(client, &self.table, &ahead) {
            log::warn!(
                "could not make the partitions ahead: {}",
                store::describe(&error)
            );
        }
        let Keeping {
            retention_days,
            rollup_retention_days,
            ..
        } = self.keeping;
        match self.partitions.drop_expired(
            client,
            &self.table,
            now,
            retention_days,
            rollup_retention_days,
        ) {
            Ok(dropped) => {
                for partition in dropped {
                    log::info!(
                        "dropped partition {partition}: past the retention (--retention-days {retention_days}, --rollup-retention-days {rollup_retention_days})"
                    );
                }
            }
            Err(error) => log::warn!(
                "could not drop expired partitions: {}",
                store::describe(&error)
            ),
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
        let days = self.keeping.retention_days;
        if days > 0 && check.checked_at < Utc::now() - chrono::Duration::days(i64::from(days)) {
            return Err(Rejection::Invalid(format!(
                "checked_at {} is older than --retention-days {days}",
                check.checked_at.to_rfc3339()
            )));
        }
        Ok(check)
    }

    /// Commits the batch in PostgreSQL, then tells Kafka. On a failure or a fence, the
    /// batch is dropped and consumption restarts from the stored offsets.
    pub fn flush(&mut self, consumer: &SinkConsumer) -> anyhow::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_started = None;
        let started = Instant::now();
        match self.commit(batch) {
            Ok(batch) => {
                self.committed(consumer, &batch, started.elapsed());
                Ok(())
            }
            Err(CommitError::Fenced { partition }) => {
                log::warn!("partition {partition} was taken over; re-reading from stored offsets");
                self.rewind(consumer)
            }
            Err(CommitError::Refused(error) | CommitError::Database(error)) => {
                self.session
                    .recover(&error)
                    .with_context(|| format!("storing into {}", self.table))?;
                self.rewind(consumer)
            }
        }
    }

    /// One transaction for the batch and its offsets; a batch PostgreSQL refuses for
    /// its data is sorted out row by row, in a second one.
    fn commit(&mut self, batch: Batch) -> Result<Batch, CommitError> {
        let days = batch
            .accepted
            .iter()
            .map(|row| day_of(row.check.checked_at))
            .collect();
        // Without its partition a row is refused and rejected, not lost: the batch
        // still commits.
        if let Err(error) = self
            .partitions
            .ensure(self.session.client(), &self.table, &days)
        {
            log::warn!(
                "could not make the partitions of this batch: {}",
                store::describe(&error)
            );
        }
        let advance = Advance {
            expected: self.ledger.expected(),
            next: self.ledger.pending(),
        };
        let to = Destination {
            table: &self.table,
            topic: &self.topic,
            thresholds: self.keeping.thresholds,
        };
        let client = self.session.client();
        match store::commit_batch(client, &to, &batch, &advance) {
            Ok(()) => Ok(batch),
            Err(CommitError::Refused(error)) => {
                log::warn!(
                    "PostgreSQL refused a batch of {}: {}; finding the message(s) it refuses",
                    batch.len(),
                    store::describe(&error)
                );
                store::commit_sorting_out(client, &to, batch, &advance)
            }
            Err(other) => Err(other),
        }
    }

    fn committed(&mut self, consumer: &SinkConsumer, batch: &Batch, took: Duration) {
        let newest = batch.accepted.iter().map(|row| row.check.checked_at).max();
        self.metrics.committed(
            took,
            batch.accepted.len(),
            batch.rejected.len(),
            self.ledger.pending(),
            newest,
        );
        let mut offsets = TopicPartitionList::new();
        for (&partition, &next) in self.ledger.pending() {
            let _ = offsets.add_partition_offset(&self.topic, partition, Offset::Offset(next));
        }
        self.ledger.committed();
        // Kafka's committed offsets are a courtesy for lag tools; the truth is in
        // PostgreSQL, so a failure here loses nothing.
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
        let (table, topic) = (&self.table, &self.topic);
        self.session
            .retrying(|client| store::stored_offsets(client, table, topic, partitions))
    }
}

fn offset(start: Start) -> Offset {
    match start {
        Start::At(offset) => Offset::Offset(offset),
        Start::Beginning => Offset::Beginning,
    }
}
