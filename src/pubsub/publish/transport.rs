//! Instrumented connections for the prober: DNS, TCP connect and TLS handshake each timed,
//! and TLS done with OpenSSL so the peer certificate's expiry can be read.
//!
//! ureq runs resolvers and connectors on the thread that makes the request, and each
//! check runs on one worker thread, so the phases of the check in progress are kept in
//! a thread-local record.

use std::cell::RefCell;
use std::fmt;
use std::io::{Read, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use openssl::asn1::Asn1Time;
use openssl::ssl::{HandshakeError, SslConnector, SslMethod, SslStream, SslVerifyMode};
use openssl::x509::{X509Ref, X509VerifyResult, X509};
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, TcpConnector,
    Transport, TransportAdapter,
};
use ureq::{Error, Timeout};

use super::targets::CaPem;

/// What one check's connection phases took; summed over redirects.
#[derive(Debug, Default, Clone)]
pub struct Phases {
    pub dns: Option<Duration>,
    pub connect: Option<Duration>,
    pub tls: Option<Duration>,
    pub tls_expires_at: Option<DateTime<Utc>>,
    /// OpenSSL's reason when the handshake failed; ureq's own error carries none.
    pub tls_failure: Option<String>,
}

thread_local! {
    static PHASES: RefCell<Phases> = RefCell::new(Phases::default());
}

/// Starts a fresh record for the check about to run on this thread.
pub fn reset_phases() {
    PHASES.with(|p| *p.borrow_mut() = Phases::default());
}

/// The record of the check that just ran on this thread.
pub fn take_phases() -> Phases {
    PHASES.with(|p| std::mem::take(&mut *p.borrow_mut()))
}

fn add(slot: impl FnOnce(&mut Phases) -> &mut Option<Duration>, took: Duration) {
    PHASES.with(|p| {
        let mut phases = p.borrow_mut();
        let entry = slot(&mut phases);
        *entry = Some(entry.unwrap_or_default() + took);
    });
}

/// ureq's resolver, timed.
#[derive(Debug, Default)]
pub struct TimedResolver(DefaultResolver);

impl Resolver for TimedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, Error> {
        let started = Instant::now();
        // ureq runs every lookup with a timeout on a thread of its own. An IP address
        // needs no lookup, so it is resolved in place, sparing a thread per check.
        let is_ip = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .is_some_and(|h| h.parse::<std::net::IpAddr>().is_ok());
        let timeout = if is_ip {
            NextTimeout {
                after: ureq::unversioned::transport::time::Duration::NotHappening,
                ..timeout
            }
        } else {
            timeout
        };
        let result = self.0.resolve(uri, config, timeout);
        add(|p| &mut p.dns, started.elapsed());
        // std reports lookup failures as plain I/O errors; name them for what they are.
        result.map_err(|e| match e {
            Error::Io(_) => Error::HostNotFound,
            other => other,
        })
    }
}

/// ureq's TCP connector, timed.
#[derive(Debug, Default)]
pub struct TimedTcp(TcpConnector);

impl<In: Transport> Connector<In> for TimedTcp {
    type Out = <TcpConnector as Connector<In>>::Out;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        let started = Instant::now();
        let result = self.0.connect(details, chained);
        add(|p| &mut p.connect, started.elapsed());
        // Any timeout here means the host never completed the handshake; ureq reports
        // it as the whole check's deadline when the attempt ran past that by a hair.
        result.map_err(|error| match error {
            Error::Timeout(_) => Error::Timeout(Timeout::Connect),
            error => error,
        })
    }
}

/// TLS through OpenSSL, configured per target: verification on or off, an extra CA.
pub struct OpensslConnector {
    /// Built on first use: loading the system CA bundle takes tens of milliseconds,
    /// which a plain-http target should not pay.
    connector: OnceLock<Result<SslConnector, String>>,
    verify: bool,
    extra_ca: Option<CaPem>,
}

impl fmt::Debug for OpensslConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpensslConnector")
            .field("verify", &self.verify)
            .finish()
    }
}

impl OpensslConnector {
    /// A connector with an extra CA is built at once, so a bad CA file is reported at
    /// start-up rather than at the first check.
    pub fn new(verify: bool, extra_ca: Option<&CaPem>) -> Result<OpensslConnector, String> {
        let connector = OpensslConnector {
            connector: OnceLock::new(),
            verify,
            extra_ca: extra_ca.cloned(),
        };
        if extra_ca.is_some() {
            connector.connector()?;
        }
        Ok(connector)
    }

