//! Loopback servers for pub to check: plain HTTP whose routes behave or misbehave on
//! purpose, HTTPS with certificates made to fail in each way, and ports that refuse
//! or never answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    _dir: tempfile::TempDir,
}

impl TlsServer {
    pub fn start(days_valid: u32) -> TlsServer {
        TlsServer::with(ServerCert::SelfSigned { days: days_valid })
    }

    pub fn with(kind: ServerCert) -> TlsServer {
        use openssl::ssl::{SslAcceptor, SslMethod};
        let dir = super::temp_dir("tls");
        let (cert, key, ca) = certificate(kind);
        let cert_file = dir.path().join("cert.pem");
        let ca_file = dir.path().join("ca.pem");
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
