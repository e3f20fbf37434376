//! File-system events for the supervisor: folders are watched (never single
//! files, whose inode an atomic rename replaces); only `*.toml` and `*.wasm`
//! changes wake it, and bursts are debounced by the caller.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// Watches folders and reports that something relevant changed in one.
pub struct Watcher {
    inner: Option<RecommendedWatcher>,
    watched: HashSet<PathBuf>,
}

fn relevant(kind: &EventKind, path: &Path) -> bool {
    let ext_ok = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("toml" | "wasm")
    );
    let kind_ok = match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    ext_ok && kind_ok
}

impl Watcher {
    /// A watcher sending `()` on `tx` for every relevant change. If the
    /// platform watcher cannot start, the supervisor still polls.
    pub fn new(tx: mpsc::UnboundedSender<()>) -> Self {
        let inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && ev.paths.iter().any(|p| relevant(&ev.kind, p))
            {
                let _ = tx.send(());
            }
        });
        let inner = match inner {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("cannot watch files ({e}); changes are picked up by polling");
                None
            }
        };
        Watcher {
            inner,
            watched: HashSet::new(),
        }
    }

    /// Watches `dir` (not recursively), once.
    pub fn watch_dir(&mut self, dir: &Path) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if self.watched.contains(dir) {
            return;
        }
        if let Some(w) = &mut self.inner {
            match w.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::debug!(dir = %dir.display(), "watching");
                    self.watched.insert(dir.to_path_buf());
                }
                Err(e) => tracing::warn!(dir = %dir.display(), "cannot watch: {e}"),
            }
        }
    }
}
