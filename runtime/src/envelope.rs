//! The JSON envelope: one message as one line of JSON, the format of
//! `format = "envelope"` on the `file` sink (the default for dead letters) and
//! the `file` source.
//!
//! # Format
//!
//! ```json
//! {"topic":"orders","key":"k1","payload":"hello","headers":[["sluice-attempts","3"],["trace",{"base64":"/w=="}]]}
//! ```
//!
//! * `topic`: string; absent when the record names no topic.
//! * `key` / `key_base64`: the key as a string when its bytes are valid UTF-8,
//!   otherwise as standard base64 (with padding) under `key_base64`. Both
//!   absent (or `null`) = no key.
//! * `payload` / `payload_base64`: likewise; exactly one of the two is required.
//! * `headers`: a JSON **array of `[key, value]` pairs**, in the message's
//!   order, with repeated keys kept (a JSON object could do neither reliably).
//!   A value is a string when its bytes are valid UTF-8, otherwise
//!   `{"base64": "..."}`. Always written, `[]` when empty.
//!
//! The encoder writes the fields in the order above, on one line: serde_json
//! escapes every control character, so a `\n` in a payload becomes `\\n` and
//! the line never contains a raw newline. `decode(encode(r))` gives back the
//! topic, key, payload and headers byte for byte.
//!
//! The decoder is lenient where it costs nothing: `headers` may also be a JSON
//! object `{"k": "v", ...}` (read in the order written, repeated keys kept)
//! and may be absent; unknown fields are ignored.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::message::{Header, Record};

/// A decoded envelope line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The envelope's `topic`, if it has one.
    pub topic: Option<String>,
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub headers: Vec<Header>,
}

/// Encodes a record as one envelope line (no trailing newline, no newline inside).
pub fn encode(record: &Record) -> String {
    encode_parts(
        record.topic.as_deref(),
        record.key.as_deref(),
        &record.payload,
        &record.headers,
    )
}

/// Encodes the parts of a message as one envelope line (no trailing newline).
pub fn encode_parts(
    topic: Option<&str>,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: &[Header],
) -> String {
    let (key, key_base64) = match key.map(text_or_base64) {
        None => (None, None),
        Some(Ok(s)) => (Some(s), None),
        Some(Err(b)) => (None, Some(b)),
    };
    let (payload, payload_base64) = match text_or_base64(payload) {
        Ok(s) => (Some(s), None),
        Err(b) => (None, Some(b)),
    };
    let out = EnvelopeOut {
        topic,
        key,
        key_base64,
        payload,
        payload_base64,
        headers: headers
            .iter()
            .map(|h| {
                let value = match text_or_base64(&h.value) {
                    Ok(s) => ValueOut::Text(s),
                    Err(b) => ValueOut::Base64 { base64: b },
                };
                (h.key.as_str(), value)
            })
            .collect(),
    };
    // Serialising borrowed strings and owned base64 text into a String cannot fail.
    serde_json::to_string(&out).unwrap_or_default()
}

/// Decodes one envelope line (a trailing `\n` or `\r\n` is allowed and ignored).
pub fn decode(line: &str) -> Result<Envelope, String> {
    let raw: EnvelopeIn =
        serde_json::from_str(line).map_err(|e| format!("not a JSON envelope: {e}"))?;
    let key = pick("key", raw.key, raw.key_base64)?;
    let payload = pick("payload", raw.payload, raw.payload_base64)?
        .ok_or_else(|| "envelope has neither `payload` nor `payload_base64`".to_string())?;
    let mut headers = Vec::new();
    for (k, v) in raw.headers.map(|h| h.0).unwrap_or_default() {
        let value = match v {
            ValueIn::Text(s) => Bytes::from(s),
            ValueIn::Base64 { base64 } => Bytes::from(
                BASE64
                    .decode(base64.as_bytes())
                    .map_err(|e| format!("header `{k}`: bad base64: {e}"))?,
            ),
        };
        headers.push(Header { key: k, value });
    }
    Ok(Envelope {
        topic: raw.topic,
        key,
        payload,
        headers,
    })
}

/// `Ok(text)` when the bytes are UTF-8, else `Err(base64)`.
fn text_or_base64(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| BASE64.encode(bytes))
}

