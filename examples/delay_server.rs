//! A loopback HTTP server for the timing-accuracy benchmark: it waits exactly `?ms=D`
//! before answering, on a thread per connection, so the delay is the server's only cost.
//!
//! Usage: `delay_server PORT` (bench-pub.sh builds and runs it).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: delay_server PORT");
            std::process::exit(2)
        });
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| {
        eprintln!("delay_server: cannot listen on 127.0.0.1:{port}: {e}");
        std::process::exit(1)
    });
    for stream in listener.incoming().flatten() {
        thread::spawn(move || answer(stream));
    }
}

/// Reads one request, sleeps for its `ms` query parameter, answers 200 and closes.
fn answer(stream: TcpStream) {
    let Ok(reader_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader_half);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let delay_ms: f64 = request_line
        .split_whitespace()
        .nth(1)
        .and_then(|target| target.split_once("ms="))
        .and_then(|(_, rest)| rest.split('&').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0.0);
    thread::sleep(Duration::from_secs_f64(delay_ms / 1000.0));
    let mut stream = stream;
    let _ =
        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
}
