//! The budgets a handler runs under and what it may cost the host: fuel and
//! the wall-clock deadline of one message ([`Budget`]; the watchdog holds it
//! to [`Deadline`] inside host calls), the memory cap (a `ResourceLimiter`
//! refusing growth with a typed error, so the failure is classed `memory`
//! and not `trap`), what its answers and its text may be, and what a call
//! cost. The engine's leaf: it imports nothing else of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;

use crate::failure::Failure;
use crate::message::Output;

/// The guest tried to grow its linear memory past its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "memory limit exceeded: growing the instance's memories from {current} to {desired} bytes in all, the cap is {max} bytes"
)]
pub struct MemoryExceeded {
    /// Bytes of all the instance's memories before the growth.
    pub current: usize,
    /// Bytes they would have after it.
    pub desired: usize,
    /// `handler.memory`.
    pub max: usize,
}

/// Most table elements one instance may hold, all its tables together
/// (each element is a pointer of host memory).
pub const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Per-store limiter. The caps hold for all of an instance's memories (and
/// tables) together: a component may hold several core instances, each
/// with memories of its own, and a cap per memory would let it take that
/// many times `handler.memory` of host memory.
pub struct Limiter {
    pub max_memory: usize,
    pub max_table_elements: usize,
    /// Bytes of every memory of the store together.
    memory: usize,
    /// Elements of every table of the store together.
    table_elements: usize,
    /// The last growth granted, taken back when it then fails.
    granted: usize,
}

impl Limiter {
    pub fn new(max_memory: usize, max_table_elements: usize) -> Self {
        Limiter {
            max_memory,
            max_table_elements,
            memory: 0,
            table_elements: 0,
            granted: 0,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        let total = self.memory.saturating_add(grow);
        if total > self.max_memory {
            return Err(wasmtime::Error::new(MemoryExceeded {
                current: self.memory,
                desired: total,
                max: self.max_memory,
            }));
        }
        self.memory = total;
        self.granted = grow;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory = self
            .memory
            .saturating_sub(std::mem::take(&mut self.granted));
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        let total = self.table_elements.saturating_add(grow);
        if total > self.max_table_elements {
            return Ok(false);
        }
        self.table_elements = total;
        self.granted = grow;
        Ok(true)
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.table_elements = self
            .table_elements
            .saturating_sub(std::mem::take(&mut self.granted));
        Ok(())
    }
}

/// What one message's outputs may be (`handler.max_outputs`,
/// `handler.max_output_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    pub max_outputs: u32,
    pub max_output_bytes: u64,
}

/// Bytes charged to an output against `max_output_bytes` on top of its own
/// bytes, so that empty outputs are not free: each still costs the host a
/// record, a sink call and a settle.
pub const OUTPUT_OVERHEAD: u64 = 64;

/// Bytes charged to each output header on top of its key and value.
pub const HEADER_OVERHEAD: u64 = 16;

