//! Compiling a plugin, bounded: a `.wasm` file is untrusted input, and the
//! time and memory `wit-component` and Cranelift spend on it grow with what
//! the bytes ask for (a small module built against the register allocator
//! can take minutes and gigabytes). So the `sluice` binary compiles in a child
//! process of itself (`sluice __compile`, [`child_main`]) under a memory
//! rlimit (`RLIMIT_DATA` = `handler.compile_memory`) and kills it past a deadline
//! (`handler.compile_timeout`); the child converts core modules, compiles
//! with the engine settings the parent uses ([`super::setup::base_config`]) and
//! writes the serialized component to stdout, which the parent
//! deserializes and keeps in the disk cache. Tests and benchmarks, which
//! link the library without a `sluice` binary and load only the project's
//! own plugins, may compile in process ([`Compiler::InProcess`]).

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use wasmtime::component::Component;

use super::cache::{self, Origin};
use super::core_module::{self, ConvertError};
use super::setup::{Compiler, Engine};
use super::spec::{PluginError, PluginSpec};
use crate::config::units::Size;

/// The first argument that makes the `sluice` binary a compiler child.
pub const CHILD_ARG: &str = "__compile";

/// The child's exit codes besides 0 (the artifact is on stdout); its stderr
/// then holds the reason. Any other ending is a crash.
const EXIT_INVALID: u8 = 2;
const EXIT_WORLD: u8 = 3;
const EXIT_MEMORY: u8 = 4;

/// Reads the plugin at `file` (already read into `bytes`, `digest` its
/// identity) from the disk cache, or compiles it as the engine's
/// [`Compiler`] says and keeps the result in the cache.
pub(super) async fn load(
    engine: &Engine,
    spec: &PluginSpec,
    file: &Path,
    bytes: Vec<u8>,
    digest: &str,
) -> Result<(Component, Origin), PluginError> {
    let fail = |message: String| PluginError::NotAComponent {
        path: file.to_path_buf(),
        message,
    };
    if !is_core_module(&bytes) && !is_component(&bytes) {
        return Err(fail(
            "the file does not start with the wasm magic bytes".into(),
        ));
    }
    let wt = engine.wasmtime().clone();
    let dir = engine.options().cache_dir.clone();
    if let Some(dir) = dir.clone() {
        let d = digest.to_string();
        let w = wt.clone();
        let cached = tokio::task::spawn_blocking(move || cache::lookup(&w, &dir, &d))
            .await
            .map_err(|e| fail(e.to_string()))?;
        if let Some(c) = cached {
            return Ok((c, Origin::Cache));
        }
    }
    let artifact = match &engine.options().compiler {
        Compiler::InProcess => None,
        Compiler::Child { exe } => Some(
            in_child(exe, bytes.clone(), spec)
                .await
                .map_err(|e| e.into_plugin_error(file))?,
        ),
    };
    let d = digest.to_string();
    let done = tokio::task::spawn_blocking(move || -> Result<Component, Refusal> {
        let (component, artifact) = match artifact {
            // SAFETY: the bytes are `Engine::precompile_component`'s output
            // in our own child, from an engine with the same settings: the
            // same trust as the disk cache. wasmtime still checks that the
            // artifact matches this engine's settings.
            Some(a) => match unsafe { Component::deserialize(&wt, &a) } {
                Ok(c) => (c, a),
                Err(e) => {
                    return Err(Refusal::Child(format!(
                        "the compiler's output could not be loaded: {e:#}"
                    )));
                }
            },
            None => {
                let c = Component::new(&wt, convert(bytes)?).map_err(|e| invalid(&e))?;
                let a = if dir.is_some() {
                    c.serialize().ok()
                } else {
                    None
                };
                (c, a.unwrap_or_default())
            }
        };
        if let Some(dir) = &dir
            && !artifact.is_empty()
        {
            cache::store(&wt, dir, &d, &artifact);
        }
        Ok(component)
    })
    .await
    .map_err(|e| fail(e.to_string()))?;
    done.map(|c| (c, Origin::Compiled))
        .map_err(|e| e.into_plugin_error(file))
}

/// Why compiling refused the plugin.
#[derive(Debug)]
enum Refusal {
    /// Not a valid component, or a core module that could not be wrapped.
    Invalid(String),
    /// A core module that does not implement the world.
    World(String),
    /// Compiling ran past `handler.compile_timeout`.
    Timeout(Duration),
    /// Compiling needed more than `handler.compile_memory`.
    Memory(u64),
    /// The child could not run, or ended without saying why.
    Child(String),
}

impl Refusal {
    fn into_plugin_error(self, file: &Path) -> PluginError {
        let path = file.to_path_buf();
        match self {
            Refusal::Invalid(message) => PluginError::NotAComponent { path, message },
            Refusal::World(message) => PluginError::World { path, message },
            Refusal::Timeout(t) => PluginError::Compile {
                path,
                message: format!(
                    "compiling the plugin took longer than handler.compile_timeout = {}",
                    humantime::format_duration(t)
                ),
            },
            Refusal::Memory(m) => PluginError::Compile {
                path,
                message: format!(
                    "compiling the plugin needed more memory than handler.compile_memory = {}",
                    Size(m)
                ),
            },
            Refusal::Child(message) => PluginError::Compile { path, message },
        }
    }
}

/// A core module becomes a component; a component stays as it is.
fn convert(bytes: Vec<u8>) -> Result<Vec<u8>, Refusal> {
    if !is_core_module(&bytes) {
        return Ok(bytes);
    }
    core_module::to_component(&bytes).map_err(|e| match e {
        ConvertError::World(m) => Refusal::World(m),
        ConvertError::Encode(m) => {
            Refusal::Invalid(format!("cannot make a component of the core module: {m}"))
        }
    })
}

