//! One conformance suite for every source/sink type (redpanda-connect style):
//! delivery in order, outputs, dead letters with their metadata, retry then
//! success, and no loss across a SIGKILL of the `sluice` process. Each broker
//! provides a [`Fixture`]; the suite runs the real `sluice` binary.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::common;

/// A message as produced to or collected from a broker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TestMsg {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl TestMsg {
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        TestMsg {
            key: None,
            payload: payload.into(),
            headers: Vec::new(),
        }
    }

    pub fn header(&self, k: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(hk, _)| hk == k)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Captures what arrives on one topic.
pub trait Collector: Send {
    /// Everything received so far, after waiting until at least `n` arrived or `timeout` passed.
    fn collect(&mut self, n: usize, timeout: Duration) -> BoxFuture<'_, Vec<TestMsg>>;
}

/// Reads what arrived (`read`) every `every` until at least `n` or `timeout`
/// passed: the [`Collector::collect`] of captures that fill in the background.
pub async fn poll(
    n: usize,
    timeout: Duration,
    every: Duration,
    mut read: impl FnMut() -> Vec<TestMsg>,
) -> Vec<TestMsg> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = read();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(every).await;
    }
}

/// What the suite needs of a broker type.
pub trait Fixture: Send + Sync {
    fn name(&self) -> String;
    /// Body (no table header) of a `[source]` table reading `topic` with consumer group / durable `group`.
    fn source_toml(&self, topic: &str, group: &str) -> String;
    /// Body of a `[sink]` / `[dead_letter]` table writing to `topic`.
    fn sink_toml(&self, topic: &str) -> String;
    /// Creates topic/stream if needed and starts capturing `topic` now.
    fn collector<'a>(&'a self, topic: &'a str)
    -> BoxFuture<'a, anyhow::Result<Box<dyn Collector>>>;
    /// Publishes the messages in order and waits until the broker accepted them.
    fn produce<'a>(
        &'a self,
        topic: &'a str,
        msgs: &'a [TestMsg],
    ) -> BoxFuture<'a, anyhow::Result<()>>;
    /// Prepares `topic` to be shared by several consumers before any starts
    /// (Kafka: four partitions, so a group has something to split). Default: nothing.
    fn share<'a>(&'a self, _topic: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// How many messages a crash may repeat at most: what the source can
    /// hold unsettled, plus what it may have settled and not yet committed.
    fn duplicate_window(&self) -> usize {
        1024 + 64
    }
    /// false for NATS core (at-most-once).
    fn at_least_once(&self) -> bool {
        true
    }
}

/// A pipeline under test: its folder, file and topics.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
    pub input: String,
    pub output: String,
    pub dlq: String,
}

/// Writes a pipeline file reading `input`, writing `output`, dead-lettering to `dlq`.
pub fn setup(fx: &dyn Fixture, test: &str, plugin: &str, handler_extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::unique(&format!("{}-{test}", fx.name()));
    let (input, output, dlq) = (
        format!("{base}-in"),
        format!("{base}-out"),
        format!("{base}-dlq"),
    );
    let toml = format!(
        r#"name = "{test}"

[source]
{source}

[handler]
plugin = "{plugin}"
timeout = "2s"
{handler_extra}

[sink]
{sink}

[dead_letter]
{dead}

[retry]
max_attempts = 4
initial = "20ms"
max = "200ms"
jitter = "none"
"#,
        source = fx.source_toml(&input, &format!("{base}-group")),
        plugin = common::plugin(plugin).display(),
        sink = fx.sink_toml(&output),
        dead = fx.sink_toml(&dlq),
    );
    let file = dir.path().join(format!("{test}.toml"));
    std::fs::write(&file, toml).expect("write pipeline");
    Setup {
        dir,
        file,
        input,
        output,
        dlq,
    }
}

fn log_of(file: &Path) -> String {
    std::fs::read_to_string(file.with_extension("log")).unwrap_or_default()
}

