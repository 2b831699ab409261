//! One record of the targets topic: its key (the target's URL, password masked) and
//! its value (schema version 1: `v` and the target's own settings), or a tombstone.

use crate::pubsub::publish::targets::{Spec, Target};

/// The version of the value's schema this build writes and reads.
pub const VERSION: u64 = 1;

/// The key of a target's record. The password stays out of keys: the value carries
/// it, to the pubs that check the target.
pub fn key(target: &Target) -> String {
    target.shown.clone()
}

/// The value of a target's record: `{"v": 1, "url": ..., ...}`, settings as the file
/// wrote them.
pub fn encode(spec: &Spec) -> Vec<u8> {
    let mut value = serde_json::to_value(spec).expect("a Spec is plain data");
    if let serde_json::Value::Object(fields) = &mut value {
        fields.insert("v".to_owned(), VERSION.into());
    }
    serde_json::to_vec(&value).expect("a JSON value serializes")
}

/// A record's value as settings; the error says why it cannot be used.
pub fn decode(value: &[u8]) -> Result<Spec, String> {
    let mut value: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
    let fields = value
        .as_object_mut()
        .ok_or_else(|| "not a JSON object".to_owned())?;
    match fields.remove("v").and_then(|v| v.as_u64()) {
        Some(VERSION) => {}
        Some(other) => {
            return Err(format!(
                "schema version {other}, this build reads {VERSION}"
            ))
        }
        None => return Err("no schema version (\"v\")".to_owned()),
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_survives_the_topic_whole() {
        let spec = Spec {
            url: "https://user:s3cret@example.test/health".to_owned(),
            method: Some("HEAD".to_owned()),
            expect_status: Some(toml::Value::Array(vec![
                toml::Value::Integer(200),
                toml::Value::String("300-399".to_owned()),
            ])),
            pattern: Some("ok".to_owned()),
            timeout: Some(2.5),
            tls_verify: Some(false),
            ca_pem: Some("-----BEGIN CERTIFICATE-----\n".to_owned()),
            ..Spec::default()
        };
        let value = encode(&spec);
        let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(json["v"], 1);
        assert!(json.get("headers").is_none(), "unset settings are left out");
        assert!(decode(&value).unwrap() == spec);
    }

    #[test]
    fn values_this_build_cannot_use_say_why() {
        for (value, why) in [
            (&b"{\"url\": \"http://a.test/\"}"[..], "no schema version"),
            (
                b"{\"v\": 2, \"url\": \"http://a.test/\"}",
                "schema version 2",
            ),
            (b"[1]", "not a JSON object"),
            (
                b"{\"v\": 1, \"url\": \"http://a.test/\", \"colour\": 1}",
                "colour",
            ),
            (b"\xff", "not JSON"),
        ] {
            let error = decode(value).unwrap_err();
            assert!(error.contains(why), "{error}");
        }
    }
}
