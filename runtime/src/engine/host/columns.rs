//! `columns.answer`, the import through which a batch handler reports each
//! message's result: it takes the answer of the next message only, reads
//! it in place in the guest's memory, checks it against the output limits
//! before a byte of it is copied, and re-arms the budgets for the next
//! message. So a guest can neither shift answers onto other messages nor
//! make the host hold more than one answer's worth of outputs per message.

use std::time::Instant;

use bytes::Bytes;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, WasmList};

use super::HostState;
use crate::engine::bindings::WitStatus;
use crate::engine::limits::{
    CallStats, GUEST_TEXT_MAX, HEADER_OVERHEAD, OUTPUT_OVERHEAD, OutputLimits, guest_text,
};
use crate::failure::{Failure, FailureClass};
use crate::message::{Header, Output};

/// The import's instance name, as the guest's component imports it.
const COLUMNS_INTERFACE: &str = "sluice:handler/columns@0.1.0";

/// A guest broke the batch protocol: an answer for another message than the
/// next one, more answers than messages, or columns that contradict
/// themselves. The call traps.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtocolViolation {
    #[error("`columns.answer` was called outside `handle-batch`")]
    Outside,
    #[error("`columns.answer` answered message {got} where message {expected} was next")]
    Position { got: u32, expected: usize },
    #[error("`columns.answer` was called more often than the batch has messages ({0})")]
    TooMany(usize),
    #[error("`columns.answer` for message {position}: {what}")]
    Malformed { position: u32, what: &'static str },
}

/// Links `columns.answer`. Harmless for components of the plain `handler`
/// world, which do not import it.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.instance(COLUMNS_INTERFACE)?.func_wrap(
        "answer",
        |mut store: StoreContextMut<'_, HostState>,
         (position, status, bytes, layout): (u32, WitStatus, WasmList<u8>, WasmList<u32>)| {
            let left = store.get_fuel().unwrap_or(0);
            let now = Instant::now();
            let limits = {
                let Some(call) = store.data().batch.as_ref() else {
                    return Err(wasmtime::Error::new(ProtocolViolation::Outside));
                };
                if call.done.len() >= call.expected {
                    return Err(wasmtime::Error::new(ProtocolViolation::TooMany(
                        call.expected,
                    )));
                }
                if position as usize != call.done.len() {
                    return Err(wasmtime::Error::new(ProtocolViolation::Position {
                        got: position,
                        expected: call.done.len(),
                    }));
                }
                call.limits
            };
            // Read in place, checked, and only then copied: what the host
            // keeps per message is bounded by max_outputs and
            // max_output_bytes, whatever the guest's lists claim.
            let answer = read_answer(
                status,
                bytes.as_le_slice(&store),
                layout.as_le_slice(&store),
                &limits,
            )
            .map_err(|what| {
                wasmtime::Error::new(ProtocolViolation::Malformed { position, what })
            })?;
            let data = store.data_mut();
            let log_dropped = data.log_dropped;
            let Some(call) = data.batch.as_mut() else {
                return Err(wasmtime::Error::new(ProtocolViolation::Outside));
            };
            call.done.push((
                answer,
                CallStats {
                    fuel_used: call.budget.fuel.saturating_sub(left),
                    elapsed: now.duration_since(call.started),
                    log_dropped,
                },
            ));
            call.started = now;
            let budget = call.budget;
            super::arm(store, &budget, now);
            Ok(())
        },
    )
}

/// One message's answer from its columns (`handler.wit`, `columns.answer`,
/// describes them). `Err` names how the columns contradict themselves.
fn read_answer(
    status: WitStatus,
    bytes: &[u8],
    layout: &[u32],
    limits: &OutputLimits,
) -> Result<Result<Vec<Output>, Failure>, &'static str> {
    let class = match status {
        WitStatus::Ok => return read_outputs(bytes, layout, limits),
        WitStatus::Retriable => FailureClass::Retriable,
        WitStatus::Fatal => FailureClass::Fatal,
    };
    if !layout.is_empty() {
        return Err("an error with outputs");
    }
    // Only the start of a long reason is read: it is cut to GUEST_TEXT_MAX.
    let head = &bytes[..bytes.len().min(4 * GUEST_TEXT_MAX)];
    Ok(Err(Failure::new(
        class,
        guest_text(&String::from_utf8_lossy(head)),
    )))
}

/// What an answer's layout says, checked: every end in order and within
/// `bytes`, each output's shape followed by its ends.
struct Shape {
    outputs: usize,
    headers: u64,
    /// Where the last field ends.
    end: u32,
}

