//! JetStream source and sink against the NATS server on 127.0.0.1:4222:
//! retry by server redelivery (`nak` with delay), `term` after the dead
//! letter, `Nats-Msg-Id` dedup, attempt/offset/headers, and clear errors.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use common::nats::run;
use futures::StreamExt as _;
use sluice::config::ErrorsConfig;
use sluice::config::nats::{JetStreamSinkConfig, JetStreamSourceConfig};
use sluice::message::Header;
use sluice::message::Message;
use sluice::sinks::{Record, Sink};
use sluice::sources::Source;
use sluice::sources::memory::MemorySource;

const URL: &str = "nats://127.0.0.1:4222";

fn names() -> (String, String) {
    let u = common::unique("js").replace('-', "_");
    (u.to_uppercase(), u)
}

async fn js() -> jetstream::Context {
    jetstream::new(
        async_nats::connect(URL)
            .await
            .expect("NATS on 127.0.0.1:4222"),
    )
}

/// A JetStream stream `name` capturing `subject`, and a consumer reading it.
async fn capture(js: &jetstream::Context, name: &str, subject: &str) -> consumer::PullConsumer {
    let s = js
        .get_or_create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            ..Default::default()
        })
        .await
        .unwrap();
    s.create_consumer(consumer::pull::Config::default())
        .await
        .unwrap()
}

async fn drain(c: &consumer::PullConsumer, n: usize, timeout: Duration) -> Vec<jetstream::Message> {
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while out.len() < n && Instant::now() < deadline {
        let mut b = c
            .fetch()
            .max_messages(n - out.len())
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(m)) = b.next().await {
            m.ack().await.unwrap();
            out.push(m);
        }
    }
    out
}

/// The server's view of the durable consumer `durable` on `stream`.
async fn consumer_info(js: &jetstream::Context, stream: &str, durable: &str) -> consumer::Info {
    let mut c: consumer::PullConsumer = js
        .get_stream(stream)
        .await
        .unwrap()
        .get_consumer(durable)
        .await
        .unwrap();
    c.info().await.unwrap().clone()
}

fn header(m: &jetstream::Message, k: &str) -> Option<String> {
    m.headers.as_ref()?.get(k).map(|v| v.as_str().to_string())
}

fn source_cfg(stream: &str, subjects: &str, durable: &str, extra: &str) -> JetStreamSourceConfig {
    toml::from_str(&format!(
        "url = \"{URL}\"\nstream = \"{stream}\"\nsubjects = [\"{subjects}\"]\ndurable = \"{durable}\"\n{extra}"
    ))
    .unwrap()
}

