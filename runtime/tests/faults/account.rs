//! Accounting for every message a fault test sent — delivered,
//! dead-lettered, dropped, duplicated or lost — and the steps most fault
//! tests share: run Sluice until it is mid-stream, inject and heal the
//! fault, wait until everything is accounted for, stop Sluice, count.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::capture::{Capture, Got, Seen};
use crate::common;

/// The fate of every message sent.
pub struct Tally {
    pub sent: usize,
    pub delivered: usize,
    pub dead: usize,
    pub dropped: usize,
    pub dup: usize,
    pub lost: Vec<String>,
}

/// Counts outputs and dead letters against what was sent. An output or a
/// dead letter whose payload was never sent is a test error.
pub fn tally(sent: &[Vec<u8>], out: &[Got], dead: &[Got], dropped: usize) -> Tally {
    let mut count: HashMap<&[u8], usize> = HashMap::new();
    for g in out.iter().chain(dead) {
        *count.entry(g.payload.as_slice()).or_default() += 1;
    }
    let sent_set: std::collections::HashSet<&[u8]> = sent.iter().map(Vec::as_slice).collect();
    let strangers: Vec<String> = count
        .keys()
        .filter(|k| !sent_set.contains(*k))
        .take(5)
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert!(
        strangers.is_empty(),
        "outputs that were never sent: {strangers:?}"
    );
    Tally {
        sent: sent.len(),
        delivered: out.len(),
        dead: dead.len(),
        dropped,
        dup: count.values().map(|c| c - 1).sum(),
        lost: sent
            .iter()
            .filter(|m| !count.contains_key(m.as_slice()))
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect(),
    }
}

/// What each fault test does, by its name: the first column of the fault
/// table (`docs/faults.md`), which `table.sh` writes from the lines the
/// tests left.
const WHAT: &[(&str, &str)] = &[
    (
        "kafka-noida-broker-restart",
        "Kafka (noida-db) broker stopped (SIGTERM) 3 s mid-stream, restarted",
    ),
    (
        "kafka-tansu-partition",
        "Kafka (tansu) broker cut off by the proxy for 3 s (every client goes through it)",
    ),
    (
        "mqtt5-broker-restart",
        "Mosquitto (persistence on) stopped (SIGTERM) 2 s mid-stream, restarted; MQTT 5, QoS 1, persistent session",
    ),
    (
        "mqtt5-broker-sigkill",
        "Mosquitto (persistence written after every change) killed (SIGKILL) 2 s mid-stream, restarted on its file; MQTT 5, QoS 1, persistent sessions",
    ),
    (
        "mqtt-qos2-release-lost",
        "MQTT 5 at QoS 2: the source's connection held 1 s a chunk, then cut, while the broker's PUBRELs were on their way; the resumed session sends them again",
    ),
    (
        "nats-core-server-restart",
        "NATS core server killed (SIGKILL) 1 s mid-stream while ~1000 msg/s are published, restarted (at most once: lost is what the server had not delivered)",
    ),
    (
        "jetstream-server-restart",
        "NATS JetStream server killed (SIGKILL) 2 s mid-stream, restarted on its store",
    ),
    (
        "jetstream-source-cut",
        "JetStream source connection cut 3 s (proxy)",
    ),
    (
        "jetstream-sink-hang",
        "JetStream sink hung 5 s (proxy holds every chunk 3 s; sink timeout 1 s)",
    ),
    (
        "mqtt5-sink-cut",
        "MQTT sink connection cut 3 s (proxy), longer than the retry budget",
    ),
    (
        "sink-outage-breaker",
        "Sink away 6 s, far past the retry budget (3 × 500 ms), 4 msg/s trickling in",
    ),
    (
        "sigterm-during-sink-outage",
        "SIGTERM while the sink is away and the breaker holds a message; restart with the sink back",
    ),
    (
        "jetstream-stream-full",
        "JetStream output stream full (`max_msgs = 300`, discard `new`) and dead-letter stream full (`max_msgs = 2`) for 3 s, then both limits lifted",
    ),
    (
        "jetstream-account-full",
        "JetStream account out of file storage (`max_file` 96 KiB, holding the output and dead-letter streams) for 3 s, then the output stream purged",
    ),
    (
        "jetstream-cluster-connected-killed",
        "NATS cluster (3 nodes, streams in 3 replicas, Sluice given all three URLs): the node Sluice's JetStream source is connected to killed (SIGKILL) mid-stream",
    ),
    (
        "jetstream-cluster-leader-killed",
        "NATS cluster: the input stream's leader killed (SIGKILL) mid-stream",
    ),
    (
        "nats-core-cluster-connected-killed",
        "NATS cluster, core NATS: the node Sluice's source is connected to killed while ~1000 msg/s are published through another node (at most once)",
    ),
    (
        "poison-mix",
        "Poison: 3 of each hostile kind (18) among 1500 good messages (after 1500 clean ones)",
    ),
    (
        "burst-10x",
        "JetStream: a burst of 1000 × 64 KiB (62.5 MiB) into a handler over 10× slower, `max_ack_pending = 64`",
    ),
    (
        "mqtt5-burst-10x",
        "MQTT 5: a burst of 1000 × 64 KiB (62.5 MiB) into a handler over 10× slower, `max_in_flight = 64`",
    ),
    (
        "kafka-burst-10x",
        "Kafka (tansu): a burst of 1000 × 64 KiB (62.5 MiB) into a handler over 10× slower, `max_in_flight = 64`, prefetch 2 MiB",
    ),
    (
        "nats-cluster-request-reply-killed",
        "NATS cluster, request/reply in a queue group (`request_reply`, `fallback`), 4 callers on another node: the node Sluice's source is connected to killed (SIGKILL); delivered = answered, dead = fallback, lost = no answer (asked while the service had no subscription)",
    ),
    (
        "mqtt-switch-over",
        "MQTT primary and standby (independent Mosquittos, persistence on), Sluice given both; a device at 500 msg/s QoS 1 moving with it: the primary killed (SIGKILL) mid-stream, later restarted and the standby killed",
    ),
    (
        "mqtt-qos2-switch-over",
        "The same MQTT switch-over at QoS 2 end to end (device, Sluice's subscription, outputs)",
    ),
    (
        "mqtt-primary-hung-at-start",
        "MQTT primary hung at start-up (accepts connections, never answers), standby working; `connect_timeout` 2 s; recovery from start",
    ),
    (
        "kafka-noida-bootstrap-dead-first",
        "Kafka `brokers` list whose first address is a closed port (source, sink and dead letters), noida-db; recovery from start",
    ),
    (
        "kafka-tansu-bootstrap-dead-first",
        "The same, tansu (its group join takes seconds); recovery from start",
    ),
    (
        "kafka-leader-moves",
        "Kafka partition leaders of the input, output and dead-letter topics move to another broker mid-stream and the old leader goes down (librdkafka's mock cluster, 3 brokers)",
    ),
    (
        "kafka-broker-full",
        "Kafka broker full: produce requests refused with `KAFKA_STORAGE_ERROR` (outputs and dead letters) until the breaker opens, then accepted again (mock cluster); the sink as configured by default",
    ),
    (
        "kafka-broker-full-bounded-retries",
        "The same, the sink with `message.send.max.retries` 3 (the log and `/metrics` say broker full)",
    ),
];

