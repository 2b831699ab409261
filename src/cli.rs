//! Command-line surface: every flag, its environment variable and its default.

use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::pubsub::metrics::ListenAddr;
use crate::pubsub::publish::shard;
use crate::pubsub::publish::targets::{parse_regex, UrlArg};
use crate::pubsub::table::TableName;
use crate::seconds;
use crate::secret::Secret;

/// pub's --max-body-bytes when neither the flag nor MAX_BODY_BYTES is given.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;

/// Website availability monitor: HTTP checks to Kafka, Kafka to PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "metrics-flow", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process arguments; see [`Cli::from_matches`].
    pub fn parse_args() -> Result<Cli, clap::Error> {
        Cli::from_matches(&Cli::command().try_get_matches()?)
    }

    /// OpenSSL itself reads SSL_CERT_FILE as a CA bundle, and many machines export it
    /// for that. So a certificate that only comes from that variable, with no key
    /// beside it, is taken as that bundle and ignored here, not as a client certificate.
    ///
    /// Commas separate URLs in TARGET only: a URL given with --target is one URL, and
    /// may hold commas of its own.
    pub fn from_matches(matches: &ArgMatches) -> Result<Cli, clap::Error> {
        let mut cli = Cli::from_arg_matches(matches)?;
        let (_, sub_matches) = matches.subcommand().expect("a subcommand is required");
        let kafka = match &mut cli.command {
            Command::Pub(args) => {
                if sub_matches.value_source("targets") == Some(ValueSource::EnvVariable) {
                    args.targets = args
                        .targets
                        .iter()
                        .flat_map(|list| list.0.split(','))
                        .map(|url| UrlArg(url.to_owned()))
                        .collect();
                }
                &mut args.kafka
            }
            Command::Sub(args) => &mut args.kafka,
            Command::Report(_) => return Ok(cli),
            Command::Targets(TargetsCommand::Apply(args)) => &mut args.topic.kafka,
            Command::Targets(TargetsCommand::List(args)) => &mut args.topic.kafka,
        };
        // `targets apply` and `targets list` are one level further down.
        let sub_matches = match sub_matches.subcommand() {
            Some((_, nested)) => nested,
            None => sub_matches,
        };
        let cert_from_env =
            sub_matches.value_source("ssl_cert_file") == Some(ValueSource::EnvVariable);
        if cert_from_env && kafka.ssl_key_file.is_none() {
            kafka.ssl_cert_file = None;
        }
        Ok(cli)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check target websites and publish one result per check to Kafka.
    Pub(PubArgs),
    /// Consume check results from Kafka and store each one in PostgreSQL exactly once.
    Sub(SubArgs),
    /// Answer what is up, what was down and how often, from what sub stored.
    Report(ReportArgs),
    /// Manage the targets topic that a fleet of pubs shares (--targets-topic).
    #[command(subcommand)]
    Targets(TargetsCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    #[value(name = "sasl_plaintext", alias = "sasl-plaintext")]
    SaslPlaintext,
    #[value(name = "sasl_ssl", alias = "sasl-ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Connection settings shared by both subcommands.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "KAFKA_BROKER", default_value = "localhost:9092")]
    pub broker: String,

    /// Kafka topic carrying the check results.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "checks", value_parser = parse_topic)]
    pub topic: String,

    /// Kafka security protocol [default: plaintext, or ssl when an --ssl-* file is given].
    #[arg(long, env = "KAFKA_SECURITY_PROTOCOL", value_enum, ignore_case = true)]
    pub security_protocol: Option<SecurityProtocol>,

    /// CA certificate (PEM) that signed the broker's certificate.
    #[arg(long, env = "SSL_CA_FILE")]
    pub ssl_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, env = "SSL_CERT_FILE")]
    pub ssl_cert_file: Option<PathBuf>,

    /// Client private key (PEM) for mutual TLS.
    #[arg(long, env = "SSL_KEY_FILE")]
    pub ssl_key_file: Option<PathBuf>,

    /// SASL mechanism.
    #[arg(long, env = "KAFKA_SASL_MECHANISM", value_enum, ignore_case = true)]
    pub sasl_mechanism: Option<SaslMechanism>,

    /// SASL user name.
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,

    /// SASL password.
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true, value_parser = Secret::parse)]
    pub sasl_password: Option<Secret>,

    /// Seconds to keep retrying an unreachable Kafka or PostgreSQL at start-up before exiting 1.
    #[arg(long, env = "CONNECT_DEADLINE", default_value = "60", value_parser = seconds::parse, allow_negative_numbers = true)]
    pub connect_deadline: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct PubArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// A URL to check; repeat the flag for several. TARGET may hold several, comma-separated.
    #[arg(long = "target", env = "TARGET", value_name = "URL", value_parser = UrlArg::parse)]
    pub targets: Vec<UrlArg>,

    /// A file of targets: plain lines (URL, optional pattern) or, if it ends in .toml,
    /// [[target]] tables with per-target settings.
    #[arg(long, env = "TARGETS_FILE")]
    pub targets_file: Option<PathBuf>,

    /// Check only this process's share of the targets: 1-based K of N, stable across restarts.
    #[arg(long, env = "SHARD", value_parser = shard::parse_shard)]
    pub shard: Option<shard::Shard>,

    /// Fleet mode: take the targets from this compacted topic (see `targets apply`),
    /// sharing them with every pub of --pub-group.
    #[arg(
        long,
        env = "KAFKA_TARGETS_TOPIC",
        value_parser = parse_topic,
        conflicts_with_all = ["targets", "targets_file", "shard", "once"]
    )]
    pub targets_topic: Option<String>,

    /// The fleet's consumer group: its pubs share the targets topic's partitions.
    #[arg(long, env = "KAFKA_PUB_GROUP", default_value = "metrics-flow-pub")]
    pub pub_group: String,

    /// Seconds after which the fleet gives a silent pub's targets to the others, such
    /// as those of a pub that was killed; the broker allows 6 to 300 by default.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT", default_value = "10", value_parser = seconds::parse, allow_negative_numbers = true)]
    pub session_timeout: Duration,

    /// Where this pub runs (eu-west, office): published in every result.
    #[arg(long, env = "LOCATION", value_parser = parse_location)]
    pub location: Option<String>,

    /// Serve Prometheus metrics on http://ADDR/metrics and health on /healthz;
    /// ADDR is IP:PORT, or :PORT for every interface.
    #[arg(long, env = "METRICS_LISTEN", value_name = "ADDR", value_parser = ListenAddr::parse)]
    pub metrics_listen: Option<ListenAddr>,

    /// Regex searched in the body of every target that has no pattern of its own.
    #[arg(long, env = "PATTERN", value_parser = parse_regex)]
    pub pattern: Option<regex::bytes::Regex>,

    /// Seconds between two checks of the same target.
    #[arg(long, env = "DELAY", default_value = "30", value_parser = seconds::parse, allow_negative_numbers = true)]
    pub delay: Duration,

    /// The most seconds one check may take, all phases together.
    #[arg(long, env = "TIMEOUT", default_value = "10", value_parser = seconds::parse, allow_negative_numbers = true)]
    pub timeout: Duration,

    /// Seconds to wait at exit for results still on their way to Kafka; those still
    /// undelivered then are lost, and pub exits 1.
    #[arg(long, env = "FLUSH_TIMEOUT", default_value = "30", value_parser = seconds::parse, allow_negative_numbers = true)]
    pub flush_timeout: Duration,

    /// Check every target once, publish, flush and exit.
    #[arg(long)]
    pub once: bool,

    /// The most checks in flight at once in this process.
    #[arg(long, env = "CONCURRENCY", default_value = "32", value_parser = clap::value_parser!(u16).range(1..), allow_negative_numbers = true)]
    pub concurrency: u16,

    /// Results held for Kafka while it is unreachable; past this, new results are dropped
    /// with an error in the log.
    #[arg(long, env = "QUEUE_MAX", default_value = "100000", value_parser = clap::value_parser!(u32).range(1..=10_000_000), allow_negative_numbers = true)]
    pub queue_max: u32,

    /// Seconds pub holds new checks back while the producer's queue is full (a
    /// stalled broker); past that it checks again, and results that do not fit are
    /// dropped.
    #[arg(long, env = "STALL_LIMIT", default_value = "60", value_parser = seconds::parse, allow_negative_numbers = true)]
    pub stall_limit: Duration,

    /// Partitions of the topic when pub has to create it [default: the broker's].
    #[arg(long, env = "TOPIC_PARTITIONS", value_parser = clap::value_parser!(i32).range(1..), allow_negative_numbers = true)]
    pub partitions: Option<i32>,

    /// Replication factor of the topic when pub has to create it [default: 3, or the number of brokers if fewer].
    #[arg(long, env = "TOPIC_REPLICATION_FACTOR", value_parser = clap::value_parser!(i32).range(1..), allow_negative_numbers = true)]
    pub replication_factor: Option<i32>,

    /// Most bytes of a response body read for the pattern; a longer body is a body_too_large failure.
    #[arg(
        long,
        env = "MAX_BODY_BYTES",
        default_value_t = DEFAULT_MAX_BODY_BYTES,
        allow_negative_numbers = true
    )]
    pub max_body_bytes: u64,
}

