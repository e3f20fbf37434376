//! Several messages per call (`handle-batch`): the `batch.done` import that
//! takes each message's result and re-arms the budgets for the next one, so
//! every message of a batch runs under its own fuel and deadline and a
//! failure is pinned on the message that caused it.

use std::time::Instant;

use wasmtime::StoreContextMut;
use wasmtime::component::Linker;

use super::bindings::{WitHandlerError, WitHeader, WitMessage, WitOutput};
use super::host::HostState;
use super::plugin::{
    Bindings, CallStats, Handled, Instance, arm_with, classify, outcome_of, wit_headers,
    wit_message,
};
use crate::failure::FailureClass;
use crate::message::Message;

/// The import's instance name, as the guest's component imports it.
const BATCH_INTERFACE: &str = "sluice:handler/batch@0.1.0";

/// The state of one `handle-batch` call, kept in the store while it runs.
pub(crate) struct BatchCall {
    /// Messages in the call.
    expected: usize,
    /// One message's fuel, re-armed at each `done`.
    fuel: u64,
    /// One message's deadline in epoch ticks, re-armed at each `done`.
    ticks: u64,
    /// When the current message started.
    started: Instant,
    /// The answers reported so far, in order.
    done: Vec<Reported>,
}

/// One message's answer as the guest reported it.
struct Reported {
    outcome: Result<Vec<WitOutput>, WitHandlerError>,
    stats: CallStats,
}

/// Links `batch.done`. Harmless for components of the plain `handler`
/// world, which do not import it.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.instance(BATCH_INTERFACE)?.func_wrap(
        "done",
        |mut store: StoreContextMut<'_, HostState>,
         (outcome,): (Result<Vec<WitOutput>, WitHandlerError>,)| {
            let left = store.get_fuel().unwrap_or(0);
            let now = Instant::now();
            let Some(call) = store.data_mut().batch.as_mut() else {
                wasmtime::bail!("`batch.done` was called outside `handle-batch`");
            };
            if call.done.len() >= call.expected {
                wasmtime::bail!(
                    "`batch.done` was called more often than the batch has messages ({})",
                    call.expected
                );
            }
            call.done.push(Reported {
                outcome,
                stats: CallStats {
                    fuel_used: call.fuel.saturating_sub(left),
                    elapsed: now.duration_since(call.started),
                },
            });
            call.started = now;
            let (fuel, ticks) = (call.fuel, call.ticks);
            arm_with(store, fuel, ticks);
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
        let ticks = inner.engine.ticks(spec.timeout);
        arm_with(&mut self.store, spec.fuel, ticks);
        self.store.data_mut().batch = Some(BatchCall {
            expected: msgs.len(),
            fuel: spec.fuel,
            ticks,
            started: Instant::now(),
            done: Vec::with_capacity(msgs.len()),
        });
        let result = bindings.call_handle_batch(&mut self.store, &wit).await;
        let Some(call) = self.store.data_mut().batch.take() else {
            return Vec::new();
        };
        let mut out: Vec<Handled> = call
            .done
            .into_iter()
            .map(|r| (outcome_of(r.outcome, spec.max_output_bytes), r.stats))
            .collect();
        if let Err(e) = result {
            self.poisoned = true;
            let failure = classify(e, &self.store, spec, "handle");
            let stats = CallStats {
                fuel_used: spec.fuel.saturating_sub(self.store.get_fuel().unwrap_or(0)),
                elapsed: call.started.elapsed(),
            };
            // Before the first answer, memory and fuel may have gone to
            // lowering the batch itself: not pinned on the first message,
            // which runs again alone.
            let unpinned = out.is_empty()
                && msgs.len() > 1
                && matches!(failure.class, FailureClass::Memory | FailureClass::Fuel);
            if !unpinned && out.len() < msgs.len() {
                out.push((Err(failure), stats));
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
