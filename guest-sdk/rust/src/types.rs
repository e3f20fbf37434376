//! Ergonomic helpers on the WIT records: builders for outputs, accessors for messages.
use crate::{HandlerError, Header, Message, Output};
use std::fmt::Display;

impl Header {
    /// A header from a key and a value.
    pub fn new(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Header {
            key: key.into(),
            value: value.into(),
        }
    }
}

impl Output {
    /// An output to the pipeline's default sink and topic, no key, no headers.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Output {
            sink: None,
            topic: None,
            key: None,
            payload: payload.into(),
            headers: Vec::new(),
        }
    }
    /// Publishes to `topic` instead of the sink's default topic.
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }
    /// Sets the message key (Kafka key; ignored by brokers without keys).
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Appends a header (headers keep their order).
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header::new(key, value));
        self
    }
    /// Sends to the named sink of the pipeline instead of its default sink.
    pub fn to_sink(mut self, sink: impl Into<String>) -> Self {
        self.sink = Some(sink.into());
        self
    }
}

impl Message {
    /// A first-delivery message with this payload and nothing else: for handler unit tests.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Message {
            topic: String::new(),
            key: None,
            payload: payload.into(),
            headers: Vec::new(),
            timestamp_ms: None,
            attempt: 1,
        }
    }
    /// The payload as UTF-8, or a `Fatal` error saying where it is not (retrying cannot help).
    pub fn payload_str(&self) -> Result<&str, HandlerError> {
        std::str::from_utf8(&self.payload)
            .map_err(|e| HandlerError::fatal(format_args!("payload is not valid UTF-8: {e}")))
    }
    /// The key as UTF-8, if there is a key and it is UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }
    /// The value of the first header named exactly `key`.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .map(|h| h.value.as_slice())
    }
}

impl HandlerError {
    /// Permanent failure: this message will never succeed.
    pub fn fatal(reason: impl Display) -> Self {
        HandlerError::Fatal(reason.to_string())
    }
    /// Transient failure: the runtime retries the message by policy.
    pub fn retriable(reason: impl Display) -> Self {
        HandlerError::Retriable(reason.to_string())
    }
    /// The reason given, whichever the kind.
    pub fn reason(&self) -> &str {
        match self {
            HandlerError::Retriable(r) | HandlerError::Fatal(r) => r,
        }
    }
}
