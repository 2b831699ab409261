//! librdkafka client settings from the shared Kafka flags: bootstrap, TLS files and SASL.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use openssl::pkey::PKey;
use openssl::x509::X509;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::Client;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::cli::{KafkaArgs, SecurityProtocol};
use crate::error::UsageError;
use crate::retry::{retry_until, Permanent};
use crate::shutdown::Shutdown;
use crate::sync::lock;
use crate::throttle::{more_like_it, Throttle};

/// Builds the settings common to producer and consumer, refusing inconsistent ones.
pub fn client_config(args: &KafkaArgs) -> Result<ClientConfig, UsageError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &args.broker);
    let protocol = security_protocol(args)?;
    config.set("security.protocol", protocol.as_librdkafka());
    check_tls_files(args)?;
    for (path, key) in [
        (&args.ssl_ca_file, "ssl.ca.location"),
        (&args.ssl_cert_file, "ssl.certificate.location"),
        (&args.ssl_key_file, "ssl.key.location"),
    ] {
        if let Some(path) = path {
            config.set(key, path.to_string_lossy());
        }
    }
    if let Some(mechanism) = args.sasl_mechanism {
        config.set("sasl.mechanism", mechanism.as_librdkafka());
    }
    if let Some(user) = &args.sasl_username {
        config.set("sasl.username", user);
    }
    if let Some(password) = &args.sasl_password {
        config.set("sasl.password", password.expose());
    }
    set_log_level(&mut config);
    Ok(config)
}

/// How long the group waits for a member that stopped answering, and how often a
/// member answers. Kafka's default of 45 s is how long a killed member's partitions
/// wait; brokers accept 6 to 300 s unless configured otherwise. A member hears of a
/// rebalance only at its next heartbeat: at 3 s apart, a fleet's Ctrl-C handover took
/// 4.0 s; at 1 s, 1.5 to 2.0 s.
pub fn set_group_session(config: &mut ClientConfig, session: Duration) {
    let session_ms = session.as_millis();
    config
        .set("session.timeout.ms", session_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (session_ms / 3).min(1000).to_string(),
        );
}

/// librdkafka formats only the lines at or above its own level, and its debug lines
/// only for the contexts named in `debug`. So RUST_LOG decides: with debug enabled for
/// the target `librdkafka` (`RUST_LOG=librdkafka=debug`, or `debug`), librdkafka logs
/// at debug level for the contexts that explain a connection or a group; otherwise it
/// logs warnings and errors only, since its notices repeat what metrics-flow says.
fn set_log_level(config: &mut ClientConfig) {
    if log::log_enabled!(target: "librdkafka", log::Level::Debug) {
        config
            .set_log_level(RDKafkaLogLevel::Debug)
            .set("debug", "broker,topic,metadata,cgrp,security");
    } else {
        config.set_log_level(RDKafkaLogLevel::Warning);
    }
}

fn security_protocol(args: &KafkaArgs) -> Result<SecurityProtocol, UsageError> {
    let any_ssl_file =
        args.ssl_ca_file.is_some() || args.ssl_cert_file.is_some() || args.ssl_key_file.is_some();
    let protocol = args.security_protocol.unwrap_or(if any_ssl_file {
        SecurityProtocol::Ssl
    } else {
        SecurityProtocol::Plaintext
    });
    let sasl = matches!(
        protocol,
        SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
    );
    let sasl_given = args.sasl_mechanism.is_some() || args.sasl_username.is_some();
    if sasl_given && !sasl {
        return Err(UsageError::new(
            "--sasl-mechanism/--sasl-username (KAFKA_SASL_*) need --security-protocol (KAFKA_SECURITY_PROTOCOL) sasl_plaintext or sasl_ssl",
        ));
    }
    if args.ssl_cert_file.is_some() != args.ssl_key_file.is_some() {
        return Err(UsageError::new(
            "--ssl-cert-file (SSL_CERT_FILE) and --ssl-key-file (SSL_KEY_FILE) must be given together",
        ));
    }
    Ok(protocol)
}

