//! What `pub` checks: targets from flags, env and a targets file, each with its own
//! rules, and the value parsers of those rules (URLs, patterns, statuses).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use regex::bytes::Regex;
use serde::{Deserialize, Serialize};
use toml::Spanned;
use url::Url;

use super::shard::{in_shard, Shard};
use crate::error::{one_line, UsageError};

/// A URL as given on the command line, not parsed yet; `Debug` masks its password.
#[derive(Clone, PartialEq, Eq)]
pub struct UrlArg(pub String);

impl UrlArg {
    /// A value parser for clap: the URL is parsed when the targets are loaded, so its
    /// errors can mask a password.
    pub fn parse(text: &str) -> Result<UrlArg, String> {
        Ok(UrlArg(text.to_owned()))
    }
}

impl std::fmt::Debug for UrlArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", mask_text(&self.0))
    }
}

/// One URL to check and every rule that applies to it, defaults already filled in.
/// `Debug` shows the masked URL only.
#[derive(Clone)]
pub struct Target {
    /// The URL checked, with any password in it.
    pub url: Url,
    /// The URL as published, logged and used as the Kafka key: see [`masked`].
    pub shown: String,
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
    /// Extra CA trusted for this target, on top of the system roots.
    pub ca: Option<CaPem>,
}

/// A CA certificate's PEM text, read when the targets are loaded (a typo fails the
/// start, and a fleet's targets topic can carry it), and where it came from.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CaPem {
    /// Names it in errors: `ca_file '<path>'`, or the targets topic's record.
    pub source: String,
    pub pem: Arc<str>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.shown)
            .field("method", &self.method)
            .field("expect_status", &self.expect_status)
            .field("pattern", &self.pattern)
            .field("timeout", &self.timeout)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
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
            shown: masked(&url),
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
            ca: None,
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

/// The most a request's head (request line and headers) may take: ureq writes it into
/// an output buffer of this size, and a larger one cannot be sent at all.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// The longest URL accepted: it is written twice (request line and Host), and leaves
/// room for the headers. Many servers refuse longer ones anyway (414).
const MAX_URL_BYTES: usize = 8 * 1024;

/// Patterns compiled so far, so that many targets sharing one pattern share one
/// compiled regex: compiling took 5 to 7 µs and about 1.2 KB a target (issue 16).
#[derive(Default)]
pub struct Patterns(HashMap<String, Regex>);

impl Patterns {
    pub fn compile(&mut self, text: &str) -> Result<Regex, String> {
        if let Some(regex) = self.0.get(text) {
            return Ok(regex.clone());
        }
        let regex = parse_regex(text)?;
        self.0.insert(text.to_owned(), regex.clone());
        Ok(regex)
    }
}

/// A regex over bytes, so bodies that are not valid UTF-8 can still be searched.
pub fn parse_regex(text: &str) -> Result<regex::bytes::Regex, String> {
    regex::bytes::Regex::new(text).map_err(|e| one_line_regex_error(text, &e))
}

/// The regex crate draws a multi-line caret diagram; users get its last line only.
pub fn one_line_regex_error(pattern: &str, error: &regex::Error) -> String {
    let rendered = error.to_string();
    let reason = rendered
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("invalid")
        .trim()
        .trim_start_matches("error: ");
    format!("invalid regex '{pattern}': {reason}")
}

/// Accepts absolute http(s) URLs with a host that fit in a request; anything else is a
/// usage error. A password in the URL is masked in the error.
pub fn parse_url(text: &str) -> Result<Url, String> {
    let text = text.trim();
    if text.len() > MAX_URL_BYTES {
        let start: String = mask_text(text).chars().take(60).collect();
        return Err(format!(
            "URL too long: {} bytes, at most {MAX_URL_BYTES} ('{start}...')",
            text.len()
        ));
    }
    let invalid = |why: &dyn std::fmt::Display| format!("invalid URL '{}': {why}", mask_text(text));
    let url = Url::parse(text).map_err(|e| invalid(&e))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(&"only http and https are checked"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(&"no host"));
    }
    Ok(url)
}

