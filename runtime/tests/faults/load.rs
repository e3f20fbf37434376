//! Poison of every hostile kind mixed into good messages: every message
//! accounted for, every poison message dead-lettered with its class, the
//! good messages slowed by no more than the poison's deadlines. (A burst
//! beyond the handler's speed is `burst.rs`.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::account::{
    JETSTREAM_WINDOW, assert_no_loss, expect_progress, numbered, print_fault, settle_all, stop,
    tally,
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
pub fn good_rate(out: &[Got], prefix: &str) -> f64 {
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
    assert_no_loss(name, &t, &file, JETSTREAM_WINDOW);
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