/// Reads each given PEM file now, so a wrong path or a mismatched key is a clear
/// usage error instead of a TLS failure deep inside librdkafka later.
fn check_tls_files(args: &KafkaArgs) -> Result<(), UsageError> {
    if let Some(path) = &args.ssl_ca_file {
        let pem = read_pem("--ssl-ca-file (SSL_CA_FILE)", path)?;
        if X509::stack_from_pem(&pem).map_or(true, |certs| certs.is_empty()) {
            return Err(UsageError::new(format!(
                "--ssl-ca-file (SSL_CA_FILE): '{}' holds no PEM certificate",
                path.display()
            )));
        }
    }
    let (Some(cert_path), Some(key_path)) = (&args.ssl_cert_file, &args.ssl_key_file) else {
        return Ok(());
    };
    let cert =
        X509::from_pem(&read_pem("--ssl-cert-file (SSL_CERT_FILE)", cert_path)?).map_err(|_| {
            UsageError::new(format!(
                "--ssl-cert-file (SSL_CERT_FILE): '{}' is not a PEM certificate",
                cert_path.display()
            ))
        })?;
    let key = PKey::private_key_from_pem(&read_pem("--ssl-key-file (SSL_KEY_FILE)", key_path)?)
        .map_err(|_| {
            UsageError::new(format!(
                "--ssl-key-file (SSL_KEY_FILE): '{}' is not an unencrypted PEM private key",
                key_path.display()
            ))
        })?;
    let matches = cert.public_key().is_ok_and(|public| public.public_eq(&key));
    if !matches {
        return Err(UsageError::new(format!(
            "--ssl-key-file (SSL_KEY_FILE) '{}' does not match the certificate in --ssl-cert-file (SSL_CERT_FILE) '{}'",
            key_path.display(),
            cert_path.display()
        )));
    }
    Ok(())
}

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, UsageError> {
    std::fs::read(path).map_err(|e| UsageError::unreadable(flag, path, &e))
}

/// What librdkafka reports through a client's context: logged without flooding, and
/// the most telling error kept. A failed metadata request only says "transport
/// failure"; the reason (a rejected certificate, bad SASL credentials) arrives here,
/// so the user is told that instead.
#[derive(Default)]
pub struct LastError {
    kept: Mutex<Option<Kept>>,
    logged: Mutex<Throttle<String>>,
    /// Whether anything was logged since Kafka last answered; see `answered`.
    troubled: AtomicBool,
}

/// An error worth telling the user at exit.
struct Kept {
    text: String,
    /// A cause (bad credentials, TLS) rather than its consequence (brokers down): a
    /// consequence reported after it must not hide it.
    cause: bool,
}

impl LastError {
    /// librdkafka's error callback, and errors its poll calls return: logged, and kept.
    pub fn error(&self, error: &KafkaError, reason: &str) {
        let text = if reason.is_empty() {
            error.to_string()
        } else {
            format!("{error}: {reason}")
        };
        let code = error.rdkafka_error_code();
        // librdkafka counts the brokers down after deciding that all are; with a
        // connection coming back meanwhile it says "0/2 brokers are down".
        if code == Some(RDKafkaErrorCode::AllBrokersDown) && reason.starts_with("0/") {
            log::debug!("Kafka: {text}");
            return;
        }
        let kind = format!("{code:?}");
        if let Some(unlogged) = self.admit(kind, Instant::now()) {
            log::error!("Kafka: {text}{}", more_like_it(unlogged));
        }
        let cause = matches!(
            code,
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL)
        );
        self.keep(text, cause);
    }

    fn admit(&self, kind: String, now: Instant) -> Option<u64> {
        let admitted = lock(&self.logged).admit(kind, now);
        self.troubled.store(true, Ordering::Relaxed);
        admitted
    }

    fn keep(&self, text: String, cause: bool) {
        let mut kept = lock(&self.kept);
        if kept.as_ref().is_some_and(|k| k.cause && !cause) {
            return;
        }
        *kept = Some(Kept { text, cause });
    }

    /// Passes librdkafka's log line on to the `log` crate, throttled per facility;
    /// error-level lines (a failed TLS handshake or SASL login is reported only this
    /// way) are also kept.
    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        use RDKafkaLogLevel as L;
        // A fresh cluster answers the idempotent producer's first id request this way;
        // librdkafka retries it, and it is no fault.
        if message.contains("Coordinator load in progress") {
            log::info!(target: "librdkafka", "{facility}: {message}");
            return;
        }
        if matches!(level, L::Debug | L::Info | L::Notice) {
            let line = format!("{facility}: {message}");
            match level {
                L::Debug => log::debug!(target: "librdkafka", "{line}"),
                _ => log::info!(target: "librdkafka", "{line}"),
            }
            return;
        }
        let warning = matches!(level, L::Warning);
        if let Some(unlogged) = self.admit(format!("log {facility}"), Instant::now()) {
            let more = more_like_it(unlogged);
            if warning {
                log::warn!(target: "librdkafka", "{facility}: {message}{more}");
            } else {
                log::error!(target: "librdkafka", "{facility}: {message}{more}");
            }
        }
        if !warning {
            // Often the first word of a failed login or handshake, before the error
            // callback says the same.
            let cause = ["SASL authentication error", "SSL handshake failed"]
                .iter()
                .any(|sign| message.contains(sign));
            self.keep(message.to_owned(), cause);
        }
    }

    /// Kafka answered (a message consumed, a delivery confirmed): if errors were
    /// logged since it last did, say that it is back, once.
    pub fn answered(&self) {
        if !self.troubled.swap(false, Ordering::Relaxed) {
            return;
        }
        if let Some(since) = lock(&self.logged).reset() {
            log::info!(
                "Kafka answers again, after {:.0} s of errors",
                since.elapsed().as_secs_f64()
            );
        }
    }

    fn take(&self) -> Option<Kept> {
        lock(&self.kept).take()
    }
}

