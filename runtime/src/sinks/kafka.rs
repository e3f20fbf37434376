//! The `kafka` sink (and dead-letter target): an idempotent producer with
//! `acks=all`.
//!
//! `publish` queues every record in order (key, payload and headers carried
//! as they are; the record's topic or the configured default) and returns once
//! every delivery report arrived. The idempotent producer keeps records of one
//! partition in order and never duplicates them on its own retries.
//!
//! Errors are classed as the broker reports them: a refusal of the record
//! itself (too large, invalid or unknown topic, not authorised, invalid
//! record) is [`FailureClass::Rejected`], so the pipeline dead-letters it
//! instead of blocking the stream; everything else (queue full, timeouts,
//! brokers away) is [`FailureClass::Sink`] and retried. A broker that cannot
//! write its log (`KAFKA_STORAGE_ERROR`: a full disk) is a `sink` failure
//! marked broker full; librdkafka retries that error itself, without bound
//! when idempotent, so it reaches the sink only when `options` bound
//! `message.send.max.retries` (else the record times out at `timeout`, a
//! plain `sink` failure: the same pause, without the label). After a fatal
//! producer error (the idempotence guarantee can no longer be kept) the
//! producer is recreated for the next publish.
//!
//! With `delivery = "exactly-once"` in the kafka source, every kafka sink of
//! the pipeline writes through the pipeline's transactional producer
//! (`brokers::kafka::txn`): records join the open transaction, and a
//! failed record breaks it (the source aborts and reads the messages again).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use super::{Accepted, Record, Sink};
use crate::brokers::kafka::txn::Txn;
use crate::brokers::kafka::{Probe, ProducerCtx};
use crate::config::kafka::{KafkaSinkConfig, client_config};
use crate::failure::{Failure, FailureClass};

/// How long `open` waits for the brokers to answer.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A `kafka` sink. See the module documentation.
pub struct KafkaSink {
    slot: Arc<ProducerSlot>,
    topic: Option<Arc<str>>,
    timeout: Duration,
    /// The pipeline's transaction (`delivery = "exactly-once"`): records go
    /// through its producer, and a failure breaks the transaction.
    txn: Option<Arc<Txn>>,
}

/// The producer, replaced after a fatal error; shared with the delivery
/// waits a `send` leaves behind.
struct ProducerSlot {
    producer: Mutex<Arc<FutureProducer<ProducerCtx>>>,
    config: ClientConfig,
    ctx: ProducerCtx,
}

/// The class of a produce error: `Rejected` when the broker refuses this very
/// record, `Sink` for everything transient.
pub fn class_of(e: &KafkaError) -> FailureClass {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            | C::InvalidRecord
            | C::InvalidTopic
            | C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidRequiredAcks,
        ) => FailureClass::Rejected,
        _ => FailureClass::Sink,
    }
}

/// The producer's settings for `cfg`.
pub fn producer_config(cfg: &KafkaSinkConfig, pipeline: &str) -> anyhow::Result<ClientConfig> {
    let client_id = format!("sluice-{pipeline}");
    // `linger.ms` 1 (librdkafka's default is 5): workers keep up to
    // `publish_window` sends waiting for their delivery reports, so a short
    // linger batches them into fewer produce requests without stalling the
    // window; one message of a quiet stream waits that 1 ms. `options` sets it.
    let mut c = client_config(
        &cfg.brokers,
        &cfg.security,
        &cfg.options,
        &[("client.id", client_id.as_str()), ("linger.ms", "1")],
    )
    .context("kafka sink")?;
    // Sluice's own settings come last: the delivery rule depends on them.
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", cfg.timeout.0.as_millis().to_string());
    Ok(c)
}

/// A sink writing through the pipeline's transaction (`delivery =
/// "exactly-once"`): its records join the open transaction.
pub fn open_transactional(cfg: &KafkaSinkConfig, txn: Arc<Txn>) -> anyhow::Result<KafkaSink> {
    let problems = cfg.validate();
    if let Some(p) = problems.first() {
        anyhow::bail!("kafka sink: {p}");
    }
    // The slot is not used: records go through the transaction's producer,
    // which the transaction replaces itself after a fatal error.
    Ok(KafkaSink {
        slot: Arc::new(ProducerSlot {
            producer: Mutex::new(txn.producer()),
            config: ClientConfig::new(),
            ctx: ProducerCtx::new(""),
        }),
        topic: cfg.topic.as_deref().map(Arc::from),
        timeout: cfg.timeout.0,
        txn: Some(txn),
    })
}

