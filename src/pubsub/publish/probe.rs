//! One HTTP check of one target: phase timings on a monotonic clock, the target's rules
//! applied to the response, and every failure classified into a contract error kind.

use std::collections::HashMap;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use chrono::Utc;
use ureq::http::{Request, Response};
use ureq::{Agent, Body, ResponseExt};
use uuid::Uuid;

use super::targets::{mask_text, CaPem, Target, MAX_REQUEST_HEAD};
use super::transport::{self, OpensslConnector, Phases, TimedResolver, TimedTcp};
use crate::error::UsageError;
use crate::pubsub::message::{CheckResult, Details, ErrorKind, SCHEMA_VERSION};
use ureq::unversioned::transport::Connector;

/// One target and the HTTP agent that checks it. Targets with the same connection
/// settings share one agent.
pub struct Probe {
    pub target: Target,
    agent: Agent,
}

/// The connection settings that need an agent of their own.
#[derive(Clone, PartialEq, Eq, Hash)]
struct AgentKey {
    timeout: Duration,
    max_redirects: u32,
    tls_verify: bool,
    ca: Option<CaPem>,
}

/// What the HTTP exchange produced before the rules were applied.
struct Exchange {
    status: u16,
    body: Vec<u8>,
    details: Details,
}

/// A failed exchange: its kind, its detail, and the status if headers had arrived.
struct Failure {
    kind: ErrorKind,
    text: String,
    status: Option<u16>,
}

/// Makes probes, giving targets with the same connection settings one agent.
#[derive(Default)]
pub struct ProbeMaker {
    built: HashMap<AgentKey, Agent>,
}

impl ProbeMaker {
    pub fn make(&mut self, target: Target) -> Result<Probe, UsageError> {
        let key = AgentKey {
            timeout: target.timeout,
            max_redirects: if target.follow_redirects {
                target.max_redirects
            } else {
                0
            },
            tls_verify: target.tls_verify,
            ca: target.ca.clone(),
        };
        let agent = match self.built.get(&key) {
            Some(agent) => agent.clone(),
            None => {
                let agent = build_agent(&key)
                    .map_err(|e| UsageError::new(format!("{}: {e}", target.shown)))?;
                self.built.insert(key, agent.clone());
                agent
            }
        };
        Ok(Probe { target, agent })
    }
}

impl Probe {
    /// A probe for each target, in order.
    pub fn for_each(targets: Vec<Target>) -> Result<Vec<Probe>, UsageError> {
        let mut maker = ProbeMaker::default();
        targets
            .into_iter()
            .map(|target| maker.make(target))
            .collect()
    }

    /// Checks the target once.
    pub fn check(&self, max_body_bytes: u64) -> CheckResult {
        let target = &self.target;
        let checked_at = Utc::now();
        transport::reset_phases();
        let started = Instant::now();
        let exchange = exchange(&self.agent, target, started, max_body_bytes);
        let latency_ms = millis(started.elapsed());
        let phases = transport::take_phases();
        let mut result = CheckResult {
            v: SCHEMA_VERSION,
            id: Uuid::new_v4(),
            checked_at,
            target: target.shown.clone(),
            ok: false,
            http_status: None,
            latency_ms: Some(latency_ms),
            error_kind: None,
            error_text: None,
            pattern: target.pattern.as_ref().map(|p| p.as_str().to_owned()),
            pattern_found: None,
            details: Details::default(),
        };
        match exchange {
            Ok(exchange) => judge(target, exchange, &mut result),
            Err(failure) => {
                result.http_status = failure.status;
                result.error_kind = Some(failure.kind);
                result.error_text = Some(tls_reason(failure, &phases));
            }
        }
        add_phases(&mut result.details, &phases);
        result.replace_nul_characters();
        result
    }
}

fn exchange(
    agent: &Agent,
    target: &Target,
    started: Instant,
    max_body_bytes: u64,
) -> Result<Exchange, Failure> {
    let mut response = send(agent, target).map_err(|e| classify(&e, None))?;
    let ttfb = started.elapsed();
    let status = response.status().as_u16();
    let mut details = describe_response(&response);
    details.ttfb_ms = Some(millis(ttfb));
    let body = read_body(&mut response, status, max_body_bytes)?;
    details.body_bytes = Some(body.len() as u64);
    Ok(Exchange {
        status,
        body,
        details,
    })
}

/// The body, decoded (gzip, brotli), up to the cap. The cap applies to the decoded
/// bytes, so a small compressed bomb still ends as body_too_large; ureq's own limit
/// counts the bytes on the wire, and fails a body of exactly the limit.
fn read_body(response: &mut Response<Body>, status: u16, cap: u64) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    response
        .body_mut()
        .with_config()
        .reader()
        .take(cap.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|e| classify(&ureq::Error::from(e), Some(status)))?;
    if body.len() as u64 > cap {
        return Err(Failure {
            kind: ErrorKind::BodyTooLarge,
            text: format!("the body is larger than {cap} bytes (--max-body-bytes)"),
            status: Some(status),
        });
    }
    Ok(body)
}

/// The most response headers ureq parses (its MAX_RESPONSE_HEADERS).
const MAX_RESPONSE_HEADERS: usize = 128;
/// The most bytes of response headers read. The input buffer is one byte larger so
/// that ureq sees headers past the limit as too large; with equal sizes it finds the
/// buffer full, makes no progress, and reports a disconnected peer.
const MAX_RESPONSE_HEAD: usize = 32 * 1024;

