//! `sluice run`'s supervisor: starts a pipeline per file, watches pipeline
//! folders and plugin files, and applies changes while messages flow —
//! a new file starts a pipeline, a removed one drains and stops, a changed
//! one is validated first and then replaces the old, a changed plugin is
//! loaded and only on success swapped in. One pipeline's failure never stops
//! the others.

mod registry;
mod watch;

pub use registry::{Handle, Registry, State};

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch as tokio_watch};
use tokio::task::JoinHandle;

use crate::config::{self, PipelineConfig};
use crate::engine::{Engine, Plugin, PluginSpec};

/// Quiet time after the last file event before changes are applied: writes
/// come in bursts.
pub const DEBOUNCE: Duration = Duration::from_millis(250);
/// Safety net: everything is re-checked this often even without events.
const POLL: Duration = Duration::from_secs(5);

/// A running (or finished) pipeline started from one file.
struct Entry {
    handle: Arc<Handle>,
    /// The file's text this pipeline was built from.
    text: String,
    stop: tokio_watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
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
    watcher: watch::Watcher,
    events: mpsc::UnboundedReceiver<()>,
    done_tx: mpsc::UnboundedSender<()>,
    done_rx: mpsc::UnboundedReceiver<()>,
}

impl Supervisor {
    /// A supervisor for `targets`: pipeline files, and folders whose `*.toml`
    /// files are pipelines.
    pub fn new(engine: Engine, targets: Vec<PathBuf>) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (dirs, files) = targets.into_iter().partition(|p| p.is_dir());
        Supervisor {
            engine,
            registry: Arc::new(Registry::default()),
            files,
            dirs,
            entries: BTreeMap::new(),
            refused: BTreeMap::new(),
            watcher: watch::Watcher::new(tx),
            events,
            done_tx,
            done_rx,
        }
    }

    /// What the admin API and the metrics read.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Starts every pipeline, applies changes as they come, and returns when
    /// `shutdown` resolves (after draining every pipeline) or, when only
    /// files were given, once every pipeline has ended. `Ok(false)` when a
    /// pipeline failed (files only).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<bool> {
        for d in self.dirs.clone() {
            self.watcher.watch_dir(&d);
        }
        for f in self.files.clone() {
            self.watcher.watch_dir(f.parent().unwrap_or(Path::new(".")));
        }
        self.rescan().await;
        tokio::pin!(shutdown);
        let mut poll = tokio::time::interval(POLL);
        poll.reset();
        loop {
            if self.dirs.is_empty() && !self.entries.values().any(|e| e.handle.state().is_active())
            {
                break;
            }
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("shutting down: intake stopped, finishing messages in flight");
                    break;
                }
                Some(()) = self.events.recv() => {
                    self.debounce().await;
                    self.rescan().await;
                }
                Some(()) = self.done_rx.recv() => {}
                _ = poll.tick() => self.rescan().await,
            }
        }
        let files: Vec<PathBuf> = self.entries.keys().cloned().collect();
        for e in self.entries.values() {
            let _ = e.stop.send(true);
        }
        for f in files {
            self.stop(&f, false).await;
        }
        // With a folder the process is a service: failures were reported
        // while it ran; with files only it is a job, and a failure is its result.
        let failed = self
            .entries
            .values()
            .any(|e| e.handle.state() == State::Failed);
        Ok(!failed || !self.dirs.is_empty())
    }

    /// Waits until no event came for [`DEBOUNCE`] (at most a few seconds).
    async fn debounce(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(DEBOUNCE, self.events.recv()).await {
                Ok(Some(())) => continue,
                _ => return,
            }
        }
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
                if p.extension().is_some_and(|x| x == "toml") && p.is_file() {
                    out.insert(p);
                }
            }
        }
        out
    }

    /// Brings the running pipelines in line with the files.
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
        for f in wanted {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            if self.entries.get(&f).is_some_and(|e| e.text == text)
                || self.refused.get(&f).is_some_and(|t| *t == text)
            {
                continue;
            }
            self.apply(&f, text).await;
        }
        for e in self.entries.values() {
            let h = &e.handle;
            if h.state() != State::Running {
                continue;
            }
            if let Some(file) = h.plugin_file() {
                self.watcher
                    .watch_dir(file.parent().unwrap_or(Path::new(".")));
            }
            if h.plugin_changed() {
                tracing::info!(pipeline = %h.name, "plugin file changed: loading the new version");
                let _ = h.reload().await;
            }
        }
        for (f, _) in self.registry.invalid_files() {
            if !f.exists() {
                self.registry.set_invalid(&f, None);
            }
        }
    }

    /// Validates a new or changed file; on success replaces what runs from it.
    async fn apply(&mut self, file: &Path, text: String) {
        let (cfg, plugin) = match self.validate(file, &text).await {
            Ok(x) => x,
            Err(errors) => {
                tracing::error!(file = %file.display(), "pipeline file refused, nothing changed:\n{errors}");
                self.registry.set_invalid(file, Some(errors));
                self.refused.insert(file.to_path_buf(), text);
                return;
            }
        };
        self.registry.set_invalid(file, None);
        self.refused.remove(file);
        if self.entries.contains_key(file) {
            tracing::info!(file = %file.display(), pipeline = %cfg.name, "pipeline file changed: draining the old version");
            self.stop(file, true).await;
        }
        self.start(file, text, cfg, plugin).await;
    }

    /// Parses the file and loads its plugin; every error, with file, line and key.
    async fn validate(&self, file: &Path, text: &str) -> Result<(PipelineConfig, Plugin), String> {
        let cfg = config::parse(file, text).map_err(|e| e.to_string())?;
        if let Some((other, _)) = self.entries.iter().find(|(f, e)| {
            f.as_path() != file && e.handle.name == cfg.name && e.handle.state().is_active()
        }) {
            return Err(format!(
                "{}: name: pipeline {:?} is already run from {}",
                file.display(),
                cfg.name,
                other.display()
            ));
        }
        let plugin = Plugin::load(
            &self.engine,
            PluginSpec::from_config(&cfg.name, &cfg.handler),
        )
        .await
        .map_err(|e| format!("{}: handler.plugin: {e}", file.display()))?;
        Ok((cfg, plugin))
    }

    /// Opens the pipeline's source and sinks and runs it in a task.
    async fn start(&mut self, file: &Path, text: String, cfg: PipelineConfig, plugin: Plugin) {
        let handle = Arc::new(Handle::new(
            &cfg.name,
            file,
            self.engine.clone(),
            PluginSpec::from_config(&cfg.name, &cfg.handler),
        ));
        self.registry.insert(handle.clone());
        let (stop, mut stop_rx) = tokio_watch::channel(false);
        let mut entry = Entry {
            handle: handle.clone(),
            text,
            stop,
            task: None,
        };
        let pipeline = match crate::connect::build_with_plugin(&cfg, plugin).await {
            Ok(p) => p,
            Err(e) => {
                let e = format!("{e:#}");
                tracing::error!(pipeline = %cfg.name, "cannot start: {e}");
                handle.set_error(e);
                handle.set_state(State::Failed);
                self.entries.insert(file.to_path_buf(), entry);
                let _ = self.done_tx.send(());
                return;
            }
        };
        handle.attach(&pipeline);
        handle.set_state(State::Running);
        if let Some(f) = handle.plugin_file() {
            self.watcher.watch_dir(f.parent().unwrap_or(Path::new(".")));
        }
        tracing::info!(pipeline = %cfg.name, file = %file.display(), "started");
        let done = self.done_tx.clone();
        entry.task = Some(tokio::spawn(async move {
            let result = pipeline
                .run(async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await;
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
        let Some(mut e) = self.entries.remove(file) else {
            return;
        };
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
        if forget {
            self.registry.remove(&e.handle);
            tracing::info!(pipeline = %e.handle.name, "stopped");
        } else {
            self.entries.insert(file.to_path_buf(), e);
        }
    }
}
