//! What a check costs at each layer of pub's design, for `scripts/bench-pub.sh`: a
//! thread per check in flight, each making blocking GETs on new connections to one
//! URL, with no schedule, no results kept and no Kafka.
//!
//!   cargo run --release --example blocking_floor -- CLIENT HOST:PORT REQUESTS CONCURRENCY
//!
//! CLIENT is one of
//! - `raw`: an HTTP/1.0 request written and the answer read to the server's close, with
//!   std alone. What this spends above `ab` is the price of blocking threads instead of
//!   one event loop;
//! - `ureq`: the same GET through a plain ureq agent;
//! - `minreq` and `attohttpc`: through those crates, two other blocking HTTP clients,
//!   for what a request costs through a well-kept crate other than ureq. Neither lets
//!   a caller time DNS, connect and TLS apart, which pub's results carry;
//! - `probe`: pub's own prober (`Probe::check`): timed connectors, the target's rules,
//!   a result made and dropped. What pub spends above this is its schedule and Kafka.
//!
//! Exits 1 unless every request was answered 200.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use metrics_flow::cli::DEFAULT_MAX_BODY_BYTES;
use metrics_flow::pubsub::publish::probe::Probe;
use metrics_flow::pubsub::publish::targets::{parse_url, Defaults, Target};

enum Client {
    Raw(Vec<u8>),
    Ureq(ureq::Agent, String),
    Minreq(String),
    Attohttpc(String),
    Probe(Box<Probe>),
}

impl Client {
    fn new(name: &str, address: SocketAddr) -> Option<Client> {
        let url = format!("http://{address}/floor");
        match name {
            "raw" => Some(Client::Raw(
                format!("GET /floor HTTP/1.0\r\nHost: {address}\r\n\r\n").into_bytes(),
            )),
            "ureq" => Some(Client::Ureq(ureq::Agent::new_with_defaults(), url)),
            "minreq" => Some(Client::Minreq(url)),
            "attohttpc" => Some(Client::Attohttpc(url)),
            "probe" => {
                let defaults = Defaults {
                    pattern: None,
                    timeout: Duration::from_secs(10),
                    interval: Duration::from_secs(30),
                };
                let target = Target::new(parse_url(&url).ok()?, &defaults);
                let mut probes = Probe::for_each(vec![target]).ok()?;
                Some(Client::Probe(Box::new(probes.pop()?)))
            }
            _ => None,
        }
    }

    /// One GET on a new connection; true when it was answered 200.
    fn get(&self, address: SocketAddr, answer: &mut Vec<u8>) -> bool {
        match self {
            Client::Raw(request) => raw_get(address, request, answer),
            Client::Ureq(agent, url) => match agent.get(url).call() {
                Ok(mut response) => {
                    response.body_mut().read_to_vec().is_ok() && response.status() == 200
                }
                Err(_) => false,
            },
            Client::Minreq(url) => minreq::get(url)
                .send()
                .is_ok_and(|response| response.status_code == 200),
            Client::Attohttpc(url) => attohttpc::get(url)
                .send()
                .is_ok_and(|response| response.status() == 200 && response.bytes().is_ok()),
            Client::Probe(probe) => probe.check(DEFAULT_MAX_BODY_BYTES).http_status == Some(200),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [client, address, requests, concurrency] = args.as_slice() else {
        eprintln!(
            "usage: blocking_floor raw|ureq|minreq|attohttpc|probe HOST:PORT REQUESTS CONCURRENCY"
        );
        std::process::exit(2);
    };
    let (Ok(address), Ok(requests), Ok(concurrency)) = (
        address.parse::<SocketAddr>(),
        requests.parse::<usize>(),
        concurrency.parse::<usize>(),
    ) else {
        eprintln!("blocking_floor: HOST:PORT must be an address, REQUESTS and CONCURRENCY numbers");
        std::process::exit(2);
    };
    let Some(client) = Client::new(client, address) else {
        eprintln!("blocking_floor: the client is raw, ureq, minreq, attohttpc or probe");
        std::process::exit(2);
    };
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..concurrency.max(1) {
            scope.spawn(|| {
                let mut answer = Vec::with_capacity(4096);
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    answer.clear();
                    if !client.get(address, &mut answer) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let failed = failed.into_inner();
    if failed > 0 {
        eprintln!("blocking_floor: {failed} of {requests} request(s) were not answered 200");
        std::process::exit(1);
    }
}

/// An HTTP/1.0 GET on a new connection, read to the server's close.
fn raw_get(address: SocketAddr, request: &[u8], answer: &mut Vec<u8>) -> bool {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return false;
    };
    if stream.write_all(request).is_err() || stream.read_to_end(answer).is_err() {
        return false;
    }
    answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200")
}
