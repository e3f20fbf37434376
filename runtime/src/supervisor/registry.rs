//! What the supervisor knows about each pipeline, shared with the admin API
//! and the metrics: state, plugin version, counters, errors, reloads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use serde::Serialize;

use crate::engine::{Engine, Plugin, PluginSpec};
use crate::pipeline::canary::Rule;
use crate::pipeline::{Pipeline, PluginSlot};
use crate::policy::breaker::{Breaker, BreakerState};
use crate::stats::Stats;

/// Where a pipeline is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Its source and sinks are being opened.
    Starting,
    /// Taking and handling messages.
    Running,
    /// Intake stopped; messages in flight are being finished or handed back.
    Draining,
    /// Its source ended (a `file` source with `follow = false`).
    Finished,
    /// Stopped on request (file removed or replaced, shutdown).
    Stopped,
    /// Could not start, or ended with an error (see `error`).
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Draining => "draining",
            State::Finished => "finished",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }

    /// Still holding (or about to hold) messages.
    pub fn is_active(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Draining)
    }
}

/// The live parts of a pipeline that started.
pub(super) struct Live {
    pub(super) slot: PluginSlot,
    stats: Arc<Stats>,
    breaker: Arc<Breaker>,
}

/// One pipeline as the supervisor, the admin API and the metrics see it.
pub struct Handle {
    /// The pipeline's `name`.
    pub name: String,
    /// The pipeline file it came from.
    pub file: PathBuf,
    pub(super) engine: Engine,
    spec: PluginSpec,
    pub(super) live: OnceLock<Live>,
    state: Mutex<State>,
    ready: AtomicBool,
    error: Mutex<Option<String>>,
    last_reload_error: Mutex<Option<String>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Serialises reloads (watcher and admin API).
    pub(super) reload_lock: tokio::sync::Mutex<()>,
    /// Digest of plugin bytes that failed to load: not retried until they change.
    failed_digest: Mutex<Option<String>>,
    /// The `handler.plugin` file and the digest of the bytes last loaded
    /// from it: a promoted canary runs in its place without being reloaded
    /// over, and the file is still watched for hot swaps.
    stable_loaded: Mutex<Option<(PathBuf, String)>>,
    /// `[handler.canary]`: what the canary is loaded with, and its rule.
    pub(super) canary: Option<(PluginSpec, Rule)>,
    /// Why the last canary load failed, and the digest that failed (not
    /// tried again until the file's bytes change).
    pub(super) canary_error: Mutex<Option<(String, Option<String>)>>,
    pub(super) canary_loads_failed: AtomicU64,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Handle {
    /// A pipeline about to be started from `file`.
    pub fn new(
        name: &str,
        file: &Path,
        engine: Engine,
        spec: PluginSpec,
        canary: Option<(PluginSpec, Rule)>,
    ) -> Self {
        Handle {
            name: name.to_string(),
            file: file.to_path_buf(),
            engine,
            spec,
            live: OnceLock::new(),
            state: Mutex::new(State::Starting),
            ready: AtomicBool::new(false),
            error: Mutex::new(None),
            last_reload_error: Mutex::new(None),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            reload_lock: tokio::sync::Mutex::new(()),
            failed_digest: Mutex::new(None),
            stable_loaded: Mutex::new(None),
            canary,
            canary_error: Mutex::new(None),
            canary_loads_failed: AtomicU64::new(0),
        }
    }

    /// Takes the counters, breaker and plugin slot of the pipeline built for it.
    pub fn attach(&self, p: &Pipeline) {
        let plugin = p.plugin_slot().get();
        *lock(&self.stable_loaded) =
            Some((plugin.file().to_path_buf(), plugin.digest().to_string()));
        let _ = self.live.set(Live {
            slot: p.plugin_slot(),
            stats: p.stats(),
            breaker: p.breaker(),
        });
    }

    pub fn state(&self) -> State {
        *lock(&self.state)
    }

    pub fn set_state(&self, s: State) {
        *lock(&self.state) = s;
        self.ready.store(s == State::Running, Relaxed);
    }

    /// Running with its source open and consuming.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed) && self.source_status().is_none()
    }

    /// Why its source consumes nothing (a Kafka member without partitions);
    /// `None` while it consumes.
    pub fn source_status(&self) -> Option<String> {
        self.stats()?.source_health.idle_reason()
    }

    /// Why the pipeline failed, if it did.
    pub fn error(&self) -> Option<String> {
        lock(&self.error).clone()
    }

    pub fn set_error(&self, e: String) {
        *lock(&self.error) = Some(e);
    }

    /// The plugin version new messages get (`None` before the pipeline started).
    pub fn plugin(&self) -> Option<Plugin> {
        self.live.get().map(|l| l.slot.get())
    }

    pub fn stats(&self) -> Option<&Arc<Stats>> {
        self.live.get().map(|l| &l.stats)
    }

