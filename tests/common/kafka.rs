//! Kafka for the tests: valid results (the crate's own message type), raw messages
//! and tombstones written straight into a topic, and a topic read back whole.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use metrics_flow::pubsub::message::CheckResult;

use super::stack::Stack;
use super::unique;

/// One valid schema-v1 result, as pub would publish it, and its key (the target).
pub fn check_payload(index: usize) -> (String, Vec<u8>) {
    let check = CheckResult::example(index);
    (check.target.clone(), check.encode())
}

/// The JSON of [`check_payload`], for a test to change before sending.
pub fn check_value(index: usize) -> serde_json::Value {
    serde_json::to_value(CheckResult::example(index)).expect("a CheckResult always serializes")
}

/// Counts deliveries that failed, so a producer can't lose messages unnoticed.
#[derive(Default)]
pub struct DeliveryCount {
    failed: AtomicUsize,
}

impl rdkafka::ClientContext for DeliveryCount {}

impl rdkafka::producer::ProducerContext for DeliveryCount {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Creates a topic of one partition with the given topic-level settings.
pub fn create_topic(stack: &Stack, topic: &str, settings: &[(&str, &str)]) {
    create_topic_with(stack, topic, 1, 1, settings);
}

/// Creates a topic of `partitions` partitions, each with `replicas` replicas.
pub fn create_topic_with(
    stack: &Stack,
    topic: &str,
    partitions: i32,
    replicas: i32,
    settings: &[(&str, &str)],
) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.broker)
        .create()
        .expect("creating the test admin client");
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replicas));
    for (key, value) in settings {
        new_topic = new_topic.set(key, value);
    }
    let results =
        futures_executor::block_on(admin.create_topics([&new_topic], &AdminOptions::new()))
            .expect("creating the topic");
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating topic {name}: {code}"));
    }
}

/// Writes valid check results to a topic with rdkafka's BaseProducer, keyed by target
/// so they spread over the topic's partitions.
pub struct CheckProducer {
    producer: rdkafka::producer::BaseProducer<DeliveryCount>,
    topic: String,
    sent: usize,
}

impl CheckProducer {
    pub fn new(stack: &Stack, topic: &str) -> CheckProducer {
        CheckProducer::with(stack, topic, &[])
    }

    /// One that writes each message once through a broker's death, as pub's producer
    /// does: idempotent, acknowledged by all in-sync replicas, retried for as long as
    /// it takes.
    pub fn idempotent(stack: &Stack, topic: &str) -> CheckProducer {
        CheckProducer::with(
            stack,
            topic,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("message.timeout.ms", "0"),
            ],
        )
    }

    fn with(stack: &Stack, topic: &str, settings: &[(&str, &str)]) -> CheckProducer {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &stack.broker)
            .set("linger.ms", "20");
        for (key, value) in settings {
            config.set(*key, *value);
        }
        let producer = config
            .create_with_context(DeliveryCount::default())
            .expect("creating the test producer");
        CheckProducer {
            producer,
            topic: topic.to_owned(),
            sent: 0,
        }
    }

    /// Queues `count` more messages, waiting for room when the local queue is full.
    pub fn send(&mut self, count: usize) {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        use rdkafka::producer::BaseRecord;
        for _ in 0..count {
            let (key, payload) = check_payload(self.sent);
            loop {
                let record = BaseRecord::to(&self.topic).key(&key).payload(&payload);
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        self.producer.poll(Duration::from_millis(20));
                    }
                    Err((error, _)) => panic!("producing to {}: {error}", self.topic),
                }
            }
            self.sent += 1;
        }
        self.producer.poll(Duration::ZERO);
    }

    /// How many messages it has queued so far.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// Waits until Kafka has acknowledged every message; fails the test if any was lost.
    pub fn flush(&self) {
        use rdkafka::producer::Producer;
        self.producer
            .flush(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("flushing the test producer: {e}"));
        let failed = self.producer.context().failed.load(Ordering::SeqCst);
        assert_eq!(failed, 0, "{failed} test message(s) were not delivered");
    }
}

/// A Kafka message as (key, value); a `None` value is a tombstone.
pub type RawMessage<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);
/// A message read back from Kafka, as (key, value).
pub type ReadMessage = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Writes each message to partition 0 of `topic`, in order, and waits for Kafka to
/// take them all.
pub fn produce_raw(stack: &Stack, topic: &str, messages: &[RawMessage<'_>]) {
    use rdkafka::producer::{BaseRecord, Producer};
    let producer: rdkafka::producer::BaseProducer<DeliveryCount> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.broker)
        .create_with_context(DeliveryCount::default())
        .expect("creating the test producer");
    for (key, value) in messages {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).partition(0);
        if let Some(key) = key {
            record = record.key(*key);
        }
        if let Some(value) = value {
            record = record.payload(*value);
        }
        producer
            .send(record)
            .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    }
    producer
        .flush(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("flushing to {topic}: {e}"));
    let failed = producer.context().failed.load(Ordering::SeqCst);
    assert_eq!(failed, 0, "{failed} test message(s) were not delivered");
}

/// Every message of `topic` as (key, value) bytes, read from the start of each partition
/// to the end it had when the read began.
pub fn read_topic(stack: &Stack, topic: &str) -> Vec<ReadMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.broker)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("creating the test consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("reading the topic's metadata");
    let partitions = metadata.topics()[0].partitions().len();
    assert!(partitions > 0, "topic {topic} has no partitions");
    // The end of each partition, asked rather than awaited as an EOF event: a topic
    // that is being written to may not report one in time.
    let mut unread = std::collections::BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .expect("asking where a partition ends");
        if high > low {
            unread.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
    }
    let mut messages = Vec::new();
    if unread.is_empty() {
        return messages;
    }
    consumer
        .assign(&assignment)
        .expect("assigning the partitions");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !unread.is_empty() {
        assert!(Instant::now() < deadline, "{topic} was not read to its end");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let Some(&end) = unread.get(&message.partition()) else {
                    continue;
                };
                if message.offset() < end {
                    messages.push((
                        message.key().map(<[u8]>::to_vec),
                        message.payload().map(<[u8]>::to_vec),
                    ));
                }
                if message.offset() + 1 >= end {
                    unread.remove(&message.partition());
                }
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {}
        }
    }
    messages
}

/// Produces `count` valid check results and waits for Kafka to acknowledge them.
pub fn produce_checks(stack: &Stack, topic: &str, count: usize) {
    let mut producer = CheckProducer::new(stack, topic);
    producer.send(count);
    producer.flush();
}

/// Sends each value as one message, keyed by its target, to partition 0 in order.
pub fn produce_json(stack: &Stack, topic: &str, values: &[serde_json::Value]) {
    let payloads: Vec<(Vec<u8>, Vec<u8>)> = values
        .iter()
        .map(|v| {
            let key = v["target"].as_str().unwrap_or("").as_bytes().to_vec();
            (key, serde_json::to_vec(v).expect("JSON always serializes"))
        })
        .collect();
    let messages: Vec<RawMessage<'_>> = payloads
        .iter()
        .map(|(k, v)| (Some(k.as_slice()), Some(v.as_slice())))
        .collect();
    produce_raw(stack, topic, &messages);
}