/// Prints the `[fault]` line (and the shared report line) and keeps it for
/// the fault table.
pub fn print_fault(name: &str, t: &Tally, recovery: Option<Duration>) {
    common::report(name, t.sent, t.delivered, t.dead, t.dropped, t.dup);
    let what = WHAT
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(name, |(_, w)| w);
    common::fault_line(
        name,
        &format!(
            "sent={} delivered={} dead={} dropped={} dup={} lost={} recovery_ms={}",
            t.sent,
            t.delivered,
            t.dead,
            t.dropped,
            t.dup,
            t.lost.len(),
            recovery.map_or("none".to_string(), |d| d.as_millis().to_string()),
        ),
        what,
    );
}

/// Deliveries a worker holds queued besides the one it handles.
pub const WORKER_QUEUE: usize = 16;

/// The in-flight window of the fault pipelines' Kafka source: what one
/// fault may repeat (default `max_in_flight` and the worker's queue).
pub const KAFKA_WINDOW: usize = 1000 + WORKER_QUEUE;
/// The MQTT pipelines' window. Each message the source holds (the default
/// `max_in_flight`, the MQTT 5 receive maximum, and the worker's queue) may
/// come out twice more after a broker restart: the broker redelivers it
/// and it is handled again, and the sink's client resends the first output
/// it had not seen acknowledged. Besides, the broker resends to the test's
/// capture client what it had in flight to it (the private Mosquitto's
/// `max_inflight_messages`, 100).
pub const MQTT_WINDOW: usize = 2 * (64 + WORKER_QUEUE) + 100;
/// The JetStream pipelines' window: the source's `max_ack_pending` (default
/// 1000) and the worker's queue (the sink's `Nats-Msg-Id` lets the server
/// drop a republished output), plus what the test's capture consumer had
/// fetched and not yet seen acknowledged (its fetch batch, 500), which a
/// restarted server delivers to it again.
pub const JETSTREAM_WINDOW: usize = 1000 + WORKER_QUEUE + 500;

/// Nothing lost, and no more duplicates than `window`: a message comes out
/// again only when it was handed out and not settled when the fault hit, so
/// the source's in-flight limit bounds them.
pub fn assert_no_loss(name: &str, t: &Tally, file: &Path, window: usize) {
    assert!(
        t.lost.is_empty(),
        "[{name}] lost {} messages, e.g. {:?}; sluice log:\n{}",
        t.lost.len(),
        &t.lost[..t.lost.len().min(5)],
        log_of(file)
    );
    assert!(
        t.dup <= window,
        "[{name}] {} duplicates, more than the in-flight window {window}",
        t.dup
    );
}

pub fn log_of(file: &Path) -> String {
    let log = std::fs::read_to_string(file.with_extension("log")).unwrap_or_default();
    // The tail is what tells why.
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

pub fn numbered(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}-{i:05}").into_bytes())
        .collect()
}

