//! Kafka-specific delivery checks against both private brokers (noida-db and
//! tansu): contiguous commits with out-of-order settles, redelivery, commits
//! on rebalance revoke, backpressure by pausing, headers and keys end to end,
//! and the sink's `rejected` class going to the dead letter without blocking.
//!
//! Every check runs on both brokers. Where a broker cannot pass a check
//! because of a documented fault, the test says so and why next to the check.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::kafka::{KafkaBroker, Kind, TestRecord};
use sluice::config::kafka::{KafkaSinkConfig, KafkaSourceConfig};
use sluice::sinks::{Record, Sink};
use sluice::sources::{Delivery, Settlement, Source};

/// Parses a table body without its `type = "kafka"` line.
fn body<T: serde::de::DeserializeOwned>(text: &str) -> T {
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("type ="))
        .map(|l| format!("{l}\n"))
        .collect();
    toml::from_str(&without).unwrap_or_else(|e| panic!("bad table ({e}):\n{text}"))
}

fn source_cfg(b: &KafkaBroker, topic: &str, group: &str, extra: &str) -> KafkaSourceConfig {
    body(&common::kafka::source_toml(b, topic, group, extra))
}

fn sink_cfg(b: &KafkaBroker, topic: &str, extra: &str) -> KafkaSinkConfig {
    body(&format!("{}\n{extra}", common::kafka::sink_toml(b, topic)))
}

async fn next(src: &mut impl Source, within: Duration) -> Delivery {
    match tokio::time::timeout(within, src.next()).await {
        Ok(Ok(Some(d))) => d,
        Ok(Ok(None)) => panic!("source finished"),
        Ok(Err(e)) => panic!("source error: {e}"),
        Err(_) => panic!("no delivery within {within:?}"),
    }
}

/// Nothing more arrives within `d`.
async fn quiet(src: &mut impl Source, d: Duration) -> Option<Delivery> {
    match tokio::time::timeout(d, src.next()).await {
        Ok(Ok(Some(x))) => Some(x),
        _ => None,
    }
}

fn numbered(n: usize) -> Vec<TestRecord> {
    (0..n).map(|i| TestRecord::new(format!("m-{i}"))).collect()
}

/// The first fetch of a new group includes the join (tansu: ~half the session timeout).
const JOIN: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------

