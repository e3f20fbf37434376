//! The checkpoint file of the `file` source: its record, its validation on
//! open, and the thread that writes it every `checkpoint_every`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::state::Shared;
use crate::config::FileSourceConfig;

/// How many leading bytes of the file the checkpoint fingerprints.
const HEAD_LEN: usize = 1024;
/// `"{offset:020} {prefix_len:04} {hash:016x}\n"`.
pub(super) const RECORD_LEN: usize = 20 + 1 + 4 + 1 + 16 + 1;

/// The checkpoint file and what is needed to fingerprint the data file.
pub(super) struct Checkpoint {
    file: File,
    pub(super) path: PathBuf,
    data: File,
    head: Vec<u8>,
    /// The offset last written.
    pub(super) written: u64,
}

pub use crate::config::default_checkpoint_path;

/// Opens the data file and the checkpoint; returns where to start.
pub(super) fn prepare(cfg: &FileSourceConfig) -> anyhow::Result<(File, u64, Checkpoint)> {
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
    pub(super) fn write(&mut self, offset: u64) -> io::Result<()> {
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

    /// Syncs the checkpoint file.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The data file starts over (truncated, or replaced by `data`): the
    /// checkpoint points at its byte 0.
    pub(super) fn reset(&mut self, data: Option<File>) -> io::Result<()> {
        if let Some(data) = data {
            self.data = data;
        }
        self.head.clear();
        self.write(0)
    }
}

/// The checkpoint thread: waits for a settlement, writes the low-water mark
/// (after syncing the sinks it covers), then rests `every` before the next,
/// until the source is dropped; its last write happens then.
pub(super) fn spawn(
    shared: Arc<Shared>,
    every: Duration,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sluice-checkpoint".into())
        .spawn(move || {
            loop {
                let stop = shared.wait_dirty();
                if let Err(e) = shared.commit() {
                    tracing::warn!(error = %format!("{e:#}"), "checkpoint not written");
                }
                if stop || shared.rest(every) {
                    if let Err(e) = shared.commit() {
                        tracing::warn!(error = %format!("{e:#}"), "checkpoint not written");
                    }
                    return;
                }
            }
        })
}
