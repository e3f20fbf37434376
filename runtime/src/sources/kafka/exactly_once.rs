//! Exactly-once delivery of the kafka source (`delivery = "exactly-once"`):
//! when the pipeline's transaction is committed with the consumer offsets,
//! and when it is aborted and the partitions rewound.
//!
//! # Commit
//!
//! Every `commit_interval` (or once half of `max_in_flight` settled) the
//! source *drains*: it hands out no new message, only redeliveries that come
//! due, until every message handed out is settled and no redelivery waits.
//! Drained, the settled messages of each partition are a contiguous prefix,
//! so its position covers exactly the messages whose outputs and dead-letter
//! records the transaction holds. With nothing handed out (`committing`),
//! the offsets go into the transaction (`send_offsets_to_transaction`) and
//! it is committed.
//!
//! # Abort
//!
//! The transaction is aborted when a record of it failed or a sink lost
//! track of a delivery (it is *broken*), when its commit fails, when a drain
//! lasts longer than half of `transaction_timeout` (a message retried or
//! held that long), when partitions are revoked while messages are handed
//! out, and at close when messages were handed back below settled ones.
//! After an abort every assigned partition is rewound: sought back to its
//! last good commit (or to the first offset this assignment read), its queued
//! messages forgotten. Messages handed out before the abort are stale: their
//! settles change nothing, sinks refuse their records, and intake holds
//! until all of them finished, so no output of theirs joins a later
//! transaction.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::time::Instant;

use super::context::Ctx;
use super::tracker::Tp;
use super::{Shared, State, tpl_of};
use crate::brokers::kafka::txn::{Txn, TxnError};

/// How long a seek after an abort may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait before trying a failed abort again.
const ABORT_RETRY: Duration = Duration::from_secs(1);

/// What `next` may hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// Anything.
    All,
    /// Only redeliveries that came due (a drain).
    Redeliveries,
    /// Nothing (a commit or an abort under way, stale messages finishing).
    Nothing,
}

/// What `next` may hand out now.
pub(super) fn gate(st: &State, txn: &Txn) -> Gate {
    if st.committing || txn.is_broken() || txn.stale() > 0 {
        Gate::Nothing
    } else if st.draining_since.is_some() {
        Gate::Redeliveries
    } else {
        Gate::All
    }
}

/// A commit is due: start a drain when there is something to commit.
pub(super) fn request(shared: &Shared, txn: &Txn) {
    let mut st = shared.lock();
    if st.draining_since.is_none()
        && !st.closed
        && (txn.is_open() || st.tracker.settled_since_commit() > 0)
    {
        st.draining_since = Some(Instant::now());
    }
}

/// Resolves when the transaction broke (a select arm of the poll task).
pub(super) async fn broken(shared: &Shared) {
    match &shared.txn {
        Some(txn) => txn.broken.notified().await,
        None => std::future::pending().await,
    }
}

/// A settle of a delivery handed out at `rewinds`: counts it finished;
/// false when it is stale (handed out before an abort) and changes nothing.
pub(super) fn settled(shared: &Shared, st: &mut State, txn: &Txn, rewinds: u64) -> bool {
    if rewinds != st.rewinds {
        txn.stale_done();
        if txn.stale() == 0 {
            shared.ready.notify_one();
        }
        return false;
    }
    st.handed_out = st.handed_out.saturating_sub(1);
    true
}

/// One turn of the poll task: commits a drained transaction, aborts a broken
/// or overdue one. Returns when the running drain becomes overdue.
pub(super) async fn step(
    consumer: &Arc<StreamConsumer<Ctx>>,
    shared: &Arc<Shared>,
    txn: &Arc<Txn>,
) -> Option<Instant> {
    let abort = {
        let mut st = shared.lock();
        if st.closed || st.committing {
            return None;
        }
        if let Some(t) = st.retry_at.filter(|t| Instant::now() < *t) {
            return Some(t);
        }
        let broken = txn.is_broken();
        let overdue = st
            .draining_since
            .is_some_and(|t| t.elapsed() >= shared.drain_limit);
        let drained = st.draining_since.is_some()
            && st.handed_out == 0
            && st.redeliveries.next_due().is_none();
        if !(broken || overdue || drained) {
            return st.draining_since.map(|t| t + shared.drain_limit);
        }
        if overdue && !broken {
            tracing::warn!(pipeline = %shared.pipeline,
                "kafka source: messages still unsettled after {:?} (half of transaction_timeout); aborting the transaction",
                shared.drain_limit);
        }
        st.committing = true;
        broken || overdue
    };
    let (c, s, t) = (consumer.clone(), shared.clone(), txn.clone());
    let done = tokio::task::spawn_blocking(move || finish(&*c, &s, &t, abort, &[])).await;
    settle_outcome(
        shared,
        done.unwrap_or_else(|e| Err(TxnError::Failed(e.to_string()))),
    );
    None
}