async fn contiguous_commit(kind: Kind) {
    let b = KafkaBroker::start(kind);
    let topic = common::unique("contig");
    let group = format!("{topic}-g");
    b.create_topic(&topic, 1).await;
    b.produce(&topic, Some(0), &numbered(10)).await;
    // A long commit interval: only close() commits, so the position is exact.
    let cfg = source_cfg(&b, &topic, &group, "commit_interval = \"1h\"");
    let mut src = sluice::sources::kafka::open(&cfg, "contig")
        .await
        .expect("open");
    let mut ds = Vec::new();
    for i in 0..10 {
        let d = next(&mut src, if i == 0 { JOIN } else { Duration::from_secs(5) }).await;
        assert_eq!(d.message.offset, Some(i));
        assert_eq!(d.message.partition, Some(0));
        assert_eq!(d.message.attempt, 1);
        assert_eq!(&d.message.payload[..], format!("m-{i}").as_bytes());
        ds.push(Some(d));
    }
    // Settle out of order: 7, 5, 0, 2, 1, 4, 6 — offset 3 stays open, and
    // 8, 9 are Redeliver'ed (handed out again, attempt 2, never committed past).
    for i in [7, 5, 0, 2, 1, 4, 6] {
        ds[i].take().unwrap().settle(Settlement::Ack).await.unwrap();
    }
    ds[8]
        .take()
        .unwrap()
        .settle(Settlement::Redeliver {
            delay: Duration::from_millis(200),
        })
        .await
        .unwrap();
    ds[9]
        .take()
        .unwrap()
        .settle(Settlement::Terminated)
        .await
        .unwrap();
    let again = next(&mut src, Duration::from_secs(5)).await;
    assert_eq!(
        (again.message.offset, again.message.attempt),
        (Some(8), 2),
        "redelivered with attempt + 1"
    );
    again.settle(Settlement::Ack).await.unwrap();
    src.close().await;
    assert_eq!(
        b.committed(&group, &topic, 1),
        vec![3],
        "[{}] commit stops at the first unsettled offset",
        kind.name()
    );
    // The unsettled delivery is abandoned with the source.
    std::mem::forget(ds[3].take());
    drop(src);

    // A new consumer of the group resumes at offset 3: 3 and the settled ones
    // after it come again (at least once), nothing before it.
    let mut src = sluice::sources::kafka::open(&cfg, "contig")
        .await
        .expect("reopen");
    let first = next(&mut src, JOIN).await;
    assert_eq!(
        first.message.offset,
        Some(3),
        "[{}] resume position",
        kind.name()
    );
    first.settle(Settlement::Ack).await.unwrap();
    for i in 4..10 {
        let d = next(&mut src, Duration::from_secs(5)).await;
        assert_eq!(d.message.offset, Some(i));
        d.settle(Settlement::Ack).await.unwrap();
    }
    src.close().await;
    assert_eq!(b.committed(&group, &topic, 1), vec![10]);
    eprintln!(
        "[{}] contiguous commit: committed 3 with 3 open, resumed at 3, then 10",
        kind.name()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contiguous_commit_noida() {
    contiguous_commit(Kind::Noida).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contiguous_commit_tansu() {
    contiguous_commit(Kind::Tansu).await;
}

// ---------------------------------------------------------------------------

async fn revoke_commits(kind: Kind) {
    let b = KafkaBroker::start(kind);
    let topic = common::unique("revoke");
    let group = format!("{topic}-g");
    b.create_topic(&topic, 2).await;
    b.produce(&topic, Some(0), &numbered(5)).await;
    b.produce(&topic, Some(1), &numbered(5)).await;
    // Commits only on revoke (and close): the interval never fires.
    let cfg = source_cfg(&b, &topic, &group, "commit_interval = \"1h\"");
    let mut a = sluice::sources::kafka::open(&cfg, "revoke-a")
        .await
        .expect("open a");
    let mut got = Vec::new();
    for i in 0..10 {
        got.push(next(&mut a, if i == 0 { JOIN } else { Duration::from_secs(5) }).await);
    }
    // Settle offsets 0..3 of partition 0 and 0..2 of partition 1.
    let mut kept = Vec::new();
    for d in got {
        let (p, o) = (d.message.partition.unwrap(), d.message.offset.unwrap());
        if (p == 0 && o < 3) || (p == 1 && o < 2) {
            d.settle(Settlement::Ack).await.unwrap();
        } else {
            kept.push(d);
        }
    }
    assert_eq!(
        b.committed(&group, &topic, 2),
        vec![-1001, -1001],
        "nothing committed before the rebalance"
    );
    // A second member joins: the group rebalances and `a` revokes its partitions.
    let mut bsrc = sluice::sources::kafka::open(&cfg, "revoke-b")
        .await
        .expect("open b");
    // What the revoke commit leaves. noida-db cannot pass the strict check: it
    // bumps the group generation as soon as a member joins, so the commit a
    // revoking member sends (with the generation it still holds, which Apache
    // Kafka accepts while the group is preparing the rebalance) is refused
    // with ILLEGAL_GENERATION (seen in the log). Nothing is committed then and
    // the new owners re-read from the start: duplicates, never a loss. That
    // outcome is what is asserted for noida.
    let want = match kind {
        Kind::Tansu => vec![3, 2],
        Kind::Noida => vec![-1001, -1001],
    };
    // A delivery to `b` shows the rebalance is done.
    let d = match quiet(&mut bsrc, JOIN).await {
        Some(d) => d,
        None => next(&mut a, Duration::from_secs(5)).await,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let committed = loop {
        let c = b.committed(&group, &topic, 2);
        if c == want || std::time::Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        committed,
        want,
        "[{}] revoke commits the settled positions",
        kind.name()
    );
    // The member that got a partition reads it from the committed position.
    let (p, o) = (d.message.partition.unwrap(), d.message.offset.unwrap());
    let start = |p: usize| if want[p] < 0 { 0 } else { want[p] };
    assert_eq!(
        o,
        start(p as usize),
        "[{}] new owner starts at the commit",
        kind.name()
    );
    std::mem::forget(d);
    for d in kept {
        std::mem::forget(d);
    }
    drop(bsrc);
    drop(a);
    eprintln!("[{}] revoke committed {committed:?}", kind.name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_commits_noida() {
    revoke_commits(Kind::Noida).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_commits_tansu() {
    revoke_commits(Kind::Tansu).await;
}

// ---------------------------------------------------------------------------

async fn backpressure_pauses(kind: Kind) {
    let b = KafkaBroker::start(kind);
    let topic = common::unique("pause");
    b.create_topic(&topic, 1).await;
    b.produce(&topic, Some(0), &numbered(40)).await;
    let cfg = source_cfg(&b, &topic, &format!("{topic}-g"), "max_in_flight = 8");
    let mut src = sluice::sources::kafka::open(&cfg, "pause")
        .await
        .expect("open");
    let mut held = vec![next(&mut src, JOIN).await];
    while let Some(d) = quiet(&mut src, Duration::from_millis(700)).await {
        held.push(d);
        assert!(
            held.len() <= 8 + 1,
            "[{}] {} unsettled deliveries past max_in_flight 8",
            kind.name(),
            held.len()
        );
    }
    let paused_at = held.len();
    // Settling brings it below the resume mark (6): intake starts again.
    for d in held.drain(..) {
        d.settle(Settlement::Ack).await.unwrap();
    }
    let mut total = paused_at;
    while total < 40 {
        next(&mut src, Duration::from_secs(10))
            .await
            .settle(Settlement::Ack)
            .await
            .unwrap();
        total += 1;
    }
    src.close().await;
    eprintln!(
        "[{}] paused after {paused_at} unsettled, then all 40 arrived",
        kind.name()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_pauses_noida() {
    backpressure_pauses(Kind::Noida).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_pauses_tansu() {
    backpressure_pauses(Kind::Tansu).await;
}

// ---------------------------------------------------------------------------

async fn headers_round_trip(kind: Kind) {
    let b = KafkaBroker::start(kind);
    let input = common::unique("hdr-in");
    let output = common::unique("hdr-out");
    b.create_topic(&input, 1).await;
    b.create_topic(&output, 1).await;
    let sent = TestRecord {
        key: Some(b"\x00key\xff".to_vec()),
        payload: b"payload \xc3\x28".to_vec(),
        headers: vec![
            ("trace".into(), b"abc".to_vec()),
            ("bin".into(), vec![0, 255, 1]),
            ("dup".into(), b"1".to_vec()),
            ("dup".into(), b"2".to_vec()),
        ],
        ..Default::default()
    };
    b.produce(&input, Some(0), std::slice::from_ref(&sent))
        .await;
    let mut src =
        sluice::sources::kafka::open(&source_cfg(&b, &input, &format!("{input}-g"), ""), "hdr")
            .await
            .expect("open source");
    let d = next(&mut src, JOIN).await;
    let m = &d.message;
    assert_eq!(
        m.key.as_deref(),
        sent.key.as_deref(),
        "[{}] key",
        kind.name()
    );
    assert_eq!(&m.payload[..], &sent.payload[..]);
    let hs: Vec<(String, Vec<u8>)> = m
        .headers
        .iter()
        .map(|h| (h.key.clone(), h.value.to_vec()))
        .collect();
    assert_eq!(
        hs,
        sent.headers,
        "[{}] source headers, in order, duplicates kept",
        kind.name()
    );
    assert!(
        m.timestamp_ms.is_some_and(|t| t > 1_600_000_000_000),
        "timestamp {:?}",
        m.timestamp_ms
    );
    assert_eq!(m.topic, input);
    // Through the sink to the output topic, unchanged.
    let sink = sluice::sinks::kafka::open(&sink_cfg(&b, &output, ""), "hdr")
        .await
        .expect("open sink");
    let rec = Record {
        topic: None,
        key: m.key.clone(),
        payload: m.payload.clone(),
        headers: m.headers.clone(),
        id: "hdr:1".into(),
    };
    sink.publish(std::slice::from_ref(&rec))
        .await
        .expect("publish");
    sink.close().await.expect("close sink");
    d.settle(Settlement::Ack).await.unwrap();
    src.close().await;
    let out = b.collect(&output).await;
    let got = out.wait(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "[{}] output", kind.name());
    assert_eq!(
        (&got[0].key, &got[0].payload, &got[0].headers),
        (&sent.key, &sent.payload, &sent.headers),
        "[{}] sink round trip",
        kind.name()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_round_trip_noida() {
    headers_round_trip(Kind::Noida).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_round_trip_tansu() {
    headers_round_trip(Kind::Tansu).await;
}

// ---------------------------------------------------------------------------

/// A record the sink refuses is `rejected`, and a pipeline dead-letters it
/// and goes on with the next messages (it does not block the stream).
async fn rejected_is_dead_lettered(kind: Kind) {
    use sluice::failure::FailureClass;
    let b = KafkaBroker::start(kind);
    let (input, output, dlq) = (
        common::unique("rej-in"),
        common::unique("rej-out"),
        common::unique("rej-dlq"),
    );
    for t in [&input, &output, &dlq] {
        b.create_topic(t, 1).await;
    }
    // The output sink allows records of at most 2000 bytes (message.max.bytes,
    // checked by librdkafka before sending: MSG_SIZE_TOO_LARGE); the dead letter
    // has the default limit.
    let small = sluice::sinks::kafka::open(
        &sink_cfg(&b, &output, "options = { \"message.max.bytes\" = 2000 }"),
        "rej",
    )
    .await
    .expect("open sink");
    let big = Record {
        topic: None,
        key: None,
        payload: vec![b'x'; 3000].into(),
        headers: vec![],
        id: "1".into(),
    };
    let err = small
        .publish(std::slice::from_ref(&big))
        .await
        .expect_err("too large");
    assert_eq!(err.class, FailureClass::Rejected, "[{}] {err}", kind.name());
    // A topic name the broker refuses.
    let bad = Record {
        topic: Some("no such/topic".into()),
        ..big.clone()
    };
    let err = small
        .publish(std::slice::from_ref(&Record {
            payload: "x".into(),
            ..bad
        }))
        .await
        .expect_err("bad topic");
    assert_eq!(
        err.class,
        FailureClass::Rejected,
        "[{}] invalid topic: {err}",
        kind.name()
    );

    // Through a pipeline: every third message is too large for the sink.
    let engine = common::engine();
    let plugin = sluice::engine::Plugin::load(
        &engine,
        sluice::engine::PluginSpec::new(common::plugin("echo")),
    )
    .await
    .expect("load echo");
    let mut msgs = Vec::new();
    for i in 0..30 {
        let body = if i % 3 == 1 {
            format!("{i:04}{}", "y".repeat(3000))
        } else {
            format!("{i:04}")
        };
        msgs.push(TestRecord::new(body));
    }
    b.produce(&input, Some(0), &msgs).await;
    let out_c = b.collect(&output).await;
    let dlq_c = b.collect(&dlq).await;
    let source =
        sluice::sources::kafka::open(&source_cfg(&b, &input, &format!("{input}-g"), ""), "rej")
            .await
            .expect("open source");
    let dead = sluice::sinks::kafka::open(&sink_cfg(&b, &dlq, ""), "rej")
        .await
        .expect("open dlq");
    let sinks = sluice::pipeline::Sinks {
        default: Some(Arc::new(small)),
        named: Default::default(),
    };
    let pipeline = sluice::pipeline::Pipeline::new(sluice::pipeline::Parts {
        name: "rej".into(),
        source: Box::new(source),
        plugin,
        sinks,
        dead_letter: Some(Arc::new(dead)),
        policy: sluice::policy::Policy {
            errors: Default::default(),
            retry: Default::default(),
        },
        breaker: Default::default(),
        dedup: None,
        concurrency: 1,
        publish_window: 128,
        batch: 16,
        publish_timeout: Duration::from_secs(10),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(pipeline.run(async move {
        let _ = stopped.await;
    }));
    let good = out_c.wait(20, Duration::from_secs(30)).await;
    let dead = dlq_c.wait(10, Duration::from_secs(10)).await;
    let _ = stop.send(());
    let snap = run.await.expect("join").expect("pipeline");
    assert_eq!(good.len(), 20, "[{}] the good messages flow", kind.name());
    assert_eq!(
        dead.len(),
        10,
        "[{}] every too-large output dead-lettered",
        kind.name()
    );
    for d in &dead {
        assert_eq!(d.header("sluice-error-class").as_deref(), Some("rejected"));
        assert_eq!(d.header("sluice-source-partition").as_deref(), Some("0"));
        assert!(d.header("sluice-source-offset").is_some());
        assert!(d.payload.len() > 3000, "original payload kept");
    }
    let order: Vec<String> = good
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload[..4]).into_owned())
        .collect();
    let want: Vec<String> = (0..30)
        .filter(|i| i % 3 != 1)
        .map(|i| format!("{i:04}"))
        .collect();
    assert_eq!(
        order,
        want,
        "[{}] order kept around the dead letters",
        kind.name()
    );
    eprintln!(
        "[{}] rejected: {} out, {} dead-lettered; stats {snap:?}",
        kind.name(),
        good.len(),
        dead.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_is_dead_lettered_noida() {
    rejected_is_dead_lettered(Kind::Noida).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_is_dead_lettered_tansu() {
    rejected_is_dead_lettered(Kind::Tansu).await;
}

// ---------------------------------------------------------------------------

/// Nothing listening: `open` fails with a clear error instead of hanging.
#[tokio::test]
async fn unreachable_brokers_fail_open() {
    let port = common::free_port();
    let text = format!("brokers = \"127.0.0.1:{port}\"\ntopics = [\"t\"]\ngroup = \"g\"");
    let cfg: KafkaSourceConfig = toml::from_str(&text).unwrap();
    let t0 = std::time::Instant::now();
    let err = sluice::sources::kafka::open(&cfg, "down")
        .await
        .err()
        .expect("open must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("did not answer") && msg.contains(&port.to_string()),
        "{msg}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "bounded: {:?}",
        t0.elapsed()
    );
    let sink: KafkaSinkConfig =
        toml::from_str(&format!("brokers = \"127.0.0.1:{port}\"\ntopic = \"t\"")).unwrap();
    let err = sluice::sinks::kafka::open(&sink, "down")
        .await
        .err()
        .expect("sink open must fail");
    assert!(format!("{err:#}").contains("did not answer"), "{err:#}");
}

// ---------------------------------------------------------------------------

/// The source-lag gauge from librdkafka's statistics (every 100 ms here):
/// 200 records waiting and a slow handler (each call runs into its 10 ms
/// timeout and is dropped): the gauge shows most of the backlog at first and
/// 0 once everything is committed.
async fn source_lag(kind: Kind) {
    let b = KafkaBroker::start(kind);
    let topic = common::unique("lag");
    b.create_topic(&topic, 1).await;
    let n = 200u64;
    let recs: Vec<TestRecord> = (0..n).map(|_| TestRecord::new("loop")).collect();
    b.produce(&topic, Some(0), &recs).await;
    let mut cfg = source_cfg(
        &b,
        &topic,
        &common::unique("g"),
        "commit_interval = \"100ms\"",
    );
    cfg.options.insert(
        "statistics.interval.ms".into(),
        sluice::config::kafka::OptionValue::Int(100),
    );
    let source = sluice::sources::kafka::open(&cfg, "t").await.unwrap();
    let plugin = common::nats::run::plugin(
        &common::plugin("infinite-loop"),
        &[],
        Duration::from_millis(10),
    )
    .await;
    let errors = sluice::config::ErrorsConfig {
        timeout: sluice::config::Action::Drop,
        ..Default::default()
    };
    let p = common::nats::run::start(
        Box::new(source),
        plugin,
        None,
        None,
        errors,
        common::nats::run::retry(1, Duration::from_millis(10)),
    );
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + JOIN + Duration::from_secs(60);
    loop {
        let s = p.stats.snapshot();
        if let Some(l) = s.source_lag
            && seen.last() != Some(&l)
        {
            seen.push(l);
        }
        if (s.dropped == n && s.source_lag == Some(0)) || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = p.stop().await;
    eprintln!(
        "[{} lag] reported {seen:?}; handled {}",
        kind.name(),
        s.dropped
    );
    assert_eq!(s.dropped, n, "every record handled");
    assert!(
        seen.iter().any(|l| *l >= n / 2),
        "a report showed the backlog: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&0), "caught up: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_lag_noida() {
    source_lag(Kind::Noida).await;
}

// ---------------------------------------------------------------------------

/// TLS: tansu behind a TLS terminator (socat, with a certificate for
/// 127.0.0.1 signed by a test CA; the broker advertises the TLS port). The
/// source reads and the sink writes over TLS with that CA as
/// `security.ca_file`; with another CA each `open` fails with an error that
/// names the refused certificate (not librdkafka's later "all brokers down").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_source_reads_and_an_unknown_ca_fails_open() {
    let ca_files = common::tls::TestCa::new();
    let d = ca_files.dir.path();
    let tls_port = common::free_port();
    let mut b = KafkaBroker::start_tansu_advertising(tls_port);
    let _tls = common::Proc {
        child: std::process::Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                d.join("server.pem").display(),
                d.join("server.key").display()
            ))
            .arg(format!("TCP:127.0.0.1:{}", b.port))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("socat on PATH (apt-get install socat)"),
    };
    assert!(common::wait_for_port(tls_port, Duration::from_secs(10)));
    let ca = d.join("ca.pem").display().to_string();
    b.client_extra = vec![
        ("security.protocol".into(), "ssl".into()),
        ("ssl.ca.location".into(), ca.clone()),
    ];
    let topic = common::unique("tls");
    b.create_topic(&topic, 1).await;
    b.produce(&topic, Some(0), &numbered(20)).await;

    let tls = |ca: &str| format!("\n[security]\nprotocol = \"ssl\"\nca_file = \"{ca}\"");
    let cfg = source_cfg(&b, &topic, &common::unique("g"), &tls(&ca));
    let mut src = sluice::sources::kafka::open(&cfg, "t").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        let dl = next(&mut src, JOIN).await;
        got.push(String::from_utf8_lossy(&dl.message.payload).into_owned());
        dl.settle(Settlement::Ack).await.unwrap();
    }
    src.close().await;
    let want: Vec<String> = (0..20).map(|i| format!("m-{i}")).collect();
    assert_eq!(got, want, "all 20 records over TLS, in order");

    let other = d.join("other.pem").display().to_string();
    let cfg = source_cfg(&b, &topic, &common::unique("g"), &tls(&other));
    let t = std::time::Instant::now();
    let err = match sluice::sources::kafka::open(&cfg, "t").await {
        Ok(_) => panic!("a broker certificate from an unknown CA must fail open"),
        Err(e) => format!("{e:#}"),
    };
    eprintln!(
        "[kafka tls] 20 records over TLS; unknown CA refused in {:?}: {err}",
        t.elapsed()
    );
    assert!(
        err.to_lowercase().contains("ssl") || err.to_lowercase().contains("certificate"),
        "the error says it is about TLS: {err}"
    );

    // The sink over TLS: 20 records written, read back over TLS; with the
    // other CA its open fails the same way.
    let out = common::unique("tls-out");
    b.create_topic(&out, 1).await;
    let sink = sluice::sinks::kafka::open(&sink_cfg(&b, &out, &tls(&ca)), "t")
        .await
        .expect("sink over TLS");
    let recs: Vec<Record> = (0..20)
        .map(|i| Record {
            topic: None,
            key: None,
            payload: format!("o-{i}").into(),
            headers: Vec::new(),
            id: String::new(),
        })
        .collect();
    sink.publish(&recs).await.expect("publish over TLS");
    let cfg = source_cfg(&b, &out, &common::unique("g"), &tls(&ca));
    let mut src = sluice::sources::kafka::open(&cfg, "t").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        let dl = next(&mut src, JOIN).await;
        got.push(String::from_utf8_lossy(&dl.message.payload).into_owned());
        dl.settle(Settlement::Ack).await.unwrap();
    }
    src.close().await;
    let want: Vec<String> = (0..20).map(|i| format!("o-{i}")).collect();
    assert_eq!(
        got, want,
        "all 20 records the sink wrote over TLS, in order"
    );
    let err = match sluice::sinks::kafka::open(&sink_cfg(&b, &out, &tls(&other)), "t").await {
        Ok(_) => panic!("a broker certificate from an unknown CA must fail the sink's open"),
        Err(e) => format!("{e:#}"),
    };
    eprintln!("[kafka tls] sink: 20 records over TLS; unknown CA refused: {err}");
    assert!(
        err.to_lowercase().contains("ssl") || err.to_lowercase().contains("certificate"),
        "the sink's error says it is about TLS: {err}"
    );
}

// ---------------------------------------------------------------------------

/// Wrong SASL credentials on tansu with `--authentication`: the source
/// and the sink fail `open` at once with the broker's reason, the password
/// never in the error. (Right credentials cannot be
/// had on this broker: see [`KafkaBroker::start_tansu_authenticated`].)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_wrong_credentials_fail_open() {
    let b = KafkaBroker::start_tansu_authenticated();
    let topic = common::unique("sasl");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad"), "wr0ng-pw\n").unwrap();
    for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256"] {
        let cfg = format!(
            "[security]\nprotocol = \"sasl_plaintext\"\nsasl_mechanism = \"{mechanism}\"\nusername = \"sluice\"\npassword = {{ file = \"{}\" }}",
            dir.path().join("bad").display()
        );
        let t0 = std::time::Instant::now();
        let source = sluice::sources::kafka::open(
            &source_cfg(&b, &topic, &common::unique("g"), &cfg),
            "sasl",
        )
        .await
        .err()
        .map(|e| format!("source: {e:#}"));
        let sink = sluice::sinks::kafka::open(&sink_cfg(&b, &topic, &cfg), "sasl")
            .await
            .err()
            .map(|e| format!("sink: {e:#}"));
        let took = t0.elapsed();
        eprintln!("[kafka sasl {mechanism}] refused in {took:?}: {source:?} {sink:?}");
        for e in [&source, &sink] {
            let e = e.as_deref().expect("wrong credentials must fail open");
            assert!(
                e.contains("refused the credentials") && e.contains("SASL authentication"),
                "{e}"
            );
            assert!(!e.contains("wr0ng-pw"), "the secret leaked: {e}");
        }
        // Both refused at the first answer, not after the open timeout
        // (10 s each) that librdkafka's retries would run into.
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
}
