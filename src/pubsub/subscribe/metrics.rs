//! sub's metrics: rows stored and rejected, how long a batch takes to commit, and how
//! far the table is behind the topic, from the offsets PostgreSQL holds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
};
use rdkafka::consumer::Consumer;

use crate::pubsub::kafka;

use super::consumer::SinkConsumer;
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
    /// The consumer whose cached watermarks give the lag; None between consumers.
    consumer: Mutex<Option<Arc<SinkConsumer>>>,
    topic: String,
}

impl SubMetrics {
    pub fn new(topic: &str, newest: Option<DateTime<Utc>>) -> SubMetrics {
        let registry = Registry::new_custom(Some("metrics_flow".into()), None)
            .expect("a constant prefix is valid");
        let metrics = SubMetrics {
            rows_stored: IntCounter::new("rows_stored_total", "Results this process stored")
                .expect("valid metric"),
            rejected: IntCounter::new(
                "rejected_total",
                "Messages this process stored in <table>_rejected",
            )
            .expect("valid metric"),
            batch_commit: Histogram::with_opts(
                HistogramOpts::new(
                    "batch_commit_seconds",
                    "How long a batch took to write and commit, offsets included",
                )
                .buckets(COMMIT_BOUNDS.to_vec()),
            )
            .expect("valid metric"),
            partition_lag: IntGaugeVec::new(
                Opts::new(
                    "partition_lag",
                    "Kafka's high watermark minus the offset stored in PostgreSQL",
                ),
                &["partition"],
            )
            .expect("valid metric"),
            freshness: Gauge::new(
                "freshness_seconds",
                "Now minus the newest checked_at stored",
            )
            .expect("valid metric"),
            assigned_partitions: IntGauge::new(
                "assigned_partitions",
                "Partitions this process holds",
            )
            .expect("valid metric"),
            stored: Mutex::new(Stored {
                newest,
                ..Stored::default()
            }),
            consumer: Mutex::new(None),
            topic: topic.to_owned(),
            registry,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 6] = [
            Box::new(metrics.rows_stored.clone()),
            Box::new(metrics.rejected.clone()),
            Box::new(metrics.batch_commit.clone()),
            Box::new(metrics.partition_lag.clone()),
            Box::new(metrics.freshness.clone()),
            Box::new(metrics.assigned_partitions.clone()),
        ];
        for collector in collectors {
            metrics
                .registry
                .register(collector)
                .expect("each metric is registered once");
        }
        metrics
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

    /// The consumer to read watermarks from, or None while there is none.
    pub fn watch(&self, consumer: Option<Arc<SinkConsumer>>) {
        *lock(&self.consumer) = consumer;
    }

    /// Brings the gauges up to date for a scrape, on the endpoint's thread. The high
    /// watermarks are asked of the leaders (about 1 ms a partition here): the ones
    /// librdkafka caches stop moving while an assignment waits for PostgreSQL, which
    /// is when the lag matters. After one question fails (Kafka down), the rest are
    /// the cached ones. The sink's lock is not held meanwhile.
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
        let consumer = lock(&self.consumer);
        let Some(consumer) = consumer.as_ref() else {
            self.partition_lag.reset();
            return;
        };
        let mut ask = true;
        let mut lags = Vec::new();
        for partition in assigned {
            let asked = ask
                .then(|| {
                    consumer
                        .fetch_watermarks(&self.topic, partition, ASK_LIMIT)
                        .ok()
                })
                .flatten();
            ask = asked.is_some();
            let Some((low, high)) = asked
                .or_else(|| kafka::cached_watermarks(consumer.client(), &self.topic, partition))
            else {
                continue;
            };
            let next = next.get(&partition).copied().unwrap_or(low.max(0));
            lags.push((partition, (high - next).max(0)));
        }
        self.partition_lag.reset();
        for (partition, lag) in lags {
            self.partition_lag
                .with_label_values(&[&partition.to_string()])
                .set(lag);
        }
    }
}