/// Opens the producer and checks that the brokers answer within
/// [`OPEN_TIMEOUT`] (a wrong password or address fails here).
pub async fn open(cfg: &KafkaSinkConfig, pipeline: &str) -> anyhow::Result<KafkaSink> {
    let problems = cfg.validate();
    if let Some(p) = problems.first() {
        anyhow::bail!("kafka sink: {p}");
    }
    let c = producer_config(cfg, pipeline)?;
    let ctx = ProducerCtx::new(pipeline);
    let producer: FutureProducer<ProducerCtx> = c
        .create_with_context(ctx.clone())
        .context("kafka sink: creating the producer")?;
    let producer = Arc::new(producer);
    let probe = producer.clone();
    let metadata =
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, OPEN_TIMEOUT));
    // The producer polls its events in a thread of its own: nothing to serve.
    let metadata = match crate::brokers::kafka::probe(
        metadata,
        &ctx.refused,
        std::future::pending::<()>,
    )
    .await
    {
        Probe::Done(r) => r?,
        Probe::Refused(why) => anyhow::bail!(
            "kafka sink: the brokers {} refused the credentials: {why}",
            cfg.brokers.join(",")
        ),
    };
    if let Err(e) = metadata {
        // The producer polls its events in the background: give it a moment
        // to record the cause.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cause = ctx
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| e.to_string());
        anyhow::bail!(
            "kafka sink: the brokers {} did not answer within {OPEN_TIMEOUT:?}: {cause}",
            cfg.brokers.join(",")
        );
    }
    Ok(KafkaSink {
        slot: Arc::new(ProducerSlot {
            producer: Mutex::new(producer),
            config: c,
            ctx,
        }),
        topic: cfg.topic.as_deref().map(Arc::from),
        timeout: cfg.timeout.0,
        txn: None,
    })
}

impl ProducerSlot {
    fn producer(&self) -> Arc<FutureProducer<ProducerCtx>> {
        self.producer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a fatal error the producer cannot go on: build a new one. The
    /// same after a fencing error that librdkafka does not raise as fatal
    /// (seen with tansu after a cut connection: every later record of the
    /// producer was refused with PRODUCER_FENCED, and the sink never
    /// delivered again).
    fn replace_if_fatal(&self, p: &Arc<FutureProducer<ProducerCtx>>, fenced: bool) {
        let why = match p.client().fatal_error() {
            Some((code, why)) => format!("fatal producer error {code:?} ({why})"),
            None if fenced => "the producer was fenced".to_string(),
            None => return,
        };
        let mut slot = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&slot, p) {
            return; // already replaced
        }
        tracing::warn!(pipeline = %self.ctx.pipeline, "kafka sink: {why}; recreating the producer");
        match self.config.create_with_context(self.ctx.clone()) {
            Ok(fresh) => *slot = Arc::new(fresh),
            Err(e) => {
                tracing::error!(pipeline = %self.ctx.pipeline, "kafka sink: recreating the producer: {e}")
            }
        }
    }
}

impl KafkaSink {
    /// Queues every record with librdkafka (in order) and returns the wait
    /// for their delivery reports.
    async fn send_all(&self, records: &[Record]) -> Result<Accepted, Failure> {
        let (producer, epoch) = match &self.txn {
            Some(t) => (t.producer(), Some(t.enter()?)),
            None => (self.slot.producer(), None),
        };
        let txn = self.txn.clone().zip(epoch);
        // Nothing is queued unless every record has a topic.
        if self.topic.is_none() && records.iter().any(|r| r.topic.is_none()) {
            return Err(Failure::new(
                FailureClass::Rejected,
                "kafka sink: the output names no topic and the sink has no default `topic`",
            ));
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut pending = Vec::with_capacity(records.len());
        for r in records {
            // Kept to name the topic in a failure; the default topic is
            // shared, not copied per record.
            let topic: Arc<str> = match (&r.topic, &self.topic) {
                (Some(t), _) => Arc::from(t.as_str()),
                (None, Some(d)) => d.clone(),
                (None, None) => unreachable!("checked above"),
            };
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&topic).payload(r.payload.as_ref());
            // librdkafka allocates a header list even for none.
            if !r.headers.is_empty() {
                let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
                for h in &r.headers {
                    headers = headers.insert(KHeader {
                        key: &h.key,
                        value: Some(h.value.as_ref()),
                    });
                }
                record = record.headers(headers);
            }
            if let Some(k) = &r.key {
                record = record.key(k.as_ref());
            }
            loop {
                match producer.send_result(record) {
                    Ok(f) => {
                        pending.push((f, topic));
                        break;
                    }
                    Err((e, back)) => {
                        let full = e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull);
                        if !full || tokio::time::Instant::now() >= deadline {
                            let f = failure(&e, &topic);
                            match &txn {
                                // A record librdkafka refuses before queueing
                                // it (too large) leaves the transaction as it
                                // was: when it is the first of the send,
                                // nothing of this message is in it, and the
                                // message can be dead-lettered in it.
                                Some(_)
                                    if pending.is_empty() && f.class == FailureClass::Rejected => {}
                                Some((t, epoch)) => t.fail(*epoch, f.message.clone()),
                                None => self.slot.replace_if_fatal(&producer, is_fenced(&e)),
                            }
                            return Err(f);
                        }
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }
        let slot = self.slot.clone();
        // No timer of its own: librdkafka reports every record within
        // `message.timeout.ms` (this sink's `timeout`), or cancels the report
        // when the producer goes away, and the pipeline bounds the wait by
        // `publish_timeout`. A timer per record was a timer-wheel insert and
        // removal per message.
        Ok(Box::pin(async move {
            // Every record waits for its own report; the first failure wins.
            let mut first_err = None;
            let mut fenced = false;
            for (f, topic) in pending {
                let res = match f.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => {
                        fenced |= is_fenced(&e);
                        Err(failure(&e, &topic))
                    }
                    Err(_) => Err(Failure::new(
                        FailureClass::Sink,
                        "kafka sink: the producer went away before the delivery report",
                    )),
                };
                if let Err(f) = res {
                    first_err.get_or_insert(f);
                }
            }
            match (first_err, txn) {
                (None, _) => Ok(()),
                (Some(f), Some((t, epoch))) => {
                    t.fail(epoch, f.message.clone());
                    Err(f)
                }
                (Some(f), None) => {
                    slot.replace_if_fatal(&producer, fenced);
                    Err(f)
                }
            }
        }))
    }
}

/// A fencing error: this producer's id or epoch is no longer accepted, so
/// none of its later records can be delivered.
fn is_fenced(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::ProducerFenced | C::InvalidProducerEpoch | C::Fenced)
    )
}

