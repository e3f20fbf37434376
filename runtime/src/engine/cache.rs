//! Compiled components cached on disk, keyed by the wasm bytes' digest and
//! the engine's compatibility hash, so a restart does not recompile.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

/// `sha256:<hex>` of the plugin bytes: the identity of a loaded version.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The default cache folder: `$SLUICE_CACHE_DIR`, else `$XDG_CACHE_HOME/sluice`,
/// else `~/.cache/sluice`.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SLUICE_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("sluice"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("sluice"))
}

/// Where the compiled artifact of `bytes` is kept for this engine.
fn entry(dir: &Path, engine: &wasmtime::Engine, digest: &str) -> PathBuf {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    // The key is the file's digest; a core module's component also depends on
    // how it is converted, so a change there must not reuse old artifacts.
    super::core_module::CONVERSION_VERSION.hash(&mut h);
    let hex = digest.trim_start_matches("sha256:");
    dir.join(format!(
        "{}-{:016x}.cwasm",
        &hex[..32.min(hex.len())],
        h.finish()
    ))
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Loaded from the on-disk cache.
    Cache,
    /// Compiled now (and stored in the cache when there is one).
    Compiled,
}

/// Compiles `bytes`, or loads the compiled form from `dir` when present.
/// A cache that cannot be read or written is only a slower start, never an error.
pub fn compile(
    engine: &wasmtime::Engine,
    bytes: &[u8],
    digest: &str,
    dir: Option<&Path>,
) -> wasmtime::Result<(Component, Origin)> {
    let Some(dir) = dir else {
        return Ok((Component::new(engine, bytes)?, Origin::Compiled));
    };
    let path = entry(dir, engine, digest);
    if path.exists() {
        // SAFETY: the file was written by `Component::serialize` of an engine
        // with the same compatibility hash, into a folder only Sluice writes.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => return Ok((c, Origin::Cache)),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unreadable cache entry: {e}")
            }
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = store(&component, dir, &path) {
        tracing::warn!(dir = %dir.display(), "cannot write the compile cache: {e}");
    }
    Ok((component, Origin::Compiled))
}

fn store(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize()?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
