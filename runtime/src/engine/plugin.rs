//! A loaded plugin version (compiled, linked, `init` verified) and the
//! instances made from it; every call runs under fuel, deadline and memory cap.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::component::{Linker, types::ComponentItem};
use wasmtime::{AsContextMut, Store, Trap};

use super::Engine;
use super::bindings::{
    BatchHandler, BatchHandlerPre, Handler, HandlerPre, WitHandlerError, WitHeader, WitMessage,
    WitOutput,
};
use super::cache::{self, Origin};
use super::host::{HostState, KvStore, guest_text};
use super::limits::{
    Deadline, HEADER_OVERHEAD, Limiter, MemoryExceeded, OUTPUT_OVERHEAD, OutputLimits,
    hostcall_budget,
};
use crate::config::HandlerConfig;
use crate::failure::{Failure, FailureClass};
use crate::message::{Header, Message, Output};

/// What a plugin needs to be loaded and run.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The `.wasm` file, or a folder holding exactly one.
    pub path: PathBuf,
    /// The pipeline it serves (labels its logs).
    pub pipeline: String,
    pub fuel: u64,
    pub timeout: Duration,
    pub memory: u64,
    pub max_output_bytes: u64,
    /// Most outputs one message may have.
    pub max_outputs: u32,
    /// Passed to `init`.
    pub config: Vec<(String, String)>,
    pub kv_max_entries: usize,
    pub kv_max_bytes: usize,
    /// Longest a compile may take (with [`super::Compiler::Child`]).
    pub compile_timeout: Duration,
    /// Most memory a compile may use (with [`super::Compiler::Child`]).
    pub compile_memory: u64,
}

impl PluginSpec {
    /// The spec a pipeline's `[handler]` table describes.
    pub fn from_config(pipeline: &str, h: &HandlerConfig) -> Self {
        PluginSpec {
            path: h.plugin.clone(),
            pipeline: pipeline.to_string(),
            fuel: h.fuel,
            timeout: h.timeout.0,
            memory: h.memory.0,
            max_output_bytes: h.max_output_bytes.0,
            max_outputs: h.max_outputs,
            config: h
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            kv_max_entries: h.kv_max_entries,
            kv_max_bytes: h.kv_max_bytes.0 as usize,
            compile_timeout: h.compile_timeout.0,
            compile_memory: h.compile_memory.0,
        }
    }

    /// What a message's outputs are checked against.
    pub fn output_limits(&self) -> OutputLimits {
        OutputLimits {
            max_outputs: self.max_outputs,
            max_output_bytes: self.max_output_bytes,
        }
    }

    /// Generous budgets for tools (`sluice call`) and tests.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PluginSpec {
            path: path.into(),
            pipeline: "call".into(),
            fuel: 100_000_000,
            timeout: Duration::from_secs(1),
            memory: 64 << 20,
            max_output_bytes: 4 << 20,
            max_outputs: 1000,
            config: Vec::new(),
            kv_max_entries: 10_000,
            kv_max_bytes: 4 << 20,
            compile_timeout: crate::config::DEFAULT_COMPILE_TIMEOUT,
            compile_memory: crate::config::DEFAULT_COMPILE_MEMORY,
        }
    }
}

/// Why a plugin could not be loaded. The old version, if any, keeps running.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read plugin {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("plugin {path} is not a WebAssembly component: {message}")]
    NotAComponent { path: PathBuf, message: String },
    #[error("plugin {path} does not implement the sluice:handler world: {message}")]
    World { path: PathBuf, message: String },
    #[error("plugin {path} failed to start: {message}")]
    Init { path: PathBuf, message: String },
    /// Compiling it ran past `handler.compile_timeout` or
    /// `handler.compile_memory`, or the compiler process failed.
    #[error("plugin {path} refused: {message}")]
    Compile { path: PathBuf, message: String },
}

/// One loaded version of a plugin. Cheap to clone; instances made from it
/// keep it alive, so a swap never disturbs a call in flight.
#[derive(Clone)]
pub struct Plugin {
    pub(super) inner: Arc<PluginInner>,
}

