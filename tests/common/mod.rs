//! Shared integration-test harness: the real stack's coordinates, a loopback HTTP server
//! that misbehaves on request, the built binary, and PostgreSQL queries.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the stack started by scripts/test.sh listens. Missing values fail the test:
/// these tests are meant to run against real services, never to skip quietly.
pub struct Stack {
    pub broker: String,
    pub dsn: String,
}

impl Stack {
    pub fn from_env() -> Stack {
        let get = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the tests through scripts/test.sh, which starts Kafka and PostgreSQL")
            })
        };
        Stack {
            broker: get("KAFKA_BROKER"),
            dsn: get("POSTGRESQL_DSN"),
        }
    }

    pub fn pg(&self) -> postgres::Client {
        postgres::Client::connect(&self.dsn, postgres::NoTls)
            .expect("connecting to the test PostgreSQL")
    }

    pub fn count(&self, table: &str) -> i64 {
        self.pg()
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .map(|row| row.get(0))
            .unwrap_or(0)
    }
}

/// A name no other test or earlier run has used, for topics, tables and groups.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// The binary under test with the stack's coordinates and a clean environment.
/// MF_TEST_BINARY runs another build instead, e.g. an older one to see a test fail.
pub fn metrics_flow(stack: &Stack, topic: &str) -> Command {
    let binary = std::env::var_os("MF_TEST_BINARY")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_metrics-flow").into());
    let mut command = Command::new(binary);
    for var in [
        "TARGET",
        "PATTERN",
        "DELAY",
        "TIMEOUT",
        "KAFKA_TOPIC",
        "POSTGRESQL_TABLE",
        "KAFKA_GROUP",
    ] {
        command.env_remove(var);
    }
    command
        .env("KAFKA_BROKER", &stack.broker)
        .env("POSTGRESQL_DSN", &stack.dsn)
        .env("KAFKA_TOPIC", topic)
        .env("CONNECT_DEADLINE", "20")
        .env("RUST_LOG", "info");
    command
}

/// Runs to completion, failing the test (with both streams shown) unless it exits 0.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command.output().expect("starting metrics-flow");
    assert!(
        output.status.success(),
        "{command:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn spawn(command: &mut Command) -> Child {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting metrics-flow")
}

/// Polls `condition` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    condition()
}

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{name} failed");
}

/// Waits for the child to exit within `limit`, killing it and failing otherwise.
pub fn wait_exit(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, String) {
    let exited = wait_until(limit, || child.try_wait().expect("try_wait").is_some());
    if !exited {
        let _ = child.kill();
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(
        exited,
        "process did not exit within {limit:?}; stderr:\n{stderr}"
    );
    (child.wait().unwrap(), stderr)
}

/// A loopback HTTP/1.1 server whose routes behave, or misbehave, as named:
/// `/ok`, `/method` (echoes the request method), `/headers` (echoes the request
/// headers), `/auth` (200 only for `user:s3cret`, else 401), `/delay/<ms>`,
/// `/status/<code>`, `/redirect-loop`, `/redirect-once`, `/redirect-with-credentials`,
/// `/redirect-long`, `/big/<bytes>`, `/binary`, `/gzip`, `/brotli`, `/gzip-bomb/<bytes>`,
/// `/huge-headers` (40 KB of them), `/many-headers/<count>`, `/stall-headers`,
/// `/stall-body`, `/close-mid-body`, `/garbage`, `/slowloris`, `/chunked-forever`.
pub struct TestServer {
    pub port: u16,
    pub requests: Arc<AtomicUsize>,
}

impl TestServer {
    pub fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = Arc::clone(&counter);
                thread::spawn(move || serve(stream, &counter));
            }
        });
        TestServer { port, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve(stream: TcpStream, counter: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().expect("cloning the socket"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => headers.push(header.trim_end().to_owned()),
        }
    }
    counter.fetch_add(1, Ordering::SeqCst);
    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or("GET").to_owned();
    let target = words.next().unwrap_or("/");
    // Routes ignore the query string, so tests can make many distinct URLs of one route.
    let path = target.split('?').next().unwrap_or("/").to_owned();
    let mut stream = stream;
    let _ = match path.as_str() {
        "/method" => reply(&mut stream, 200, &[], method.as_bytes()),
        "/headers" => reply(&mut stream, 200, &[], headers.join("\n").as_bytes()),
        "/auth" => {
            let authorized = headers.iter().any(|h| {
                h.eq_ignore_ascii_case(&format!("authorization: basic {BASIC_USER_S3CRET}"))
            });
            match authorized {
                true => reply(&mut stream, 200, &[], b"authenticated"),
                false => reply(
                    &mut stream,
                    401,
                    &["WWW-Authenticate: Basic"],
                    b"who are you",
                ),
            }
        }
        "/redirect-with-credentials" => {
            let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
            let location = format!("Location: http://user:s3cret@127.0.0.1:{port}/auth");
            reply(&mut stream, 302, &[&location], b"")
        }
        _ => {
            respond(&path, stream);
            Ok(())
        }
    };
}