/// Stops sluice with SIGTERM; it must exit 0.
pub fn stop(mut p: common::Proc, file: &Path) {
    p.signal("TERM");
    let code = p.wait_timeout(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "sluice did not exit 0 on SIGTERM; log:\n{}",
        log_of(file)
    );
}

/// Waits until `f(seen)` holds; fails at once, with the log, if sluice exited.
pub async fn expect_progress(
    p: &mut common::Proc,
    seen: &Seen,
    timeout: Duration,
    f: impl Fn(&Seen) -> bool,
    what: &str,
    file: &Path,
) {
    let deadline = Instant::now() + timeout;
    while !f(seen) {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("{what}: sluice exited ({status}); log:\n{}", log_of(file));
        }
        assert!(
            Instant::now() < deadline,
            "{what}: timed out; log:\n{}",
            log_of(file)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every message is accounted for (a unique output or dead
/// letter each) or `timeout` passed.
pub async fn settle_all(out: &Seen, dead: &Seen, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while out.unique() + dead.unique() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A little longer, to see duplicates still on their way.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Payloads `k-NNNNN`, one in 100 `bad-NNNNN` (refused by `fatal-on`: dead letters).
pub fn with_bad(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            if i % 100 == 7 {
                format!("bad-{i:05}").into_bytes()
            } else {
                format!("k-{i:05}").into_bytes()
            }
        })
        .collect()
}

pub fn bad_count(msgs: &[Vec<u8>]) -> usize {
    msgs.iter().filter(|m| m.starts_with(b"bad")).count()
}

/// Checks every `bad-*` message was dead-lettered as `fatal` and nothing else was.
pub fn assert_dead_are_bad(name: &str, msgs: &[Vec<u8>], dead: &[Got]) {
    let unique: std::collections::HashSet<&[u8]> =
        dead.iter().map(|g| g.payload.as_slice()).collect();
    assert_eq!(
        unique.len(),
        bad_count(msgs),
        "[{name}] each bad message dead-lettered once or more"
    );
    for g in dead {
        assert!(
            g.payload.starts_with(b"bad"),
            "[{name}] a good message was dead-lettered: {:?} ({:?})",
            String::from_utf8_lossy(&g.payload),
            g.class
        );
        assert_eq!(
            g.class.as_deref(),
            Some("fatal"),
            "[{name}] dead-letter class"
        );
    }
}

pub fn recovery(out: &Seen, end: Instant) -> Option<Duration> {
    out.first_after(end).map(|t| t - end)
}

/// After the fault: waits until every message is in the output or the dead
/// letter (at most `timeout_s` seconds), stops sluice (exit 0 on SIGTERM), counts,
/// and prints the tally with the time from `restored` to the next output.
pub async fn account(
    name: &str,
    p: common::Proc,
    file: &Path,
    msgs: &[Vec<u8>],
    (out, dead): (&Capture, &Capture),
    timeout_s: u64,
    restored: Instant,
) -> (Tally, Option<Duration>) {
    let timeout = Duration::from_secs(timeout_s);
    settle_all(&out.seen, &dead.seen, msgs.len(), timeout).await;
    stop(p, file);
    let t = tally(msgs, &out.seen.all(), &dead.seen.all(), 0);
    let rec = recovery(&out.seen, restored);
    print_fault(name, &t, rec);
    (t, rec)
}

/// What a fault must leave: nothing lost, no more duplicates than the
/// source's in-flight `window`, only the bad messages dead-lettered, and
/// output again after `fault` ended.
pub fn assert_recovered(
    name: &str,
    (t, window): (&Tally, usize),
    rec: Option<Duration>,
    file: &Path,
    msgs: &[Vec<u8>],
    dead: &Capture,
    fault: &str,
) {
    assert_no_loss(name, t, file, window);
    assert_dead_are_bad(name, msgs, &dead.seen.all());
    assert!(rec.is_some(), "[{name}] no output after {fault}");
}

/// The shape most fault tests share: Sluice starts on `file` and runs until
/// a quarter of `msgs` came out (within `progress` seconds); then `fault`
/// runs, which injects the fault and heals it; then every message is
/// accounted for (see [`account`], at most `settle` seconds). The fault
/// must have come before the stream ended. Returns the tally, the time
/// from the fault's end to the next output, and what `fault` returned.
pub async fn through_fault<T>(
    name: &str,
    file: &Path,
    msgs: &[Vec<u8>],
    (out, dead): (&Capture, &Capture),
    (progress, settle): (u64, u64),
    fault: impl Future<Output = T>,
) -> (Tally, Option<Duration>, T) {
    let mut p = common::spawn_sluice(file);
    expect_progress(
        &mut p,
        &out.seen,
        Duration::from_secs(progress),
        |s| s.len() >= msgs.len() / 4,
        &format!("[{name}] no progress before the fault"),
        file,
    )
    .await;
    let at_fault = out.seen.unique();
    let healed = fault.await;
    let restored = Instant::now();
    let (t, rec) = account(name, p, file, msgs, (out, dead), settle, restored).await;
    assert!(
        at_fault < msgs.len(),
        "[{name}] the fault came after the stream ended"
    );
    (t, rec, healed)
}
