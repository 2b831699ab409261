//! pub's metrics: what its checks found and how long they took, how late they
//! started, and what became of their results on the way to Kafka.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::pubsub::message::{CheckResult, ErrorKind};
use crate::pubsub::metrics::registry_of;
use crate::pubsub::subscribe::derived::LATENCY_BOUNDS_MS;

/// The label `checks_total` gives a good check.
const OK: &str = "ok";

pub struct PubMetrics {
    pub registry: Registry,
    checks: IntCounterVec,
    /// `checks` for `ok`, then for each of `ErrorKind::ALL`, looked up once here
    /// rather than by label at every check.
    by_kind: Vec<IntCounter>,
    check_duration: Histogram,
    schedule_lag: Histogram,
    pub targets: IntGauge,
    pub publish_queue: IntGauge,
    pub deliveries_failed: IntCounter,
    pub results_dropped: IntCounter,
}

impl PubMetrics {
    pub fn new() -> PubMetrics {
        let checks = IntCounterVec::new(
            Opts::new(
                "checks_total",
                "Checks made, by error_kind (ok for a good check)",
            ),
            &["error_kind"],
        )
        .expect("valid metric");
        // Every kind is there from the start, at 0, so a rate over it never starts blank.
        let by_kind = std::iter::once(OK)
            .chain(ErrorKind::ALL.iter().map(|k| k.as_str()))
            .map(|kind| checks.with_label_values(&[kind]))
            .collect();
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
        let registry = registry_of(vec![
            Box::new(checks.clone()),
            Box::new(check_duration.clone()),
            Box::new(schedule_lag.clone()),
            Box::new(targets.clone()),
            Box::new(publish_queue.clone()),
            Box::new(deliveries_failed.clone()),
            Box::new(results_dropped.clone()),
        ]);
        PubMetrics {
            registry,
            checks,
            by_kind,
            check_duration,
            schedule_lag,
            targets,
            publish_queue,
            deliveries_failed,
            results_dropped,
        }
    }

    /// Counts a check whose result is about to be published.
    pub fn checked(&self, result: &CheckResult) {
        let index = match (result.ok, result.error_kind) {
            (true, _) => Some(0),
            (false, Some(kind)) => ErrorKind::ALL
                .iter()
                .position(|&k| k == kind)
                .map(|i| i + 1),
            (false, None) => None,
        };
        match index {
            Some(index) => self.by_kind[index].inc(),
            None => self.checks.with_label_values(&["unknown"]).inc(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_counts_under_its_kind() {
        let metrics = PubMetrics::new();
        let mut good = CheckResult::example(1);
        good.ok = true;
        let mut refused = CheckResult::example(7);
        refused.ok = false;
        refused.error_kind = Some(ErrorKind::Refused);
        let mut unknown = refused.clone();
        unknown.error_kind = None;
        for result in [&good, &good, &refused, &unknown] {
            metrics.checked(result);
        }
        let count = |kind: &str| metrics.checks.with_label_values(&[kind]).get();
        assert_eq!((count("ok"), count("refused"), count("unknown")), (2, 1, 1));
        assert_eq!(count("timeout"), 0);
    }
}
