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
//! The checkpoint file (default `<path>.sluice-checkpoint`) is rewritten on
//! every advance with one positioned write of a fixed-size record,
//! `"{offset:020} {prefix_len:04} {fnv1a64:016x}\n"`, where the hash covers
//! the file's first `prefix_len` (up to 1024) bytes. A killed process
//! therefore never leaves a torn or stale checkpoint behind its last advance;
//! it is not fsynced, so a power cut may roll it back (lines repeat, none are
//! lost). On open, a checkpoint past the end of the file, whose head hash does
//! not match, or that does not point at a line start means the file was
//! replaced: Sluice logs a warning and starts at byte 0. Standard input has no
//! checkpoint.
//!
//! # Following
//!
//! With `follow = true` the source polls for appended bytes every 150 ms and
//! never finishes. It follows the open file (like `tail -f`, not `tail -F`);
//! if the file shrinks (copy-truncate rotation) it lets the lines it handed
//! out settle, then starts again at byte 0. With `follow = false`, `next`
//! returns `None` once the end is reached and every line it handed out is
//! settled (a redelivery may still be due until then).

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{Delivery, Settle, Settlement, Source, SourceError};
use crate::config::{FileSourceConfig, FileSourceFormat};
use crate::envelope;
use crate::message::Message;

/// The longest line handed out whole; longer lines are `decode` failures.
pub const MAX_LINE: usize = 64 << 20;
/// How often a following source looks for appended bytes.
const POLL: Duration = Duration::from_millis(150);
/// The read buffer.
const READ_BUF: usize = 256 << 10;
/// How many leading bytes of the file the checkpoint fingerprints.
const HEAD_LEN: usize = 1024;
/// `"{offset:020} {prefix_len:04} {hash:016x}\n"`.
const RECORD_LEN: usize = 20 + 1 + 4 + 1 + 16 + 1;

/// A `file` source. See the module documentation.
pub struct FileSource {
    reader: Box<dyn AsyncBufRead + Send + Unpin>,
    /// The data file (for `fstat` and re-reading after truncation); `None` for stdin.
    data: Option<File>,
    path: PathBuf,
    topic: Option<String>,
    format: FileSourceFormat,
    follow: bool,
    max_in_flight: usize,
    max_line: usize,
    /// Bytes consumed from the reader: the file position just past `partial`.
    consumed: u64,
    /// The line being read (at most `max_line` bytes of it).
    partial: Vec<u8>,
    /// Bytes of the line being read that did not fit in `max_line`.
    overflow: u64,
    /// End of input reached (`follow = false` only).
    eof: bool,
    /// The file shrank: drain, then start again at 0.
    truncated: bool,
    closed: bool,
    paused: watch::Sender<bool>,
    shared: Arc<Shared>,
}

/// State shared between the source and its settle handles.
struct Shared {
    state: Mutex<State>,
    /// Woken by every settlement.
    notify: Notify,
}

struct State {
    /// Start offsets of lines handed out and not settled (incl. pending redeliveries).
    outstanding: BTreeSet<u64>,
    /// Start offset of the next line not yet handed out.
    next_line: u64,
    redeliveries: BinaryHeap<Pending>,
    seq: u64,
    checkpoint: Option<Checkpoint>,
}

/// A line waiting to be handed out again.
struct Pending {
    due: Instant,
    seq: u64,
    offset: u64,
    message: Message,
    decode_error: Option<String>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    /// Reversed, so the max-heap pops the earliest due first.
    fn cmp(&self, other: &Self) -> Ordering {
        Reverse((self.due, self.seq)).cmp(&Reverse((other.due, other.seq)))
    }
}

/// The checkpoint file and what is needed to fingerprint the data file.
struct Checkpoint {
    file: File,
    path: PathBuf,
    data: File,
    head: Vec<u8>,
    written: u64,
}

enum ReadLine {
    Line {
        start: u64,
        bytes: Vec<u8>,
        overflow: u64,
    },
    Eof,
}

