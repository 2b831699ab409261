//! What sub derives from the results, without I/O: hourly and daily rollups per
//! target and location, each target's status, and its incidents. [`super::answers`] loads and
//! stores them in the same transaction as the rows and the offsets, so a replay of
//! the same results derives the same tables.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, DurationRound, Utc};

use crate::pubsub::message::CheckResult;

/// Upper bounds (ms, inclusive) of the latency buckets of `<table>_hourly`; one
/// bucket more counts everything above the last bound. The README lists them.
pub const LATENCY_BOUNDS_MS: [f64; 11] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];
pub const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The bucket a latency counts in.
pub fn bucket_of(latency_ms: f64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|&bound| latency_ms <= bound)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// SQL counting `column`'s values per latency bucket, as an `integer[]` of one
/// `count(*) FILTER` per bucket: the buckets of [`bucket_of`], for a GROUP BY.
pub fn bucket_counts_sql(column: &str) -> String {
    let mut terms = Vec::with_capacity(BUCKETS);
    let mut lower: Option<f64> = None;
    for bound in LATENCY_BOUNDS_MS {
        terms.push(match lower {
            None => format!("count(*) FILTER (WHERE {column} <= {bound})"),
            Some(lower) => {
                format!("count(*) FILTER (WHERE {column} > {lower} AND {column} <= {bound})")
            }
        });
        lower = Some(bound);
    }
    let last = LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1];
    terms.push(format!("count(*) FILTER (WHERE {column} > {last})"));
    format!("ARRAY[{}]::integer[]", terms.join(", "))
}

/// Where a result belongs: its target and location (`""` for none).
pub type Key = (String, String);

pub fn key_of(check: &CheckResult) -> Key {
    let (target, location) = key_ref(check);
    (target.to_owned(), location.to_owned())
}

/// [`key_of`], borrowed: a batch of thousands of results has a few distinct keys,
/// and copying both strings for each result was most of the derived tables' CPU.
pub fn key_ref(check: &CheckResult) -> (&str, &str) {
    let location = check.details.location.as_deref().unwrap_or_default();
    (&check.target, location)
}

/// The periods checks are summed over: hours for latency and recent uptime, days for
/// uptime over weeks and months, which a report then reads in 30 rows per target
/// rather than 720.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
}

impl Period {
    pub const ALL: [Period; 2] = [Period::Hour, Period::Day];

    /// The rollup table's suffix.
    pub fn table_suffix(self) -> &'static str {
        match self {
            Period::Hour => "_hourly",
            Period::Day => "_daily",
        }
    }

    /// The name of the rollup table's period column.
    pub fn column(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
        }
    }

    /// The start (UTC) of the period an instant is in.
    pub fn start(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let length = match self {
            Period::Hour => chrono::Duration::hours(1),
            Period::Day => chrono::Duration::days(1),
        };
        at.duration_trunc(length)
            .expect("an hour or a day divides any time")
    }
}

/// One target's checks in one period. Latency counts only where the check has one.
#[derive(Debug, Clone, PartialEq)]
pub struct Sums {
    pub checks: i64,
    pub ok_checks: i64,
    pub latency_ms_sum: f64,
    pub latency_ms_min: Option<f64>,
    pub latency_ms_max: Option<f64>,
    pub latency_buckets: [i32; BUCKETS],
}

impl Default for Sums {
    fn default() -> Sums {
        Sums {
            checks: 0,
            ok_checks: 0,
            latency_ms_sum: 0.0,
            latency_ms_min: None,
            latency_ms_max: None,
            latency_buckets: [0; BUCKETS],
        }
    }
}

impl Sums {
    fn count(&mut self, check: &CheckResult) {
        self.checks += 1;
        self.ok_checks += i64::from(check.ok);
        if let Some(latency) = check.latency_ms {
            self.latency_ms_sum += latency;
            self.latency_ms_min = Some(self.latency_ms_min.map_or(latency, |m| m.min(latency)));
            self.latency_ms_max = Some(self.latency_ms_max.map_or(latency, |m| m.max(latency)));
            self.latency_buckets[bucket_of(latency)] += 1;
        }
    }
}

