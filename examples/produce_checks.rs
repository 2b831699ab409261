//! Writes N valid check results into a Kafka topic for `scripts/bench-sub.sh`, made
//! with the crate's own message type, so the benchmark sends what sub accepts.
//!
//!   cargo run --release --example produce_checks -- BROKER TOPIC N
//!
//! 50 targets, a result a millisecond from an hour ago, every ninth a failure.

use std::time::Duration;

use chrono::Utc;
use metrics_flow::pubsub::message::{CheckResult, ErrorKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [broker, topic, count] = args.as_slice() else {
        eprintln!("usage: produce_checks BROKER TOPIC N");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("N is a number");
    let producer: BaseProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .create()
        .expect("creating the producer");
    let start = Utc::now() - chrono::Duration::hours(1);
    for n in 0..count {
        let check = result(n, start);
        let payload = check.encode();
        loop {
            let record = BaseRecord::to(topic).key(&check.target).payload(&payload);
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => panic!("producing to {topic}: {error}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("every result delivered");
}

/// The n-th result: spread over 50 targets and an hour, latencies from 2 to 400 ms.
fn result(n: usize, start: chrono::DateTime<Utc>) -> CheckResult {
    let mut check = CheckResult::example(n);
    let ok = !n.is_multiple_of(9);
    check.target = format!("https://site{}.example.test/health", n % 50);
    check.checked_at = start + chrono::Duration::milliseconds(n as i64);
    check.ok = ok;
    check.http_status = Some(if ok { 200 } else { 503 });
    // A cheap spread of latencies (Knuth's multiplicative hash), no RNG needed.
    let spread = (n as u64).wrapping_mul(2_654_435_761) % 398_000;
    check.latency_ms = Some(2.0 + spread as f64 / 1000.0);
    check.error_kind = (!ok).then_some(ErrorKind::Status);
    check.error_text = (!ok).then(|| "status 503 is not in 200-299".to_owned());
    check.pattern_found = Some(ok);
    check
}