    pub fn breaker_state(&self) -> Option<BreakerState> {
        self.live.get().map(|l| l.breaker.state())
    }

    /// Reloads that succeeded and that failed.
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed),
        )
    }

    /// Why the last reload failed, while no reload succeeded since.
    pub fn last_reload_error(&self) -> Option<String> {
        lock(&self.last_reload_error).clone()
    }

    /// The `handler.plugin` `.wasm` file the stable version was last loaded
    /// from (a promoted canary may run in its place).
    pub fn plugin_file(&self) -> Option<PathBuf> {
        lock(&self.stable_loaded).as_ref().map(|(f, _)| f.clone())
    }

    /// Loads the plugin file again (compile, instantiate, `init` with the
    /// pipeline's config) and only on success installs it for the next
    /// messages. A failure leaves the running version alone and is recorded.
    pub async fn reload(&self) -> Result<Plugin, String> {
        let _guard = self.reload_lock.lock().await;
        let Some(live) = self.live.get() else {
            return Err(format!("pipeline {} is not running", self.name));
        };
        let attempted = std::fs::read(self.plugin_file().unwrap_or_else(|| self.spec.path.clone()))
            .ok()
            .map(|b| crate::engine::cache::digest(&b));
        match Plugin::load(&self.engine, self.spec.clone()).await {
            Ok(p) => {
                let old = live.slot.get();
                live.slot.swap(p.clone());
                *lock(&self.stable_loaded) = Some((p.file().to_path_buf(), p.digest().to_string()));
                self.reloads_ok.fetch_add(1, Relaxed);
                *lock(&self.failed_digest) = None;
                // The running version is the one just loaded: an earlier
                // failure no longer describes it.
                *lock(&self.last_reload_error) = None;
                tracing::info!(pipeline = %self.name, from = %old.digest(), to = %p.digest(), "plugin reloaded");
                Ok(p)
            }
            Err(e) => {
                let e = e.to_string();
                self.reloads_failed.fetch_add(1, Relaxed);
                *lock(&self.last_reload_error) = Some(e.clone());
                *lock(&self.failed_digest) = attempted;
                tracing::error!(pipeline = %self.name, "plugin reload failed, the old version keeps running: {e}");
                Err(e)
            }
        }
    }

    /// The digest of the plugin file's bytes when they are neither the
    /// running version nor a version that already failed to load.
    pub fn changed_plugin(&self) -> Option<String> {
        let (file, current) = lock(&self.stable_loaded).clone()?;
        // Unreadable: removed or being replaced; the next event tells.
        let bytes = std::fs::read(&file).ok()?;
        let digest = crate::engine::cache::digest(&bytes);
        (digest != current && lock(&self.failed_digest).as_deref() != Some(&digest))
            .then_some(digest)
    }

    /// The JSON the admin API shows for this pipeline.
    pub fn info(&self) -> serde_json::Value {
        let plugin = self.plugin().map(|p| {
            serde_json::json!({
                "file": p.file(),
                "digest": p.digest(),
                "loaded_at": humantime::format_rfc3339_millis(p.loaded_at()).to_string(),
                "loaded_at_unix_ms": unix_ms(p.loaded_at()),
            })
        });
        let stats = self.stats().map(|s| s.snapshot());
        let counts = stats.as_ref().map(|s| {
            serde_json::json!({
                "received": s.received,
                "succeeded": s.succeeded,
                "dead_lettered": s.dead_lettered,
                "dropped": s.dropped,
                "deduplicated": s.deduplicated,
                "redelivered": s.redelivered,
                "retries": s.retries,
                "outputs": s.outputs,
                "fuel_used": s.fuel_used,
                "batched": s.batched,
                "guest_log_dropped": s.guest_log_dropped,
                "shed": s.shed,
                "slow_consumer": s.slow_consumer,
            })
        });
        let failures: BTreeMap<&str, u64> = stats
            .as_ref()
            .map(|s| s.failures.iter().copied().collect())
            .unwrap_or_default();
        let (ok, failed) = self.reloads();
        serde_json::json!({
            "name": self.name,
            "file": self.file,
            "state": self.state(),
            "ready": self.is_ready(),
            "plugin": plugin,
            "breaker": self.breaker_state().map(BreakerState::as_str),
            "counts": counts,
            "failures": failures,
            "in_flight": stats.as_ref().map_or(0, |s| s.in_flight),
            "source_lag": stats.as_ref().and_then(|s| s.source_lag),
            "source_idle": self.source_status(),
            "last_error": stats.and_then(|s| s.last_error),
            "error": self.error(),
            "reloads": { "ok": ok, "failed": failed },
            "last_reload_error": self.last_reload_error(),
            "canary": self.canary_info(),
        })
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Every pipeline of the process and every pipeline file that is invalid
/// right now. Read by the admin API and the metrics.
#[derive(Default)]
pub struct Registry {
    pipelines: RwLock<BTreeMap<String, Arc<Handle>>>,
    invalid: Mutex<BTreeMap<PathBuf, String>>,
    /// Pipeline files named on the command line: each must run for the
    /// process to be ready.
    given: Mutex<Vec<PathBuf>>,
    /// Files whose plugin is being loaded (new or changed).
    loading: Mutex<BTreeSet<PathBuf>>,
    /// The supervisor looked at every file and folder once.
    scanned: AtomicBool,
    /// Canary digests rolled back, by pipeline name, kept across the
    /// pipeline's replacements.
    rejected: Mutex<BTreeMap<String, Vec<String>>>,
}

impl Registry {
    /// All pipelines, by name.
    pub fn pipelines(&self) -> Vec<Arc<Handle>> {
        self.pipelines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Handle>> {
        self.pipelines
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub(crate) fn insert(&self, h: Arc<Handle>) {
        self.pipelines
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(h.name.clone(), h);
    }

    /// Removes `name` if it is still this very handle.
    pub(crate) fn remove(&self, h: &Arc<Handle>) {
        let mut m = self.pipelines.write().unwrap_or_else(|e| e.into_inner());
        if m.get(&h.name).is_some_and(|x| Arc::ptr_eq(x, h)) {
            m.remove(&h.name);
        }
    }

    /// Keeps the canary digests `name` rolled back for the pipeline that replaces it.
    pub(crate) fn keep_rejected(&self, name: &str, digests: Vec<String>) {
        if !digests.is_empty() {
            lock(&self.rejected).insert(name.to_string(), digests);
        }
    }

    /// The canary digests a pipeline of this name rolled back before.
    pub(crate) fn kept_rejected(&self, name: &str) -> Vec<String> {
        lock(&self.rejected).get(name).cloned().unwrap_or_default()
    }

    /// Pipeline files whose last version was refused, with their errors.
    pub fn invalid_files(&self) -> Vec<(PathBuf, String)> {
        lock(&self.invalid)
            .iter()
            .map(|(f, e)| (f.clone(), e.clone()))
            .collect()
    }

    /// Why `file` was refused at its last change, if it was.
    pub fn invalid(&self, file: &Path) -> Option<String> {
        lock(&self.invalid).get(file).cloned()
    }

    pub(crate) fn set_invalid(&self, file: &Path, errors: Option<String>) {
        let mut m = lock(&self.invalid);
        match errors {
            Some(e) => {
                m.insert(file.to_path_buf(), e);
            }
            None => {
                m.remove(file);
            }
        }
    }

    /// Records the pipeline files named on the command line.
    pub(crate) fn set_given(&self, files: Vec<PathBuf>) {
        *lock(&self.given) = files;
    }

    /// Marks `file`'s plugin as being loaded, or no longer.
    pub(crate) fn set_loading(&self, file: &Path, loading: bool) {
        let mut l = lock(&self.loading);
        if loading {
            l.insert(file.to_path_buf());
        } else {
            l.remove(file);
        }
    }

    /// The supervisor has looked at every file and folder once.
    pub(crate) fn set_scanned(&self) {
        self.scanned.store(true, Relaxed);
    }

    /// Ready: every file and folder was looked at, no new pipeline file is
    /// still being loaded, every file named on the command line runs a
    /// pipeline, and every pipeline runs with its source consuming
    /// (finished batch pipelines count as ready; failed ones do not). A
    /// file of a watched folder that was refused does not hold readiness
    /// (it is listed in `invalid_files`); a refused file named on the
    /// command line does.
    pub fn ready(&self) -> bool {
        self.not_ready().is_empty()
    }

    /// Why the process is not ready: one JSON object per reason.
    pub fn not_ready(&self) -> Vec<serde_json::Value> {
        use serde_json::json;
        if !self.scanned.load(Relaxed) {
            return vec![json!({ "reason": "the pipeline files are being read" })];
        }
        let pipelines = self.pipelines();
        // A changed file whose old pipeline runs meanwhile does not count.
        let mut out: Vec<serde_json::Value> = lock(&self.loading)
            .iter()
            .filter(|f| !pipelines.iter().any(|h| h.file == **f))
            .map(|f| json!({ "file": f, "reason": "loading its plugin" }))
            .collect();
        for f in lock(&self.given).iter() {
            if !pipelines.iter().any(|h| h.file == *f) {
                let why = self
                    .invalid(f)
                    .unwrap_or_else(|| "no pipeline runs from it".to_string());
                out.push(json!({ "file": f, "reason": why }));
            }
        }
        for h in &pipelines {
            if !h.is_ready() && h.state() != State::Finished {
                out.push(json!({
                    "name": h.name,
                    "state": h.state(),
                    "error": h.error(),
                    "source": h.source_status(),
                }));
            }
        }
        out
    }
}
