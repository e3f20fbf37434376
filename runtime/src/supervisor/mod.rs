//! `sluice run`'s supervisor: starts a pipeline per file, watches pipeline
//! folders and plugin files, and applies changes while messages flow —
//! a new file starts a pipeline, a removed one drains and stops, a changed
//! one is validated first and then replaces the old, a changed plugin is
//! loaded and only on success swapped in. One pipeline's failure never stops
//! the others.
//!
//! Loading a plugin (compiling it, up to `handler.compile_timeout`) never
//! holds the supervisor: loads run as tasks whose results come back to
//! [`Supervisor::run`]'s loop, so later deploys, other files and shutdown
//! are served meanwhile. A newer text of a file supersedes its pending load
//! (the older is aborted and its compiler process killed), and shutdown
//! aborts every pending load.

mod canary;
mod registry;
mod retry;
mod watch;

pub use canary::PromoteError;
pub use registry::{Handle, Registry, State};

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch as tokio_watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{self, PipelineConfig};
use crate::engine::{Engine, Plugin, PluginSpec};

/// Quiet time after the last file event before changes are applied: writes
/// come in bursts.
pub const DEBOUNCE: Duration = Duration::from_millis(250);
/// Longest a burst of file events may delay applying them.
const DEBOUNCE_MAX: Duration = Duration::from_secs(3);
/// Safety net: everything is re-checked this often even without events.
const POLL: Duration = Duration::from_secs(5);

