//! Dead-letter records: the original payload and key byte for byte, the
//! original headers, and the `sluice-*` metadata of DESIGN.md §4.

use std::time::SystemTime;

use crate::failure::Failure;
use crate::message::{Header, Message};
use crate::sinks::Record;

/// Metadata header names.
pub mod headers {
    pub const CLASS: &str = "sluice-error-class";
    pub const MESSAGE: &str = "sluice-error-message";
    pub const ATTEMPTS: &str = "sluice-attempts";
    pub const PIPELINE: &str = "sluice-pipeline";
    pub const DIGEST: &str = "sluice-plugin-digest";
    pub const TOPIC: &str = "sluice-source-topic";
    pub const PARTITION: &str = "sluice-source-partition";
    pub const OFFSET: &str = "sluice-source-offset";
    pub const FAILED_AT: &str = "sluice-failed-at";
}

/// The dead-letter record of `msg`, which failed with `failure` after
/// `attempts` attempts. It goes to the dead-letter sink's default topic.
pub fn record(
    msg: &Message,
    failure: &Failure,
    attempts: u32,
    pipeline: &str,
    digest: &str,
    id: String,
) -> Record {
    // The message's headers, then up to nine of ours: one allocation. An
    // incoming `sluice-*` header is kept as `original-sluice-*`, so that
    // no message can bring its own error class or pipeline to the record.
    let mut h = Vec::with_capacity(msg.headers.len() + 9);
    h.extend(msg.headers.iter().map(|x| {
        if x.key
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("sluice-"))
        {
            Header::new(format!("original-{}", x.key), x.value.clone())
        } else {
            x.clone()
        }
    }));
    let mut put = |k: &str, v: String| h.push(Header::new(k, v));
    put(headers::CLASS, failure.class.as_str().to_string());
    put(headers::MESSAGE, failure.message.clone());
    put(headers::ATTEMPTS, attempts.to_string());
    put(headers::PIPELINE, pipeline.to_string());
    put(headers::DIGEST, digest.to_string());
    put(headers::TOPIC, msg.topic.clone());
    if let Some(p) = msg.partition {
        put(headers::PARTITION, p.to_string());
    }
    if let Some(o) = msg.offset {
        put(headers::OFFSET, o.to_string());
    }
    put(
        headers::FAILED_AT,
        humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    );
    Record {
        topic: None,
        key: msg.key.clone(),
        payload: msg.payload.clone(),
        headers: h,
        id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::FailureClass;

    #[test]
    fn keeps_bytes_and_adds_metadata() {
        let mut m = Message::new("logs", vec![0xff, 0x00, b'\n', 0x80]);
        m.key = Some(vec![1, 2, 3].into());
        m.offset = Some(42);
        m.headers.push(Header::new("trace", "abc"));
        let f = Failure::new(FailureClass::Fatal, "malformed");
        let r = record(&m, &f, 3, "p", "sha256:00", "id".into());
        assert_eq!(r.payload, m.payload);
        assert_eq!(r.key, m.key);
        assert_eq!(r.headers[0], Header::new("trace", "abc"));
        let get = |k: &str| {
            r.headers
                .iter()
                .find(|h| h.key == k)
                .map(|h| h.value.clone())
        };
        assert_eq!(get(headers::CLASS).unwrap(), "fatal");
        assert_eq!(get(headers::ATTEMPTS).unwrap(), "3");
        assert_eq!(get(headers::OFFSET).unwrap(), "42");
        assert!(get(headers::PARTITION).is_none());
        assert!(get(headers::FAILED_AT).is_some());
    }

    #[test]
    fn incoming_sluice_headers_cannot_pass_for_ours() {
        let mut m = Message::new("logs", "x");
        m.headers
            .push(Header::new("sluice-error-class", "retriable"));
        m.headers.push(Header::new("Sluice-Pipeline", "other"));
        m.headers.push(Header::new("sluicé", "kept"));
        let f = Failure::new(FailureClass::Fatal, "malformed");
        let r = record(&m, &f, 1, "p", "sha256:00", "id".into());
        let values = |k: &str| -> Vec<String> {
            r.headers
                .iter()
                .filter(|h| h.key.eq_ignore_ascii_case(k))
                .map(|h| String::from_utf8_lossy(&h.value).into_owned())
                .collect()
        };
        assert_eq!(values(headers::CLASS), ["fatal"]);
        assert_eq!(values(headers::PIPELINE), ["p"]);
        assert_eq!(values("original-sluice-error-class"), ["retriable"]);
        assert_eq!(values("original-Sluice-Pipeline"), ["other"]);
    }
}
