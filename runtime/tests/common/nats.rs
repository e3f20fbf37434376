//! A private `nats-server` (with JetStream) for tests that restart the
//! broker or need auth: a free port on 127.0.0.1, its own store directory,
//! killed by PID on drop. Self-contained so it can be included on its own.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A JetStream stream name for a subject (names may not hold `.`, `*`, `>`).
pub fn stream_of(subject: &str) -> String {
    subject
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Asks the server whose monitoring port is `monitor` whether some client
/// subscribes to exactly `subject` (`/connz?subs=1`). Blocking, 2 s at most.
pub fn subscribed(monitor: u16, subject: &str) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", monitor)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let req = "GET /connz?subs=1&limit=1024 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if c.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = c.read_to_string(&mut body);
    body.contains(&format!("\"{subject}\""))
}

/// A `nats-server -a 127.0.0.1 -p PORT -js -sd DIR [--auth TOKEN]` child process.
pub struct NatsServer {
    pub port: u16,
    pub token: Option<String>,
    /// The HTTP monitoring port (`-m`), when started with one.
    pub monitor: Option<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server without auth.
    pub fn start() -> NatsServer {
        Self::start_with(None, false)
    }

    /// Starts a server that requires `token`.
    pub fn with_token(token: &str) -> NatsServer {
        Self::start_with(Some(token.to_string()), false)
    }

    /// Starts a server with an HTTP monitoring port (see [`NatsServer::has_subscriber`]).
    pub fn monitored() -> NatsServer {
        Self::start_with(None, true)
    }