/// A running (or finished) pipeline started from one file.
struct Entry {
    handle: Arc<Handle>,
    /// The file's text this pipeline was built from.
    text: String,
    /// Handler instances its workers hold (`handler.concurrency`).
    instances: u32,
    stop: tokio_watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// A new or changed pipeline file whose plugin is being loaded.
struct PendingLoad {
    /// Tells this load's result from a superseded one's.
    id: u64,
    /// The file's text being validated.
    text: String,
    /// Handler instances the pipeline will hold (`handler.concurrency`).
    instances: u32,
    task: JoinHandle<()>,
}

/// What a load task sends back to the supervisor's loop.
struct Loaded {
    file: PathBuf,
    id: u64,
    /// The parsed file and its loaded plugin, or every error (file, line, key).
    result: Result<(PipelineConfig, Plugin), String>,
}

/// A running pipeline's plugin being reloaded after its file changed.
struct PendingReload {
    /// Digest of the plugin file's bytes when the reload began.
    digest: String,
    task: JoinHandle<()>,
}

/// Runs the pipelines of a set of files and folders until shutdown.
pub struct Supervisor {
    engine: Engine,
    registry: Arc<Registry>,
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    entries: BTreeMap<PathBuf, Entry>,
    /// Refused file texts: not validated again until they change.
    refused: BTreeMap<PathBuf, String>,
    /// Files refused for want of handler instances: tried again once a
    /// pipeline stops.
    no_room: BTreeSet<PathBuf>,
    /// Files whose load or start failed for want of a resource (descriptors,
    /// memory, disk): tried again, backing off, while their text stays.
    retries: BTreeMap<PathBuf, retry::Retry>,
    watcher: watch::Watcher,
    events: mpsc::UnboundedReceiver<()>,
    done_tx: mpsc::UnboundedSender<()>,
    done_rx: mpsc::UnboundedReceiver<()>,
    /// Loads of new or changed files, at most one per file.
    pending: BTreeMap<PathBuf, PendingLoad>,
    loaded_tx: mpsc::UnboundedSender<Loaded>,
    loaded_rx: mpsc::UnboundedReceiver<Loaded>,
    next_load: u64,
    /// Plugin reloads of running pipelines, by pipeline file. A reload
    /// records its own result in the registry (as the admin API's does).
    reloads: BTreeMap<PathBuf, PendingReload>,
    /// Canary loads of running pipelines, by pipeline file (as `reloads`).
    canary_loads: BTreeMap<PathBuf, PendingReload>,
    /// When to apply the file events received (debounced), if any came.
    rescan_at: Option<Instant>,
    /// When the current burst of events began (bounds the debounce).
    burst_since: Option<Instant>,
}

impl Supervisor {
    /// A supervisor for `targets`: pipeline files, and folders whose `*.toml`
    /// files are pipelines.
    pub fn new(engine: Engine, targets: Vec<PathBuf>) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (loaded_tx, loaded_rx) = mpsc::unbounded_channel();
        let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) =
            targets.into_iter().partition(|p| p.is_dir());
        let registry = Arc::new(Registry::default());
        registry.set_given(files.clone());
        Supervisor {
            engine,
            registry,
            files,
            dirs,
            entries: BTreeMap::new(),
            refused: BTreeMap::new(),
            no_room: BTreeSet::new(),
            retries: BTreeMap::new(),
            watcher: watch::Watcher::new(tx),
            events,
            done_tx,
            done_rx,
            pending: BTreeMap::new(),
            loaded_tx,
            loaded_rx,
            next_load: 0,
            reloads: BTreeMap::new(),
            canary_loads: BTreeMap::new(),
            rescan_at: None,
            burst_since: None,
        }
    }

    /// What the admin API and the metrics read.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Starts every pipeline, applies changes as they come, and returns when
    /// `shutdown` resolves (after draining every pipeline) or, when only
    /// files were given, once every pipeline has ended. `Ok(false)` when a
    /// pipeline of a file given on the command line (not found in a
    /// folder) could not start or failed.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<bool> {
        for d in self.dirs.clone() {
            self.watcher.watch_dir(&d);
        }
        for f in self.files.clone() {
            self.watcher.watch_dir(f.parent().unwrap_or(Path::new(".")));
        }
        self.rescan().await;
        self.registry.set_scanned();
        tokio::pin!(shutdown);
        let mut poll = tokio::time::interval(POLL);
        poll.reset();
        loop {
            if self.dirs.is_empty()
                && self.pending.is_empty()
                && self.retries.is_empty()
                && !self.entries.values().any(|e| e.handle.state().is_active())
            {
                break;
            }
            let rescan_at = self.rescan_at;
            let retry_at = self.retries.values().map(|r| r.at).min();
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("shutting down: intake stopped, finishing messages in flight");
                    break;
                }
                Some(()) = self.events.recv() => self.debounce(),
                _ = sleep_until(rescan_at), if rescan_at.is_some() => {
                    self.rescan_at = None;
                    self.burst_since = None;
                    self.rescan().await;
                }
                Some(loaded) = self.loaded_rx.recv() => self.finish_load(loaded).await,
                Some(()) = self.done_rx.recv() => {}
                _ = sleep_until(retry_at), if retry_at.is_some() => self.rescan().await,
                _ = poll.tick() => self.rescan().await,
            }
        }
        // Pending loads are dropped: their compiler processes are killed.
        for (_, p) in std::mem::take(&mut self.pending) {
            p.task.abort();
        }
        for (_, r) in std::mem::take(&mut self.reloads) {
            r.task.abort();
        }
        for (_, r) in std::mem::take(&mut self.canary_loads) {
            r.task.abort();
        }
        let files: Vec<PathBuf> = self.entries.keys().cloned().collect();
        for e in self.entries.values() {
            let _ = e.stop.send(true);
        }
        for f in files {
            self.stop(&f, false).await;
        }
        // A pipeline file named on the command line is a job: its failure,
        // or its plugin refused so that it never started, is the result.
        // Pipelines found in a folder belong to a service: their failures
        // were reported while it ran.
        let failed = self.files.iter().any(|f| match self.entries.get(f) {
            Some(e) => e.handle.state() == State::Failed,
            None => self.refused.contains_key(f),
        });
        Ok(!failed)
    }

    /// A file event: changes are applied once no event came for
    /// [`DEBOUNCE`] (writes come in bursts), at most [`DEBOUNCE_MAX`] after
    /// the burst began.
    fn debounce(&mut self) {
        let now = Instant::now();
        let since = *self.burst_since.get_or_insert(now);
        self.rescan_at = Some((now + DEBOUNCE).min(since + DEBOUNCE_MAX));
    }

    /// The pipeline files that should run now.
    fn wanted(&self) -> BTreeSet<PathBuf> {
        let mut out: BTreeSet<PathBuf> =
            self.files.iter().filter(|f| f.exists()).cloned().collect();
        for d in &self.dirs {
            let Ok(rd) = std::fs::read_dir(d) else {
                tracing::warn!(dir = %d.display(), "cannot read the pipeline folder");
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                // Whatever it is (a FIFO, a folder, a dangling link): a
                // `*.toml` that cannot be read is listed as invalid.
                if p.extension().is_some_and(|x| x == "toml") {
                    out.insert(p);
                }
            }
        }
        out
    }

    /// Brings the running pipelines in line with the files: removed files
    /// stop, new and changed ones begin loading, changed plugins reload.
    async fn rescan(&mut self) {
        let wanted = self.wanted();
        let gone: Vec<PathBuf> = self
            .entries
            .keys()
            .filter(|f| !wanted.contains(*f))
            .cloned()
            .collect();
        for f in gone {
            tracing::info!(file = %f.display(), "pipeline file removed: draining");
            self.stop(&f, true).await;
        }
        self.refused.retain(|f, _| wanted.contains(f));
        self.retries.retain(|f, _| wanted.contains(f));
        let stale: Vec<PathBuf> = self
            .pending
            .keys()
            .filter(|f| !wanted.contains(*f))
            .cloned()
            .collect();
        for f in stale {
            self.cancel_load(&f);
        }
        for f in wanted {
            let text = match crate::files::read_regular_text(&f, crate::files::MAX_PIPELINE_BYTES) {
                Ok(text) => text,
                Err(e) => {
                    let error = format!("{}: cannot read the pipeline file: {e}", f.display());
                    if self.registry.invalid(&f).as_deref() != Some(error.as_str()) {
                        tracing::error!("{error}");
                        self.registry.set_invalid(&f, Some(error));
                    }
                    continue;
                }
            };
            match self.retries.get(&f) {
                Some(r) if r.text != text => {
                    self.retries.remove(&f);
                }
                Some(r) if r.at <= Instant::now() && !self.pending.contains_key(&f) => {
                    tracing::info!(file = %f.display(), "trying the pipeline file again");
                    self.refused.remove(&f);
                    self.begin_load(&f, text);
                    continue;
                }
                Some(_) => continue,
                None => {}
            }
            if self.entries.get(&f).is_some_and(|e| e.text == text) {
                // Back to what runs: a refused edit in between is history.
                self.cancel_load(&f);
                self.refused.remove(&f);
                self.registry.set_invalid(&f, None);
                continue;
            }
            if self.refused.get(&f).is_some_and(|t| *t == text) {
                self.cancel_load(&f);
                continue;
            }
            if self.pending.get(&f).is_some_and(|p| p.text == text) {
                continue;
            }
            self.begin_load(&f, text);
        }
        self.reloads.retain(|_, r| !r.task.is_finished());
        self.canary_loads.retain(|_, r| !r.task.is_finished());
        for (f, e) in &self.entries {
            let h = &e.handle;
            if h.state() != State::Running {
                continue;
            }
            for file in [h.plugin_file(), h.canary_file()].into_iter().flatten() {
                self.watcher
                    .watch_dir(file.parent().unwrap_or(Path::new(".")));
            }
            if let Some(digest) = h.changed_canary() {
                begin_reload(&mut self.canary_loads, f, h, digest, true);
            }
            if let Some(digest) = h.changed_plugin() {
                begin_reload(&mut self.reloads, f, h, digest, false);
            }
        }
        for (f, _) in self.registry.invalid_files() {
            if std::fs::symlink_metadata(&f).is_err() {
                self.registry.set_invalid(&f, None);
            }
        }
    }

    /// Parses a new or changed file and, when that passes, loads its plugin
    /// in a task (superseding a pending load of an older text).
    fn begin_load(&mut self, file: &Path, text: String) {
        if self.pending.contains_key(file) {
            tracing::info!(file = %file.display(), "pipeline file changed again: the pending load is superseded");
            self.cancel_load(file);
        }
        let cfg = match config::parse(file, &text) {
            Ok(cfg) => cfg,
            Err(e) => return self.refuse(file, text, e.to_string()),
        };
        if let Err(e) = self.name_free(file, &cfg) {
            return self.refuse(file, text, e);
        }
        if let Err(e) = self.fits(file, &cfg) {
            self.no_room.insert(file.to_path_buf());
            return self.refuse(file, text, e);
        }
        let wanted = instances_of(&cfg);
        self.next_load += 1;
        let id = self.next_load;
        let engine = self.engine.clone();
        let tx = self.loaded_tx.clone();
        let path = file.to_path_buf();
        let at = config::position_of(&text, &["handler", "plugin"]);
        tracing::info!(file = %file.display(), pipeline = %cfg.name, "pipeline file new or changed: loading its plugin");
        let task = tokio::spawn(async move {
            let spec = PluginSpec::from_config(&cfg.name, &cfg.handler);
            let result = match Plugin::load(&engine, spec).await {
                Ok(plugin) => Ok((cfg, plugin)),
                Err(e) => Err(format!("{}{at}: handler.plugin: {e}", path.display())),
            };
            let _ = tx.send(Loaded {
                file: path,
                id,
                result,
            });
        });
        self.registry.set_loading(file, true);
        self.pending.insert(
            file.to_path_buf(),
            PendingLoad {
                id,
                text,
                instances: wanted,
                task,
            },
        );
    }

    /// Aborts the pending load of `file`, if any (its compiler is killed).
    fn cancel_load(&mut self, file: &Path) {
        if let Some(p) = self.pending.remove(file) {
            p.task.abort();
            self.registry.set_loading(file, false);
        }
    }

    /// A load finished: on success the old pipeline of the file (if any)
    /// drains and the new one starts; on failure nothing running changes.
    async fn finish_load(&mut self, loaded: Loaded) {
        let file = loaded.file;
        if self.pending.get(&file).is_none_or(|p| p.id != loaded.id) {
            return; // superseded or cancelled
        }
        let Some(PendingLoad { text, .. }) = self.pending.remove(&file) else {
            return;
        };
        self.registry.set_loading(&file, false);
        let (cfg, plugin) = match loaded.result {
            Ok(x) => x,
            Err(errors) if retry::short_of_resources(&errors) => {
                let errors = self.retry_later(&file, &text, errors);
                return self.refuse(&file, text, errors);
            }
            Err(errors) => return self.refuse(&file, text, errors),
        };
        // Another file may have started a pipeline of this name, or taken
        // the instances, meanwhile.
        if let Err(e) = self.name_free(&file, &cfg) {
            return self.refuse(&file, text, e);
        }
        if let Err(e) = self.fits(&file, &cfg) {
            self.no_room.insert(file.clone());
            return self.refuse(&file, text, e);
        }
        self.registry.set_invalid(&file, None);
        self.refused.remove(&file);
        if self.entries.contains_key(&file) {
            tracing::info!(file = %file.display(), pipeline = %cfg.name, "pipeline file changed: draining the old version");
            self.stop(&file, true).await;
        }
        self.start(&file, text, cfg, plugin).await;
    }

    /// Schedules another try of `file`'s `text`, which failed with `error`
    /// for want of a resource; the error, saying when.
    fn retry_later(&mut self, file: &Path, text: &str, error: String) -> String {
        let failures = self.retries.get(file).map_or(0, |r| r.failures) + 1;
        let r = retry::Retry::after(text.to_string(), failures);
        let error = format!(
            "{error} (short of a resource: trying again in {:.0?})",
            r.delay()
        );
        self.retries.insert(file.to_path_buf(), r);
        error
    }

    /// Remembers a refused text (not validated again until it changes) and
    /// shows its errors; nothing running changes.
    fn refuse(&mut self, file: &Path, text: String, errors: String) {
        tracing::error!(file = %file.display(), "pipeline file refused, nothing changed:\n{errors}");
        self.registry.set_invalid(file, Some(errors));
        self.refused.insert(file.to_path_buf(), text);
    }

    /// Whether the pipeline's workers fit in the engine's instance pool beside
    /// the other files' pipelines (the one it replaces not counted), with
    /// one instance kept free for loading plugins. A pipeline that started
    /// without fitting would have workers waiting for an instance forever.
    fn fits(&self, file: &Path, cfg: &PipelineConfig) -> Result<(), String> {
        let max = self.engine.options().max_instances;
        let running: u32 = self
            .entries
            .iter()
            .filter(|(f, e)| f.as_path() != file && e.handle.state().is_active())
            .map(|(_, e)| e.instances)
            .sum();
        let loading: u32 = self
            .pending
            .iter()
            .filter(|(f, _)| f.as_path() != file)
            .map(|(_, p)| p.instances)
            .sum();
        let used = running.saturating_add(loading);
        let wanted = instances_of(cfg);
        let free = max.saturating_sub(1).saturating_sub(used);
        if wanted > free {
            return Err(format!(
                "{}: handler.concurrency: the pipeline needs {wanted} handler instance(s) and \
                 {free} are free: the process holds at most {max} (--max-instances; one is kept \
                 for loading plugins) and other pipelines hold {used}",
                file.display()
            ));
        }
        Ok(())
    }

    /// Whether no other file runs a pipeline of this name.
    fn name_free(&self, file: &Path, cfg: &PipelineConfig) -> Result<(), String> {
        match self.entries.iter().find(|(f, e)| {
            f.as_path() != file && e.handle.name == cfg.name && e.handle.state().is_active()
        }) {
            Some((other, _)) => Err(format!(
                "{}: name: pipeline {:?} is already run from {}",
                file.display(),
                cfg.name,
                other.display()
            )),
            None => Ok(()),
        }
    }

    /// Opens the pipeline's source and sinks and runs it in a task.
    async fn start(&mut self, file: &Path, text: String, cfg: PipelineConfig, plugin: Plugin) {
        let canary = cfg.handler.canary.as_ref().map(|c| {
            let mut spec = PluginSpec::from_config(&cfg.name, &cfg.handler);
            spec.path = c.plugin.clone();
            (spec, crate::pipeline::canary::Rule::from_config(c))
        });
        let handle = Arc::new(Handle::new(
            &cfg.name,
            file,
            self.engine.clone(),
            PluginSpec::from_config(&cfg.name, &cfg.handler),
            canary,
        ));
        self.registry.insert(handle.clone());
        let (stop, mut stop_rx) = tokio_watch::channel(false);
        let mut entry = Entry {
            handle: handle.clone(),
            text,
            instances: instances_of(&cfg),
            stop,
            task: None,
        };
        let pipeline = match crate::connect::build_with_plugin(&cfg, plugin).await {
            Ok(p) => p,
            Err(e) => {
                let mut e = format!("{e:#}");
                if retry::short_of_resources(&e) {
                    let text = entry.text.clone();
                    e = self.retry_later(file, &text, e);
                }
                tracing::error!(pipeline = %cfg.name, "cannot start: {e}");
                handle.set_error(e);
                handle.set_state(State::Failed);
                self.entries.insert(file.to_path_buf(), entry);
                let _ = self.done_tx.send(());
                return;
            }
        };
        self.retries.remove(file);
        handle.attach(&pipeline);
        handle.remember_rejected(&self.registry.kept_rejected(&cfg.name));
        handle.set_state(State::Running);
        if handle.has_canary_config() {
            // The canary is loaded by the next rescan, right away.
            self.rescan_at = Some(Instant::now());
        }
        if let Some(f) = handle.plugin_file() {
            self.watcher.watch_dir(f.parent().unwrap_or(Path::new(".")));
        }
        tracing::info!(pipeline = %cfg.name, file = %file.display(), "started");
        let done = self.done_tx.clone();
        entry.task = Some(tokio::spawn(async move {
            // Run in a task of its own, so that a panic inside it (a bug)
            // fails this pipeline instead of leaving it `running` forever.
            let name = handle.name.clone();
            let run = tokio::spawn(pipeline.run(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            }));
            let result = match run.await {
                Ok(r) => r,
                Err(e) => Err(crate::pipeline::PipelineError::Crashed {
                    pipeline: name,
                    message: e.to_string(),
                }),
            };
            match result {
                Ok(s) => {
                    let draining = handle.state() == State::Draining;
                    handle.set_state(if draining {
                        State::Stopped
                    } else {
                        State::Finished
                    });
                    let failures: Vec<String> =
                        s.failures.iter().map(|(c, n)| format!("{c}={n}")).collect();
                    eprintln!(
                        "pipeline {}: received {}, succeeded {}, outputs {}, dead-lettered {}, dropped {}, deduplicated {}, retries {}, redelivered {}, failures [{}]",
                        handle.name,
                        s.received,
                        s.succeeded,
                        s.outputs,
                        s.dead_lettered,
                        s.dropped,
                        s.deduplicated,
                        s.retries,
                        s.redelivered,
                        failures.join(" ")
                    );
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    handle.set_error(e.to_string());
                    handle.set_state(State::Failed);
                }
            }
            let _ = done.send(());
        }));
        self.entries.insert(file.to_path_buf(), entry);
    }

    /// Drains the pipeline started from `file`: intake stops, messages in
    /// flight are finished or handed back, sinks are flushed. `forget`
    /// removes it from the registry afterwards.
    async fn stop(&mut self, file: &Path, forget: bool) {
        // Its instances come free: files that did not fit are tried again.
        for f in std::mem::take(&mut self.no_room) {
            self.refused.remove(&f);
        }
        let Some(mut e) = self.entries.remove(file) else {
            return;
        };
        for loads in [&mut self.reloads, &mut self.canary_loads] {
            if let Some(r) = loads.remove(file) {
                r.task.abort();
            }
        }
        if e.handle.state().is_active() {
            e.handle.set_state(State::Draining);
        }
        let _ = e.stop.send(true);
        if let Some(task) = e.task.take()
            && let Err(err) = task.await
        {
            e.handle.set_error(format!("pipeline task crashed: {err}"));
            e.handle.set_state(State::Failed);
            eprintln!("error: pipeline {} crashed: {err}", e.handle.name);
        }
        // A replacing pipeline does not start versions this one rolled back.
        self.registry
            .keep_rejected(&e.handle.name, e.handle.canary_history().rejected);
        if forget {
            self.registry.remove(&e.handle);
            tracing::info!(pipeline = %e.handle.name, "stopped");
        } else {
            self.entries.insert(file.to_path_buf(), e);
        }
    }
}

