//! Load the handler cannot take as it comes: poison of every hostile kind
//! mixed into good messages, and a burst far faster than the handler.
//! Every message accounted for, every poison message dead-lettered with its
//! class, the good messages slowed by no more than the poison's deadlines,
//! resident memory bounded by the source's in-flight limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::account::{
    assert_no_loss, expect_progress, numbered, print_fault, settle_all, stop, tally,
};
use crate::capture::{Got, js_produce, js_topics, nats_client};
use crate::common;
use crate::common::nats::NatsServer;
use crate::pipelines::{BREAKER, RETRY, Urls, handler, js_pipeline, write_pipeline};

// --------------------------------------------------------------- poison

/// The class each kind of poison must be dead-lettered with (see
/// `plugins/hostile`).
fn poison_class(payload: &[u8]) -> Option<&'static str> {
    [
        ("panic", "trap"),
        ("recurse", "trap"),
        ("loop", "timeout"),
        ("burn", "fuel"),
        ("alloc", "memory"),
        ("bad", "fatal"),
    ]
    .into_iter()
    .find(|(p, _)| payload.starts_with(p.as_bytes()))
    .map(|(_, c)| c)
}

/// Good messages per second between the first and the last good output of
/// a phase.
fn good_rate(out: &[Got], prefix: &str) -> f64 {
    let times: Vec<Instant> = out
        .iter()
        .filter(|g| g.payload.starts_with(prefix.as_bytes()))
        .map(|g| g.at)
        .collect();
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
        return 0.0;
    };
    times.len() as f64 / (*last - *first).as_secs_f64().max(1e-3)
}

/// Poison of every hostile kind (panic, stack overflow, endless loop, fuel
/// burn, memory bomb, refusal; 3 of each) mixed into 1500 good messages, on
/// one pipeline. Good messages keep flowing, every poison message is
/// dead-lettered with its class, and the good-message throughput with
/// poison is measured against the same pipeline's throughput without it
/// (phase 1, 1500 good only). Stated bound: the poison adds to the good
/// messages' time no more than its endless loops' deadlines plus 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_mixed_into_good() {
    let name = "poison-mix";
    let server = NatsServer::start();
    let js = jetstream::new(nats_client(&server.url()).await);
    let topics = js_topics(&js, "psn").await;
    let url = server.url();
    let dir = tempfile::tempdir().expect("tempdir");
    // Timeouts are dead-lettered at once here (the default retries them),
    // so each class shows in one dead letter.
    let body = js_pipeline(
        &topics,
        &Urls::all(&url),
        ("ack_wait = \"5s\"\n", ""),
        &handler(
            "hostile",
            "timeout = \"300ms\"\nfuel = 50_000_000\nmemory = \"16MiB\"",
        ),
        &format!("[errors]\ntimeout = \"dead-letter\"\n\n{RETRY}{BREAKER}"),
    );
    let file = write_pipeline(dir.path(), name, &body);
    let mut p = common::spawn_sluice(&file);
    let n = 1500;
    // Phase 1: good messages only.
    let clean = numbered("good1", n);
    js_produce(&js, &topics.input, &clean).await;
    expect_progress(
        &mut p,
        &topics.out.seen,
        Duration::from_secs(90),
        |s| s.unique() >= n,
        &format!("[{name}] phase 1 did not finish"),
        &file,
    )
    .await;
    // Phase 2: the same number of good ones, with poison spread among them.
    let kinds = ["panic", "recurse", "loop", "burn", "alloc", "bad"];
    let mixed = numbered("good2", n);
    let mut poison = Vec::new();
    for round in 0..3 {
        for (j, k) in kinds.iter().enumerate() {
            poison.push(format!("{k}-{round}-{j}").into_bytes());
        }
    }
    // One poison message after every n / (poison + 1) good ones.
    let step = n / (poison.len() + 1);
    let mut phase2 = Vec::new();
    let mut poison_iter = poison.iter();
    for (i, m) in mixed.into_iter().enumerate() {
        phase2.push(m);
        if i % step == step - 1
            && let Some(x) = poison_iter.next()
        {
            phase2.push(x.clone());
        }
    }
    js_produce(&js, &topics.input, &phase2).await;
    settle_all(
        &topics.out.seen,
        &topics.dead.seen,
        n + phase2.len(),
        Duration::from_secs(120),
    )
    .await;
    stop(p, &file);
    let mut sent = clean.clone();
    sent.extend(phase2.iter().cloned());
    let all_out = topics.out.seen.all();
    let all_dead = topics.dead.seen.all();
    let t = tally(&sent, &all_out, &all_dead, 0);
    let (r1, r2) = (good_rate(&all_out, "good1"), good_rate(&all_out, "good2"));
    let factor = r2 / r1;
    // Recovery after poison: the longest wait from a dead letter to the next
    // good output.
    let resumed = all_dead
        .iter()
        .filter_map(|d| topics.out.seen.first_after(d.at).map(|t| t - d.at))
        .max();
    print_fault(name, &t, resumed);
    eprintln!(
        "[fault] name={name}-throughput good_per_s_clean={r1:.0} good_per_s_with_poison={r2:.0} factor={factor:.2} poison={}",
        poison.len()
    );
    assert_no_loss(name, &t, &file);
    for g in &all_out {
        assert!(
            poison_class(&g.payload).is_none(),
            "[{name}] poison produced an output: {:?}",
            String::from_utf8_lossy(&g.payload)
        );
    }
    let mut classes: HashMap<String, String> = HashMap::new();
    for g in &all_dead {
        let want = poison_class(&g.payload);
        assert!(
            want.is_some(),
            "[{name}] a good message was dead-lettered: {:?} ({:?})",
            String::from_utf8_lossy(&g.payload),
            g.class
        );
        assert_eq!(
            g.class.as_deref(),
            want,
            "[{name}] class of {}",
            String::from_utf8_lossy(&g.payload)
        );
        classes.insert(
            String::from_utf8_lossy(&g.payload).into_owned(),
            g.class.clone().unwrap_or_default(),
        );
    }
    assert_eq!(
        classes.len(),
        poison.len(),
        "[{name}] every poison message dead-lettered"
    );
    // The endless loops hold the worker for their whole deadline (300 ms
    // each): that much the poison must cost. Anything past it, beyond 1 s of
    // slack, would be good messages held up for nothing. (A ratio of rates
    // bounds the wrong thing: the faster the clean path, the larger the
    // share of the fixed deadlines.)
    let loops = poison.iter().filter(|p| p.starts_with(b"loop")).count();
    let added = n as f64 / r2 - n as f64 / r1;
    let allowed = loops as f64 * 0.3 + 1.0;
    eprintln!(
        "[fault] name={name}-delay added_s={added:.2} allowed_s={allowed:.2} (loops {loops} x 300 ms + 1 s)"
    );
    assert!(
        added <= allowed,
        "[{name}] poison added {added:.2} s to the good messages' time, more than its {loops} deadlines of 300 ms + 1 s ({factor:.2} of the clean rate)"
    );
}