/// The URL as it may be shown: a password in it becomes `***`, so that
/// `https://user:pass@host/` reads `https://user:***@host/`. Only the URL checked
/// keeps the password.
pub fn masked(url: &Url) -> String {
    if url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    // Cannot fail: the URL already has a password, hence a host.
    let _ = shown.set_password(Some("***"));
    shown.to_string()
}

/// `text` with the password of a URL in it replaced by `***`, for messages about
/// URLs that may not even parse.
pub fn mask_text(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let start = scheme_end + 3;
    let rest = &text[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return text.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return text.to_owned();
    };
    format!(
        "{}{}:***{}",
        &text[..start],
        &authority[..colon],
        &text[start + at..]
    )
}

/// Every target from the flags and the targets file, narrowed to this process's shard.
/// A URL given twice is refused: it would be checked twice a round under one key.
pub fn load(
    urls: &[UrlArg],
    file: Option<&Path>,
    shard: Option<Shard>,
    defaults: &Defaults,
) -> Result<Vec<Target>, UsageError> {
    let mut targets: Vec<Target> = Vec::with_capacity(urls.len());
    let mut flagged: HashSet<Url> = HashSet::with_capacity(urls.len());
    for UrlArg(text) in urls {
        let url =
            parse_url(text).map_err(|e| UsageError::new(format!("--target (TARGET): {e}")))?;
        if !flagged.insert(url.clone()) {
            return Err(UsageError::new(format!(
                "--target (TARGET): '{}' is given twice",
                masked(&url)
            )));
        }
        targets.push(Target::new(url, defaults));
    }
    if let Some(file) = file {
        // The file's own repeats were refused with their lines; only the flags' remain.
        for target in load_file(file, defaults)? {
            if flagged.contains(&target.url) {
                return Err(UsageError::new(format!(
                    "{}: '{}' is also given with --target (TARGET)",
                    file.display(),
                    target.shown
                )));
            }
            targets.push(target);
        }
    }
    if let Some(shard) = shard {
        targets.retain(|target| in_shard(&target.url, shard));
    }
    Ok(targets)
}

/// Every target in a targets file: structured when its name ends in `.toml`, plain
/// otherwise. No targets is not an error here; the caller decides.
pub fn load_file(path: &Path, defaults: &Defaults) -> Result<Vec<Target>, UsageError> {
    let loaded = load_specs("--targets-file (TARGETS_FILE)", path, defaults)?;
    Ok(loaded.into_iter().map(|(_, target)| target).collect())
}

/// Like [`load_file`], with each target's own settings as the file wrote them, which
/// is what a targets topic carries. `setting` names the file's flag in errors.
pub fn load_specs(
    setting: &str,
    path: &Path,
    defaults: &Defaults,
) -> Result<Vec<(Spec, Target)>, UsageError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| UsageError::unreadable(setting, path, &e))?;
    // Editors on Windows may start the file with a byte order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let structured = path
        .file_name()
        .is_some_and(|name| name.to_string_lossy().ends_with(".toml"));
    let loaded = if structured {
        from_toml(text, path.parent().unwrap_or(Path::new("")), defaults)
    } else {
        from_plain(text, defaults)
    };
    loaded.and_then(refuse_repeated_urls).map_err(|problem| {
        let message = match problem.line {
            Some(line) => format!("{}:{line}: {}", path.display(), problem.text),
            None => format!("{}: {}", path.display(), problem.text),
        };
        UsageError::new(one_line(&message))
    })
}

/// A target of a file: its line, its settings as written, and what they make.
type Lined = (usize, Spec, Target);

/// The targets of a file, each written once, without their lines.
fn refuse_repeated_urls(lined: Vec<Lined>) -> Result<Vec<(Spec, Target)>, Problem> {
    let mut first_lines: HashMap<&Url, usize> = HashMap::with_capacity(lined.len());
    for (line, _, target) in &lined {
        if let Some(first) = first_lines.insert(&target.url, *line) {
            return Err(Problem::at(
                *line,
                format!("'{}' is already on line {first}", target.shown),
            ));
        }
    }
    Ok(lined
        .into_iter()
        .map(|(_, spec, target)| (spec, target))
        .collect())
}

