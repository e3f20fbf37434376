//! The process-wide wasmtime engine: its settings (shared with the compiler
//! child), the instance pool and the one epoch ticker every deadline counts.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::{Config, Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::cache;

/// How an engine compiles a plugin that is not in the disk cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compiler {
    /// In this process, with no bound on time or memory. Only for trusted
    /// plugins: tests and benchmarks that link the library.
    InProcess,
    /// In a child process, `exe __compile`, with `exe` the `sluice` binary
    /// (`std::env::current_exe()`), under the plugin's
    /// `handler.compile_memory` and killed past its `handler.compile_timeout`.
    Child { exe: PathBuf },
}

/// How the process-wide engine is set up.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Where compiled components are cached; `None` = no disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Handler instances alive at once, across all pipelines (pool size).
    pub max_instances: u32,
    /// Use the pooling allocator (fast instantiation after a trap).
    pub pooling: bool,
    /// Epoch tick: the granularity of wall-clock deadlines (a call runs at
    /// most its `timeout` plus one tick). Each tick wakes the ticker thread:
    /// at 1 ms that thread took ~10% of a core on this 2-core VM; 5 ms costs
    /// a fifth of it and keeps a 20 ms timeout within 25 ms.
    pub epoch_tick: Duration,
    /// How plugins missing from the disk cache are compiled: in a child
    /// process bounded by `handler.compile_timeout` and
    /// `handler.compile_memory` (what the `sluice` binary always does), or
    /// in this process without bounds (the default, for tests and
    /// benchmarks, which have no `sluice` binary to run and load only the
    /// project's own plugins). A `.wasm` file is untrusted input: never
    /// compile one from outside in process.
    pub compiler: Compiler,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cache_dir: cache::default_dir(),
            max_instances: 128,
            pooling: true,
            epoch_tick: Duration::from_millis(5),
            compiler: Compiler::InProcess,
        }
    }
}

/// The wasmtime engine shared by every pipeline of the process, with its one
/// epoch ticker. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    wasmtime: wasmtime::Engine,
    options: EngineOptions,
    /// Why a semaphore: the pooling allocator has a fixed number of slots;
    /// asking for more fails instead of waiting, so callers wait here.
    slots: Arc<Semaphore>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Engine {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(options: EngineOptions) -> anyhow::Result<Engine> {
        let pooled = |reset_in_place| build(&options, Some(reset_in_place));
        let wasmtime = if options.pooling {
            // Resetting slots in place needs PAGEMAP_SCAN (Linux 6.7+);
            // without it, freed slots are decommitted as before.
            match pooled(true).or_else(|_| pooled(false)) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(
                        "pooling allocator unavailable ({e:#}); using on-demand allocation"
                    );
                    build(&options, None)?
                }
            }
        } else {
            build(&options, None)?
        };
        let stop_ticker = Arc::new(AtomicBool::new(false));
        // One ticker per engine, never one per store or per call: a ticker per
        // call costs two orders of magnitude (a known wasmtime pitfall).
        let ticker_engine = wasmtime.clone();
        let stop = stop_ticker.clone();
        let tick = options.epoch_tick;
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    ticker_engine.increment_epoch();
                }
            })?;
        Ok(Engine {
            inner: Arc::new(EngineInner {
                wasmtime,
                slots: Arc::new(Semaphore::new(options.max_instances as usize)),
                options,
                stop_ticker,
            }),
        })
    }

    pub(crate) fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.wasmtime
    }

    pub(crate) fn options(&self) -> &EngineOptions {
        &self.inner.options
    }

    pub(crate) fn slots(&self) -> &Arc<Semaphore> {
        &self.inner.slots
    }

    /// Epoch ticks for a deadline of `timeout`: one more than fit in it, as
    /// the first tick may come at once. A call is stopped after at least
    /// `timeout` and at most `timeout` + one tick. Saturates (at a count
    /// no epoch reaches) rather than wrapping for an absurd timeout.
    pub(crate) fn ticks(&self, timeout: Duration) -> u64 {
        let tick = self.inner.options.epoch_tick.as_nanos().max(1);
        u64::try_from(timeout.as_nanos().div_ceil(tick))
            .unwrap_or(u64::MAX)
            .min(u64::MAX / 4)
            + 1
    }
}

/// Bytes of a freed memory or table slot kept mapped and reset in place.
const KEEP_RESIDENT: usize = 256 << 10;

/// The settings every engine of Sluice shares, whatever its instance
/// allocator: the compiler child (`compile.rs`) builds its engine from this
/// alone, so what it compiles deserializes in the parent's. (The allocation
/// strategy does not change compiled code: wasmtime documents artifacts as
/// compatible with and without the pooling allocator, and a test checks it.)
pub(crate) fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.consume_fuel(true);
    config.epoch_interruption(true);
    // Guest stack: deep recursion traps as a stack overflow at this depth.
    config.max_wasm_stack(1 << 20);
    config.async_stack_size(2 << 20);
    // Handlers are plain (not async-lifted) exports and the host's imports
    // are plain functions: the component model's concurrency machinery (a
    // guest task, resource-table entries and a oneshot channel per call) is
    // not needed. Without it `call_async` is one fiber switch into the guest.
    config.concurrency_support(false);
    // A trap's cause reaches the dead letter as its class, the trap code and
    // the guest's stderr (its panic message); the frame-by-frame wasm
    // backtrace was never shown, and capturing it (address-map lookups per
    // frame) was a visible share of every poison message's cost.
    config.wasm_backtrace_max_frames(None);
    config
}

/// `pooling`: `Some(reset_in_place)` for the pooling allocator, `None` for
/// on-demand allocation.
fn build(options: &EngineOptions, pooling: Option<bool>) -> anyhow::Result<wasmtime::Engine> {
    let mut config = base_config();
    if let Some(reset_in_place) = pooling {
        let n = options.max_instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            .total_core_instances(n * 8)
            .total_memories(n * 4)
            .total_tables(n * 8)
            .total_stacks(n)
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            .max_memory_size(4 << 30)
            // Keep a few slots warm: re-instantiating after a trap reuses them.
            .max_unused_warm_slots(n.min(32));
        if reset_in_place {
            // A freed slot's dirty pages (found with Linux's PAGEMAP_SCAN)
            // are copied back to their initial contents and stay mapped, up
            // to this much; the rest is decommitted. Otherwise every reuse
            // decommits (madvise + TLB shootdown) and the next instance
            // faults the same pages in again: a trap + fresh instance went
            // from 36 to 13 µs. (Without the scan, keep-resident would memset
            // the lowest addresses instead, which was measured slower.)
            pool.linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(KEEP_RESIDENT)
                .pagemap_scan(Enabled::Yes);
        }
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Ok(wasmtime::Engine::new(&config)?)
}
