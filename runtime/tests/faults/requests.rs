//! A queue-group request/reply service through NATS cluster failover: a
//! `nats` source with `request_reply = true` in a queue group, given the
//! three URLs of the cluster of [`crate::cluster`]; callers on another node
//! keep sending requests while the node Sluice is connected to is killed
//! (SIGKILL). Every request ends one way the caller can tell: answered, the
//! fallback (with its class), or no answer (timed out at the caller, or "no
//! responders" while the service had no subscription anywhere in the
//! cluster). What got no answer is only what was asked around the kill,
//! and the first answer after the kill comes within the 10 s target for NATS.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::account::{Tally, log_of, print_fault, stop};
use crate::cluster::Cluster;
use crate::common;
use crate::pipelines::{BREAKER, NATS_RECONNECT, RETRY, handler, write_pipeline};

/// The reply a failed request gets (the source's `fallback`).
const FALLBACK: &str = "FALLBACK";
/// How long a caller waits for each answer.
const CALLER_TIMEOUT: Duration = Duration::from_secs(2);
/// Callers, and requests each sends one after the other.
const CALLERS: usize = 4;
const PER_CALLER: usize = 400;

/// How one request ended, as its caller saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The handler's answer (the request's own payload, echoed).
    Answered,
    /// The fallback reply, with its `sluice-error-class`.
    Fallback(String),
    /// A reply that is neither: a test failure.
    Wrong(String),
    /// No subscriber anywhere in the cluster when it was asked.
    NoResponders,
    /// No answer within [`CALLER_TIMEOUT`].
    TimedOut,
    /// Any other error of the caller's client.
    Error(String),
}

/// One request: its payload, when it was sent, when and how it ended.
#[derive(Debug, Clone)]
struct Asked {
    payload: String,
    sent: Instant,
    ended: Instant,
    outcome: Outcome,
}

async fn ask(client: &async_nats::Client, subject: &str, payload: &str) -> Outcome {
    use async_nats::RequestErrorKind as K;
    match client
        .request(subject.to_string(), Bytes::from(payload.to_string()))
        .await
    {
        Ok(m) if m.payload == payload.as_bytes() => Outcome::Answered,
        Ok(m) if m.payload == FALLBACK.as_bytes() => Outcome::Fallback(
            m.headers
                .as_ref()
                .and_then(|h| h.get("sluice-error-class"))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default(),
        ),
        Ok(m) => Outcome::Wrong(String::from_utf8_lossy(&m.payload).into_owned()),
        Err(e) => match e.kind() {
            K::NoResponders => Outcome::NoResponders,
            K::TimedOut => Outcome::TimedOut,
            _ => Outcome::Error(e.to_string()),
        },
    }
}

