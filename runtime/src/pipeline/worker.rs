//! A worker: takes the deliveries queued for it, calls the handler (a batch
//! per call where the plugin takes batches), sends the outputs and settles
//! each message in send order once its outputs were accepted.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::failed::failed;
use super::lanes::{Counter, Lane, Lanes};
use super::publish::{Ids, send};
use super::window::Window;
use super::{Shared, hand_back, remember, settle};
use crate::engine::Handled;
use crate::failure::{Failure, FailureClass};
use crate::message::{Message, Output};
use crate::sinks::Accepted;
use crate::sources::{Answer, Delivery, Settle, Settlement};

/// A message whose outputs were sent, waiting for the sink to accept them.
/// Moved several times per message: kept small (the reply, which only a
/// request has, is boxed).
struct Sent {
    msg: Message,
    /// What its record ids are derived from, kept for its retries.
    ids: Ids,
    handle: Box<dyn Settle>,
    reply: Option<Box<Output>>,
    outputs: usize,
    /// Handled by the canary: a retry goes to the canary too while it runs.
    on_canary: bool,
}

/// A call's outputs, sent: the reply (for a request), how many went to
/// sinks, and the wait for their acceptance, due by `deadline`.
pub(super) struct Sending {
    pub(super) reply: Option<Box<Output>>,
    pub(super) outputs: usize,
    pub(super) accepted: Accepted,
    pub(super) deadline: Instant,
}