fn build_agent(key: &AgentKey) -> Result<Agent, String> {
    let config = Agent::config_builder()
        .timeout_global(Some(key.timeout))
        .http_status_as_error(false)
        .max_redirects(key.max_redirects)
        // Only counts while following: with a limit of 0 (follow_redirects = false)
        // ureq returns the redirect itself.
        .max_redirects_will_error(true)
        .save_redirect_history(true)
        .allow_non_standard_methods(true)
        // Each check must pay for its own connection, or latency would depend on
        // whether a pooled socket happened to be free.
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        // Buffers are allocated and zeroed for every connection; ureq's 128 KiB
        // defaults cost more CPU than the rest of a loopback check.
        .max_response_header_size(MAX_RESPONSE_HEAD)
        .input_buffer_size(MAX_RESPONSE_HEAD + 1)
        .output_buffer_size(MAX_REQUEST_HEAD)
        .user_agent(concat!("metrics-flow/", env!("CARGO_PKG_VERSION")))
        .build();
    let tls = OpensslConnector::new(key.tls_verify, key.ca.as_ref())?;
    let connector = ().chain(TimedTcp::default()).chain(tls);
    Ok(Agent::with_parts(
        config,
        connector,
        TimedResolver::default(),
    ))
}

fn send(agent: &Agent, target: &Target) -> Result<Response<Body>, ureq::Error> {
    let mut request = Request::builder()
        .method(target.method.as_str())
        .uri(target.url.as_str());
    for (name, value) in &target.headers {
        request = request.header(name, value);
    }
    match &target.body {
        None => agent.run(request.body(())?),
        Some(body) => agent.run(request.body(body.as_bytes())?),
    }
}

fn describe_response(response: &Response<Body>) -> Details {
    Details {
        http_version: Some(format!("{:?}", response.version())),
        final_url: Some(mask_text(&response.get_uri().to_string())),
        redirects: Some(
            response
                .get_redirect_history()
                .map_or(0, |history| history.len().saturating_sub(1) as u32),
        ),
        ..Details::default()
    }
}

fn add_phases(details: &mut Details, phases: &Phases) {
    details.dns_ms = phases.dns.map(millis);
    details.connect_ms = phases.connect.map(millis);
    details.tls_ms = phases.tls.map(millis);
    if let Some(expires) = phases.tls_expires_at {
        details.tls_expires_at = Some(expires);
        details.tls_days_left = Some((expires - Utc::now()).num_days());
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// ureq's TLS errors carry no detail; OpenSSL's reason was recorded during the handshake.
fn tls_reason(failure: Failure, phases: &Phases) -> String {
    match (&failure.kind, &phases.tls_failure) {
        (ErrorKind::Tls, Some(reason)) => format!("{}: {reason}", failure.text),
        _ => failure.text,
    }
}

/// Applies the status and pattern rules to a complete exchange.
fn judge(target: &Target, exchange: Exchange, result: &mut CheckResult) {
    result.http_status = Some(exchange.status);
    result.details = exchange.details;
    if let Some(pattern) = &target.pattern {
        result.pattern_found = Some(pattern.is_match(&exchange.body));
    }
    let forbidden = target
        .forbid_pattern
        .as_ref()
        .filter(|p| p.is_match(&exchange.body));
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
        forbidden.map(|forbidden| {
            (
                ErrorKind::Pattern,
                format!(
                    "forbidden pattern '{}' found in the body",
                    forbidden.as_str()
                ),
            )
        })
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
    let text = match error {
        E::LargeResponseHeader(..) => {
            format!(
                "response headers larger than {} KiB",
                MAX_RESPONSE_HEAD / 1024
            )
        }
        E::Protocol(ureq_proto::Error::HttpParseTooManyHeaders) => {
            format!("more than {MAX_RESPONSE_HEADERS} response headers")
        }
        E::Protocol(ureq_proto::Error::OutputOverflow) => format!(
            "request larger than {} KiB: its URL (after a redirect?) and headers do not fit",
            MAX_REQUEST_HEAD / 1024
        ),
        error => error.to_string(),
    };
    let kind = match error {
        E::HostNotFound => ErrorKind::Dns,
        E::Timeout(ureq::Timeout::Connect) => ErrorKind::ConnectTimeout,
        E::Timeout(ureq::Timeout::Resolve) => ErrorKind::Dns,
        E::Timeout(_) => ErrorKind::Timeout,
        E::Tls(_) => ErrorKind::Tls,
        E::Protocol(_) => ErrorKind::Protocol,
        E::TooManyRedirects => ErrorKind::TooManyRedirects,
        E::BodyExceedsLimit(_) => ErrorKind::BodyTooLarge,
        E::LargeResponseHeader(..) | E::Decompress(..) => ErrorKind::Protocol,
        E::Io(io_error) => classify_io(io_error),
        _ => ErrorKind::Other,
    };
    Failure { kind, text, status }
}

fn classify_io(error: &io::Error) -> ErrorKind {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe => ErrorKind::Reset,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::Timeout,
        _ => ErrorKind::Other,
    }
}
