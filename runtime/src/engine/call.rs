//! Running messages on an instance: `handle` for one message, and
//! `handle-batch` for several, each message of a batch under budgets of its
//! own (re-armed by `columns.answer`). The messages are lowered from the
//! host's own buffers; the answers are checked against the output limits
//! before they become the pipeline's outputs.

use std::time::Instant;

use bytes::Bytes;

use super::bindings::{WitBatch, WitHandlerError, WitHeader, WitMessage, WitOutput};
use super::classify::classify;
use super::host::{BatchCall, arm};
use super::instance::{Bindings, Instance};
use super::limits::{
    CallStats, HEADER_OVERHEAD, Handled, OUTPUT_OVERHEAD, OutputLimits, guest_text,
};
use super::watchdog::watched;
use crate::failure::{Failure, FailureClass};
use crate::message::{Header, Message, Output};

impl Instance {
    /// Runs `handle` on one message under all three budgets.
    pub async fn handle(&mut self, msg: &Message) -> Handled {
        let spec = &self.plugin.inner.spec;
        let headers = wit_headers(msg);
        let wit = wit_message(msg, &headers);
        let start = Instant::now();
        arm(&mut self.store, &self.plugin.inner.budget(), start);
        // Poisoned until the call returns: a caller that drops this future
        // leaves an instance stopped in the middle of a call.
        self.poisoned = true;
        let result = watched(
            self.bindings.call_handle(&mut self.store, wit),
            &self.deadline,
        )
        .await;
        self.poisoned = result.is_err();
        let stats = CallStats {
            fuel_used: spec.fuel.saturating_sub(self.store.get_fuel().unwrap_or(0)),
            elapsed: start.elapsed(),
            log_dropped: self.store.data().log_dropped,
        };
        let result = match result {
            Ok(outcome) => outcome_of(outcome, &spec.output_limits()),
            Err(e) => Err(classify(e, &self.store, spec, "handle")),
        };
        (result, stats)
    }

    /// Runs `handle-batch` on `msgs` (see [`super::Worker::handle_batch`]
    /// for what comes back). Empty for an instance of the plain world.
    pub(super) async fn handle_batch(&mut self, msgs: &[&Message]) -> Vec<Handled> {
        let Bindings::Batch(bindings) = &self.bindings else {
            return Vec::new();
        };
        let inner = &self.plugin.inner;
        let spec = &inner.spec;
        let columns = &mut self.columns;
        if columns.fill(msgs).is_none() {
            columns.trim();
            return Vec::new();
        }
        let batch = WitBatch {
            bytes: &columns.bytes,
            ends: &columns.ends,
            shapes: &columns.shapes,
            timestamps: &columns.timestamps,
            attempts: &columns.attempts,
        };
        let budget = inner.budget();
        let started = Instant::now();
        arm(&mut self.store, &budget, started);
        self.store.data_mut().batch = Some(BatchCall {
            expected: msgs.len(),
            budget,
            limits: spec.output_limits(),
            started,
            done: Vec::with_capacity(msgs.len()),
        });
        // Poisoned until the call returns: a caller that drops this future
        // leaves an instance stopped in the middle of a call.
        self.poisoned = true;
        let result = watched(
            bindings.call_handle_batch(&mut self.store, batch),
            &self.deadline,
        )
        .await;
        self.poisoned = result.is_err();
        columns.trim();
        let Some(call) = self.store.data_mut().batch.take() else {
            return Vec::new();
        };
        let mut out = call.done;
        if let Err(e) = result {
            let failure: Failure = classify(e, &self.store, spec, "handle");
            let stats = CallStats {
                fuel_used: spec.fuel.saturating_sub(self.store.get_fuel().unwrap_or(0)),
                elapsed: call.started.elapsed(),
                log_dropped: self.store.data().log_dropped,
            };
            // Before the first answer, the failure may belong to the batch
            // call itself (lowering the batch, the guest's allocator, its
            // set-up) rather than to the first message: not pinned, the
            // messages run again one per call.
            if !out.is_empty() && out.len() < msgs.len() {
                out.push((Err(failure), stats));
            } else if out.is_empty() {
                tracing::debug!(pipeline = %spec.pipeline, "a batch failed before its first answer ({failure}); its messages run one per call");
            }
        } else if out.len() < msgs.len() && !self.warned_short_batch {
            // Once per instance: the guest decides how often this happens.
            self.warned_short_batch = true;
            tracing::warn!(
                pipeline = %inner.spec.pipeline,
                "`handle-batch` answered {} of {} messages; the rest are handled one per call \
                 (said once per instance)",
                out.len(),
                msgs.len()
            );
        }
        out
    }
}

