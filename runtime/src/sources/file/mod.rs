//! The `file` source: one message per line of a file, or of standard input
//! (`path = "-"`), with a position checkpoint so a restart resumes where the
//! last run left off.
//!
//! # Lines
//!
//! A line is the bytes up to a `\n`; the `\n` is not part of it, everything
//! else is, byte for byte (a Windows `\r` before the `\n` stays in the payload).
//! The empty "line" after a file's final `\n` is not a message. A final line
//! without `\n` is a message when `follow = false`; when following, Sluice waits
//! for its newline. [`Message::offset`] is the byte offset of the line's start,
//! [`Message::topic`] the configured `topic`, else the path as written.
//!
//! * `lines`: the line is the payload (an empty line is a message with an
//!   empty payload).
//! * `json`: the line must be one JSON document; it is the payload unchanged.
//!   Blank lines are skipped. A line that is not JSON is handed out as
//!   undecodable (`decode` class) with its raw bytes as the payload.
//! * `envelope`: the line is a [`crate::envelope`]; key, payload and headers
//!   come from it, and the topic is the configured `topic`, else the
//!   envelope's, else the path. Blank lines are skipped; a bad envelope is
//!   undecodable like a bad JSON line.
//!
//! A line longer than [`MAX_LINE`] is handed out as undecodable with its first
//! [`MAX_LINE`] bytes as the payload; reading goes on with the next line.
//!
//! Reading happens on a thread of the source's own ([`reader`]): blocks of
//! 256 KiB, split into lines in memory, handed over a bounded channel a block
//! at a time, so the source hands out lines without a system call or a
//! thread hop per line.
//!
//! # Settling and the checkpoint
//!
//! Lines may settle in any order. The checkpoint holds the byte offset of the
//! first line not yet settled (a contiguous low-water mark, as Kafka commits),
//! so after a crash every unsettled line is read again, and so are lines that
//! settled after it (at least once, never lost). `Ack` and `Terminated` mean
//! done; `Redeliver { delay }` hands the same line (same offset, `attempt + 1`)
//! out again after the delay, and nothing is checkpointed past it. A delivery
//! dropped without being settled is handed out again at once.
//!
//! The checkpoint file (default `<path>.sluice-checkpoint`) is a fixed-size
//! record, `"{offset:020} {prefix_len:04} {fnv1a64:016x}\n"`, where the hash
//! covers the file's first `prefix_len` (up to 1024) bytes, written with one
//! positioned write, so a killed process never leaves a torn one. A thread
//! ([`checkpoint`]) writes it at most every `checkpoint_every` while lines
//! settle, sooner once `max_in_flight` lines settled since the last one, and
//! once more when the source is dropped; `checkpoint_every = 0` writes it in
//! the settling call. The source hands out no line while 2 × `max_in_flight`
//! lines were handed out past the checkpoint written last, so a killed
//! process repeats at most that many. When sinks of the pipeline are `file`
//! sinks with `fsync = true`, they hand their syncing to the source
//! ([`open_with`]): each checkpoint is then sink files synced → checkpoint
//! written → checkpoint synced, so a power cut rolls it back to a point whose
//! outputs are on disk (lines repeat, none are lost). Without such sinks the
//! checkpoint is not synced. On open, a checkpoint past the end of the file,
//! whose head hash does not match, or that does not point at a line start
//! means the file was replaced: Sluice logs a warning and starts at byte 0.
//! Standard input has no checkpoint.
//!
//! # Following
//!
//! With `follow = true` the source never finishes: at the end of the file
//! the reader waits for a change notice of the file's folder ([`follow`])
//! and reads what was appended. If the file shrinks (copy-truncate
//! rotation), or another file takes its path (rename and create rotation,
//! like `tail -F`), the source lets the lines it handed out settle, then
//! reads from byte 0 (of the new file). With `follow = false`, `next`
//! returns `None` once the end is reached and every line it handed out is
//! settled (a redelivery may still be due until then).

mod checkpoint;
mod follow;
mod reader;
mod state;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use checkpoint::default_checkpoint_path;
use reader::{Event, Input, Line, Reader};
use state::{FileSettle, LineRef, Shared};

use super::{Delivery, Source, SourceError};
use crate::config::{FileSourceConfig, FileSourceFormat};
use crate::envelope;
use crate::files::SyncTarget;
use crate::message::Message;

/// The longest line handed out whole; longer lines are `decode` failures.
pub const MAX_LINE: usize = 64 << 20;

