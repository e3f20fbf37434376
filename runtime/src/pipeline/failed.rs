//! The failure path of one message: the policy's decision carried out
//! (retry, hold for the breaker, dead-letter, drop, stop), one message at a time.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::lanes::Lane;
use super::publish::{Ids, publish_dead_letter, publish_timed_out};
use super::worker::{call_and_send, succeeded};
use super::{Shared, hand_back, remember, settle};
use crate::failure::{Failure, FailureClass};
use crate::message::Message;
use crate::policy::{Decision, dead_letter};
use crate::sources::{Answer, Settle, Settlement};

/// The failure path of one message; records a `stop` from the policy.
pub(super) async fn failed(
    sh: &Shared,
    lane: &mut Lane<'_>,
    msg: Message,
    handle: Box<dyn Settle>,
    ids: Ids,
    decode_error: Option<String>,
    f: Failure,
) {
    let result = process(sh, lane, msg, handle, ids, decode_error, f).await;
    sh.stats.in_flight.fetch_sub(1, Relaxed);
    if let Err(failure) = result {
        tracing::error!(pipeline = %sh.name, "stopping by policy: {failure}");
        *sh.stop_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure);
        sh.stopping.store(true, Relaxed);
        sh.wake.notify_waiters();
    }
}

/// Sleeps unless shutdown starts first; true when the sleep completed.
async fn sleep_unless_shutdown(sh: &Shared, d: Duration) -> bool {
    if sh.shutting_down.load(Relaxed) {
        return false;
    }
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let notified = sh.wake.notified();
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return true,
            _ = notified => if sh.shutting_down.load(Relaxed) || sh.stopping.load(Relaxed) { return false },
        }
    }
}

/// Takes a message that failed with `first` to its end: retried (handler
/// and publish again, one at a time), dead-lettered, dropped or stopped on,
/// as the policy says. `Err` means the policy said stop.
async fn process(
    sh: &Shared,
    lane: &mut Lane<'_>,
    mut msg: Message,
    mut handle: Box<dyn Settle>,
    ids: Ids,
    decode_error: Option<String>,
    first: Failure,
) -> Result<(), Failure> {
    let mut next = Some(first);
    loop {
        let failure = match (next.take(), &decode_error) {
            (Some(f), _) => f,
            (None, Some(e)) => Failure::new(FailureClass::Decode, e.clone()),
            (None, None) => match call_and_send(sh, lane, &msg, ids, handle.wants_answer()).await {
                Ok(s) => match tokio::time::timeout_at(s.deadline, s.accepted).await {
                    Ok(Ok(())) => {
                        succeeded(sh, &msg, handle, s.reply, s.outputs).await;
                        return Ok(());
                    }
                    Ok(Err(f)) => f,
                    Err(_) => publish_timed_out(sh.publish_timeout),
                },
                Err(f) => f,
            },
        };
        if failure.abandoned {
            // Its transaction was aborted: the source reads it again from the
            // last committed offset; this copy only has to let go.
            tracing::debug!(pipeline = %sh.name, topic = %msg.topic, offset = ?msg.offset, "{failure}");
            hand_back(sh, handle).await;
            return Ok(());
        }
        if handle.wants_answer() {
            handle.answer(Answer::Failed(failure.clone()));
        }
        sh.stats.failure(failure.class, &failure.message);
        if failure.broker_full {
            sh.stats.broker_full.fetch_add(1, Relaxed);
        }
        tracing::debug!(pipeline = %sh.name, topic = %msg.topic, offset = ?msg.offset, attempt = msg.attempt, "{failure}");
        let counts_for_breaker = sh.policy.counts_for_breaker(failure.class);
        if counts_for_breaker {
            sh.breaker.failure();
        }
        match sh
            .policy
            .on_failure(failure.class, msg.attempt, sh.breaker.enabled())
        {
            Decision::Retry(delay) => {
                sh.stats.retries.fetch_add(1, Relaxed);
                if sh.redelivers {
                    // The broker keeps the schedule (JetStream nak with delay).
                    settle(sh, handle, Settlement::Redeliver { delay }).await;
                    return Ok(());
                }
                if !sleep_unless_shutdown(sh, delay).await {
                    hand_back(sh, handle).await;
                    return Ok(());
                }
                msg.attempt += 1;
            }
            Decision::Hold => {
                tracing::warn!(pipeline = %sh.name, "sink failing after {} attempts ({failure}); holding the message", msg.attempt);
                tokio::select! {
                    _ = sh.breaker.hold() => {}
                    _ = wait_shutdown(sh) => {
                        hand_back(sh, handle).await;
                        return Ok(());
                    }
                }
                msg.attempt += 1;
            }
            Decision::DeadLetter { .. } => {
                if !counts_for_breaker {
                    sh.breaker.neutral();
                }
                let Some(dlq) = &sh.dead_letter else {
                    hand_back(sh, handle).await;
                    return Err(Failure::new(
                        failure.class,
                        format!(
                            "{} (and the pipeline has no [dead_letter] to send it to)",
                            failure.message
                        ),
                    ));
                };
                let digest = lane.w.plugin().digest().to_string();
                let record = dead_letter::record(
                    &msg,
                    &failure,
                    msg.attempt,
                    &sh.name,
                    &digest,
                    format!("{}:dlq", ids.base(sh, &msg)),
                );
                let e = match publish_dead_letter(sh, dlq.as_ref(), &record).await {
                    Ok(()) => {
                        sh.stats.dead_lettered.fetch_add(1, Relaxed);
                        remember(sh, &msg);
                        settle(sh, handle, Settlement::Terminated).await;
                        return Ok(());
                    }
                    Err(e) => e,
                };
                if e.abandoned {
                    // Its transaction was aborted: read again, as above.
                    hand_back(sh, handle).await;
                    return Ok(());
                }
                match sh.policy.on_dead_letter_failure(e.class, msg.attempt) {
                    Decision::Redeliver(delay) => {
                        if e.broker_full {
                            sh.stats.broker_full.fetch_add(1, Relaxed);
                        }
                        tracing::error!(pipeline = %sh.name, "dead-letter write failed ({e}); the message stays unsettled and is redelivered in {delay:?}");
                        settle(sh, handle, Settlement::Redeliver { delay }).await;
                        return Ok(());
                    }
                    _ => {
                        hand_back(sh, handle).await;
                        return Err(Failure::new(
                            e.class,
                            format!(
                                "the dead-letter sink refuses even the bare record of a message that failed with {failure} ({e}); the pipeline stops"
                            ),
                        ));
                    }
                }
            }
            Decision::Drop { .. } => {
                if !counts_for_breaker {
                    sh.breaker.neutral();
                }
                sh.stats.dropped.fetch_add(1, Relaxed);
                tracing::info!(pipeline = %sh.name, "dropped by policy: {failure}");
                remember(sh, &msg);
                settle(sh, handle, Settlement::Ack).await;
                return Ok(());
            }
            Decision::Redeliver(delay) => {
                settle(sh, handle, Settlement::Redeliver { delay }).await;
                return Ok(());
            }
            Decision::Stop => {
                hand_back(sh, handle).await;
                return Err(failure);
            }
        }
    }
}

async fn wait_shutdown(sh: &Shared) {
    loop {
        let n = sh.wake.notified();
        if sh.shutting_down.load(Relaxed) || sh.stopping.load(Relaxed) {
            return;
        }
        n.await;
    }
}