/// Errors a consumer meets in its normal course: the end of a partition (how a reader
/// knows it is done) and a topic that does not exist yet (waited for). Logged at
/// debug level, not kept.
pub fn is_consumers_routine(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::PartitionEOF(_)
            | KafkaError::Global(
                RDKafkaErrorCode::PartitionEOF | RDKafkaErrorCode::UnknownTopicOrPartition
            )
    )
}

/// A client context that keeps librdkafka's latest error.
pub trait KeepsLastError: ClientContext {
    fn last_error(&self) -> &LastError;
}

/// Waits until the brokers answer a metadata request, or the connect deadline passes,
/// and returns the names of the topics they know. `serve_events` polls the client so
/// librdkafka's error callbacks run in between.
pub fn wait_for_brokers<C: KeepsLastError>(
    client: &Client<C>,
    serve_events: impl Fn(),
    args: &KafkaArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<Reached> {
    let what = format!("Kafka at {}", args.broker);
    // Several attempts fit in any deadline, so the user sees each one logged.
    let attempt_limit =
        (args.connect_deadline / 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
    retry_until(&what, args.connect_deadline, shutdown, || {
        client
            .fetch_metadata(None, attempt_limit)
            .map(|metadata| Reached {
                topics: metadata
                    .topics()
                    .iter()
                    .map(|t| t.name().to_owned())
                    .collect(),
                brokers: metadata.brokers().len(),
            })
            .map_err(|error| {
                serve_events();
                match client.context().last_error().take() {
                    // Bad credentials do not get better by waiting for them.
                    Some(kept) if kept.cause && kept.text.contains("Authentication") => {
                        Permanent(anyhow::anyhow!("{what}: {}", kept.text)).into()
                    }
                    Some(kept) => anyhow::anyhow!(kept.text),
                    None => anyhow::anyhow!(error.to_string()),
                }
            })
    })
}

/// Leaves the consumer's group and closes it, ahead of its drop. rdkafka's drop does
/// the same, but waits for the end of the close in polls of 100 ms, and the close ends
/// early in the first: `sub --once` exited 95-110 ms after its revoke callback, all of
/// it in that wait; with this, 5-10 ms. Polling serves the revoke callback as the drop
/// would. The drop then finds the consumer closed, which [`crate::logging`] keeps
/// quiet.
pub fn close_consumer<C: ConsumerContext>(consumer: &BaseConsumer<C>) {
    if consumer.close_queue().is_ok() {
        while !consumer.closed() {
            let _ = consumer.poll(CLOSE_POLL);
        }
    }
}

/// The step of [`close_consumer`]'s wait: a close took 2-5 ms on the local broker.
const CLOSE_POLL: Duration = Duration::from_millis(2);

/// What the first metadata answer told of the cluster.
pub struct Reached {
    pub topics: Vec<String>,
    pub brokers: usize,
}

impl Reached {
    pub fn knows(&self, topic: &str) -> bool {
        self.topics.iter().any(|known| known == topic)
    }
}

/// How many partitions the brokers report for `topic`; 0 when they do not know it.
pub fn partition_count<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    limit: Duration,
) -> Result<usize, KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), limit)?;
    let partitions = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().len())
        .sum();
    Ok(partitions)
}

/// A topic to create if missing: -1 partitions means the broker's default.
pub struct TopicLayout<'a> {
    pub name: &'a str,
    pub partitions: i32,
    /// None: see [`default_replication`].
    pub replication: Option<i32>,
    /// Topic-level settings, such as `cleanup.policy`.
    pub config: &'a [(&'a str, &'a str)],
}

/// Three copies, as managed services keep, or one per broker on a smaller cluster.
/// Not the broker's `default.replication.factor`: that is 1 unless someone set it, and
/// a topic with one copy loses results when its broker dies.
pub fn default_replication(brokers: usize) -> i32 {
    match brokers {
        0 => -1,
        n => n.min(3) as i32,
    }
}