/// Where the results live: shared by sub, which writes them, and report, which reads them.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection: a libpq key=value string or a postgres:// URL, including sslmode.
    #[arg(
        long,
        env = "POSTGRESQL_DSN",
        default_value = "host=localhost user=postgres dbname=postgres",
        hide_env_values = true,
        value_parser = Secret::parse
    )]
    pub dsn: Secret,

    /// Results table, optionally schema-qualified.
    #[arg(long, env = "POSTGRESQL_TABLE", default_value = "checks", value_parser = TableName::parse)]
    pub table: TableName,
}

#[derive(Debug, Clone, Args)]
pub struct SubArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Kafka consumer group.
    #[arg(long, env = "KAFKA_GROUP", default_value = "metrics-flow")]
    pub group: String,

    /// Seconds after which the group gives a silent member's partitions to the others,
    /// such as those of a sub that was killed; the broker allows 6 to 300 by default.
    // 20, not pub's 10: a killed coordinator leaves the group without one for about
    // 11 s on a three-node cluster (9 s of broker session, then the election). At
    // 10 s sub gave its partitions up and rejoined behind its own ghost: 21-22 s
    // without storing, against 9 s at 20.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT", default_value = "20", value_parser = seconds::parse, allow_negative_numbers = true)]
    pub session_timeout: Duration,

    /// Consume until caught up with the end of every assigned partition, then exit.
    #[arg(long)]
    pub once: bool,

    /// A batch is written once it holds this many messages.
    #[arg(long, env = "BATCH_SIZE", default_value = "5000", value_parser = clap::value_parser!(u32).range(1..), allow_negative_numbers = true)]
    pub batch_size: u32,

    /// Days of results kept: older day partitions are dropped whole, at start and
    /// hourly [default: 0, keep forever].
    #[arg(
        long,
        env = "RETENTION_DAYS",
        default_value = "0",
        allow_negative_numbers = true
    )]
    pub retention_days: u32,

    /// Days of hourly rollups kept, dropped the same way [default: 0, keep forever].
    #[arg(
        long,
        env = "ROLLUP_RETENTION_DAYS",
        default_value = "0",
        allow_negative_numbers = true
    )]
    pub rollup_retention_days: u32,

    /// Consecutive failed checks that open an incident.
    #[arg(long, env = "DOWN_AFTER", default_value = "3", value_parser = clap::value_parser!(u32).range(1..=1000), allow_negative_numbers = true)]
    pub down_after: u32,

    /// Consecutive good checks that close it.
    #[arg(long, env = "UP_AFTER", default_value = "2", value_parser = clap::value_parser!(u32).range(1..=1000), allow_negative_numbers = true)]
    pub up_after: u32,

    /// Serve Prometheus metrics on http://ADDR/metrics and health on /healthz;
    /// ADDR is IP:PORT, or :PORT for every interface.
    #[arg(long, env = "METRICS_LISTEN", value_name = "ADDR", value_parser = ListenAddr::parse)]
    pub metrics_listen: Option<ListenAddr>,

    /// A batch is written once its oldest message has waited this many milliseconds.
    #[arg(long = "batch-age-ms", env = "BATCH_AGE_MS", default_value = "200", value_parser = parse_millis, allow_negative_numbers = true)]
    pub batch_age: Duration,
}