/// Opens the source: the file (or stdin for `"-"`) and its checkpoint,
/// positioned at the checkpoint when it is valid for this file. Blocking
/// (a few small reads and one write); call it at start-up.
pub fn open(cfg: &FileSourceConfig) -> anyhow::Result<FileSource> {
    let (reader, data, start, checkpoint): (Box<dyn AsyncBufRead + Send + Unpin>, _, _, _) =
        if cfg.path == Path::new("-") {
            let reader = BufReader::with_capacity(READ_BUF, tokio::io::stdin());
            (Box::new(reader), None, 0, None)
        } else {
            let (data, start, checkpoint) = prepare(cfg)?;
            let reader = reader_at(&data, start)?;
            (reader, Some(data), start, Some(checkpoint))
        };
    Ok(FileSource {
        reader,
        data,
        path: cfg.path.clone(),
        topic: cfg.topic.clone(),
        format: cfg.format,
        follow: cfg.follow,
        max_in_flight: cfg.max_in_flight.max(1),
        max_line: MAX_LINE,
        consumed: start,
        partial: Vec::new(),
        overflow: 0,
        eof: false,
        truncated: false,
        closed: false,
        paused: watch::channel(false).0,
        shared: Arc::new(Shared {
            state: Mutex::new(State {
                outstanding: BTreeSet::new(),
                next_line: start,
                redeliveries: BinaryHeap::new(),
                seq: 0,
                checkpoint,
            }),
            notify: Notify::new(),
        }),
    })
}

/// A buffered async reader over (a duplicate of) `data`, positioned at `pos`.
fn reader_at(data: &File, pos: u64) -> io::Result<Box<dyn AsyncBufRead + Send + Unpin>> {
    let mut file = data.try_clone()?;
    file.seek(io::SeekFrom::Start(pos))?;
    Ok(Box::new(BufReader::with_capacity(
        READ_BUF,
        tokio::fs::File::from_std(file),
    )))
}

/// The default checkpoint path: `<path>.sluice-checkpoint`.
pub fn default_checkpoint_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sluice-checkpoint");
    PathBuf::from(s)
}

/// Opens the data file and the checkpoint; returns where to start.
fn prepare(cfg: &FileSourceConfig) -> anyhow::Result<(File, u64, Checkpoint)> {
    let data = File::open(&cfg.path)
        .with_context(|| format!("opening file source {}", cfg.path.display()))?;
    let len = data.metadata()?.len();
    let cp_path = cfg
        .checkpoint
        .clone()
        .unwrap_or_else(|| default_checkpoint_path(&cfg.path));
    if let Some(dir) = cp_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the folder of checkpoint {}", cp_path.display()))?;
    }
    let mut cp_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&cp_path)
        .with_context(|| format!("opening checkpoint {}", cp_path.display()))?;
    let mut text = String::new();
    let start = match cp_file.read_to_string(&mut text) {
        Err(e) => {
            tracing::warn!(checkpoint = %cp_path.display(), error = %e,
                "unreadable checkpoint; starting at byte 0");
            0
        }
        Ok(_) => match validate(&text, &data, len) {
            Ok(offset) => offset,
            Err(why) => {
                tracing::warn!(checkpoint = %cp_path.display(), file = %cfg.path.display(),
                    "{why}; starting at byte 0");
                0
            }
        },
    };
    let mut checkpoint = Checkpoint {
        file: cp_file,
        path: cp_path,
        data: data.try_clone()?,
        head: read_head(&data)?,
        written: start,
    };
    checkpoint.write(start)?;
    if text.len() > RECORD_LEN {
        checkpoint.file.set_len(RECORD_LEN as u64)?;
    }
    Ok((data, start, checkpoint))
}

/// The checkpointed offset, if the checkpoint fits this file.
fn validate(text: &str, data: &File, len: u64) -> Result<u64, String> {
    let mut fields = text.split_whitespace();
    let Some(first) = fields.next() else {
        return Ok(0); // new (or never written) checkpoint
    };
    let offset: u64 = first
        .parse()
        .map_err(|_| format!("checkpoint does not start with an offset: {first:?}"))?;
    if offset > len {
        return Err(format!(
            "checkpoint offset {offset} is past the end of the file ({len} bytes): replaced or truncated?"
        ));
    }
    if let (Some(prefix), Some(hash)) = (fields.next(), fields.next()) {
        let prefix: u64 = prefix
            .parse()
            .map_err(|_| format!("bad checkpoint prefix length {prefix:?}"))?;
        let hash = u64::from_str_radix(hash, 16)
            .map_err(|_| format!("bad checkpoint fingerprint {hash:?}"))?;
        if prefix > len || prefix > HEAD_LEN as u64 {
            return Err("the file is shorter than the checkpoint's fingerprint: replaced?".into());
        }
        let mut head = vec![0; prefix as usize];
        read_exact_at(data, &mut head, 0).map_err(|e| format!("reading the file: {e}"))?;
        if fnv1a(&head) != hash {
            return Err("the file's first bytes differ from the checkpoint's: replaced?".into());
        }
    }
    if offset > 0 && offset < len {
        let mut b = [0u8];
        read_exact_at(data, &mut b, offset - 1).map_err(|e| format!("reading the file: {e}"))?;
        if b[0] != b'\n' {
            return Err(format!(
                "checkpoint offset {offset} is not at a line start: replaced?"
            ));
        }
    }
    Ok(offset)
}