/// A batch's checks arranged for the derived tables: each distinct target and
/// location with the positions of its checks in batch order, and the sums of each
/// period (late results included). sub makes it on the poll thread, before the batch
/// goes to the writer: in the writer's transaction it took 5-7 ms of each
/// 5,000-row batch, with the rows waiting on it.
#[derive(Debug, Default)]
pub struct Grouping {
    pub checks_of: Vec<(Key, Vec<usize>)>,
    /// By [`Period::ALL`].
    pub rollups: [BTreeMap<(Key, DateTime<Utc>), Sums>; Period::ALL.len()],
}

impl Grouping {
    pub fn of<'a>(checks: impl IntoIterator<Item = &'a CheckResult>) -> Grouping {
        let mut index: HashMap<(&str, &str), usize> = HashMap::new();
        let mut checks_of: Vec<((&str, &str), Vec<usize>)> = Vec::new();
        let mut sums: [BTreeMap<(usize, DateTime<Utc>), Sums>; Period::ALL.len()] =
            Default::default();
        for (position, check) in checks.into_iter().enumerate() {
            let key = key_ref(check);
            let next = checks_of.len();
            let key_index = *index.entry(key).or_insert(next);
            if key_index == next {
                checks_of.push((key, Vec::new()));
            }
            checks_of[key_index].1.push(position);
            for (period, sums) in Period::ALL.into_iter().zip(&mut sums) {
                let start = period.start(check.checked_at);
                sums.entry((key_index, start)).or_default().count(check);
            }
        }
        let owned = |(target, location): (&str, &str)| (target.to_owned(), location.to_owned());
        let rollups = sums.map(|sums| {
            sums.into_iter()
                .map(|((key_index, start), sums)| ((owned(checks_of[key_index].0), start), sums))
                .collect()
        });
        Grouping {
            checks_of: checks_of
                .into_iter()
                .map(|(key, positions)| (owned(key), positions))
                .collect(),
            rollups,
        }
    }
}

/// When a run of failures opens an incident, and a run of successes closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub down_after: u32,
    pub up_after: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
        }
    }

    pub fn parse(text: &str) -> State {
        if text == "down" {
            State::Down
        } else {
            State::Up
        }
    }
}

/// A target's row of `<table>_status`.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: State,
    /// The first check of the run that brought the present state.
    pub since: DateTime<Utc>,
    pub last_checked_at: DateTime<Utc>,
    pub consecutive_failures: i32,
    pub consecutive_successes: i32,
    pub last_error_kind: Option<String>,
    pub last_error_text: Option<String>,
    /// The first check of the present run of failures or successes.
    pub run_started_at: DateTime<Utc>,
    /// The error kind of the first failure of the present run of failures.
    pub run_error_kind: Option<String>,
    pub tls_expires_at: Option<DateTime<Utc>>,
    pub tls_days_left: Option<i64>,
}

impl Status {
    /// A target seen for the first time is up until its checks say otherwise.
    pub fn new(first: &CheckResult) -> Status {
        Status {
            state: State::Up,
            since: first.checked_at,
            last_checked_at: first.checked_at,
            consecutive_failures: 0,
            consecutive_successes: 0,
            last_error_kind: None,
            last_error_text: None,
            run_started_at: first.checked_at,
            run_error_kind: None,
            tls_expires_at: None,
            tls_days_left: None,
        }
    }
}

/// A row of `<table>_incidents`, as this batch leaves it. `id` is None for one opened
/// in this batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub id: Option<i64>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub error_kind: Option<String>,
    pub failed_checks: i32,
    pub last_error_text: Option<String>,
}

/// One target's status and the incidents a batch touches: the one open before it,
/// if any, and those it opens.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracker {
    pub status: Option<Status>,
    pub incidents: Vec<Incident>,
    /// Whether a check of this batch changed anything (late ones do not).
    pub changed: bool,
}

impl Tracker {
    pub fn new(status: Option<Status>, open: Option<Incident>) -> Tracker {
        Tracker {
            status,
            incidents: open.into_iter().collect(),
            changed: false,
        }
    }

    fn open_incident(&mut self) -> Option<&mut Incident> {
        self.incidents.last_mut().filter(|i| i.ended_at.is_none())
    }

