//! Reading files that untrusted configuration names (a plugin, a pipeline
//! file): regular files only, read up to a size cap, and opened so that a
//! FIFO never blocks the reader (`/dev/zero`, a FIFO or a folder is refused
//! with what it is, instead of a hang or an unbounded allocation).

use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Largest plugin file read (the example Python and JavaScript components
/// are 12–18 MB).
pub const MAX_PLUGIN_BYTES: u64 = 256 << 20;

/// Largest pipeline file read.
pub const MAX_PIPELINE_BYTES: u64 = 1 << 20;

/// The bytes of the regular file at `path`, if it holds at most `max`.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a folder"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}, not a regular file"),
        ));
    }
    if meta.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} bytes, more than the {max} bytes allowed", meta.len()),
        ));
    }
    // The file may grow while it is read: never past the cap.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("more than the {max} bytes allowed"),
        ));
    }
    Ok(bytes)
}

/// The text of the regular file at `path`, if it holds at most `max` bytes
/// of UTF-8.
pub fn read_regular_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_regular(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// What a `file` source syncs before its checkpoint: a sink file whose
/// `fsync` it took over.
pub struct SyncTarget {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl SyncTarget {
    /// A file to sync, and its path for error messages.
    pub(crate) fn new(file: std::fs::File, path: std::path::PathBuf) -> Self {
        Self { file, path }
    }

    /// `fsync`s the file's data.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// The sink's path, for error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"hello").unwrap();
        assert_eq!(read_regular(&f, 5).unwrap(), b"hello");
        let e = read_regular(&f, 4).unwrap_err();
        assert!(e.to_string().contains("more than the 4 bytes"), "{e}");
        let e = read_regular(dir.path(), 5).unwrap_err();
        assert!(e.to_string().contains("a folder"), "{e}");
        let e = read_regular(Path::new("/dev/zero"), 5).unwrap_err();
        assert!(e.to_string().contains("a device"), "{e}");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = read_regular(&fifo, 5).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
    }
}