impl Shape {
    /// What the outputs read so far cost against `max_output_bytes`.
    fn charged(&self) -> u64 {
        u64::from(self.end) + OUTPUT_OVERHEAD * self.outputs as u64 + HEADER_OVERHEAD * self.headers
    }
}

/// Walks `layout` without copying anything. Stops early, with what it read,
/// once that is past a limit (more outputs than `max_outputs`, more than
/// `max_output_bytes` charged): what the host reads of an answer is bounded
/// by the limits, not by the guest's memory.
fn shape_of(layout: &[u32], bytes: usize, limits: &OutputLimits) -> Result<Shape, &'static str> {
    let mut shape = Shape {
        outputs: 0,
        headers: 0,
        end: 0,
    };
    let over = |shape: &Shape| {
        shape.outputs > limits.max_outputs as usize || shape.charged() > limits.max_output_bytes
    };
    let mut at = 0;
    while at < layout.len() {
        let headers = layout[at] >> 3;
        shape.outputs += 1;
        shape.headers += u64::from(headers);
        if over(&shape) {
            return Ok(shape);
        }
        let fields = 4 + 2 * headers as usize;
        let Some(ends) = layout.get(at + 1..at + 1 + fields) else {
            return Err("an output whose ends are cut short");
        };
        for &end in ends {
            if end < shape.end {
                return Err("an end before the one preceding it");
            }
            shape.end = end;
        }
        if over(&shape) {
            return Ok(shape);
        }
        at += 1 + fields;
    }
    if shape.end as usize > bytes {
        return Err("an end past `bytes`");
    }
    Ok(shape)
}

/// The outputs of an `ok` answer, checked against the limits first.
fn read_outputs(
    bytes: &[u8],
    layout: &[u32],
    limits: &OutputLimits,
) -> Result<Result<Vec<Output>, Failure>, &'static str> {
    // The common answer, one output of a payload alone: no walk.
    if let [0, 0, 0, 0, n] = *layout
        && n as usize == bytes.len()
        && limits.max_outputs >= 1
        && bytes.len() as u64 + OUTPUT_OVERHEAD <= limits.max_output_bytes
    {
        return Ok(Ok(vec![Output::new(Bytes::copy_from_slice(bytes))]));
    }
    let shape = shape_of(layout, bytes.len(), limits)?;
    if shape.outputs > limits.max_outputs as usize {
        return Ok(Err(Failure::new(
            FailureClass::Trap,
            format!(
                "bad output: more than max_outputs = {} outputs",
                limits.max_outputs
            ),
        )));
    }
    let total = shape.charged();
    let max = limits.max_output_bytes;
    if total > max {
        return Ok(Err(Failure::new(
            FailureClass::Trap,
            format!(
                "bad output: {} output(s) of {total} bytes in all (with {OUTPUT_OVERHEAD} bytes \
                 counted per output and {HEADER_OVERHEAD} per header), more than max_output_bytes = {max}",
                shape.outputs
            ),
        )));
    }
    let mut fields = Fields {
        bytes,
        layout,
        next: 0,
        start: 0,
    };
    let mut outputs = Vec::with_capacity(shape.outputs);
    while fields.next < layout.len() {
        let shape = layout[fields.next];
        fields.next += 1;
        let sink = fields.text(shape & 1 != 0)?;
        let topic = fields.text(shape & 2 != 0)?;
        let key = fields.optional(shape & 4 != 0)?.map(Bytes::copy_from_slice);
        let payload = Bytes::copy_from_slice(fields.next());
        let count = (shape >> 3) as usize;
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let key = fields.text(true)?.unwrap_or_default();
            headers.push(Header::new(key, Bytes::copy_from_slice(fields.next())));
        }
        outputs.push(Output {
            sink,
            topic,
            key,
            payload,
            headers,
        });
    }
    Ok(Ok(outputs))
}

/// The fields of an answer in order (its layout already checked by
/// [`shape_of`]).
struct Fields<'a> {
    bytes: &'a [u8],
    layout: &'a [u32],
    /// The next entry of `layout`.
    next: usize,
    start: usize,
}

