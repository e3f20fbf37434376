//! The budgets a handler runs under besides fuel: the memory cap (a
//! `ResourceLimiter` refusing growth with a typed error, so the failure is
//! classed `memory` and not `trap`), what its answers may cost the host, and
//! the wall-clock deadline the watchdog holds it to inside host calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;

/// The guest tried to grow its linear memory past its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("memory limit exceeded: growing from {current} to {desired} bytes, the cap is {max} bytes")]
pub struct MemoryExceeded {
    pub current: usize,
    pub desired: usize,
    pub max: usize,
}

/// Per-store limiter. Tables are capped too, so a guest cannot exhaust host
/// memory through them either.
pub struct Limiter {
    pub max_memory: usize,
    pub max_table_elements: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            return Err(wasmtime::Error::new(MemoryExceeded {
                current,
                desired,
                max: self.max_memory,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
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
/// a host call past it ([`super::plugin::watched`]).
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