/// What is wrong in a targets file, and on which 1-based line when that is known.
struct Problem {
    line: Option<usize>,
    text: String,
}

impl Problem {
    fn at(line: usize, text: impl Into<String>) -> Problem {
        Problem {
            line: Some(line),
            text: text.into(),
        }
    }
}

fn from_plain(text: &str, defaults: &Defaults) -> Result<Vec<Lined>, Problem> {
    let mut targets = Vec::new();
    let mut patterns = Patterns::default();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (url, pattern) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let pattern = pattern.trim();
        let spec = Spec {
            url: url.to_owned(),
            pattern: (!pattern.is_empty()).then(|| pattern.to_owned()),
            ..Spec::default()
        };
        let target = spec
            .target(defaults, &mut patterns)
            .map_err(|e| Problem::at(index + 1, e.text))?;
        targets.push((index + 1, spec, target));
    }
    Ok(targets)
}

/// One target's own settings, as a `[[target]]` of a TOML file and a record of the
/// targets topic carry them (keys as in the file, `ca_pem` for the CA's text); what
/// is not set falls back to the pub's flags. [`Spec::target`] is the one validator.
/// `Debug` masks the URL's password.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forbid_pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_redirects: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_redirects: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("url", &mask_text(&self.url))
            .finish_non_exhaustive()
    }
}

/// A setting a [`Spec`] gets wrong: its key, and why.
#[derive(Debug)]
pub struct SpecError {
    pub key: &'static str,
    pub text: String,
}

impl Spec {
    /// The target these settings make, flags' defaults filling in the rest.
    /// Patterns come from `patterns`, compiled there if new.
    pub fn target(
        &self,
        defaults: &Defaults,
        patterns: &mut Patterns,
    ) -> Result<Target, SpecError> {
        let at = |key: &'static str| move |text: String| SpecError { key, text };
        let url = parse_url(&self.url).map_err(at("url"))?;
        let mut target = Target::new(url, defaults);
        if let Some(method) = &self.method {
            target.method = parse_method(method).map_err(at("method"))?;
        }
        if let Some(headers) = &self.headers {
            target.headers = parse_headers(headers).map_err(at("headers"))?;
        }
        target.body.clone_from(&self.body);
        if let Some(statuses) = &self.expect_status {
            target.expect_status = parse_statuses(statuses).map_err(at("expect_status"))?;
        }
        if let Some(pattern) = &self.pattern {
            target.pattern = Some(patterns.compile(pattern).map_err(at("pattern"))?);
        }
        if let Some(pattern) = &self.forbid_pattern {
            target.forbid_pattern = Some(patterns.compile(pattern).map_err(at("forbid_pattern"))?);
        }
        if let Some(seconds) = self.timeout {
            target.timeout = seconds_of("timeout", seconds).map_err(at("timeout"))?;
        }
        if let Some(seconds) = self.interval {
            target.interval = seconds_of("interval", seconds).map_err(at("interval"))?;
        }
        let head = request_head_estimate(&target);
        if head > MAX_REQUEST_HEAD {
            return Err(at("url")(format!(
                "the request would take about {head} bytes with its URL and headers, more than the {MAX_REQUEST_HEAD} pub can send"
            )));
        }
        target.follow_redirects = self.follow_redirects.unwrap_or(target.follow_redirects);
        target.max_redirects = self.max_redirects.unwrap_or(target.max_redirects);
        target.tls_verify = self.tls_verify.unwrap_or(target.tls_verify);
        target.ca = self.ca_pem.as_deref().map(|pem| CaPem {
            source: format!("the ca_pem of {}", target.shown),
            pem: pem.into(),
        });
        Ok(target)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    #[serde(default)]
    target: Vec<TomlTarget>,
}

/// One `[[target]]` as written. Spans lead semantic errors to the line of their key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlTarget {
    url: Spanned<String>,
    method: Option<Spanned<String>>,
    headers: Option<Spanned<BTreeMap<String, String>>>,
    body: Option<String>,
    expect_status: Option<Spanned<toml::Value>>,
    pattern: Option<Spanned<String>>,
    forbid_pattern: Option<Spanned<String>>,
    timeout: Option<Spanned<f64>>,
    interval: Option<Spanned<f64>>,
    follow_redirects: Option<bool>,
    max_redirects: Option<u32>,
    tls_verify: Option<bool>,
    ca_file: Option<Spanned<String>>,
}