fn sink_cfg(subject: &str, stream: &str) -> JetStreamSinkConfig {
    toml::from_str(&format!(
        "url = \"{URL}\"\nsubject = \"{subject}\"\nstream = \"{stream}\"\ntimeout = \"3s\""
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_failure_is_nakked_with_delay_and_redelivered_by_the_server() {
    let (stream, sub) = names();
    let js = js().await;
    let cfg = source_cfg(
        &stream,
        &format!("{sub}.in"),
        "worker",
        "ack_wait = \"10s\"",
    );
    let source = sluice::sources::jetstream::open(&cfg, "t").await.unwrap();
    assert!(source.redelivers());
    let sink = sluice::sinks::jetstream::open(
        &sink_cfg(&format!("{sub}.out"), &format!("{stream}_OUT")),
        "t",
    )
    .await
    .unwrap();
    let out = capture(&js, &format!("{stream}_OUT"), &format!("{sub}.out")).await;
    let plugin = run::plugin(
        &common::plugin("flaky"),
        &[("fail_times", "1")],
        Duration::from_secs(1),
    )
    .await;
    let delay = Duration::from_millis(700);
    let p = run::start(
        Box::new(source),
        plugin,
        Some(Arc::new(sink)),
        None,
        ErrorsConfig::default(),
        run::retry(3, delay),
    );
    let mut h = async_nats::HeaderMap::new();
    h.insert("trace", "abc");
    let t0 = Instant::now();
    js.publish_with_headers(format!("{sub}.in"), h, Bytes::from_static(b"hello"))
        .await
        .unwrap()
        .await
        .unwrap();
    let got = drain(&out, 1, Duration::from_secs(10)).await;
    let took = t0.elapsed();
    let snap = p.stop().await;
    assert_eq!(got.len(), 1, "{snap:?}");
    assert_eq!(got[0].payload, Bytes::from_static(b"hello"));
    assert_eq!(snap.retries, 1, "{snap:?}");
    assert_eq!(snap.redelivered, 1, "{snap:?}");
    assert_eq!(snap.succeeded, 1, "{snap:?}");
    assert_eq!(snap.received, 2, "the server delivered it twice: {snap:?}");
    assert!(
        took >= delay,
        "redelivered after {took:?}, before the {delay:?} nak delay"
    );
    eprintln!(
        "[jetstream nak] first publish → output after {took:?} (nak delay {delay:?}), server deliveries {}",
        snap.received
    );
    // Nothing left pending on the durable.
    let info = consumer_info(&js, &stream, "worker").await;
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_pending, 0);
    let _ = js.delete_stream(&stream).await;
    let _ = js.delete_stream(format!("{stream}_OUT")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_failure_is_dead_lettered_then_terminated_not_redelivered() {
    let (stream, sub) = names();
    let js = js().await;
    let cfg = source_cfg(
        &stream,
        &format!("{sub}.in"),
        "worker",
        "ack_wait = \"1s\"\nin_progress_every = \"0s\"",
    );
    let source = sluice::sources::jetstream::open(&cfg, "t").await.unwrap();
    let dlq = sluice::sinks::jetstream::open(
        &sink_cfg(&format!("{sub}.dlq"), &format!("{stream}_DLQ")),
        "t",
    )
    .await
    .unwrap();
    let dead = capture(&js, &format!("{stream}_DLQ"), &format!("{sub}.dlq")).await;
    let plugin = run::plugin(&common::plugin("fatal-on"), &[], Duration::from_secs(1)).await;
    let p = run::start(
        Box::new(source),
        plugin,
        None,
        Some(Arc::new(dlq)),
        ErrorsConfig::default(),
        run::retry(3, Duration::from_millis(100)),
    );
    js.publish(format!("{sub}.in"), Bytes::from_static(b"bad apple"))
        .await
        .unwrap()
        .await
        .unwrap();
    let got = drain(&dead, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, Bytes::from_static(b"bad apple"));
    assert_eq!(
        header(&got[0], "sluice-error-class").as_deref(),
        Some("fatal")
    );
    assert_eq!(
        header(&got[0], "sluice-source-offset").as_deref(),
        Some("1")
    );
    assert_eq!(header(&got[0], "sluice-attempts").as_deref(), Some("1"));
    assert!(header(&got[0], "Nats-Msg-Id").is_some());
    // Wait past ack_wait twice: a `term`ed message is never delivered again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let snap = p.stop().await;
    assert_eq!(snap.received, 1, "redelivered after term: {snap:?}");
    assert_eq!(snap.dead_lettered, 1);
    let info = consumer_info(&js, &stream, "worker").await;
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    assert_eq!(info.num_redelivered, 0, "{info:?}");
    let _ = js.delete_stream(&stream).await;
    let _ = js.delete_stream(format!("{stream}_DLQ")).await;
}

#[tokio::test]
async fn nats_msg_id_makes_a_republished_record_stored_once() {
    let (stream, sub) = names();
    let js = js().await;
    let sink = sluice::sinks::jetstream::open(&sink_cfg(&format!("{sub}.out"), &stream), "t")
        .await
        .unwrap();
    let rec = Record {
        topic: None,
        key: Some(Bytes::from_static(b"k")),
        payload: Bytes::from_static(b"once"),
        headers: vec![Header::new("Nats-Msg-Id", "stale"), Header::new("h", "v")],
        id: "pipeline:subject:0:42:1".into(),
    };
    sink.publish(std::slice::from_ref(&rec)).await.unwrap();
    sink.publish(std::slice::from_ref(&rec)).await.unwrap();
    let mut other = rec.clone();
    other.id = "pipeline:subject:0:43:1".into();
    sink.publish(&[other]).await.unwrap();
    let mut s = js.get_stream(&stream).await.unwrap();
    let info = s.info().await.unwrap();
    assert_eq!(info.state.messages, 2, "the same id is stored once");
    let m = s.get_raw_message(1).await.unwrap();
    assert_eq!(
        m.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some("pipeline:subject:0:42:1")
    );
    assert_eq!(m.headers.get("h").map(|v| v.as_str()), Some("v"));
    assert_eq!(m.headers.get("sluice-key").map(|v| v.as_str()), Some("k"));
    let _ = js.delete_stream(&stream).await;
}

#[tokio::test]
async fn source_maps_attempt_offset_headers_and_key() {
    let (stream, sub) = names();
    let js = js().await;
    let cfg = source_cfg(&stream, &format!("{sub}.>"), "d", "ack_wait = \"5s\"");
    let mut source = sluice::sources::jetstream::open(&cfg, "t").await.unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert("sluice-key", "device-7");
    h.insert("x", "1");
    js.publish_with_headers(format!("{sub}.a"), h, Bytes::from_static(b"p"))
        .await
        .unwrap()
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), source.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.message.attempt, 1);
    assert_eq!(d.message.offset, Some(1));
    assert_eq!(d.message.topic, format!("{sub}.a"));
    assert_eq!(d.message.key.as_deref(), Some(&b"device-7"[..]));
    assert_eq!(d.message.header("x").map(|b| &b[..]), Some(&b"1"[..]));
    d.settle(sluice::sources::Settlement::Redeliver {
        delay: Duration::from_millis(200),
    })
    .await
    .unwrap();
    let t0 = Instant::now();
    let d = tokio::time::timeout(Duration::from_secs(5), source.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(d.message.attempt, 2);
    assert_eq!(d.message.offset, Some(1));
    d.settle(sluice::sources::Settlement::Ack).await.unwrap();
    source.close().await;
    let _ = js.delete_stream(&stream).await;
}

/// Holds three messages past `ack_wait` (1 s) without settling them: with
/// `in_progress_every` the server hears of them and redelivers none; with it
/// off (the control) it redelivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_keeps_held_messages_from_redelivery() {
    for (every, redelivered) in [("400ms", false), ("0s", true)] {
        let (stream, sub) = names();
        let js = js().await;
        let cfg = source_cfg(
            &stream,
            &format!("{sub}.in"),
            "held",
            &format!("ack_wait = \"1s\"\nin_progress_every = \"{every}\""),
        );
        let mut source = sluice::sources::jetstream::open(&cfg, "t").await.unwrap();
        for i in 0..3 {
            js.publish(format!("{sub}.in"), Bytes::from(format!("m{i}")))
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let mut held = Vec::new();
        for _ in 0..3 {
            let d = tokio::time::timeout(Duration::from_secs(5), source.next())
                .await
                .expect("a message within 5 s")
                .unwrap()
                .unwrap();
            held.push(d);
        }
        tokio::time::sleep(Duration::from_millis(2600)).await;
        let info = consumer_info(&js, &stream, "held").await;
        if redelivered {
            assert!(
                info.num_redelivered >= 1,
                "control, no in_progress: {info:?}"
            );
        } else {
            assert_eq!(
                info.num_redelivered, 0,
                "in_progress every {every}: {info:?}"
            );
            assert_eq!(info.num_ack_pending, 3, "{info:?}");
        }
        for d in held {
            d.settle(sluice::sources::Settlement::Ack).await.unwrap();
        }
        source.close().await;
        let _ = js.delete_stream(&stream).await;
    }
}

#[tokio::test]
async fn missing_stream_without_subjects_fails_open_clearly() {
    let (stream, _) = names();
    let cfg: JetStreamSourceConfig = toml::from_str(&format!(
        "url = \"{URL}\"\nstream = \"{stream}\"\ndurable = \"d\""
    ))
    .unwrap();
    let t0 = Instant::now();
    let e = match sluice::sources::jetstream::open(&cfg, "t").await {
        Ok(_) => panic!("opened a missing stream"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("does not exist") && e.contains(&stream), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    let cfg: JetStreamSinkConfig =
        toml::from_str(&format!("url = \"{URL}\"\nsubject = \"nowhere.{stream}\"")).unwrap();
    let e = match sluice::sinks::jetstream::open(&cfg, "t").await {
        Ok(_) => panic!("opened a sink without a stream"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("no JetStream stream captures"), "{e}");
}

#[tokio::test]
async fn oversized_record_is_rejected_and_no_stream_is_transient() {
    let (stream, sub) = names();
    let js = js().await;
    let sink = sluice::sinks::jetstream::open(&sink_cfg(&format!("{sub}.out"), &stream), "t")
        .await
        .unwrap();
    let big = Record {
        topic: None,
        key: None,
        payload: Bytes::from(vec![b'x'; 2 << 20]),
        headers: vec![],
        id: "big".into(),
    };
    let e = sink.publish(&[big]).await.unwrap_err();
    assert_eq!(e.class, sluice::failure::FailureClass::Rejected, "{e}");
    let lost = Record {
        topic: Some(format!("{sub}_nostream.x")),
        key: None,
        payload: Bytes::from_static(b"x"),
        headers: vec![],
        id: "x".into(),
    };
    let e = sink.publish(&[lost]).await.unwrap_err();
    assert_eq!(e.class, sluice::failure::FailureClass::Sink, "{e}");
    let _ = js.delete_stream(&stream).await;
}

/// The source-lag gauge: with 200 messages waiting and a slow handler (each
/// call runs into its 10 ms timeout and is dropped), the gauge reports the
/// consumer's pending count — most of the backlog at first — and 0 once the
/// pipeline caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_lag_reports_the_pending_count() {
    let (stream, sub) = names();
    let js = js().await;
    js.get_or_create_stream(stream::Config {
        name: stream.clone(),
        subjects: vec![sub.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let n = 200;
    for _ in 0..n {
        js.publish(sub.clone(), Bytes::from_static(b"loop"))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let source =
        sluice::sources::jetstream::open(&source_cfg(&stream, &sub, "lagged", "batch = 10"), "t")
            .await
            .unwrap();
    let plugin = run::plugin(
        &common::plugin("infinite-loop"),
        &[],
        Duration::from_millis(10),
    )
    .await;
    let errors = ErrorsConfig {
        timeout: sluice::config::Action::Drop,
        ..Default::default()
    };
    let p = run::start(
        Box::new(source),
        plugin,
        None,
        None,
        errors,
        run::retry(1, Duration::from_millis(10)),
    );
    let early = p
        .wait_for(Duration::from_secs(20), |s| s.source_lag.is_some())
        .await;
    let done = p
        .wait_for(Duration::from_secs(60), |s| s.dropped == n)
        .await;
    let s = p.stop().await;
    eprintln!(
        "[jetstream lag] first reported {:?}, after all {n} handled {:?}",
        early.source_lag, s.source_lag
    );
    assert!(
        early.source_lag.is_some_and(|l| l >= n - 20),
        "the first report is the backlog less one pull: {:?}",
        early.source_lag
    );
    assert_eq!(done.dropped, n, "every message handled");
    assert_eq!(s.source_lag, Some(0), "caught up");
}

/// Stored messages the client cannot parse (a header line without `:`, a
/// space in a header name, header bytes that are not UTF-8, a subject that
/// is not UTF-8) among good ones: each is dead-lettered as `decode` and
/// acknowledged, the consumer moves past them, and every good one is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_messages_are_dead_lettered_and_the_consumer_moves_on() {
    let (stream, sub) = names();
    let js = js().await;
    let cfg = source_cfg(&stream, &format!("{sub}.>"), "worker", "ack_wait = \"5s\"");
    let source = sluice::sources::jetstream::open(&cfg, "t").await.unwrap();
    common::nats::handle_mixed(Box::new(source), &sub, 1000).await;
    let info = consumer_info(&js, &stream, "worker").await;
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    assert_eq!(info.num_redelivered, 0, "{info:?}");
    let _ = js.delete_stream(&stream).await;
}

/// Dead-letter records the sink refuses for good. One over the server's
/// `max_payload` is sent cut down (its payload's first KiB, its length in a
/// header) rather than retried for ever; and when the dead-letter stream
/// refuses every record (sealed), the pipeline stops with an error naming
/// why instead of spinning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_the_sink_refuses_are_cut_down_or_stop_the_pipeline() {
    let (stream, sub) = names();
    let dlq_stream = format!("{stream}_DLQ");
    let js = js().await;
    let dead = capture(&js, &dlq_stream, &format!("{sub}.dlq")).await;
    let dlq = || async {
        let sink =
            sluice::sinks::jetstream::open(&sink_cfg(&format!("{sub}.dlq"), &dlq_stream), "t")
                .await
                .unwrap();
        Some(Arc::new(sink) as Arc<dyn Sink>)
    };
    let fatal_on = common::plugin("fatal-on");
    let fatal = || run::plugin(&fatal_on, &[], Duration::from_secs(5));
    let mut big = b"bad ".to_vec();
    big.resize(2 << 20, b'x');
    let p = run::start(
        Box::new(MemorySource::new([Message::new("in", big)])),
        fatal().await,
        None,
        dlq().await,
        ErrorsConfig::default(),
        run::retry(1, Duration::from_millis(10)),
    );
    let snap = p
        .ended(Duration::from_secs(30))
        .await
        .expect("pipeline ends");
    assert_eq!(snap.dead_lettered, 1, "{snap:?}");
    let got = drain(&dead, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.len(), 1024);
    assert!(got[0].payload.starts_with(b"bad xxx"));
    assert_eq!(
        header(&got[0], "sluice-payload-length").as_deref(),
        Some("2097152")
    );
    assert_eq!(
        header(&got[0], "sluice-error-class").as_deref(),
        Some("fatal")
    );

    // A sealed stream takes nothing: the pipeline stops, naming the refusal.
    let mut config = js
        .get_stream(&dlq_stream)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    config.sealed = true;
    js.update_stream(config).await.unwrap();
    let source = MemorySource::new([Message::new("in", "bad apple")]);
    let settled = source.settled();
    let p = run::start(
        Box::new(source),
        fatal().await,
        None,
        dlq().await,
        ErrorsConfig::default(),
        run::retry(1, Duration::from_millis(10)),
    );
    let err = p
        .ended(Duration::from_secs(30))
        .await
        .expect_err("the pipeline stops");
    let text = err.to_string();
    assert!(text.contains("dead-letter sink refuses"), "{text}");
    assert!(text.contains("bad apple"), "{text}");
    // Handed back to the source unsettled as dead-lettered: a restart, once
    // the dead letter takes records again, sends it there.
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(count(&settled.terminated) + count(&settled.acked), 0);
    let _ = js.delete_stream(&dlq_stream).await;
}
