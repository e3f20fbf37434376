//! NATS request/reply as an operator runs it: the shipped quote service
//! (`pipelines/nats-quote-service.toml`, pointed at a private `nats-server`
//! through `NATS_URL`) and variants of it, with concurrent callers. Every
//! request is answered — a quote, the fallback for a slow or unknown SKU,
//! `unavailable` while the circuit breaker is open or when the pending
//! limits shed it — and what was shed is counted.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::admin::{http, metric, pipeline, spawn_env, wait_until};
use common::nats::NatsServer;

/// The shipped pipeline.
fn shipped() -> PathBuf {
    common::repo().join("pipelines/nats-quote-service.toml")
}

const FALLBACK: &str = r#"{"error":"quote unavailable, try again"}"#;
const NAME: &str = "nats-quote-service";

/// What a caller got.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    /// A quote (the handler's reply).
    Quote(String),
    /// The configured fallback, with its `sluice-error-class`.
    Fallback(String),
    /// An error reply: class, code, text.
    Error(String, String, String),
    /// Nothing within the caller's timeout.
    Silent,
}

async fn ask(client: &async_nats::Client, sku: &str, wait: Duration) -> Reply {
    ask_raw(client, format!(r#"{{"sku":"{sku}","qty":2}}"#), wait).await
}

/// Sends `body` as a request and sorts what came back.
async fn ask_raw(client: &async_nats::Client, body: String, wait: Duration) -> Reply {
    let body = Bytes::from(body);
    let m = match tokio::time::timeout(wait, client.request("quotes.get", body)).await {
        Ok(Ok(m)) => m,
        _ => return Reply::Silent,
    };
    let header = |k: &str| {
        m.headers
            .as_ref()
            .and_then(|h| h.get(k))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    };
    let payload = String::from_utf8_lossy(&m.payload).into_owned();
    if payload == FALLBACK {
        Reply::Fallback(header("sluice-error-class"))
    } else if payload.is_empty() {
        Reply::Error(
            header("sluice-error-class"),
            header("Nats-Service-Error-Code"),
            header("Nats-Service-Error"),
        )
    } else {
        Reply::Quote(payload)
    }
}

/// Asks for every SKU of `skus` at once, each caller waiting `wait`.
async fn ask_all(client: &async_nats::Client, skus: &[&str], wait: Duration) -> Vec<Reply> {
    let tasks: Vec<_> = skus
        .iter()
        .map(|sku| {
            let (c, sku) = (client.clone(), sku.to_string());
            tokio::spawn(async move { ask(&c, &sku, wait).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("caller task"));
    }
    out
}

/// A variant of the shipped file in `dir`: its plugin path made absolute
/// and each `(from, to)` replaced (each must be there).
fn variant(dir: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(shipped()).unwrap().replace(
        "../plugins/dist/order-quote.wasm",
        &common::plugin("order-quote").display().to_string(),
    );
    for (from, to) in edits {
        assert!(text.contains(from), "{from:?} not in the shipped file");
        text = text.replace(from, to);
    }
    let f = dir.join("quote.toml");
    std::fs::write(&f, text).unwrap();
    f
}

/// `sluice run FILE` against `server`, once its pipeline is ready.
fn run(file: &Path, server: &NatsServer, dir: &Path) -> (common::Proc, u16, PathBuf) {
    common::plugin("order-quote");
    let port = common::free_port();
    let log = dir.join("sluice.log");
    let url = server.url();
    let proc = spawn_env(
        &[file.to_str().unwrap()],
        port,
        &log,
        &[("NATS_URL", url.as_str())],
    );
    wait_until(
        "the quote service to be ready",
        Duration::from_secs(60),
        || http(port, "GET", "/readyz", None).0 == 200 && pipeline(port, NAME).is_some(),
    );
    (proc, port, log)
}

fn count(port: u16, key: &str) -> u64 {
    pipeline(port, NAME).unwrap()["counts"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("counts.{key} missing"))
}

/// A log line without its ANSI colours.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tally(replies: &[Reply]) -> std::collections::BTreeMap<String, usize> {
    let mut t = std::collections::BTreeMap::new();
    for r in replies {
        let k = match r {
            Reply::Quote(_) => "quote".to_string(),
            Reply::Fallback(c) => format!("fallback:{c}"),
            Reply::Error(c, code, _) => format!("error:{c}:{code}"),
            Reply::Silent => "silent".to_string(),
        };
        *t.entry(k).or_insert(0) += 1;
    }
    t
}

/// The shipped file does what its comment says: a quote for a known SKU,
/// the fallback for an unknown one (`fatal`) and for one whose handler runs
/// past its 50 ms deadline (`timeout`, not `fuel`). Slow requests are the
/// request's own failure: a dozen of them among concurrent good requests
/// neither open the breaker nor cost any good request its quote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_quote_service_answers_every_request() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (proc, port, log) = run(&shipped(), &server, dir.path());
    let client = async_nats::connect(server.url()).await.unwrap();
    let wait = Duration::from_secs(5);

    let quote = ask(&client, "A-113", wait).await;
    assert!(
        matches!(&quote, Reply::Quote(q) if q.contains("\"total\":9.0")),
        "{quote:?}"
    );
    assert_eq!(
        ask(&client, "SLOW-1", wait).await,
        Reply::Fallback("timeout".into()),
        "the comment promises the timeout fallback"
    );
    assert_eq!(
        ask(&client, "NOPE", wait).await,
        Reply::Fallback("fatal".into())
    );

    // 12 slow requests at once (past the breaker's threshold of 5 in a
    // row), then 60 good ones at once, then both mixed.
    let slow = ask_all(&client, &["SLOW-1"; 12], Duration::from_secs(3)).await;
    assert!(
        slow.iter().all(|r| *r == Reply::Fallback("timeout".into())),
        "{slow:?}"
    );
    let good = ask_all(&client, &["A-113"; 60], Duration::from_secs(3)).await;
    let t = tally(&good);
    eprintln!("[quote service] 60 good right after 12 slow: {t:?}");
    assert_eq!(t.get("quote"), Some(&60), "{t:?}");
    let mut skus = vec!["A-113"; 60];
    for i in 0..12 {
        skus.insert(i * 5, "SLOW-1");
    }
    let replies = ask_all(&client, &skus, Duration::from_secs(3)).await;
    let t = tally(&replies);
    eprintln!("[quote service] 60 good + 12 slow at once: {t:?}");
    assert_eq!(t.get("quote"), Some(&60), "{t:?}");
    assert_eq!(t.get("fallback:timeout"), Some(&12), "{t:?}");
    let p = pipeline(port, NAME).unwrap();
    assert_eq!(p["breaker"], "closed", "{p}");
    assert_eq!(count(port, "dead_lettered"), 26, "25 timeouts and 1 fatal");
    assert_eq!(count(port, "succeeded"), 121);
    assert_eq!(count(port, "shed"), 0);
    drop(proc);
    let _ = log;
}

/// Where timeouts are retried (so they count toward the breaker) the
/// breaker opens; requests that come while it is open are answered at once
/// with an error reply naming why (no fallback configured), counted as
/// shed, and quotes come back once the breaker closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_while_the_breaker_is_open() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = variant(
        dir.path(),
        &[
            (
                "fallback = '{\"error\":\"quote unavailable, try again\"}'\n",
                "",
            ),
            ("timeout = \"dead-letter\"\n", "timeout = \"retry\"\n"),
            (
                "[errors]\n",
                "[circuit_breaker]\nfailure_threshold = 3\nsuccess_threshold = 1\nopen_for = \"3s\"\n\n[errors]\n",
            ),
        ],
    );
    let (proc, port, _log) = run(&file, &server, dir.path());
    let client = async_nats::connect(server.url()).await.unwrap();

    let slow = ask_all(&client, &["SLOW-1"; 3], Duration::from_secs(5)).await;
    for r in &slow {
        assert!(
            matches!(r, Reply::Error(c, code, _) if c == "timeout" && code == "500"),
            "{slow:?}"
        );
    }
    wait_until("the breaker to open", Duration::from_secs(5), || {
        pipeline(port, NAME).unwrap()["breaker"] == "open"
    });
    let replies = ask_all(&client, &["A-113"; 20], Duration::from_secs(2)).await;
    let t = tally(&replies);
    eprintln!("[breaker open] 20 good requests: {t:?}");
    assert_eq!(t.get("error:unavailable:503"), Some(&20), "{t:?}");
    assert!(
        replies.iter().all(
            |r| matches!(r, Reply::Error(_, _, text) if text.contains("circuit breaker open"))
        ),
        "{replies:?}"
    );
    assert_eq!(count(port, "shed"), 20);
    let (_, m) = http(port, "GET", "/metrics", None);
    assert_eq!(
        metric(
            &m,
            "sluice_messages_total{pipeline=\"nats-quote-service\",outcome=\"shed\"}"
        ),
        Some(20.0),
        "{m}"
    );

    // After `open_for`, a request is the probe and quotes come back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = Reply::Silent;
    for _ in 0..50 {
        got = ask(&client, "A-113", Duration::from_secs(2)).await;
        if matches!(got, Reply::Quote(_)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(got, Reply::Quote(_)), "{got:?}");
    assert_eq!(pipeline(port, NAME).unwrap()["breaker"], "closed");
    drop(proc);
}

/// A burst past `pending_messages`: every request is answered — handled
/// ones with their reply, shed ones with the fallback (class
/// `unavailable`) — and the shed ones are counted in `/pipelines` and
/// `/metrics` and logged with their total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_requests_are_answered_counted_and_logged() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = variant(
        dir.path(),
        &[
            ("pending_messages = 1000", "pending_messages = 4"),
            ("concurrency = 4", "concurrency = 1"),
        ],
    );
    let (proc, port, log) = run(&file, &server, dir.path());
    let client = async_nats::connect(server.url()).await.unwrap();

    const SENT: usize = 400;
    let replies = ask_all(&client, &["SLOW-1"; SENT], Duration::from_secs(30)).await;
    let t = tally(&replies);
    eprintln!("[shedding] {SENT} slow requests at once, pending_messages = 4: {t:?}");
    let shed = t.get("fallback:unavailable").copied().unwrap_or(0);
    let handled = t.get("fallback:timeout").copied().unwrap_or(0);
    assert_eq!(shed + handled, SENT, "every request answered: {t:?}");
    assert!(shed > 0 && handled > 0, "{t:?}");
    assert_eq!(count(port, "shed"), shed as u64);
    assert_eq!(count(port, "dead_lettered"), handled as u64);
    assert_eq!(count(port, "received"), handled as u64);
    let (_, m) = http(port, "GET", "/metrics", None);
    let v = |s: &str| metric(&m, s).unwrap_or_else(|| panic!("{s} missing from\n{m}"));
    assert_eq!(
        v("sluice_messages_total{pipeline=\"nats-quote-service\",outcome=\"shed\"}"),
        shed as f64
    );
    assert!(v("sluice_slow_consumer_total{pipeline=\"nats-quote-service\"}") >= shed as f64);
    let total = format!("total={shed}");
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("NATS slow consumer"))
            .map(plain)
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !lines().iter().any(|l| l.contains(&total)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no log line gives {total}: {:#?}",
            lines()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(proc);
}

/// Every dead letter the service wrote to its JetStream dead-letter stream
/// on `server`: (class, payload, source subject).
async fn dead_letters(server: &NatsServer) -> Vec<(String, String, String)> {
    use async_nats::jetstream::{self, consumer};
    use futures::StreamExt as _;
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let stream = js
        .get_stream("DLQ_QUOTES")
        .await
        .expect("the dead-letter stream");
    let c = stream
        .create_consumer(consumer::pull::Config::default())
        .await
        .unwrap();
    let mut batch = c
        .fetch()
        .max_messages(100)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(Ok(m)) = batch.next().await {
        let header = |k: &str| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(k))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        };
        out.push((
            header("sluice-error-class"),
            String::from_utf8_lossy(&m.payload).into_owned(),
            header("sluice-source-topic"),
        ));
    }
    out
}

