//! Sluice: a message-processing runtime. It consumes from a broker, runs each
//! message through a sandboxed WebAssembly handler, publishes the handler's
//! outputs, and routes every failure by a policy written in TOML.
//!
//! # Layout
//! - [`config`]: pipeline TOML → validated [`config::PipelineConfig`].
//! - [`message`]: the host-side message, output and header types.
//! - [`failure`]: failure classes; every failure knows its class where it is made.
//! - [`engine`]: wasmtime: the guest contract, the three budgets, traps → classes.
//! - [`sources`]: one module per broker, each yielding deliveries with a settle handle.
//! - [`sinks`]: one module per broker.
//! - [`brokers`]: what a broker's source and sink share: connection, TLS, auth, reconnect.
//! - [`policy`]: the `[errors]` table, retry backoff, dead-letter records, circuit breaker.
//! - [`pipeline`]: source → handler → sinks → settle, for one pipeline.
//! - [`supervisor`]: `sluice run`: pipelines from files and folders, live changes, hot swap.
//! - [`admin`], [`metrics`]: the admin HTTP API and its Prometheus text.
//! - [`logging`]: the process's log, written off the workers' threads.
//! - [`wait`]: futures sources and sinks share (settled, timed).
//! - [`crypto`]: the TLS crypto provider every TLS connection uses.
//! - [`authoring`]: the handler author's loop: `sluice new`, `sluice test`, `sluice replay`.

/// mimalloc serves every Rust allocation of the process (the `sluice`
/// binary, and the tests and benchmarks that link this crate, so they measure
/// what it runs): a message's trip allocates a few short-lived buffers on the
/// host (owned copies, records, settle handles), and glibc's malloc/free with
/// its fastbin consolidation was a fifth of a worker's time in the Kafka
/// profile. C libraries (librdkafka) keep the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod admin;
pub mod authoring;
pub mod brokers;
pub mod config;
pub mod connect;
pub mod crypto;
pub mod engine;
pub mod envelope;
pub mod failure;
pub mod files;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod pipeline;
pub mod policy;
/// [`policy`] under the name code outside the crate may still use.
#[doc(hidden)]
pub use policy as router;
pub mod sinks;
pub mod sources;
pub mod stats;
pub mod supervisor;
pub mod wait;

#[cfg(test)]
mod layers;
