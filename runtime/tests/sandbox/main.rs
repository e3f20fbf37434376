//! The sandbox against hostile and misbehaving handlers: budgets, deadlines inside host calls, batches, compile limits, load refusals.
//!
//! One test binary (`cargo test -p sluice --test sandbox`), a module per concern;
//! filter by module: `cargo test -p sluice --test sandbox -- <module>::`.

#[path = "../common/mod.rs"]
mod common;

mod batching;
mod compile_limits;
mod hostile_guests;
mod sandbox;
