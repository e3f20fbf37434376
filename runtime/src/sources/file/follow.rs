//! Waiting for a followed file to change, without polling at rest: inotify
//! (through `notify`) on the file's folder wakes the reader when the file,
//! or a file whose name starts with its name (`app.log.1` after a rotation),
//! is written, created or renamed. A slow poll stays as a fallback for file
//! systems that do not report changes (network mounts).

use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};

/// How long the reader waits for a change notice before looking anyway.
const FALLBACK_POLL: Duration = Duration::from_secs(2);
/// The same, when the folder cannot be watched.
const POLL_UNWATCHED: Duration = Duration::from_millis(150);

/// Change notices for one followed file.
pub(super) struct Changes {
    rx: Receiver<()>,
    tx: SyncSender<()>,
    watcher: Option<RecommendedWatcher>,
}

impl Changes {
    /// Watches the folder of `path`; without a watcher (the folder cannot be
    /// watched) the reader polls every 150 ms instead.
    pub(super) fn new(path: &Path) -> Changes {
        // One notice is enough: the reader reads everything there is.
        let (tx, rx) = sync_channel(1);
        let name: Option<OsString> = path.file_name().map(|n| n.to_owned());
        let dir: PathBuf = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let notice = tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let ours = match (&res, &name) {
                (Ok(ev), Some(name)) => {
                    ev.paths.is_empty()
                        || ev.paths.iter().any(|p| {
                            p.file_name().is_some_and(|f| {
                                f.as_encoded_bytes().starts_with(name.as_encoded_bytes())
                            })
                        })
                }
                _ => true,
            };
            if ours {
                let _ = notice.try_send(());
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e,
                    "cannot watch the file's folder; polling every 150 ms");
                None
            }
        };
        Changes { rx, tx, watcher }
    }

    /// A handle that wakes [`Changes::wait`] (to stop the reader).
    pub(super) fn waker(&self) -> SyncSender<()> {
        self.tx.clone()
    }

    /// Waits for a change notice, or the fallback poll.
    pub(super) fn wait(&self) {
        let timeout = if self.watcher.is_some() {
            FALLBACK_POLL
        } else {
            POLL_UNWATCHED
        };
        match self.rx.recv_timeout(timeout) {
            Ok(()) | Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
    }
}

/// Whether two metadata describe the same file.
#[cfg(unix)]
fn same_file(a: &Metadata, b: &Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}
#[cfg(not(unix))]
fn same_file(a: &Metadata, b: &Metadata) -> bool {
    a.len() == b.len() && a.modified().ok() == b.modified().ok()
}

/// The file now at `path`, when it is another file than `open` (the open
/// one was renamed away, or deleted, and a new one created in its place).
pub(super) fn replaced(path: &Path, open: &File) -> Option<File> {
    let now = std::fs::metadata(path).ok()?;
    let ours = open.metadata().ok()?;
    if same_file(&now, &ours) {
        return None;
    }
    File::open(path).ok()
}