/// After `finish`: a fenced producer ends the source; a failed abort is
/// tried again later.
fn settle_outcome(shared: &Shared, r: Result<(), TxnError>) {
    match r {
        Ok(()) => {}
        Err(e @ TxnError::Fenced(_)) => {
            tracing::error!(pipeline = %shared.pipeline, "{e}");
            shared.fail(e.to_string());
        }
        Err(e) => {
            tracing::warn!(pipeline = %shared.pipeline, "kafka source: {e}; trying again in {ABORT_RETRY:?}");
            let mut st = shared.lock();
            st.committing = false;
            st.retry_at = Some(Instant::now() + ABORT_RETRY);
        }
    }
    shared.ready.notify_one();
    shared.wake.notify_one();
}

/// Ends the transaction (blocking): commits it with the positions of every
/// settled message when that is exact (nothing handed out, no gap, not
/// broken, `abort` not asked), else aborts it and rewinds every assigned
/// partition but those `leaving`. Called with `committing` set.
pub(super) fn finish<C: Consumer<Ctx>>(
    consumer: &C,
    shared: &Shared,
    txn: &Txn,
    abort: bool,
    leaving: &[Tp],
) -> Result<(), TxnError> {
    let positions = {
        let mut st = shared.lock();
        let exact = !abort && st.handed_out == 0 && !st.tracker.gapped() && !txn.is_broken();
        exact.then(|| st.tracker.to_commit())
    };
    if let Some(positions) = positions {
        match txn.commit(&tpl_of(&positions), consumer.group_metadata().as_ref()) {
            Ok(()) => {
                tracing::debug!(pipeline = %shared.pipeline, partitions = positions.len(),
                    "kafka source: transaction committed");
                let mut st = shared.lock();
                st.tracker.committed_ok(&positions);
                st.draining_since = None;
                st.committing = false;
                st.retry_at = None;
                return Ok(());
            }
            Err(e @ TxnError::Fenced(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(pipeline = %shared.pipeline, "kafka source: {e}; aborting the transaction");
                shared.uncommit(&positions);
            }
        }
    }
    // What was handed out turns stale before the abort ends the broken
    // state: from here none of it can begin the next transaction.
    rewind(consumer, shared, txn, leaving);
    txn.abort()?;
    shared.lock().committing = false;
    Ok(())
}

/// For an abort: what was handed out becomes stale, and every assigned
/// partition (but those `leaving`) goes back to its last good commit.
fn rewind<C: Consumer<Ctx>>(consumer: &C, shared: &Shared, txn: &Txn, leaving: &[Tp]) {
    let seeks: Vec<(Tp, i64)> = {
        let mut st = shared.lock();
        let assigned: Vec<Tp> = st.assigned.iter().cloned().collect();
        let seeks = assigned
            .into_iter()
            .filter(|tp| !leaving.contains(tp))
            .filter_map(|tp| st.tracker.rewind(&tp).map(|pos| (tp, pos)))
            .collect();
        st.queue.clear();
        st.redeliveries.retain(|_| false);
        txn.add_stale(st.handed_out);
        st.handed_out = 0;
        st.rewinds += 1;
        st.draining_since = None;
        st.retry_at = None;
        seeks
    };
    tracing::info!(pipeline = %shared.pipeline, partitions = seeks.len(),
        "kafka source: aborting the transaction; reading again from the last commit");
    for ((topic, partition), pos) in seeks {
        if let Err(e) = consumer.seek(&topic, partition, Offset::Offset(pos), SEEK_TIMEOUT) {
            // Reading on from where the fetcher is would skip what the
            // aborted transaction held: stop, a restart reads from the commit.
            shared.fail(format!(
                "kafka source: seeking {topic}/{partition} back to {pos} after an abort failed: {e}"
            ));
        }
    }
}

/// `close` of an exactly-once source: waits up to `limit` for what is
/// handed out, then commits (or aborts) the last transaction.
pub(super) async fn close(
    consumer: Arc<StreamConsumer<Ctx>>,
    shared: Arc<Shared>,
    limit: Duration,
) {
    let Some(txn) = shared.txn.clone() else {
        return;
    };
    let until = Instant::now() + limit;
    loop {
        let done = shared.lock().handed_out == 0 || txn.is_broken() || Instant::now() >= until;
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shared.lock().committing = true;
    let s = shared.clone();
    let done = tokio::task::spawn_blocking(move || finish(&*consumer, &s, &txn, false, &[])).await;
    if let Err(e) | Ok(Err(e)) = done.map_err(|e| TxnError::Failed(e.to_string())) {
        tracing::warn!(pipeline = %shared.pipeline, "kafka source: ending the last transaction: {e}");
    }
}
