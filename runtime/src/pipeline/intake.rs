//! Intake: the dispatcher takes deliveries from the source while the
//! circuit breaker admits them, drops duplicates and hands each to its worker.

use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::mpsc;

use super::tracked::Tracked;
use super::{Shared, hand_back};
use crate::message::Message;
use crate::policy::backoff;
use crate::policy::breaker::BreakerState;
use crate::policy::dedup::{self, Dedup};
use crate::sources::{Answer, Delivery, Settlement, Source, SourceError};

/// Takes deliveries from the source while the breaker admits them, drops
/// duplicates and hands each to its worker, until the source ends, shutdown
/// or a stop; then closes intake. Returns the source's fatal error, if any.
pub(super) async fn dispatch(
    source: &mut Box<dyn Source>,
    sh: &Arc<Shared>,
    senders: Vec<mpsc::Sender<Delivery>>,
    shutdown: impl Future<Output = ()>,
) -> Option<String> {
    tokio::pin!(shutdown);
    let mut round_robin = 0usize;
    let mut source_error = None;
    // A request/reply source is not paused by the breaker: its requests are
    // taken and answered `unavailable` while it admits nothing.
    let answers_requests = source.answers_requests();
    loop {
        if sh.stopping.load(Relaxed) {
            break;
        }
        if !answers_requests && sh.breaker.state() != BreakerState::Closed {
            source.pause();
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = sh.wake.notified() => continue,
                _ = sh.breaker.admit() => {}
            }
            source.resume();
        }
        // A delivery the source already holds is taken without the select
        // (a boxed `next` future and a wake-up registration per message);
        // shutdown is still seen first.
        if shutdown.as_mut().now_or_never().is_some() {
            break;
        }
        let next = match source.try_next() {
            Some(n) => n,
            None => tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = sh.wake.notified() => continue,
                n = source.next() => n,
            },
        };
        let delivery = match next {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(SourceError::Fatal(message)) => {
                tracing::error!(pipeline = %sh.name, "source failed: {message}");
                source_error = Some(message);
                break;
            }
            Err(SourceError::Transient(message)) => {
                tracing::warn!(pipeline = %sh.name, "source: {message}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        sh.stats.received.fetch_add(1, Relaxed);
        let delivery = match &sh.dedup {
            Some(dedup) => match dedup_check(sh, dedup, delivery).await {
                Some(d) => d,
                None => continue,
            },
            None => delivery,
        };
        if answers_requests && sh.breaker.state() != BreakerState::Closed && !sh.breaker.try_admit()
        {
            if delivery.wants_answer() {
                shed(
                    sh,
                    delivery,
                    "circuit breaker open: the request was not handled",
                );
                continue;
            }
            // A plain message on the subject waits for the breaker.
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    hand_back(sh, delivery.into_parts().2).await;
                    break;
                }
                _ = sh.breaker.admit() => {}
            }
        }
        let shard = shard_of(&delivery.message, senders.len(), &mut round_robin);
        // A full queue (a worker holding a message for the breaker, a
        // slow handler) must not keep shutdown from being seen.
        let permit = tokio::select! {
            biased;
            _ = &mut shutdown => {
                hand_back(sh, delivery.into_parts().2).await;
                break;
            }
            p = senders[shard].reserve() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        permit.send(delivery);
    }
    sh.shutting_down.store(true, Relaxed);
    // Wake workers holding a message for the breaker or sleeping a retry.
    sh.wake.notify_waiters();
    drop(senders);
    source.close().await;
    source_error
}

/// Answers a request the pipeline will not handle (`unavailable`, `why`)
/// and counts it as shed. The reply is sent from a task of its own, so a
/// burst of shed requests does not hold intake for a flush each.
fn shed(sh: &Shared, delivery: Delivery, why: &str) {
    let (_, _, mut handle) = delivery.into_parts();
    handle.answer(Answer::Unavailable(why.to_string()));
    sh.stats.shed.fetch_add(1, Relaxed);
    let reply = handle.settle(Settlement::Terminated);
    let name = sh.name.clone();
    tokio::spawn(async move {
        if let Err(e) = reply.await {
            tracing::warn!(pipeline = %name, "answering a shed request failed: {e:#}");
        }
    });
}

/// Same key → same worker; no key → same partition / topic → same worker, so
/// a partition's order holds; round robin only when there is neither.
fn shard_of(msg: &Message, n: usize, rr: &mut usize) -> usize {
    if n == 1 {
        return 0;
    }
    let mut h = DefaultHasher::new();
    match (&msg.key, msg.partition) {
        (Some(k), _) => k.hash(&mut h),
        (None, Some(p)) => (&msg.topic, p).hash(&mut h),
        (None, None) => {
            *rr = (*rr + 1) % n;
            return *rr;
        }
    }
    (h.finish() % n as u64) as usize
}

/// Drops a copy of a message settled within the window (acknowledged),
/// hands back a copy whose original is still being handled (the broker
/// brings it again later), and returns any other delivery with its id kept
/// in flight until it is settled.
async fn dedup_check(
    sh: &Shared,
    dedup: &Arc<Mutex<Dedup>>,
    delivery: Delivery,
) -> Option<Delivery> {
    let (id, seen) = {
        let mut d = dedup.lock().unwrap_or_else(|e| e.into_inner());
        match d.id(&delivery.message) {
            Some(id) => {
                let seen = d.check(&id);
                (Some(id), seen)
            }
            None => (None, dedup::Seen::New),
        }
    };
    let how = match (seen, id) {
        (dedup::Seen::New, None) => return Some(delivery),
        (dedup::Seen::New, Some(id)) => {
            let (msg, decode_error, handle) = delivery.into_parts();
            let handle = Box::new(Tracked::new(handle, dedup.clone(), id));
            return Some(match decode_error {
                Some(e) => Delivery::undecodable(msg, e, handle),
                None => Delivery::new(msg, handle),
            });
        }
        (dedup::Seen::Settled, _) => {
            sh.stats.deduplicated.fetch_add(1, Relaxed);
            Settlement::Ack
        }
        (dedup::Seen::InFlight, _) => {
            sh.stats.redelivered.fetch_add(1, Relaxed);
            Settlement::Redeliver {
                delay: backoff::base_delay(&sh.policy.retry, 2),
            }
        }
    };
    if let Err(e) = delivery.settle(how).await {
        tracing::warn!(pipeline = %sh.name, "settling a duplicate failed: {e:#}");
    }
    None
}
