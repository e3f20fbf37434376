//! What a plugin is loaded with (a pipeline's `[handler]` table) and why
//! loading it may fail.

use std::path::PathBuf;
use std::time::Duration;

use super::limits::{OutputLimits, guest_text};
use crate::config::HandlerConfig;

/// What a plugin needs to be loaded and run.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The `.wasm` file, or a folder holding exactly one.
    pub path: PathBuf,
    /// The pipeline it serves (labels its logs).
    pub pipeline: String,
    pub fuel: u64,
    pub timeout: Duration,
    pub memory: u64,
    pub max_output_bytes: u64,
    /// Most outputs one message may have.
    pub max_outputs: u32,
    /// Passed to `init`.
    pub config: Vec<(String, String)>,
    pub kv_max_entries: usize,
    pub kv_max_bytes: usize,
    /// Longest a compile may take (with [`super::Compiler::Child`]).
    pub compile_timeout: Duration,
    /// Most memory a compile may use (with [`super::Compiler::Child`]).
    pub compile_memory: u64,
}

impl PluginSpec {
    /// The spec a pipeline's `[handler]` table describes.
    pub fn from_config(pipeline: &str, h: &HandlerConfig) -> Self {
        PluginSpec {
            path: h.plugin.clone(),
            pipeline: pipeline.to_string(),
            fuel: h.fuel,
            timeout: h.timeout.0,
            memory: h.memory.0,
            max_output_bytes: h.max_output_bytes.0,
            max_outputs: h.max_outputs,
            config: h
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            kv_max_entries: h.kv_max_entries,
            kv_max_bytes: h.kv_max_bytes.0 as usize,
            compile_timeout: h.compile_timeout.0,
            compile_memory: h.compile_memory.0,
        }
    }

    /// What a message's outputs are checked against.
    pub fn output_limits(&self) -> OutputLimits {
        OutputLimits {
            max_outputs: self.max_outputs,
            max_output_bytes: self.max_output_bytes,
        }
    }

    /// Generous budgets for tools (`sluice call`) and tests.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PluginSpec {
            path: path.into(),
            pipeline: "call".into(),
            fuel: 100_000_000,
            timeout: Duration::from_secs(1),
            memory: 64 << 20,
            max_output_bytes: 4 << 20,
            max_outputs: 1000,
            config: Vec::new(),
            kv_max_entries: 10_000,
            kv_max_bytes: 4 << 20,
            compile_timeout: crate::config::DEFAULT_COMPILE_TIMEOUT,
            compile_memory: crate::config::DEFAULT_COMPILE_MEMORY,
        }
    }
}

/// Why a plugin could not be loaded. The old version, if any, keeps running.
///
/// A message may quote the plugin's own names (its imports and exports, in
/// the compiler's words): it is shown through [`guest_text`], one bounded
/// line, like everything else a guest writes.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read plugin {path}: {}", guest_text(.message))]
    Read { path: PathBuf, message: String },
    #[error("plugin {path} is not a WebAssembly component: {}", guest_text(.message))]
    NotAComponent { path: PathBuf, message: String },
    #[error("plugin {path} does not implement the sluice:handler world: {}", guest_text(.message))]
    World { path: PathBuf, message: String },
    #[error("plugin {path} failed to start: {}", guest_text(.message))]
    Init { path: PathBuf, message: String },
    /// Compiling it ran past `handler.compile_timeout` or
    /// `handler.compile_memory`, or the compiler process failed.
    #[error("plugin {path} refused: {}", guest_text(.message))]
    Compile { path: PathBuf, message: String },
}