fn from_toml(text: &str, dir: &Path, defaults: &Defaults) -> Result<Vec<Lined>, Problem> {
    let file: TomlFile = toml::from_str(text).map_err(|e| Problem {
        line: e.span().map(|span| line_of(text, span.start)),
        text: e
            .message()
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" "),
    })?;
    let mut patterns = Patterns::default();
    file.target
        .into_iter()
        .map(|entry| toml_target(entry, text, dir, defaults, &mut patterns))
        .collect()
}

/// The lines of a `[[target]]`'s keys, so that an error names the line of its key.
struct KeyLines<'a> {
    text: &'a str,
    lines: HashMap<&'static str, usize>,
}

impl KeyLines<'_> {
    fn take<T>(&mut self, key: &'static str, value: Option<Spanned<T>>) -> Option<T> {
        let value = value?;
        self.lines
            .insert(key, line_of(self.text, value.span().start));
        Some(value.into_inner())
    }
}

fn toml_target(
    entry: TomlTarget,
    text: &str,
    dir: &Path,
    defaults: &Defaults,
    patterns: &mut Patterns,
) -> Result<Lined, Problem> {
    let line = line_of(text, entry.url.span().start);
    let mut keys = KeyLines {
        text,
        lines: HashMap::new(),
    };
    let ca_file = keys.take("ca_file", entry.ca_file);
    let ca = match &ca_file {
        Some(name) => Some(read_ca(dir, name).map_err(|e| Problem::at(keys.lines["ca_file"], e))?),
        None => None,
    };
    let spec = Spec {
        url: entry.url.into_inner(),
        method: keys.take("method", entry.method),
        headers: keys.take("headers", entry.headers),
        body: entry.body,
        expect_status: keys.take("expect_status", entry.expect_status),
        pattern: keys.take("pattern", entry.pattern),
        forbid_pattern: keys.take("forbid_pattern", entry.forbid_pattern),
        timeout: keys.take("timeout", entry.timeout),
        interval: keys.take("interval", entry.interval),
        follow_redirects: entry.follow_redirects,
        max_redirects: entry.max_redirects,
        tls_verify: entry.tls_verify,
        ca_pem: ca.as_ref().map(|ca| ca.pem.to_string()),
    };
    let mut target = spec
        .target(defaults, patterns)
        .map_err(|e| Problem::at(keys.lines.get(e.key).copied().unwrap_or(line), e.text))?;
    // Errors about the CA name the file it came from.
    target.ca = ca;
    Ok((line, spec, target))
}

fn line_of(text: &str, offset: usize) -> usize {
    let before = &text.as_bytes()[..offset.min(text.len())];
    1 + before.iter().filter(|&&byte| byte == b'\n').count()
}

/// RFC 9110 `token`: what a method or a header name may be made of.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_method(text: &str) -> Result<String, String> {
    if !is_token(text) {
        return Err(format!("invalid method '{text}': not an HTTP token"));
    }
    Ok(text.to_ascii_uppercase())
}

fn parse_headers(headers: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
    headers
        .iter()
        .map(|(name, value)| {
            if !is_token(name) {
                return Err(format!("invalid header name '{name}': not an HTTP token"));
            }
            // A line break in a value would let it smuggle in another header.
            if value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(format!(
                    "invalid value for header '{name}': control character"
                ));
            }
            Ok((name.clone(), value.clone()))
        })
        .collect()
}

/// `expect_status` is a code, a `"lo-hi"` range, or an array of them.
fn parse_statuses(value: &toml::Value) -> Result<StatusSet, String> {
    let items = match value {
        toml::Value::Array(items) => items.as_slice(),
        single => std::slice::from_ref(single),
    };
    if items.is_empty() {
        return Err("expect_status is empty, so no status could be ok".to_owned());
    }
    items
        .iter()
        .map(parse_status)
        .collect::<Result<_, _>>()
        .map(StatusSet)
}

