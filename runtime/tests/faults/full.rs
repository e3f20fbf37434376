//! A broker at its limits: a JetStream stream full (`max_msgs`, discard
//! `new`), and a JetStream account out of storage (`max_file`), as the sink
//! and as the dead-letter sink at once. A full broker is a transient `sink`
//! failure: the breaker opens, intake pauses, nothing is dead-lettered
//! because the broker is full, the log and `/metrics` say the broker is
//! full, and flow resumes within seconds once there is room again.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

use crate::account::{
    JETSTREAM_WINDOW, account, assert_dead_are_bad, assert_no_loss, bad_count, expect_progress,
    log_of, with_bad,
};
use crate::capture::{Topics, js_produce, js_topics, nats_client};
use crate::common;
use crate::common::admin::{http, metric};
use crate::common::nats::stream_of;
use crate::pipelines::{BREAKER, RETRY, Urls, handler, js_pipeline, write_pipeline};

/// Sets the stream of `subject` to hold at most `max_msgs` messages (`-1`:
/// no limit), refusing new ones when full (discard `new`).
async fn limit(js: &jetstream::Context, subject: &str, max_msgs: i64) {
    let mut s = js.get_stream(stream_of(subject)).await.expect("stream");
    let mut cfg = s.info().await.expect("stream info").config.clone();
    cfg.max_messages = max_msgs;
    cfg.discard = stream::DiscardPolicy::New;
    js.update_stream(cfg).await.expect("update stream");
}