    /// Applies one check, in the order of the target's results. A check older than
    /// the last one applied (late) changes neither the state nor the incidents.
    pub fn apply(&mut self, check: &CheckResult, thresholds: Thresholds) {
        let status = self.status.get_or_insert_with(|| Status::new(check));
        if check.checked_at < status.last_checked_at {
            return;
        }
        self.changed = true;
        status.last_checked_at = check.checked_at;
        if check.details.tls_expires_at.is_some() {
            status.tls_expires_at = check.details.tls_expires_at;
            status.tls_days_left = check.details.tls_days_left;
        }
        if check.ok {
            self.succeeded(check, thresholds);
        } else {
            self.failed(check, thresholds);
        }
    }

    fn succeeded(&mut self, check: &CheckResult, thresholds: Thresholds) {
        let status = self.status.as_mut().expect("applied checks have a status");
        if status.consecutive_successes == 0 {
            status.run_started_at = check.checked_at;
        }
        status.consecutive_successes += 1;
        status.consecutive_failures = 0;
        let recovered = status.state == State::Down
            && status.consecutive_successes >= thresholds.up_after as i32;
        if recovered {
            status.state = State::Up;
            status.since = status.run_started_at;
            if let Some(incident) = self.open_incident() {
                incident.ended_at = Some(check.checked_at);
            }
        }
    }

    fn failed(&mut self, check: &CheckResult, thresholds: Thresholds) {
        let status = self.status.as_mut().expect("applied checks have a status");
        let kind = check.error_kind.map(|k| k.as_str().to_owned());
        if status.consecutive_failures == 0 {
            status.run_started_at = check.checked_at;
            status.run_error_kind = kind.clone();
        }
        status.consecutive_failures += 1;
        status.consecutive_successes = 0;
        status.last_error_kind = kind;
        status.last_error_text = check.error_text.clone();
        let last_error_text = status.last_error_text.clone();
        if status.state == State::Down {
            if let Some(incident) = self.open_incident() {
                incident.failed_checks += 1;
                incident.last_error_text = last_error_text;
            }
            return;
        }
        if status.consecutive_failures >= thresholds.down_after as i32 {
            status.state = State::Down;
            status.since = status.run_started_at;
            let incident = Incident {
                id: None,
                started_at: status.run_started_at,
                ended_at: None,
                error_kind: status.run_error_kind.clone(),
                failed_checks: status.consecutive_failures,
                last_error_text,
            };
            self.incidents.push(incident);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::message::ErrorKind;

    const GATUS: Thresholds = Thresholds {
        down_after: 3,
        up_after: 2,
    };

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + second, 0).unwrap()
    }

    fn check(second: i64, ok: bool) -> CheckResult {
        let mut check = CheckResult::example(1);
        check.checked_at = at(second);
        check.ok = ok;
        check.error_kind = (!ok).then_some(if second % 2 == 0 {
            ErrorKind::Timeout
        } else {
            ErrorKind::Refused
        });
        check.error_text = (!ok).then(|| format!("failure at {second}"));
        check
    }

    /// Applies checks given as a string: '+' ok, '-' failed, one second apart.
    fn run(pattern: &str) -> Tracker {
        let mut tracker = Tracker::new(None, None);
        for (second, c) in pattern.chars().enumerate() {
            tracker.apply(&check(second as i64, c == '+'), GATUS);
        }
        tracker
    }

    #[test]
    fn flapping_inside_the_thresholds_opens_nothing() {
        let tracker = run("+--+--+-+--+");
        assert!(tracker.incidents.is_empty(), "{tracker:?}");
        assert_eq!(tracker.status.unwrap().state, State::Up);
    }

    #[test]
    fn down_after_failures_from_the_first_of_them_and_up_after_successes() {
        let tracker = run("++---+-++");
        let status = tracker.status.as_ref().unwrap();
        assert_eq!(status.state, State::Up);
        assert_eq!(status.since, at(7), "up since the first success of the run");
        assert_eq!(tracker.incidents.len(), 1);
        let incident = &tracker.incidents[0];
        assert_eq!(
            incident.started_at,
            at(2),
            "the first failed check of the run"
        );
        assert_eq!(incident.ended_at, Some(at(8)), "the check that closed it");
        assert_eq!(
            incident.error_kind.as_deref(),
            Some("timeout"),
            "the first's kind"
        );
        assert_eq!(incident.failed_checks, 4);
        assert_eq!(incident.last_error_text.as_deref(), Some("failure at 6"));
    }