/// Stops a running sluice with SIGTERM and checks it exits 0 promptly.
fn stop_cleanly(mut p: common::Proc, file: &Path) {
    p.signal("TERM");
    let code = p.wait_timeout(Duration::from_secs(20));
    assert_eq!(
        code,
        Some(0),
        "sluice did not exit 0 on SIGTERM; log:\n{}",
        log_of(file)
    );
}

fn numbered(prefix: &str, n: usize) -> Vec<TestMsg> {
    (0..n)
        .map(|i| TestMsg::new(format!("{prefix}-{i:05}")))
        .collect()
}

/// Outputs arrive, in order, one per message.
pub async fn in_order(fx: &dyn Fixture) {
    let s = setup(fx, "in-order", "echo", "");
    let mut out = fx.collector(&s.output).await.expect("collector");
    let msgs = numbered("m", 200);
    fx.produce(&s.input, &msgs).await.expect("produce");
    let p = common::spawn_sluice(&s.file);
    let got = out.collect(msgs.len(), Duration::from_secs(60)).await;
    stop_cleanly(p, &s.file);
    let payloads: Vec<&[u8]> = got.iter().map(|m| m.payload.as_slice()).collect();
    let want: Vec<&[u8]> = msgs.iter().map(|m| m.payload.as_slice()).collect();
    assert_eq!(
        payloads,
        want,
        "[{}] outputs differ from inputs (order or content); log:\n{}",
        fx.name(),
        log_of(&s.file)
    );
    common::report(
        &format!("{} in-order", fx.name()),
        msgs.len(),
        got.len(),
        0,
        0,
        0,
    );
}

/// Fatal messages go to the dead letter byte for byte with their metadata;
/// good ones keep flowing.
pub async fn dead_letters(fx: &dyn Fixture) {
    let s = setup(fx, "dead-letters", "fatal-on", "");
    let mut out = fx.collector(&s.output).await.expect("collector");
    let mut dlq = fx.collector(&s.dlq).await.expect("collector");
    let mut msgs = Vec::new();
    for i in 0..40 {
        let mut m = TestMsg::new(if i % 4 == 1 {
            format!("bad-{i}")
        } else {
            format!("ok-{i}")
        });
        if i % 2 == 0 {
            m.key = Some(format!("k{i}").into_bytes());
        }
        msgs.push(m);
    }
    fx.produce(&s.input, &msgs).await.expect("produce");
    let p = common::spawn_sluice(&s.file);
    let bad: Vec<&TestMsg> = msgs
        .iter()
        .filter(|m| m.payload.starts_with(b"bad"))
        .collect();
    let good: Vec<&TestMsg> = msgs
        .iter()
        .filter(|m| !m.payload.starts_with(b"bad"))
        .collect();
    let got = out.collect(good.len(), Duration::from_secs(60)).await;
    let dead = dlq.collect(bad.len(), Duration::from_secs(60)).await;
    stop_cleanly(p, &s.file);
    let got_p: Vec<&[u8]> = got.iter().map(|m| m.payload.as_slice()).collect();
    let good_p: Vec<&[u8]> = good.iter().map(|m| m.payload.as_slice()).collect();
    assert_eq!(got_p, good_p, "[{}] good messages", fx.name());
    assert_eq!(
        dead.len(),
        bad.len(),
        "[{}] dead letters; log:\n{}",
        fx.name(),
        log_of(&s.file)
    );
    for (d, b) in dead.iter().zip(&bad) {
        assert_eq!(d.payload, b.payload, "payload byte for byte");
        assert_eq!(d.header("sluice-error-class").as_deref(), Some("fatal"));
        let why = d.header("sluice-error-message").unwrap_or_default();
        assert!(
            why.contains(&String::from_utf8_lossy(&b.payload).into_owned()),
            "cause kept: {why}"
        );
        assert_eq!(d.header("sluice-pipeline").as_deref(), Some("dead-letters"));
        assert_eq!(d.header("sluice-attempts").as_deref(), Some("1"));
        assert!(
            d.header("sluice-plugin-digest")
                .unwrap_or_default()
                .starts_with("sha256:")
        );
        assert!(
            d.header("sluice-source-topic")
                .is_some_and(|t| t.contains(&s.input)),
            "source topic"
        );
        assert!(d.header("sluice-failed-at").is_some());
    }
    common::report(
        &format!("{} dead-letters", fx.name()),
        msgs.len(),
        got.len(),
        dead.len(),
        0,
        0,
    );
}

