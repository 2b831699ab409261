//! The `--metrics-listen` endpoint of pub and sub: `GET /metrics` in Prometheus's
//! text format and `GET /healthz`, served on blocking sockets by one accepting thread
//! and a short-lived thread per scrape, so a scrape never waits on a check or a batch.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};

use crate::error::UsageError;
use crate::sync::lock;

/// How long a scraper may take to send its request, or to take the answer: one that
/// connects and sends nothing holds only its own thread, and only this long.
const CLIENT_LIMIT: Duration = Duration::from_secs(10);
/// Scrapes served at once; a connection beyond them is closed unanswered.
const MAX_CLIENTS: usize = 8;
/// The longest request head read; Prometheus sends about 300 bytes.
const MAX_REQUEST: usize = 8 * 1024;

/// `--metrics-listen`: `IP:PORT`, or `:PORT` for every interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl ListenAddr {
    pub fn parse(text: &str) -> Result<ListenAddr, String> {
        let full = match text.strip_prefix(':') {
            Some(port) => format!("0.0.0.0:{port}"),
            None => text.to_owned(),
        };
        full.parse().map(ListenAddr).map_err(|_| {
            "expected IP:PORT (or :PORT for every interface), e.g. 127.0.0.1:9464".to_owned()
        })
    }
}

/// One thing the process needs, and whether it has it: up, or down and why.
pub struct Link {
    name: &'static str,
    problem: Mutex<Option<String>>,
}

impl Link {
    /// A link not yet made: down until someone says it is up.
    pub fn new(name: &'static str) -> Arc<Link> {
        Arc::new(Link {
            name,
            problem: Mutex::new(Some("not connected yet".to_owned())),
        })
    }

    pub fn up(&self) {
        *lock(&self.problem) = None;
    }

    pub fn down(&self, why: impl Into<String>) {
        *lock(&self.problem) = Some(why.into());
    }

    /// `"Kafka: why"` if down.
    pub fn problem(&self) -> Option<String> {
        lock(&self.problem)
            .as_ref()
            .map(|why| format!("{}: {why}", self.name))
    }
}

/// What a scrape reads: the registry, brought up to date by `refresh` first, and
/// the links `/healthz` reports on.
pub struct Page {
    pub registry: Registry,
    pub links: Vec<Arc<Link>>,
    pub refresh: Box<dyn Fn() + Send + Sync>,
}

/// A registry of `collectors`, every name prefixed `metrics_flow_`.
pub fn registry_of(collectors: Vec<Box<dyn prometheus::core::Collector>>) -> Registry {
    let registry = Registry::new_custom(Some("metrics_flow".into()), None)
        .expect("a constant prefix is valid");
    for collector in collectors {
        registry
            .register(collector)
            .expect("each metric is registered once");
    }
    registry
}

/// Binds `addr` at start-up, so a bad address or a port in use exits 2 before
/// anything else is contacted.
pub fn bind(addr: ListenAddr) -> Result<TcpListener, UsageError> {
    TcpListener::bind(addr.0).map_err(|error| {
        UsageError::new(format!(
            "--metrics-listen (METRICS_LISTEN) {}: {error}",
            addr.0
        ))
    })
}

/// Serves `page` on `listener` from a thread of its own, for the life of the process.
pub fn serve(listener: TcpListener, page: Page) {
    let page = Arc::new(page);
    let clients = Arc::new(AtomicUsize::new(0));
    if let Ok(addr) = listener.local_addr() {
        log::info!("serving /metrics and /healthz on http://{addr}");
    }
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let (page, clients) = (Arc::clone(&page), Arc::clone(&clients));
                let spawned = thread::Builder::new()
                    .name("scrape".into())
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        answer(stream, &page);
                        clients.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    log::warn!("could not start a thread to answer a scrape");
                }
            }
        })
        .expect("spawning the metrics thread");
}