    #[test]
    fn an_open_incident_stays_open_and_counts_on() {
        let tracker = run("+----");
        let status = tracker.status.as_ref().unwrap();
        assert_eq!((status.state, status.since), (State::Down, at(1)));
        assert_eq!(status.consecutive_failures, 4);
        let incident = &tracker.incidents[0];
        assert_eq!(incident.ended_at, None);
        assert_eq!(incident.failed_checks, 4);
        // The next batch picks it up as stored.
        let mut next = Tracker::new(tracker.status.clone(), Some(incident.clone()));
        next.apply(&check(5, false), GATUS);
        next.apply(&check(6, true), GATUS);
        next.apply(&check(7, true), GATUS);
        assert_eq!(next.incidents.len(), 1);
        assert_eq!(next.incidents[0].failed_checks, 5);
        assert_eq!(next.incidents[0].ended_at, Some(at(7)));
    }

    #[test]
    fn a_late_result_changes_neither_state_nor_incidents() {
        let mut tracker = run("+++");
        let before = tracker.clone();
        for second in [0, 1] {
            tracker.apply(&check(second, false), GATUS);
        }
        assert_eq!(tracker.status, before.status);
        assert!(tracker.incidents.is_empty());
    }

    #[test]
    fn the_first_check_of_a_new_target_sets_since() {
        let tracker = run("-");
        let status = tracker.status.unwrap();
        assert_eq!((status.state, status.since), (State::Up, at(0)));
        assert_eq!(status.consecutive_failures, 1);
        assert_eq!(status.last_error_kind.as_deref(), Some("timeout"));
    }

    #[test]
    fn latencies_fall_in_the_first_bucket_whose_bound_holds_them() {
        assert_eq!(bucket_of(0.3), 0);
        assert_eq!(bucket_of(5.0), 0, "bounds are inclusive");
        assert_eq!(bucket_of(5.01), 1);
        assert_eq!(bucket_of(10_000.0), 10);
        assert_eq!(bucket_of(30_000.0), BUCKETS - 1);
    }

    #[test]
    fn a_rollup_sums_per_target_and_hour() {
        let mut checks: Vec<CheckResult> = (0..3).map(|s| check(s, s != 1)).collect();
        checks[2].latency_ms = None;
        checks.push(check(3600, true));
        let [hours, days] = Grouping::of(&checks).rollups;
        assert_eq!(hours.len(), 2);
        assert_eq!(days.len(), 1);
        let first = hours.values().next().unwrap();
        assert_eq!((first.checks, first.ok_checks), (3, 2));
        let latency = checks[0].latency_ms.unwrap();
        assert_eq!(
            first.latency_ms_sum,
            latency + checks[1].latency_ms.unwrap()
        );
        assert_eq!(
            first.latency_buckets.iter().sum::<i32>(),
            2,
            "one had no latency"
        );
    }

    #[test]
    fn a_grouping_keeps_each_targets_checks_in_batch_order_apart_by_location() {
        let mut checks: Vec<CheckResult> = (0..4).map(|s| check(s, true)).collect();
        checks[1].target = "http://elsewhere.test/".into();
        checks[3].details.location = Some("eu-west".into());
        let target = checks[0].target.clone();
        let location = checks[0].details.location.clone().unwrap_or_default();
        let grouping = Grouping::of(&checks);
        let key = |t: &str, l: &str| (t.to_owned(), l.to_owned());
        assert_eq!(
            grouping.checks_of,
            vec![
                (key(&target, &location), vec![0, 2]),
                (key("http://elsewhere.test/", &location), vec![1]),
                (key(&target, "eu-west"), vec![3]),
            ]
        );
        for sums in &grouping.rollups {
            assert_eq!(sums.len(), 3, "one hour and one day for each of the three");
            assert_eq!(sums.values().map(|s| s.checks).sum::<i64>(), 4);
        }
    }
}
