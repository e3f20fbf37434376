//! Core NATS source and sink: token auth on a private server, slow-consumer
//! limits, headers and keys through the sink, and request/reply with a
//! fallback when the handler times out.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::nats::{NatsServer, run};
use futures::StreamExt as _;
use sluice::config::nats::{NatsSinkConfig, NatsSourceConfig};
use sluice::config::{Action, ErrorsConfig};
use sluice::message::Header;
use sluice::sinks::{Record, Sink};
use sluice::sources::Source;

const URL: &str = "nats://127.0.0.1:4222";

fn source_cfg(url: &str, subject: &str, extra: &str) -> NatsSourceConfig {
    toml::from_str(&format!(
        "url = \"{url}\"\nsubject = \"{subject}\"\n{extra}"
    ))
    .unwrap()
}

#[tokio::test]
async fn token_auth_right_token_works_wrong_token_fails_open_fast() {
    let server = NatsServer::with_token("s3cret-token");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let bad = dir.path().join("bad");
    std::fs::write(&good, "s3cret-token\n").unwrap();
    std::fs::write(&bad, "wrong-token\n").unwrap();
    let with = |f: &std::path::Path| {
        source_cfg(
            &server.url(),
            "auth.test",
            &format!(
                "token = {{ file = \"{}\" }}\nconnect_timeout = \"2s\"",
                f.display()
            ),
        )
    };

    let mut source = sluice::sources::nats::open(&with(&good), "t")
        .await
        .unwrap();
    let sink_cfg: NatsSinkConfig = toml::from_str(&format!(
        "url = \"{}\"\nsubject = \"auth.test\"\ntoken = {{ file = \"{}\" }}",
        server.url(),
        good.display()
    ))
    .unwrap();
    let sink = sluice::sinks::nats::open(&sink_cfg, "t").await.unwrap();
    sink.publish(&[record(None, "hi")]).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), source.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.message.payload, Bytes::from_static(b"hi"));
    d.settle(sluice::sources::Settlement::Ack).await.unwrap();

    let t0 = Instant::now();
    let e = match sluice::sources::nats::open(&with(&bad), "t").await {
        Ok(_) => panic!("a wrong token opened the source"),
        Err(e) => format!("{e:#}"),
    };
    let took = t0.elapsed();
    assert!(e.contains("refused the credentials"), "{e}");
    assert!(
        !e.contains("wrong-token"),
        "the secret leaked into the error: {e}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    eprintln!("[nats auth] wrong token refused in {took:?}: {e}");

    // The core sink and JetStream's source and sink refuse it the same way.
    let bad_conn = |rest: &str| {
        format!(
            "url = \"{}\"\ntoken = {{ file = \"{}\" }}\nconnect_timeout = \"2s\"\n{rest}",
            server.url(),
            bad.display()
        )
    };
    let t0 = Instant::now();
    let errors = [
        sluice::sinks::nats::open(
            &toml::from_str(&bad_conn("subject = \"auth.test\"")).unwrap(),
            "t",
        )
        .await
        .err()
        .map(|e| format!("core sink: {e:#}")),
        sluice::sinks::jetstream::open(
            &toml::from_str(&bad_conn("subject = \"auth.js\"\nstream = \"AUTH_JS\"")).unwrap(),
            "t",
        )
        .await
        .err()
        .map(|e| format!("JetStream sink: {e:#}")),
        sluice::sources::jetstream::open(
            &toml::from_str(&bad_conn(
                "stream = \"AUTH_JS\"\nsubjects = [\"auth.js\"]\ndurable = \"d\"",
            ))
            .unwrap(),
            "t",
        )
        .await
        .err()
        .map(|e| format!("JetStream source: {e:#}")),
    ];
    for e in &errors {
        let e = e.as_deref().expect("a wrong token must fail open");
        assert!(e.contains("refused the credentials"), "{e}");
        assert!(!e.contains("wrong-token"), "the secret leaked: {e}");
    }
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());

    // No server at all: a clear error within the connect timeout, not a loop.
    let port = common::free_port();
    let t0 = Instant::now();
    let cfg = source_cfg(
        &format!("nats://127.0.0.1:{port}"),
        "x",
        "connect_timeout = \"1s\"",
    );
    let e = match sluice::sources::nats::open(&cfg, "t").await {
        Ok(_) => panic!("opened without a server"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains(&port.to_string()), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

fn record(topic: Option<&str>, payload: &'static str) -> Record {
    Record {
        topic: topic.map(str::to_string),
        key: None,
        payload: Bytes::from_static(payload.as_bytes()),
        headers: vec![],
        id: "x".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_bounded_and_counted() {
    let subject = common::unique("slow").replace('-', "_");
    let source = sluice::sources::nats::open(
        &source_cfg(
            URL,
            &subject,
            "pending_messages = 50\npending_bytes = 100000",
        ),
        "t",
    )
    .await
    .unwrap();
    let client = async_nats::connect(URL).await.unwrap();
    let n = 2000;
    let payload = Bytes::from(vec![b'x'; 1000]);
    for _ in 0..n {
        client
            .publish(subject.clone(), payload.clone())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    // Nobody calls next(): everything past the limits must be dropped and counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while source.slow_consumer_events() + (source.pending().0 as u64) < n
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (count, bytes) = source.pending();
    let dropped = source.slow_consumer_events();
    eprintln!(
        "[nats slow consumer] sent {n}, queued {count} ({bytes} bytes), dropped and counted {dropped}"
    );
    assert!(
        count <= 50 && bytes <= 100_000,
        "queue past its limits: {count} / {bytes}"
    );
    assert_eq!(
        dropped + count as u64,
        n,
        "every message is queued or counted as dropped"
    );

    // The byte limit alone also holds.
    let subject2 = format!("{subject}_b");
    let s2 = sluice::sources::nats::open(
        &source_cfg(
            URL,
            &subject2,
            "pending_messages = 1000\npending_bytes = 10000",
        ),
        "t",
    )
    .await
    .unwrap();
    for _ in 0..100 {
        client
            .publish(subject2.clone(), payload.clone())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while s2.slow_consumer_events() + (s2.pending().0 as u64) < 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (pending, dropped) = (s2.pending(), s2.slow_consumer_events());
    assert_eq!(
        (pending, dropped),
        ((10, 10_000), 90),
        "byte limit: (queued, bytes), dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_carries_headers_and_key_and_rejects_bad_subjects() {
    let subject = common::unique("sink").replace('-', "_");
    let cfg: NatsSinkConfig =
        toml::from_str(&format!("url = \"{URL}\"\nsubject = \"{subject}\"")).unwrap();
    let sink = sluice::sinks::nats::open(&cfg, "t").await.unwrap();
    let client = async_nats::connect(URL).await.unwrap();
    let mut sub = client.subscribe(subject.clone()).await.unwrap();
    // `flush` only writes the SUB out; the server may still be processing it
    // when the sink's connection publishes (this test was flaky for that).
    // A probe on the same connection comes back only once SUB took effect.
    client
        .publish(subject.clone(), Bytes::from_static(b"probe"))
        .await
        .unwrap();
    let probe = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(probe.payload, Bytes::from_static(b"probe"));
    let r = Record {
        topic: None,
        key: Some(Bytes::from_static(b"k1")),
        payload: Bytes::from_static(b"body"),
        headers: vec![Header::new("h1", "v1")],
        id: "x".into(),
    };
    sink.publish(std::slice::from_ref(&r)).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    let h = m.headers.unwrap();
    assert_eq!(m.payload, Bytes::from_static(b"body"));
    assert_eq!(h.get("h1").map(|v| v.as_str()), Some("v1"));
    assert_eq!(h.get("sluice-key").map(|v| v.as_str()), Some("k1"));
    let e = sink
        .publish(&[record(Some("bad subject.*"), "x")])
        .await
        .unwrap_err();
    assert_eq!(e.class, sluice::failure::FailureClass::Rejected);
    let big = Record {
        payload: Bytes::from(vec![0u8; 2 << 20]),
        ..record(None, "")
    };
    let e = sink.publish(&[big]).await.unwrap_err();
    assert_eq!(e.class, sluice::failure::FailureClass::Rejected, "{e}");
}

#[tokio::test]
async fn sink_to_a_stopped_server_is_a_transient_sink_failure() {
    let mut server = NatsServer::start();
    let cfg: NatsSinkConfig = toml::from_str(&format!(
        "url = \"{}\"\nsubject = \"x\"\ntimeout = \"500ms\"\nreconnect_initial = \"50ms\"\nreconnect_max = \"200ms\"",
        server.url()
    ))
    .unwrap();
    let sink = sluice::sinks::nats::open(&cfg, "t").await.unwrap();
    sink.publish(&[record(None, "a")]).await.unwrap();
    server.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let e = sink.publish(&[record(None, "b")]).await.unwrap_err();
    assert_eq!(e.class, sluice::failure::FailureClass::Sink, "{e}");
    server.restart();
    // The client reconnects by itself (capped backoff) and publishing works again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sink.publish(&[record(None, "c")]).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.class, sluice::failure::FailureClass::Sink);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no reconnect: {e}"),
        }
    }
}

/// Request/reply: the first output is the reply; a handler that times out
/// (infinite loop, 50 ms budget) still gets the caller the fallback, or an
/// error reply naming the class when there is no fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_with_fallback_on_timeout() {
    let subject = common::unique("svc").replace('-', "_");
    let client = async_nats::connect(URL).await.unwrap();
    for (fallback, action) in [
        (Some("busy, try later"), Action::Drop),
        (None, Action::DeadLetter),
    ] {
        let extra = match fallback {
            Some(f) => format!("fallback = \"{f}\""),
            None => String::new(),
        };
        let subj = format!("{subject}_{}", fallback.is_some());
        let source = sluice::sources::nats::open(&source_cfg(URL, &subj, &extra), "t")
            .await
            .unwrap();
        let dlq: NatsSinkConfig =
            toml::from_str(&format!("url = \"{URL}\"\nsubject = \"{subj}_dlq\"")).unwrap();
        let dlq = sluice::sinks::nats::open(&dlq, "t").await.unwrap();
        let plugin = run::plugin(
            &common::plugin("infinite-loop"),
            &[],
            Duration::from_millis(50),
        )
        .await;
        let errors = ErrorsConfig {
            timeout: action,
            ..Default::default()
        };
        let p = run::start(
            Box::new(source),
            plugin,
            None,
            Some(Arc::new(dlq)),
            errors,
            run::retry(1, Duration::from_millis(10)),
        );
        let ok = tokio::time::timeout(
            Duration::from_secs(5),
            client.request(subj.clone(), Bytes::from_static(b"ping")),
        )
        .await
        .expect("a reply in time")
        .expect("a reply");
        assert_eq!(ok.payload, Bytes::from_static(b"ping"));
        let t0 = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            client.request(subj.clone(), Bytes::from_static(b"loop")),
        )
        .await
        .expect("a reply in time, not silence")
        .expect("a reply");
        let took = t0.elapsed();
        let h = r.headers.clone().unwrap_or_default();
        assert_eq!(
            h.get("sluice-error-class").map(|v| v.as_str()),
            Some("timeout")
        );
        match fallback {
            Some(f) => assert_eq!(r.payload, Bytes::from(f)),
            None => {
                assert!(r.payload.is_empty());
                let e = h.get("Nats-Service-Error").map(|v| v.as_str().to_string());
                assert!(e.is_some_and(|e| e.starts_with("timeout")), "{h:?}");
                assert_eq!(
                    h.get("Nats-Service-Error-Code").map(|v| v.as_str()),
                    Some("500")
                );
            }
        }
        eprintln!(
            "[nats request/reply] fallback {fallback:?}: timed-out handler answered in {took:?}"
        );
        let snap = p.stop().await;
        assert_eq!(
            snap.outputs, 0,
            "the reply is not published to a sink: {snap:?}"
        );
    }
}

/// One request as a NATS service's caller makes it: 1 s per attempt, retried
/// (after 100 ms when nobody answered at once) for up to 20 s. The reply and
/// how many attempts it took.
async fn request_with_retry(
    client: &async_nats::Client,
    subject: &str,
    body: String,
) -> (Option<String>, u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attempt = 0;
    while Instant::now() < deadline {
        attempt += 1;
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            client.request(subject.to_string(), Bytes::from(body.clone())),
        )
        .await;
        match r {
            Ok(Ok(m)) => {
                return (
                    Some(String::from_utf8_lossy(&m.payload).into_owned()),
                    attempt,
                );
            }
            // No responders (nobody subscribed yet): the server says so at once.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => {}
        }
    }
    (None, attempt)
}

/// A request, its reply (if any), the attempts and when it completed.
type Answered = (String, Option<String>, u32, Instant);

/// Sends requests `from..to` eight at a time, counting completions in `done`.
async fn requests(
    client: async_nats::Client,
    subject: String,
    from: usize,
    to: usize,
    done: Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<Answered> {
    futures::stream::iter(from..to)
        .map(|i| {
            let (client, subject, done) = (client.clone(), subject.clone(), done.clone());
            async move {
                let body = format!("r-{i:05}");
                let (reply, attempts) = request_with_retry(&client, &subject, body.clone()).await;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (body, reply, attempts, Instant::now())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// Scale-out of a NATS service: two `sluice` processes in one queue group
/// answer requests (the `tagger` handler tags each reply with its instance);
/// one is SIGKILLed mid-stream. NATS core is at most once, so the requests
/// the killed instance held are lost *to it*; the caller's timeout and retry
/// (as NATS services do) gets them answered by the survivor: every request
/// is answered, and the count says how many needed a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_group_survives_sigkill_of_one_instance() {
    let server = NatsServer::start();
    let subject = common::unique("svc").replace('-', "_");
    let dir = tempfile::tempdir().unwrap();
    let file = |tag: &str| {
        let f = dir.path().join(format!("svc-{tag}.toml"));
        std::fs::write(
            &f,
            format!(
                "name = \"svc-{tag}\"\n\n[source]\ntype = \"nats\"\nurl = \"{}\"\nsubject = \"{subject}\"\n\
                 queue_group = \"svc\"\nrequest_reply = true\n\n[handler]\nplugin = \"{}\"\n\
                 config = {{ tag = \"{tag}\" }}\n\n[dead_letter]\ntype = \"file\"\npath = \"{}\"\n",
                server.url(),
                common::plugin("tagger").display(),
                dir.path().join(format!("dlq-{tag}.jsonl")).display()
            ),
        )
        .unwrap();
        f
    };
    let (fa, fb) = (file("a"), file("b"));
    let pa = common::spawn_sluice(&fa);
    let pb = common::spawn_sluice(&fb);
    let client = async_nats::connect(server.url()).await.unwrap();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tagged = |a: &[Answered], t: &str| {
        a.iter()
            .filter(|(_, r, _, _)| r.as_deref().is_some_and(|r| r.starts_with(t)))
            .count()
    };

    // Wave 1 until both instances answered (they subscribe within seconds).
    let mut answers: Vec<Answered> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (tagged(&answers, "a:") == 0 || tagged(&answers, "b:") == 0) && Instant::now() < deadline
    {
        let n = answers.len();
        answers.extend(requests(client.clone(), subject.clone(), n, n + 200, done.clone()).await);
    }
    let (by_a, by_b) = (tagged(&answers, "a:"), tagged(&answers, "b:"));
    let logs = || {
        ["a", "b"]
            .map(|t| {
                std::fs::read_to_string(dir.path().join(format!("svc-{t}.log"))).unwrap_or_default()
            })
            .join("\n")
    };
    assert!(
        by_a > 0 && by_b > 0,
        "the queue group never split the requests (a {by_a}, b {by_b}); logs:\n{}",
        logs()
    );
    let wave1 = answers.len();

    // Wave 2; `a` is killed once 200 of it were answered.
    let wave2 = tokio::spawn(requests(
        client.clone(),
        subject.clone(),
        wave1,
        wave1 + 1000,
        done.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(std::sync::atomic::Ordering::Relaxed) < wave1 + 200 {
        assert!(Instant::now() < deadline, "wave 2 does not progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pa.signal("KILL");
    drop(pa);
    let killed_at = Instant::now();
    let in_wave2_before_kill = done.load(std::sync::atomic::Ordering::Relaxed) - wave1;
    answers.extend(wave2.await.unwrap());
    pb.signal("TERM");

    let unanswered: Vec<&String> = answers
        .iter()
        .filter(|(_, r, _, _)| r.is_none())
        .map(|(b, _, _, _)| b)
        .collect();
    let wrong: Vec<_> = answers
        .iter()
        .filter(|(b, r, _, _)| r.as_ref().is_some_and(|r| r.get(2..) != Some(b.as_str())))
        .collect();
    let retried = answers.iter().filter(|(_, _, n, _)| *n > 1).count();
    let grace = killed_at + Duration::from_millis(100);
    let after_kill = &answers
        .iter()
        .filter(|(_, _, _, t)| *t > grace)
        .cloned()
        .collect::<Vec<_>>();
    common::report(
        &format!(
            "nats queue group scale-out (before the kill a {by_a}, b {by_b}; killed after {in_wave2_before_kill} of wave 2; \
             {} answered later, all by b; {retried} needed a retry)",
            after_kill.len()
        ),
        answers.len(),
        answers.len() - unanswered.len(),
        0,
        0,
        0,
    );
    assert!(
        unanswered.is_empty(),
        "{} unanswered within 20 s, e.g. {:?}",
        unanswered.len(),
        &unanswered[..unanswered.len().min(10)]
    );
    assert!(
        wrong.is_empty(),
        "{} replies do not match their request, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    // How many come after the kill depends on the machine's speed; enough
    // of them that "all by b" says something.
    assert!(
        after_kill.len() >= 100,
        "only {} of wave 2 came after the kill",
        after_kill.len()
    );
    assert_eq!(
        tagged(after_kill, "a:"),
        0,
        "nothing answered by the killed instance"
    );
}

/// Messages the client cannot parse (a header line without `:`, a space in a
/// header name, header bytes that are not UTF-8, a subject that is not
/// UTF-8) among 3,000 good ones on core NATS: each is dead-lettered as
/// `decode`, and the connection survives them (every good message handled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_messages_are_decode_failures_and_cost_no_other() {
    let subject = common::unique("unread").replace('-', "_");
    let source = sluice::sources::nats::open(
        &source_cfg(
            URL,
            &format!("{subject}.>"),
            "pending_messages = 100000\npending_bytes = 100000000",
        ),
        "t",
    )
    .await
    .unwrap();
    common::nats::handle_mixed(Box::new(source), &subject, 3000).await;
}

/// A real slow consumer through `sluice run`: a burst on the shared server
/// far faster than the handler (each message a short hash loop) with a
/// pending limit of 50. What Sluice could not hold is dropped and shows in
/// `/metrics` (`sluice_slow_consumer_total`) and `/pipelines`; every
/// message sent is an output or one of those drops.
#[test]
fn a_slow_consumer_is_counted_in_metrics() {
    use common::admin::{http, metric, pipeline, spawn, wait_until};
    let n: u64 = 2000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let subject = common::unique("slowc").replace('-', "_");
    let file = d.join("slow.toml");
    std::fs::write(
        &file,
        format!(
            r#"name = "slow"
[source]
type = "nats"
url = "{URL}"
subject = "{subject}"
pending_messages = 50
[handler]
plugin = "{plugin}"
config = {{ iterations = "300000" }}
[sink]
type = "file"
path = "{d}/out.txt"
[dead_letter]
type = "file"
path = "{d}/dlq.jsonl"
"#,
            plugin = common::plugin("fuel-burner").display(),
            d = d.display(),
        ),
    )
    .unwrap();
    let port = common::free_port();
    let proc = spawn(&[file.to_str().unwrap()], port, &d.join("sluice.log"));
    wait_until("the pipeline to be ready", Duration::from_secs(60), || {
        http(port, "GET", "/readyz", None).0 == 200
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(URL).await.unwrap();
        for _ in 0..n {
            client
                .publish(subject.clone(), Bytes::from_static(b"burn"))
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
    });
    let outputs = || {
        std::fs::read_to_string(d.join("out.txt"))
            .unwrap_or_default()
            .lines()
            .count() as u64
    };
    let slow = || {
        let (_, text) = http(port, "GET", "/metrics", None);
        metric(&text, "sluice_slow_consumer_total{pipeline=\"slow\"}").unwrap_or(0.0) as u64
    };
    wait_until(
        "every message out or dropped",
        Duration::from_secs(120),
        || outputs() + slow() >= n,
    );
    std::thread::sleep(Duration::from_millis(500));
    let (out, dropped) = (outputs(), slow());
    let p = pipeline(port, "slow").unwrap();
    common::report(
        "nats core slow consumer",
        n as usize,
        out as usize,
        0,
        dropped as usize,
        0,
    );
    assert!(dropped > 0, "the burst outran the handler: {p}");
    assert!(out >= 50, "what was held was handled: {p}");
    assert_eq!(
        out + dropped,
        n,
        "every message an output or a counted drop: {p}"
    );
    assert_eq!(p["counts"]["slow_consumer"].as_u64(), Some(dropped), "{p}");
    assert_eq!(p["counts"]["succeeded"].as_u64(), Some(out), "{p}");
    drop(proc);
}

/// TLS: a private `nats-server` (JetStream on) serving TLS only, with a
/// certificate for 127.0.0.1 signed by a test CA. With that CA as
/// `tls.ca_file`, the core sink and source and the JetStream sink and
/// source carry messages over `tls://`; with another CA each of the four
/// fails `open` at once with an error that says it is about the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca_core_and_jetstream() {
    use sluice::config::nats::{JetStreamSinkConfig, JetStreamSourceConfig};
    let ca = common::tls::TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\ntls {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
            dir.path().join("js").display(),
            ca.file("server.pem").display(),
            ca.file("server.key").display(),
        ),
    )
    .unwrap();
    let _server = common::Proc {
        child: common::nats::spawn_with_config(&conf, &dir.path().join("nats.log")),
    };
    assert!(
        common::wait_for_port(port, Duration::from_secs(10)),
        "nats-server with TLS did not start: {}",
        std::fs::read_to_string(dir.path().join("nats.log")).unwrap_or_default()
    );
    let conn = |pem: &str, rest: &str| {
        format!(
            "url = \"tls://127.0.0.1:{port}\"\ntls = {{ ca_file = \"{}\" }}\nconnect_timeout = \"3s\"\n{rest}",
            ca.file(pem).display()
        )
    };
    let core_src = |pem: &str| -> NatsSourceConfig {
        toml::from_str(&conn(pem, "subject = \"tls.core\"")).unwrap()
    };
    let core_sink = |pem: &str| -> NatsSinkConfig {
        toml::from_str(&conn(pem, "subject = \"tls.core\"")).unwrap()
    };
    let js_src = |pem: &str| -> JetStreamSourceConfig {
        toml::from_str(&conn(pem, "stream = \"TLS_JS\"\ndurable = \"tls\"")).unwrap()
    };
    let js_sink = |pem: &str| -> JetStreamSinkConfig {
        toml::from_str(&conn(pem, "subject = \"tls.js\"\nstream = \"TLS_JS\"")).unwrap()
    };
    let recs: Vec<Record> = (0..20)
        .map(|i| Record {
            topic: None,
            key: None,
            payload: Bytes::from(format!("tls-{i}")),
            headers: Vec::new(),
            id: format!("tls-{i}"),
        })
        .collect();
    let want: Vec<Bytes> = recs.iter().map(|r| r.payload.clone()).collect();
    async fn take(src: &mut dyn Source, n: usize) -> Vec<Bytes> {
        let mut got = Vec::new();
        while got.len() < n {
            let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_secs(5), src.next()).await
            else {
                break;
            };
            got.push(d.message.payload.clone());
            d.settle(sluice::sources::Settlement::Ack).await.unwrap();
        }
        got
    }

    let mut src = sluice::sources::nats::open(&core_src("ca.pem"), "tls")
        .await
        .expect("core source over TLS");
    let sink = sluice::sinks::nats::open(&core_sink("ca.pem"), "tls")
        .await
        .expect("core sink over TLS");
    sink.publish(&recs).await.expect("core publish over TLS");
    assert_eq!(take(&mut src, 20).await, want, "core NATS over TLS");

    let sink = sluice::sinks::jetstream::open(&js_sink("ca.pem"), "tls")
        .await
        .expect("JetStream sink over TLS");
    sink.publish(&recs)
        .await
        .expect("JetStream publish over TLS");
    let mut src = sluice::sources::jetstream::open(&js_src("ca.pem"), "tls")
        .await
        .expect("JetStream source over TLS");
    assert_eq!(take(&mut src, 20).await, want, "JetStream over TLS");

    let t = Instant::now();
    let errors = [
        sluice::sources::nats::open(&core_src("other.pem"), "tls")
            .await
            .err()
            .map(|e| format!("core source: {e:#}")),
        sluice::sinks::nats::open(&core_sink("other.pem"), "tls")
            .await
            .err()
            .map(|e| format!("core sink: {e:#}")),
        sluice::sources::jetstream::open(&js_src("other.pem"), "tls")
            .await
            .err()
            .map(|e| format!("JetStream source: {e:#}")),
        sluice::sinks::jetstream::open(&js_sink("other.pem"), "tls")
            .await
            .err()
            .map(|e| format!("JetStream sink: {e:#}")),
    ];
    eprintln!(
        "[nats tls] unknown CA refused, all four in {:?}: {errors:?}",
        t.elapsed()
    );
    for e in &errors {
        let e = e.as_deref().expect("an unknown CA must fail open");
        let l = e.to_lowercase();
        assert!(
            l.contains("certificate") || l.contains("tls"),
            "the error says it is about TLS: {e}"
        );
    }
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "fails fast: {:?}",
        t.elapsed()
    );
}