pub(super) struct PluginInner {
    pub(super) engine: Engine,
    pub(super) spec: PluginSpec,
    file: PathBuf,
    digest: String,
    loaded_at: SystemTime,
    origin: Origin,
    pre: HandlerPre<HostState>,
    /// Set when the component exports `handle-batch` (world `batch-handler`).
    batch_pre: Option<BatchHandlerPre<HostState>>,
    kv: Arc<Mutex<KvStore>>,
    pipeline: Arc<str>,
    config: Vec<(String, String)>,
    /// Set for a handler linked into the host instead of a component; only
    /// for measuring the sandbox's cost against the same logic.
    pub(super) native: Option<NativeFn>,
}

/// A handler written in Rust and linked into the host (benchmarks compare it
/// with the same logic as a component, through the same pipeline path).
pub type NativeFn = Arc<dyn Fn(&Message) -> Result<Vec<Output>, Failure> + Send + Sync>;

impl Plugin {
    /// Reads, compiles (or loads from the cache), links, and starts one
    /// instance to run `init`: a plugin that loads is known to work.
    pub async fn load(engine: &Engine, spec: PluginSpec) -> Result<Plugin, PluginError> {
        let file = resolve_file(&spec.path)?;
        let bytes =
            crate::files::read_regular(&file, crate::files::MAX_PLUGIN_BYTES).map_err(|e| {
                PluginError::Read {
                    path: file.clone(),
                    message: e.to_string(),
                }
            })?;
        let digest = cache::digest(&bytes);
        // A core module implementing the world's canonical ABI is wrapped
        // into a component before compiling (in the compiler child when
        // there is one); the cache still keys on the file's digest.
        let (component, origin) =
            super::compile::load(engine, &spec, &file, bytes, &digest).await?;

        let world_err = |message: String| PluginError::World {
            path: file.clone(),
            message,
        };
        check_exports(engine, &component).map_err(world_err)?;
        let mut linker = Linker::<HostState>::new(engine.wasmtime());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| world_err(e.to_string()))?;
        // Our `exit` over wasmtime-wasi's (host.rs says why).
        linker.allow_shadowing(true);
        wasmtime_wasi::p2::bindings::cli::exit::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| world_err(e.to_string()))?;
        linker.allow_shadowing(false);
        Handler::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| world_err(e.to_string()))?;
        super::batch::add_to_linker(&mut linker).map_err(|e| world_err(e.to_string()))?;
        let instance_pre = linker.instantiate_pre(&component).map_err(|e| {
            world_err(format!(
                "it imports something the host does not provide: {e:#}"
            ))
        })?;
        let batch_pre = if exports_batch(engine, &component) {
            let pre = BatchHandlerPre::new(instance_pre.clone())
                .map_err(|e| world_err(format!("`handle-batch`: {e:#}")))?;
            Some(pre)
        } else {
            None
        };
        let pre = HandlerPre::new(instance_pre).map_err(|e| world_err(format!("{e:#}")))?;

        let plugin = Plugin {
            inner: Arc::new(PluginInner {
                engine: engine.clone(),
                file: file.clone(),
                digest,
                loaded_at: SystemTime::now(),
                origin,
                pre,
                batch_pre,
                kv: Arc::new(Mutex::new(KvStore::new(
                    spec.kv_max_entries,
                    spec.kv_max_bytes,
                ))),
                pipeline: spec.pipeline.as_str().into(),
                config: spec.config.clone(),
                native: None,
                spec,
            }),
        };
        // Run `init` once now, so a plugin that cannot start is refused here
        // rather than on its first message.
        plugin.instantiate().await.map_err(|f| PluginError::Init {
            path: file,
            message: f.message,
        })?;
        Ok(plugin)
    }

    /// The same as `template` but calling `f` natively instead of the
    /// component: no sandbox, no budgets. For benchmarks only.
    pub fn native(template: &Plugin, f: NativeFn) -> Plugin {
        let t = &template.inner;
        Plugin {
            inner: Arc::new(PluginInner {
                engine: t.engine.clone(),
                spec: t.spec.clone(),
                file: t.file.clone(),
                digest: format!("native:{}", t.digest),
                loaded_at: SystemTime::now(),
                origin: t.origin,
                pre: t.pre.clone(),
                batch_pre: t.batch_pre.clone(),
                kv: t.kv.clone(),
                pipeline: t.pipeline.clone(),
                config: t.config.clone(),
                native: Some(f),
            }),
        }
    }

    /// `sha256:<hex>` of the plugin file.
    /// Puts `key` = `value` in the plugin's kv store, as a handler's
    /// `kv-set` would: `sluice test` starts a case from a given state.
    pub fn kv_preset(&self, key: &str, value: &[u8]) {
        if let Ok(mut kv) = self.inner.kv.lock() {
            kv.set(key.to_string(), value.to_vec(), None, Instant::now());
        }
    }

    pub fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// The `.wasm` file this version was read from.
    pub fn file(&self) -> &Path {
        &self.inner.file
    }

    pub fn spec(&self) -> &PluginSpec {
        &self.inner.spec
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.inner.loaded_at
    }

    /// Whether the component takes several messages per call (`handle-batch`).
    pub fn takes_batches(&self) -> bool {
        self.inner.batch_pre.is_some() || self.inner.native.is_some()
    }

    /// Whether the compiled code came from the disk cache.
    pub fn from_cache(&self) -> bool {
        self.inner.origin == Origin::Cache
    }

    /// A fresh instance with `init` run. Waits for a free slot of the pool.
    pub async fn instantiate(&self) -> Result<Instance, Failure> {
        let p = &self.inner;
        let permit = p
            .engine
            .slots()
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Failure::new(FailureClass::Trap, "the engine is shutting down"))?;
        let limiter = Limiter {
            max_memory: usize::try_from(p.spec.memory).unwrap_or(usize::MAX),
            max_table_elements: 1_000_000,
        };
        let state = HostState::new(p.pipeline.clone(), p.kv.clone(), limiter);
        let deadline = state.deadline.clone();
        let mut store = Store::new(p.engine.wasmtime(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_max_component_handles(super::host::MAX_HANDLES);
        store.set_hostcall_fuel(hostcall_budget(
            p.spec.max_output_bytes,
            p.spec.kv_max_bytes as u64,
        ));
        arm(&mut store, &p.engine, &p.spec, Instant::now());
        let made = match &p.batch_pre {
            Some(pre) => watched(pre.instantiate_async(&mut store), &deadline)
                .await
                .map(Bindings::Batch),
            None => watched(p.pre.instantiate_async(&mut store), &deadline)
                .await
                .map(Bindings::Single),
        };
        let bindings = match made {
            Ok(b) => b,
            Err(e) => return Err(classify(e, &store, &p.spec, "instantiation")),
        };
        arm(&mut store, &p.engine, &p.spec, Instant::now());
        let config: Vec<(&str, &str)> = p
            .config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match watched(bindings.call_init(&mut store, &config), &deadline).await {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => {
                return Err(Failure::new(
                    FailureClass::Trap,
                    format!("init refused: {}", guest_text(&msg)),
                ));
            }
            Err(e) => return Err(classify(e, &store, &p.spec, "init")),
        }
        Ok(Instance {
            store,
            bindings,
            deadline,
            plugin: self.clone(),
            poisoned: false,
            columns: Default::default(),
            _permit: permit,
        })
    }
}

