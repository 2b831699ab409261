//! One HTTP check of one target: timing on a monotonic clock and a classified outcome.

use std::io;
use std::time::{Duration, Instant};

use chrono::Utc;
use ureq::Agent;
use uuid::Uuid;

use super::message::{CheckResult, ErrorKind, SCHEMA_VERSION};
use super::targets::Target;

/// Settings shared by every check this process makes.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub timeout: Duration,
    pub max_body_bytes: u64,
}

/// Performs checks; cheap to clone into worker threads.
#[derive(Clone)]
pub struct Prober {
    agent: Agent,
    settings: ProbeSettings,
}

/// What the HTTP exchange produced before the rules were applied.
struct Exchange {
    status: u16,
    body: Vec<u8>,
}

/// A failed exchange: its kind, its detail, and the status if headers had arrived.
struct Failure {
    kind: ErrorKind,
    text: String,
    status: Option<u16>,
}

impl Prober {
    pub fn new(settings: ProbeSettings) -> Prober {
        let config = Agent::config_builder()
            .timeout_global(Some(settings.timeout))
            .http_status_as_error(false)
            .max_redirects(5)
            // Each check must pay for its own connection, or latency would depend on
            // whether a pooled socket happened to be free.
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .user_agent(concat!("metrics-flow/", env!("CARGO_PKG_VERSION")))
            .build();
        Prober {
            agent: config.into(),
            settings,
        }
    }

    pub fn check(&self, target: &Target) -> CheckResult {
        let checked_at = Utc::now();
        let started = Instant::now();
        let exchange = self.exchange(target);
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let pattern = target.pattern.as_ref().map(|p| p.as_str().to_owned());
        let mut result = CheckResult {
            v: SCHEMA_VERSION,
            id: Uuid::new_v4(),
            checked_at,
            target: target.url.to_string(),
            ok: false,
            http_status: None,
            latency_ms: Some(latency_ms),
            error_kind: None,
            error_text: None,
            pattern,
            pattern_found: None,
        };
        match exchange {
            Ok(exchange) => judge(target, exchange, &mut result),
            Err(failure) => {
                result.http_status = failure.status;
                result.error_kind = Some(failure.kind);
                result.error_text = Some(failure.text);
            }
        }
        result
    }

    fn exchange(&self, target: &Target) -> Result<Exchange, Failure> {
        let mut response = self
            .agent
            .get(target.url.as_str())
            .call()
            .map_err(|e| classify(&e, None))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(self.settings.max_body_bytes)
            .read_to_vec()
            .map_err(|e| classify(&e, Some(status)))?;
        Ok(Exchange { status, body })
    }
}

/// Applies the status and pattern rules to a complete exchange.
fn judge(target: &Target, exchange: Exchange, result: &mut CheckResult) {
    result.http_status = Some(exchange.status);
    if let Some(pattern) = &target.pattern {
        result.pattern_found = Some(pattern.is_match(&exchange.body));
    }
    let failure = if !target.expect_status.contains(exchange.status) {
        Some((
            ErrorKind::Status,
            format!(
                "status {} is not in {}",
                exchange.status, target.expect_status
            ),
        ))
    } else if result.pattern_found == Some(false) {
        Some((
            ErrorKind::Pattern,
            "pattern not found in the body".to_owned(),
        ))
    } else {
        None
    };
    match failure {
        None => result.ok = true,
        Some((kind, text)) => {
            result.error_kind = Some(kind);
            result.error_text = Some(text);
        }
    }
}

fn classify(error: &ureq::Error, status: Option<u16>) -> Failure {
    use ureq::Error as E;
    let kind = match error {
        E::HostNotFound => ErrorKind::Dns,
        E::Timeout(ureq::Timeout::Connect) => ErrorKind::ConnectTimeout,
        E::Timeout(ureq::Timeout::Resolve) => ErrorKind::Dns,
        E::Timeout(_) => ErrorKind::Timeout,
        E::Tls(_) | E::Pem(_) | E::Rustls(_) => ErrorKind::Tls,
        E::Protocol(_) => ErrorKind::Protocol,
        E::TooManyRedirects => ErrorKind::TooManyRedirects,
        E::BodyExceedsLimit(_) => ErrorKind::BodyTooLarge,
        E::Io(io_error) => classify_io(io_error),
        _ => ErrorKind::Other,
    };
    Failure {
        kind,
        text: error.to_string(),
        status,
    }
}

fn classify_io(error: &io::Error) -> ErrorKind {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe => ErrorKind::Reset,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::Timeout,
        // std reports getaddrinfo failures with no dedicated kind, only this wording.
        _ if error.to_string().contains("failed to lookup address") => ErrorKind::Dns,
        _ => ErrorKind::Other,
    }
}
