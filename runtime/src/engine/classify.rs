//! Trap classification: every way a guest call can end in error, turned
//! into a failure class where the error was made (fuel, timeout, memory,
//! protocol violation, oversized output, panic or trap).

use wasmtime::{Store, Trap};

use super::host::HostState;
use super::host::columns::ProtocolViolation;
use super::limits::{MemoryExceeded, hostcall_budget};
use super::spec::PluginSpec;
use super::watchdog::HostWaitTimeout;
use crate::failure::{Failure, FailureClass};

/// Turns a wasmtime error into a classified failure.
pub(crate) fn classify(
    err: wasmtime::Error,
    store: &Store<HostState>,
    spec: &PluginSpec,
    during: &str,
) -> Failure {
    if let Some(m) = err.downcast_ref::<MemoryExceeded>() {
        return Failure::new(FailureClass::Memory, m.to_string());
    }
    if err.downcast_ref::<HostWaitTimeout>().is_some() {
        return Failure::new(
            FailureClass::Timeout,
            format!(
                "ran past its timeout of {:?} during {during}, waiting in a host call (a sleep or poll)",
                spec.timeout
            ),
        );
    }
    if let Some(v) = err.downcast_ref::<ProtocolViolation>() {
        return Failure::new(
            FailureClass::Trap,
            format!("protocol violation during {during}: {v}"),
        );
    }
    // wasmtime's type for this is private; its text is stable within the
    // pinned version (a test holds it).
    if format!("{err:#}").contains("fuel allocated for hostcalls has been exhausted") {
        return Failure::new(
            FailureClass::Trap,
            format!(
                "bad output: the handler handed the host more than {} bytes at once during {during} \
                 (max_output_bytes = {}, max_outputs = {})",
                hostcall_budget(spec.max_output_bytes, spec.kv_max_bytes as u64),
                spec.max_output_bytes,
                spec.max_outputs
            ),
        );
    }
    let stderr = store.data().stderr_text();
    let with_stderr = |s: String| {
        if stderr.is_empty() {
            s
        } else {
            format!("{s}: {stderr}")
        }
    };
    // The Rust SDK ends a panicking handler this way (cheaper than a trap).
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Failure::new(
            FailureClass::Trap,
            with_stderr(format!("panic or exit (status {}) during {during}", exit.0)),
        );
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Failure::new(
            FailureClass::Fuel,
            format!("ran out of fuel ({} units) during {during}", spec.fuel),
        ),
        Some(Trap::Interrupt) => Failure::new(
            FailureClass::Timeout,
            format!("ran past its timeout of {:?} during {during}", spec.timeout),
        ),
        Some(Trap::StackOverflow) => Failure::new(
            FailureClass::Trap,
            with_stderr(format!("stack overflow during {during}")),
        ),
        Some(Trap::UnreachableCodeReached) => Failure::new(
            FailureClass::Trap,
            with_stderr(format!("panic or `unreachable` during {during}")),
        ),
        Some(t) => Failure::new(
            FailureClass::Trap,
            with_stderr(format!("{t} during {during}")),
        ),
        None => Failure::new(
            FailureClass::Trap,
            with_stderr(format!("{err:#} (during {during})")),
        ),
    }
}