/// How `report` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Only the targets whose URL contains this text.
    #[arg(long = "target", env = "REPORT_TARGET", value_name = "SUBSTRING")]
    pub target: Option<String>,

    /// Output: an aligned table, JSON or CSV.
    #[arg(
        long,
        env = "REPORT_FORMAT",
        value_enum,
        default_value = "table",
        ignore_case = true
    )]
    pub format: ReportFormat,

    /// Also write a self-contained HTML status page to this file.
    #[arg(long, env = "REPORT_HTML", value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Run the report's queries under EXPLAIN ANALYZE and print their plans instead.
    #[arg(long)]
    pub explain: bool,

    /// Seconds to keep retrying an unreachable PostgreSQL before exiting 1.
    #[arg(long, env = "CONNECT_DEADLINE", default_value = "10", value_parser = seconds::parse, allow_negative_numbers = true)]
    pub connect_deadline: Duration,
}

#[derive(Debug, Subcommand)]
pub enum TargetsCommand {
    /// Make the targets topic hold exactly the targets of FILE (plain or TOML, as for
    /// --targets-file): upserts for new and changed targets, tombstones for removed ones.
    Apply(TargetsApplyArgs),
    /// The targets the topic holds now.
    List(TargetsListArgs),
}

/// The targets topic and how to reach it.
#[derive(Debug, Clone, Args)]
pub struct TargetsTopicArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// The targets topic [default: <--topic>-targets].
    #[arg(long, env = "KAFKA_TARGETS_TOPIC", value_parser = parse_topic)]
    pub targets_topic: Option<String>,
}

