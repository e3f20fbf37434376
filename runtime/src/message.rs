//! The host-side message types that travel through a pipeline.

use bytes::Bytes;

/// One header of a message (Kafka header, NATS header, MQTT 5 user property).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Bytes,
}

impl Header {
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Header {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// A message as a source delivered it. Cheap to clone: the byte fields are
/// reference counted, so a retry or a dead-letter record never copies the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic / subject the message came from (the path for the `file` source).
    pub topic: String,
    /// Kafka partition, where the source has partitions.
    pub partition: Option<i32>,
    /// Offset / sequence within the partition or stream, where the source has one.
    pub offset: Option<i64>,
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub headers: Vec<Header>,
    pub timestamp_ms: Option<u64>,
    /// 1 on first delivery; the broker's delivery count where it keeps one.
    pub attempt: u32,
}

impl Message {
    /// A message with only a topic and a payload; the rest empty.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Message {
            topic: topic.into(),
            partition: None,
            offset: None,
            key: None,
            payload: payload.into(),
            headers: Vec::new(),
            timestamp_ms: None,
            attempt: 1,
        }
    }

    /// The first header with this key, if any.
    pub fn header(&self, key: &str) -> Option<&Bytes> {
        self.headers.iter().find(|h| h.key == key).map(|h| &h.value)
    }
}

/// One message the handler asked to publish (or a dead-letter record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// A named sink of the pipeline; `None` = the default sink.
    pub sink: Option<String>,
    /// Topic / subject; `None` = the sink's default.
    pub topic: Option<String>,
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub headers: Vec<Header>,
}

impl Output {
    /// An output to the default sink and topic.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Output {
            sink: None,
            topic: None,
            key: None,
            payload: payload.into(),
            headers: Vec::new(),
        }
    }

    /// Size in bytes as counted against `max_output_bytes`.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.key.as_ref().map_or(0, |k| k.len())
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.len())
                .sum::<usize>()
            + self.topic.as_ref().map_or(0, |t| t.len())
    }
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Topic / subject; `None` = the sink's configured default.
    pub topic: Option<String>,
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub headers: Vec<Header>,
    /// A stable id for this record (same on every retry of the same message),
    /// for brokers that deduplicate (JetStream `Nats-Msg-Id`). The pipeline
    /// fills it only for sinks that want ids (`Sink::wants_ids`); empty otherwise.
    pub id: String,
}