/// A `file` source. See the module documentation.
pub struct FileSource {
    reader: Reader,
    /// Lines of the last block received, not yet handed out.
    ready: std::collections::VecDeque<Line>,
    /// The topic of every message (the configured one, else the path).
    topic: String,
    /// Whether the topic was configured (an envelope's topic yields to it).
    topic_set: bool,
    format: FileSourceFormat,
    max_in_flight: usize,
    max_line: usize,
    /// End of input reached (`follow = false`, or standard input closed).
    end: bool,
    /// The file starts over (truncated or replaced): once nothing is in flight.
    start_over: Option<Option<File>>,
    closed: bool,
    paused: watch::Sender<bool>,
    shared: Arc<Shared>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

/// Opens the source: the file (or stdin for `"-"`) and its checkpoint,
/// positioned at the checkpoint when it is valid for this file. Blocking
/// (a few small reads and one write); call it at start-up.
pub fn open(cfg: &FileSourceConfig) -> anyhow::Result<FileSource> {
    open_with(cfg, Vec::new())
}

/// [`open`], syncing `sync` (file sinks with `fsync = true` that handed
/// their syncing over) before each checkpoint, and the checkpoint after it.
pub fn open_with(cfg: &FileSourceConfig, sync: Vec<SyncTarget>) -> anyhow::Result<FileSource> {
    open_inner(cfg, sync, MAX_LINE)
}

fn open_inner(
    cfg: &FileSourceConfig,
    sync: Vec<SyncTarget>,
    max_line: usize,
) -> anyhow::Result<FileSource> {
    let every: Duration = cfg.checkpoint_every.into();
    let (input, start, checkpoint) = if cfg.path == Path::new("-") {
        (Input::Stdin, 0, None)
    } else {
        let (data, start, checkpoint) = checkpoint::prepare(cfg)?;
        let input = Input::File {
            data,
            path: cfg.path.clone(),
        };
        (input, start, Some(checkpoint))
    };
    let has_checkpoint = checkpoint.is_some();
    let max_in_flight = cfg.max_in_flight.max(1);
    let shared = Arc::new(Shared::new(
        start,
        checkpoint,
        sync,
        every.is_zero(),
        max_in_flight,
    ));
    let checkpointer = if has_checkpoint && !every.is_zero() {
        Some(checkpoint::spawn(Arc::clone(&shared), every)?)
    } else {
        None
    };
    let reader = reader::spawn(input, start, cfg.follow, max_line)?;
    Ok(FileSource {
        reader,
        ready: Default::default(),
        topic: cfg.topic.clone().unwrap_or_else(|| path_topic(&cfg.path)),
        topic_set: cfg.topic.is_some(),
        format: cfg.format,
        max_in_flight,
        max_line,
        end: false,
        start_over: None,
        closed: false,
        paused: watch::channel(false).0,
        shared,
        checkpointer,
    })
}

fn path_topic(path: &Path) -> String {
    path.display().to_string()
}

/// What the source can do without waiting.
enum Step {
    Deliver(Delivery),
    Finished,
    /// Wait for a settlement, the next redelivery due, or (`read`) the reader.
    Wait {
        due: Option<Instant>,
        read: bool,
    },
}

impl FileSource {
    /// Hands out what is ready, or says what to wait for.
    fn step(&mut self) -> Result<Step, SourceError> {
        loop {
            if self.closed {
                return Ok(Step::Finished);
            }
            if *self.paused.borrow() {
                return Ok(Step::Wait {
                    due: None,
                    read: false,
                });
            }
            let (due, in_flight, since_checkpoint) = {
                let mut st = self.shared.lock();
                if let Some(p) = st.redeliveries.pop_due(Instant::now()) {
                    drop(st);
                    return Ok(Step::Deliver(self.delivery(p.line, p.attempt)));
                }
                let due = st.redeliveries.next_due();
                (due, st.outstanding.unsettled(), st.outstanding.handed_out())
            };
            let wait = |read| Ok(Step::Wait { due, read });
            if self.start_over.is_some() {
                if in_flight > 0 {
                    return wait(false);
                }
                self.shared.start_over(self.start_over.take().flatten());
                continue;
            }
            // What a kill repeats is bounded: at most 2 × max_in_flight
            // lines are handed out past the checkpoint written last.
            if in_flight >= self.max_in_flight || since_checkpoint >= 2 * self.max_in_flight {
                return wait(false);
            }
            if let Some(line) = self.ready.pop_front() {
                if let Some(d) = self.deliver(line)? {
                    return Ok(Step::Deliver(d));
                }
                continue;
            }
            if self.end {
                return if in_flight == 0 {
                    Ok(Step::Finished)
                } else {
                    wait(false)
                };
            }
            match self.reader.rx.try_recv() {
                Ok(ev) => self.on_event(ev)?,
                Err(mpsc::error::TryRecvError::Empty) => return wait(true),
                Err(mpsc::error::TryRecvError::Disconnected) => self.end = true,
            }
        }
    }

    fn on_event(&mut self, ev: Event) -> Result<(), SourceError> {
        match ev {
            Event::Lines(lines) => self.ready = lines.into(),
            Event::End => self.end = true,
            Event::StartOver(data) => self.start_over = Some(data),
            Event::Error(e) => {
                return Err(SourceError::Transient(format!(
                    "reading {}: {e}",
                    self.topic
                )));
            }
        }
        Ok(())
    }