/// A handler failing retriably twice succeeds on the third attempt; nothing is dead-lettered.
pub async fn retry_then_success(fx: &dyn Fixture) {
    let s = setup(fx, "retry", "flaky", "config = { fail_times = \"2\" }");
    let mut out = fx.collector(&s.output).await.expect("collector");
    let mut dlq = fx.collector(&s.dlq).await.expect("collector");
    let msgs = numbered("r", 10);
    fx.produce(&s.input, &msgs).await.expect("produce");
    let p = common::spawn_sluice(&s.file);
    let got = out.collect(msgs.len(), Duration::from_secs(60)).await;
    let dead = dlq.collect(0, Duration::from_millis(500)).await;
    stop_cleanly(p, &s.file);
    let mut got_p: Vec<Vec<u8>> = got.iter().map(|m| m.payload.clone()).collect();
    got_p.sort();
    let want: Vec<Vec<u8>> = msgs.iter().map(|m| m.payload.clone()).collect();
    assert_eq!(
        got_p,
        want,
        "[{}] every message succeeds after retries; log:\n{}",
        fx.name(),
        log_of(&s.file)
    );
    assert!(
        dead.is_empty(),
        "[{}] nothing dead-lettered, got {}",
        fx.name(),
        dead.len()
    );
    common::report(
        &format!("{} retry", fx.name()),
        msgs.len(),
        got.len(),
        0,
        0,
        0,
    );
}

