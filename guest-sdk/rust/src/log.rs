//! Logging through the host's `log` import (tagged with the pipeline by the host).
pub use crate::bindings::sluice::handler::host::Level;

/// Writes one line to the runtime's log at `level`.
pub fn log(level: Level, message: impl AsRef<str>) {
    imp(level, message.as_ref())
}

#[cfg(target_arch = "wasm32")]
fn imp(level: Level, message: &str) {
    crate::bindings::sluice::handler::host::log(level, message)
}

// Native builds (unit tests of handler logic) have no host: print instead.
#[cfg(not(target_arch = "wasm32"))]
fn imp(level: Level, message: &str) {
    eprintln!("[{level:?}] {message}")
}

/// Logs at `trace`.
pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message)
}
/// Logs at `debug`.
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message)
}
/// Logs at `info`.
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message)
}
/// Logs at `warn`.
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message)
}
/// Logs at `error`.
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message)
}