/// `user:s3cret` in base64, what a client sends for `http://user:s3cret@host/`.
pub const BASIC_USER_S3CRET: &str = "dXNlcjpzM2NyZXQ=";

/// How long a misbehaving route keeps misbehaving; far beyond any check's timeout.
const STALL: Duration = Duration::from_secs(30);

fn respond(path: &str, mut stream: TcpStream) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let _ = match parts.as_slice() {
        ["ok"] => reply(&mut stream, 200, &[], b"all is well"),
        ["delay", ms] => {
            thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            reply(&mut stream, 200, &[], b"slow but well")
        }
        ["status", code] => reply(
            &mut stream,
            code.parse().unwrap_or(500),
            &[],
            b"status page",
        ),
        ["redirect-loop"] => reply(&mut stream, 302, &["Location: /redirect-loop"], b""),
        ["redirect-once"] => reply(&mut stream, 302, &["Location: /ok"], b""),
        ["big", bytes] => reply(
            &mut stream,
            200,
            &[],
            &vec![b'x'; bytes.parse().unwrap_or(0)],
        ),
        ["binary"] => reply(
            &mut stream,
            200,
            &[],
            b"\xff\xfe\x00 invalid utf-8, then the needle \xc3",
        ),
        ["stall-headers"] => {
            thread::sleep(STALL);
            Ok(())
        }
        ["stall-body"] => write_then_stall(
            &mut stream,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial",
        ),
        ["close-mid-body"] => {
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
        }
        ["garbage"] => stream.write_all(b"THIS IS NOT HTTP AT ALL\r\n\r\n"),
        ["slowloris"] => drip(&mut stream, b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a"),
        ["chunked-forever"] => drip(
            &mut stream,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"10\r\n0123456789abcdef\r\n",
        ),
        ["gzip"] => {
            let body = gzip(b"all is well, said the compressed body");
            reply(&mut stream, 200, &["Content-Encoding: gzip"], &body)
        }
        ["brotli"] => {
            let mut body = Vec::new();
            {
                let mut encoder = brotli::CompressorWriter::new(&mut body, 4096, 5, 22);
                let _ = encoder.write_all(b"all is well, said the brotli body");
            }
            reply(&mut stream, 200, &["Content-Encoding: br"], &body)
        }
        ["gzip-bomb", bytes] => {
            let body = gzip(&vec![0u8; bytes.parse().unwrap_or(0)]);
            reply(&mut stream, 200, &["Content-Encoding: gzip"], &body)
        }
        ["huge-headers"] => {
            let long = format!("X-Long: {}", "h".repeat(20_000));
            reply(&mut stream, 200, &[&long, &long], b"all is well")
        }
        ["many-headers", count] => {
            let count: usize = count.parse().unwrap_or(0);
            let headers: Vec<String> = (0..count).map(|i| format!("X-Header-{i}: {i}")).collect();
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            reply(&mut stream, 200, &headers, b"all is well")
        }
        ["redirect-long"] => {
            let location = format!("Location: /ok?{}", "q".repeat(20_000));
            reply(&mut stream, 302, &[&location], b"")
        }
        _ => reply(&mut stream, 404, &[], b"no such route"),
    };
}

fn reply(
    stream: &mut TcpStream,
    status: u16,
    headers: &[&str],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// `bytes` gzip-compressed, as a server with `Content-Encoding: gzip` sends them.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("compressing in memory");
    encoder.finish().expect("compressing in memory")
}

fn write_then_stall(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes)?;
    thread::sleep(STALL);
    Ok(())
}

