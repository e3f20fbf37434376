//! The `sluice` command: `run`, `check` and `call`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// Sluice: broker in, sandboxed WebAssembly handler, broker out.
#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run pipelines until they finish or SIGINT/SIGTERM; folders are watched.
    Run(cli::RunArgs),
    /// Validate pipelines and their plugins; report every error with its file, line and key.
    Check {
        /// Pipeline files.
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
    },
    /// Run a handler on messages and show its outputs and failure classes.
    Call(cli::CallArgs),
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { sluice::engine::quiet_library_backtraces() };
    let _log = sluice::logging::init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(args) => cli::run(args).await,
            Command::Check { pipelines } => cli::check(pipelines).await,
            Command::Call(args) => cli::call(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
