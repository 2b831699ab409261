//! Reading the targets topic whole: every partition from its beginning to the end it
//! has when the read starts, each key's latest value kept and tombstones applied.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::pubsub::kafka;

/// Each key's latest value.
pub type Latest = BTreeMap<String, Vec<u8>>;

/// How long a whole read may take: a topic of targets is small, a slow broker is not.
const READ_LIMIT: Duration = Duration::from_secs(60);
const ASK_LIMIT: Duration = Duration::from_secs(10);

/// Folds one record into what the topic holds: a value replaces, a tombstone removes.
/// A record without a key cannot be a target's and is skipped.
pub fn fold(latest: &mut Latest, key: Option<&[u8]>, value: Option<&[u8]>) {
    let Some(key) = key else {
        log::warn!("a record without a key in the targets topic; skipped");
        return;
    };
    let key = String::from_utf8_lossy(key).into_owned();
    match value {
        Some(value) => latest.insert(key, value.to_vec()),
        None => latest.remove(&key),
    };
}

/// The whole topic; an empty map when it does not exist.
pub fn read_all<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> anyhow::Result<Latest> {
    let partitions = kafka::partition_count(consumer.client(), topic, ASK_LIMIT)
        .with_context(|| format!("looking up topic {topic}"))?;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, ASK_LIMIT)
            .with_context(|| format!("reading the end of {topic} [{partition}]"))?;
        if high > low {
            ends.insert(partition, high);
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    let mut latest = Latest::new();
    if ends.is_empty() {
        return Ok(latest);
    }
    consumer
        .assign(&assignment)
        .context("reading the targets topic")?;
    let deadline = Instant::now() + READ_LIMIT;
    while !ends.is_empty() {
        if Instant::now() >= deadline {
            anyhow::bail!(
                "reading {topic}: {} partition(s) not read to their end after {} s",
                ends.len(),
                READ_LIMIT.as_secs()
            );
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => {
                fold(&mut latest, message.key(), message.payload());
                let partition = message.partition();
                if ends
                    .get(&partition)
                    .is_some_and(|&end| message.offset() + 1 >= end)
                {
                    ends.remove(&partition);
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ends.remove(&partition);
            }
            Some(Err(error)) => {
                return Err(error).with_context(|| format!("reading {topic}"));
            }
        }
    }
    consumer.unassign()?;
    Ok(latest)
}
