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

/// Prints the `[fault]` line (and the shared report line).
pub fn print_fault(name: &str, t: &Tally, recovery: Option<Duration>) {
    common::report(name, t.sent, t.delivered, t.dead, t.dropped, t.dup);
    eprintln!(
        "[fault] name={name} sent={} delivered={} dead={} dropped={} dup={} lost={} recovery_ms={}",
        t.sent,
        t.delivered,
        t.dead,
        t.dropped,
        t.dup,
        t.lost.len(),
        recovery.map_or("none".to_string(), |d| d.as_millis().to_string()),
    );
}

pub fn assert_no_loss(name: &str, t: &Tally, file: &Path) {
    assert!(
        t.lost.is_empty(),
        "[{name}] lost {} messages, e.g. {:?}; sluice log:\n{}",
        t.lost.len(),
        &t.lost[..t.lost.len().min(5)],
        log_of(file)
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

/// What a fault must leave: nothing lost, only the bad messages
/// dead-lettered, and output again after `fault` ended.
pub fn assert_recovered(
    name: &str,
    t: &Tally,
    rec: Option<Duration>,
    file: &Path,
    msgs: &[Vec<u8>],
    dead: &Capture,
    fault: &str,
) {
    assert_no_loss(name, t, file);
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
