//! The reader thread of the `file` source: reads the file (or standard
//! input) in blocks with a plain `File`, splits them into lines in memory
//! (each line a slice of its block, not a copy) and hands the lines of each
//! block over a small bounded channel. Following, it waits at the end for a
//! change notice ([`super::follow`]) and notices truncation and rotation.

use std::fs::File;
use std::io::{self, Read, Seek as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::follow::{self, Changes};

/// The read size.
const BLOCK: usize = 256 << 10;
/// A read shorter than this is copied out, so that a few lines do not keep
/// a whole block alive.
const SMALL_READ: usize = BLOCK / 8;
/// Blocks of lines read ahead of the source.
const AHEAD: usize = 2;

/// One line: its byte range in the file and its bytes (at most `max_line`
/// of them; `overflow` more were cut off).
pub(super) struct Line {
    pub(super) start: u64,
    /// Just past the line's newline (or its last byte, at the end of input).
    pub(super) end: u64,
    pub(super) bytes: Bytes,
    pub(super) overflow: u64,
}

pub(super) enum Event {
    Lines(Vec<Line>),
    /// End of input (`follow = false`, or standard input closed).
    End,
    /// The file shrank (`None`: read it again from byte 0) or another file
    /// took its path (read that one from byte 0); the lines after this start over.
    StartOver(Option<File>),
    /// Reading failed; the reader tries again shortly.
    Error(io::Error),
}

pub(super) enum Input {
    Stdin,
    File { data: File, path: PathBuf },
}

/// The source's end of the reader thread; dropping it stops the thread
/// (except one blocked reading standard input, which ends with the process).
pub(super) struct Reader {
    pub(super) rx: mpsc::Receiver<Event>,
    stop: Arc<AtomicBool>,
    wake: Option<SyncSender<()>>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(w) = &self.wake {
            let _ = w.try_send(());
        }
    }
}

/// Starts reading `input` at byte `start`.
pub(super) fn spawn(input: Input, start: u64, follow: bool, max_line: usize) -> io::Result<Reader> {
    let (tx, rx) = mpsc::channel(AHEAD);
    let stop = Arc::new(AtomicBool::new(false));
    let changes = match &input {
        Input::File { path, .. } if follow => Some(Changes::new(path)),
        _ => None,
    };
    let wake = changes.as_ref().map(Changes::waker);
    let mut thread = Thread {
        tx,
        stop: Arc::clone(&stop),
        follow,
        max_line,
        changes,
    };
    std::thread::Builder::new()
        .name("sluice-file-reader".into())
        .spawn(move || match input {
            Input::Stdin => thread.run(io::stdin().lock(), start, None),
            Input::File { mut data, path } => {
                if let Err(e) = data.seek(io::SeekFrom::Start(start)) {
                    let _ = thread.tx.blocking_send(Event::Error(e));
                    return;
                }
                thread.run(data, start, Some(path))
            }
        })?;
    Ok(Reader { rx, stop, wake })
}

struct Thread {
    tx: mpsc::Sender<Event>,
    stop: Arc<AtomicBool>,
    follow: bool,
    max_line: usize,
    changes: Option<Changes>,
}

/// What can be read: standard input or a file (only a file is followed).
trait Readable: Read {
    fn file(&self) -> Option<&File>;
    fn replace(&mut self, _with: File) {}
}
impl Readable for io::StdinLock<'_> {
    fn file(&self) -> Option<&File> {
        None
    }
}
impl Readable for File {
    fn file(&self) -> Option<&File> {
        Some(self)
    }
    fn replace(&mut self, with: File) {
        *self = with;
    }
}

impl Thread {
    fn send(&self, ev: Event) -> bool {
        !self.stop.load(Relaxed) && self.tx.blocking_send(ev).is_ok()
    }

    fn flush(&self, lines: &mut Vec<Line>) -> bool {
        lines.is_empty() || self.send(Event::Lines(std::mem::take(lines)))
    }