    fn start_with(token: Option<String>, monitor: bool) -> NatsServer {
        let port = free_port();
        let mut s = NatsServer {
            port,
            token,
            monitor: monitor.then(free_port),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        s.spawn();
        s
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store directory.
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("js")
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("nats-server");
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(self.store());
        if let Some(t) = &self.token {
            cmd.args(["--auth", t]);
        }
        if let Some(m) = self.monitor {
            cmd.args(["-m", &m.to_string()]);
        }
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server (apt-get install nats-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL, by PID) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// True when some client subscribes to exactly `subject` (monitored servers only).
    pub fn has_subscriber(&self, subject: &str) -> bool {
        self.monitor.is_some_and(|m| subscribed(m, subject))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `nats-server -c conf`, its log into `log` (tests that need a
/// configuration file: clusters, account limits); the caller kills it.
pub fn spawn_with_config(conf: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("nats-server log file");
    Command::new("nats-server")
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn nats-server (apt-get install nats-server)")
}

/// A raw frame: subject, header block (`HPUB` when given), payload.
pub type Frame = (Vec<u8>, Option<Vec<u8>>, Vec<u8>);

/// Publishes raw protocol frames on a connection of its own, bypassing every
/// check a client makes: `frames` are `(subject, header block, payload)`,
/// sent as `HPUB` when a header block is given and `PUB` otherwise. Returns
/// once the server has answered a `PING` after the last frame (it has taken
/// them all).
pub fn raw_publish(port: u16, frames: &[Frame]) {
    use std::io::{BufRead, BufReader, Write};
    let conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("INFO");
    assert!(line.starts_with("INFO"), "server said {line:?}");
    let mut out = std::io::BufWriter::new(conn);
    out.write_all(
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n",
    )
    .expect("CONNECT");
    for (subject, header, payload) in frames {
        match header {
            Some(h) => {
                out.write_all(b"HPUB ").expect("write");
                out.write_all(subject).expect("write");
                write!(out, " {} {}\r\n", h.len(), h.len() + payload.len()).expect("write");
                out.write_all(h).expect("write");
            }
            None => {
                out.write_all(b"PUB ").expect("write");
                out.write_all(subject).expect("write");
                write!(out, " {}\r\n", payload.len()).expect("write");
            }
        }
        out.write_all(payload).expect("write");
        out.write_all(b"\r\n").expect("write");
    }
    out.write_all(b"PING\r\n").expect("PING");
    out.flush().expect("flush");
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("reply");
        assert!(n > 0, "server closed the connection");
        assert!(!line.starts_with("-ERR"), "server refused: {line}");
        if line.starts_with("PONG") {
            return;
        }
    }
}

/// Header blocks and subjects the client cannot parse, as a hostile
/// publisher sends them: `(subject suffix, header block)`.
pub fn unreadable_frames() -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    vec![
        (
            b"".to_vec(),
            Some(b"NATS/1.0\r\nNo colon here\r\n\r\n".to_vec()),
        ),
        (
            b"".to_vec(),
            Some(b"NATS/1.0\r\nBad Name: x\r\n\r\n".to_vec()),
        ),
        (
            b"".to_vec(),
            Some(b"NATS/1.0\r\nName: \xff\xfe\r\n\r\n".to_vec()),
        ),
        (b"".to_vec(), Some(b"NATS/1.0\r\n\xc3: v\r\n\r\n".to_vec())),
        (b".\xff".to_vec(), None),
    ]
}

/// The good and the unreadable frames of the bad-input tests, interleaved:
/// `good` messages `good-N` on `<prefix>.ok`, and each frame the client
/// cannot parse (`bad-K`) on `<prefix>.bad` or its own odd subject.
pub fn mixed_frames(prefix: &str, good: usize) -> Vec<Frame> {
    let bad = unreadable_frames();
    let every = good / bad.len();
    let mut frames = Vec::new();
    for i in 0..good {
        frames.push((
            format!("{prefix}.ok").into_bytes(),
            None,
            format!("good-{i}").into_bytes(),
        ));
        if i % every == every / 2 {
            let (suffix, header) = bad[i / every].clone();
            let mut subject = prefix.as_bytes().to_vec();
            subject.extend_from_slice(if suffix.is_empty() { b".bad" } else { &suffix });
            frames.push((subject, header, format!("bad-{}", i / every).into_bytes()));
        }
    }
    frames
}

/// Runs the echo handler over `source` while `good` good messages and the
/// unreadable frames among them ([`mixed_frames`]) are published raw under
/// `prefix`; asserts every good message handled, every bad one
/// dead-lettered as `decode`, and nothing received twice or lost.
pub async fn handle_mixed(source: Box<dyn sluice::sources::Source>, prefix: &str, good: u64) {
    use sluice::sinks::memory::MemorySink;
    use std::sync::Arc;
    use std::time::Duration;
    let out = Arc::new(MemorySink::counting());
    let dead = Arc::new(MemorySink::keeping());
    let plugin = run::plugin(&super::plugin("echo"), &[], Duration::from_secs(1)).await;
    let p = run::start(
        source,
        plugin,
        Some(out),
        Some(dead.clone()),
        sluice::config::ErrorsConfig::default(),
        run::retry(1, Duration::from_millis(10)),
    );
    let frames = mixed_frames(prefix, good as usize);
    let sent = frames.len() as u64;
    tokio::task::spawn_blocking(move || raw_publish(4222, &frames))
        .await
        .expect("raw publisher");
    p.wait_for(Duration::from_secs(30), |s| {
        s.succeeded + s.dead_lettered >= sent
    })
    .await;
    let snap = p.stop().await;
    eprintln!("[unreadable] sent {sent}: {snap:?}");
    assert_eq!(snap.received, sent, "nothing redelivered or lost: {snap:?}");
    assert_eq!(snap.succeeded, good, "{snap:?}");
    assert_eq!(snap.dead_lettered, sent - good, "{snap:?}");
    let records = dead.kept();
    assert_eq!(records.len() as u64, sent - good);
    for r in &records {
        assert!(r.payload.starts_with(b"bad-"), "{r:?}");
        let class = r.headers.iter().find(|h| h.key == "sluice-error-class");
        assert_eq!(class.map(|h| &h.value[..]), Some(&b"decode"[..]), "{r:?}");
    }
}

/// Builds and runs pipelines in-process for the NATS tests.
pub mod run {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use sluice::config::units::Dur;
    use sluice::config::{BreakerConfig, ErrorsConfig, Jitter, RetryConfig};
    use sluice::engine::{Engine, EngineOptions, Plugin, PluginSpec};
    use sluice::pipeline::{Parts, Pipeline, Sinks};
    use sluice::policy::Policy;
    use sluice::sinks::Sink;
    use sluice::sources::Source;
    use sluice::stats::{Snapshot, Stats};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    /// A pipeline running in a task; [`Running::stop`] shuts it down.
    pub struct Running {
        pub stats: Arc<Stats>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<Result<Snapshot, sluice::pipeline::PipelineError>>,
    }

    impl Running {
        pub async fn stop(mut self) -> Snapshot {
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
            tokio::time::timeout(Duration::from_secs(20), self.task)
                .await
                .expect("pipeline stops in time")
                .expect("pipeline task")
                .expect("pipeline result")
        }

        /// Waits (at most `timeout`) for the pipeline to end by itself.
        pub async fn ended(
            self,
            timeout: Duration,
        ) -> Result<Snapshot, sluice::pipeline::PipelineError> {
            tokio::time::timeout(timeout, self.task)
                .await
                .expect("pipeline ends in time")
                .expect("pipeline task")
        }

        /// Waits until `f(stats)` holds, at most `timeout`.
        pub async fn wait_for(&self, timeout: Duration, f: impl Fn(&Snapshot) -> bool) -> Snapshot {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let s = self.stats.snapshot();
                if f(&s) || tokio::time::Instant::now() > deadline {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// A plugin from `plugins/dist` with `config` and a wall-clock `timeout`.
    pub async fn plugin(path: &Path, config: &[(&str, &str)], timeout: Duration) -> Plugin {
        let engine = Engine::new(EngineOptions {
            cache_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-cache")),
            ..Default::default()
        })
        .expect("engine");
        let mut spec = PluginSpec::new(path);
        spec.timeout = timeout;
        // Wall-clock budgets are what these tests exercise: fuel must not run out first.
        spec.fuel = 1 << 42;
        spec.config = config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Plugin::load(&engine, spec).await.expect("plugin loads")
    }

    /// Retries: `max_attempts`, starting at `initial`, no jitter.
    pub fn retry(max_attempts: u32, initial: Duration) -> RetryConfig {
        RetryConfig {
            max_attempts,
            initial: Dur(initial),
            max: Dur(Duration::from_secs(10)),
            multiplier: 2.0,
            jitter: Jitter::None,
        }
    }

    /// Starts a pipeline.
    pub fn start(
        source: Box<dyn Source>,
        plugin: Plugin,
        sink: Option<Arc<dyn Sink>>,
        dead_letter: Option<Arc<dyn Sink>>,
        errors: ErrorsConfig,
        retry: RetryConfig,
    ) -> Running {
        let pipeline = Pipeline::new(Parts {
            name: "nats-test".into(),
            source,
            plugin,
            sinks: Sinks {
                default: sink,
                named: HashMap::new(),
            },
            dead_letter,
            policy: Policy { errors, retry },
            breaker: BreakerConfig {
                enabled: false,
                ..Default::default()
            },
            dedup: None,
            concurrency: 1,
            publish_window: 128,
            batch: 16,
            publish_timeout: Duration::from_secs(5),
        });
        let stats = pipeline.stats();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(pipeline.run(async move {
            let _ = rx.await;
        }));
        Running {
            stats,
            stop: Some(tx),
            task,
        }
    }
}