/// SIGKILL mid-stream, restart, count: every message is in the output or the
/// dead letter; duplicates are counted and stay within the in-flight window.
pub async fn no_loss_across_sigkill(fx: &dyn Fixture) {
    assert!(
        fx.at_least_once(),
        "[{}] no loss across a SIGKILL is an at-least-once promise",
        fx.name()
    );
    let n = 3000;
    let window = fx.duplicate_window();
    // Each message waits for its output's acknowledgement before the next
    // is handled, so the stream takes long enough for the kill to land in
    // its middle on a fast machine too (checked below, not assumed).
    let s = setup(fx, "sigkill", "fatal-on", "batch = 1\npublish_window = 1");
    let mut out = fx.collector(&s.output).await.expect("collector");
    let mut dlq = fx.collector(&s.dlq).await.expect("collector");
    let msgs: Vec<TestMsg> = (0..n)
        .map(|i| {
            TestMsg::new(if i % 100 == 7 {
                format!("bad-{i:05}")
            } else {
                format!("k-{i:05}")
            })
        })
        .collect();
    fx.produce(&s.input, &msgs).await.expect("produce");
    let p = common::spawn_sluice(&s.file);
    out.collect(n / 5, Duration::from_secs(60)).await;
    p.signal("KILL");
    drop(p);
    // Everything the killed process put out, what was in transit included.
    let before: HashSet<Vec<u8>> = out
        .collect(n, Duration::from_millis(500))
        .await
        .into_iter()
        .chain(dlq.collect(n, Duration::from_millis(100)).await)
        .map(|m| m.payload)
        .collect();
    let seen = before.len();
    assert!(
        seen > 0 && seen <= n / 2,
        "[{}] the kill must land mid-stream: {seen} of {n} messages were out before it; log:\n{}",
        fx.name(),
        log_of(&s.file)
    );
    let p = common::spawn_sluice(&s.file);
    let deadline = Instant::now() + Duration::from_secs(120);
    let expected_bad = msgs
        .iter()
        .filter(|m| m.payload.starts_with(b"bad"))
        .count();
    let (got, dead) = loop {
        let got = out
            .collect(n - expected_bad, Duration::from_millis(500))
            .await;
        let dead = dlq.collect(expected_bad, Duration::from_millis(100)).await;
        let unique_out: std::collections::HashSet<&[u8]> =
            got.iter().map(|m| m.payload.as_slice()).collect();
        let unique_dead: std::collections::HashSet<&[u8]> =
            dead.iter().map(|m| m.payload.as_slice()).collect();
        if unique_out.len() + unique_dead.len() >= n || Instant::now() > deadline {
            break (got, dead);
        }
    };
    stop_cleanly(p, &s.file);
    let mut count: HashMap<&[u8], usize> = HashMap::new();
    for m in got.iter().chain(&dead) {
        *count.entry(m.payload.as_slice()).or_default() += 1;
    }
    let lost: Vec<String> = msgs
        .iter()
        .filter(|m| !count.contains_key(m.payload.as_slice()))
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    let dups: usize = count.values().map(|c| c - 1).sum();
    let unique_dead: std::collections::HashSet<&[u8]> =
        dead.iter().map(|m| m.payload.as_slice()).collect();
    let left_for_restart = count
        .keys()
        .filter(|p| !before.contains(**p as &[u8]))
        .count();
    common::report(
        &format!(
            "{} sigkill ({seen} out before the kill, {left_for_restart} left for the restart)",
            fx.name()
        ),
        n,
        got.len(),
        dead.len(),
        0,
        dups,
    );
    common::fault_line(
        &format!("sigkill-{}", fx.name()),
        &format!(
            "sent={n} delivered={} dead={} dropped=0 dup={dups} lost={} recovery_ms=none",
            got.len(),
            dead.len(),
            lost.len()
        ),
        &format!(
            "`sluice` ({}) killed with SIGKILL mid-stream ({seen} of {n} messages out), restarted",
            fx.name()
        ),
    );
    assert!(
        lost.is_empty(),
        "[{}] lost {} messages, e.g. {:?}; log:\n{}",
        fx.name(),
        lost.len(),
        &lost[..lost.len().min(5)],
        log_of(&s.file)
    );
    assert_eq!(
        unique_dead.len(),
        expected_bad,
        "[{}] each bad message dead-lettered",
        fx.name()
    );
    assert!(
        dups <= window,
        "[{}] {dups} duplicates, more than the in-flight window {window}",
        fx.name()
    );
}