impl<'a> Fields<'a> {
    fn next(&mut self) -> &'a [u8] {
        let end = self
            .layout
            .get(self.next)
            .map_or(self.start, |&e| e as usize);
        let field = self.bytes.get(self.start..end).unwrap_or_default();
        self.next += 1;
        self.start = end;
        field
    }

    /// The next field, when `present`; an absent field must be empty.
    fn optional(&mut self, present: bool) -> Result<Option<&'a [u8]>, &'static str> {
        let field = self.next();
        match (present, field.is_empty()) {
            (true, _) => Ok(Some(field)),
            (false, true) => Ok(None),
            (false, false) => Err("bytes for an absent field"),
        }
    }

    /// The next field as text, when `present`.
    fn text(&mut self, present: bool) -> Result<Option<String>, &'static str> {
        match self.optional(present)? {
            Some(f) => std::str::from_utf8(f)
                .map(|s| Some(s.to_string()))
                .map_err(|_| "a sink, topic or header key that is not UTF-8"),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: OutputLimits = OutputLimits {
        max_outputs: 4,
        max_output_bytes: 1000,
    };

    fn ok(bytes: &[u8], layout: &[u32]) -> Result<Vec<Output>, Failure> {
        read_answer(WitStatus::Ok, bytes, layout, &LIMITS).expect("well formed")
    }

    #[test]
    fn outputs_are_read_from_their_columns() {
        // Output 0: sink "s", no topic, key "k", payload "p", header h=v.
        // Output 1: no sink, topic "t", no key, empty payload.
        let bytes = b"skphvt";
        let layout = [1 << 3 | 4 | 1, 1, 1, 2, 3, 4, 5, 2, 5, 6, 6, 6];
        let out = ok(bytes, &layout).expect("answered");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].sink.as_deref(), Some("s"));
        assert_eq!(out[0].topic, None);
        assert_eq!(out[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(&out[0].payload[..], b"p");
        assert_eq!(out[0].headers, vec![Header::new("h", "v")]);
        assert_eq!(
            (out[1].sink.as_deref(), out[1].topic.as_deref()),
            (None, Some("t"))
        );
        assert_eq!(
            (out[1].key.as_deref(), &out[1].payload[..]),
            (None, &b""[..])
        );
        let one = ok(b"payload", &[0, 0, 0, 0, 7]).expect("answered");
        assert_eq!(one, vec![Output::new("payload")]);
    }

    #[test]
    fn limits_are_checked_on_the_columns() {
        let f = ok(b"", &[0; 25]).expect_err("5 outputs");
        assert!(f.message.contains("more than max_outputs = 4"), "{f}");
        // One output claiming 2,000 bytes: refused before anything is read.
        let big = vec![0u8; 2000];
        for layout in [[0, 0, 0, 0, 2000], [0, 0, 0, 1, 2000]] {
            let f = ok(&big, &layout).expect_err("too big");
            assert!(
                f.message
                    .starts_with("bad output: 1 output(s) of 2064 bytes"),
                "{f}"
            );
        }
    }

    #[test]
    fn an_answer_over_the_limits_is_refused_before_the_rest_is_read() {
        // One output claiming a million headers: refused on its shape
        // alone, though its ends (which would be cut short) are never read.
        let f = ok(b"", &[1_000_000 << 3]).expect_err("too many headers");
        assert!(f.message.contains("max_output_bytes = 1000"), "{f}");
        // Outputs past the byte budget, then a layout that contradicts
        // itself: the walk stops at the budget.
        let mut layout = vec![0, 0, 0, 0, 600, 0, 600, 600, 600, 1200];
        layout.extend([0, 5, 4, 3, 2]);
        let f = ok(&[0; 1200], &layout).expect_err("over max_output_bytes");
        assert!(f.message.starts_with("bad output: 2 output(s)"), "{f}");
    }

    #[test]
    fn contradicting_columns_are_refused() {
        let bad = |bytes: &[u8], layout: &[u32]| {
            read_answer(WitStatus::Ok, bytes, layout, &LIMITS).expect_err("malformed")
        };
        assert!(bad(b"ab", &[0, 0, 0, 0]).contains("cut short"));
        assert!(bad(b"ab", &[1 << 3, 0, 0, 0, 1, 2]).contains("cut short"));
        assert!(bad(b"ab", &[0, 0, 2, 1, 2]).contains("before"));
        assert!(bad(b"ab", &[0, 0, 0, 0, 3]).contains("past"));
        assert!(bad(b"ab", &[0, 1, 1, 1, 2]).contains("absent"));
        assert!(bad(b"\xff", &[1, 1, 1, 1, 1]).contains("UTF-8"));
        let e = read_answer(WitStatus::Fatal, b"no", &[0], &LIMITS);
        assert!(matches!(e, Err("an error with outputs")));
    }

    #[test]
    fn an_error_carries_its_reason_escaped() {
        let r = read_answer(WitStatus::Retriable, b"later\nnow", &[], &LIMITS);
        let f = r.expect("well formed").expect_err("an error");
        assert_eq!(
            (f.class, f.message.as_str()),
            (FailureClass::Retriable, "later\\nnow")
        );
    }
}