pub(super) async fn worker(sh: Arc<Shared>, mut rx: mpsc::Receiver<Delivery>) {
    let mut lanes = Lanes::new(&sh.plugin);
    let mut window = Window::new(sh.publish_timeout);
    let mut batch: Vec<Delivery> = Vec::with_capacity(sh.batch);
    loop {
        // Settle what the sink accepted first; take a new message only while
        // the window has room.
        let d = tokio::select! {
            biased;
            Some((sent, accepted)) = window.next(), if !window.is_empty() => {
                finish(&sh, &mut lanes, sent, accepted).await;
                continue;
            }
            d = rx.recv(), if window.len() < sh.publish_window => match d {
                Some(d) => d,
                None => break,
            },
        };
        // What is already waiting joins it, as far as the batch size and
        // the window allow; nothing waits for a batch to fill.
        batch.push(d);
        let room = sh.batch.min(sh.publish_window - window.len());
        while batch.len() < room {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        lanes.refresh(&sh.plugin);
        run_batch(&sh, &mut lanes, &mut window, &mut batch).await;
    }
    while let Some((sent, accepted)) = window.next().await {
        finish(&sh, &mut lanes, sent, accepted).await;
    }
}

/// Handles `batch` (emptying it): one handler call for all the messages
/// where the plugin takes batches, then each message's outputs sent in
/// order, or its failure taken down the failure path.
async fn run_batch(
    sh: &Shared,
    lanes: &mut Lanes,
    window: &mut Window<Sent>,
    batch: &mut Vec<Delivery>,
) {
    sh.stats.in_flight.fetch_add(batch.len() as u64, Relaxed);
    // While a canary runs, the batch is split by version: one call each.
    let mut answers = [Vec::new(), Vec::new()];
    if batch.len() > 1 && !sh.stopping.load(Relaxed) {
        for on_canary in [false, true] {
            if on_canary && !lanes.has_canary() {
                break;
            }
            let msgs: Vec<&Message> = batch
                .iter()
                .filter(|d| d.decode_error.is_none() && lanes.takes(&d.message) == on_canary)
                .map(|d| &d.message)
                .collect();
            let got = lanes.lane(on_canary).w.handle_batch(&msgs).await;
            sh.stats.batched.fetch_add(got.len() as u64, Relaxed);
            answers[usize::from(on_canary)] = got;
        }
    }
    // Answers belong to each version's decoded messages in order; those
    // without one (no batch, or after the batch's failure) are handled one
    // per call.
    let [stable, canary] = answers;
    let mut answers = [stable.into_iter(), canary.into_iter()];
    for (msg, decode_error, handle) in batch.drain(..).map(Delivery::into_parts) {
        if sh.stopping.load(Relaxed) {
            // The pipeline is stopping by policy: hand the rest back untouched.
            hand_back(sh, handle).await;
            sh.stats.in_flight.fetch_sub(1, Relaxed);
            continue;
        }
        let ids = Ids::of(&msg);
        let on_canary = decode_error.is_none() && lanes.takes(&msg);
        let lane = lanes.lane(on_canary);
        let first = match &decode_error {
            Some(e) => Failure::new(FailureClass::Decode, e.clone()),
            None => {
                let answer = match answers[usize::from(on_canary)].next() {
                    Some(a) => a,
                    None => lane.w.handle(&msg).await,
                };
                match send_answer(sh, lane.counter(), answer, &msg, ids, handle.wants_answer())
                    .await
                {
                    Ok(s) => {
                        let sent = Sent {
                            msg,
                            ids,
                            handle,
                            reply: s.reply,
                            outputs: s.outputs,
                            on_canary,
                        };
                        window.push(sent, s.accepted, s.deadline);
                        continue;
                    }
                    Err(f) => f,
                }
            }
        };
        // A failure is handled with nothing else in flight: what was sent
        // before it is settled first, retries then run one at a time.
        drop(lane);
        while let Some((sent, accepted)) = window.next().await {
            finish(sh, lanes, sent, accepted).await;
        }
        // Boxed: the failure path's future is large, and every future
        // that holds it in place is copied at each call and await.
        let mut lane = lanes.lane(on_canary);
        Box::pin(failed(sh, &mut lane, msg, handle, ids, decode_error, first)).await;
    }
}

/// Settles a sent message once its outputs were accepted, or takes it down
/// the failure path.
async fn finish(sh: &Shared, lanes: &mut Lanes, sent: Sent, accepted: Result<(), Failure>) {
    let Sent {
        msg,
        ids,
        handle,
        reply,
        outputs,
        on_canary,
    } = sent;
    match accepted {
        Ok(()) => {
            succeeded(sh, &msg, handle, reply, outputs).await;
            sh.stats.in_flight.fetch_sub(1, Relaxed);
        }
        // Boxed, as in `run_batch`: `finish` runs for every message.
        Err(f) => {
            let mut lane = lanes.lane(on_canary);
            Box::pin(failed(sh, &mut lane, msg, handle, ids, None, f)).await
        }
    }
}

/// Runs the handler and sends its outputs.
pub(super) async fn call_and_send(
    sh: &Shared,
    lane: &mut Lane<'_>,
    msg: &Message,
    ids: Ids,
    wants_answer: bool,
) -> Result<Sending, Failure> {
    let answer = lane.w.handle(msg).await;
    send_answer(sh, lane.counter(), answer, msg, ids, wants_answer).await
}

/// Sends the outputs of a handler's answer (see [`call_and_send`]).
async fn send_answer(
    sh: &Shared,
    counter: Counter<'_>,
    (result, cost): Handled,
    msg: &Message,
    ids: Ids,
    wants_answer: bool,
) -> Result<Sending, Failure> {
    sh.stats.fuel_used.fetch_add(cost.fuel_used, Relaxed);
    if cost.log_dropped > 0 {
        sh.stats
            .guest_log_dropped
            .fetch_add(u64::from(cost.log_dropped), Relaxed);
    }
    sh.stats.handler_latency.observe(cost.elapsed);
    let failed = result.as_ref().err().map(|f| f.class);
    counter.record(&sh.plugin, failed, cost.elapsed);
    let mut outputs = result?;
    // A request's first output is its reply, not a sink record.
    let reply = (wants_answer && !outputs.is_empty()).then(|| Box::new(outputs.remove(0)));
    let n = outputs.len();
    let deadline = Instant::now() + sh.publish_timeout;
    let accepted = send(sh, msg, ids, outputs, deadline).await?;
    Ok(Sending {
        reply,
        outputs: n,
        accepted,
        deadline,
    })
}

pub(super) async fn succeeded(
    sh: &Shared,
    msg: &Message,
    mut handle: Box<dyn Settle>,
    reply: Option<Box<Output>>,
    outputs: usize,
) {
    if let Some(r) = reply {
        handle.answer(Answer::Reply(*r));
    }
    sh.stats.outputs.fetch_add(outputs as u64, Relaxed);
    sh.stats.succeeded.fetch_add(1, Relaxed);
    sh.breaker.success();
    remember(sh, msg);
    settle(sh, handle, Settlement::Ack).await;
}