impl Plugin {
    /// For benchmarks: wasmtime's own instantiation of this component from
    /// its `InstancePre` on the same (pooling) engine — a store holding the
    /// state its imports need and nothing Sluice adds: no instance permit,
    /// no memory limiter, no budgets armed, no `init` call.
    #[doc(hidden)]
    pub async fn instantiate_bare(&self) -> anyhow::Result<()> {
        let p = &self.inner;
        let limiter = Limiter {
            max_memory: usize::MAX,
            max_table_elements: usize::MAX,
        };
        let state = HostState::new(p.pipeline.clone(), p.kv.clone(), limiter);
        let mut store = Store::new(p.engine.wasmtime(), state);
        // Fuel and epochs are on in the engine: give plenty, check nothing.
        store.set_fuel(u64::MAX)?;
        store.set_epoch_deadline(u64::MAX / 2);
        p.pre.instantiate_async(&mut store).await?;
        Ok(())
    }
}

/// The `.wasm` file named by `path`: the path itself, or the only `.wasm` in a folder.
fn resolve_file(path: &Path) -> Result<PathBuf, PluginError> {
    let read_err = |message: String| PluginError::Read {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let mut wasm: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| read_err(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    match wasm.len() {
        1 => Ok(wasm.remove(0)),
        0 => Err(read_err("the folder holds no .wasm file".into())),
        n => Err(read_err(format!(
            "the folder holds {n} .wasm files; name one"
        ))),
    }
}

/// Whether the component exports `handle-batch` (the `batch-handler` world).
fn exports_batch(engine: &Engine, component: &wasmtime::component::Component) -> bool {
    component
        .component_type()
        .get_export(engine.wasmtime(), "handle-batch")
        .is_some()
}

/// Says which of the world's exports a component lacks.
fn check_exports(
    engine: &Engine,
    component: &wasmtime::component::Component,
) -> Result<(), String> {
    let ty = component.component_type();
    let mut missing = Vec::new();
    for name in ["init", "handle"] {
        match ty.get_export(engine.wasmtime(), name) {
            Some(e) if matches!(e.ty, ComponentItem::ComponentFunc(_)) => {}
            Some(_) => missing.push(format!("`{name}` is exported but is not a function")),
            None => missing.push(format!("missing export `{name}`")),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        let found: Vec<String> = ty
            .exports(engine.wasmtime())
            .map(|(n, _)| format!("`{n}`"))
            .collect();
        Err(format!(
            "{} (it exports: {})",
            missing.join(", "),
            if found.is_empty() {
                "nothing".to_string()
            } else {
                found.join(", ")
            }
        ))
    }
}

/// Sets the budgets for the next call, starting `now`: fuel and the
/// wall-clock deadline.
pub(super) fn arm(store: &mut Store<HostState>, engine: &Engine, spec: &PluginSpec, now: Instant) {
    arm_with(store, &Budget::of(engine, spec), now);
}

/// One message's budgets, re-armed for each message of a batch.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    pub fuel: u64,
    /// The deadline in epoch ticks (for wasm code).
    pub ticks: u64,
    /// The deadline as a duration (for the watchdog of host calls).
    pub timeout: Duration,
}

impl Budget {
    /// One message's budgets as the plugin's spec sets them.
    pub(super) fn of(engine: &Engine, spec: &PluginSpec) -> Budget {
        Budget {
            fuel: spec.fuel,
            ticks: engine.ticks(spec.timeout),
            timeout: spec.timeout,
        }
    }
}

/// Sets the budgets for the next message, starting `now`: fuel, the
/// deadline (epoch ticks for wasm code, an instant for the watchdog) and the
/// log budget (also from inside a call: `columns.answer`).
pub(super) fn arm_with(
    mut store: impl AsContextMut<Data = HostState>,
    budget: &Budget,
    now: Instant,
) {
    let mut store = store.as_context_mut();
    let data = store.data_mut();
    data.reset_log();
    data.deadline.set(now, budget.timeout);
    // set_fuel fails only when fuel is not enabled, and it always is here.
    let _ = store.set_fuel(budget.fuel);
    store.set_epoch_deadline(budget.ticks);
}

/// How long after its deadline a call waiting inside a host call (a WASI
/// sleep or poll) is ended. Running wasm code is stopped by the epoch
/// interrupt within one tick; a host call is not wasm code, so the watchdog
/// ends it, a little later so that the interrupt wins where it can.
pub const HOST_WAIT_GRACE: Duration = Duration::from_millis(20);

/// A call that waited in a host call past its deadline (see [`watched`]).
#[derive(Debug, thiserror::Error)]
#[error("waited in a host call past its deadline")]
pub(super) struct HostWaitTimeout;

/// Runs `call` (a guest call on a fiber) to its end, or ends it once it has
/// waited inside a host call past `deadline` + [`HOST_WAIT_GRACE`] (the
/// call's fiber is then unwound and its instance must be discarded). A call
/// that finishes without waiting on the host, as nearly all do, costs no
/// timer: the timer is made only when the call first returns pending.
pub(super) async fn watched<T>(
    call: impl Future<Output = wasmtime::Result<T>>,
    deadline: &Deadline,
) -> wasmtime::Result<T> {
    let mut call = pin!(call);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = call.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        loop {
            let Some(at) = deadline.get().and_then(|d| d.checked_add(HOST_WAIT_GRACE)) else {
                return Poll::Pending;
            };
            let at = tokio::time::Instant::from_std(at);
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if t.deadline() != at {
                t.as_mut().reset(at);
            }
            match t.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // `columns.answer` may have moved the deadline meanwhile.
                Poll::Ready(()) if tokio::time::Instant::now() >= at => {
                    return Poll::Ready(Err(wasmtime::Error::new(HostWaitTimeout)));
                }
                Poll::Ready(()) => {}
            }
        }
    })
    .await
}