    async fn next_delivery(&mut self) -> Result<Option<Delivery>, SourceError> {
        loop {
            let (due, read) = match self.step()? {
                Step::Deliver(d) => return Ok(Some(d)),
                Step::Finished => return Ok(None),
                Step::Wait { due, read } => (due, read),
            };
            if *self.paused.borrow() {
                let mut rx = self.paused.subscribe();
                let _ = rx.wait_for(|paused| !*paused).await;
                continue;
            }
            tokio::select! {
                () = self.shared.notify.notified() => {}
                () = sleep_until(due) => {}
                ev = self.reader.rx.recv(), if read => match ev {
                    Some(ev) => self.on_event(ev)?,
                    None => self.end = true,
                },
            }
        }
    }

    /// Turns a line into a delivery (or skips a blank `json`/`envelope` line)
    /// and records it as outstanding.
    fn deliver(&mut self, line: Line) -> Result<Option<Delivery>, SourceError> {
        let skip = line.overflow == 0
            && self.format != FileSourceFormat::Lines
            && line.bytes.iter().all(u8::is_ascii_whitespace);
        let mut st = self.shared.lock();
        st.next_line = line.end;
        if skip {
            if let Err(e) = self.shared.moved(st) {
                tracing::warn!(error = %format!("{e:#}"), "checkpoint not written");
            }
            return Ok(None);
        }
        st.outstanding.push(line.start);
        drop(st);
        let line = LineRef {
            start: line.start,
            bytes: line.bytes,
            overflow: line.overflow,
        };
        Ok(Some(self.delivery(line, 1)))
    }

    /// The delivery of `line`, its `attempt`th.
    fn delivery(&self, line: LineRef, attempt: u32) -> Delivery {
        let (mut message, decode_error) = self.decode(&line);
        message.attempt = attempt;
        let settle = Box::new(FileSettle {
            shared: Arc::clone(&self.shared),
            offset: line.start,
            line: Some(line),
            attempt,
        });
        match decode_error {
            None => Delivery::new(message, settle),
            Some(e) => Delivery::undecodable(message, e, settle),
        }
    }

    /// The message of a line, and why it could not be decoded.
    fn decode(&self, line: &LineRef) -> (Message, Option<String>) {
        let start = line.start;
        let mut message = Message::new(self.topic.clone(), Bytes::new());
        message.offset = Some(i64::try_from(start).unwrap_or(i64::MAX));
        let bytes = line.bytes.clone();
        if line.overflow > 0 {
            let error = format!(
                "line at byte {start} is {} bytes long, over the {} byte limit; the payload holds its first {} bytes",
                bytes.len() as u64 + line.overflow,
                self.max_line,
                bytes.len()
            );
            message.payload = bytes;
            return (message, Some(error));
        }
        let mut decode_error = None;
        match self.format {
            FileSourceFormat::Lines => message.payload = bytes,
            FileSourceFormat::Json => {
                // JSON text is UTF-8; serde_json skips a string it ignores
                // without checking, so check the whole line first.
                let checked = std::str::from_utf8(&bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|text| {
                        serde_json::from_str::<serde::de::IgnoredAny>(text)
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = checked {
                    decode_error = Some(format!("line at byte {start} is not JSON: {e}"));
                }
                message.payload = bytes;
            }
            FileSourceFormat::Envelope => {
                let decoded = std::str::from_utf8(&bytes)
                    .map_err(|e| format!("not UTF-8: {e}"))
                    .and_then(envelope::decode);
                match decoded {
                    Ok(e) => {
                        if !self.topic_set
                            && let Some(t) = e.topic
                        {
                            message.topic = t;
                        }
                        message.key = e.key;
                        message.payload = e.payload;
                        message.headers = e.headers;
                    }
                    Err(e) => {
                        decode_error = Some(format!("line at byte {start}: {e}"));
                        message.payload = bytes;
                    }
                }
            }
        }
        (message, decode_error)
    }

    /// Writes the checkpoint now (on a blocking thread: it may sync files).
    async fn commit(&self) {
        let shared = Arc::clone(&self.shared);
        let done = tokio::task::spawn_blocking(move || shared.commit()).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "checkpoint not written"),
            Err(e) => tracing::warn!(error = %e, "checkpoint task failed"),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Source for FileSource {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Delivery>, SourceError>> {
        Box::pin(self.next_delivery())
    }

    fn try_next(&mut self) -> Option<Result<Option<Delivery>, SourceError>> {
        match self.step() {
            Ok(Step::Deliver(d)) => Some(Ok(Some(d))),
            Ok(Step::Finished) => Some(Ok(None)),
            Ok(Step::Wait { .. }) => None,
            Err(e) => Some(Err(e)),
        }
    }

    fn pause(&mut self) {
        self.paused.send_replace(true);
    }

    fn resume(&mut self) {
        self.paused.send_replace(false);
    }

    /// Stops intake and writes the checkpoint (deliveries settled after
    /// this still reach it: at the next interval, a later close, or the drop).
    fn close(&mut self) -> BoxFuture<'_, ()> {
        self.closed = true;
        Box::pin(self.commit())
    }
}

impl Drop for FileSource {
    fn drop(&mut self) {
        self.shared.stop();
        if let Some(t) = self.checkpointer.take() {
            // Its last write: whatever settled since the last one.
            let _ = t.join();
        }
    }
}