    fn run(&mut self, mut input: impl Readable, start: u64, path: Option<PathBuf>) {
        let mut split = Splitter::new(start, self.max_line);
        let mut lines = Vec::new();
        let mut buf = BytesMut::zeroed(BLOCK);
        loop {
            if self.stop.load(Relaxed) {
                return;
            }
            let n = match input.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !self.send(Event::Error(e)) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            if n > 0 {
                let block = if n < SMALL_READ {
                    Bytes::copy_from_slice(&buf[..n])
                } else {
                    let mut full = std::mem::replace(&mut buf, BytesMut::zeroed(BLOCK));
                    full.truncate(n);
                    full.freeze()
                };
                split.push(block, &mut lines);
                if !self.flush(&mut lines) {
                    return;
                }
                continue;
            }
            // At the end.
            let (Some(file), Some(path), true) = (input.file(), &path, self.follow) else {
                split.finish(&mut lines);
                if self.flush(&mut lines) {
                    let _ = self.send(Event::End);
                }
                return;
            };
            if file.metadata().is_ok_and(|m| m.len() < split.pos) {
                tracing::warn!(file = %path.display(), position = split.pos,
                    "file shrank (truncated?); reading again from byte 0 once in-flight lines settle");
                let rewound = (&*file).seek(io::SeekFrom::Start(0));
                split = Splitter::new(0, self.max_line);
                if let Err(e) = rewound {
                    let _ = self.send(Event::Error(e));
                    return;
                }
                if !self.send(Event::StartOver(None)) {
                    return;
                }
                continue;
            }
            if let Some(new) = follow::replaced(path, file) {
                tracing::warn!(file = %path.display(),
                    "another file took the path (rotated?); reading it from byte 0 once in-flight lines settle");
                // A last line the old file never finished is handed out as it is.
                split.finish(&mut lines);
                let dup = new.try_clone();
                input.replace(new);
                split = Splitter::new(0, self.max_line);
                let ev = match dup {
                    Ok(dup) => Event::StartOver(Some(dup)),
                    Err(e) => Event::Error(e),
                };
                if !self.flush(&mut lines) || !self.send(ev) {
                    return;
                }
                continue;
            }
            if let Some(c) = &self.changes {
                c.wait();
            }
        }
    }
}

/// Splits blocks of bytes into [`Line`]s, carrying a line that spans blocks.
struct Splitter {
    /// File offset just past the bytes pushed so far.
    pos: u64,
    max_line: usize,
    /// Inside a line that started in an earlier block.
    in_line: bool,
    line_start: u64,
    /// Its bytes so far (at most `max_line`) and how many did not fit.
    partial: BytesMut,
    overflow: u64,
}

impl Splitter {
    fn new(pos: u64, max_line: usize) -> Self {
        Splitter {
            pos,
            max_line,
            in_line: false,
            line_start: pos,
            partial: BytesMut::new(),
            overflow: 0,
        }
    }

    fn push(&mut self, block: Bytes, out: &mut Vec<Line>) {
        let base = self.pos;
        self.pos += block.len() as u64;
        let mut from = 0;
        for nl in memchr::memchr_iter(b'\n', &block) {
            if self.in_line {
                self.append(&block[from..nl]);
                self.in_line = false;
                out.push(Line {
                    start: self.line_start,
                    end: base + nl as u64 + 1,
                    bytes: self.partial.split().freeze(),
                    overflow: std::mem::take(&mut self.overflow),
                });
            } else {
                let len = nl - from;
                let kept = len.min(self.max_line);
                out.push(Line {
                    start: base + from as u64,
                    end: base + nl as u64 + 1,
                    bytes: block.slice(from..from + kept),
                    overflow: (len - kept) as u64,
                });
            }
            from = nl + 1;
        }
        if from < block.len() {
            if !self.in_line {
                self.in_line = true;
                self.line_start = base + from as u64;
            }
            self.append(&block[from..]);
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        let fits = self
            .max_line
            .saturating_sub(self.partial.len())
            .min(bytes.len());
        self.partial.extend_from_slice(&bytes[..fits]);
        self.overflow += (bytes.len() - fits) as u64;
    }

    /// The end of input: a last line without a newline is a line.
    fn finish(&mut self, out: &mut Vec<Line>) {
        if self.in_line {
            self.in_line = false;
            out.push(Line {
                start: self.line_start,
                end: self.pos,
                bytes: self.partial.split().freeze(),
                overflow: std::mem::take(&mut self.overflow),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(blocks: &[&[u8]], max: usize) -> Vec<(u64, u64, Vec<u8>, u64)> {
        let mut s = Splitter::new(10, max);
        let mut out = Vec::new();
        for b in blocks {
            s.push(Bytes::copy_from_slice(b), &mut out);
        }
        s.finish(&mut out);
        out.into_iter()
            .map(|l| (l.start, l.end, l.bytes.to_vec(), l.overflow))
            .collect()
    }

    #[test]
    fn lines_across_blocks_keep_offsets_and_the_cap() {
        let got = split(&[b"ab\nc", b"d", b"e\n\nlongline", b"xx\nend"], 4);
        assert_eq!(
            got,
            vec![
                (10, 13, b"ab".to_vec(), 0),
                (13, 17, b"cde".to_vec(), 0),
                (17, 18, b"".to_vec(), 0),
                (18, 29, b"long".to_vec(), 6),
                (29, 32, b"end".to_vec(), 0),
            ]
        );
        assert_eq!(
            split(&[b"12345678\n"], 4),
            vec![(10, 19, b"1234".to_vec(), 4)]
        );
        assert!(split(&[b""], 4).is_empty());
    }
}
