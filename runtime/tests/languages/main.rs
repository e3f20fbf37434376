//! Handlers in every language (Rust, C, Python, JavaScript, Go) give the same outputs, refusals and budgets.
//!
//! One test binary (`cargo test -p sluice --test languages`), a module per concern;
//! filter by module: `cargo test -p sluice --test languages -- <module>::`.

#[path = "../common/mod.rs"]
mod common;

mod languages;
