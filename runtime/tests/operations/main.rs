//! The operator's and the handler author's side: `sluice run` live changes and the admin API, `sluice check` and the config diagnostics, `sluice new`/`test`/`replay`, and the performance targets' judge.
//!
//! One test binary (`cargo test -p sluice --test operations`), a module per concern;
//! filter by module: `cargo test -p sluice --test operations -- <module>::`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../../benches/plot/targets.rs"]
mod targets;

mod authoring;
mod bench_targets;
mod canary;
mod config_golden;
mod live_ops;
mod monitoring;
mod pipelines_check;
mod replay;
