//! The `sluice` command: `run`, `check`, `call`, `new`, `test` and `replay`.

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
    /// Write a handler project: the handler, its build script, fixtures and a pipeline.
    New(cli::author::NewArgs),
    /// Run a handler against the cases of fixtures files (alone, or through
    /// the pipeline's policy with injected faults).
    Test(cli::author::TestArgs),
    /// Send dead-letter records back through a pipeline (filtered; `--dry-run` to look first).
    Replay(cli::replay::ReplayArgs),
}

fn main() -> ExitCode {
    // `sluice __compile`: the compiler child that compiles plugins under
    // their memory and time limits (engine/compile.rs). Hidden, and handled
    // before logging, argument parsing and the async runtime exist: the
    // child does nothing else, and its memory limit counts every mapping.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == sluice::engine::COMPILE_CHILD_ARG)
    {
        return sluice::engine::compile_child_main();
    }
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { sluice::engine::quiet_library_backtraces() };
    // A command whose output is piped into `head` ends quietly when the
    // reader goes away, as Unix tools do, rather than panicking in the
    // middle of a line. `run` and `replay` keep ignoring SIGPIPE: a log
    // reader going away must not end a running pipeline.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| ["call", "check", "new", "test"].iter().any(|c| a == *c))
    {
        // SAFETY: still before any other thread exists; SIG_DFL is a valid
        // disposition for SIGPIPE.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // `sluice test` injects faults on purpose: the warnings they cause are
    // its cases, not news. Errors only, unless the user asks for more.
    if std::env::args_os().nth(1).is_some_and(|a| a == "test")
        && std::env::var_os("SLUICE_LOG").is_none()
    {
        // SAFETY: still before any other thread exists.
        unsafe { std::env::set_var("SLUICE_LOG", "error") };
    }
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
            Command::New(args) => cli::author::new(args),
            Command::Test(args) => cli::author::test(args).await,
            Command::Replay(args) => cli::replay::replay(args).await,
        }
    });
    // A blocking task still running (a cache read of a load aborted at
    // shutdown) must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