fn parse_status(item: &toml::Value) -> Result<RangeInclusive<u16>, String> {
    match item {
        toml::Value::Integer(code) => {
            let code = status_code(&code.to_string())?;
            Ok(code..=code)
        }
        toml::Value::String(text) => match text.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (status_code(lo)?, status_code(hi)?);
                if lo > hi {
                    return Err(format!("invalid status range '{text}': {lo} is above {hi}"));
                }
                Ok(lo..=hi)
            }
            None => status_code(text).map(|code| code..=code),
        },
        other => Err(format!(
            "invalid expect_status item {other}: expected a status such as 200 or a range such as \"300-399\""
        )),
    }
}

fn status_code(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(code) if (100..=599).contains(&code) => Ok(code),
        _ => Err(format!(
            "invalid status '{}': expected a code from 100 to 599",
            text.trim()
        )),
    }
}

fn seconds_of(key: &str, seconds: f64) -> Result<Duration, String> {
    crate::seconds::from_number(seconds).map_err(|why| format!("invalid {key}: {why}"))
}

/// About how many bytes the request line and headers take: the URL is sent twice
/// (path and Host), and ureq adds its own headers (User-Agent, Accept, an
/// Authorization for a password in the URL) within the last term.
fn request_head_estimate(target: &Target) -> usize {
    let headers: usize = target
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 4)
        .sum();
    target.method.len() + 2 * target.url.as_str().len() + headers + 1024
}

