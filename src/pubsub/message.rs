//! The check result message, schema version 1: encoding for `pub`, strict validation for `sub`.

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

pub const SCHEMA_VERSION: u64 = 1;

/// Why a check failed; the wire names are the contract's `error_kind` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Dns,
    Refused,
    ConnectTimeout,
    Timeout,
    Tls,
    Reset,
    Protocol,
    TooManyRedirects,
    BodyTooLarge,
    Status,
    Pattern,
    Other,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::Dns,
        ErrorKind::Refused,
        ErrorKind::ConnectTimeout,
        ErrorKind::Timeout,
        ErrorKind::Tls,
        ErrorKind::Reset,
        ErrorKind::Protocol,
        ErrorKind::TooManyRedirects,
        ErrorKind::BodyTooLarge,
        ErrorKind::Status,
        ErrorKind::Pattern,
        ErrorKind::Other,
    ];

    /// The kind of a wire name, as stored in a table.
    pub fn parse(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// The wire name, without going through serde; a test keeps the two in step.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Dns => "dns",
            ErrorKind::Refused => "refused",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Tls => "tls",
            ErrorKind::Reset => "reset",
            ErrorKind::Protocol => "protocol",
            ErrorKind::TooManyRedirects => "too_many_redirects",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::Status => "status",
            ErrorKind::Pattern => "pattern",
            ErrorKind::Other => "other",
        }
    }
}

/// One check, as published. Fields beyond the required ones are optional extras.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub v: u64,
    pub id: Uuid,
    #[serde(with = "rfc3339")]
    pub checked_at: DateTime<Utc>,
    pub target: String,
    pub ok: bool,
    #[serde(deserialize_with = "present")]
    pub http_status: Option<u16>,
    #[serde(deserialize_with = "present")]
    pub latency_ms: Option<f64>,
    #[serde(deserialize_with = "present")]
    pub error_kind: Option<ErrorKind>,
    #[serde(deserialize_with = "present")]
    pub error_text: Option<String>,
    #[serde(deserialize_with = "present")]
    pub pattern: Option<String>,
    #[serde(deserialize_with = "present")]
    pub pattern_found: Option<bool>,
    #[serde(flatten)]
    pub details: Details,
}

/// Optional fields a producer adds: phase timings, TLS expiry and the response's shape.
/// Absent fields are simply left out of the JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Details {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ms: Option<f64>,
    /// From the start of the check until the response headers arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_rfc3339"
    )]
    pub tls_expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_days_left: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirects: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<u64>,
    /// How much later than scheduled the check started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_lag_ms: Option<f64>,
    /// Where the pub that made the check runs (`--location`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Which pub process made the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
}

/// Why `sub` refused a payload; stored as the rejected row's reason.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Rejection {
    #[error("no value: a tombstone, not a check result")]
    Tombstone,
    #[error("empty value, not a check result")]
    Empty,
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("missing required field '{0}'")]
    Missing(&'static str),
    #[error("unsupported schema version {0}")]
    UnsupportedVersion(String),
    #[error("invalid field: {0}")]
    Invalid(String),
}

const REQUIRED_FIELDS: [&str; 11] = [
    "v",
    "id",
    "checked_at",
    "target",
    "ok",
    "http_status",
    "latency_ms",
    "error_kind",
    "error_text",
    "pattern",
    "pattern_found",
];

