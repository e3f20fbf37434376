//! Ergonomic helpers on the WIT records: builders for outputs, headers and errors.
use crate::{HandlerError, Header, Output};
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
