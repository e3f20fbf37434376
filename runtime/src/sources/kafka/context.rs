//! The consumer's callbacks: logs to `tracing`, records the last client
//! error (for `open`'s message), fatal errors, and the rebalance handling
//! (commit the settled positions of revoked partitions before they go).

use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{Statistics, TopicPartitionList};

use super::tracker::Tp;
use super::{Shared, WarnLimiter, tpl_of};

/// The consumer context of a kafka source.
pub(crate) struct Ctx {
    shared: Arc<Shared>,
    /// The last error the client reported, for `open`'s message.
    pub(crate) last_error: Arc<Mutex<Option<String>>>,
    /// The brokers' refusal of the credentials, once reported (ends `open`).
    pub(crate) refused: Arc<Mutex<Option<String>>>,
    warned: Mutex<WarnLimiter>,
}

impl Ctx {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Ctx {
            shared,
            last_error: Arc::new(Mutex::new(None)),
            refused: Arc::new(Mutex::new(None)),
            warned: Mutex::new(WarnLimiter::default()),
        }
    }
}

/// Error codes no retry will fix: bad credentials, missing permissions.
pub(crate) fn is_fatal_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::InvalidGroupId
            | RDKafkaErrorCode::Fatal
    )
}

/// `Some(message)` when a consume error means the source cannot go on.
pub(crate) fn classify(e: &KafkaError) -> Option<String> {
    let code = e.rdkafka_error_code()?;
    is_fatal_code(code)
        .then(|| format!("{e} (not retried: check the credentials, ACLs and group id)"))
}

fn tps_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (Arc::from(e.topic()), e.partition()))
        .collect()
}

impl ClientContext for Ctx {
    /// Sums the consumer lag (high watermark minus committed offset) over the
    /// partitions this member consumes, for the `sluice_source_lag` gauge.
    fn stats(&self, statistics: Statistics) {
        let Some(gauge) = self.shared.lag() else {
            return;
        };
        let known: Vec<i64> = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.desired && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .collect();
        // No partition (or none whose lag the client knows): unknown, not 0.
        if known.is_empty() {
            gauge.clear();
        } else {
            gauge.set(known.iter().sum::<i64>().unsigned_abs());
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        crate::brokers::kafka::log(self.shared.pipeline(), level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let text = format!("{error}: {reason}");
        crate::config::kafka::remember_error(&self.last_error, &error, text.clone());
        if crate::brokers::kafka::is_refusal(&error) {
            *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(text.clone());
        }
        if error.rdkafka_error_code().is_some_and(is_fatal_code) {
            tracing::error!(pipeline = %self.shared.pipeline(), "kafka source: {text}");
            self.shared.fail(format!("kafka source: {text}"));
        } else if self
            .warned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow()
        {
            tracing::warn!(pipeline = %self.shared.pipeline(), "kafka source: {text}");
        }
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        if self.shared.txn.is_some() && self.shared.lock().closed {
            // Closed: `close` ended the last transaction.
            self.shared.revoke(&tps_of(tpl));
            return;
        }
        if let Some(txn) = &self.shared.txn {
            // Exactly-once: the transaction is committed when nothing is
            // handed out, else aborted, before the partitions go; an offset
            // commit outside it would not be exact.
            let leaving = tps_of(tpl);
            let abort = {
                let mut st = self.shared.lock();
                st.committing = true;
                st.handed_out > 0
                    || st.redeliveries.next_due().is_some()
                    || consumer.assignment_lost()
            };
            tracing::info!(pipeline = %self.shared.pipeline(), partitions = tpl.count(),
                "kafka source: partitions revoked; {} the transaction", if abort { "aborting" } else { "committing" });
            let r = super::exactly_once::finish(consumer, &self.shared, txn, abort, &leaving);
            self.shared.lock().committing = false;
            match r {
                Ok(()) => {}
                Err(e @ super::TxnError::Fenced(_)) => {
                    tracing::error!(pipeline = %self.shared.pipeline(), "kafka source: {e}");
                    self.shared.fail(e.to_string());
                }
                // The poll task tries the abort again.
                Err(e) => txn.force_abort(e.to_string()),
            }
            self.shared.revoke(&leaving);
            return;
        }
        let commits = self.shared.revoke(&tps_of(tpl));
        tracing::info!(pipeline = %self.shared.pipeline(), partitions = tpl.count(),
            "kafka source: partitions revoked; committing their settled positions");
        if commits.is_empty() {
            return;
        }
        if consumer.assignment_lost() {
            tracing::warn!(pipeline = %self.shared.pipeline(),
                "kafka source: assignment lost (session timed out); the new owner re-reads from the last commit");
            return;
        }
        if let Err(e) = consumer.commit(&tpl_of(&commits), CommitMode::Sync) {
            tracing::warn!(pipeline = %self.shared.pipeline(),
                "kafka source: commit on revoke failed ({e}); the new owner re-reads from the last commit");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(pipeline = %self.shared.pipeline(), partitions = tpl.count(),
                    "kafka source: partitions assigned");
                // Set the pause state of the new partitions either way:
                // librdkafka keeps a partition's pause across a revoke and
                // a new assignment (seen after a lost session: the partition
                // paused while the source was full came back paused, and
                // the pipeline took nothing more).
                let r = if self.shared.assign(tps_of(tpl)) {
                    consumer.pause(tpl)
                } else {
                    consumer.resume(tpl)
                };
                if let Err(e) = r {
                    tracing::warn!(pipeline = %self.shared.pipeline(), "kafka source: pausing or resuming new partitions: {e}");
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(pipeline = %self.shared.pipeline(), "kafka source: rebalance error: {e}");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(pipeline = %self.shared.pipeline(), "kafka source: commit failed: {e}");
            let failed: Vec<(Tp, i64)> = offsets
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    rdkafka::Offset::Offset(o) => Some(((Arc::from(e.topic()), e.partition()), o)),
                    _ => None,
                })
                .collect();
            self.shared.uncommit(&failed);
        }
    }
}
