//! Several messages per call (`handle-batch`): the `batch.done` import that
//! takes each message's result and re-arms the budgets for the next one, so
//! every message of a batch runs under its own fuel and deadline and a
//! failure is pinned on the message that caused it. Each answer names its
//! message's position and is checked against the output limits as it
//! arrives, so a guest can neither shift answers onto other messages nor
//! make the host hold more than one answer's worth of outputs per message.

use std::time::Instant;

use wasmtime::StoreContextMut;
use wasmtime::component::Linker;

use super::bindings::{WitHandlerError, WitHeader, WitMessage, WitOutput};
use super::host::HostState;
use super::limits::OutputLimits;
use super::plugin::{
    Bindings, Budget, CallStats, Handled, Instance, arm_with, classify, outcome_of, watched,
    wit_headers, wit_message,
};
use crate::failure::Failure;
use crate::message::Message;

/// The import's instance name, as the guest's component imports it.
const BATCH_INTERFACE: &str = "sluice:handler/batch@0.1.0";

/// The state of one `handle-batch` call, kept in the store while it runs.
pub(crate) struct BatchCall {
    /// Messages in the call.
    expected: usize,
    /// One message's budgets, re-armed at each `done`.
    budget: Budget,
    /// What the answers are checked against.
    limits: OutputLimits,
    /// When the current message started.
    started: Instant,
    /// The answers reported so far, in order, already checked.
    done: Vec<Handled>,
}

/// A guest broke the batch protocol: an answer for another message than the
/// next one, or more answers than messages. The call traps.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtocolViolation {
    #[error("`batch.done` was called outside `handle-batch`")]
    Outside,
    #[error("`batch.done` answered message {got} where message {expected} was next")]
    Position { got: u32, expected: usize },
    #[error("`batch.done` was called more often than the batch has messages ({0})")]
    TooMany(usize),
}

/// Links `batch.done`. Harmless for components of the plain `handler`
/// world, which do not import it.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.instance(BATCH_INTERFACE)?.func_wrap(
        "done",
        |mut store: StoreContextMut<'_, HostState>,
         (position, outcome): (u32, Result<Vec<WitOutput>, WitHandlerError>)| {
            let left = store.get_fuel().unwrap_or(0);
            let now = Instant::now();
            let data = store.data_mut();
            let log_dropped = data.log_dropped;
            let Some(call) = data.batch.as_mut() else {
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
            // Checked and converted now: what the host keeps per message is
            // bounded by max_outputs and max_output_bytes, whatever the guest
            // hands over in later answers.
            let answer = outcome_of(outcome, &call.limits);
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
            arm_with(store, &budget, now);
            Ok(())
        },
    )
}

impl Instance {
    /// Runs `handle-batch` on `msgs` (see [`super::Worker::handle_batch`]
    /// for what comes back). Empty for an instance of the plain world.
    pub(super) async fn handle_batch(&mut self, msgs: &[&Message]) -> Vec<Handled> {
        let Bindings::Batch(bindings) = &self.bindings else {
            return Vec::new();
        };
        let inner = &self.plugin.inner;
        let spec = &inner.spec;
        let headers: Vec<Vec<WitHeader<'_>>> = msgs.iter().map(|m| wit_headers(m)).collect();
        let wit: Vec<WitMessage<'_>> = msgs
            .iter()
            .zip(&headers)
            .map(|(m, h)| wit_message(m, h))
            .collect();
        let budget = Budget::of(&inner.engine, spec);
        let started = Instant::now();
        arm_with(&mut self.store, &budget, started);
        self.store.data_mut().batch = Some(BatchCall {
            expected: msgs.len(),
            budget,
            limits: spec.output_limits(),
            started,
            done: Vec::with_capacity(msgs.len()),
        });
        let result = watched(
            bindings.call_handle_batch(&mut self.store, &wit),
            &self.deadline,
        )
        .await;
        let Some(call) = self.store.data_mut().batch.take() else {
            return Vec::new();
        };
        let mut out = call.done;
        if let Err(e) = result {
            self.poisoned = true;
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
        } else if out.len() < msgs.len() {
            tracing::warn!(
                pipeline = %inner.spec.pipeline,
                "`handle-batch` answered {} of {} messages; the rest are handled one per call",
                out.len(),
                msgs.len()
            );
        }
        out
    }
}