/// The fallback answers a request whose handler fails on its own, not only
/// one past its deadline: an unknown SKU (`fatal`, the shipped file) and a
/// handler that panics (`trap`, the same file with the `panic` handler)
/// each get the fallback naming their class, each leaves one dead letter
/// holding the request, and the next good request is answered as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_and_trap_get_the_fallback_and_a_dead_letter() {
    let wait = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "fatal",
            shipped(),
            r#"{"sku":"NOPE","qty":2}"#,
            r#"{"sku":"A-113","qty":2}"#,
        ),
        (
            "trap",
            variant(
                dir.path(),
                &[
                    ("order-quote.wasm", "panic.wasm"),
                    (
                        "config = { prices = \"A-113:4.5,B-2:10.0\", slow_sku = \"SLOW-1\" }\n",
                        "",
                    ),
                ],
            ),
            "panic",
            "hello",
        ),
    ];
    common::plugin("panic");
    for (class, file, bad, good) in cases {
        let server = NatsServer::start();
        let (proc, port, log) = run(&file, &server, dir.path());
        let client = async_nats::connect(server.url()).await.unwrap();
        assert_eq!(
            ask_raw(&client, bad.into(), wait).await,
            Reply::Fallback(class.into()),
            "[{class}] log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let next = ask_raw(&client, good.into(), wait).await;
        assert!(
            matches!(&next, Reply::Quote(q) if q.contains("A-113") || q == "hello"),
            "[{class}] the next request answered: {next:?}"
        );
        assert_eq!(
            dead_letters(&server).await,
            vec![(class.to_string(), bad.to_string(), "quotes.get".to_string())],
            "[{class}] one dead letter, holding the request"
        );
        assert_eq!(count(port, "dead_lettered"), 1, "[{class}]");
        assert_eq!(count(port, "succeeded"), 1, "[{class}]");
        let failures = &pipeline(port, NAME).unwrap()["failures"];
        assert_eq!(failures[class].as_u64(), Some(1), "[{class}] {failures}");
        drop(proc);
    }
}
