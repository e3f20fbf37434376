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

/// The compiled component of `digest` from the cache in `dir`, when there
/// is a readable entry for this engine. An entry that cannot be read is
/// logged and ignored: a cache problem is only a slower start, never an error.
pub(crate) fn lookup(engine: &wasmtime::Engine, dir: &Path, digest: &str) -> Option<Component> {
    let path = entry(dir, engine, digest);
    if !path.exists() {
        return None;
    }
    // A cache entry is native code run without checks: whoever can write it
    // runs code inside Sluice. Only a folder and file this user owns and no
    // one else can write are read.
    if let Err(why) = private(dir, false).and_then(|()| private(&path, true)) {
        tracing::warn!(path = %path.display(), "ignoring the compile cache: {why}");
        return None;
    }
    // SAFETY: the file was written by `Component::serialize` (or the compiler
    // child's `Engine::precompile_component`) of an engine with the same
    // compatibility hash, into a folder only this user can write (checked
    // above).
    match unsafe { Component::deserialize_file(engine, &path) } {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), "ignoring unreadable cache entry: {e}");
            None
        }
    }
}

/// Keeps the serialized component `artifact` of `digest` in `dir`; a
/// failure is logged, never an error.
pub(crate) fn store(engine: &wasmtime::Engine, dir: &Path, digest: &str, artifact: &[u8]) {
    let path = entry(dir, engine, digest);
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        private(dir, false).map_err(std::io::Error::other)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(artifact)?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        tracing::warn!(dir = %dir.display(), "cannot write the compile cache: {e}");
    }
}

/// `Ok` when `path` belongs to this process's user and no one else may write
/// it; a file must also not be a symbolic link (the folder may be one: its
/// target is what is checked).
fn private(path: &Path, file: bool) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let m = if file {
        std::fs::symlink_metadata(path)
    } else {
        std::fs::metadata(path)
    }
    .map_err(|e| format!("{}: {e}", path.display()))?;
    if m.file_type().is_symlink() {
        return Err(format!("{} is a symbolic link", path.display()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to this user ({me})",
            path.display(),
            m.uid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!(
            "{} may be written by others (mode {:o})",
            path.display(),
            m.mode() & 0o777
        ));
    }
    Ok(())
}