impl TargetsTopicArgs {
    pub fn name(&self) -> String {
        self.targets_topic
            .clone()
            .unwrap_or_else(|| format!("{}-targets", self.kafka.topic))
    }
}

#[derive(Debug, Clone, Args)]
pub struct TargetsApplyArgs {
    #[command(flatten)]
    pub topic: TargetsTopicArgs,

    /// The targets, in the formats of --targets-file.
    pub file: PathBuf,

    /// Print what would change, and write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Partitions of the targets topic when it has to be created: the most pubs that
    /// can share the work. 12 splits evenly over 1, 2, 3, 4, 6 or 12 pubs.
    #[arg(long, env = "TARGETS_TOPIC_PARTITIONS", default_value = "12", value_parser = clap::value_parser!(i32).range(1..), allow_negative_numbers = true)]
    pub partitions: i32,

    /// Replication factor of the targets topic when it has to be created [default: 3, or the number of brokers if fewer].
    #[arg(long, env = "TOPIC_REPLICATION_FACTOR", value_parser = clap::value_parser!(i32).range(1..), allow_negative_numbers = true)]
    pub replication_factor: Option<i32>,
}

/// How `targets list` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct TargetsListArgs {
    #[command(flatten)]
    pub topic: TargetsTopicArgs,

    /// Output: one target per line, or JSON (passwords masked either way).
    #[arg(long, value_enum, default_value = "table", ignore_case = true)]
    pub format: ListFormat,
}

