//! The `file` sink: appends one line per record to a file (created when
//! missing) or to standard output (`path = "-"`).
//!
//! * `lines`: the payload bytes as they are, then `\n`. A payload that holds a
//!   `\n` therefore reads back as several lines; use `envelope` when that matters.
//! * `envelope`: [`crate::envelope::encode`] then `\n` (the default for dead letters).
//!
//! `send` encodes a publish's records into the sink's buffer under a mutex,
//! so the lines of concurrent publishers never interleave, and returns an
//! [`Accepted`] that resolves once a write covering them is done. The first
//! send into an empty buffer starts a flush task: it waits [`LINGER`] (or
//! until [`BIG`] bytes are waiting), then writes everything waiting with one
//! `write` on the blocking pool — one system call and one thread hop for
//! many records. With `fsync = true` each such write is followed by `fsync`
//! before the records are accepted, unless the pipeline's `file` source took
//! the syncing over ([`FileSink::defer_sync`]): it then syncs the file
//! before each checkpoint that covers the records.
//! Every I/O error is a [`FailureClass::Sink`] failure: a full disk is a
//! transient condition from the pipeline's point of view.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::{Accepted, Record, Sink};
use crate::config::{FileSinkConfig, FileSinkFormat};
use crate::envelope;
use crate::failure::{Failure, FailureClass};

/// How long a flush waits for more records after the first ones arrived.
pub const LINGER: Duration = Duration::from_millis(1);
/// Waiting bytes that are written at once, without lingering.
const BIG: usize = 64 << 10;
/// Waiting sends that are written at once, without lingering: half of a
/// worker's default `publish_window`, so that a worker sending small records
/// finds the oldest of its window written instead of waiting out the linger.
const MANY: u64 = 512;
/// Failed writes remembered for the sends they covered.
const FAILURES_KEPT: usize = 256;

/// Where the bytes go.
enum Target {
    File(File),
    Stdout,
}

/// A `file` sink. Cheap to share: publishers serialise on an internal mutex.
pub struct FileSink {
    inner: Arc<Inner>,
    format: FileSinkFormat,
}

struct Inner {
    buf: Mutex<Buf>,
    /// Where the bytes go; taken by the write in progress.
    target: Mutex<Option<Target>>,
    /// Cuts a flush's lingering short (many bytes waiting, or close).
    hurry: Notify,
    /// A duplicate of the file, for syncing outside the writer.
    file: Option<File>,
    /// The path as configured, for error messages.
    path: PathBuf,
    fsync: bool,
}

#[derive(Default)]
struct Buf {
    data: Vec<u8>,
    /// Sends so far (numbered from 1); the bytes of sends up to `sent` are in
    /// `data` or written.
    sent: u64,
    /// Sends whose bytes were written (and synced, when `sync_each`).
    written: u64,
    /// Sync after each write: `fsync = true` and no source took syncing over.
    sync_each: bool,
    /// Sends covered by a failed write: `(first, last, failure)`.
    failures: VecDeque<(u64, u64, Failure)>,
    waiters: Vec<Waker>,
    /// A flush task is running (it looks at the buffer again before ending).
    flushing: bool,
}

/// Opens (creating if missing, appending otherwise) the sink's file, or
/// standard output for `"-"`. `default_format` applies when the config names
/// none: [`FileSinkFormat::Envelope`] for dead letters, [`FileSinkFormat::Lines`]
/// for the others.
pub fn open(cfg: &FileSinkConfig, default_format: FileSinkFormat) -> anyhow::Result<FileSink> {
    let target = if cfg.path == Path::new("-") {
        Target::Stdout
    } else {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("creating the folder of file sink {}", cfg.path.display())
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cfg.path)
            .with_context(|| format!("opening file sink {}", cfg.path.display()))?;
        Target::File(file)
    };
    let file = match &target {
        Target::File(f) => Some(f.try_clone()?),
        Target::Stdout => None,
    };
    let inner = Arc::new(Inner {
        buf: Mutex::new(Buf {
            sync_each: cfg.fsync,
            ..Buf::default()
        }),
        target: Mutex::new(Some(target)),
        hurry: Notify::new(),
        file,
        path: cfg.path.clone(),
        fsync: cfg.fsync,
    });
    Ok(FileSink {
        inner,
        format: cfg.format.unwrap_or(default_format),
    })
}

impl FileSink {
    /// The format records are written in.
    pub fn format(&self) -> FileSinkFormat {
        self.format
    }

    /// With `fsync = true` on a file: stop syncing after each write and hand
    /// the file to the caller, which promises to sync it before it commits
    /// anything the records stand for (the `file` source's checkpoint).
    pub fn defer_sync(&self) -> Option<crate::files::SyncTarget> {
        let file = self.inner.file.as_ref()?;
        if !self.inner.fsync {
            return None;
        }
        let file = file.try_clone().ok()?;
        self.inner.lock().sync_each = false;
        Some(crate::files::SyncTarget::new(file, self.inner.path.clone()))
    }

