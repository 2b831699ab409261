//! sub's metrics: rows stored and rejected, how long a batch takes to commit, and how
//! far the table is behind the topic, from the offsets PostgreSQL holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::ClientContext;

use crate::pubsub::metrics::registry_of;
use crate::sync::lock;

/// How long a scrape waits for a partition's leader to say where the partition ends.
const ASK_LIMIT: Duration = Duration::from_millis(500);

/// Bounds of `batch_commit_seconds`: a batch of 5,000 commits in about 30 ms here.
const COMMIT_BOUNDS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Where the table stands, as the last commit left it.
#[derive(Default)]
struct Stored {
    /// The next offset to store, per assigned partition, where PostgreSQL holds one.
    next: BTreeMap<i32, i64>,
    assigned: Vec<i32>,
    newest: Option<DateTime<Utc>>,
}

pub struct SubMetrics {
    pub registry: Registry,
    rows_stored: IntCounter,
    rejected: IntCounter,
    batch_commit: Histogram,
    partition_lag: IntGaugeVec,
    freshness: Gauge,
    assigned_partitions: IntGauge,
    stored: Mutex<Stored>,
    /// A client of its own for asking where partitions end: on the consumer's
    /// connection the question waits behind the fetcher's long poll (about 330 ms a
    /// partition measured here, 1 s a scrape of 3 partitions).
    asker: Option<BaseConsumer<Quiet>>,
    /// The partitions `partition_lag` has a series for.
    labelled: Mutex<BTreeSet<i32>>,
    topic: String,
}

/// librdkafka's messages from the asking client, at debug level: while Kafka is
/// down, sub's own consumer already says so.
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        log::debug!("lag client: {facility}: {message}");
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        log::debug!("lag client: {error}: {reason}");
    }
}

impl ConsumerContext for Quiet {}

impl SubMetrics {
    /// `kafka` is sub's client configuration, for the client that asks where the
    /// partitions end; None when nothing will scrape.
    pub fn new(
        topic: &str,
        newest: Option<DateTime<Utc>>,
        kafka: Option<&rdkafka::ClientConfig>,
    ) -> anyhow::Result<SubMetrics> {
        let asker = match kafka {
            Some(config) => Some(
                config
                    .clone()
                    // Its statistics would say nothing /healthz needs.
                    .set("statistics.interval.ms", "0")
                    .create_with_context(Quiet)
                    .map_err(|e| anyhow::anyhow!("creating the Kafka client for the lag: {e}"))?,
            ),
            None => None,
        };
        let rows_stored = IntCounter::new("rows_stored_total", "Results this process stored")
            .expect("valid metric");
        let rejected = IntCounter::new(
            "rejected_total",
            "Messages this process stored in <table>_rejected",
        )
        .expect("valid metric");
        let batch_commit = Histogram::with_opts(
            HistogramOpts::new(
                "batch_commit_seconds",
                "How long a batch took to write and commit, offsets included",
            )
            .buckets(COMMIT_BOUNDS.to_vec()),
        )
        .expect("valid metric");
        let partition_lag = IntGaugeVec::new(
            Opts::new(
                "partition_lag",
                "Kafka's high watermark minus the offset stored in PostgreSQL",
            ),
            &["partition"],
        )
        .expect("valid metric");
        let freshness = Gauge::new(
            "freshness_seconds",
            "Now minus the newest checked_at stored",
        )
        .expect("valid metric");
        let assigned_partitions =
            IntGauge::new("assigned_partitions", "Partitions this process holds")
                .expect("valid metric");
        let registry = registry_of(vec![
            Box::new(rows_stored.clone()),
            Box::new(rejected.clone()),
            Box::new(batch_commit.clone()),
            Box::new(partition_lag.clone()),
            Box::new(freshness.clone()),
            Box::new(assigned_partitions.clone()),
        ]);
        let metrics = SubMetrics {
            registry,
            rows_stored,
            rejected,
            batch_commit,
            partition_lag,
            freshness,
            assigned_partitions,
            stored: Mutex::new(Stored {
                newest,
                ..Stored::default()
            }),
            asker,
            labelled: Mutex::new(BTreeSet::new()),
            topic: topic.to_owned(),
        };
        Ok(metrics)
    }

    /// A batch committed: its rows, its offsets, its newest result.
    pub fn committed(
        &self,
        took: Duration,
        rows: usize,
        rejected: usize,
        next: &BTreeMap<i32, i64>,
        newest: Option<DateTime<Utc>>,
    ) {
        self.rows_stored.inc_by(rows as u64);
        self.rejected.inc_by(rejected as u64);
        self.batch_commit.observe(took.as_secs_f64());
        let mut stored = lock(&self.stored);
        stored.next.extend(next);
        stored.newest = stored.newest.max(newest);
    }

    /// Results this process has stored.
    pub fn rows_stored(&self) -> u64 {
        self.rows_stored.get()
    }

    /// Messages this process has stored as rejected.
    pub fn rejected(&self) -> u64 {
        self.rejected.get()
    }

    /// Partitions assigned, with what PostgreSQL holds for them as far as it has
    /// been read. Offsets seen before stay: they are PostgreSQL's, not the
    /// assignment's, so a partition given back while PostgreSQL cannot be read (the
    /// assignment waits for it) still shows its lag.
    pub fn assigned(&self, partitions: Vec<i32>, next: &BTreeMap<i32, i64>) {
        let mut stored = lock(&self.stored);
        stored.next.extend(next);
        stored.assigned = partitions;
    }

    pub fn revoked(&self) {
        lock(&self.stored).assigned.clear();
    }

    /// Brings the gauges up to date for a scrape, on the endpoint's thread: the
    /// high watermarks are asked of the leaders then (about 1 ms a partition). Once
    /// a question fails (Kafka down), the remaining partitions keep the lag last
    /// seen. The sink's lock is not held meanwhile.
    pub fn refresh(&self) {
        let (assigned, next, newest) = {
            let stored = lock(&self.stored);
            (stored.assigned.clone(), stored.next.clone(), stored.newest)
        };
        self.assigned_partitions.set(assigned.len() as i64);
        if let Some(newest) = newest {
            let age = (Utc::now() - newest).as_seconds_f64();
            self.freshness.set(age.max(0.0));
        }
        let Some(asker) = &self.asker else {
            return;
        };
        let mut labelled = lock(&self.labelled);
        for gone in labelled.difference(&assigned.iter().copied().collect()) {
            let _ = self.partition_lag.remove_label_values(&[&gone.to_string()]);
        }
        labelled.retain(|p| assigned.contains(p));
        for partition in assigned {
            let Ok((low, high)) = asker.fetch_watermarks(&self.topic, partition, ASK_LIMIT) else {
                break;
            };
            let next = next.get(&partition).copied().unwrap_or(low.max(0));
            self.partition_lag
                .with_label_values(&[&partition.to_string()])
                .set((high - next).max(0));
            labelled.insert(partition);
        }
    }
}