/// A location is a short label stored with every result; no control characters.
fn parse_location(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() || text.len() > 100 || text.chars().any(char::is_control) {
        return Err(format!(
            "'{}' is not a location: use 1 to 100 printable characters",
            crate::error::one_line(text)
        ));
    }
    Ok(text.to_owned())
}

/// A topic name as Kafka accepts it: 1 to 249 of `a-z A-Z 0-9 . _ -`, but not `.` or
/// `..`. Checked here, because librdkafka only fails each message sent to a bad one.
pub fn parse_topic(text: &str) -> Result<String, String> {
    let valid_chars = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if text.is_empty() || text.len() > 249 || !valid_chars || text == "." || text == ".." {
        return Err(format!(
            "'{}' is not a Kafka topic name: use 1 to 249 letters, digits, '.', '_' and '-'",
            crate::error::one_line(text)
        ));
    }
    Ok(text.to_owned())
}

fn parse_millis(text: &str) -> Result<Duration, String> {
    let millis: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a whole number of milliseconds"))?;
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let argv = std::iter::once("metrics-flow").chain(args.iter().copied());
        Cli::from_matches(&Cli::command().try_get_matches_from(argv)?)
    }

    fn pub_args(args: &[&str]) -> PubArgs {
        match parse(args).expect("parses").command {
            Command::Pub(p) => p,
            _ => panic!("expected pub"),
        }
    }

    #[test]
    fn pub_flags_and_defaults() {
        let args = pub_args(&[
            "pub",
            "--target",
            "http://a.example/",
            "--target",
            "https://b.example/x",
            "--pattern",
            "ok|fine",
            "--delay",
            "0.5",
        ]);
        assert_eq!(args.targets.len(), 2);
        assert_eq!(args.targets[1].0, "https://b.example/x");
        assert_eq!(args.delay, Duration::from_millis(500));
        assert_eq!(args.timeout, Duration::from_secs(10));
        assert!(args.pattern.unwrap().is_match(b"all fine"));
        assert!(!args.once);
        assert_eq!(args.kafka.topic, "checks");
        assert_eq!(args.kafka.connect_deadline, Duration::from_secs(60));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for bad in [
            vec!["pub", "--pattern", "(unclosed"],
            vec!["pub", "--delay", "soon"],
            vec!["pub", "--delay", "-1"],
            vec!["pub", "--delay", "1e-9"],
            vec!["pub", "--topic", "bad topic!"],
            vec!["sub", "--session-timeout", "0"],
            vec!["pub", "--concurrency", "0"],
            vec!["sub", "--table", "checks; drop table x"],
            vec!["sub", "--sasl-mechanism", "GSSAPI"],
        ] {
            let err = parse(&bad).expect_err(&format!("{bad:?} must fail"));
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn a_target_flag_is_one_url_even_with_commas() {
        let args = pub_args(&["pub", "--target", "http://h/search?fields=id,name"]);
        assert_eq!(
            args.targets,
            [UrlArg("http://h/search?fields=id,name".into())]
        );
    }

    #[test]
    fn topic_names_follow_kafkas_rules() {
        for good in ["checks", "a.b_c-9", &"t".repeat(249)] {
            assert_eq!(parse_topic(good).as_deref(), Ok(good));
        }
        for bad in ["", ".", "..", "bad topic!", "t\u{e9}", &"t".repeat(250)] {
            assert!(parse_topic(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn enums_accept_documented_spellings() {
        let cli = parse(&[
            "sub",
            "--security-protocol",
            "sasl_ssl",
            "--sasl-mechanism",
            "SCRAM-SHA-512",
        ])
        .unwrap();
        let Command::Sub(sub) = cli.command else {
            panic!("expected sub")
        };
        assert_eq!(sub.kafka.security_protocol, Some(SecurityProtocol::SaslSsl));
        assert_eq!(sub.kafka.sasl_mechanism, Some(SaslMechanism::ScramSha512));
        assert_eq!(sub.database.table.to_string(), "\"checks\"");
    }
}