fn read_head(data: &File) -> io::Result<Vec<u8>> {
    let mut head = vec![0; HEAD_LEN];
    let mut n = 0;
    while n < HEAD_LEN {
        match read_at(data, &mut head[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(n);
    Ok(head)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(f, buf, pos)
}
#[cfg(windows)]
fn read_at(f: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(f, buf, pos)
}

fn read_exact_at(f: &File, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match read_at(f, buf, pos) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(unix)]
fn write_record(f: &File, rec: &[u8]) -> io::Result<()> {
    // One pwrite of a few dozen bytes at offset 0: all or nothing for a killed process.
    std::os::unix::fs::FileExt::write_all_at(f, rec, 0)
}
#[cfg(windows)]
fn write_record(f: &File, rec: &[u8]) -> io::Result<()> {
    let n = std::os::windows::fs::FileExt::seek_write(f, rec, 0)?;
    if n == rec.len() {
        Ok(())
    } else {
        Err(io::ErrorKind::WriteZero.into())
    }
}

impl Checkpoint {
    /// Writes `offset` (unconditionally).
    fn write(&mut self, offset: u64) -> io::Result<()> {
        if self.head.len() < HEAD_LEN && offset > self.head.len() as u64 {
            // The file grew since the head was read: fingerprint more of it.
            self.head = read_head(&self.data)?;
        }
        let prefix = (offset as usize).min(self.head.len());
        let hash = fnv1a(&self.head[..prefix]);
        let rec = format!("{offset:020} {prefix:04} {hash:016x}\n");
        debug_assert_eq!(rec.len(), RECORD_LEN);
        write_record(&self.file, rec.as_bytes())?;
        self.written = offset;
        Ok(())
    }
}

impl State {
    /// The offset to resume at: the first unsettled line, else the next unread one.
    fn low_water(&self) -> u64 {
        self.outstanding.first().copied().unwrap_or(self.next_line)
    }

    /// Persists the low-water mark if it moved forward.
    fn advance(&mut self) -> anyhow::Result<()> {
        let lwm = self.low_water();
        if let Some(cp) = &mut self.checkpoint
            && lwm > cp.written
        {
            cp.write(lwm)
                .with_context(|| format!("writing checkpoint {}", cp.path.display()))?;
        }
        Ok(())
    }

    fn requeue(
        &mut self,
        offset: u64,
        message: Message,
        decode_error: Option<String>,
        delay: Duration,
    ) {
        self.seq += 1;
        self.redeliveries.push(Pending {
            due: Instant::now() + delay,
            seq: self.seq,
            offset,
            message,
            decode_error,
        });
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The settle handle of one line.
struct FileSettle {
    shared: Arc<Shared>,
    offset: u64,
    /// The message as handed out, for a redelivery.
    message: Option<Message>,
    decode_error: Option<String>,
}

impl FileSettle {
    fn redeliver(&mut self, delay: Duration) {
        if let Some(mut message) = self.message.take() {
            message.attempt = message.attempt.saturating_add(1);
            self.shared
                .lock()
                .requeue(self.offset, message, self.decode_error.take(), delay);
            self.shared.notify.notify_one();
        }
    }
}

impl Settle for FileSettle {
    fn settle(mut self: Box<Self>, how: Settlement) -> BoxFuture<'static, anyhow::Result<()>> {
        let result = match how {
            Settlement::Ack | Settlement::Terminated => {
                self.message = None;
                let result = {
                    let mut st = self.shared.lock();
                    st.outstanding.remove(&self.offset);
                    st.advance()
                };
                self.shared.notify.notify_one();
                result
            }
            Settlement::Redeliver { delay } => {
                self.redeliver(delay);
                Ok(())
            }
        };
        Box::pin(async move { result })
    }
}

impl Drop for FileSettle {
    fn drop(&mut self) {
        // Never settled (the message is only taken by a settlement): hand it out again.
        self.redeliver(Duration::ZERO);
    }
}

impl FileSource {
    async fn next_delivery(&mut self) -> Result<Option<Delivery>, SourceError> {
        loop {
            if self.closed {
                return Ok(None);
            }
            if *self.paused.borrow() {
                let mut rx = self.paused.subscribe();
                let _ = rx.wait_for(|paused| !*paused).await;
                continue;
            }
            let (next_due, in_flight) = {
                let mut st = self.shared.lock();
                if st
                    .redeliveries
                    .peek()
                    .is_some_and(|p| p.due <= Instant::now())
                    && let Some(p) = st.redeliveries.pop()
                {
                    drop(st);
                    return Ok(Some(self.redelivery(p)));
                }
                (st.redeliveries.peek().map(|p| p.due), st.outstanding.len())
            };
            if self.eof && in_flight == 0 {
                return Ok(None);
            }
            if self.truncated && in_flight == 0 {
                self.restart_at_zero()?;
                continue;
            }
            if self.eof || self.truncated || in_flight >= self.max_in_flight {
                Self::wait(&self.shared, next_due, None).await;
                continue;
            }
            let read = tokio::select! {
                r = self.read_line() => r,
                () = sleep_until(next_due) => continue,
            };
            let read = read.map_err(|e| {
                SourceError::Transient(format!("reading {}: {e}", self.path.display()))
            })?;
            match read {
                ReadLine::Line {
                    start,
                    bytes,
                    overflow,
                } => {
                    if let Some(d) = self.deliver(start, bytes, overflow)? {
                        return Ok(Some(d));
                    }
                }
                ReadLine::Eof if !self.follow => self.eof = true,
                ReadLine::Eof => {
                    if let Some(data) = &self.data
                        && data.metadata().is_ok_and(|m| m.len() < self.consumed)
                    {
                        tracing::warn!(file = %self.path.display(), position = self.consumed,
                            "file shrank (truncated?); reading again from byte 0 once in-flight lines settle");
                        self.truncated = true;
                        continue;
                    }
                    Self::wait(&self.shared, next_due, Some(POLL)).await;
                }
            }
        }
    }

    /// Waits for a settlement, the next redelivery, or `poll`.
    async fn wait(shared: &Shared, next_due: Option<Instant>, poll: Option<Duration>) {
        tokio::select! {
            () = shared.notify.notified() => {}
            () = sleep_until(next_due) => {}
            () = sleep_until(poll.map(|p| Instant::now() + p)) => {}
        }
    }

    /// Reads up to the next `\n` (cancel-safe: progress lives in `self`).
    async fn read_line(&mut self) -> io::Result<ReadLine> {
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                if !self.follow && (!self.partial.is_empty() || self.overflow > 0) {
                    return Ok(self.take_line(0));
                }
                return Ok(ReadLine::Eof);
            }
            let (used, found) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let content = &buf[..used - usize::from(found)];
            let fits = self
                .max_line
                .saturating_sub(self.partial.len())
                .min(content.len());
            self.partial.extend_from_slice(&content[..fits]);
            self.overflow += (content.len() - fits) as u64;
            self.reader.consume(used);
            self.consumed += used as u64;
            if found {
                return Ok(self.take_line(1));
            }
        }
    }

    fn take_line(&mut self, newline: u64) -> ReadLine {
        let bytes = std::mem::take(&mut self.partial);
        let overflow = std::mem::take(&mut self.overflow);
        let start = self.consumed - bytes.len() as u64 - overflow - newline;
        ReadLine::Line {
            start,
            bytes,
            overflow,
        }
    }

    /// Turns a line into a delivery (or skips a blank `json`/`envelope` line)
    /// and records it as outstanding.
    fn deliver(
        &mut self,
        start: u64,
        bytes: Vec<u8>,
        overflow: u64,
    ) -> Result<Option<Delivery>, SourceError> {
        let skip = overflow == 0
            && self.format != FileSourceFormat::Lines
            && bytes.iter().all(u8::is_ascii_whitespace);
        if skip {
            let mut st = self.shared.lock();
            st.next_line = self.consumed;
            if let Err(e) = st.advance() {
                tracing::warn!(error = %format!("{e:#}"), "checkpoint not written");
            }
            return Ok(None);
        }
        let mut message = Message::new(
            self.topic
                .clone()
                .unwrap_or_else(|| self.path.display().to_string()),
            Bytes::new(),
        );
        message.offset = Some(i64::try_from(start).unwrap_or(i64::MAX));
        let mut decode_error = None;
        if overflow > 0 {
            decode_error = Some(format!(
                "line at byte {start} is {} bytes long, over the {} byte limit; the payload holds its first {} bytes",
                bytes.len() as u64 + overflow,
                self.max_line,
                bytes.len()
            ));
            message.payload = Bytes::from(bytes);
        } else {
            match self.format {
                FileSourceFormat::Lines => message.payload = Bytes::from(bytes),
                FileSourceFormat::Json => {
                    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                        decode_error = Some(format!("line at byte {start} is not JSON: {e}"));
                    }
                    message.payload = Bytes::from(bytes);
                }
                FileSourceFormat::Envelope => {
                    let decoded = std::str::from_utf8(&bytes)
                        .map_err(|e| format!("not UTF-8: {e}"))
                        .and_then(envelope::decode);
                    match decoded {
                        Ok(e) => {
                            if self.topic.is_none()
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
                            message.payload = Bytes::from(bytes);
                        }
                    }
                }
            }
        }
        {
            let mut st = self.shared.lock();
            st.outstanding.insert(start);
            st.next_line = self.consumed;
        }
        Ok(Some(self.delivery(start, message, decode_error)))
    }

    fn delivery(&self, offset: u64, message: Message, decode_error: Option<String>) -> Delivery {
        let settle = Box::new(FileSettle {
            shared: Arc::clone(&self.shared),
            offset,
            message: Some(message.clone()),
            decode_error: decode_error.clone(),
        });
        match decode_error {
            None => Delivery::new(message, settle),
            Some(e) => Delivery::undecodable(message, e, settle),
        }
    }

    fn redelivery(&self, p: Pending) -> Delivery {
        self.delivery(p.offset, p.message, p.decode_error)
    }

    /// After a truncation, once nothing is in flight: read the file from byte 0.
    fn restart_at_zero(&mut self) -> Result<(), SourceError> {
        let io_err = |e: io::Error| {
            SourceError::Transient(format!("re-reading {}: {e}", self.path.display()))
        };
        if let Some(data) = &self.data {
            self.reader = reader_at(data, 0).map_err(io_err)?;
        }
        self.consumed = 0;
        self.partial.clear();
        self.overflow = 0;
        self.truncated = false;
        let mut st = self.shared.lock();
        st.next_line = 0;
        if let Some(cp) = &mut st.checkpoint {
            cp.head.clear();
            if let Err(e) = cp.write(0) {
                tracing::warn!(checkpoint = %cp.path.display(), error = %e, "checkpoint not written");
            }
        }
        Ok(())
    }

    #[cfg(test)]
    fn set_max_line(&mut self, max: usize) {
        self.max_line = max;
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

    fn pause(&mut self) {
        self.paused.send_replace(true);
    }

    fn resume(&mut self) {
        self.paused.send_replace(false);
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        self.closed = true;
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileSinkConfig, FileSinkFormat};
    use crate::message::Header;
    use crate::sinks::{Record, Sink as _};
    use std::io::Write as _;

    fn cfg(path: &Path) -> FileSourceConfig {
        FileSourceConfig {
            path: path.to_path_buf(),
            format: FileSourceFormat::Lines,
            follow: false,
            checkpoint: None,
            topic: None,
            max_in_flight: 1024,
        }
    }

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    async fn next(src: &mut FileSource) -> Delivery {
        tokio::time::timeout(Duration::from_secs(5), src.next())
            .await
            .expect("next() timed out")
            .unwrap()
            .expect("source finished early")
    }

    /// `next()` stays pending for a while (and is cancel-safe to abandon).
    async fn pending(src: &mut FileSource) {
        let r = tokio::time::timeout(Duration::from_millis(300), src.next()).await;
        assert!(r.is_err(), "next() should have been pending");
    }

    fn payload(d: &Delivery) -> &[u8] {
        &d.message.payload
    }

    fn checkpoint_offset(path: &Path) -> u64 {
        let text = std::fs::read_to_string(default_checkpoint_path(path)).unwrap();
        assert_eq!(text.len(), RECORD_LEN);
        text.split_whitespace().next().unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn lines_are_byte_exact_with_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, b"a\r\n\nb\xff\nlast").unwrap();
        let mut src = open(&cfg(&path)).unwrap();
        let mut got = Vec::new();
        while let Some(d) = src.next().await.unwrap() {
            assert_eq!(d.message.attempt, 1);
            assert_eq!(d.message.topic, path.display().to_string());
            assert!(d.decode_error.is_none());
            got.push((d.message.offset.unwrap(), payload(&d).to_vec()));
            d.settle(Settlement::Ack).await.unwrap();
        }
        assert_eq!(
            got,
            vec![
                (0, b"a\r".to_vec()),
                (3, b"".to_vec()),
                (4, b"b\xff".to_vec()),
                (7, b"last".to_vec())
            ]
        );
        assert_eq!(checkpoint_offset(&path), 11);
        // Nothing left after a restart.
        let mut src = open(&cfg(&path)).unwrap();
        assert!(src.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn restart_resumes_at_the_first_unsettled_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        let lines: Vec<String> = (0..10).map(|i| format!("line-{i}")).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let offset = |i: usize| (i * 7) as i64;

        let mut src = open(&cfg(&path)).unwrap();
        let mut ds = Vec::new();
        for _ in 0..6 {
            ds.push(Some(next(&mut src).await));
        }
        // Out of order: 2, 0, 5 (beyond a gap), then 1. Lines 3 and 4 stay unsettled.
        for i in [2, 0, 5] {
            ds[i].take().unwrap().settle(Settlement::Ack).await.unwrap();
        }
        assert_eq!(checkpoint_offset(&path), offset(1) as u64);
        ds[1]
            .take()
            .unwrap()
            .settle(Settlement::Terminated)
            .await
            .unwrap();
        assert_eq!(checkpoint_offset(&path), offset(3) as u64);
        // The process "dies": unsettled deliveries and the source are dropped.
        let unsettled: Vec<_> = ds.into_iter().flatten().collect();
        std::mem::forget(unsettled); // as a kill would: no drop handlers run
        drop(src);

        let mut src = open(&cfg(&path)).unwrap();
        let mut again = Vec::new();
        while let Some(d) = src.next().await.unwrap() {
            again.push((d.message.offset.unwrap(), payload(&d).to_vec()));
            d.settle(Settlement::Ack).await.unwrap();
        }
        // Lines 0..=2 never repeat; 3 and 4 come again; 5 settled past the gap
        // comes again (at least once); nothing is lost.
        let want: Vec<_> = (3..10)
            .map(|i| (offset(i), lines[i].as_bytes().to_vec()))
            .collect();
        assert_eq!(again, want);
    }

    #[tokio::test]
    async fn redeliver_brings_the_line_back_with_the_next_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, b"one\ntwo\n").unwrap();
        let mut src = open(&cfg(&path)).unwrap();
        let d = next(&mut src).await;
        assert_eq!(payload(&d), b"one");
        d.settle(Settlement::Redeliver {
            delay: Duration::from_millis(200),
        })
        .await
        .unwrap();
        let t0 = std::time::Instant::now();
        let two = next(&mut src).await; // not due yet: the next line comes first
        assert_eq!(payload(&two), b"two");
        let d = next(&mut src).await;
        assert!(t0.elapsed() >= Duration::from_millis(150));
        assert_eq!(
            (payload(&d), d.message.offset, d.message.attempt),
            (&b"one"[..], Some(0), 2)
        );
        two.settle(Settlement::Ack).await.unwrap();
        assert_eq!(
            checkpoint_offset(&path),
            0,
            "nothing is checkpointed past a redelivery"
        );
        d.settle(Settlement::Redeliver {
            delay: Duration::ZERO,
        })
        .await
        .unwrap();
        let d = next(&mut src).await;
        assert_eq!(d.message.attempt, 3);
        d.settle(Settlement::Ack).await.unwrap();
        assert_eq!(checkpoint_offset(&path), 8);
        assert!(src.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn dropped_delivery_is_handed_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, b"x\n").unwrap();
        let mut src = open(&cfg(&path)).unwrap();
        drop(next(&mut src).await);
        let d = next(&mut src).await;
        assert_eq!((payload(&d), d.message.attempt), (&b"x"[..], 2));
        d.settle(Settlement::Ack).await.unwrap();
        assert!(src.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn without_follow_the_end_waits_for_outstanding_settles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, b"only\n").unwrap();
        let mut src = open(&cfg(&path)).unwrap();
        let d = next(&mut src).await;
        pending(&mut src).await;
        // A redelivery decided late still arrives.
        let settler = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            d.settle(Settlement::Redeliver {
                delay: Duration::ZERO,
            })
            .await
            .unwrap();
        });
        let d = next(&mut src).await;
        assert_eq!(d.message.attempt, 2);
        settler.await.unwrap();
        let settler = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            d.settle(Settlement::Ack).await.unwrap();
        });
        let t0 = std::time::Instant::now();
        assert!(src.next().await.unwrap().is_none());
        assert!(t0.elapsed() >= Duration::from_millis(80));
        settler.await.unwrap();
    }

    #[tokio::test]
    async fn follow_sees_appended_lines_and_waits_for_the_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, b"a\n").unwrap();
        let mut src = open(&FileSourceConfig {
            follow: true,
            ..cfg(&path)
        })
        .unwrap();
        let a = next(&mut src).await;
        a.settle(Settlement::Ack).await.unwrap();
        pending(&mut src).await;
        append(&path, b"bb");
        pending(&mut src).await; // no newline yet
        append(&path, b"b\nc\n");
        let b = next(&mut src).await;
        assert_eq!((payload(&b), b.message.offset), (&b"bbb"[..], Some(2)));
        let c = next(&mut src).await;
        assert_eq!((payload(&c), c.message.offset), (&b"c"[..], Some(6)));
        b.settle(Settlement::Ack).await.unwrap();
        c.settle(Settlement::Ack).await.unwrap();
        pending(&mut src).await; // following never finishes
        assert_eq!(checkpoint_offset(&path), 8);
    }

    #[tokio::test]
    async fn follow_starts_over_after_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, b"first line\n").unwrap();
        let mut src = open(&FileSourceConfig {
            follow: true,
            ..cfg(&path)
        })
        .unwrap();
        let d = next(&mut src).await;
        pending(&mut src).await;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&path, b"new\n");
        pending(&mut src).await; // the old line is still in flight
        d.settle(Settlement::Ack).await.unwrap();
        let d = next(&mut src).await;
        assert_eq!((payload(&d), d.message.offset), (&b"new"[..], Some(0)));
        d.settle(Settlement::Ack).await.unwrap();
        assert_eq!(checkpoint_offset(&path), 4);
    }

    #[tokio::test]
    async fn bad_json_is_undecodable_with_its_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, b"{\"a\":1}\r\nnot json\xff\n\n  \n[1, 2]").unwrap();
        let mut src = open(&FileSourceConfig {
            format: FileSourceFormat::Json,
            ..cfg(&path)
        })
        .unwrap();
        let mut got = Vec::new();
        while let Some(d) = src.next().await.unwrap() {
            got.push((
                d.message.offset.unwrap(),
                payload(&d).to_vec(),
                d.decode_error.is_some(),
            ));
            d.settle(Settlement::Ack).await.unwrap();
        }
        assert_eq!(
            got,
            vec![
                (0, b"{\"a\":1}\r".to_vec(), false),
                (9, b"not json\xff".to_vec(), true),
                (23, b"[1, 2]".to_vec(), false),
            ]
        );
    }

    #[tokio::test]
    async fn over_long_line_is_undecodable_and_reading_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, b"short\n0123456789abcdef\nok\n").unwrap();
        let mut src = open(&cfg(&path)).unwrap();
        src.set_max_line(8);
        let a = next(&mut src).await;
        let b = next(&mut src).await;
        let c = next(&mut src).await;
        assert!(a.decode_error.is_none());
        assert_eq!((payload(&b), b.message.offset), (&b"01234567"[..], Some(6)));
        assert!(b.decode_error.as_deref().unwrap().contains("16 bytes"));
        assert_eq!((payload(&c), c.message.offset), (&b"ok"[..], Some(23)));
        assert!(c.decode_error.is_none());
        for d in [a, b, c] {
            d.settle(Settlement::Ack).await.unwrap();
        }
        assert!(src.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn envelope_round_trip_through_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq.jsonl");
        let sink = crate::sinks::file::open(
            &FileSinkConfig {
                path: path.clone(),
                format: None,
                fsync: false,
            },
            FileSinkFormat::Envelope,
        )
        .unwrap();
        let records = vec![
            Record {
                topic: Some("orders".into()),
                key: Some(Bytes::from_static(b"\x00k\xff")),
                payload: Bytes::from_static(b"line\nwith newline \xc3\x28"),
                headers: vec![
                    Header::new("sluice-error-class", "fatal"),
                    Header::new("dup", &b"\xff"[..]),
                    Header::new("dup", "2"),
                ],
                id: "1".into(),
            },
            Record {
                topic: None,
                key: None,
                payload: Bytes::from_static("héllo\r".as_bytes()),
                headers: Vec::new(),
                id: "2".into(),
            },
        ];
        sink.publish(&records).await.unwrap();
        append(&path, b"{not an envelope}\n");
        let mut src = open(&FileSourceConfig {
            format: FileSourceFormat::Envelope,
            ..cfg(&path)
        })
        .unwrap();
        for r in &records {
            let d = next(&mut src).await;
            assert!(d.decode_error.is_none(), "{:?}", d.decode_error);
            let want_topic = r
                .topic
                .clone()
                .unwrap_or_else(|| path.display().to_string());
            assert_eq!(d.message.topic, want_topic);
            assert_eq!(d.message.key, r.key);
            assert_eq!(d.message.payload, r.payload);
            assert_eq!(d.message.headers, r.headers);
            d.settle(Settlement::Ack).await.unwrap();
        }
        let bad = next(&mut src).await;
        assert_eq!(payload(&bad), b"{not an envelope}");
        assert!(bad.decode_error.is_some());
        bad.settle(Settlement::Ack).await.unwrap();
        assert!(src.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn max_in_flight_holds_back_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, b"1\n2\n3\n").unwrap();
        let mut src = open(&FileSourceConfig {
            max_in_flight: 2,
            ..cfg(&path)
        })
        .unwrap();
        let a = next(&mut src).await;
        let b = next(&mut src).await;
        pending(&mut src).await;
        // A redelivery does not need a free slot.
        b.settle(Settlement::Redeliver {
            delay: Duration::ZERO,
        })
        .await
        .unwrap();
        let b = next(&mut src).await;
        assert_eq!((payload(&b), b.message.attempt), (&b"2"[..], 2));
        pending(&mut src).await;
        a.settle(Settlement::Ack).await.unwrap();
        let c = next(&mut src).await;
        assert_eq!(payload(&c), b"3");
        b.settle(Settlement::Ack).await.unwrap();
        c.settle(Settlement::Ack).await.unwrap();
        assert!(src.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn pause_resume_and_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, b"1\n2\n3\n").unwrap();
        let mut src = open(&FileSourceConfig {
            topic: Some("t".into()),
            ..cfg(&path)
        })
        .unwrap();
        src.pause();
        pending(&mut src).await;
        src.resume();
        let a = next(&mut src).await;
        assert_eq!((payload(&a), a.message.topic.as_str()), (&b"1"[..], "t"));
        src.close().await;
        assert!(src.next().await.unwrap().is_none());
        // Settling after close still advances the checkpoint.
        a.settle(Settlement::Ack).await.unwrap();
        assert_eq!(checkpoint_offset(&path), 2);
    }

    #[tokio::test]
    async fn a_checkpoint_that_does_not_fit_the_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        let cp = dir.path().join("custom.cp");
        let c = FileSourceConfig {
            checkpoint: Some(cp.clone()),
            ..cfg(&path)
        };
        std::fs::write(&path, b"aaa\nbbb\n").unwrap();
        let mut src = open(&c).unwrap();
        next(&mut src).await.settle(Settlement::Ack).await.unwrap();
        drop(src);
        assert!(
            std::fs::read_to_string(&cp)
                .unwrap()
                .starts_with("00000000000000000004 ")
        );
        // Same file: resume at line 2.
        let mut src = open(&c).unwrap();
        let d = next(&mut src).await;
        assert_eq!(payload(&d), b"bbb");
        std::mem::forget(d);
        drop(src);
        // Replaced by a different file of the same size: start over.
        std::fs::write(&path, b"xxx\nyyy\n").unwrap();
        let mut src = open(&c).unwrap();
        assert_eq!(payload(&next(&mut src).await), b"xxx");
        drop(src);
        // Replaced by a shorter file (checkpoint written at 0 by the last open;
        // write a stale one by hand).
        std::fs::write(&cp, format!("{:020}\n", 100)).unwrap();
        let mut src = open(&c).unwrap();
        assert_eq!(payload(&next(&mut src).await), b"xxx");
        drop(src);
        // A hand-written offset not at a line start: start over.
        std::fs::write(&cp, "2\n").unwrap();
        let mut src = open(&c).unwrap();
        assert_eq!(payload(&next(&mut src).await), b"xxx");
        drop(src);
        // A hand-written offset at a line start is honoured.
        std::fs::write(&cp, "4\n").unwrap();
        let mut src = open(&c).unwrap();
        assert_eq!(payload(&next(&mut src).await), b"yyy");
    }
}
