//! `metrics-flow targets`: `apply` makes the targets topic hold exactly a file's
//! targets, `list` shows what it holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::{read, record};
use crate::cli::{KafkaArgs, ListFormat, TargetsApplyArgs, TargetsCommand, TargetsListArgs};
use crate::error::UsageError;
use crate::pubsub::kafka;
use crate::pubsub::publish::targets::{self, mask_text, Defaults, Spec};
use crate::shutdown::Shutdown;

/// How long `apply` waits for Kafka to take its records.
const FLUSH_LIMIT: Duration = Duration::from_secs(30);

pub fn run(command: TargetsCommand, shutdown: Shutdown) -> anyhow::Result<()> {
    match command {
        TargetsCommand::Apply(args) => apply(&args, &shutdown),
        TargetsCommand::List(args) => list(&args, &shutdown),
    }
}

/// What `apply` does to one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Added,
    Changed,
    Removed,
    Unchanged,
}

fn apply(args: &TargetsApplyArgs, shutdown: &Shutdown) -> anyhow::Result<()> {
    let wanted = wanted_records(args)?;
    let topic = args.topic.name();
    let (consumer, cluster) = connect(&args.topic.kafka, shutdown)?;
    let current = read::read_all(&consumer, &topic)?;
    kafka::close_consumer(&consumer);
    let changes = compare(&wanted, &current);
    for (key, change) in &changes {
        if *change != Change::Unchanged {
            println!("{:<9} {key}", format!("{change:?}").to_lowercase());
        }
    }
    let count = |kind| changes.values().filter(|&&c| c == kind).count();
    let summary = format!(
        "{} added, {} changed, {} removed, {} unchanged",
        count(Change::Added),
        count(Change::Changed),
        count(Change::Removed),
        count(Change::Unchanged)
    );
    if args.dry_run {
        println!("{summary} (dry run: nothing written to {topic})");
        return Ok(());
    }
    let layout = kafka::TopicLayout {
        name: &topic,
        partitions: args.partitions,
        replication: args.replication_factor,
        // Compaction keeps each target's latest record; tombstones go after a day.
        config: &[("cleanup.policy", "compact")],
    };
    kafka::ensure_topic(&args.topic.kafka, &cluster, &layout)?;
    let writes: Vec<(&str, Option<&[u8]>)> = changes
        .iter()
        .filter_map(|(key, change)| match change {
            Change::Added | Change::Changed => Some((key.as_str(), Some(wanted[key].as_slice()))),
            Change::Removed => Some((key.as_str(), None)),
            Change::Unchanged => None,
        })
        .collect();
    write(&args.topic.kafka, &topic, &writes)?;
    println!("{summary}");
    Ok(())
}

/// The file's targets as records, by key. Two URLs that differ only in their password
/// would share a key, and are refused.
fn wanted_records(args: &TargetsApplyArgs) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    // Only to check the file: a target's unset settings stay unset in the topic, and
    // each pub fills them in from its own flags.
    let defaults = Defaults {
        pattern: None,
        timeout: Duration::from_secs(10),
        interval: Duration::from_secs(30),
    };
    let mut wanted = BTreeMap::new();
    for (spec, target) in targets::load_specs("FILE", &args.file, &defaults)? {
        let key = record::key(&target);
        if wanted.insert(key.clone(), record::encode(&spec)).is_some() {
            return Err(UsageError::new(format!(
                "{}: '{key}' is given twice with different passwords",
                args.file.display()
            ))
            .into());
        }
    }
    Ok(wanted)
}

/// Each key of either side and what applying makes of it. A value the topic holds
/// counts as unchanged when it means the same settings, however it is spelled.
fn compare(wanted: &BTreeMap<String, Vec<u8>>, current: &read::Latest) -> BTreeMap<String, Change> {
    let mut changes = BTreeMap::new();
    for (key, value) in wanted {
        let change = match current.get(key) {
            None => Change::Added,
            Some(held) if same_settings(held, value) => Change::Unchanged,
            Some(_) => Change::Changed,
        };
        changes.insert(key.clone(), change);
    }
    for key in current.keys().filter(|key| !wanted.contains_key(*key)) {
        changes.insert(key.clone(), Change::Removed);
    }
    changes
}