/// Bytes the host may copy out of the guest in one host call or one
/// returned answer (wasmtime's "hostcall fuel"), for a handler whose answers
/// may hold `max_output_bytes` and whose key/value store holds `kv_max_bytes`.
///
/// wasmtime charges each list element at its host size (an output record is
/// about 128 bytes, a header 48) where [`OUTPUT_OVERHEAD`] and
/// [`HEADER_OVERHEAD`] charge 64 and 16, so a legitimate answer may cost up
/// to three times its budgeted size; the extra MiB covers log lines, error
/// texts and WASI calls. Past it the copy fails before the host allocates.
pub fn hostcall_budget(max_output_bytes: u64, kv_max_bytes: u64) -> usize {
    let bytes = max_output_bytes
        .saturating_mul(3)
        .max(kv_max_bytes)
        .saturating_add(1 << 20);
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// A call's wall-clock deadline, shared between the store (where `columns.answer`
/// moves it to the next message) and the watchdog that ends a call waiting in
/// a host call past it ([`super::watchdog::watched`]).
#[derive(Debug)]
pub struct Deadline {
    base: Instant,
    /// Nanoseconds after `base`.
    at: AtomicU64,
}

impl Deadline {
    pub fn new() -> Self {
        Deadline {
            base: Instant::now(),
            at: AtomicU64::new(u64::MAX),
        }
    }

    /// The deadline is `timeout` from `now` (saturating: an absurd timeout
    /// means no deadline, not an overflow).
    pub fn set(&self, now: Instant, timeout: Duration) {
        let nanos = now
            .saturating_duration_since(self.base)
            .saturating_add(timeout)
            .as_nanos();
        self.at
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The current deadline; `None` when it is too far to be represented.
    pub fn get(&self) -> Option<Instant> {
        self.base
            .checked_add(Duration::from_nanos(self.at.load(Ordering::Relaxed)))
    }
}

impl Default for Deadline {
    fn default() -> Self {
        Deadline::new()
    }
}

/// One message's budgets, re-armed for each message of a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub fuel: u64,
    /// The deadline in epoch ticks (for wasm code).
    pub ticks: u64,
    /// The deadline as a duration (for the watchdog of host calls).
    pub timeout: Duration,
}

/// One message's answer and what handling it cost.
pub type Handled = (Result<Vec<Output>, Failure>, CallStats);

/// What one call cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallStats {
    pub fuel_used: u64,
    pub elapsed: Duration,
    /// Guest log lines dropped past the per-message log budget.
    pub log_dropped: u32,
}

/// Longest guest log line, error text or panic message kept, in bytes after
/// escaping; longer ones are cut and say how much was cut.
pub const GUEST_TEXT_MAX: usize = 2048;

/// A guest's text as the host shows it: control characters (line breaks,
/// escape sequences) escaped as `\n`, `\u{1b}`..., so it stays one line of
/// the log that cannot pass for another; cut to [`GUEST_TEXT_MAX`] bytes.
pub fn guest_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(GUEST_TEXT_MAX));
    for (i, c) in text.char_indices() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > GUEST_TEXT_MAX {
            out.truncate(before);
            out.push_str(&format!("… ({} more bytes cut)", text.len() - i));
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_is_one_bounded_line() {
        assert_eq!(guest_text("plain"), "plain");
        assert_eq!(
            guest_text("a\n2026-01-01 ERROR sluice: forged\r\u{1b}[31m"),
            "a\\n2026-01-01 ERROR sluice: forged\\r\\u{1b}[31m"
        );
        let long = "é".repeat(GUEST_TEXT_MAX);
        let cut = guest_text(&long);
        assert!(cut.len() <= GUEST_TEXT_MAX + 40, "{}", cut.len());
        assert!(
            cut.ends_with(&format!("({} more bytes cut)", long.len() - GUEST_TEXT_MAX)),
            "{cut}"
        );
        assert!(!guest_text(&"\n".repeat(5000)).contains('\n'));
    }

    #[test]
    fn the_memory_cap_holds_for_all_memories_together() {
        let mut l = Limiter::new(100, 10);
        // Two memories of 40 bytes each fit; a third does not.
        assert!(l.memory_growing(0, 40, None).unwrap());
        assert!(l.memory_growing(0, 40, None).unwrap());
        let e = l.memory_growing(0, 40, None).expect_err("over the cap");
        let m = e.downcast_ref::<MemoryExceeded>().expect("typed");
        assert_eq!((m.current, m.desired, m.max), (80, 120, 100));
        // A growth granted and then failed is taken back.
        assert!(l.memory_growing(40, 60, None).unwrap());
        l.memory_grow_failed(wasmtime::format_err!("no")).unwrap();
        assert!(l.memory_growing(40, 60, None).unwrap());
        // Tables: the same, refused without a trap.
        assert!(l.table_growing(0, 6, None).unwrap());
        assert!(!l.table_growing(0, 6, None).unwrap());
        assert!(l.table_growing(6, 10, None).unwrap());
    }
}
