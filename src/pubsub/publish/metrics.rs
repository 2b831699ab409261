//! pub's metrics: what its checks found and how long they took, how late they
//! started, and what became of their results on the way to Kafka.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::pubsub::message::{CheckResult, ErrorKind};
use crate::pubsub::subscribe::derived::LATENCY_BOUNDS_MS;

/// The label `checks_total` gives a good check.
const OK: &str = "ok";

pub struct PubMetrics {
    pub registry: Registry,
    checks: IntCounterVec,
    check_duration: Histogram,
    schedule_lag: Histogram,
    pub targets: IntGauge,
    pub publish_queue: IntGauge,
    pub deliveries_failed: IntCounter,
    pub results_dropped: IntCounter,
}

impl PubMetrics {
    pub fn new() -> PubMetrics {
        let registry = Registry::new_custom(Some("metrics_flow".into()), None)
            .expect("a constant prefix is valid");
        let checks = IntCounterVec::new(
            Opts::new(
                "checks_total",
                "Checks made, by error_kind (ok for a good check)",
            ),
            &["error_kind"],
        )
        .expect("valid metric");
        // Every kind is there from the start, at 0, so a rate over it never starts blank.
        for kind in std::iter::once(OK).chain(ErrorKind::ALL.iter().map(|k| k.as_str())) {
            checks.with_label_values(&[kind]);
        }
        // The same bounds as the latency buckets of <table>_hourly.
        let seconds: Vec<f64> = LATENCY_BOUNDS_MS.iter().map(|ms| ms / 1000.0).collect();
        let check_duration = Histogram::with_opts(
            HistogramOpts::new(
                "check_duration_seconds",
                "How long a check took, all phases",
            )
            .buckets(seconds.clone()),
        )
        .expect("valid metric");
        let schedule_lag = Histogram::with_opts(
            HistogramOpts::new(
                "schedule_lag_seconds",
                "How late a check started after it was due",
            )
            .buckets(seconds),
        )
        .expect("valid metric");
        let targets =
            IntGauge::new("targets", "Targets this process checks").expect("valid metric");
        let publish_queue = IntGauge::new(
            "publish_queue",
            "Results handed to the Kafka producer and not yet acknowledged",
        )
        .expect("valid metric");
        let deliveries_failed = IntCounter::new(
            "deliveries_failed_total",
            "Results Kafka refused or that failed delivery",
        )
        .expect("valid metric");
        let results_dropped = IntCounter::new(
            "results_dropped_total",
            "Results dropped because the producer's queue was full",
        )
        .expect("valid metric");
        let metrics = PubMetrics {
            registry,
            checks,
            check_duration,
            schedule_lag,
            targets,
            publish_queue,
            deliveries_failed,
            results_dropped,
        };
        metrics.register();
        metrics
    }

    fn register(&self) {
        let collectors: [Box<dyn prometheus::core::Collector>; 7] = [
            Box::new(self.checks.clone()),
            Box::new(self.check_duration.clone()),
            Box::new(self.schedule_lag.clone()),
            Box::new(self.targets.clone()),
            Box::new(self.publish_queue.clone()),
            Box::new(self.deliveries_failed.clone()),
            Box::new(self.results_dropped.clone()),
        ];
        for collector in collectors {
            self.registry
                .register(collector)
                .expect("each metric is registered once");
        }
    }

    /// Counts a check whose result is about to be published.
    pub fn checked(&self, result: &CheckResult) {
        let kind = match (result.ok, result.error_kind) {
            (true, _) => OK,
            (false, Some(kind)) => kind.as_str(),
            (false, None) => "unknown",
        };
        self.checks.with_label_values(&[kind]).inc();
        if let Some(ms) = result.latency_ms {
            self.check_duration.observe(ms / 1000.0);
        }
        if let Some(ms) = result.details.schedule_lag_ms {
            self.schedule_lag.observe(ms / 1000.0);
        }
    }
}

impl Default for PubMetrics {
    fn default() -> PubMetrics {
        PubMetrics::new()
    }
}
