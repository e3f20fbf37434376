//! Dead-letter records: the original payload and key byte for byte, the
//! original headers, and the `sluice-*` metadata listed in docs/failures.md.

use std::time::SystemTime;

use crate::failure::Failure;
use crate::message::{Header, Message, Record};

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
    /// Set on a record cut down to fit its sink: the original payload length.
    pub const PAYLOAD_LENGTH: &str = "sluice-payload-length";
    /// An original header the sink could not carry as it was:
    /// `base64(name)=base64(value)`, one per header.
    pub const ENCODED_HEADER: &str = "sluice-encoded-header";
}

/// How much of the payload and key a cut-down record keeps.
const CUT: usize = 1024;

/// `record` cut down to fit a dead-letter sink that refused it for good,
/// `step` steps down (from 1), and what was cut; `None` past the last step:
/// 1. original headers that are not an HTTP token name with a printable
///    UTF-8 value (what every broker carries) go as `sluice-encoded-header`;
/// 2. and the payload and key are cut to their first 1 KiB
///    (`sluice-payload-length` gives the payload's length);
/// 3. only Sluice's metadata: no payload, key or original headers.
pub fn cut_down(record: &Record, step: usize) -> Option<(Record, &'static str)> {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let ours = |h: &Header| h.key.starts_with("sluice-");
    let mut r = record.clone();
    let how = match step {
        1 => "with its odd headers encoded",
        2 => "with its odd headers encoded and its payload and key cut to 1 KiB",
        3 => "without its payload, key and original headers",
        _ => return None,
    };
    if step == 3 {
        r.headers.retain(ours);
        r.payload = bytes::Bytes::new();
        r.key = None;
    } else {
        r.headers = record
            .headers
            .iter()
            .map(|h| {
                if ours(h) || carried_everywhere(h) {
                    h.clone()
                } else {
                    let v = format!("{}={}", b64(h.key.as_bytes()), b64(&h.value));
                    Header::new(headers::ENCODED_HEADER, v)
                }
            })
            .collect();
        if step == 2 {
            r.payload = record.payload.slice(..record.payload.len().min(CUT));
            r.key = record.key.as_ref().map(|k| k.slice(..k.len().min(CUT)));
        }
    }
    if step >= 2 {
        r.headers.push(Header::new(
            headers::PAYLOAD_LENGTH,
            record.payload.len().to_string(),
        ));
    }
    Some((r, how))
}

/// A header every broker carries as it is: an HTTP token for a name, and a
/// value of UTF-8 without control characters.
fn carried_everywhere(h: &Header) -> bool {
    let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    !h.key.is_empty()
        && h.key.bytes().all(token)
        && std::str::from_utf8(&h.value).is_ok_and(|v| !v.chars().any(char::is_control))
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
    fn cut_down_encodes_odd_headers_then_cuts_then_leaves_metadata() {
        let mut m = Message::new("logs", vec![7u8; 5000]);
        m.key = Some(vec![1u8; 2000].into());
        m.headers.push(Header::new("trace", "abc"));
        m.headers.push(Header::new("bin", vec![0xffu8, 0]));
        m.headers.push(Header::new("a name", "v"));
        m.headers.push(Header::new("tab", "a\tb"));
        let f = Failure::new(FailureClass::Fatal, "malformed");
        let r = record(&m, &f, 1, "p", "sha256:00", "id".into());
        let names = |r: &Record| r.headers.iter().map(|h| h.key.clone()).collect::<Vec<_>>();

        let (one, _) = cut_down(&r, 1).unwrap();
        assert_eq!(one.payload, r.payload);
        assert_eq!(one.headers[0], Header::new("trace", "abc"));
        let encoded: Vec<_> = one
            .headers
            .iter()
            .filter(|h| h.key == headers::ENCODED_HEADER)
            .map(|h| h.value.clone())
            .collect();
        assert_eq!(encoded, ["Ymlu=/wA=", "YSBuYW1l=dg==", "dGFi=YQli"]);
        assert_eq!(one.headers.len(), r.headers.len());

        let (two, _) = cut_down(&r, 2).unwrap();
        assert_eq!(
            (two.payload.len(), two.key.as_ref().map(|k| k.len())),
            (1024, Some(1024))
        );
        let len = two
            .headers
            .iter()
            .find(|h| h.key == headers::PAYLOAD_LENGTH);
        assert_eq!(len.map(|h| h.value.clone()), Some("5000".into()));

        let (three, _) = cut_down(&r, 3).unwrap();
        assert!(three.payload.is_empty() && three.key.is_none());
        assert!(names(&three).iter().all(|n| n.starts_with("sluice-")));
        assert!(names(&three).contains(&headers::CLASS.to_string()));
        assert!(cut_down(&r, 4).is_none());
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