/// Turns a wasmtime error into a classified failure.
pub(super) fn classify(
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
    if let Some(v) = err.downcast_ref::<super::batch::ProtocolViolation>() {
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

/// One instance of a plugin version. Reused between messages; discarded
/// after any sandbox failure (a fresh one comes from the cached `InstancePre`).
pub struct Instance {
    pub(super) store: Store<HostState>,
    pub(super) bindings: Bindings,
    /// The store's deadline, read by the watchdog while a call runs.
    pub(super) deadline: Arc<Deadline>,
    pub(super) plugin: Plugin,
    pub(super) poisoned: bool,
    /// The buffers a batch is laid out in for `handle-batch`, reused.
    pub(super) columns: super::batch::Columns,
    _permit: OwnedSemaphorePermit,
}

/// The exports of an instance, by the world its component implements.
pub(super) enum Bindings {
    Single(Handler),
    Batch(BatchHandler),
}

impl Bindings {
    async fn call_init(
        &self,
        store: &mut Store<HostState>,
        config: &[(&str, &str)],
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Bindings::Single(b) => b.call_init(store, config).await,
            Bindings::Batch(b) => b.call_init(store, config).await,
        }
    }

    async fn call_handle(
        &self,
        store: &mut Store<HostState>,
        msg: WitMessage<'_>,
    ) -> wasmtime::Result<Result<Vec<WitOutput>, WitHandlerError>> {
        match self {
            Bindings::Single(b) => b.call_handle(store, msg).await,
            Bindings::Batch(b) => b.call_handle(store, msg).await,
        }
    }
}

impl Instance {
    /// The version this instance runs.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// True after a trap, timeout, fuel or memory failure: the instance must not be reused.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Runs `handle` on one message under all three budgets.
    pub async fn handle(&mut self, msg: &Message) -> Handled {
        let spec = &self.plugin.inner.spec;
        let headers = wit_headers(msg);
        let wit = wit_message(msg, &headers);
        let start = Instant::now();
        arm(&mut self.store, &self.plugin.inner.engine, spec, start);
        let result = watched(
            self.bindings.call_handle(&mut self.store, wit),
            &self.deadline,
        )
        .await;
        let stats = CallStats {
            fuel_used: spec.fuel.saturating_sub(self.store.get_fuel().unwrap_or(0)),
            elapsed: start.elapsed(),
            log_dropped: self.store.data().log_dropped,
        };
        let result = match result {
            Ok(outcome) => outcome_of(outcome, &spec.output_limits()),
            Err(e) => {
                self.poisoned = true;
                Err(classify(e, &self.store, spec, "handle"))
            }
        };
        (result, stats)
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
