//! The process's log: `tracing` lines written to stderr by a thread of their
//! own, so that a slow or blocked stderr (a full pipe nobody reads) never
//! holds up a pipeline worker or a handler's `log` call. Lines that find the
//! bounded queue full are dropped and counted (`sluice_log_lines_dropped_total`).
//!
//! Lines are text, coloured only when stderr is a terminal (and `NO_COLOR`
//! is unset), or one JSON object per line with `SLUICE_LOG_FORMAT=json`, for
//! log pipelines that parse fields.

use std::io::IsTerminal as _;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Log lines that may wait for stderr; past it new lines are dropped.
pub const QUEUE_LINES: usize = 8192;

/// The variable that picks the line format: `text` (default) or `json`.
pub const FORMAT_VAR: &str = "SLUICE_LOG_FORMAT";

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Format {
    /// The format a [`FORMAT_VAR`] value names; `None` for one it does not.
    pub fn parse(value: &str) -> Option<Format> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Installs the process's subscriber (filter from `$SLUICE_LOG`, default
/// `info`; format from `$SLUICE_LOG_FORMAT`). Keep the guard until the end
/// of `main`: dropping it flushes what is queued (waiting at most about a
/// second for a blocked stderr).
pub fn init() -> WorkerGuard {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("sluice-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let requested = std::env::var(FORMAT_VAR).ok();
    let format = requested
        .as_deref()
        .map_or(Some(Format::Text), Format::parse);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(writer);
    match format.unwrap_or(Format::Text) {
        Format::Json => builder.json().with_ansi(false).init(),
        Format::Text => builder.with_ansi(color).init(),
    }
    if format.is_none() {
        tracing::warn!(
            "{FORMAT_VAR} is {:?}; expected \"text\" or \"json\"; writing text",
            requested
                .unwrap_or_default()
                .escape_debug()
                .take(64)
                .collect::<String>()
        );
    }
    guard
}

/// Log lines dropped because stderr did not keep up (0 before [`init`]).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names() {
        assert_eq!(Format::parse("json"), Some(Format::Json));
        assert_eq!(Format::parse(" JSON "), Some(Format::Json));
        assert_eq!(Format::parse("text"), Some(Format::Text));
        assert_eq!(Format::parse(""), Some(Format::Text));
        assert_eq!(Format::parse("yaml"), None);
    }
}
