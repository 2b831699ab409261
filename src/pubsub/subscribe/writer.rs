//! sub's PostgreSQL side: the session, the day partitions, and the thread that
//! writes one batch while the poll thread reads and decodes the next.
//!
//! Overlapping the two is what keeps PostgreSQL busy: one after the other, sub spent
//! 1.6 s of CPU in a 4.0 s run of 200,000 results, and PostgreSQL idled while sub
//! decoded. One batch at most is in flight, so the fence needs no more than one
//! assumption: the batch being read expects the one in flight to be stored.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;

use super::copy_rows::CopyError;
use super::derived::{Grouping, Thresholds};
use super::metrics::SubMetrics;
use super::partitions::{day_of, Partitions};
use super::session::Session;
use super::store::{self, Advance, Batch, CommitError, Destination};
use crate::pubsub::table::TableName;
use crate::sync::lock;

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

/// Everything that talks to PostgreSQL. One thread at a time uses it: the writer
/// thread for a batch, the poll thread for the rest, and only with no batch in flight.
pub struct Store {
    session: Session,
    table: TableName,
    topic: String,
    keeping: Keeping,
    partitions: Partitions,
    maintained: Option<Instant>,
    metrics: Arc<SubMetrics>,
}

impl Store {
    pub fn new(
        mut session: Session,
        table: TableName,
        topic: String,
        keeping: Keeping,
        metrics: Arc<SubMetrics>,
    ) -> anyhow::Result<Store> {
        let partitions = Partitions::load(session.client(), &table)
            .map_err(|e| anyhow::anyhow!(store::describe(&e)))
            .with_context(|| format!("listing the partitions of {table}"))?;
        Ok(Store {
            session,
            table,
            topic,
            keeping,
            partitions,
            maintained: None,
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

    /// One transaction for the batch and its offsets; a batch PostgreSQL refuses for
    /// its data is sorted out row by row, in a second one.
    fn commit(
        &mut self,
        batch: Batch,
        grouping: &Grouping,
        advance: &Advance<'_>,
    ) -> Result<Batch, CommitError> {
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
        let to = Destination {
            table: &self.table,
            topic: &self.topic,
            thresholds: self.keeping.thresholds,
        };
        let (client, prepared) = self.session.client_and_statements();
        let reason = match store::commit_batch((client, prepared), &to, &batch, grouping, advance) {
            Ok(()) => return Ok(batch),
            Err(CommitError::Refused(error)) => store::describe(&error),
            Err(CommitError::Unsendable(CopyError::Encode(error))) => error.to_string(),
            Err(other) => return Err(other),
        };
        log::warn!(
            "PostgreSQL refused a batch of {}: {reason}; finding the message(s) it refuses",
            batch.len()
        );
        store::commit_sorting_out((client, prepared), &to, batch, advance)
    }

    /// Writes one batch and counts what it stored. The batch goes back with the
    /// outcome, for the poll thread to free.
    fn write(&mut self, job: &mut Job) -> Result<(), CommitError> {
        let started = Instant::now();
        let advance = Advance {
            expected: &job.expected,
            next: &job.next,
        };
        let batch = self.commit(std::mem::take(&mut job.batch), &job.grouping, &advance)?;
        let newest = batch.accepted.iter().map(|row| row.check.checked_at).max();
        self.metrics.committed(
            started.elapsed(),
            batch.accepted.len(),
            batch.rejected.len(),
            &job.next,
            newest,
        );
        job.batch = batch;
        Ok(())
    }

    /// After a failed batch: see [`Session::recover`].
    pub fn recover(&mut self, error: &postgres::Error) -> anyhow::Result<()> {
        self.session
            .recover(error)
            .with_context(|| format!("storing into {}", self.table))
    }

    pub fn stored_offsets(&mut self, partitions: &[i32]) -> anyhow::Result<BTreeMap<i32, i64>> {
        let (table, topic) = (&self.table, &self.topic);
        self.session
            .retrying(|client| store::stored_offsets(client, table, topic, partitions))
    }
}

/// A batch handed to the writer, grouped for the derived tables, with the offsets it
/// moves its partitions from (the fence) and to.
pub struct Job {
    pub batch: Batch,
    pub grouping: Grouping,
    pub expected: BTreeMap<i32, Option<i64>>,
    pub next: BTreeMap<i32, i64>,
}

/// What became of a batch handed over: on success, the offsets it stored. The job
/// comes back whole: freeing a batch of 5,000 results is left to the poll thread,
/// which has time to spare, rather than the writer, which PostgreSQL waits on.
pub struct Outcome {
    pub result: Result<(), CommitError>,
    pub job: Job,
}

/// The writer thread and the way to it.
pub struct Writer {
    store: Arc<Mutex<Store>>,
    jobs: SyncSender<Job>,
    outcomes: Receiver<Outcome>,
    in_flight: bool,
}

impl Writer {
    /// Starts the thread. It ends when the writer is dropped, after the batch in
    /// flight, whose transaction either commits whole or not at all.
    pub fn start(store: Store) -> anyhow::Result<Writer> {
        let store = Arc::new(Mutex::new(store));
        let (jobs, job_queue) = mpsc::sync_channel::<Job>(1);
        let (outcome_queue, outcomes) = mpsc::sync_channel(1);
        let shared = Arc::clone(&store);
        std::thread::Builder::new()
            .name("sub-writer".into())
            .spawn(move || {
                for mut job in job_queue {
                    let result = lock(&shared).write(&mut job);
                    if outcome_queue.send(Outcome { result, job }).is_err() {
                        break;
                    }
                }
            })
            .context("starting the writer thread")?;
        Ok(Writer {
            store,
            jobs,
            outcomes,
            in_flight: false,
        })
    }

    /// Hands a batch over. The one before must have been settled: see [`Writer::outcome`].
    pub fn hand_over(&mut self, job: Job) -> anyhow::Result<()> {
        debug_assert!(!self.in_flight, "a batch is already in flight");
        if self.jobs.send(job).is_err() {
            anyhow::bail!("the writer thread stopped; the batch is read again at the next start");
        }
        self.in_flight = true;
        Ok(())
    }

    /// What became of the batch in flight: waiting for it, or, with `wait` false,
    /// only if it is done already. None with nothing (or nothing finished) in flight.
    pub fn outcome(&mut self, wait: bool) -> anyhow::Result<Option<Outcome>> {
        if !self.in_flight {
            return Ok(None);
        }
        let received = if wait {
            self.outcomes.recv().map_err(|_| TryRecvError::Disconnected)
        } else {
            self.outcomes.try_recv()
        };
        match received {
            Ok(outcome) => {
                self.in_flight = false;
                Ok(Some(outcome))
            }
            Err(TryRecvError::Empty) => Ok(None),
            // Its transaction was rolled back with the thread; the batch is read again
            // at the next start.
            Err(TryRecvError::Disconnected) => {
                anyhow::bail!("the writer thread stopped while writing a batch")
            }
        }
    }

    /// The store, for the poll thread. Waits for a batch being written, so callers
    /// settle the one in flight first.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// The store if nobody is writing with it.
    pub fn idle_store(&self) -> Option<MutexGuard<'_, Store>> {
        if self.in_flight {
            return None;
        }
        self.store.try_lock().ok()
    }
}
