//! Connecting to PostgreSQL, for every part that does: DSN parsing (both forms), every
//! libpq sslmode, and a description of the server that never shows the password.

use std::path::PathBuf;
use std::str::FromStr;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use postgres::config::{Host, SslMode};
use postgres::Client;
use postgres_openssl::MakeTlsConnector;

use crate::error::UsageError;
use crate::retry::Permanent;

/// libpq's sslmode values; the postgres crate itself knows only the first three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS parameters libpq understands but the postgres crate does not.
#[derive(Debug, Default, Clone, PartialEq)]
struct TlsParams {
    mode: Option<TlsMode>,
    root_cert: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

/// Everything needed to open (and reopen) a connection.
#[derive(Clone)]
pub struct PgConnector {
    config: postgres::Config,
    /// Built once, when the DSN is checked: OpenSSL reads and parses the system's
    /// whole CA bundle for each one, 25-60 ms here, and sub built a second one to
    /// connect. So the certificate files are read at start, as librdkafka reads its own.
    connector: MakeTlsConnector,
}

impl PgConnector {
    /// Parses a libpq key=value string or a postgres:// URL. Errors never echo the DSN,
    /// since it may carry a password.
    pub fn parse(dsn: &str) -> Result<PgConnector, UsageError> {
        let is_url = dsn.starts_with("postgres://") || dsn.starts_with("postgresql://");
        let (rest, tls) = if is_url {
            split_url(dsn)?
        } else {
            split_key_values(dsn)?
        };
        let mut config = postgres::Config::from_str(&rest).map_err(|e| invalid_dsn(&e))?;
        config.ssl_mode(match tls.mode.unwrap_or(TlsMode::Prefer) {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("metrics-flow");
        }
        let connector = tls_connector(&tls)?;
        Ok(PgConnector { config, connector })
    }

    /// host, port, user and database: enough to recognise the server, never the password.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|host| match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = self.config.get_ports().iter().map(u16::to_string).collect();
        format!(
            "PostgreSQL at {}:{} (user {}, database {})",
            if hosts.is_empty() {
                "localhost".into()
            } else {
                hosts.join(",")
            },
            if ports.is_empty() {
                "5432".into()
            } else {
                ports.join(",")
            },
            self.config.get_user().unwrap_or("default"),
            self.config.get_dbname().unwrap_or("default"),
        )
    }