impl CheckResult {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a CheckResult always serializes")
    }

    /// Parses a message's value (None for a tombstone), insisting that every required
    /// field is present (even when null), that `v` is one this build understands and
    /// that the values are ones a check can have. Unknown fields are ignored.
    pub fn decode(payload: Option<&[u8]>) -> Result<CheckResult, Rejection> {
        let payload = payload.ok_or(Rejection::Tombstone)?;
        if payload.is_empty() {
            return Err(Rejection::Empty);
        }
        // A valid current result, the common case, goes straight into the struct:
        // 0.8 µs a result here, against 2.5 µs through a `Value`. Whatever that
        // refuses takes the slow path, which says exactly why (or accepts what the
        // fast path is stricter about, such as a repeated key).
        if let Ok(check) = serde_json::from_slice::<CheckResult>(payload) {
            if check.v == SCHEMA_VERSION {
                check.plausible(Utc::now())?;
                return Ok(check);
            }
        }
        let value: Value =
            serde_json::from_slice(payload).map_err(|e| Rejection::NotJson(e.to_string()))?;
        let object = value.as_object().ok_or(Rejection::NotObject)?;
        check_version(object)?;
        if let Some(missing) = REQUIRED_FIELDS.iter().find(|f| !object.contains_key(**f)) {
            return Err(Rejection::Missing(missing));
        }
        let check: CheckResult =
            serde_json::from_value(value).map_err(|e| Rejection::Invalid(e.to_string()))?;
        check.plausible(Utc::now())?;
        Ok(check)
    }

    /// A plausible result, different for each `n`: one of 16 targets, every seventh a
    /// failed check, checked now. For the tests and the benchmark's generator, so that
    /// what they send is what this schema says, not a copy of it.
    pub fn example(n: usize) -> CheckResult {
        let ok = !n.is_multiple_of(7);
        CheckResult {
            v: SCHEMA_VERSION,
            id: Uuid::new_v4(),
            checked_at: Utc::now(),
            target: format!("http://t{}.example.test/health", n % 16),
            ok,
            http_status: Some(if ok { 200 } else { 503 }),
            latency_ms: Some(3.0 + (n % 250) as f64 / 10.0),
            error_kind: (!ok).then_some(ErrorKind::Status),
            error_text: (!ok).then(|| "status 503 is not in 200-299".to_owned()),
            pattern: Some("all is well".to_owned()),
            pattern_found: Some(ok),
            details: Details::default(),
        }
    }

    /// Refuses values no check can have. A result dated in 9999 would otherwise be
    /// "the latest" for its target forever.
    fn plausible(&self, now: DateTime<Utc>) -> Result<(), Rejection> {
        let invalid = |why: String| Err(Rejection::Invalid(why));
        let checked_at = self.checked_at.to_rfc3339_opts(SecondsFormat::Micros, true);
        if self.checked_at > now + chrono::Duration::hours(MAX_CLOCK_AHEAD_HOURS) {
            return invalid(format!(
                "checked_at {checked_at} is more than {MAX_CLOCK_AHEAD_HOURS} h ahead of this clock"
            ));
        }
        if self.checked_at.year() < EARLIEST_YEAR {
            return invalid(format!("checked_at {checked_at} is before {EARLIEST_YEAR}"));
        }
        if self.target.trim().is_empty() {
            return invalid("target is empty".to_owned());
        }
        if let Some(status) = self.http_status.filter(|s| !(100..=599).contains(s)) {
            return invalid(format!(
                "http_status {status} is not an HTTP status (100-599)"
            ));
        }
        let details = &self.details;
        for (name, millis) in [
            ("latency_ms", self.latency_ms),
            ("dns_ms", details.dns_ms),
            ("connect_ms", details.connect_ms),
            ("tls_ms", details.tls_ms),
            ("ttfb_ms", details.ttfb_ms),
            ("schedule_lag_ms", details.schedule_lag_ms),
        ] {
            if let Some(millis) = millis.filter(|m| !(m.is_finite() && *m >= 0.0)) {
                return invalid(format!("{name} {millis} is not a duration"));
            }
        }
        Ok(())
    }

    /// PostgreSQL's text type cannot hold U+0000, so a NUL in any text this check
    /// carries (a regex written with `\u0000`, a server's error) is written as the
    /// four characters `\x00`, which reads the same and, in a pattern, matches the same.
    pub fn replace_nul_characters(&mut self) {
        let details = &mut self.details;
        let texts = [
            Some(&mut self.target),
            self.error_text.as_mut(),
            self.pattern.as_mut(),
            details.http_version.as_mut(),
            details.final_url.as_mut(),
            details.location.as_mut(),
            details.probe.as_mut(),
        ];
        for text in texts.into_iter().flatten() {
            if text.contains('\0') {
                *text = text.replace('\0', "\\x00");
            }
        }
    }
}