/// Sends `head`, then `piece` every 50 ms until the client goes away or STALL passes.
fn drip(stream: &mut TcpStream, head: &[u8], piece: &[u8]) -> std::io::Result<()> {
    stream.write_all(head)?;
    let until = Instant::now() + STALL;
    while Instant::now() < until {
        stream.write_all(piece)?;
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A loopback port with nothing listening on it.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A loopback listener that never accepts and whose accept queue is full, so the kernel
/// drops every further SYN: connecting to it hangs, as it would to a firewalled host.
pub struct SaturatedListener {
    pub port: u16,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl SaturatedListener {
    pub fn start() -> SaturatedListener {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: listen(2) on a socket this function owns; it only changes the backlog.
        let status = unsafe { libc::listen(listener.as_raw_fd(), 0) };
        assert_eq!(status, 0, "listen: {}", std::io::Error::last_os_error());
        let address = listener.local_addr().unwrap();
        // Connect until one attempt hangs: then the queue is full (one connection with a
        // backlog of 0 on Linux; the loop does not rely on that number).
        let mut queued = Vec::new();
        loop {
            match TcpStream::connect_timeout(&address, Duration::from_millis(300)) {
                Ok(stream) => queued.push(stream),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(e) => panic!("filling the accept queue: {e}"),
            }
            assert!(queued.len() < 16, "the accept queue never filled");
        }
        SaturatedListener {
            port: address.port(),
            _listener: listener,
            _queued: queued,
        }
    }
}

/// What certificate a [`TlsServer`] presents, and so how a verifying client fails.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ServerCert {
    /// Self-signed for `localhost` and 127.0.0.1, valid this many more days.
    SelfSigned { days: u32 },
    /// Signed by the server's CA ([`TlsServer::ca_file`]), but expired yesterday.
    Expired,
    /// Signed by the server's CA, but for `other-host.example` only.
    OtherHost,
    /// Signed by a CA the client is never given, and sent without it.
    UnknownIssuer,
}

/// A loopback HTTPS server whose certificate, made in-process when it starts, is of the
/// given kind. Every request gets 200 "all is well over tls".
pub struct TlsServer {
    pub port: u16,
    /// The certificate itself (PEM); for a self-signed one, also its CA.
    pub cert_file: std::path::PathBuf,
    /// The CA that signed the certificate (PEM), for `ca_file` in a targets file.
    pub ca_file: std::path::PathBuf,
    pub kind: ServerCert,
    _dir: TempDir,
}

impl TlsServer {
    pub fn start(days_valid: u32) -> TlsServer {
        TlsServer::with(ServerCert::SelfSigned { days: days_valid })
    }

    pub fn with(kind: ServerCert) -> TlsServer {
        use openssl::ssl::{SslAcceptor, SslMethod};
        let dir = TempDir::new("tls");
        let (cert, key, ca) = certificate(kind);
        let cert_file = dir.path.join("cert.pem");
        let ca_file = dir.path.join("ca.pem");
        std::fs::write(&cert_file, cert.to_pem().unwrap()).unwrap();
        std::fs::write(&ca_file, ca.to_pem().unwrap()).unwrap();
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_private_key(&key).unwrap();
        acceptor.set_certificate(&cert).unwrap();
        let acceptor = Arc::new(acceptor.build());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let acceptor = Arc::clone(&acceptor);
                thread::spawn(move || {
                    // A client that rejects the certificate ends the handshake; that's expected.
                    let Ok(mut tls) = acceptor.accept(stream) else {
                        return;
                    };
                    let mut buffer = [0u8; 4096];
                    let _ = tls.read(&mut buffer);
                    let body = b"all is well over tls";
                    let _ = write!(
                        tls,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tls.write_all(body);
                    let _ = tls.shutdown();
                });
            }
        });
        TlsServer {
            port,
            cert_file,
            ca_file,
            kind,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }
}

type Key = openssl::pkey::PKey<openssl::pkey::Private>;

/// The server's certificate, its key, and the CA that signed it.
fn certificate(kind: ServerCert) -> (openssl::x509::X509, Key, openssl::x509::X509) {
    const DAY: i64 = 86_400;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let key = ec_key();
    let valid = (now - DAY, now + 30 * DAY);
    match kind {
        ServerCert::SelfSigned { days } => {
            let cert = sign(
                "localhost",
                (now - DAY, now + i64::from(days) * DAY),
                &key,
                None,
            );
            (cert.clone(), key, cert)
        }
        ServerCert::Expired | ServerCert::OtherHost | ServerCert::UnknownIssuer => {
            let ca_key = ec_key();
            let ca = sign("metrics-flow test CA", valid, &ca_key, None);
            let (host, validity) = match kind {
                ServerCert::Expired => ("localhost", (now - 10 * DAY, now - DAY)),
                ServerCert::OtherHost => ("other-host.example", valid),
                _ => ("localhost", valid),
            };
            let cert = sign(host, validity, &key, Some((&ca, &ca_key)));
            (cert, key, ca)
        }
    }
}

fn ec_key() -> Key {
    use openssl::ec::{EcGroup, EcKey};
    let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    Key::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// A certificate for `host` (and 127.0.0.1 when it is localhost), signed by `issuer`, or
/// self-signed as a CA when there is none.
fn sign(
    host: &str,
    (not_before, not_after): (i64, i64),
    key: &Key,
    issuer: Option<(&openssl::x509::X509, &Key)>,
) -> openssl::x509::X509 {
    use openssl::asn1::{Asn1Integer, Asn1Time};
    use openssl::bn::BigNum;
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::{X509Builder, X509NameBuilder};
    static SERIAL: AtomicUsize = AtomicUsize::new(1);
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", host).unwrap();
    let name = name.build();
    let mut builder = X509Builder::new().unwrap();
    builder.set_version(2).unwrap();
    let serial = BigNum::from_u32(SERIAL.fetch_add(1, Ordering::Relaxed) as u32).unwrap();
    builder
        .set_serial_number(&Asn1Integer::from_bn(&serial).unwrap())
        .unwrap();
    builder.set_subject_name(&name).unwrap();
    builder
        .set_not_before(&Asn1Time::from_unix(not_before).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::from_unix(not_after).unwrap())
        .unwrap();
    builder.set_pubkey(key).unwrap();
    let mut san = SubjectAlternativeName::new();
    san.dns(host);
    if host == "localhost" {
        san.ip("127.0.0.1");
    }
    let (issuer_name, signing_key) = match issuer {
        Some((ca, ca_key)) => (ca.subject_name().to_owned().unwrap(), ca_key),
        None => {
            let ca = BasicConstraints::new().critical().ca().build().unwrap();
            builder.append_extension(ca).unwrap();
            (name.as_ref().to_owned().unwrap(), key)
        }
    };
    let san = san.build(&builder.x509v3_context(None, None)).unwrap();
    builder.append_extension(san).unwrap();
    builder.set_issuer_name(&issuer_name).unwrap();
    builder
        .sign(signing_key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    builder.build()
}

/// A directory removed when dropped.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(&format!("metrics-flow-{prefix}")));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ------------------------------------------------------------------------------------
// For tests/exactly_once.rs: many valid messages straight into Kafka, processes whose
// logs are kept, a row counter that survives a database restart, and the stack script.

/// One valid schema-v1 check result, built field by field as a producer would.
pub fn check_payload(index: usize) -> (String, Vec<u8>) {
    let value = check_value(index);
    let target = value["target"].as_str().unwrap_or_default().to_owned();
    (
        target,
        serde_json::to_vec(&value).expect("JSON always serializes"),
    )
}

/// The JSON of [`check_payload`], for a test to change before sending.
pub fn check_value(index: usize) -> serde_json::Value {
    let target = format!("http://t{}.example.test/health", index % 16);
    let ok = !index.is_multiple_of(7);
    serde_json::json!({
        "v": 1,
        "id": uuid::Uuid::new_v4().to_string(),
        "checked_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "target": target,
        "ok": ok,
        "http_status": if ok { 200 } else { 503 },
        "latency_ms": 3.0 + (index % 250) as f64 / 10.0,
        "error_kind": if ok { None } else { Some("status") },
        "error_text": if ok { None } else { Some("status 503 not in 200-299") },
        "pattern": "all is well",
        "pattern_found": ok,
    })
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
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.broker)
        .create()
        .expect("creating the test admin client");
    let mut new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
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
        let producer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &stack.broker)
            .set("linger.ms", "20")
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
/// to its end.
pub fn read_topic(stack: &Stack, topic: &str) -> Vec<ReadMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.broker)
        .set("group.id", unique("reader"))
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .expect("creating the test consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("reading the topic's metadata");
    let partitions = metadata.topics()[0].partitions().len();
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition as i32, Offset::Beginning)
            .unwrap();
    }
    consumer
        .assign(&assignment)
        .expect("assigning the partitions");
    let mut messages = Vec::new();
    let mut at_end = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while at_end.len() < partitions {
        assert!(Instant::now() < deadline, "{topic} was not read to its end");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => messages.push((
                message.key().map(<[u8]>::to_vec),
                message.payload().map(<[u8]>::to_vec),
            )),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
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

/// A running process whose stderr a thread keeps reading into memory, so a chatty
/// process never blocks on a full pipe and its log can be searched while it runs.
/// Dropping it kills the process, so a failed test leaves nothing behind.
pub struct Logged {
    child: Child,
    log: Arc<std::sync::Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Logged {
    pub fn spawn(command: &mut Command) -> Logged {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting metrics-flow");
        let mut pipe = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let reader = thread::spawn(move || {
            let mut line = Vec::new();
            while matches!(pipe.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
        });
        Logged {
            child,
            log,
            reader: Some(reader),
        }
    }

    /// What the process has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn signal(&self, name: &str) {
        signal(&self.child, name);
    }

    /// The number of threads the process runs now, from /proc.
    pub fn threads(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("reading the process's status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("a Threads line")
    }

    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_reader();
    }

    /// Waits for the process to exit within `limit`, killing it and failing otherwise.
    pub fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let exited = wait_until(limit, || self.has_exited());
        if !exited {
            self.kill();
        }
        let status = self.child.wait().expect("waiting for the process");
        self.join_reader();
        let log = self.log();
        assert!(
            exited,
            "process did not exit within {limit:?}; stderr:\n{log}"
        );
        (status, log)
    }

    fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if !self.has_exited() {
            self.kill();
        }
    }
}

