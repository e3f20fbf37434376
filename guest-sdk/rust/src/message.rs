//! A message as the handler sees it: a view into the buffers the host handed over (the
//! batch's columns, or the one message of a single call). Reading a message copies and
//! allocates nothing.
use std::fmt;

use crate::{HandlerError, Header};

/// A message as the source delivered it, borrowed from the host's buffers for the time
/// of one `handle` call. Copy what you keep (`.to_vec()`, `.to_owned()`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// Topic / subject the message came from (the file path for the `file` source).
    pub topic: &'a str,
    /// Message key, where the broker has one (Kafka key).
    pub key: Option<&'a [u8]>,
    /// The payload, byte for byte.
    pub payload: &'a [u8],
    /// Headers, in the order the broker gave them.
    pub headers: Headers<'a>,
    /// Broker timestamp in milliseconds since the Unix epoch, where the broker has one.
    pub timestamp_ms: Option<u64>,
    /// 1 on first delivery, 2 on the first retry, ...
    pub attempt: u32,
}

impl<'a> Message<'a> {
    /// A first-delivery message with this payload and nothing else: for handler unit tests.
    pub fn new<P: AsRef<[u8]> + ?Sized>(payload: &'a P) -> Self {
        Message {
            topic: "",
            key: None,
            payload: payload.as_ref(),
            headers: Headers::EMPTY,
            timestamp_ms: None,
            attempt: 1,
        }
    }
    /// A view of the record a single `handle` call gets.
    #[doc(hidden)]
    pub fn of_record(m: &'a crate::bindings::sluice::handler::types::Message) -> Self {
        Message {
            topic: &m.topic,
            key: m.key.as_deref(),
            payload: &m.payload,
            headers: Headers::from_list(&m.headers),
            timestamp_ms: m.timestamp_ms,
            attempt: m.attempt,
        }
    }
    /// The payload as UTF-8, or a `Fatal` error saying where it is not (retrying cannot help).
    pub fn payload_str(&self) -> Result<&'a str, HandlerError> {
        std::str::from_utf8(self.payload)
            .map_err(|e| HandlerError::fatal(format_args!("payload is not valid UTF-8: {e}")))
    }
    /// The key as UTF-8, if there is a key and it is UTF-8.
    pub fn key_str(&self) -> Option<&'a str> {
        self.key.and_then(|k| std::str::from_utf8(k).ok())
    }
    /// The value of the first header named exactly `key`.
    pub fn header(&self, key: &str) -> Option<&'a [u8]> {
        self.headers.iter().find(|h| h.key == key).map(|h| h.value)
    }
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("payload", &String::from_utf8_lossy(self.payload))
            .field("headers", &self.headers)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("attempt", &self.attempt)
            .finish()
    }
}

/// One header of a [`Message`], borrowed like it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader<'a> {
    pub key: &'a str,
    pub value: &'a [u8],
}

/// A message's headers: `.iter()`, `.len()`, `.get(i)`.
#[derive(Clone, Copy)]
pub struct Headers<'a>(HeadersRepr<'a>);

#[derive(Clone, Copy)]
enum HeadersRepr<'a> {
    /// From a batch: the headers' keys and values lie back to back in `bytes`, the first
    /// starting at `start`; `ends` holds two ends per header (key, value).
    Columns {
        bytes: &'a [u8],
        ends: &'a [u32],
        start: u32,
    },
    /// From a single call, or built for a test.
    List(&'a [Header]),
}

impl<'a> Headers<'a> {
    /// No headers.
    pub const EMPTY: Headers<'static> = Headers(HeadersRepr::List(&[]));

    /// Headers built for a test (or from the single-call record).
    pub fn from_list(list: &'a [Header]) -> Self {
        Headers(HeadersRepr::List(list))
    }

    /// Headers that are columns of a batch (checked by the caller: every end within
    /// `bytes`, never decreasing from `start`, keys UTF-8).
    pub(crate) fn columns(bytes: &'a [u8], ends: &'a [u32], start: u32) -> Self {
        Headers(HeadersRepr::Columns { bytes, ends, start })
    }

    pub fn len(&self) -> usize {
        match self.0 {
            HeadersRepr::Columns { ends, .. } => ends.len() / 2,
            HeadersRepr::List(l) => l.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Header `i`, in the order the broker gave them.
    pub fn get(&self, i: usize) -> Option<MessageHeader<'a>> {
        match self.0 {
            HeadersRepr::Columns { bytes, ends, start } => {
                let key_start = if i == 0 { start } else { *ends.get(2 * i - 1)? };
                let key_end = *ends.get(2 * i)?;
                let value_end = *ends.get(2 * i + 1)?;
                let key = bytes.get(key_start as usize..key_end as usize)?;
                let value = bytes.get(key_end as usize..value_end as usize)?;
                Some(MessageHeader {
                    key: std::str::from_utf8(key).ok()?,
                    value,
                })
            }
            HeadersRepr::List(l) => l.get(i).map(|h| MessageHeader {
                key: &h.key,
                value: &h.value,
            }),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = MessageHeader<'a>> + 'a {
        let this = *self;
        (0..this.len()).filter_map(move |i| this.get(i))
    }
}

impl PartialEq for Headers<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers<'_> {}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}
