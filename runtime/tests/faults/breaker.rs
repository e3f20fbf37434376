//! A sink away for longer than the retry budget: the circuit breaker opens
//! and stops intake, nothing is dead-lettered for the outage, and SIGTERM
//! still stops Sluice promptly with the message it holds handed back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::account::{
    MQTT_WINDOW, account, assert_dead_are_bad, assert_no_loss, expect_progress, log_of,
    print_fault, recovery, settle_all, stop, tally, with_bad,
};
use crate::capture::{mqtt_produce, mqtt_topics};
use crate::common;
use crate::common::mqtt::{Mosquitto, Opts, client};
use crate::common::proxy::Proxy;
use crate::pipelines::{BREAKER, RETRY, handler, mqtt_sink_via};

/// `GET /pipelines` of the admin API, as JSON.
fn admin_pipelines(port: u16) -> Option<serde_json::Value> {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    c.write_all(b"GET /pipelines HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// The breaker state and the `received` count of the first pipeline.
fn breaker_and_received(port: u16) -> Option<(String, u64)> {
    let v = admin_pipelines(port)?;
    let p = v
        .get("pipelines")
        .and_then(|p| p.get(0))
        .or_else(|| v.get(0))?;
    Some((
        p.get("breaker")?.as_str()?.to_string(),
        p.get("counts")?.get("received")?.as_u64()?,
    ))
}

/// The sink is away for 6 s, far longer than the retry budget (3 attempts
/// of at most 500 ms): the breaker opens (seen in `GET /pipelines`), intake
/// stops, NOTHING is dead-lettered for the outage, and the held message and
/// everything after it go through once the sink is back. Messages trickle
/// in (4/s) as from a device fleet, so the dispatcher is waiting at the
/// breaker, not blocked on a full worker queue, when the breaker half-opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_outage_opens_breaker() {
    let name = "sink-outage-breaker";
    let b = Mosquitto::start(Opts::default());
    let proxy = Proxy::start(b.port);
    let topics = mqtt_topics(b.port, "brk").await;
    let admin = common::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let retry =
        "[retry]\nmax_attempts = 3\ninitial = \"50ms\"\nmax = \"100ms\"\njitter = \"none\"\n";
    let file = mqtt_sink_via(
        (dir.path(), name),
        (&b, &proxy),
        &topics,
        &handler("echo", ""),
        &format!("{retry}{BREAKER}"),
    );
    let mut p = common::spawn_sluice_with(&file, &["--admin", &format!("127.0.0.1:{admin}")]);
    // A steady trickle, 4 per second, for the whole test.
    let sent = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let stop_producing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prod = {
        let producer = client(b.port, false, &common::unique("producer"), false).await;
        let (input, sent, stop_producing) =
            (topics.input.clone(), sent.clone(), stop_producing.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop_producing.load(std::sync::atomic::Ordering::Relaxed) {
                let m = format!("t-{i:05}").into_bytes();
                producer.publish(&input, 1, &[(m.clone(), vec![])]).await;
                sent.lock().unwrap_or_else(|e| e.into_inner()).push(m);
                i += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            producer.disconnect().await;
        })
    };
    expect_progress(
        &mut p,
        &topics.out.seen,
        Duration::from_secs(60),
        |s| s.len() >= 8,
        &format!("[{name}] no progress before the fault"),
        &file,
    )
    .await;
    proxy.cut();
    let cut_at = Instant::now();
    let mut opened = None;
    let mut samples = Vec::new();
    while cut_at.elapsed() < Duration::from_secs(6) {
        if let Some((state, received)) = breaker_and_received(admin) {
            if state == "open" && opened.is_none() {
                opened = Some(cut_at.elapsed());
            }
            samples.push((cut_at.elapsed(), state, received));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead_during = topics.dead.seen.len();
    proxy.restore();
    let restored = Instant::now();
    // Keep the trickle going 2 s past the outage, then account.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_producing.store(true, std::sync::atomic::Ordering::Relaxed);
    prod.await.expect("producer");
    let msgs = sent.lock().unwrap_or_else(|e| e.into_inner()).clone();
    settle_all(
        &topics.out.seen,
        &topics.dead.seen,
        msgs.len(),
        Duration::from_secs(30),
    )
    .await;
    let after = breaker_and_received(admin);
    stop(p, &file);
    let t = tally(&msgs, &topics.out.seen.all(), &topics.dead.seen.all(), 0);
    let rec = recovery(&topics.out.seen, restored);
    print_fault(name, &t, rec);
    // Intake over the last 3 s of the outage: at most one probe a second.
    let late: Vec<u64> = samples
        .iter()
        .filter(|(at, _, _)| *at >= Duration::from_secs(3))
        .map(|(_, _, r)| *r)
        .collect();
    let intake = late.last().copied().unwrap_or(0) - late.first().copied().unwrap_or(0);
    eprintln!(
        "[{name}] breaker opened {:?} after the cut; intake in the last 3 s of the outage: {intake}; after: {after:?}",
        opened
    );
    assert!(
        opened.is_some(),
        "[{name}] the breaker never showed open; samples: {samples:?}"
    );
    assert!(
        late.len() >= 10,
        "[{name}] too few admin samples: {samples:?}"
    );
    assert!(
        intake <= 3,
        "[{name}] intake did not stop while open: {intake} taken in 3 s (the trickle brings 12)"
    );
    assert_eq!(dead_during, 0, "[{name}] the outage was dead-lettered");
    assert_eq!(t.dead, 0, "[{name}] dead letters");
    assert_no_loss(name, &t, &file, MQTT_WINDOW);
    assert!(rec.is_some(), "[{name}] no output after the sink came back");
    assert_eq!(
        after.map(|a| a.0).as_deref(),
        Some("closed"),
        "[{name}] breaker closed again"
    );
}

/// SIGTERM while the sink is away and the breaker holds a message (a backlog
/// behind it fills the worker queue): Sluice still stops promptly with exit
/// 0, handing back what it holds; started again with the sink back, it
/// delivers everything. Nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_sink_outage() {
    let name = "sigterm-during-sink-outage";
    let b = Mosquitto::start(Opts::default());
    let proxy = Proxy::start(b.port);
    let topics = mqtt_topics(b.port, "sto").await;
    let msgs = with_bad(2000);
    mqtt_produce(b.port, &topics.input, &msgs).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = mqtt_sink_via(
        (dir.path(), name),
        (&b, &proxy),
        &topics,
        &handler("fatal-on", ""),
        &format!("{RETRY}{BREAKER}"),
    );
    let mut p = common::spawn_sluice(&file);
    expect_progress(
        &mut p,
        &topics.out.seen,
        Duration::from_secs(60),
        |s| s.len() >= 200,
        &format!("[{name}] no progress before the fault"),
        &file,
    )
    .await;
    proxy.cut();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(file.with_extension("log"))
        .unwrap_or_default()
        .contains("holding the message")
    {
        assert!(
            Instant::now() < deadline,
            "[{name}] the breaker never held a message; log:\n{}",
            log_of(&file)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t0 = Instant::now();
    p.signal("TERM");
    let code = p.wait_timeout(Duration::from_secs(20));
    let took = t0.elapsed();
    eprintln!("[{name}] SIGTERM with the sink away: exit {code:?} after {took:?}");
    assert_eq!(
        code,
        Some(0),
        "[{name}] sluice did not stop on SIGTERM while the sink was away; log:\n{}",
        log_of(&file)
    );
    drop(p);
    proxy.restore();
    let restored = Instant::now();
    let p = common::spawn_sluice(&file);
    let (t, _) = account(
        name,
        p,
        &file,
        &msgs,
        (&topics.out, &topics.dead),
        90,
        restored,
    )
    .await;
    assert_no_loss(name, &t, &file, MQTT_WINDOW);
    assert_dead_are_bad(name, &msgs, &topics.dead.seen.all());
    assert!(
        took < Duration::from_secs(10),
        "[{name}] stopping took {took:?}"
    );
}
