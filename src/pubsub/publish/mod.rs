//! `pub`: checks targets on their schedules and publishes one result per check to
//! Kafka; [`metrics`] counts what happens on the way.
//!
//! The path of a check: [`targets`] loads what to check ([`shard`] narrows it),
//! [`probe`] holds one probe per target, [`schedule`] says when each is due, a thread
//! of [`checkers`] runs it through [`transport`], and [`producer`] sends the result.
//! In fleet mode, [`fleet`] takes the targets from a Kafka topic instead, and hands
//! them to the schedule as the group gives and takes them.

mod backpressure;
mod checkers;
pub mod fleet;
mod metrics;
pub mod probe;
mod producer;
pub mod schedule;
pub mod shard;
pub mod targets;
mod transport;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backpressure::Backpressure;
use checkers::{Checker, CheckerPool, Origin};
use fleet::member::Member;
use metrics::PubMetrics;
use probe::Probe;
use producer::{DeliveryCounter, DeliveryReports, Publisher, StartedProducer, TopicSetup};
use schedule::Dispatcher;
use targets::Target;

use crate::cli::PubArgs;
use crate::error::UsageError;
use crate::pubsub::metrics::{self as endpoint, Link};
use crate::shutdown::Shutdown;

/// The longest the main loop sleeps, so stop requests, lag warnings and progress lines
/// are served promptly.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How often a long run logs what it has done.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// How long checks in flight at a stop request may take beyond their timeout.
const STOP_MARGIN: Duration = Duration::from_secs(5);

pub fn run(args: PubArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let defaults = targets::Defaults {
        pattern: args.pattern.clone(),
        timeout: args.timeout,
        interval: args.delay,
    };
    let metrics = Arc::new(PubMetrics::new());
    let kafka_link = Link::new("Kafka");
    let context = DeliveryCounter::new(&metrics, &kafka_link);
    // librdkafka connects on threads of its own, so the cluster's first answer comes
    // while the targets load: checking began 7-10 ms sooner (28 to 22 ms after start
    // for 2,000 targets, 44 to 34 ms for 10,000, medians of 8). A bad targets file is
    // still the error reported, whatever the state of Kafka.
    let producer = StartedProducer::start(&args, context);
    // In fleet mode the targets come later, from the group.
    let probes = match &args.targets_topic {
        Some(_) => Vec::new(),
        None => Probe::for_each(load_targets(&args, &defaults)?)?,
    };
    let listener = args.metrics_listen.map(endpoint::bind).transpose()?;
    let (producer, cluster) = producer?.wait_for_cluster(&args, &shutdown)?;
    let producer = Arc::new(producer);
    let checkers = match &args.targets_topic {
        Some(_) => usize::from(args.concurrency),
        // A checker beyond one per target would never have work.
        None => usize::from(args.concurrency).min(probes.len()),
    };
    let cadence = if args.once {
        "once".to_owned()
    } else {
        format!("every {:?}", args.delay)
    };
    if args.targets_topic.is_none() {
        log::info!(
            "checking {} target(s) {cadence} with up to {checkers} at once",
            probes.len()
        );
    }
    let work = probes
        .into_iter()
        .map(|probe| {
            let interval = probe.target.interval;
            (probe, interval)
        })
        .collect();
    let dispatcher = Arc::new(Dispatcher::new(work, args.once));
    let publisher = Arc::new(Publisher::new(
        Arc::clone(&producer),
        &args.kafka.topic,
        !cluster.knows(&args.kafka.topic),
        args.queue_max,
    ));
    let reports = DeliveryReports::serve(Arc::clone(&producer));
    if let Some(listener) = listener {
        endpoint::serve(
            listener,
            metrics_page(&metrics, kafka_link, &dispatcher, &publisher),
        );
    }
    let backpressure = Arc::new(Backpressure::new(
        Arc::clone(&dispatcher),
        args.queue_max,
        checkers,
        args.stall_limit,
    ));
    let origin = Arc::new(Origin::new(args.location.clone()));
    log::info!("results carry probe {}", origin.probe);
    let pool = Arc::new(CheckerPool::start(
        checkers,
        Checker {
            max_body_bytes: args.max_body_bytes,
            dispatcher: Arc::clone(&dispatcher),
            publisher: Arc::clone(&publisher),
            backpressure: Arc::clone(&backpressure),
            origin,
        },
    ));
    say_what_a_forced_exit_abandons(&shutdown, &pool, &publisher);
    // After the checkers start, so the first checks do not wait for the topic.
    let topic_setup = TopicSetup::start(&args, cluster, &publisher)?;
    let member = match &args.targets_topic {
        Some(topic) => Some(Member::join(
            &args,
            topic,
            defaults,
            Arc::clone(&dispatcher),
            &shutdown,
        )?),
        None => None,
    };
    wait_for_checkers(
        &pool,
        &dispatcher,
        &publisher,
        &backpressure,
        &shutdown,
        args.timeout,
        member,
    );
    topic_setup.join();
    // Reports are still served during the final flush, which waits for them.
    let finished = publisher.finish(args.flush_timeout);
    drop(reports);
    finished
}

