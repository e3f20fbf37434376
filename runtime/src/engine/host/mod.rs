//! What a handler may ask of the host, and the store data its calls
//! see: `log`, a small bounded key/value store (`kv.rs`) and, for batch
//! handlers, `columns.answer` (`columns.rs`). WASI is linked but grants nothing: no files, env, network or stdio
//! (stdout and stderr are discarded; a guest that fills a captured pipe
//! could otherwise turn a harmless `eprintln!` into a panic). A WASI sleep or
//! poll is allowed but counts toward the call's deadline.
//!
//! Every text a guest hands the host that may reach the log (log lines,
//! error texts, panic messages) goes through [`guest_text`]: control
//! characters escaped, so no guest line can pass for one of Sluice's, and
//! the length bounded. Log lines have a byte budget per message; lines past
//! it are dropped and counted.

pub(crate) mod columns;
mod kv;

pub use kv::KvStore;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::AsContextMut;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{Level, sluice};
use super::limits::{Budget, Deadline, Handled, Limiter, OutputLimits, guest_text};

/// Bytes of log lines a handler may write per message (or per `init`);
/// lines past it are dropped and counted (`sluice_guest_log_dropped_total`).
pub const LOG_BUDGET: usize = 16 * 1024;

/// Bytes each log line counts against [`LOG_BUDGET`] beyond its own, so
/// that empty lines are not free (at most 256 lines a message).
pub const LOG_LINE_OVERHEAD: usize = 64;

/// Most random bytes one WASI call may ask for: generating them is a host
/// call that runs to its end, out of reach of the deadline.
pub const MAX_RANDOM_BYTES: u64 = 64 * 1024;

/// Most resource handles (WASI pollables, streams, ...) one instance may
/// hold at once; each pins a little host memory.
pub const MAX_HANDLES: usize = 10_000;

/// The data of one store: one handler instance.
pub struct HostState {
    /// Built on the guest's first WASI call: most handlers make none (a Rust
    /// handler's panic ends through `exit`, which needs no context), and
    /// building one (clocks, random sources) was ~5% of an instantiation.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    kv: Arc<Mutex<KvStore>>,
    pipeline: Arc<str>,
    /// The last error-level line the guest logged during the current call
    /// (the Rust SDK logs panic messages this way), for failure messages.
    pub(crate) last_error: Option<String>,
    /// Set while a `handle-batch` call runs.
    pub(crate) batch: Option<BatchCall>,
    /// The current message's wall-clock deadline, also read by the watchdog.
    pub(crate) deadline: Arc<Deadline>,
    /// Log bytes written for the current message.
    pub(crate) log_used: usize,
    /// Log lines dropped for the current message (past [`LOG_BUDGET`]).
    pub(crate) log_dropped: u32,
    /// Whether this instance was already warned about for dropping lines.
    log_warned: bool,
}

impl HostState {
    pub fn new(pipeline: Arc<str>, kv: Arc<Mutex<KvStore>>, limiter: Limiter) -> Self {
        HostState {
            wasi: None,
            table: ResourceTable::new(),
            limiter,
            kv,
            pipeline,
            last_error: None,
            batch: None,
            deadline: Arc::new(Deadline::new()),
            log_used: 0,
            log_dropped: 0,
            log_warned: false,
        }
    }

    /// Starts the budgets of the next message's log.
    pub(crate) fn reset_log(&mut self) {
        self.last_error = None;
        self.log_used = 0;
        self.log_dropped = 0;
    }

    /// The last error the guest logged during this call (e.g. a Rust panic message).
    pub fn stderr_text(&self) -> String {
        self.last_error.clone().unwrap_or_default()
    }
}

/// The state of one `handle-batch` call, kept in the store while it runs
/// (`columns.rs` takes each answer into it).
pub(crate) struct BatchCall {
    /// Messages in the call.
    pub(crate) expected: usize,
    /// One message's budgets, re-armed at each answer.
    pub(crate) budget: Budget,
    /// What the answers are checked against.
    pub(crate) limits: OutputLimits,
    /// When the current message started.
    pub(crate) started: Instant,
    /// The answers reported so far, in order, already checked.
    pub(crate) done: Vec<Handled>,
}

/// Sets the budgets for the next message, starting `now`: fuel, the
/// deadline (epoch ticks for wasm code, an instant for the watchdog) and the
/// log budget (also from inside a call: `columns.answer`).
pub(crate) fn arm(mut store: impl AsContextMut<Data = HostState>, budget: &Budget, now: Instant) {
    let mut store = store.as_context_mut();
    let data = store.data_mut();
    data.reset_log();
    data.deadline.set(now, budget.timeout);
    // set_fuel fails only when fuel is not enabled, and it always is here.
    let _ = store.set_fuel(budget.fuel);
    store.set_epoch_deadline(budget.ticks);
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(sealed_wasi),
            table: &mut self.table,
        }
    }
}

/// The WASI a handler gets: no preopens, no env, no args, no network, no
/// inherited stdio.
fn sealed_wasi() -> WasiCtx {
    wasmtime_wasi::WasiCtxBuilder::new()
        .max_random_size(MAX_RANDOM_BYTES)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// WASI `exit`, the way a Rust handler's panic ends its instance (see the
/// SDK's panic hook): the same `I32Exit` as wasmtime-wasi's, linked over it
/// so that a poison message does not build the WASI context just to leave.
impl wasmtime_wasi::p2::bindings::cli::exit::Host for HostState {
    fn exit(&mut self, status: Result<(), ()>) -> wasmtime::Result<()> {
        Err(wasmtime::format_err!(wasmtime_wasi::I32Exit(i32::from(
            status.is_err()
        ))))
    }

    fn exit_with_code(&mut self, status_code: u8) -> wasmtime::Result<()> {
        Err(wasmtime::format_err!(wasmtime_wasi::I32Exit(
            status_code.into()
        )))
    }
}

impl sluice::handler::types::Host for HostState {}

impl sluice::handler::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let message = guest_text(&message);
        let pipeline = &*self.pipeline;
        let cost = message.len() + LOG_LINE_OVERHEAD;
        let over = self.log_used + cost > LOG_BUDGET;
        if over {
            // Once per instance: a warning per message would let the guest
            // flood the log with Sluice's own lines instead of its own.
            if !self.log_warned {
                self.log_warned = true;
                tracing::warn!(target: "sluice::guest", pipeline, "the handler logged more than {LOG_BUDGET} bytes for one message; lines past that are dropped and counted (sluice_guest_log_dropped_total), and this is said once per instance");
            }
            self.log_dropped = self.log_dropped.saturating_add(1);
        } else {
            self.log_used += cost;
            match level {
                Level::Trace => tracing::trace!(target: "sluice::guest", pipeline, "{message}"),
                Level::Debug => tracing::debug!(target: "sluice::guest", pipeline, "{message}"),
                Level::Info => tracing::info!(target: "sluice::guest", pipeline, "{message}"),
                Level::Warn => tracing::warn!(target: "sluice::guest", pipeline, "{message}"),
                Level::Error => tracing::error!(target: "sluice::guest", pipeline, "{message}"),
            }
        }
        // A panic message reaches the failure even past the log budget.
        if level == Level::Error {
            self.last_error = Some(message);
        }
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.kv.lock().ok()?.get(&key, Instant::now())
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) {
        if let Ok(mut kv) = self.kv.lock() {
            kv.set(
                key,
                value,
                ttl_ms.map(Duration::from_millis),
                Instant::now(),
            );
        }
    }
}
