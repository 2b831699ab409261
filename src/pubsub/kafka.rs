//! librdkafka client settings from the shared Kafka flags: bootstrap, TLS files and SASL.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use rdkafka::client::Client;
use rdkafka::config::ClientConfig;
use rdkafka::ClientContext;

use crate::cli::{KafkaArgs, SecurityProtocol};
use crate::error::UsageError;
use crate::shutdown::{retry_until, Shutdown};

/// Builds the settings common to producer and consumer, refusing inconsistent ones.
pub fn client_config(args: &KafkaArgs) -> Result<ClientConfig, UsageError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &args.broker);
    let protocol = security_protocol(args)?;
    config.set("security.protocol", protocol.as_librdkafka());
    for (flag, env, path, key) in [
        (
            "--ssl-ca-file",
            "SSL_CA_FILE",
            &args.ssl_ca_file,
            "ssl.ca.location",
        ),
        (
            "--ssl-cert-file",
            "SSL_CERT_FILE",
            &args.ssl_cert_file,
            "ssl.certificate.location",
        ),
        (
            "--ssl-key-file",
            "SSL_KEY_FILE",
            &args.ssl_key_file,
            "ssl.key.location",
        ),
    ] {
        if let Some(path) = path {
            require_readable(flag, env, path)?;
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
        config.set("sasl.password", password);
    }
    // Keep librdkafka's own logs at the level the user chose through RUST_LOG.
    config.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    Ok(config)
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

fn require_readable(flag: &str, env: &str, path: &Path) -> Result<(), UsageError> {
    File::open(path).map(drop).map_err(|e| {
        UsageError::new(format!(
            "{flag} ({env}): cannot read '{}': {e}",
            path.display()
        ))
    })
}

/// Waits until the brokers answer a metadata request, or the connect deadline passes.
pub fn wait_for_brokers<C: ClientContext>(
    client: &Client<C>,
    args: &KafkaArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let what = format!("Kafka at {}", args.broker);
    retry_until(&what, args.connect_deadline, shutdown, || {
        client
            .fetch_metadata(None, Duration::from_secs(5))
            .map(drop)
            .map_err(anyhow::Error::from)
    })
}
