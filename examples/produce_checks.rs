//! Writes N valid check results into a Kafka topic for `scripts/bench-sub.sh`, made
//! with the crate's own message type, so the benchmark sends what sub accepts.
//!
//!   cargo run --release --example produce_checks -- BROKER TOPIC N [--connect-topic TOPIC2]
//!
//! 50 targets, a result a millisecond from an hour ago, every ninth a failure.
//!
//! With `--connect-topic`, each result also goes to TOPIC2, with the same key, wrapped
//! in the schema envelope that Kafka Connect's JsonConverter needs with
//! `schemas.enable=true` (`{"schema": ..., "payload": <the message>}`), for
//! `scripts/bench-peers.sh`. Both topics then hold the same results, ids included.

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use metrics_flow::pubsub::message::{CheckResult, ErrorKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (broker, topic, count, connect_topic) = match args.as_slice() {
        [broker, topic, count] => (broker, topic, count, None),
        [broker, topic, count, flag, connect] if flag == "--connect-topic" => {
            (broker, topic, count, Some(connect))
        }
        _ => {
            eprintln!("usage: produce_checks BROKER TOPIC N [--connect-topic TOPIC2]");
            std::process::exit(2);
        }
    };
    let count: usize = count.parse().expect("N is a number");
    let producer: BaseProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .create()
        .expect("creating the producer");
    let start = Utc::now() - chrono::Duration::hours(1);
    let (mut bytes, mut enveloped_bytes) = (0, 0);
    for n in 0..count {
        let check = result(n, start);
        let payload = check.encode();
        bytes += payload.len();
        send(&producer, topic, &check.target, &payload);
        if let Some(connect_topic) = connect_topic {
            let wrapped = enveloped(&payload);
            enveloped_bytes += wrapped.len();
            send(&producer, connect_topic, &check.target, &wrapped);
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("every result delivered");
    // For bench-peers.sh, which waits for the last results and shows the sizes.
    let stamp = |n: usize| {
        result(n, start)
            .checked_at
            .to_rfc3339_opts(SecondsFormat::Micros, true)
    };
    let average = |total: usize| total / count.max(1);
    let mut summary = format!(
        "produced {count} result(s) to {topic}, checked_at {} to {}, {} bytes a message",
        stamp(0),
        stamp(count.saturating_sub(1)),
        average(bytes),
    );
    if let Some(connect_topic) = connect_topic {
        summary += &format!(
            ", and to {connect_topic} {} bytes a message enveloped",
            average(enveloped_bytes)
        );
    }
    eprintln!("{summary}");
}

fn send(producer: &BaseProducer, topic: &str, key: &str, payload: &[u8]) {
    loop {
        let record = BaseRecord::to(topic).key(key).payload(payload);
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(10));
            }
            Err((error, _)) => panic!("producing to {topic}: {error}"),
        }
    }
}

/// The message's own bytes as the payload, so both topics carry the same values.
fn enveloped(payload: &[u8]) -> Vec<u8> {
    let schema = schema();
    let mut out = Vec::with_capacity(schema.len() + payload.len() + 24);
    out.extend_from_slice(b"{\"schema\":");
    out.extend_from_slice(schema.as_bytes());
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload);
    out.push(b'}');
    out
}

/// A Connect struct schema with a field for each column of sub's results table that
/// the message fills. JsonConverter reads only the fields a schema names, so `v` is
/// left out, as sub leaves it out of the table. Debezium's JDBC sink writes a string
/// named io.debezium.data.Uuid to a uuid column and io.debezium.time.ZonedTimestamp
/// (ISO 8601 with an offset, which is what the message's RFC 3339 is) to timestamptz.
fn schema() -> &'static str {
    static SCHEMA: OnceLock<String> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let field = |name: &str, kind: &str, optional: bool| -> Value {
            json!({ "field": name, "type": kind, "optional": optional })
        };
        let named = |name: &str, semantic: &str, optional: bool| -> Value {
            json!({ "field": name, "type": "string", "name": semantic, "optional": optional })
        };
        let fields = vec![
            named("id", "io.debezium.data.Uuid", false),
            named("checked_at", "io.debezium.time.ZonedTimestamp", false),
            field("target", "string", false),
            field("ok", "boolean", false),
            field("http_status", "int32", true),
            field("latency_ms", "double", true),
            field("error_kind", "string", true),
            field("error_text", "string", true),
            field("pattern", "string", true),
            field("pattern_found", "boolean", true),
            field("dns_ms", "double", true),
            field("connect_ms", "double", true),
            field("tls_ms", "double", true),
            field("ttfb_ms", "double", true),
            named("tls_expires_at", "io.debezium.time.ZonedTimestamp", true),
            field("tls_days_left", "int32", true),
            field("http_version", "string", true),
            field("final_url", "string", true),
            field("redirects", "int32", true),
            field("body_bytes", "int64", true),
            field("schedule_lag_ms", "double", true),
            field("location", "string", true),
            field("probe", "string", true),
        ];
        json!({ "type": "struct", "name": "metrics_flow.check.v1", "optional": false, "fields": fields })
            .to_string()
    })
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