fn answer(mut stream: TcpStream, page: &Page) {
    let _ = stream.set_read_timeout(Some(CLIENT_LIMIT));
    let _ = stream.set_write_timeout(Some(CLIENT_LIMIT));
    let Some(head) = read_head(&mut stream) else {
        return;
    };
    let (status, content_type, body) = route(&head, page);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream
        .write_all(response.as_bytes())
        .and_then(|()| stream.write_all(&body));
}

/// The request head, up to its blank line; None if the client sent none in time.
fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() >= MAX_REQUEST {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn route(head: &str, page: &Page) -> (&'static str, &'static str, Vec<u8>) {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (words.next(), words.next());
    let path = path.map(|p| p.split('?').next().unwrap_or(p));
    match (method, path) {
        (Some("GET"), Some("/metrics")) => {
            (page.refresh)();
            let encoder = TextEncoder::new();
            let mut body = Vec::new();
            match encoder.encode(&page.registry.gather(), &mut body) {
                Ok(()) => ("200 OK", prometheus::TEXT_FORMAT, body),
                Err(error) => (
                    "500 Internal Server Error",
                    PLAIN,
                    error.to_string().into_bytes(),
                ),
            }
        }
        (Some("GET"), Some("/healthz")) => {
            let problems: Vec<String> = page.links.iter().filter_map(|l| l.problem()).collect();
            match problems.is_empty() {
                true => ("200 OK", PLAIN, b"ok\n".to_vec()),
                false => (
                    "503 Service Unavailable",
                    PLAIN,
                    format!("{}\n", problems.join("; ")).into_bytes(),
                ),
            }
        }
        (Some("GET"), _) => (
            "404 Not Found",
            PLAIN,
            b"try /metrics or /healthz\n".to_vec(),
        ),
        _ => (
            "400 Bad Request",
            PLAIN,
            b"GET /metrics or /healthz\n".to_vec(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listen_address_is_ip_and_port_or_a_bare_port() {
        assert_eq!(
            ListenAddr::parse("127.0.0.1:9464").unwrap().0.to_string(),
            "127.0.0.1:9464"
        );
        assert_eq!(
            ListenAddr::parse(":9464").unwrap().0.to_string(),
            "0.0.0.0:9464"
        );
        assert_eq!(
            ListenAddr::parse("[::1]:9").unwrap().0.to_string(),
            "[::1]:9"
        );
        for bad in ["", "9464", "localhost:9464", "127.0.0.1:99999", "127.0.0.1"] {
            assert!(ListenAddr::parse(bad).is_err(), "{bad}");
        }
    }

    fn page_with(link: Arc<Link>) -> Page {
        let counter = prometheus::IntCounter::new("things_total", "things").unwrap();
        let registry = registry_of(vec![Box::new(counter.clone())]);
        counter.inc_by(3);
        Page {
            registry,
            links: vec![link],
            refresh: Box::new(|| {}),
        }
    }

    #[test]
    fn healthz_names_what_is_down() {
        let link = Link::new("Kafka");
        let page = page_with(Arc::clone(&link));
        let (status, _, body) = route("GET /healthz HTTP/1.1\r\n\r\n", &page);
        assert_eq!(status, "503 Service Unavailable");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "Kafka: not connected yet\n"
        );
        link.up();
        assert_eq!(route("GET /healthz HTTP/1.1\r\n\r\n", &page).0, "200 OK");
        link.down("all brokers down");
        let (_, _, body) = route("GET /healthz HTTP/1.0\r\n\r\n", &page);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "Kafka: all brokers down\n"
        );
    }

    #[test]
    fn metrics_are_prefixed_and_garbage_is_refused() {
        let page = page_with(Link::new("Kafka"));
        let (status, _, body) = route("GET /metrics?x=1 HTTP/1.1\r\n\r\n", &page);
        assert_eq!(status, "200 OK");
        assert!(String::from_utf8(body)
            .unwrap()
            .contains("metrics_flow_things_total 3"));
        assert_eq!(route("\u{0}\u{1}garbage", &page).0, "400 Bad Request");
        assert_eq!(
            route("GET /other HTTP/1.1\r\n\r\n", &page).0,
            "404 Not Found"
        );
    }
}
