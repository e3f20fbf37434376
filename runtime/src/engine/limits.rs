//! The memory budget: a `ResourceLimiter` that refuses growth past the cap
//! with a typed error, so the failure is classed `memory` and not `trap`.

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
