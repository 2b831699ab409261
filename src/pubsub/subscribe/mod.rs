//! `sub`: consumes the results topic and stores every result in PostgreSQL exactly
//! once. Offsets live in PostgreSQL beside the rows, are read back on every
//! assignment, and are fenced on every commit (see [`ledger`]).
//!
//! The path of a message: [`consumer`] polls it, [`sink`] judges it against the
//! [`ledger`] and batches it, and [`store`] writes the batch, what [`derived`] makes of
//! it (rollups, status, incidents) and the offsets in one transaction over the
//! [`session`], into the day [`partitions`] of the tables [`migrations`] made.
//! [`metrics`] counts what is stored and how far the table is behind the topic.

mod answers;
mod backfill;
mod consumer;
mod copy_rows;
pub mod derived;
pub mod ledger;
mod membership;
mod metrics;
pub mod migrations;
pub mod partitions;
pub mod prepared;
mod session;
mod sink;
pub mod store;
mod writer;

use std::sync::{Arc, Mutex};

use anyhow::Context;
use rdkafka::consumer::Consumer;

use consumer::Ended;
use derived::Thresholds;
use membership::Membership;
use metrics::SubMetrics;
use session::Session;
use sink::Sink;
use writer::Keeping;

use crate::cli::SubArgs;
use crate::pubsub::kafka;
use crate::pubsub::metrics::{self as endpoint, Link};
use crate::pubsub::pgconn::PgConnector;
use crate::shutdown::Shutdown;

pub fn run(args: SubArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    // Every setting is checked before anything is contacted, so bad input exits 2 at once.
    let kafka_config = consumer::consumer_config(&args)?;
    let listener = args.metrics_listen.map(endpoint::bind).transpose()?;
    let connector = PgConnector::parse(args.database.dsn.expose())?;
    let mut session = Session::open(connector, args.kafka.connect_deadline, &shutdown)?;
    let keeping = Keeping {
        thresholds: Thresholds {
            down_after: args.down_after,
            up_after: args.up_after,
        },
        retention_days: args.retention_days,
        rollup_retention_days: args.rollup_retention_days,
    };
    migrations::migrate(session.client(), &args.database.table, keeping.thresholds)
        .with_context(|| format!("migrating the schema of {}", args.database.table))?;
    log::info!(
        "storing into {} on {}",
        args.database.table,
        session.describe()
    );

    let newest = store::newest_checked_at(session.client(), &args.database.table)
        .map_err(|e| anyhow::anyhow!(store::describe(&e)))
        .context("reading the newest result stored")?;
    let metrics = Arc::new(SubMetrics::new(
        &args.kafka.topic,
        newest,
        listener.as_ref().map(|_| &kafka_config),
    )?);
    let kafka_link = Link::new("Kafka");
    if let Some(listener) = listener {
        endpoint::serve(listener, metrics_page(&metrics, &kafka_link, &session.link));
    }
    let mut sink = Sink::new(
        session,
        args.database.table.clone(),
        args.kafka.topic.clone(),
        keeping,
        Arc::clone(&metrics),
    )?;
    sink.maintain();
    let sink = Arc::new(Mutex::new(sink));
    say_what_a_forced_exit_abandons(&shutdown, &sink);
    let result = loop {
        let membership = Membership::new(&args.group);
        let consumer = consumer::join_group(
            &kafka_config,
            &membership,
            &sink,
            &kafka_link,
            &args,
            &shutdown,
        )?;
        let ended = match consumer::consume(&consumer, &args, &shutdown, membership) {
            // Closing the consumer leaves the group; its replacement joins afresh and
            // resumes from the offsets stored in PostgreSQL.
            Ok(Ended::LeftGroup) => {
                log::warn!(
                    "this consumer is no longer a member of group {} although the topic exists; rejoining",
                    args.group
                );
                None
            }
            Ok(Ended::Finished) => Some(consumer.context().sink().flush(&consumer)),
            // After a failure the batch in hand is not trusted; it will be re-read.
            Err(error) => Some(Err(error)),
        };
        kafka::close_consumer(&consumer);
        if let Some(result) = ended {
            break result;
        }
    };
    log::info!(
        "stored {} row(s) and {} rejected payload(s)",
        metrics.rows_stored(),
        metrics.rejected()
    );
    result
}

fn metrics_page(
    metrics: &Arc<SubMetrics>,
    kafka: &Arc<Link>,
    database: &Arc<Link>,
) -> endpoint::Page {
    let metrics_ = Arc::clone(metrics);
    endpoint::Page {
        registry: metrics.registry.clone(),
        links: vec![Arc::clone(kafka), Arc::clone(database)],
        refresh: Box::new(move || metrics_.refresh()),
    }
}

fn say_what_a_forced_exit_abandons(shutdown: &Shutdown, sink: &Arc<Mutex<Sink>>) {
    let in_hand = Arc::clone(sink);
    // The signal thread must not wait for a sink busy writing or reconnecting.
    shutdown.on_forced_exit(move || match in_hand.try_lock() {
        Ok(sink) => format!(
            "a batch of {} message(s), which the next start reads again",
            sink.batch_len()
        ),
        Err(_) => "the batch being written, which the next start reads again".to_owned(),
    });
}
