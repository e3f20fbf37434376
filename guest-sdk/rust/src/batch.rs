//! The `batch-handler` world's `handle-batch`: the batch's columns read as one [`Message`]
//! view after another, and each answer written into columns that are reused from message to
//! message and from batch to batch (`guest-sdk/wit/handler.wit` says why the contract is
//! shaped this way).
use std::cell::RefCell;

use crate::bindings::sluice::handler::columns::{self, Batch, Status};
use crate::message::Headers;
use crate::{HandlerError, Message, Output};

/// One answer as columns, as `columns.answer` takes it. Cleared before each message, so its
/// buffers grow to the largest answer once and are reused after that.
#[derive(Default)]
struct Answer {
    bytes: Vec<u8>,
    layout: Vec<u32>,
}

thread_local! {
    /// The answer columns, kept between calls (a wasm instance has one thread).
    static ANSWER: RefCell<Answer> = RefCell::default();
}

/// The host handed over columns that contradict each other: nothing can be read safely.
/// A trap (the host then runs the batch's messages one per call).
#[cold]
fn malformed(what: &str) -> ! {
    panic!("the batch from the host is malformed: {what}")
}

/// Reads the batch's messages in turn.
struct Reader<'a> {
    batch: &'a Batch,
    /// Index of the next field's end in `ends`.
    field: usize,
    /// Where the next field starts in `bytes`.
    start: u32,
}

impl<'a> Reader<'a> {
    /// The next field's bytes.
    fn next_field(&mut self) -> &'a [u8] {
        let batch: &'a Batch = self.batch;
        let Some(&end) = batch.ends.get(self.field) else {
            malformed("fewer ends than fields")
        };
        let Some(bytes) = batch.bytes.get(self.start as usize..end as usize) else {
            malformed("an end out of order or past the bytes")
        };
        self.field += 1;
        self.start = end;
        bytes
    }

    /// Message `i` (`shape` is its entry of `shapes`).
    fn message(&mut self, i: usize, shape: u32) -> Message<'a> {
        let batch: &'a Batch = self.batch;
        let topic = std::str::from_utf8(self.next_field()).unwrap_or_default();
        let key = self.next_field();
        let payload = self.next_field();
        let count = (shape >> 2) as usize;
        let header_start = self.start;
        let first = self.field;
        for _ in 0..count {
            if std::str::from_utf8(self.next_field()).is_err() {
                malformed("a header key that is not UTF-8");
            }
            self.next_field();
        }
        Message {
            topic,
            key: (shape & 1 != 0).then_some(key),
            payload,
            headers: Headers::columns(&batch.bytes, &batch.ends[first..self.field], header_start),
            timestamp_ms: match batch.timestamps.get(i) {
                Some(&t) if shape & 2 != 0 => Some(t),
                _ => None,
            },
            attempt: batch.attempts.get(i).copied().unwrap_or(1),
        }
    }
}