/// A message's headers as the guest sees them, borrowed from the message:
/// lowered into the guest with no host copy.
pub(super) fn wit_headers(msg: &Message) -> Vec<WitHeader<'_>> {
    msg.headers
        .iter()
        .map(|h| WitHeader {
            key: &h.key,
            value: &h.value,
        })
        .collect()
}

/// A message as the guest sees it, borrowed from the message.
pub(super) fn wit_message<'a>(msg: &'a Message, headers: &'a [WitHeader<'a>]) -> WitMessage<'a> {
    WitMessage {
        topic: &msg.topic,
        key: msg.key.as_deref(),
        payload: &msg.payload,
        headers,
        timestamp_ms: msg.timestamp_ms,
        attempt: msg.attempt,
    }
}

/// What the handler answered for one message, as the pipeline takes it.
pub(super) fn outcome_of(
    outcome: Result<Vec<WitOutput>, WitHandlerError>,
    limits: &OutputLimits,
) -> Result<Vec<Output>, Failure> {
    match outcome {
        Ok(outputs) => check_outputs(outputs, limits),
        Err(WitHandlerError::Retriable(m)) => {
            Err(Failure::new(FailureClass::Retriable, guest_text(&m)))
        }
        Err(WitHandlerError::Fatal(m)) => Err(Failure::new(FailureClass::Fatal, guest_text(&m))),
    }
}

/// What one output costs against `max_output_bytes`: its bytes plus a fixed
/// overhead per output and per header, so that empty ones are not free.
fn charged_size(o: &WitOutput) -> u64 {
    let bytes = o.payload.len()
        + o.key.as_ref().map_or(0, Vec::len)
        + o.topic.as_ref().map_or(0, String::len)
        + o.sink.as_ref().map_or(0, String::len)
        + o.headers
            .iter()
            .map(|h| h.key.len() + h.value.len())
            .sum::<usize>();
    bytes as u64 + OUTPUT_OVERHEAD + o.headers.len() as u64 * HEADER_OVERHEAD
}

/// Checks a message's outputs against `max_outputs` and `max_output_bytes`
/// (before they are turned into the pipeline's type).
fn check_outputs(outputs: Vec<WitOutput>, spec: &OutputLimits) -> Result<Vec<Output>, Failure> {
    if outputs.len() > spec.max_outputs as usize {
        return Err(Failure::new(
            FailureClass::Trap,
            format!(
                "bad output: {} outputs, more than max_outputs = {}",
                outputs.len(),
                spec.max_outputs
            ),
        ));
    }
    let total: u64 = outputs.iter().map(charged_size).sum();
    let max = spec.max_output_bytes;
    if total > max {
        return Err(Failure::new(
            FailureClass::Trap,
            format!(
                "bad output: {} output(s) of {total} bytes in all (with {OUTPUT_OVERHEAD} bytes \
                 counted per output and {HEADER_OVERHEAD} per header), more than max_output_bytes = {max}",
                outputs.len()
            ),
        ));
    }
    let outputs: Vec<Output> = outputs
        .into_iter()
        .map(|o| Output {
            sink: o.sink,
            topic: o.topic,
            key: o.key.map(Bytes::from),
            payload: Bytes::from(o.payload),
            headers: o
                .headers
                .into_iter()
                .map(|h| Header::new(h.key, h.value))
                .collect(),
        })
        .collect();
    Ok(outputs)
}