    /// One attempt to connect. A refusal that waiting cannot cure (a wrong password,
    /// a missing database or role) is [`Permanent`], so it is not retried.
    pub fn connect(&self) -> anyhow::Result<Client> {
        self.config
            .connect(self.connector.clone())
            .map_err(|error| {
                let reason = anyhow::anyhow!(error_chain(&error));
                let permanent = error.code().is_some_and(|code| {
                    // 28: invalid authorization (bad password, no such role, pg_hba),
                    // 3D000: no such database, 42501: no permission to connect.
                    code.code().starts_with("28") || ["3D000", "42501"].contains(&code.code())
                });
                if permanent {
                    Permanent(reason).into()
                } else {
                    reason
                }
            })
    }
}

/// TLS as libpq would set it up for these parameters; a file that cannot be used is
/// a usage error.
fn tls_connector(tls: &TlsParams) -> Result<MakeTlsConnector, UsageError> {
    let mode = tls.mode.unwrap_or(TlsMode::Prefer);
    let usage = |what: &str, e: openssl::error::ErrorStack| {
        UsageError::new(format!("--dsn (POSTGRESQL_DSN) {what}: {e}"))
    };
    let mut builder =
        SslConnector::builder(SslMethod::tls()).map_err(|e| usage("TLS setup failed", e))?;
    if let Some(root) = &tls.root_cert {
        readable("sslrootcert", root)?;
        builder
            .set_ca_file(root)
            .map_err(|e| usage("sslrootcert is not a PEM CA file", e))?;
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        readable("sslcert", cert)?;
        readable("sslkey", key)?;
        builder
            .set_certificate_chain_file(cert)
            .map_err(|e| usage("sslcert is not a PEM certificate", e))?;
        builder
            .set_private_key_file(key, SslFiletype::PEM)
            .map_err(|e| usage("sslkey is not a PEM key", e))?;
        builder
            .check_private_key()
            .map_err(|e| usage("sslkey does not match sslcert", e))?;
    }
    // libpq: prefer/require check nothing unless a root certificate is given,
    // in which case require behaves as verify-ca.
    let verify_chain = match mode {
        TlsMode::Disable | TlsMode::Prefer => false,
        TlsMode::Require => tls.root_cert.is_some(),
        TlsMode::VerifyCa | TlsMode::VerifyFull => true,
    };
    if !verify_chain {
        builder.set_verify(SslVerifyMode::NONE);
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    let verify_host = mode == TlsMode::VerifyFull;
    connector.set_callback(move |config, _host| {
        config.set_verify_hostname(verify_host);
        Ok(())
    });
    Ok(connector)
}

/// The error and its causes on one line, each said once: OpenSSL's causes repeat
/// their parent's text.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// The postgres crate says only "invalid connection string" and puts the option at
/// fault in the error's source; the value is never quoted, as it may be a password.
fn invalid_dsn(error: &postgres::Error) -> UsageError {
    let reason = std::error::Error::source(error)
        .map(|cause| cause.to_string().replace('`', "'"))
        .unwrap_or_else(|| error.to_string());
    UsageError::new(format!("--dsn (POSTGRESQL_DSN) is invalid: {reason}"))
}

fn readable(param: &str, path: &std::path::Path) -> Result<(), UsageError> {
    let setting = format!("--dsn (POSTGRESQL_DSN) {param}");
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| UsageError::unreadable(&setting, path, &e))
}

impl TlsParams {
    /// Takes the parameter if it is a TLS one; returns false for everything else.
    fn take(&mut self, key: &str, value: &str) -> Result<bool, UsageError> {
        match key {
            "sslmode" => self.mode = Some(parse_mode(value)?),
            "sslrootcert" => self.root_cert = Some(value.into()),
            "sslcert" => self.client_cert = Some(value.into()),
            "sslkey" => self.client_key = Some(value.into()),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

fn parse_mode(value: &str) -> Result<TlsMode, UsageError> {
    Ok(match value {
        "disable" => TlsMode::Disable,
        "allow" | "prefer" => TlsMode::Prefer,
        "require" => TlsMode::Require,
        "verify-ca" => TlsMode::VerifyCa,
        "verify-full" => TlsMode::VerifyFull,
        other => {
            return Err(UsageError::new(format!(
                "--dsn (POSTGRESQL_DSN): unknown sslmode '{other}' (disable, prefer, require, verify-ca, verify-full)"
            )))
        }
    })
}

fn split_url(dsn: &str) -> Result<(String, TlsParams), UsageError> {
    let mut url = url::Url::parse(dsn)
        .map_err(|e| UsageError::new(format!("--dsn (POSTGRESQL_DSN) is not a valid URL: {e}")))?;
    let mut tls = TlsParams::default();
    let mut kept = Vec::new();
    for (key, value) in url.query_pairs() {
        if !tls.take(&key, &value)? {
            kept.push((key.into_owned(), value.into_owned()));
        }
    }
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((url.into(), tls))
}

/// Splits libpq's `key=value key='quoted value'` form, honouring quotes and backslashes.
fn split_key_values(dsn: &str) -> Result<(String, TlsParams), UsageError> {
    let mut tls = TlsParams::default();
    let mut kept = String::new();
    for (key, value) in key_value_pairs(dsn)? {
        if !tls.take(&key, &value)? {
            let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push_str(&format!("{key}='{escaped}' "));
        }
    }
    Ok((kept, tls))
}

fn key_value_pairs(dsn: &str) -> Result<Vec<(String, String)>, UsageError> {
    let bad = |why: &str| UsageError::new(format!("--dsn (POSTGRESQL_DSN) is invalid: {why}"));
    let mut pairs = Vec::new();
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(bad(&format!("expected '=' after '{key}'")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if_eq(&'\'').is_some();
        loop {
            match chars.next() {
                None if quoted => return Err(bad(&format!("unterminated quote in '{key}'"))),
                None => break,
                Some('\'') if quoted => break,
                Some(c) if c.is_whitespace() && !quoted => break,
                Some('\\') => value.extend(chars.next()),
                Some(c) => value.push(c),
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_form_keeps_quoted_values() {
        let pairs = key_value_pairs("host=db port = 5433 password='a b\\'c' dbname=x").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("host".into(), "db".into()),
                ("port".into(), "5433".into()),
                ("password".into(), "a b'c".into()),
                ("dbname".into(), "x".into()),
            ]
        );
    }

    #[test]
    fn tls_params_come_out_of_both_forms() {
        let (_, tls) = split_key_values("host=h sslmode=verify-full sslrootcert=/ca.pem").unwrap();
        assert_eq!(tls.mode, Some(TlsMode::VerifyFull));
        assert_eq!(tls.root_cert, Some(PathBuf::from("/ca.pem")));
        let (rest, tls) = split_url(
            "postgres://u:p@h:5/db?sslmode=verify-ca&sslrootcert=%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(tls.mode, Some(TlsMode::VerifyCa));
        assert_eq!(tls.root_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(rest, "postgres://u:p@h:5/db?application_name=x");
    }

    #[test]
    fn a_bad_option_is_named_but_its_value_is_not_shown() {
        for (dsn, named) in [
            (
                "host=h password=hunter2 frobnicate=1",
                "unknown option 'frobnicate'",
            ),
            (
                "host=h password=hunter2 port=hunter2",
                "invalid value for option 'port'",
            ),
            (
                "postgres://u:hunter2@h/db?frobnicate=hunter2",
                "unknown option 'frobnicate'",
            ),
        ] {
            let error = PgConnector::parse(dsn).err().expect(dsn).to_string();
            assert!(error.contains(named), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn describe_never_shows_the_password() {
        for dsn in [
            "host=127.0.0.1 port=15432 user=metrics password=hunter2 dbname=metrics sslmode=disable",
            "postgres://metrics:hunter2@127.0.0.1:15432/metrics?sslmode=disable",
        ] {
            let described = PgConnector::parse(dsn).unwrap().describe();
            assert!(!described.contains("hunter2"), "{described}");
            assert!(described.contains("127.0.0.1:15432"), "{described}");
        }
    }

    #[test]
    fn bad_dsns_are_usage_errors_without_secrets() {
        for dsn in [
            "host=h password=hunter2 sslmode=sometimes",
            "host=h password='hunter2",
            "host=h password=hunter2 port=notaport",
            "host=h password=hunter2 sslmode=verify-full sslrootcert=/nonexistent/ca.pem",
        ] {
            let error = PgConnector::parse(dsn).err().expect(dsn).to_string();
            assert!(!error.contains("hunter2"), "{error}");
            assert!(error.contains("POSTGRESQL_DSN"), "{error}");
        }
    }
}
