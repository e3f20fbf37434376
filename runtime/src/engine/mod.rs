//! The sandbox: wasmtime components under three budgets on every call —
//! fuel (instructions), an epoch deadline (wall clock) and a memory cap —
//! with traps mapped to failure classes and a fresh instance after each trap.
//!
//! Its parts import one way: each only from the rows below its own.
//!
//! ```text
//! worker   call   load          run messages on an instance / load a version
//! instance        compile       a version's instances / compiling (a child process)
//! classify                      a call's error to a failure class
//! host/columns                  `columns.answer`: each batch answer, checked in place
//! host                          the store's data, `log`, `kv-*`, WASI granting nothing
//! host/kv  watchdog  spec  setup  batch
//! cache
//! core_module
//! limits  bindings              budgets, caps, guest text / the `bindgen!` site
//! ```

mod batch;
mod bindings;
pub mod cache;
mod call;
mod classify;
mod compile;
mod core_module;
mod host;
mod instance;
mod limits;
mod load;
mod setup;
mod spec;
mod watchdog;
mod worker;

pub use compile::{CHILD_ARG as COMPILE_CHILD_ARG, child_main as compile_child_main};
pub use host::KvStore;
pub use instance::{Instance, NativeFn, Plugin};
pub use limits::{CallStats, Handled, MemoryExceeded, OutputLimits, guest_text};
pub use load::resolve_file;
pub use setup::{Compiler, Engine, EngineOptions};
pub use spec::{PluginError, PluginSpec};
pub use worker::Worker;

/// Turns off the host backtraces library errors capture, unless the user
/// asked for them with `RUST_LIB_BACKTRACE`. wasmtime's error for every trap
/// captures one when `RUST_BACKTRACE` is set (as it often is where services
/// run): ~4 µs of stack walking per poison message, for a backtrace of the
/// host that no one reads. Panics keep theirs (`RUST_BACKTRACE`).
///
/// # Safety
/// Sets an environment variable: call it before any other thread exists.
pub unsafe fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the caller guarantees no other thread reads the environment.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}