fn pick(name: &str, text: Option<String>, base64: Option<String>) -> Result<Option<Bytes>, String> {
    match (text, base64) {
        (Some(_), Some(_)) => Err(format!(
            "envelope has both `{name}` and `{name}_base64`; give one"
        )),
        (Some(t), None) => Ok(Some(Bytes::from(t))),
        (None, Some(b)) => BASE64
            .decode(b.as_bytes())
            .map(|v| Some(Bytes::from(v)))
            .map_err(|e| format!("`{name}_base64` is not valid base64: {e}")),
        (None, None) => Ok(None),
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    headers: Vec<(&'a str, ValueOut<'a>)>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ValueOut<'a> {
    Text(&'a str),
    Base64 { base64: String },
}

#[derive(Deserialize)]
struct EnvelopeIn {
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_base64: Option<String>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    headers: Option<HeadersIn>,
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "a string or {\"base64\": \"...\"}")]
enum ValueIn {
    Text(String),
    Base64 { base64: String },
}

/// Headers as an array of `[k, v]` pairs or as an object; order and repeats kept.
struct HeadersIn(Vec<(String, ValueIn)>);

impl<'de> Deserialize<'de> for HeadersIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeadersIn;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of [key, value] pairs or an object")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HeadersIn, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = seq.next_element::<(String, ValueIn)>()? {
                    out.push(pair);
                }
                Ok(HeadersIn(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeadersIn, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = map.next_entry::<String, ValueIn>()? {
                    out.push(pair);
                }
                Ok(HeadersIn(out))
            }
            fn visit_unit<E: de::Error>(self) -> Result<HeadersIn, E> {
                Ok(HeadersIn(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), so the tests need no extra crate.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        /// Bytes of every flavour: arbitrary, ASCII with JSON-special characters, or
        /// multi-byte UTF-8.
        fn bytes(&mut self) -> Vec<u8> {
            let len = self.below(40) as usize;
            match self.below(3) {
                0 => (0..len).map(|_| self.next() as u8).collect(),
                1 => {
                    const A: &[u8] = b"ab \"\\\n\r\t\x00\x1f\x7f{}[],:/";
                    (0..len)
                        .map(|_| A[self.below(A.len() as u64) as usize])
                        .collect()
                }
                _ => {
                    const S: &[&str] = &["é", "日本", "🦀", "\u{2028}", "x", "\u{feff}", "\\u0000"];
                    let mut s = String::new();
                    for _ in 0..len {
                        s.push_str(S[self.below(S.len() as u64) as usize]);
                    }
                    s.into_bytes()
                }
            }
        }
        fn string(&mut self) -> String {
            String::from_utf8_lossy(&self.bytes()).into_owned()
        }
    }

    fn record(g: &mut Gen) -> Record {
        let keys = ["a", "b", "sluice-error-class"];
        Record {
            topic: if g.below(3) == 0 {
                None
            } else {
                Some(g.string())
            },
            key: if g.below(3) == 0 {
                None
            } else {
                Some(Bytes::from(g.bytes()))
            },
            payload: Bytes::from(g.bytes()),
            headers: (0..g.below(5))
                .map(|_| {
                    let k = if g.below(2) == 0 {
                        keys[g.below(3) as usize].to_string()
                    } else {
                        g.string()
                    };
                    Header::new(k, g.bytes())
                })
                .collect(),
            id: String::new(),
        }
    }

    #[test]
    fn round_trip_over_arbitrary_bytes() {
        let mut g = Gen(0x9E37_79B9_7F4A_7C15);
        for _ in 0..5000 {
            let r = record(&mut g);
            let line = encode(&r);
            assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
            let e = decode(&line).unwrap();
            assert_eq!(e.topic, r.topic);
            assert_eq!(e.key, r.key);
            assert_eq!(e.payload, r.payload);
            assert_eq!(e.headers, r.headers);
        }
    }

    #[test]
    fn text_is_text_and_bytes_are_base64() {
        let r = Record {
            topic: Some("t".into()),
            key: Some(Bytes::from_static(b"\xff")),
            payload: Bytes::from_static(b"hi\n"),
            headers: vec![
                Header::new("k", "v"),
                Header::new("k", &b"\xfe"[..]),
                Header::new("a", ""),
            ],
            id: "x".into(),
        };
        assert_eq!(
            encode(&r),
            r#"{"topic":"t","key_base64":"/w==","payload":"hi\n","headers":[["k","v"],["k",{"base64":"/g=="}],["a",""]]}"#
        );
    }

    #[test]
    fn decode_accepts_object_headers_in_order_with_repeats() {
        let e =
            decode(r#"{"payload":"p","headers":{"z":"1","a":"2","z":{"base64":"AA=="}}}"#).unwrap();
        assert_eq!(
            e.headers,
            vec![
                Header::new("z", "1"),
                Header::new("a", "2"),
                Header::new("z", &b"\0"[..])
            ]
        );
        assert_eq!(e.topic, None);
        assert_eq!(e.key, None);
        let e = decode("{\"payload_base64\":\"AP8=\",\"extra\":1}\r\n").unwrap();
        assert_eq!(e.payload, Bytes::from_static(b"\x00\xff"));
        assert!(e.headers.is_empty());
    }

    #[test]
    fn decode_rejects_bad_envelopes() {
        for bad in [
            "",
            "not json",
            "[1,2]",
            r#"{"key":"k"}"#,
            r#"{"payload":"a","payload_base64":"YQ=="}"#,
            r#"{"payload_base64":"***"}"#,
            r#"{"payload":"a","headers":[["k"]]}"#,
            r#"{"payload":"a","headers":[["k",{"base64":"!"}]]}"#,
            r#"{"payload":"a","headers":[["k",5]]}"#,
            r#"{"payload":"a"} trailing"#,
        ] {
            assert!(decode(bad).is_err(), "{bad:?} should not decode");
        }
    }
}
