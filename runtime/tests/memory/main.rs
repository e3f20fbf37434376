//! What a handler can make the host allocate, measured as the growth of this process's peak RSS: one measurement at a time (`MEASURING`).
//!
//! One test binary (`cargo test -p sluice --test memory`), a module per concern;
//! filter by module: `cargo test -p sluice --test memory -- <module>::`.

#[path = "../common/mod.rs"]
mod common;

/// Held by the tests that measure this process's memory or allocate much:
/// one at a time, so one measurement is not another's growth.
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

mod adversary;
mod host_memory;
