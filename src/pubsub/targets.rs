//! What `pub` checks: targets from flags, env and a targets file, each with its own rules.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use regex::bytes::Regex;
use url::Url;

/// One URL to check and every rule that applies to it, defaults already filled in.
// Until the prober applies every per-target rule (issue 3 work in progress).
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct Target {
    pub url: Url,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub expect_status: StatusSet,
    /// Must match the body.
    pub pattern: Option<Regex>,
    /// Must not match the body.
    pub forbid_pattern: Option<Regex>,
    pub timeout: Duration,
    pub interval: Duration,
    pub follow_redirects: bool,
    pub max_redirects: u32,
    pub tls_verify: bool,
    /// Extra CA (PEM) trusted for this target, on top of the system roots.
    pub ca_file: Option<PathBuf>,
}

/// Defaults that command-line flags set for every target lacking its own value.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub pattern: Option<Regex>,
    pub timeout: Duration,
    pub interval: Duration,
}

impl Target {
    /// A target with every setting at its default.
    pub fn new(url: Url, defaults: &Defaults) -> Target {
        Target {
            url,
            method: "GET".to_owned(),
            headers: Vec::new(),
            body: None,
            expect_status: StatusSet::default(),
            pattern: defaults.pattern.clone(),
            forbid_pattern: None,
            timeout: defaults.timeout,
            interval: defaults.interval,
            follow_redirects: true,
            max_redirects: 5,
            tls_verify: true,
            ca_file: None,
        }
    }
}

/// Expected HTTP statuses: a union of inclusive ranges. The default is 200-299.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(pub Vec<RangeInclusive<u16>>);

impl Default for StatusSet {
    fn default() -> StatusSet {
        StatusSet(vec![200..=299])
    }
}

impl StatusSet {
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|range| range.contains(&status))
    }
}

impl std::fmt::Display for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| {
                if r.start() == r.end() {
                    r.start().to_string()
                } else {
                    format!("{}-{}", r.start(), r.end())
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Accepts absolute http(s) URLs with a host; anything else is a usage error.
pub fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("invalid URL '{text}': {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "invalid URL '{text}': only http and https are checked"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("invalid URL '{text}': no host"));
    }
    Ok(url)
}

/// Every target from the command line, each taking the defaults.
pub fn from_flags(urls: &[Url], defaults: &Defaults) -> Vec<Target> {
    urls.iter()
        .map(|url| Target::new(url.clone(), defaults))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_and_https_only() {
        assert!(parse_url("http://127.0.0.1:8080/x").is_ok());
        assert!(parse_url("https://example.com").is_ok());
        assert!(parse_url("ftp://example.com").is_err());
        assert!(parse_url("example.com").is_err());
        assert!(parse_url("http://").is_err());
    }

    #[test]
    fn status_sets_hold_ranges_and_codes() {
        let set = StatusSet(vec![200..=200, 300..=399]);
        assert!(set.contains(200) && set.contains(301) && !set.contains(204));
        assert_eq!(set.to_string(), "200,300-399");
        assert!(StatusSet::default().contains(204));
    }
}