fn same_settings(held: &[u8], wanted: &[u8]) -> bool {
    match (record::decode(held), record::decode(wanted)) {
        (Ok(held), Ok(wanted)) => held == wanted,
        _ => false,
    }
}

fn list(args: &TargetsListArgs, shutdown: &Shutdown) -> anyhow::Result<()> {
    let topic = args.topic.name();
    let (consumer, _) = connect(&args.topic.kafka, shutdown)?;
    let held = read::read_all(&consumer, &topic)?;
    kafka::close_consumer(&consumer);
    let listed: Vec<serde_json::Value> = held
        .iter()
        .map(|(key, value)| match record::decode(value) {
            Ok(spec) => shown(&spec),
            Err(why) => serde_json::json!({ "url": key, "error": why }),
        })
        .collect();
    match args.format {
        ListFormat::Json => println!("{}", serde_json::Value::Array(listed)),
        ListFormat::Table => {
            for target in &listed {
                println!("{}", table_line(target));
            }
            log::info!("{} target(s) in {topic}", listed.len());
        }
    }
    Ok(())
}

/// A target's settings as `list` shows them: the URL's password masked, header
/// values (an Authorization header is a password too) and the CA's text left out.
fn shown(spec: &Spec) -> serde_json::Value {
    let mut value = serde_json::to_value(spec).expect("a Spec is plain data");
    value["url"] = mask_text(&spec.url).into();
    if let Some(headers) = &spec.headers {
        value["headers"] = headers
            .keys()
            .map(|name| (name.clone(), serde_json::Value::from("***")))
            .collect();
    }
    if let Some(pem) = &spec.ca_pem {
        value["ca_pem"] = format!("({} bytes)", pem.len()).into();
    }
    value
}

/// `url  key=value ...`: the settings the topic sets, in the file's key names.
fn table_line(target: &serde_json::Value) -> String {
    let mut line = target["url"].as_str().unwrap_or_default().to_owned();
    if let Some(fields) = target.as_object() {
        for (key, value) in fields.iter().filter(|(key, _)| *key != "url") {
            line.push_str(&format!("  {key}={value}"));
        }
    }
    line
}

/// A consumer whose brokers answered, and the topics they know.
fn connect(
    args: &KafkaArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<(BaseConsumer<ToolContext>, kafka::Reached)> {
    let consumer: BaseConsumer<ToolContext> = kafka::client_config(args)?
        // librdkafka wants a group even for assigned partitions; nothing is
        // committed to it, so a throwaway one per run is enough.
        .set(
            "group.id",
            format!("metrics-flow-targets-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(ToolContext::default())
        .context("creating the Kafka consumer")?;
    let known = kafka::wait_for_brokers(consumer.client(), || {}, args, shutdown)?;
    Ok((consumer, known))
}

/// Writes the records and waits until Kafka has every one.
fn write(args: &KafkaArgs, topic: &str, records: &[(&str, Option<&[u8]>)]) -> anyhow::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let producer: BaseProducer<ToolContext> = kafka::client_config(args)?
        .set("enable.idempotence", "true")
        .create_with_context(ToolContext::default())
        .context("creating the Kafka producer")?;
    for (key, value) in records {
        let mut record = BaseRecord::to(topic).key(*key);
        if let Some(value) = value {
            record = record.payload(*value);
        }
        producer
            .send(record)
            .map_err(|(error, _)| error)
            .with_context(|| format!("writing {key} to {topic}"))?;
    }
    producer
        .flush(FLUSH_LIMIT)
        .with_context(|| format!("writing to {topic}"))?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} record(s) not written to {topic}",
            records.len()
        );
    }
    Ok(())
}

/// The context of `targets`' Kafka clients: librdkafka's errors logged and kept, and
/// failed deliveries counted.
#[derive(Default)]
struct ToolContext {
    last_error: kafka::LastError,
    failed: AtomicU64,
}

impl ClientContext for ToolContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.last_error.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if kafka::is_consumers_routine(&error) {
            log::debug!("{reason}");
        } else {
            self.last_error.error(&error, reason);
        }
    }
}

impl kafka::KeepsLastError for ToolContext {
    fn last_error(&self) -> &kafka::LastError {
        &self.last_error
    }
}

impl ConsumerContext for ToolContext {}

impl ProducerContext for ToolContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            log::error!("a target's record was not written: {error}");
        }
    }
}
