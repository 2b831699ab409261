//! The `--metrics-listen` endpoint from the outside: a free loopback address to give
//! it, a plain GET, and the samples of a Prometheus text page.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A loopback address no one listens on now.
pub fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// GET `path` from the endpoint at `addr`: the status code and the body; None if
/// nothing answers there.
pub fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// The sum of every sample of `name` (all its label sets), or None if it has none.
pub fn sample_sum(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let family = series.split('{').next()?;
            (family == name).then(|| value.parse().ok())?
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The value of one series, written exactly as the page writes it, labels and all
/// (`metrics_flow_schedule_lag_seconds_bucket{le="1"}`); None if the page lacks it.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
}

/// The count of histogram `name`'s bucket whose upper bound is `le`, whatever digits
/// the page writes the bound with; None if the page lacks that bucket.
pub fn bucket(text: &str, name: &str, le: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .find_map(|rest| {
            let (labels, value) = rest.rsplit_once(' ')?;
            let bound = labels.split("le=\"").nth(1)?.split('"').next()?;
            (bound.parse::<f64>().ok()? == le).then(|| value.parse().ok())?
        })
}
