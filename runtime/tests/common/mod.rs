//! Test helpers shared by the integration tests: plugin paths, free ports,
//! processes killed on drop, and running the real `sluice` binary.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

static BUILD: Mutex<()> = Mutex::new(());

/// `plugins/dist/<name>.wasm`, building the plugins first when it is missing.
pub fn plugin(name: &str) -> PathBuf {
    let path = repo().join("plugins/dist").join(format!("{name}.wasm"));
    if !path.exists() {
        let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        if !path.exists() {
            let status = Command::new("bash")
                .arg(repo().join("plugins/build.sh"))
                .status()
                .expect("run plugins/build.sh");
            assert!(status.success(), "plugins/build.sh failed");
        }
    }
    assert!(
        path.exists(),
        "{} missing after plugins/build.sh",
        path.display()
    );
    path
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. "TERM", "KILL", "INT").
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit, at most `timeout`; returns its exit code.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `sluice` binary built for these tests.
pub fn sluice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// Starts `sluice run <pipeline>`; stderr goes to `<pipeline>.log`.
pub fn spawn_sluice(pipeline: &Path) -> Proc {
    spawn_sluice_with(pipeline, &[])
}

/// Starts `sluice run <pipeline> <extra args>` (e.g. `--admin ADDR`); stderr
/// goes to `<pipeline>.log`.
pub fn spawn_sluice_with(pipeline: &Path, extra: &[&str]) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(pipeline.with_extension("log"))
        .expect("open log");
    let child = Command::new(sluice_bin())
        .arg("run")
        .arg(pipeline)
        .args(extra)
        .env("SLUICE_CACHE_DIR", cache_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn sluice");
    Proc { child }
}

/// How long [`run_sluice`] lets a command run before it kills it (a hang
/// is a failure, not a test that never ends).
pub const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

/// Runs `sluice <args>` to completion: (exit code, stdout, stderr). Killed
/// after [`RUN_LIMIT`] (exit code -1, "killed" in stderr).
pub fn run_sluice(args: &[&str]) -> (i32, String, String) {
    run_sluice_env(args, &[])
}

/// [`run_sluice`] with these environment variables set.
pub fn run_sluice_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    use std::io::Read;
    let mut child = Command::new(sluice_bin())
        .args(args)
        .envs(env.iter().copied())
        .env("SLUICE_CACHE_DIR", cache_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = std::time::Instant::now() + RUN_LIMIT;
    let code = loop {
        match child.try_wait().expect("wait for sluice") {
            Some(status) => break status.code().unwrap_or(-1),
            None if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break -1;
            }
            None => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    };
    let mut stderr = err.join().unwrap_or_default();
    if code == -1 {
        stderr.push_str(&format!("\n(killed after {RUN_LIMIT:?})"));
    }
    (code, out.join().unwrap_or_default(), stderr)
}

/// One compile cache for all tests, inside the target folder.
pub fn cache_dir() -> PathBuf {
    repo().join("target/test-cache")
}

/// An engine for in-process tests, sharing the tests' compile cache.
pub fn engine() -> sluice::engine::Engine {
    sluice::engine::Engine::new(sluice::engine::EngineOptions {
        cache_dir: Some(cache_dir()),
        ..Default::default()
    })
    .expect("engine")
}

/// A short random suffix for unique topic names.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Prints a test's accounting line, so a run's output shows the counts.
pub fn report(test: &str, sent: usize, delivered: usize, dead: usize, dropped: usize, dup: usize) {
    let lost = sent as i64 - (delivered + dead + dropped) as i64 + dup as i64;
    eprintln!(
        "[{test}] sent {sent}, delivered {delivered}, dead-lettered {dead}, dropped {dropped}, duplicated {dup}, lost {lost}"
    );
}

/// Prints a fault test's machine-readable line, `[fault] name=NAME FIELDS
/// what=WHAT`, and keeps it in `target/fault-lines/NAME.line` (the latest
/// run of each test), from which `runtime/tests/faults/table.sh` writes the
/// fault table of `docs/faults.md`: a row cannot say what no test printed.
pub fn fault_line(name: &str, fields: &str, what: &str) {
    let line = format!("[fault] name={name} {fields} what={what}");
    eprintln!("{line}");
    let dir = repo().join("target/fault-lines");
    let kept = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join(format!("{name}.line")), format!("{line}\n")));
    if let Err(e) = kept {
        eprintln!("[fault] could not keep the line in {}: {e}", dir.display());
    }
}

pub mod admin;
pub mod bomb;
pub mod guest;
pub mod kafka;
pub mod mqtt;
pub mod nats;
pub mod proxy;
pub mod tls;

/// A `/proc/self/status` figure in bytes (`VmRSS`, `VmHWM`, ...).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    kib << 10
}

/// Resident memory of this process, in bytes.
pub fn rss() -> u64 {
    status_bytes("VmRSS")
}

/// Peak resident memory of this process, in bytes.
pub fn peak_rss() -> u64 {
    status_bytes("VmHWM")
}

/// Resets the peak resident memory to the current (Linux: "5" to
/// `clear_refs`) and returns it: [`peak_rss`] counts from here on.
pub fn reset_peak_rss() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    peak_rss()
}

/// The parts of a pipeline from `source` through `plugin` to the in-memory
/// `sink` (and `dead_letter`): one worker, batches of 16, a window of 128,
/// no breaker, the default policy. Tests change the fields they are about.
pub fn memory_parts(
    name: &str,
    source: sluice::sources::memory::MemorySource,
    plugin: sluice::engine::Plugin,
    sink: &std::sync::Arc<sluice::sinks::memory::MemorySink>,
    dead_letter: Option<std::sync::Arc<sluice::sinks::memory::MemorySink>>,
) -> sluice::pipeline::Parts {
    sluice::pipeline::Parts {
        name: name.into(),
        source: Box::new(source),
        plugin,
        sinks: sluice::pipeline::Sinks {
            default: Some(sink.clone()),
            named: Default::default(),
        },
        dead_letter: dead_letter.map(|d| d as std::sync::Arc<dyn sluice::sinks::Sink>),
        policy: sluice::policy::Policy {
            errors: Default::default(),
            retry: Default::default(),
        },
        breaker: sluice::config::BreakerConfig {
            enabled: false,
            ..Default::default()
        },
        dedup: None,
        concurrency: 1,
        publish_window: 128,
        batch: 16,
        publish_timeout: Duration::from_secs(30),
    }
}
