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

/// How many leading bytes of the file the checkpoint fingerprints, and how
/// many of the bytes just before the checkpointed offset.
const HEAD_LEN: usize = 1024;
/// `"{offset:020} {head_len:04} {head_hash:016x} {device:016x} {inode:016x}
/// {window_len:04} {window_hash:016x}\n"`: the offset, what identifies the
/// file (a hash of its first bytes, its device and inode), and a hash of the
/// bytes before the offset (so a file rewritten in place with the same head
/// is told apart too). A record of the offset alone (written by hand) is
/// honoured as long as it is at a line start.
pub(super) const RECORD_LEN: usize = 20 + 1 + 4 + 1 + 16 + 1 + 16 + 1 + 16 + 1 + 4 + 1 + 16 + 1;

/// The checkpoint file and what is needed to fingerprint the data file.
pub(super) struct Checkpoint {
    file: File,
    pub(super) path: PathBuf,
    data: File,
    /// The data file's device and inode.
    identity: (u64, u64),
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
        Ok(_) => match validate(&text, &data, len, identity(&data)?) {
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
        identity: identity(&data)?,
        head: read_head(&data)?,
        written: start,
    };
    checkpoint.write(start)?;
    if text.len() > RECORD_LEN {
        checkpoint.file.set_len(RECORD_LEN as u64)?;
    }
    Ok((data, start, checkpoint))
}

/// The checkpointed offset, if the checkpoint fits this file; why not
/// otherwise (the caller starts over and says so).
fn validate(text: &str, data: &File, len: u64, identity: (u64, u64)) -> Result<u64, String> {
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
    let rest: Vec<&str> = fields.collect();
    match rest[..] {
        [] => {}
        [head_len, head_hash, ref more @ ..] => {
            let (head_len, head_hash) = (number(head_len, 10)?, number(head_hash, 16)?);
            if head_len > HEAD_LEN as u64 || !hash_matches(data, 0, head_len, head_hash, len)? {
                return Err(
                    "the file's first bytes differ from the checkpoint's: replaced?".into(),
                );
            }
            if let [device, inode, window_len, window_hash] = more[..] {
                if (number(device, 16)?, number(inode, 16)?) != identity {
                    return Err(
                        "the file is not the one checkpointed (another inode): replaced?".into(),
                    );
                }
                let (window_len, window_hash) = (number(window_len, 10)?, number(window_hash, 16)?);
                if window_len > HEAD_LEN as u64
                    || window_len > offset
                    || !hash_matches(data, offset - window_len, window_len, window_hash, len)?
                {
                    return Err(format!(
                        "the bytes before checkpoint offset {offset} differ from the checkpoint's: rewritten?"
                    ));
                }
            } else if !more.is_empty() {
                return Err(format!("malformed checkpoint record {text:?}"));
            }
        }
        _ => return Err(format!("malformed checkpoint record {text:?}")),
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

/// A field of the checkpoint record.
fn number(field: &str, radix: u32) -> Result<u64, String> {
    u64::from_str_radix(field, radix).map_err(|_| format!("bad checkpoint field {field:?}"))
}

/// Whether the `n` bytes of `data` at `pos` hash to `hash`.
fn hash_matches(data: &File, pos: u64, n: u64, hash: u64, len: u64) -> Result<bool, String> {
    if pos + n > len {
        return Ok(false);
    }
    let mut bytes = vec![0; n as usize];
    read_exact_at(data, &mut bytes, pos).map_err(|e| format!("reading the file: {e}"))?;
    Ok(fnv1a(&bytes) == hash)
}

/// The device and inode of a file (zero where the platform has none).
fn identity(f: &File) -> io::Result<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let m = f.metadata()?;
        Ok((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = f;
        Ok((0, 0))
    }
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
        let mut window = offset.min(HEAD_LEN as u64);
        let mut bytes = [0u8; HEAD_LEN];
        if read_exact_at(&self.data, &mut bytes[..window as usize], offset - window).is_err() {
            // Truncated under the reader (it starts over when it sees it): a
            // record without the window still names the offset and the file.
            window = 0;
        }
        let window_hash = fnv1a(&bytes[..window as usize]);
        let (device, inode) = self.identity;
        let rec = format!(
            "{offset:020} {prefix:04} {hash:016x} {device:016x} {inode:016x} {window:04} {window_hash:016x}\n"
        );
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
            self.identity = identity(&data)?;
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