/// Creates the topic when the cluster (from [`wait_for_brokers`]) lacks it, with the
/// requested layout. A broker that refuses (no permission, creation disabled) gets a
/// warning, not an exit: it may still create the topic on first write, or an operator
/// will.
pub fn ensure_topic(
    args: &KafkaArgs,
    cluster: &Reached,
    layout: &TopicLayout,
) -> anyhow::Result<()> {
    if cluster.knows(layout.name) {
        return Ok(());
    }
    let replication = layout
        .replication
        .unwrap_or_else(|| default_replication(cluster.brokers));
    // A topic created by someone else since `known_topics` was read shows up below as
    // TopicAlreadyExists, so it needs no second lookup here.
    let admin: AdminClient<DefaultClientContext> = client_config(args)?
        .create()
        .context("creating the Kafka admin client")?;
    let mut topic = NewTopic::new(
        layout.name,
        layout.partitions,
        TopicReplication::Fixed(replication),
    );
    for (key, value) in layout.config {
        topic = topic.set(key, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = futures_executor::block_on(admin.create_topics([&topic], &options))
        .context("creating the topic");
    // Dropping the admin client joins its polling thread, which wakes every 100 ms:
    // a first `pub --once` spent that long doing nothing. Another thread waits instead.
    let _ = std::thread::Builder::new()
        .name("admin-drop".into())
        .spawn(move || drop(admin));
    let results = results?;
    for result in results {
        match result {
            Ok(name) => log::info!("created topic {name} (replication factor {replication})"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => log::warn!(
                "could not create topic {name} ({code}); going on: the broker may create it on first write"
            ),
        }
    }
    Ok(())
}

/// How often librdkafka reports its statistics when `/healthz` is served: how soon
/// a lost or regained broker connection shows there.
const STATS_EVERY_MS: &str = "1000";

/// Asks librdkafka for the statistics [`record_broker_link`] reads.
pub fn report_broker_states(config: &mut ClientConfig) {
    config.set("statistics.interval.ms", STATS_EVERY_MS);
}

/// The part of librdkafka's statistics that says which brokers it is connected to.
#[derive(serde::Deserialize)]
struct BrokerStates {
    brokers: std::collections::BTreeMap<String, BrokerState>,
}

#[derive(serde::Deserialize)]
struct BrokerState {
    state: String,
}

/// Kafka is up for this client while it holds a connection to at least one broker.
pub fn record_broker_link(link: &crate::pubsub::metrics::Link, statistics: &[u8]) {
    let Ok(states) = serde_json::from_slice::<BrokerStates>(statistics) else {
        return;
    };
    if states.brokers.values().any(|broker| broker.state == "UP") {
        link.up();
        return;
    }
    let seen: Vec<String> = states
        .brokers
        .iter()
        .map(|(name, broker)| format!("{name} {}", broker.state))
        .collect();
    link.down(format!("no broker connected ({})", seen.join(", ")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_topic_has_three_copies_or_one_per_broker() {
        assert_eq!(default_replication(1), 1);
        assert_eq!(default_replication(2), 2);
        assert_eq!(default_replication(3), 3);
        assert_eq!(default_replication(6), 3);
        // No broker listed: the broker's own default decides.
        assert_eq!(default_replication(0), -1);
    }

    #[test]
    fn a_cause_is_not_hidden_by_its_consequence() {
        let errors = LastError::default();
        let auth = KafkaError::Global(RDKafkaErrorCode::Authentication);
        let down = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        errors.error(&auth, "SASL authentication error: invalid credentials");
        errors.error(&down, "1/1 brokers are down");
        let kept = errors.take().expect("an error is kept");
        assert!(kept.text.contains("invalid credentials"), "{}", kept.text);
        errors.error(&down, "1/1 brokers are down");
        assert!(errors.take().unwrap().text.contains("brokers are down"));
    }

    #[test]
    fn kafka_is_up_while_one_broker_is_connected() {
        let link = crate::pubsub::metrics::Link::new("Kafka");
        let stats = |a: &str, b: &str| {
            format!(
                r#"{{"name":"x","brokers":{{"a:1/1":{{"state":"{a}"}},"b:2/2":{{"state":"{b}"}}}}}}"#
            )
        };
        record_broker_link(&link, stats("UP", "DOWN").as_bytes());
        assert_eq!(link.problem(), None);
        record_broker_link(&link, stats("DOWN", "CONNECT").as_bytes());
        let down = "Kafka: no broker connected (a:1/1 DOWN, b:2/2 CONNECT)";
        assert_eq!(link.problem().as_deref(), Some(down));
        // Statistics it cannot read change nothing.
        record_broker_link(&link, b"not json");
        assert_eq!(link.problem().as_deref(), Some(down));
    }
}
