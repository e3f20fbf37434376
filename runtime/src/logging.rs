//! The process's log: `tracing` lines written to stderr by a thread of their
//! own, so that a slow or blocked stderr (a full pipe nobody reads) never
//! holds up a pipeline worker or a handler's `log` call. Lines that find the
//! bounded queue full are dropped and counted (`sluice_log_lines_dropped_total`).

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Log lines that may wait for stderr; past it new lines are dropped.
pub const QUEUE_LINES: usize = 8192;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the process's subscriber (filter from `$SLUICE_LOG`, default
/// `info`). Keep the guard until the end of `main`: dropping it flushes what
/// is queued (waiting at most about a second for a blocked stderr).
pub fn init() -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("sluice-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(writer)
        .init();
    guard
}

/// Log lines dropped because stderr did not keep up (0 before [`init`]).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}