fn invalid(e: &wasmtime::Error) -> Refusal {
    Refusal::Invalid(format!("{e:#}"))
}

/// Runs `exe __compile` on `bytes` under the spec's limits: the serialized
/// component, or why not.
async fn in_child(exe: &Path, bytes: Vec<u8>, spec: &PluginSpec) -> Result<Vec<u8>, Refusal> {
    let memory = spec.compile_memory;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg(CHILD_ARG)
        // Nothing of the parent's environment (secrets among it) is needed.
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A timeout, a newer version of the file or shutdown drops the
        // future holding the child: it is killed then, not left compiling.
        .kill_on_drop(true);
    let limit = libc::rlim_t::try_from(memory).unwrap_or(libc::RLIM_INFINITY);
    // SAFETY: between fork and exec only async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            let rl = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // RLIMIT_DATA, not RLIMIT_AS: since Linux 4.7 it counts every
            // private writable mapping, which is where mimalloc (and so
            // Cranelift) and wasmtime's code buffers get memory, but not the
            // binary's own mapping (134 MB in a debug build, 4x a release
            // one) nor address space reserved and never made writable. So a
            // limit means the same in every build. Measured: the 12 MB JS
            // component (580 MB RSS) compiles under 768 MiB of RLIMIT_DATA
            // but needs 1 GiB of RLIMIT_AS; a bomb under either fails its
            // next allocation, and Rust aborts saying so.
            if libc::setrlimit(libc::RLIMIT_DATA, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Killed with the parent, even when the parent is SIGKILLed.
            // (The "parent" is the thread that forked: a tokio worker, which
            // lives as long as the runtime.)
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let run = async {
        let mut child = cmd
            .spawn()
            .map_err(|e| Refusal::Child(format!("cannot start the compiler {exe:?}: {e}")))?;
        let mut stdin = child.stdin.take();
        let feed = async move {
            if let Some(s) = stdin.as_mut() {
                // A child that ends early (out of memory) closes the pipe;
                // its exit status says why.
                let _ = s.write_all(&bytes).await;
            }
            drop(stdin);
        };
        let (_, out) = tokio::join!(feed, child.wait_with_output());
        out.map_err(|e| Refusal::Child(format!("the compiler failed: {e}")))
    };
    let out = match tokio::time::timeout(spec.compile_timeout, run).await {
        Ok(out) => out?,
        Err(_) => return Err(Refusal::Timeout(spec.compile_timeout)),
    };
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match out.status.code() {
        Some(0) => Ok(out.stdout),
        Some(c) if c == i32::from(EXIT_INVALID) => Err(Refusal::Invalid(said)),
        Some(c) if c == i32::from(EXIT_WORLD) => Err(Refusal::World(said)),
        Some(c) if c == i32::from(EXIT_MEMORY) => Err(Refusal::Memory(memory)),
        _ if out_of_memory(&said) => Err(Refusal::Memory(memory)),
        _ => Err(Refusal::Child(format!(
            "the compiler ended unexpectedly ({}): {}",
            out.status,
            tail(&said)
        ))),
    }
}

/// Whether the child ran out of memory, by what it said: Rust's allocation
/// failure message (then `abort`), or a failed `mmap` (wasmtime's code
/// memory) turned into an error.
fn out_of_memory(stderr: &str) -> bool {
    stderr.contains("memory allocation of")
        || stderr.contains("Cannot allocate memory")
        || stderr.contains("out of memory")
}

/// The last lines of the child's stderr, for an error message.
fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(500);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[start..]
}

/// The compiler child: the plugin file's bytes on stdin, the serialized
/// component on stdout. Exit codes: 0 done, 2 not a valid component, 3 a
/// core module not implementing the world, 4 out of memory (the reason on
/// stderr). Runs before anything else in `main` (no logging, no tokio).
pub fn child_main() -> ExitCode {
    let fail = |code: u8, message: &str| {
        eprintln!("{message}");
        ExitCode::from(code)
    };
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut bytes) {
        return fail(1, &format!("cannot read the plugin: {e}"));
    }
    let component = match convert(bytes) {
        Ok(c) => c,
        Err(Refusal::World(m)) => return fail(EXIT_WORLD, &m),
        Err(Refusal::Invalid(m)) => return fail(EXIT_INVALID, &m),
        Err(other) => return fail(1, &format!("{other:?}")),
    };
    let engine = match wasmtime::Engine::new(&super::setup::base_config()) {
        Ok(e) => e,
        Err(e) => return fail(1, &format!("cannot build the engine: {e:#}")),
    };
    match engine.precompile_component(&component) {
        Ok(artifact) => match std::io::stdout().lock().write_all(&artifact) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, &format!("cannot write the compiled plugin: {e}")),
        },
        Err(e) => {
            let m = format!("{e:#}");
            let code = if out_of_memory(&m) {
                EXIT_MEMORY
            } else {
                EXIT_INVALID
            };
            fail(code, &m)
        }
    }
}

/// A core wasm module: magic, then version 1 layer 0.
fn is_core_module(b: &[u8]) -> bool {
    b.len() >= 8 && &b[..4] == b"\0asm" && b[4..8] == [1, 0, 0, 0]
}

/// A component: magic, then layer 1.
fn is_component(b: &[u8]) -> bool {
    b.len() >= 8 && &b[..4] == b"\0asm" && b[6..8] == [1, 0]
}