/// A producer's clock may run ahead of sub's by this much before its results are refused.
const MAX_CLOCK_AHEAD_HOURS: i64 = 24;
/// No check was made before this year; earlier dates are a producer's bug.
const EARLIEST_YEAR: i32 = 2000;

/// A required field that may be null: absent is an error, as it is for the slow
/// path's [`REQUIRED_FIELDS`] (serde would take an absent `Option` as None).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::deserialize(d)
}

fn check_version(object: &Map<String, Value>) -> Result<(), Rejection> {
    match object.get("v") {
        None => Err(Rejection::Missing("v")),
        Some(v) if v.as_u64() == Some(SCHEMA_VERSION) => Ok(()),
        Some(other) => Err(Rejection::UnsupportedVersion(other.to_string())),
    }
}

/// RFC 3339 in UTC with microseconds, the form the contract names.
mod rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(|e| serde::de::Error::custom(format!("checked_at '{text}': {e}")))
    }

    pub fn parse(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
        DateTime::parse_from_rfc3339(text).map(|at| at.with_timezone(&Utc))
    }
}

mod optional_rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => super::rfc3339::serialize(at, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => super::rfc3339::parse(&text)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("'{text}': {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CheckResult {
        CheckResult {
            v: 1,
            id: Uuid::new_v4(),
            checked_at: DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            target: "http://127.0.0.1:8080/health".into(),
            ok: false,
            http_status: Some(500),
            latency_ms: Some(12.345),
            error_kind: Some(ErrorKind::Status),
            error_text: Some("status 500 not in 200-299".into()),
            pattern: Some("ok".into()),
            pattern_found: None,
            details: Details {
                connect_ms: Some(0.5),
                tls_expires_at: Some("2027-01-01T00:00:00Z".parse().unwrap()),
                ..Details::default()
            },
        }
    }

    #[test]
    fn round_trips() {
        let check = sample();
        assert_eq!(CheckResult::decode(Some(&check.encode())).unwrap(), check);
    }

    #[test]
    fn wire_form_matches_contract() {
        let json: Value = serde_json::from_slice(&sample().encode()).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["checked_at"], "2026-11-22T10:00:00.123456Z");
        assert_eq!(json["error_kind"], "status");
        assert_eq!(json["pattern_found"], Value::Null);
        for field in REQUIRED_FIELDS {
            assert!(
                json.get(field).is_some(),
                "{field} missing from the wire form"
            );
        }
        let kind: Value = serde_json::to_value(ErrorKind::TooManyRedirects).unwrap();
        assert_eq!(kind, "too_many_redirects");
    }

    #[test]
    fn kind_names_match_serde() {
        for kind in ErrorKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
            assert_eq!(ErrorKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn values_no_check_can_have_are_rejected() {
        let now = Utc::now();
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "checked_at",
                "9999-01-01T00:00:00Z".into(),
                "ahead of this clock",
            ),
            ("checked_at", "0001-01-01T00:00:00Z".into(), "before 2000"),
            ("latency_ms", (-0.5).into(), "latency_ms -0.5"),
            ("ttfb_ms", (-1.0).into(), "ttfb_ms -1"),
            ("http_status", 0.into(), "http_status 0"),
            ("http_status", 700.into(), "http_status 700"),
            ("target", " ".into(), "target is empty"),
        ];
        for (field, bad, reason) in cases {
            let mut json: Value = serde_json::from_slice(&sample().encode()).unwrap();
            json["checked_at"] = now.to_rfc3339().into();
            json[field] = bad.clone();
            let rejection = CheckResult::decode(Some(json.to_string().as_bytes())).unwrap_err();
            assert!(
                rejection.to_string().contains(reason),
                "{field} = {bad}: {rejection}"
            );
        }
        let mut slightly_ahead = sample();
        slightly_ahead.checked_at = now + chrono::Duration::hours(1);
        assert_eq!(slightly_ahead.plausible(now), Ok(()));
    }

    #[test]
    fn nul_characters_are_written_as_an_escape() {
        let mut check = sample();
        check.pattern = Some("a\0b".into());
        check.error_text = Some("\0".into());
        check.details.final_url = Some("http://x/\0".into());
        check.replace_nul_characters();
        assert_eq!(check.pattern.as_deref(), Some("a\\x00b"));
        assert_eq!(check.error_text.as_deref(), Some("\\x00"));
        assert_eq!(check.details.final_url.as_deref(), Some("http://x/\\x00"));
        let pattern = regex::bytes::Regex::new(check.pattern.as_deref().unwrap()).unwrap();
        assert!(
            pattern.is_match(b"a\0b"),
            "the escape matches what the NUL matched"
        );
    }

    #[test]
    fn every_missing_required_field_is_refused_by_both_paths() {
        for field in REQUIRED_FIELDS {
            let mut json: Value = serde_json::from_slice(&sample().encode()).unwrap();
            json.as_object_mut().unwrap().remove(field);
            let bytes = json.to_string().into_bytes();
            assert!(
                serde_json::from_slice::<CheckResult>(&bytes).is_err(),
                "the fast path takes a result without {field}"
            );
            assert_eq!(
                CheckResult::decode(Some(&bytes)),
                Err(Rejection::Missing(field))
            );
        }
    }

    #[test]
    fn a_repeated_key_takes_its_last_value_as_before() {
        let json = String::from_utf8(sample().encode()).unwrap();
        let repeated = json.replacen('{', r#"{"target":"http://first.example/","#, 1);
        let decoded = CheckResult::decode(Some(repeated.as_bytes())).unwrap();
        assert_eq!(decoded.target, sample().target);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut json: Value = serde_json::from_slice(&sample().encode()).unwrap();
        json["tls_expires_at"] = "2027-01-01T00:00:00Z".into();
        let decoded = CheckResult::decode(Some(json.to_string().as_bytes())).unwrap();
        assert_eq!(decoded.target, "http://127.0.0.1:8080/health");
    }

    #[test]
    fn rejects_what_it_cannot_accept() {
        let mut missing: Value = serde_json::from_slice(&sample().encode()).unwrap();
        missing.as_object_mut().unwrap().remove("pattern_found");
        let mut wrong_type: Value = serde_json::from_slice(&sample().encode()).unwrap();
        wrong_type["ok"] = "yes".into();
        let mut future: Value = serde_json::from_slice(&sample().encode()).unwrap();
        future["v"] = 2.into();
        let mut bad_id: Value = serde_json::from_slice(&sample().encode()).unwrap();
        bad_id["id"] = "not-a-uuid".into();

        assert!(matches!(
            CheckResult::decode(Some(b"\xff not json")),
            Err(Rejection::NotJson(_))
        ));
        assert_eq!(CheckResult::decode(Some(b"[1]")), Err(Rejection::NotObject));
        assert_eq!(CheckResult::decode(None), Err(Rejection::Tombstone));
        assert_eq!(CheckResult::decode(Some(b"")), Err(Rejection::Empty));
        assert_eq!(
            CheckResult::decode(Some(missing.to_string().as_bytes())),
            Err(Rejection::Missing("pattern_found"))
        );
        assert!(matches!(
            CheckResult::decode(Some(wrong_type.to_string().as_bytes())),
            Err(Rejection::Invalid(_))
        ));
        assert_eq!(
            CheckResult::decode(Some(future.to_string().as_bytes())),
            Err(Rejection::UnsupportedVersion("2".into()))
        );
        assert!(matches!(
            CheckResult::decode(Some(bad_id.to_string().as_bytes())),
            Err(Rejection::Invalid(_))
        ));
    }
}