// ---------------------------------------------------------------- burst

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A burst at least 10x faster than the handler (a slow handler: ~2×10^7
/// loop turns per message; concurrency 1) of 600 messages of 64 KiB (about
/// 38 MiB in all): the source takes at most `max_ack_pending` (64) at a
/// time, so the process's resident memory grows by far less than the burst
/// (stated cap: 24 MiB over the level before the burst) and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_beyond_handler_speed() {
    let _alone = crate::HEAVY.lock().await;
    let name = "burst-10x";
    let server = NatsServer::start();
    let js = jetstream::new(nats_client(&server.url()).await);
    let topics = js_topics(&js, "bst").await;
    let url = server.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let body = js_pipeline(
        &topics,
        &Urls::all(&url),
        ("ack_wait = \"10s\"\nmax_ack_pending = 64\n", ""),
        &handler(
            "hostile",
            "timeout = \"5s\"\nfuel = 2_000_000_000\nconcurrency = 1\nconfig = { work = \"20000000\" }",
        ),
        &format!("{RETRY}{BREAKER}"),
    );
    let file = write_pipeline(dir.path(), name, &body);
    let mut p = common::spawn_sluice(&file);
    let pid = p.pid();
    let pad = "x".repeat(64 << 10);
    // Warm-up: the process's resident memory before the burst. (Its rate is
    // no measure of the handler: 20 messages may be handled as one batch and
    // published together.)
    let warm: Vec<Vec<u8>> = (0..20)
        .map(|i| format!("warm-{i:05}-{pad}").into_bytes())
        .collect();
    js_produce(&js, &topics.input, &warm).await;
    expect_progress(
        &mut p,
        &topics.out.seen,
        Duration::from_secs(90),
        |s| s.unique() >= warm.len(),
        &format!("[{name}] warm-up did not finish"),
        &file,
    )
    .await;
    let baseline = rss_kib(pid).expect("VmRSS");
    let peak = Arc::new(Mutex::new(baseline));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(r) = rss_kib(pid) {
                    let mut p = peak.lock().unwrap_or_else(|e| e.into_inner());
                    *p = (*p).max(r);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let burst: Vec<Vec<u8>> = (0..600)
        .map(|i| format!("burst-{i:05}-{pad}").into_bytes())
        .collect();
    let t0 = Instant::now();
    js_produce(&js, &topics.input, &burst).await;
    let burst_rate = burst.len() as f64 / t0.elapsed().as_secs_f64();
    let total = warm.len() + burst.len();
    settle_all(
        &topics.out.seen,
        &topics.dead.seen,
        total,
        Duration::from_secs(120),
    )
    .await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().expect("sampler");
    let peak = *peak.lock().unwrap_or_else(|e| e.into_inner());
    stop(p, &file);
    let mut sent = warm.clone();
    sent.extend(burst.iter().cloned());
    let t = tally(&sent, &topics.out.seen.all(), &topics.dead.seen.all(), 0);
    // The handler's own speed is the rate it drained the burst at: 600
    // messages over many batches.
    let handler_rate = good_rate(&topics.out.seen.all(), "burst");
    print_fault(name, &t, None);
    let growth_mib = (peak.saturating_sub(baseline)) as f64 / 1024.0;
    eprintln!(
        "[fault] name={name}-memory handler_per_s={handler_rate:.0} burst_per_s={burst_rate:.0} ratio={:.1} rss_before_mib={:.1} rss_peak_mib={:.1} growth_mib={growth_mib:.1} burst_mib={:.1}",
        burst_rate / handler_rate,
        baseline as f64 / 1024.0,
        peak as f64 / 1024.0,
        (burst.len() * (64 << 10)) as f64 / (1 << 20) as f64,
    );
    assert!(
        burst_rate >= 10.0 * handler_rate,
        "[{name}] the burst ({burst_rate:.0}/s) was not 10x the handler ({handler_rate:.0}/s)"
    );
    assert_no_loss(name, &t, &file);
    assert_eq!(t.dead, 0, "[{name}] dead letters");
    assert!(
        growth_mib <= 24.0,
        "[{name}] resident memory grew {growth_mib:.1} MiB during the burst (cap 24 MiB)"
    );
}