/// Counts a table's rows over one connection, reconnecting after a failure (a restarted
/// server), and reading 0 while the table or the server is not there.
pub struct RowCounter {
    dsn: String,
    sql: String,
    client: Option<postgres::Client>,
}

impl RowCounter {
    pub fn new(stack: &Stack, table: &str) -> RowCounter {
        RowCounter {
            dsn: stack.dsn.clone(),
            sql: format!("SELECT count(*) FROM {table}"),
            client: None,
        }
    }

    pub fn rows(&mut self) -> i64 {
        // A connection from before a restart fails once; a fresh one answers.
        match self.try_rows() {
            Some(rows) => rows,
            None => self.try_rows().unwrap_or(0),
        }
    }

    fn try_rows(&mut self) -> Option<i64> {
        if self.client.is_none() {
            self.client = postgres::Client::connect(&self.dsn, postgres::NoTls).ok();
        }
        let client = self.client.as_mut()?;
        match client.query_one(&self.sql, &[]) {
            Ok(row) => Some(row.get(0)),
            Err(_) => {
                self.client = None;
                None
            }
        }
    }
}

/// Runs `scripts/stack.sh ARGS...` of this repository with the test process's
/// environment, so MF_STACK_DIR, the MF_*_PORT variables and MF_TLS select the stack
/// the tests run against. Err holds the exit status and the script's stderr.
pub fn stack_script(args: &[&str]) -> Result<(), String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack.sh");
    let output = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| format!("could not run {script}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{script} {} exited with {}:\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A stopped service of the stack. `start` brings it back and fails the test if the
/// script does; if the test fails first, dropping the guard still starts it, so later
/// tests find the stack whole.
pub struct Stopped {
    service: &'static str,
    running: bool,
}

pub fn stop_service(service: &'static str) -> Stopped {
    if let Err(error) = stack_script(&["stop", service]) {
        panic!("could not stop {service} with scripts/stack.sh: {error}");
    }
    Stopped {
        service,
        running: false,
    }
}

impl Stopped {
    pub fn start(mut self) {
        self.running = true;
        if let Err(error) = stack_script(&["start", self.service]) {
            panic!(
                "could not start {} again with scripts/stack.sh: {error}",
                self.service
            );
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.running {
            if let Err(error) = stack_script(&["start", self.service]) {
                eprintln!("could not start {} again: {error}", self.service);
            }
        }
    }
}
