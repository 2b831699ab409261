//! What `pub` checks: the target list built from flags and env, with validation.

use regex::bytes::Regex;
use url::Url;

/// One URL to check and the rule its body must satisfy.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: Url,
    pub pattern: Option<Regex>,
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

/// Every target from the command line, each taking the shared pattern.
pub fn from_flags(urls: &[Url], pattern: Option<&Regex>) -> Vec<Target> {
    urls.iter()
        .map(|url| Target {
            url: url.clone(),
            pattern: pattern.cloned(),
        })
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
}
