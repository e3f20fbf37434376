//! The Kafka transaction of an exactly-once pipeline
//! (`delivery = "exactly-once"`): one transactional producer that every kafka
//! sink of the pipeline writes through, and the state of the transaction it
//! has open.
//!
//! A transaction begins with the first record a sink sends after the last
//! one ended, and ends when the source commits it (with the consumer offsets
//! of the messages whose outputs it holds, `send_offsets_to_transaction`) or
//! aborts it. A record the broker refuses, a producer error or a fatal error
//! marks the transaction broken: from then on sinks refuse records (an
//! *abandoned* failure: the message is read again after the abort) and the
//! source aborts and rewinds. After an abort, messages handed out before it
//! are *stale*: no new transaction begins until they are all finished, so
//! none of their outputs can land in the next one.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer as _};
use tokio::sync::Notify;

use super::ProducerCtx;
use crate::failure::Failure;

/// How long `init_transactions`, a commit or an abort may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a commit that fails with a retriable error.
const COMMIT_ATTEMPTS: u32 = 3;

/// The transaction could not be ended as asked.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// Another producer with the same `transactional.id` took over: this
    /// instance must stop (two instances configured with one id, or this one
    /// was replaced).
    #[error(
        "kafka: this instance's producer was fenced by a newer one with the same transactional id ({0}); \
         give every instance of the group its own `transactional_id`"
    )]
    Fenced(String),
    /// The commit or abort failed (brokers away, a timeout); the transaction
    /// is aborted, or the abort is tried again.
    #[error("kafka transaction: {0}")]
    Failed(String),
}

/// The transactional producer and its transaction. See the module documentation.
pub struct Txn {
    producer: Mutex<Arc<FutureProducer<ProducerCtx>>>,
    config: ClientConfig,
    ctx: ProducerCtx,
    state: Mutex<State>,
    /// Wakes the source when the transaction broke and must be aborted.
    pub broken: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// A transaction is open (`begin_transaction` was called).
    open: bool,
    /// Counts ended transactions: a record's failure only breaks the
    /// transaction it was sent in.
    epoch: u64,
    /// Why the open transaction must be aborted.
    broken: Option<String>,
    /// Messages handed out before the last abort and not yet finished.
    stale: usize,
}