/// The endpoint's page: the gauges are read from the schedule and the producer at
/// each scrape, so serving them costs the checks nothing.
fn metrics_page(
    metrics: &Arc<PubMetrics>,
    kafka: Arc<Link>,
    dispatcher: &Arc<Dispatcher<Probe>>,
    publisher: &Arc<Publisher>,
) -> endpoint::Page {
    let (metrics, dispatcher, publisher) = (
        Arc::clone(metrics),
        Arc::clone(dispatcher),
        Arc::clone(publisher),
    );
    endpoint::Page {
        registry: metrics.registry.clone(),
        links: vec![kafka],
        refresh: Box::new(move || {
            metrics.targets.set(dispatcher.scheduled() as i64);
            metrics
                .publish_queue
                .set(i64::try_from(publisher.waiting()).unwrap_or(i64::MAX));
        }),
    }
}

fn say_what_a_forced_exit_abandons(
    shutdown: &Shutdown,
    pool: &Arc<CheckerPool>,
    publisher: &Arc<Publisher>,
) {
    let (pool, publisher) = (Arc::clone(pool), Arc::clone(publisher));
    shutdown.on_forced_exit(move || {
        format!(
            "{} check(s) in flight and {} result(s) not yet delivered to Kafka",
            pool.running(),
            publisher.waiting()
        )
    });
}

/// The targets this process checks: flags, environment and file, then this shard.
fn load_targets(args: &PubArgs, defaults: &targets::Defaults) -> anyhow::Result<Vec<Target>> {
    let targets = targets::load(
        &args.targets,
        args.targets_file.as_deref(),
        args.shard,
        defaults,
    )?;
    if targets.is_empty() {
        let why = match (args.shard, &args.targets_file) {
            (Some(_), _) => "no targets in this shard".to_owned(),
            (None, Some(file)) => format!(
                "--targets-file (TARGETS_FILE): {} holds no targets",
                file.display()
            ),
            (None, None) => {
                "no targets: give --target URL (TARGET) or --targets-file (TARGETS_FILE)".to_owned()
            }
        };
        return Err(UsageError::new(why).into());
    }
    Ok(targets)
}

/// Serves the periodic log lines and a stop request while the checkers work; returns
/// once they have all stopped, or when checks still running at a stop request have
/// outlived their timeout (they are then abandoned, unpublished).
/// In fleet mode, `member` is served in between, and leaves the group at a stop
/// request, so its targets move to the other pubs at once.
fn wait_for_checkers(
    pool: &CheckerPool,
    dispatcher: &Dispatcher<Probe>,
    publisher: &Publisher,
    backpressure: &Backpressure,
    shutdown: &Shutdown,
    check_timeout: Duration,
    mut member: Option<Member>,
) {
    let mut stop_deadline: Option<Instant> = None;
    let mut since_report = Instant::now();
    loop {
        let stopped = match member.as_mut() {
            Some(member) => {
                member.serve(IDLE_WAIT);
                pool.wait_until_stopped(Duration::ZERO)
            }
            None => pool.wait_until_stopped(IDLE_WAIT),
        };
        if stopped {
            return;
        }
        if shutdown.requested() && stop_deadline.is_none() {
            dispatcher.stop();
            drop(member.take());
            stop_deadline = Some(Instant::now() + check_timeout + STOP_MARGIN);
        }
        if stop_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            log::warn!(
                "{} check(s) still running at exit; not published",
                pool.running()
            );
            return;
        }
        backpressure.tick(publisher.waiting());
        dispatcher.warn_if_lagging();
        if since_report.elapsed() >= PROGRESS_EVERY {
            publisher
                .progress
                .report(since_report.elapsed(), publisher.waiting());
            since_report = Instant::now();
        }
    }
}