/// A `nats-server -c FILE` whose only account may store `max_file` bytes
/// in file-backed streams (memory unlimited); clients without credentials
/// are that account. Killed by PID on drop.
struct AccountServer {
    port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

impl AccountServer {
    fn start(max_file: u64) -> AccountServer {
        let port = common::free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("nats.conf");
        let store = dir.path().join("js");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {store:?} }}\n\
                 accounts {{ APP {{ jetstream {{ max_file: {max_file}, max_mem: 67108864 }}\n\
                 users: [ {{ user: app, password: app }} ] }} }}\nno_auth_user: app\n"
            ),
        )
        .expect("write nats.conf");
        let child = common::nats::spawn_with_config(&conf, &dir.path().join("server.log"));
        assert!(
            common::wait_for_port(port, Duration::from_secs(10)),
            "nats-server did not start on port {port}"
        );
        AccountServer {
            port,
            _dir: dir,
            child,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for AccountServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JetStream pipeline of these tests (`fatal-on`, short retries and
/// breaker), written to `<dir>/<name>.toml`.
fn pipeline(dir: &Path, name: &str, t: &Topics, url: &str) -> PathBuf {
    let body = js_pipeline(
        t,
        &Urls::all(url),
        ("ack_wait = \"5s\"\n", "timeout = \"2s\"\n"),
        &handler("fatal-on", ""),
        &format!("{RETRY}{BREAKER}"),
    );
    write_pipeline(dir, name, &body)
}

/// Runs Sluice on `file` until its output stops growing for 3 s (the broker
/// is full; at least `min_out` outputs first), waits (at most 30 s) for the
/// breaker to open, checks what it shows while full (when `labelled`, that
/// the log and `/metrics` say broker full), runs `heal` (which makes room),
/// then accounts for every message: none lost, only the bad ones
/// dead-lettered, output again within 10 s.
pub(crate) async fn through_full(
    name: &str,
    file: &Path,
    msgs: &[Vec<u8>],
    t: &Topics,
    (min_out, labelled): (usize, bool),
    heal: impl Future<Output = ()>,
) {
    let admin = common::free_port();
    let mut p = common::spawn_sluice_with(file, &["--admin", &format!("127.0.0.1:{admin}")]);
    expect_progress(
        &mut p,
        &t.out.seen,
        Duration::from_secs(60),
        |s| s.len() >= min_out,
        &format!("[{name}] no progress before the broker filled"),
        file,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (t.out.seen.len(), Instant::now());
    while last.1.elapsed() < Duration::from_secs(3) {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!(
                "[{name}] sluice exited ({status}) while the broker was full; log:\n{}",
                log_of(file)
            );
        }
        assert!(
            Instant::now() < deadline,
            "[{name}] the output never stopped: the broker did not fill"
        );
        assert!(
            t.out.seen.unique() + t.dead.seen.unique() < msgs.len(),
            "[{name}] every message went through: the broker never filled"
        );
        if t.out.seen.len() != last.0 {
            last = (t.out.seen.len(), Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The breaker opens after `failure_threshold` failed publishes, each
    // as long as the sink takes to give up on the full broker: at most 30 s.
    let open_by = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (_, metrics) = http(admin, "GET", "/metrics", None);
        let breaker = metric(
            &metrics,
            &format!("sluice_breaker_state{{pipeline=\"{name}\"}}"),
        );
        if breaker == Some(2.0) || Instant::now() > open_by {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (out_full, dead_full) = (t.out.seen.len(), t.dead.seen.all());
    let sample = |m: &str| metric(&metrics, &format!("{m}{{pipeline=\"{name}\"}}"));
    let (breaker, full) = (
        sample("sluice_breaker_state"),
        sample("sluice_broker_full_total"),
    );
    let log_full = log_of(file);
    heal.await;
    let healed = Instant::now();
    let (tally, rec) = account(name, p, file, msgs, (&t.out, &t.dead), 90, healed).await;
    eprintln!(
        "[{name}] while full: {out_full} out, {} dead, breaker {breaker:?}, broker_full {full:?}; recovery {rec:?}",
        dead_full.len()
    );
    let good_dead: Vec<String> = dead_full
        .iter()
        .filter(|g| !g.payload.starts_with(b"bad"))
        .take(5)
        .map(|g| String::from_utf8_lossy(&g.payload).into_owned())
        .collect();
    assert!(
        good_dead.is_empty(),
        "[{name}] good messages dead-lettered because the broker was full: {good_dead:?}..."
    );
    assert_eq!(
        breaker,
        Some(2.0),
        "[{name}] the breaker was not open while the broker was full; /metrics:\n{metrics}"
    );
    if labelled {
        assert!(
            full.is_some_and(|n| n > 0.0),
            "[{name}] /metrics does not count the broker full:\n{metrics}"
        );
        assert!(
            log_full.contains("broker full"),
            "[{name}] the log does not say the broker is full; log:\n{log_full}"
        );
    }
    assert_no_loss(name, &tally, file, JETSTREAM_WINDOW);
    assert_eq!(
        tally.dead,
        bad_count(msgs),
        "[{name}] dead letters beyond the bad messages"
    );
    assert_dead_are_bad(name, msgs, &t.dead.seen.all());
    let rec = rec.unwrap_or_else(|| panic!("[{name}] no output after there was room again"));
    assert!(
        rec < Duration::from_secs(10),
        "[{name}] output resumed only {rec:?} after there was room again"
    );
}

/// The output stream holds 300 messages and the dead-letter stream 2 (of
/// the 10 bad messages), discard `new`: Sluice fills both and waits with
/// its breaker open; then the test lifts both limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_stream_full() {
    let name = "jetstream-stream-full";
    let server = common::nats::NatsServer::start();
    let js = jetstream::new(nats_client(&server.url()).await);
    let t = js_topics(&js, "jsf").await;
    limit(&js, &t.output, 300).await;
    limit(&js, &t.dlq, 2).await;
    let msgs = with_bad(1000);
    js_produce(&js, &t.input, &msgs).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = pipeline(dir.path(), name, &t, &server.url());
    through_full(name, &file, &msgs, &t, (300, true), async {
        assert_eq!(
            t.out.seen.len(),
            300,
            "[{name}] more out than the stream holds"
        );
        limit(&js, &t.output, -1).await;
        limit(&js, &t.dlq, -1).await;
    })
    .await;
}

/// The account may store 96 KiB in file streams (the input stream is in
/// memory, so only the output and the dead letters count): Sluice fills
/// the account and waits with its breaker open; then the test purges the
/// output stream, whose messages the test has read (the rest of the output
/// fits in the room that frees).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_account_full() {
    let name = "jetstream-account-full";
    let server = AccountServer::start(96 * 1024);
    let js = jetstream::new(nats_client(&server.url()).await);
    let t = js_topics(&js, "jsa").await;
    // The input in memory: its 1,000 messages do not count against max_file.
    let input = stream_of(&t.input);
    js.delete_stream(&input).await.expect("delete input stream");
    js.create_stream(stream::Config {
        name: input,
        subjects: vec![t.input.clone()],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("input stream in memory");
    let msgs = with_bad(1000);
    js_produce(&js, &t.input, &msgs).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = pipeline(dir.path(), name, &t, &server.url());
    through_full(name, &file, &msgs, &t, (20, true), async {
        let out = js
            .get_stream(stream_of(&t.output))
            .await
            .expect("output stream");
        out.purge().await.expect("purge the output stream");
    })
    .await;
}