/// The broker cannot store records: the log directory of the partition
/// cannot be written (`KAFKA_STORAGE_ERROR`, what Kafka answers when its
/// disk is full). It passes once the broker has room again.
fn is_full(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::KafkaStorageError)
}

fn failure(e: &KafkaError, topic: &str) -> Failure {
    if is_full(e) {
        return Failure::broker_full(format!(
            "kafka sink: broker full: topic {topic}: {e}; waiting until the broker can store \
             records again (free disk space on its log directory)"
        ));
    }
    Failure::new(class_of(e), format!("kafka sink: topic {topic}: {e}"))
}

impl Sink for KafkaSink {
    fn refuses(&self, output: &crate::message::Output) -> Option<String> {
        super::kafka_output_problem(output)
    }

    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Accepted, Failure>> {
        Box::pin(self.send_all(records))
    }

    fn close(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let producer = match &self.txn {
                Some(t) => t.producer(),
                None => self.slot.producer(),
            };
            let timeout = self.timeout;
            tokio::task::spawn_blocking(move || producer.flush(timeout))
                .await?
                .context("kafka sink: flushing at close")?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError;

    #[test]
    fn classifies_refusals_and_transient_errors() {
        let p = |c| KafkaError::MessageProduction(c);
        for c in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidTopic,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::MessageBatchTooLarge,
            RDKafkaErrorCode::InvalidRecord,
        ] {
            assert_eq!(class_of(&p(c)), FailureClass::Rejected, "{c:?}");
        }
        for c in [
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::KafkaStorageError,
        ] {
            assert_eq!(class_of(&p(c)), FailureClass::Sink, "{c:?}");
        }
    }

    /// A broker that cannot write its log (a full disk) is a transient
    /// `sink` failure counted as broker full; other errors are not.
    #[test]
    fn a_storage_error_is_broker_full() {
        let p = |c| KafkaError::MessageProduction(c);
        let f = failure(&p(RDKafkaErrorCode::KafkaStorageError), "out");
        assert!(f.broker_full, "{f:?}");
        assert_eq!(f.class, FailureClass::Sink);
        assert!(f.message.contains("broker full"), "{}", f.message);
        for c in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::MessageSizeTooLarge,
        ] {
            assert!(!failure(&p(c), "out").broker_full, "{c:?}");
        }
    }

    #[test]
    fn fencing_errors_replace_the_producer() {
        let p = |c| KafkaError::MessageProduction(c);
        for c in [
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::InvalidProducerEpoch,
            RDKafkaErrorCode::Fenced,
        ] {
            assert!(is_fenced(&p(c)), "{c:?}");
            assert_eq!(class_of(&p(c)), FailureClass::Sink, "{c:?} is retried");
        }
        for c in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
        ] {
            assert!(!is_fenced(&p(c)), "{c:?}");
        }
    }
}