    fn encode(&self, records: &[Record], buf: &mut Vec<u8>) {
        for r in records {
            match self.format {
                FileSinkFormat::Lines => buf.extend_from_slice(&r.payload),
                FileSinkFormat::Envelope => buf.extend_from_slice(envelope::encode(r).as_bytes()),
            }
            buf.push(b'\n');
        }
    }

    /// Waits until everything sent so far is written (and synced when asked).
    async fn flush(&self) -> Result<(), Failure> {
        let seq = self.inner.lock().sent;
        self.inner.hurry.notify_one();
        Written {
            inner: Arc::clone(&self.inner),
            seq,
        }
        .await
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Buf> {
        // A poisoned lock only means another publisher panicked mid-call;
        // the buffer holds whole sends only.
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, what: &str, e: &std::io::Error) -> Failure {
        Failure::new(
            FailureClass::Sink,
            format!("{what} file sink {}: {e}", self.path.display()),
        )
    }

    /// The flush task: lingers for more bytes, writes everything waiting
    /// with one call on the blocking pool, marks those sends written and
    /// wakes their waiters; ends once the buffer stayed empty.
    async fn flush_task(self: Arc<Self>) {
        let mut spare = Vec::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep(LINGER) => {}
                () = self.hurry.notified() => {}
            }
            let (from, upto, sync) = {
                let mut b = self.lock();
                if b.data.is_empty() {
                    b.flushing = false;
                    return;
                }
                spare.clear();
                std::mem::swap(&mut b.data, &mut spare);
                (b.written + 1, b.sent, b.sync_each)
            };
            let me = Arc::clone(&self);
            let wrote = tokio::task::spawn_blocking(move || {
                let result = me.write(&spare, sync);
                (spare, result)
            })
            .await;
            let result = match wrote {
                Ok((buf, result)) => {
                    spare = buf;
                    result
                }
                Err(e) => {
                    spare = Vec::new();
                    Err(Failure::new(
                        FailureClass::Sink,
                        format!("file sink {} writer task: {e}", self.path.display()),
                    ))
                }
            };
            let mut b = self.lock();
            b.written = upto;
            if let Err(f) = result {
                if b.failures.len() == FAILURES_KEPT {
                    b.failures.pop_front();
                }
                b.failures.push_back((from, upto, f));
            }
            for w in b.waiters.drain(..) {
                w.wake();
            }
        }
    }

    fn write(&self, bytes: &[u8], sync: bool) -> Result<(), Failure> {
        let mut target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        match target.as_mut() {
            Some(t) => self.write_to(t, bytes, sync),
            None => Err(Failure::new(FailureClass::Sink, "file sink closed")),
        }
    }

    fn write_to(&self, target: &mut Target, bytes: &[u8], sync: bool) -> Result<(), Failure> {
        match target {
            Target::File(f) => {
                f.write_all(bytes)
                    .map_err(|e| self.fail("writing to", &e))?;
                if sync {
                    f.sync_data().map_err(|e| self.fail("syncing", &e))?;
                }
            }
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)
                    .map_err(|e| self.fail("writing to", &e))?;
                out.flush().map_err(|e| self.fail("flushing", &e))?;
            }
        }
        Ok(())
    }
}

/// Resolves once send `seq` was written.
struct Written {
    inner: Arc<Inner>,
    seq: u64,
}

impl Future for Written {
    type Output = Result<(), Failure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut b = self.inner.lock();
        if b.written >= self.seq {
            let failed = b
                .failures
                .iter()
                .find(|(first, last, _)| (*first..=*last).contains(&self.seq));
            return Poll::Ready(match failed {
                Some((_, _, f)) => Err(f.clone()),
                None => Ok(()),
            });
        }
        if !b.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            b.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Sink for FileSink {
    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Accepted, Failure>> {
        let accepted: Accepted = if records.is_empty() {
            super::done()
        } else {
            let mut b = self.inner.lock();
            let before = b.data.len();
            self.encode(records, &mut b.data);
            b.sent += 1;
            let seq = b.sent;
            let start = !b.flushing;
            b.flushing = true;
            let hurry =
                (before < BIG && b.data.len() >= BIG) || b.sent.saturating_sub(b.written) == MANY;
            drop(b);
            if start {
                tokio::spawn(Arc::clone(&self.inner).flush_task());
            } else if hurry {
                self.inner.hurry.notify_one();
            }
            Box::pin(Written {
                inner: Arc::clone(&self.inner),
                seq,
            })
        };
        Box::pin(std::future::ready(Ok(accepted)))
    }

    fn close(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.flush().await.map_err(|f| anyhow::anyhow!(f.message))?;
            if let Some(file) = self.inner.file.as_ref().filter(|_| self.inner.fsync) {
                let file = file.try_clone()?;
                tokio::task::spawn_blocking(move || file.sync_data())
                    .await?
                    .map_err(|e| anyhow::anyhow!(self.inner.fail("syncing", &e).message))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