/// The node Sluice's source connection is on, once the service answers a
/// probe through `client` (its queue subscription known across the cluster).
async fn wait_for_service(
    cluster: &Cluster,
    client: &async_nats::Client,
    subject: &str,
    source: &str,
    (p, file): (&mut common::Proc, &std::path::Path),
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("sluice exited ({status}); log:\n{}", log_of(file));
        }
        assert!(
            Instant::now() < deadline,
            "the service never answered; log:\n{}",
            log_of(file)
        );
        if ask(client, subject, "probe").await == Outcome::Answered
            && let Some(i) = cluster.node_of_client(source)
        {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_cluster_request_reply_connected_node_killed() {
    let _alone = crate::HEAVY.lock().await;
    let name = "nats-cluster-request-reply-killed";
    let mut cluster = Cluster::start();
    let base = common::unique("nrr");
    let [subject, output, dlq] = ["req", "out", "dlq"].map(|w| format!("{base}.{w}"));
    let urls = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let conn = format!("urls = [{urls}]\n{NATS_RECONNECT}");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_pipeline(
        dir.path(),
        name,
        &format!(
            "[source]\ntype = \"nats\"\nsubject = \"{subject}\"\nqueue_group = \"{base}-service\"\n\
             request_reply = true\nfallback = \"{FALLBACK}\"\n{conn}\n{}\
             [sink]\ntype = \"nats\"\nsubject = \"{output}\"\n{conn}\n\
             [dead_letter]\ntype = \"nats\"\nsubject = \"{dlq}\"\n{conn}\n{RETRY}{BREAKER}",
            handler("fatal-on", ""),
        ),
    );
    let mut p = common::spawn_sluice(&file);
    // The callers' client may connect to any node: probe through node 0,
    // then move the callers to a node that is not the victim.
    let probe = caller_client(&cluster.urls()[0]).await;
    let source = format!("sluice:{name}:source");
    let victim = wait_for_service(&cluster, &probe, &subject, &source, (&mut p, &file)).await;
    let other = (victim + 1) % 3;
    let client = caller_client(&cluster.urls()[other]).await;
    wait_for_service(&cluster, &client, &subject, &source, (&mut p, &file)).await;

    let asked = Arc::new(Mutex::new(Vec::<Asked>::new()));
    let answered = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (client, subject, asked, answered) = (
                client.clone(),
                subject.clone(),
                asked.clone(),
                answered.clone(),
            );
            tokio::spawn(async move {
                for i in 0..PER_CALLER {
                    let payload = if i % 100 == 7 {
                        format!("bad-{c}-{i:04}")
                    } else {
                        format!("k-{c}-{i:04}")
                    };
                    let sent = Instant::now();
                    let outcome = ask(&client, &subject, &payload).await;
                    if outcome == Outcome::Answered {
                        answered.fetch_add(1, Relaxed);
                    } else if outcome != Outcome::Fallback("fatal".into()) {
                        // A caller backs off a little after a failure.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    asked.lock().unwrap_or_else(|e| e.into_inner()).push(Asked {
                        payload,
                        sent,
                        ended: Instant::now(),
                        outcome,
                    });
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.load(Relaxed) < CALLERS * PER_CALLER / 4 {
        assert!(
            Instant::now() < deadline,
            "[{name}] no progress before the kill; log:\n{}",
            log_of(&file)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill(victim);
    let killed = Instant::now();
    for c in callers {
        tokio::time::timeout(Duration::from_secs(120), c)
            .await
            .expect("the callers finish within 120 s")
            .expect("caller task");
    }
    stop(p, &file);
    let asked = asked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(asked.len(), CALLERS * PER_CALLER, "every request counted");

    let count = |f: &dyn Fn(&Outcome) -> bool| asked.iter().filter(|a| f(&a.outcome)).count();
    let answers = count(&|o| *o == Outcome::Answered);
    let fallbacks = count(&|o| matches!(o, Outcome::Fallback(_)));
    let no_responders = count(&|o| *o == Outcome::NoResponders);
    let timed_out = count(&|o| *o == Outcome::TimedOut);
    let first_after = asked
        .iter()
        .filter(|a| a.outcome == Outcome::Answered && a.ended >= killed)
        .map(|a| a.ended)
        .min();
    let rec = first_after.map(|t| t - killed);
    let unanswered: Vec<String> = asked
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::NoResponders | Outcome::TimedOut))
        .map(|a| a.payload.clone())
        .collect();
    print_fault(
        name,
        &Tally {
            sent: asked.len(),
            delivered: answers,
            dead: fallbacks,
            dropped: 0,
            dup: 0,
            lost: unanswered,
        },
        rec,
    );
    eprintln!(
        "[{name}] killed {}: {answers} answered, {fallbacks} fallback, {timed_out} timed out at the caller, \
         {no_responders} no responders; first answer {rec:?} after the kill",
        cluster.nodes[victim].name
    );

    let odd: Vec<&Asked> = asked
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Wrong(_) | Outcome::Error(_)))
        .take(5)
        .collect();
    assert!(odd.is_empty(), "[{name}] unexpected replies: {odd:?}");
    for a in &asked {
        let bad = a.payload.starts_with("bad");
        match &a.outcome {
            Outcome::Answered => assert!(!bad, "[{name}] {} answered", a.payload),
            Outcome::Fallback(class) if class == "fatal" => {
                assert!(bad, "[{name}] {} got the fatal fallback", a.payload)
            }
            _ => {}
        }
    }
    let rec =
        rec.unwrap_or_else(|| panic!("[{name}] no answer after the kill; log:\n{}", log_of(&file)));
    assert!(
        rec < Duration::from_secs(10),
        "[{name}] the first answer came {rec:?} after the kill"
    );
    // What got no answer (or the `unavailable` fallback) was asked around
    // the kill: at most one caller timeout before it (in Sluice when the
    // node died), or before the first answer after it.
    let resumed = killed + rec;
    let outside: Vec<&Asked> = asked
        .iter()
        .filter(|a| match &a.outcome {
            Outcome::NoResponders | Outcome::TimedOut => true,
            Outcome::Fallback(class) => class != "fatal",
            _ => false,
        })
        .filter(|a| {
            a.sent + CALLER_TIMEOUT + Duration::from_secs(1) < killed
                || a.sent > resumed + Duration::from_secs(1)
        })
        .take(5)
        .collect();
    assert!(
        outside.is_empty(),
        "[{name}] requests unanswered away from the kill (killed at {killed:?}, resumed {resumed:?}): {outside:?}"
    );
}

/// A client of one node that gives up on a request after [`CALLER_TIMEOUT`].
async fn caller_client(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .request_timeout(Some(CALLER_TIMEOUT))
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(url)
        .await
        .expect("connect to a cluster node")
}
