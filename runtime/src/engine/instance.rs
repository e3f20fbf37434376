//! A loaded plugin version and the instances made from it: each instance
//! is a store under the handler's budgets (fuel, the epoch deadline, the
//! memory cap, the hostcall fuel), made from the version's cached
//! `InstancePre` with `init` run, and discarded after any sandbox failure.
//! (`call.rs` runs messages on an instance; `load.rs` makes a version.)

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::OwnedSemaphorePermit;
use wasmtime::Store;

use super::batch::Columns;
use super::bindings::{
    BatchHandler, BatchHandlerPre, Handler, HandlerPre, WitHandlerError, WitMessage, WitOutput,
};
use super::cache::Origin;
use super::classify::classify;
use super::host::{HostState, KvStore, MAX_HANDLES, arm};
use super::limits::{Budget, Deadline, Limiter, MAX_TABLE_ELEMENTS, guest_text, hostcall_budget};
use super::setup::Engine;
use super::spec::PluginSpec;
use super::watchdog::watched;
use crate::failure::{Failure, FailureClass};
use crate::message::{Message, Output};

/// One loaded version of a plugin. Cheap to clone; instances made from it
/// keep it alive, so a swap never disturbs a call in flight.
#[derive(Clone)]
pub struct Plugin {
    pub(super) inner: Arc<PluginInner>,
}

pub(super) struct PluginInner {
    pub(super) engine: Engine,
    pub(super) spec: PluginSpec,
    pub(super) file: PathBuf,
    pub(super) digest: String,
    pub(super) loaded_at: SystemTime,
    pub(super) origin: Origin,
    pub(super) pre: HandlerPre<HostState>,
    /// Set when the component exports `handle-batch` (world `batch-handler`).
    pub(super) batch_pre: Option<BatchHandlerPre<HostState>>,
    pub(super) kv: Arc<Mutex<KvStore>>,
    pub(super) pipeline: Arc<str>,
    pub(super) config: Vec<(String, String)>,
    /// Set for a handler linked into the host instead of a component; only
    /// for measuring the sandbox's cost against the same logic.
    pub(super) native: Option<NativeFn>,
}

/// A handler written in Rust and linked into the host (benchmarks compare it
/// with the same logic as a component, through the same pipeline path).
pub type NativeFn = Arc<dyn Fn(&Message) -> Result<Vec<Output>, Failure> + Send + Sync>;

impl Plugin {
    /// `sha256:<hex>` of the plugin file.
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// Puts `key` = `value` in the plugin's kv store, as a handler's
    /// `kv-set` would: `sluice test` starts a case from a given state.
    pub fn kv_preset(&self, key: &str, value: &[u8]) {
        if let Ok(mut kv) = self.inner.kv.lock() {
            kv.set(key.to_string(), value.to_vec(), None, Instant::now());
        }
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
        let limiter = Limiter::new(
            usize::try_from(p.spec.memory).unwrap_or(usize::MAX),
            MAX_TABLE_ELEMENTS,
        );
        let state = HostState::new(p.pipeline.clone(), p.kv.clone(), limiter);
        let deadline = state.deadline.clone();
        let mut store = Store::new(p.engine.wasmtime(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_max_component_handles(MAX_HANDLES);
        store.set_hostcall_fuel(hostcall_budget(
            p.spec.max_output_bytes,
            p.spec.kv_max_bytes as u64,
        ));
        arm(&mut store, &p.budget(), Instant::now());
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
        arm(&mut store, &p.budget(), Instant::now());
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
            warned_short_batch: false,
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
        let limiter = Limiter::new(usize::MAX, usize::MAX);
        let state = HostState::new(p.pipeline.clone(), p.kv.clone(), limiter);
        let mut store = Store::new(p.engine.wasmtime(), state);
        // Fuel and epochs are on in the engine: give plenty, check nothing.
        store.set_fuel(u64::MAX)?;
        store.set_epoch_deadline(u64::MAX / 2);
        p.pre.instantiate_async(&mut store).await?;
        Ok(())
    }
}

impl PluginInner {
    /// One message's budgets as the plugin's spec sets them.
    pub(super) fn budget(&self) -> Budget {
        Budget {
            fuel: self.spec.fuel,
            ticks: self.engine.ticks(self.spec.timeout),
            timeout: self.spec.timeout,
        }
    }
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
    /// Whether a batch that returned with messages unanswered was logged.
    pub(super) warned_short_batch: bool,
    /// The buffers a batch is laid out in for `handle-batch`, reused.
    pub(super) columns: Columns,
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

    pub(super) async fn call_handle(
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
}