/// What the generated `handle-batch` export runs: each message in order, its answer handed
/// to the host before the next one starts (the host re-arms the budgets there).
#[doc(hidden)]
pub fn __run_batch(
    batch: Batch,
    mut handle: impl FnMut(Message<'_>) -> Result<Vec<Output>, HandlerError>,
) {
    let mut answer = ANSWER.with(|a| std::mem::take(&mut *a.borrow_mut()));
    let mut reader = Reader {
        batch: &batch,
        field: 0,
        start: 0,
    };
    for (i, &shape) in batch.shapes.iter().enumerate() {
        let msg = reader.message(i, shape);
        let position = i as u32;
        match handle(msg) {
            // The common answer, one output of a payload alone, is handed over from the
            // output itself.
            Ok(outputs) => match outputs.as_slice() {
                [o] if o.sink.is_none()
                    && o.topic.is_none()
                    && o.key.is_none()
                    && o.headers.is_empty() =>
                {
                    let layout = [0, 0, 0, 0, o.payload.len() as u32];
                    columns::answer(position, Status::Ok, &o.payload, &layout);
                }
                _ => {
                    answer.write(&outputs);
                    drop(outputs);
                    columns::answer(position, Status::Ok, &answer.bytes, &answer.layout);
                }
            },
            Err(e) => {
                let status = match e {
                    HandlerError::Retriable(_) => Status::Retriable,
                    HandlerError::Fatal(_) => Status::Fatal,
                };
                columns::answer(position, status, e.reason().as_bytes(), &[]);
            }
        }
    }
    ANSWER.with(|a| *a.borrow_mut() = answer);
}

impl Answer {
    /// Lays `outputs` out as columns, replacing the last answer.
    fn write(&mut self, outputs: &[Output]) {
        self.bytes.clear();
        self.layout.clear();
        for o in outputs {
            let at = self.layout.len();
            let mut shape = (o.headers.len() as u32) << 3;
            self.layout.push(0);
            if let Some(sink) = &o.sink {
                self.bytes.extend_from_slice(sink.as_bytes());
                shape |= 1;
            }
            self.end();
            if let Some(topic) = &o.topic {
                self.bytes.extend_from_slice(topic.as_bytes());
                shape |= 2;
            }
            self.end();
            if let Some(key) = &o.key {
                self.bytes.extend_from_slice(key);
                shape |= 4;
            }
            self.end();
            self.bytes.extend_from_slice(&o.payload);
            self.end();
            for h in &o.headers {
                self.bytes.extend_from_slice(h.key.as_bytes());
                self.end();
                self.bytes.extend_from_slice(&h.value);
                self.end();
            }
            self.layout[at] = shape;
        }
    }

    /// Ends the field written last.
    fn end(&mut self) {
        self.layout.push(self.bytes.len() as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageHeader;

    #[test]
    fn a_batch_is_read_as_views_into_its_columns() {
        // Message 0: topic "t", key "k", payload "p", header h=v, timestamp 7, attempt 2.
        // Message 1: topic "u", no key, payload "q", no headers.
        let batch = Batch {
            bytes: b"tkphvuq".to_vec(),
            ends: vec![1, 2, 3, 4, 5, 6, 6, 7],
            shapes: vec![1 << 2 | 2 | 1, 0],
            timestamps: vec![7, 0],
            attempts: vec![2, 1],
        };
        let mut reader = Reader {
            batch: &batch,
            field: 0,
            start: 0,
        };
        let m = reader.message(0, batch.shapes[0]);
        assert_eq!(
            (m.topic, m.key, m.payload),
            ("t", Some(&b"k"[..]), &b"p"[..])
        );
        assert_eq!((m.timestamp_ms, m.attempt), (Some(7), 2));
        let headers: Vec<MessageHeader<'_>> = m.headers.iter().collect();
        assert_eq!(
            headers,
            [MessageHeader {
                key: "h",
                value: b"v"
            }]
        );
        assert_eq!(m.header("h"), Some(&b"v"[..]));
        let m = reader.message(1, batch.shapes[1]);
        assert_eq!((m.topic, m.key, m.payload), ("u", None, &b"q"[..]));
        assert_eq!((m.timestamp_ms, m.headers.len()), (None, 0));
    }

    #[test]
    fn outputs_are_written_as_columns() {
        let mut answer = Answer::default();
        let outputs = [
            Output::new("p")
                .to_sink("s")
                .with_key("k")
                .with_header("h", "v"),
            Output::new("").with_topic("t"),
        ];
        answer.write(&outputs);
        assert_eq!(answer.bytes, b"skphvt");
        assert_eq!(
            answer.layout,
            [1 << 3 | 4 | 1, 1, 1, 2, 3, 4, 5, 2, 5, 6, 6, 6]
        );
        // Reused: the next answer replaces this one.
        answer.write(&[Output::new("x")]);
        assert_eq!(
            (&answer.bytes[..], &answer.layout[..]),
            (&b"x"[..], &[0, 0, 0, 0, 1][..])
        );
    }
}
