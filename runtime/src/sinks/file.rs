//! The `file` sink: appends one line per record to a file (created when
//! missing) or to standard output (`path = "-"`).
//!
//! * `lines`: the payload bytes as they are, then `\n`. A payload that holds a
//!   `\n` therefore reads back as several lines; use `envelope` when that matters.
//! * `envelope`: [`crate::envelope::encode`] then `\n` (the default for dead letters).
//!
//! A publish batch is encoded into one buffer and written with one `write_all`
//! under a mutex, so lines of concurrent publishers never interleave; `publish`
//! returns once the bytes reached the OS (and, with `fsync = true`, the disk).
//! Every I/O error is a [`FailureClass::Sink`] failure: a full disk is a
//! transient condition from the pipeline's point of view.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use futures::future::BoxFuture;

use super::{Accepted, Record, Sink, done};
use crate::config::{FileSinkConfig, FileSinkFormat};
use crate::envelope;
use crate::failure::{Failure, FailureClass};

/// Where the bytes go.
enum Target {
    File(File),
    Stdout,
}

/// A `file` sink. Cheap to share: publishers serialise on an internal mutex.
pub struct FileSink {
    target: Arc<Mutex<Target>>,
    format: FileSinkFormat,
    fsync: bool,
    /// The path as configured, for error messages.
    path: PathBuf,
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
    Ok(FileSink {
        target: Arc::new(Mutex::new(target)),
        format: cfg.format.unwrap_or(default_format),
        fsync: cfg.fsync,
        path: cfg.path.clone(),
    })
}

impl FileSink {
    /// The format records are written in.
    pub fn format(&self) -> FileSinkFormat {
        self.format
    }

    fn encode(&self, records: &[Record]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(
            records
                .iter()
                .map(|r| {
                    r.payload.len()
                        + 1
                        + if self.format == FileSinkFormat::Lines {
                            0
                        } else {
                            64
                        }
                })
                .sum(),
        );
        for r in records {
            match self.format {
                FileSinkFormat::Lines => buf.extend_from_slice(&r.payload),
                FileSinkFormat::Envelope => buf.extend_from_slice(envelope::encode(r).as_bytes()),
            }
            buf.push(b'\n');
        }
        buf
    }

    /// Writes `buf` (possibly empty) under the lock, flushes, and syncs when asked.
    async fn write(&self, buf: Vec<u8>, sync: bool) -> Result<(), Failure> {
        let target = Arc::clone(&self.target);
        let path = self.path.clone();
        let fail = move |what: &str, e: std::io::Error| {
            Failure::new(
                FailureClass::Sink,
                format!("{what} file sink {}: {e}", path.display()),
            )
        };
        tokio::task::spawn_blocking(move || {
            // A poisoned lock only means another writer panicked mid-call; the
            // file itself is still usable.
            let mut target = target.lock().unwrap_or_else(|p| p.into_inner());
            match &mut *target {
                Target::File(f) => {
                    f.write_all(&buf).map_err(|e| fail("writing to", e))?;
                    if sync {
                        f.sync_data().map_err(|e| fail("syncing", e))?;
                    }
                }
                Target::Stdout => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&buf).map_err(|e| fail("writing to", e))?;
                    out.flush().map_err(|e| fail("flushing", e))?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| Failure::new(FailureClass::Sink, format!("file sink writer task: {e}")))?
    }
}

impl Sink for FileSink {
    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Accepted, Failure>> {
        Box::pin(async move {
            if !records.is_empty() {
                let buf = self.encode(records);
                self.write(buf, self.fsync).await?;
            }
            Ok(done())
        })
    }

    fn close(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.write(Vec::new(), self.fsync)
                .await
                .map_err(|f| anyhow::anyhow!(f.message))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(payload: &[u8]) -> Record {
        Record {
            topic: None,
            key: None,
            payload: Bytes::copy_from_slice(payload),
            headers: Vec::new(),
            id: String::new(),
        }
    }

    fn cfg(path: &Path, format: Option<FileSinkFormat>) -> FileSinkConfig {
        FileSinkConfig {
            path: path.to_path_buf(),
            format,
            fsync: false,
        }
    }

    #[tokio::test]
    async fn appends_lines_and_creates_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        std::fs::write(&path, b"old\n").unwrap();
        let sink = open(&cfg(&path, None), FileSinkFormat::Lines).unwrap();
        sink.publish(&[rec(b"a"), rec(b"\xff b")]).await.unwrap();
        sink.publish(&[]).await.unwrap();
        sink.close().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old\na\n\xff b\n");

        let path2 = dir.path().join("new.txt");
        let sink = open(
            &FileSinkConfig {
                fsync: true,
                ..cfg(&path2, None)
            },
            FileSinkFormat::Lines,
        )
        .unwrap();
        sink.publish(&[rec(b"x")]).await.unwrap();
        assert_eq!(std::fs::read(&path2).unwrap(), b"x\n");
    }

    #[tokio::test]
    async fn default_format_applies_only_when_none_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq.jsonl");
        let sink = open(&cfg(&path, None), FileSinkFormat::Envelope).unwrap();
        assert_eq!(sink.format(), FileSinkFormat::Envelope);
        sink.publish(&[rec(b"p")]).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"payload\":\"p\",\"headers\":[]}\n"
        );
        let sink = open(
            &cfg(&path, Some(FileSinkFormat::Lines)),
            FileSinkFormat::Envelope,
        )
        .unwrap();
        assert_eq!(sink.format(), FileSinkFormat::Lines);
    }

    #[tokio::test]
    async fn missing_directories_are_created_but_a_file_in_the_way_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        open(
            &cfg(&dir.path().join("no/such/file"), None),
            FileSinkFormat::Lines,
        )
        .unwrap();
        assert!(dir.path().join("no/such/file").exists());
        std::fs::write(dir.path().join("plain"), "x").unwrap();
        let err = open(
            &cfg(&dir.path().join("plain/file"), None),
            FileSinkFormat::Lines,
        )
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("file sink"), "{err:#}");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn io_error_is_a_sink_failure() {
        let sink = open(&cfg(Path::new("/dev/full"), None), FileSinkFormat::Lines).unwrap();
        let err = sink.publish(&[rec(b"x")]).await.unwrap_err();
        assert_eq!(err.class, FailureClass::Sink);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_publishers_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let sink = Arc::new(open(&cfg(&path, None), FileSinkFormat::Lines).unwrap());
        let mut tasks = Vec::new();
        for t in 0..8u8 {
            let sink = Arc::clone(&sink);
            tasks.push(tokio::spawn(async move {
                for i in 0..50usize {
                    // Long lines, several per batch, so a torn write would show.
                    let line = vec![b'a' + t; 1000 + i * 37];
                    let batch = [rec(&line), rec(&line), rec(&line)];
                    sink.publish(&batch).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let data = std::fs::read(&path).unwrap();
        let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        assert_eq!(lines.last(), Some(&&b""[..]));
        let lines = &lines[..lines.len() - 1];
        assert_eq!(lines.len(), 8 * 50 * 3);
        for chunk in lines.chunks(3) {
            // Each batch is written whole: three equal lines of one letter.
            assert!(chunk.iter().all(|l| l == &chunk[0]));
            assert!(chunk[0].iter().all(|&b| b == chunk[0][0]));
        }
    }
}