    fn connector(&self) -> Result<&SslConnector, String> {
        self.connector
            .get_or_init(|| build_connector(self.verify, self.extra_ca.as_ref()))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn handshake(
        &self,
        details: &ConnectionDetails,
        transport: Box<dyn Transport>,
    ) -> Result<SslStream<TransportAdapter>, Error> {
        let host = details
            .uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let mut socket = TransportAdapter::new(transport, details.current_time.clone());
        socket.set_timeout(details.timeout);
        let connector = self.connector().map_err(|reason| {
            record_tls_failure(reason);
            Error::Tls("TLS setup failed")
        })?;
        let mut config = connector.configure().map_err(tls_setup_error)?;
        config.set_verify_hostname(self.verify);
        // SNI must not carry an IP address.
        config.set_use_server_name_indication(host.parse::<std::net::IpAddr>().is_err());
        config.connect(host, socket).map_err(handshake_error)
    }
}

fn build_connector(verify: bool, extra_ca: Option<&CaPem>) -> Result<SslConnector, String> {
    let mut builder = SslConnector::builder(SslMethod::tls_client())
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    if let Some(ca) = extra_ca {
        let not_a_ca = |why: String| format!("{} is not a PEM CA: {why}", ca.source);
        let certificates =
            X509::stack_from_pem(ca.pem.as_bytes()).map_err(|e| not_a_ca(e.to_string()))?;
        if certificates.is_empty() {
            return Err(not_a_ca("no certificate in it".to_owned()));
        }
        for certificate in certificates {
            builder
                .cert_store_mut()
                .add_cert(certificate)
                .map_err(|e| not_a_ca(e.to_string()))?;
        }
    }
    if !verify {
        builder.set_verify(SslVerifyMode::NONE);
    }
    Ok(builder.build())
}

fn tls_setup_error(error: openssl::error::ErrorStack) -> Error {
    record_tls_failure(error.to_string());
    Error::Tls("TLS setup failed")
}

/// A handshake that failed on the socket keeps its transport error (timeout, reset);
/// one that failed in TLS itself becomes a TLS error, with OpenSSL's reason recorded.
fn handshake_error(error: HandshakeError<TransportAdapter>) -> Error {
    let (failure, verify_result) = match error {
        HandshakeError::SetupFailure(stack) => return tls_setup_error(stack),
        HandshakeError::Failure(mid) | HandshakeError::WouldBlock(mid) => {
            let verify_result = mid.ssl().verify_result();
            (mid.into_error(), verify_result)
        }
    };
    let failure = match failure.into_io_error() {
        Ok(io_error) => return Error::from(io_error),
        Err(failure) => failure,
    };
    // OpenSSL's error stack says only "certificate verify failed" and where in its
    // sources; the verify result says why: expired, hostname mismatch, unknown issuer.
    let reason = if verify_result != X509VerifyResult::OK {
        format!(
            "certificate verify failed: {}",
            verify_result.error_string()
        )
    } else {
        match failure.ssl_error() {
            Some(stack) => stack.to_string(),
            None => failure.to_string(),
        }
    };
    record_tls_failure(reason);
    Error::Tls("TLS handshake failed")
}

fn record_tls_failure(reason: String) {
    PHASES.with(|p| p.borrow_mut().tls_failure = Some(reason));
}

impl<In: Transport> Connector<In> for OpensslConnector {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        let Some(transport) = chained else {
            return Err(Error::ConnectionFailed);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let started = Instant::now();
        let stream = self.handshake(details, transport.boxed());
        add(|p| &mut p.tls, started.elapsed());
        let stream = stream?;
        if let Some(expiry) = stream.ssl().peer_certificate().and_then(|c| not_after(&c)) {
            PHASES.with(|p| p.borrow_mut().tls_expires_at = Some(expiry));
        }
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(TlsTransport { buffers, stream })))
    }
}

fn not_after(certificate: &X509Ref) -> Option<DateTime<Utc>> {
    let epoch = Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(certificate.not_after()).ok()?;
    let seconds = i64::from(diff.days) * 86_400 + i64::from(diff.secs);
    DateTime::from_timestamp(seconds, 0)
}

/// An established TLS connection, speaking ureq's transport interface.
pub struct TlsTransport {
    buffers: LazyBuffers,
    stream: SslStream<TransportAdapter>,
}

impl fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsTransport")
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}