/// Scale-out: two `sluice` processes run the same pipeline (same consumer
/// group / durable), told apart by the tag their `tagger` handler puts on
/// each output. Messages trickle in until both instances have produced
/// outputs (the broker split the stream), then instance `a` is SIGKILLed and
/// a second wave follows: every message of both waves must come out (or the
/// count shows it lost), and the second wave only from the survivor `b`.
pub async fn scale_out_sigkill(fx: &dyn Fixture) {
    assert!(
        fx.at_least_once(),
        "[{}] an at-least-once check (NATS core's is nats_core::queue_group_survives_sigkill_of_one_instance)",
        fx.name()
    );
    let s = setup(fx, "scale-a", "tagger", "config = { tag = \"a\" }");
    let a_toml = std::fs::read_to_string(&s.file).expect("read pipeline");
    let b_file = s.dir.path().join("scale-b.toml");
    std::fs::write(
        &b_file,
        a_toml
            .replace("name = \"scale-a\"", "name = \"scale-b\"")
            .replace("tag = \"a\"", "tag = \"b\""),
    )
    .expect("write pipeline b");
    fx.share(&s.input).await.expect("share input");
    let mut out = fx.collector(&s.output).await.expect("collector");
    let pa = common::spawn_sluice(&s.file);
    let pb = common::spawn_sluice(&b_file);

    // Wave 1: batches of 50 until both instances have answered.
    let mut sent: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let tags = |got: &[TestMsg]| {
        let a = got.iter().filter(|m| m.payload.starts_with(b"a:")).count();
        (a, got.len() - a)
    };
    let (mut by_a, mut by_b) = (0, 0);
    while (by_a < 10 || by_b < 10) && Instant::now() < deadline {
        let batch: Vec<TestMsg> = (sent.len()..sent.len() + 50)
            .map(|i| keyed(format!("w1-{i:05}")))
            .collect();
        fx.produce(&s.input, &batch).await.expect("produce");
        sent.extend(
            batch
                .iter()
                .map(|m| String::from_utf8_lossy(&m.payload).into_owned()),
        );
        (by_a, by_b) = tags(&out.collect(0, Duration::from_millis(200)).await);
    }
    assert!(
        by_a > 0 && by_b > 0,
        "[{}] the two instances never split the stream (a {by_a}, b {by_b}); logs:\n{}\n{}",
        fx.name(),
        log_of(&s.file),
        log_of(&b_file)
    );
    let wave1 = sent.len();
    pa.signal("KILL");
    drop(pa);
    let killed_at = Instant::now();

    // Wave 2: after the kill, only the survivor can take these.
    let wave2: Vec<TestMsg> = (0..1000).map(|i| keyed(format!("w2-{i:05}"))).collect();
    fx.produce(&s.input, &wave2).await.expect("produce");
    sent.extend(
        wave2
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned()),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut taken_over = None;
    let got = loop {
        let got = out.collect(sent.len(), Duration::from_millis(500)).await;
        if taken_over.is_none() && got.iter().any(|m| m.payload.starts_with(b"b:w2-")) {
            taken_over = Some(killed_at.elapsed());
        }
        let unique: HashSet<&[u8]> = got.iter().map(|m| untagged(&m.payload)).collect();
        if unique.len() >= sent.len() || Instant::now() > deadline {
            break got;
        }
    };
    let all_in = killed_at.elapsed();
    stop_cleanly(pb, &b_file);

    let mut count: HashMap<&[u8], usize> = HashMap::new();
    for m in &got {
        *count.entry(untagged(&m.payload)).or_default() += 1;
    }
    let lost: Vec<&String> = sent
        .iter()
        .filter(|p| !count.contains_key(p.as_bytes()))
        .collect();
    let dups: usize = count.values().map(|c| c - 1).sum();
    let wave2_by_a = got
        .iter()
        .filter(|m| m.payload.starts_with(b"a:w2-"))
        .count();
    common::report(
        &format!(
            "{} scale-out (before the kill: a {by_a}, b {by_b}; a SIGKILLed after wave 1 of {wave1}; \
             b's first wave-2 output {:.1?} and everything in {all_in:.1?} after the kill)",
            fx.name(),
            taken_over.unwrap_or_default()
        ),
        sent.len(),
        got.len(),
        0,
        0,
        dups,
    );
    assert!(
        lost.is_empty(),
        "[{}] scale-out lost {} messages, e.g. {:?}; survivor's log:\n{}",
        fx.name(),
        lost.len(),
        &lost[..lost.len().min(5)],
        log_of(&b_file)
    );
    assert_eq!(
        wave2_by_a, 0,
        "the killed instance cannot have handled wave 2"
    );
    assert!(
        dups <= fx.duplicate_window(),
        "[{}] {dups} duplicates, more than the killed instance's in-flight window",
        fx.name()
    );
}

/// A `tagger` output without its `a:` / `b:` tag.
fn untagged(payload: &[u8]) -> &[u8] {
    payload.get(2..).unwrap_or_default()
}

/// A message with a key, so keyed brokers spread them over partitions.
fn keyed(payload: String) -> TestMsg {
    TestMsg {
        key: Some(payload.clone().into_bytes()),
        payload: payload.into_bytes(),
        headers: Vec::new(),
    }
}

/// The whole suite, in order; no loss across a SIGKILL only where the
/// source promises at least once (NATS core's SIGKILL case is
/// `nats_core::queue_group_survives_sigkill_of_one_instance`).
pub async fn run_all(fx: &dyn Fixture) {
    in_order(fx).await;
    dead_letters(fx).await;
    retry_then_success(fx).await;
    if fx.at_least_once() {
        no_loss_across_sigkill(fx).await;
    }
}