/// Read at load time, so that a typo fails the start instead of every later check.
fn read_ca(dir: &Path, name: &str) -> Result<CaPem, String> {
    let path = dir.join(name);
    let source = format!("ca_file '{}'", path.display());
    let cannot = |why: String| format!("{source}: {why}");
    let mut file = std::fs::File::open(&path).map_err(|e| cannot(e.to_string()))?;
    let metadata = file.metadata().map_err(|e| cannot(e.to_string()))?;
    if !metadata.is_file() {
        return Err(cannot("not a regular file".to_owned()));
    }
    let mut pem = String::new();
    file.read_to_string(&mut pem)
        .map_err(|e| cannot(e.to_string()))?;
    Ok(CaPem {
        source,
        pem: pem.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory per test, removed when the test ends, pass or fail.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "metrics-flow-targets-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let dir = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn defaults() -> Defaults {
        Defaults {
            pattern: Some(Regex::new("default").unwrap()),
            timeout: Duration::from_secs(10),
            interval: Duration::from_secs(30),
        }
    }

    fn load(name: &str, contents: &str) -> Result<Vec<Target>, String> {
        let dir = TempDir::new();
        load_file(&dir.write(name, contents), &defaults()).map_err(|e| e.to_string())
    }

    /// The error names the file and the line, and fits on one line.
    fn error_at(name: &str, contents: &str, line: usize) -> String {
        let error = load(name, contents).expect_err("the file is rejected");
        let tail = error
            .split_once(&format!("{name}:{line}: "))
            .unwrap_or_else(|| panic!("'{error}' does not name {name}:{line}"))
            .1;
        assert!(!error.contains(['\n', '\r']), "not one line: {error:?}");
        tail.to_owned()
    }

    fn pattern_of(target: &Target) -> Option<&str> {
        target.pattern.as_ref().map(Regex::as_str)
    }

    #[test]
    fn plain_file_takes_a_url_and_the_rest_of_the_line_as_pattern() {
        let text = "# production\n\
                    \n\
                    https://a.example/health\n\
                    \t  # indented comment\n\
                    http://b.example/   all  is well \n\
                    \x20\x20\n\
                    https://c.example\tok|fine\n";
        let targets = load("targets.txt", text).unwrap();
        let urls: Vec<&str> = targets.iter().map(|t| t.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://a.example/health",
                "http://b.example/",
                "https://c.example/"
            ]
        );
        assert_eq!(pattern_of(&targets[0]), Some("default"));
        assert_eq!(pattern_of(&targets[1]), Some("all  is well"));
        assert_eq!(pattern_of(&targets[2]), Some("ok|fine"));
        assert!(targets.iter().all(|t| t.method == "GET"
            && t.timeout == Duration::from_secs(10)
            && t.interval == Duration::from_secs(30)
            && t.expect_status == StatusSet::default()));
    }

    #[test]
    fn empty_files_load_no_targets() {
        assert!(load("targets.txt", "# nothing yet\n\n").unwrap().is_empty());
        assert!(load("checks.toml", "").unwrap().is_empty());
    }

    #[test]
    fn toml_file_sets_every_key() {
        let dir = TempDir::new();
        std::fs::create_dir(dir.0.join("certs")).unwrap();
        dir.write("certs/ca.pem", "not checked here");
        let path = dir.write(
            "checks.toml",
            r#"
[[target]]
url = "https://example.com/health"
method = "post"
headers = { Authorization = "Bearer x", X-Probe = "metrics-flow" }
body = "{}"
expect_status = [200, "300-399", 404]
pattern = "all is well"
forbid_pattern = "error"
timeout = 2.5
interval = 60
follow_redirects = false
max_redirects = 0
tls_verify = false
ca_file = "certs/ca.pem"

[[target]]
url = "http://second.example"
expect_status = "500-599"

[[target]]
url = "http://third.example"
expect_status = 204
"#,
        );
        let targets = load_file(&path, &defaults()).unwrap();
        assert_eq!(targets.len(), 3);

        let first = &targets[0];
        assert_eq!(first.url.as_str(), "https://example.com/health");
        assert_eq!(first.method, "POST");
        assert_eq!(
            first.headers,
            [
                ("Authorization".to_owned(), "Bearer x".to_owned()),
                ("X-Probe".to_owned(), "metrics-flow".to_owned())
            ]
        );
        assert_eq!(first.body.as_deref(), Some("{}"));
        assert_eq!(
            first.expect_status,
            StatusSet(vec![200..=200, 300..=399, 404..=404])
        );
        assert_eq!(pattern_of(first), Some("all is well"));
        assert_eq!(
            first.forbid_pattern.as_ref().map(Regex::as_str),
            Some("error")
        );
        assert_eq!(first.timeout, Duration::from_millis(2500));
        assert_eq!(first.interval, Duration::from_secs(60));
        assert!(!first.follow_redirects && first.max_redirects == 0 && !first.tls_verify);
        let ca = first.ca.as_ref().expect("the CA is read");
        let ca_path = dir.0.join("certs/ca.pem");
        assert_eq!(ca.source, format!("ca_file '{}'", ca_path.display()));
        assert_eq!(*ca.pem, std::fs::read_to_string(&ca_path).unwrap());

        let second = &targets[1];
        assert_eq!(second.expect_status, StatusSet(vec![500..=599]));
        assert_eq!(second.method, "GET");
        assert_eq!(pattern_of(second), Some("default"));
        assert!(second.forbid_pattern.is_none() && second.body.is_none());
        assert_eq!(second.timeout, Duration::from_secs(10));
        assert!(second.follow_redirects && second.max_redirects == 5 && second.tls_verify);
        assert_eq!(targets[2].expect_status, StatusSet(vec![204..=204]));
    }

    #[test]
    fn missing_file_names_the_flag_and_the_path() {
        let dir = TempDir::new();
        let path = dir.0.join("absent.txt");
        let error = load_file(&path, &defaults()).unwrap_err().to_string();
        assert!(error.starts_with(&format!(
            "--targets-file (TARGETS_FILE): cannot read '{}': ",
            path.display()
        )));
        assert!(error.contains("No such file"), "{error}");
        assert!(!error.contains('\n'));
    }

    #[test]
    fn bad_url_names_file_and_line() {
        let tail = error_at(
            "targets.txt",
            "# first\nhttp://ok.example\nnope pattern\n",
            3,
        );
        assert!(tail.starts_with("invalid URL 'nope': "), "{tail}");
        let toml = "[[target]]\nurl = \"http://ok.example\"\n\n[[target]]\nurl = \"ftp://x\"\n";
        let tail = error_at("checks.toml", toml, 5);
        assert_eq!(
            tail,
            "invalid URL 'ftp://x': only http and https are checked"
        );
    }

    #[test]
    fn bad_regex_names_file_and_line() {
        let tail = error_at("targets.txt", "http://a.example (unclosed\n", 1);
        assert!(tail.starts_with("invalid regex '(unclosed': "), "{tail}");
        let toml = "[[target]]\nurl = \"http://a.example\"\npattern = \"ok\"\nforbid_pattern = \"[z-a]\"\n";
        let tail = error_at("checks.toml", toml, 4);
        assert!(tail.starts_with("invalid regex '[z-a]': "), "{tail}");
    }

    #[test]
    fn unknown_keys_name_file_and_line() {
        let toml = "[[target]]\nurl = \"http://a.example\"\ntimout = 5\n";
        let tail = error_at("checks.toml", toml, 3);
        assert!(
            tail.contains("unknown field") && tail.contains("timout"),
            "{tail}"
        );
        assert!(tail.contains("timeout"), "lists the known fields: {tail}");
        let toml =
            "[[target]]\nurl = \"http://a.example\"\n\n[[targets]]\nurl = \"http://b.example\"\n";
        let tail = error_at("checks.toml", toml, 4);
        assert!(
            tail.contains("unknown field") && tail.contains("targets"),
            "{tail}"
        );
    }

    #[test]
    fn toml_syntax_and_type_errors_name_file_and_line() {
        let tail = error_at("checks.toml", "[[target]]\nurl = \"http://a.example\n", 2);
        assert!(!tail.is_empty());
        let toml = "[[target]]\nurl = \"http://a.example\"\ntls_verify = \"yes\"\n";
        let tail = error_at("checks.toml", toml, 3);
        assert!(tail.contains("bool"), "{tail}");
        let tail = error_at("checks.toml", "[[target]]\nmethod = \"GET\"\n", 1);
        assert!(
            tail.contains("missing field") && tail.contains("url"),
            "{tail}"
        );
    }

    #[test]
    fn bad_statuses_name_file_and_line() {
        let toml = |statuses: &str| {
            format!("[[target]]\nurl = \"http://a.example\"\nexpect_status = {statuses}\n")
        };
        let tail = error_at("checks.toml", &toml(r#"[200, "399-300"]"#), 3);
        assert_eq!(tail, "invalid status range '399-300': 399 is above 300");
        let tail = error_at("checks.toml", &toml("[200, 700]"), 3);
        assert_eq!(
            tail,
            "invalid status '700': expected a code from 100 to 599"
        );
        let tail = error_at("checks.toml", &toml(r#""2xx""#), 3);
        assert_eq!(
            tail,
            "invalid status '2xx': expected a code from 100 to 599"
        );
        error_at("checks.toml", &toml("[]"), 3);
        error_at("checks.toml", &toml("[true]"), 3);
        error_at("checks.toml", &toml("99"), 3);
    }

    #[test]
    fn bad_settings_name_file_and_line() {
        let toml = |line: &str| format!("[[target]]\nurl = \"http://a.example\"\n{line}\n");
        let tail = error_at("checks.toml", &toml(r#"method = "GE T""#), 3);
        assert_eq!(tail, "invalid method 'GE T': not an HTTP token");
        let tail = error_at("checks.toml", &toml(r#"headers = { "Bad Name" = "x" }"#), 3);
        assert_eq!(tail, "invalid header name 'Bad Name': not an HTTP token");
        let tail = error_at("checks.toml", &toml(r#"headers = { X = "a\r\nY: b" }"#), 3);
        assert_eq!(tail, "invalid value for header 'X': control character");
        let tail = error_at("checks.toml", &toml("timeout = 0"), 3);
        assert_eq!(tail, "invalid timeout: 0 s is not between 0.1 s and a year");
        let tail = error_at("checks.toml", &toml("interval = 1e9"), 3);
        assert_eq!(
            tail,
            "invalid interval: 1000000000 s is not between 0.1 s and a year"
        );
        error_at("checks.toml", &toml("interval = -1"), 3);
        error_at("checks.toml", &toml("max_redirects = -1"), 3);
    }

    #[test]
    fn missing_ca_file_names_file_and_line() {
        let dir = TempDir::new();
        let path = dir.write(
            "checks.toml",
            "[[target]]\nurl = \"https://a.example\"\nca_file = \"missing.pem\"\n",
        );
        let error = load_file(&path, &defaults()).unwrap_err().to_string();
        let expected = format!(
            "{}:3: ca_file '{}': ",
            path.display(),
            dir.0.join("missing.pem").display()
        );
        assert!(error.starts_with(&expected), "{error}");
        assert!(
            error.contains("No such file") && !error.contains('\n'),
            "{error}"
        );
        let path = dir.write(
            "dir.toml",
            "[[target]]\nurl = \"https://a.example\"\nca_file = \".\"\n",
        );
        let error = load_file(&path, &defaults()).unwrap_err().to_string();
        assert!(error.ends_with("not a regular file"), "{error}");
    }

    #[test]
    fn values_with_line_breaks_still_give_one_line_errors() {
        let toml = "[[target]]\nurl = \"http://a.example\"\npattern = \"(\\n\"\n";
        let tail = error_at("checks.toml", toml, 3);
        assert!(tail.starts_with("invalid regex '(\\n': "), "{tail}");
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_url() {
        let targets = load(
            "targets.txt",
            "\u{feff}https://a.example\r\nhttps://b.example\r\n",
        );
        assert_eq!(targets.unwrap().len(), 2);
        let toml = "\u{feff}[[target]]\nurl = \"https://a.example\"\n";
        assert_eq!(load("checks.toml", toml).unwrap().len(), 1);
    }

    #[test]
    fn regex_error_is_one_line() {
        let err = parse_regex("a(b").unwrap_err();
        assert_eq!(err.lines().count(), 1);
        assert!(err.contains("unclosed group"), "{err}");
    }

    #[test]
    fn a_url_twice_in_a_file_names_both_lines() {
        let toml =
            "[[target]]\nurl = \"http://a.example/\"\n\n[[target]]\nurl = \"http://a.example\"\n";
        let tail = error_at("checks.toml", toml, 5);
        assert_eq!(tail, "'http://a.example/' is already on line 2");
        let tail = error_at(
            "t.txt",
            "# x\nhttp://a.example/ one\nhttp://a.example/ two\n",
            3,
        );
        assert_eq!(tail, "'http://a.example/' is already on line 2");
    }

    #[test]
    fn passwords_in_urls_are_masked_wherever_a_url_is_shown() {
        let url = Url::parse("https://user:s3cret@example.com:8443/p?q=1").unwrap();
        assert_eq!(masked(&url), "https://user:***@example.com:8443/p?q=1");
        assert_eq!(url.password(), Some("s3cret"), "the URL checked keeps it");
        let no_password = Url::parse("https://user@example.com/").unwrap();
        assert_eq!(masked(&no_password), "https://user@example.com/");
        assert_eq!(
            mask_text("ftp://user:s3cret@example.com/a@b"),
            "ftp://user:***@example.com/a@b"
        );
        assert_eq!(mask_text("not a url: a:b@c"), "not a url: a:b@c");
        let error = parse_url("ftp://user:s3cret@example.com/").unwrap_err();
        assert!(
            !error.contains("s3cret") && error.contains("user:***@"),
            "{error}"
        );
        let target = Target::new(url, &defaults());
        assert_eq!(target.shown, "https://user:***@example.com:8443/p?q=1");
        assert!(!format!("{target:?}").contains("s3cret"), "{target:?}");
        let arg = UrlArg("http://u:s3cret@h/".into());
        assert_eq!(format!("{arg:?}"), "\"http://u:***@h/\"");
    }

    #[test]
    fn requests_that_cannot_be_sent_are_refused_at_load() {
        let long = format!("http://a.example/{}", "x".repeat(MAX_URL_BYTES));
        let error = parse_url(&long).unwrap_err();
        assert!(error.starts_with("URL too long: "), "{error}");
        assert!(error.len() < 200, "{error}");
        let header = "v".repeat(MAX_REQUEST_HEAD);
        let toml =
            format!("[[target]]\nurl = \"http://a.example/\"\nheaders = {{ X = \"{header}\" }}\n");
        let tail = error_at("checks.toml", &toml, 2);
        assert!(tail.contains("more than the 16384"), "{tail}");
    }

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