/// Sleeps until `at`; never wakes without one (the branch is disabled then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Handler instances a pipeline's workers hold: one per worker, two with
/// a canary (one of each version).
fn instances_of(cfg: &PipelineConfig) -> u32 {
    let versions = if cfg.handler.canary.is_some() { 2 } else { 1 };
    u32::try_from(cfg.handler.concurrency.saturating_mul(versions)).unwrap_or(u32::MAX)
}

/// Starts loading `digest` of a running pipeline's plugin file (the canary's
/// when `canary`) in a task, superseding a pending load of other bytes.
fn begin_reload(
    loads: &mut BTreeMap<PathBuf, PendingReload>,
    file: &Path,
    h: &Arc<Handle>,
    digest: String,
    canary: bool,
) {
    let what = if canary { "canary" } else { "plugin" };
    if let Some(r) = loads.get(file) {
        if r.digest == digest {
            return; // already loading these bytes
        }
        r.task.abort();
        tracing::info!(pipeline = %h.name, "{what} file changed again: the pending load is superseded");
    }
    tracing::info!(pipeline = %h.name, "{what} file changed: loading the new version");
    let handle = h.clone();
    let task = tokio::spawn(async move {
        let _ = if canary {
            handle.load_canary().await.map(|_| ())
        } else {
            handle.reload().await.map(|_| ())
        };
    });
    loads.insert(file.to_path_buf(), PendingReload { digest, task });
}