impl Txn {
    /// Creates the producer and registers its transactional id with the
    /// brokers (`init_transactions`), which fences an older producer with the
    /// same id and aborts what it left open.
    pub async fn open(config: ClientConfig, pipeline: &str) -> anyhow::Result<Arc<Txn>> {
        let ctx = ProducerCtx::new(pipeline);
        let (c, x) = (config.clone(), ctx.clone());
        let producer = tokio::task::spawn_blocking(move || start(&c, &x)).await??;
        Ok(Arc::new(Txn {
            producer: Mutex::new(producer),
            config,
            ctx,
            state: Mutex::new(State::default()),
            broken: Notify::new(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The producer sinks send through.
    pub(crate) fn producer(&self) -> Arc<FutureProducer<ProducerCtx>> {
        self.producer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Called by a sink before it sends: begins a transaction if none is
    /// open and returns the epoch its records belong to; an abandoned
    /// failure while the transaction is broken or stale messages finish.
    pub fn enter(&self) -> Result<u64, Failure> {
        let mut st = self.lock();
        if let Some(why) = &st.broken {
            return Err(Failure::abandoned(format!(
                "kafka: the transaction is being aborted ({why}); the message is read again"
            )));
        }
        if st.stale > 0 {
            return Err(Failure::abandoned(
                "kafka: the transaction was aborted; the message is read again",
            ));
        }
        if !st.open {
            if let Err(e) = self.producer().begin_transaction() {
                let why = format!("beginning a transaction: {e}");
                st.broken = Some(why.clone());
                drop(st);
                self.broken.notify_one();
                return Err(Failure::abandoned(format!("kafka: {why}")));
            }
            st.open = true;
        }
        Ok(st.epoch)
    }

    /// A record of `epoch` failed: its transaction must be aborted.
    pub fn fail(&self, epoch: u64, why: String) {
        let mut st = self.lock();
        if st.epoch != epoch || !st.open || st.broken.is_some() {
            return;
        }
        tracing::warn!(pipeline = %self.ctx.pipeline, "kafka: {why}; aborting the transaction");
        st.broken = Some(why);
        drop(st);
        self.broken.notify_one();
    }

    /// The transaction must be aborted whatever it holds (a delivery was
    /// lost track of): even one with nothing sent yet.
    pub fn force_abort(&self, why: String) {
        let mut st = self.lock();
        if st.broken.is_none() {
            tracing::warn!(pipeline = %self.ctx.pipeline, "kafka: {why}; aborting the transaction");
            st.broken = Some(why);
        }
        drop(st);
        self.broken.notify_one();
    }

    /// Whether a transaction is open.
    pub fn is_open(&self) -> bool {
        self.lock().open
    }

    /// Whether the open transaction must be aborted.
    pub fn is_broken(&self) -> bool {
        self.lock().broken.is_some()
    }

    /// Messages handed out before an abort: they must finish before the
    /// next transaction begins.
    pub fn add_stale(&self, n: usize) {
        self.lock().stale += n;
    }

    /// A stale message finished.
    pub fn stale_done(&self) {
        let mut st = self.lock();
        st.stale = st.stale.saturating_sub(1);
    }

    /// Stale messages not yet finished.
    pub fn stale(&self) -> usize {
        self.lock().stale
    }

    /// Commits the open transaction with `offsets` (blocking). With no
    /// transaction open, one is opened for the offsets alone (a batch whose
    /// messages were all dropped). `Err` leaves the transaction to abort.
    pub fn commit(
        &self,
        offsets: &TopicPartitionList,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<(), TxnError> {
        let p = self.producer();
        {
            let mut st = self.lock();
            if let Some(why) = &st.broken {
                return Err(TxnError::Failed(why.clone()));
            }
            if !st.open {
                if offsets.count() == 0 {
                    return Ok(());
                }
                p.begin_transaction().map_err(|e| self.failed(&p, e))?;
                st.open = true;
            }
        }
        if offsets.count() > 0 {
            let group = group.ok_or_else(|| {
                TxnError::Failed("the consumer has no group metadata (not in the group)".into())
            })?;
            p.send_offsets_to_transaction(offsets, group, CALL_TIMEOUT)
                .map_err(|e| self.failed(&p, e))?;
        }
        let mut attempt = 1;
        loop {
            match p.commit_transaction(CALL_TIMEOUT) {
                Ok(()) => break,
                Err(KafkaError::Transaction(e))
                    if e.is_retriable() && attempt < COMMIT_ATTEMPTS =>
                {
                    tracing::warn!(pipeline = %self.ctx.pipeline, "kafka: committing the transaction: {e}; trying again");
                    attempt += 1;
                }
                Err(e) => return Err(self.failed(&p, e)),
            }
        }
        let mut st = self.lock();
        st.open = false;
        st.epoch += 1;
        Ok(())
    }

    /// Aborts the open transaction (blocking); after a fatal producer error
    /// the producer is made anew (its `init_transactions` aborts what the
    /// old one left open).
    pub fn abort(&self) -> Result<(), TxnError> {
        let p = self.producer();
        // The records the abort purges fail: they must not break it again.
        self.lock().broken.get_or_insert_with(|| "aborting".into());
        if self.lock().open
            && let Err(e) = p.abort_transaction(CALL_TIMEOUT)
        {
            match self.failed(&p, e) {
                TxnError::Fenced(why) => return Err(TxnError::Fenced(why)),
                TxnError::Failed(why) if p.client().fatal_error().is_none() => {
                    return Err(TxnError::Failed(format!("aborting: {why}")));
                }
                TxnError::Failed(_) => {}
            }
        }
        if let Some((code, why)) = p.client().fatal_error() {
            if is_fenced(code) {
                return Err(TxnError::Fenced(why));
            }
            tracing::warn!(pipeline = %self.ctx.pipeline, "kafka: fatal producer error {code:?} ({why}); making a new producer");
            self.recreate()?;
        }
        let mut st = self.lock();
        st.open = false;
        st.epoch += 1;
        st.broken = None;
        Ok(())
    }

    /// Replaces a producer that failed for good with a new one of the same
    /// transactional id.
    fn recreate(&self) -> Result<(), TxnError> {
        let fresh =
            start(&self.config, &self.ctx).map_err(|e| TxnError::Failed(format!("{e:#}")))?;
        *self.producer.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// Classifies a transactional call's error.
    fn failed(&self, p: &FutureProducer<ProducerCtx>, e: KafkaError) -> TxnError {
        let code = e.rdkafka_error_code();
        let fatal = p.client().fatal_error().map(|(c, _)| c);
        if [code, fatal].into_iter().flatten().any(is_fenced) {
            return TxnError::Fenced(e.to_string());
        }
        TxnError::Failed(e.to_string())
    }
}

/// A fencing code: another producer with this transactional id is newer.
fn is_fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
    )
}

/// Creates a producer from `config` and runs `init_transactions` (blocking).
fn start(
    config: &ClientConfig,
    ctx: &ProducerCtx,
) -> anyhow::Result<Arc<FutureProducer<ProducerCtx>>> {
    let producer: FutureProducer<ProducerCtx> = config
        .create_with_context(ctx.clone())
        .context("kafka: creating the transactional producer")?;
    producer
        .init_transactions(CALL_TIMEOUT)
        .map_err(|e| {
            let cause = ctx
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            anyhow::anyhow!(
                "kafka: registering the transactional id failed: {e}{} (does the broker support transactions?)",
                cause.map(|c| format!(" ({c})")).unwrap_or_default()
            )
        })?;
    Ok(Arc::new(producer))
}
