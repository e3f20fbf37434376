//! The `jetstream` source: a durable pull consumer, at least once.
//!
//! * `open` creates the stream when it is missing and `subjects` are given,
//!   and creates the durable consumer (explicit acks) or binds to the
//!   existing one as it is. A missing stream without `subjects`, JetStream
//!   not enabled, or refused credentials fail `open` with a clear error.
//! * `next` reads a continuous pull: a request for `batch` messages, and the
//!   next one sent as soon as half of it has arrived, so the pipeline never
//!   waits a round trip for its next message (each request expires after a
//!   few seconds and is renewed). [`Source::pause`] (breaker open) drops the
//!   pull, so nothing more is requested; messages it had fetched and not
//!   handed out come back after `ack_wait`. The server never has more than
//!   `max_ack_pending` messages out.
//! * Settling: `Ack` → ack; `Redeliver { delay }` → `nak` with that delay (the
//!   server keeps the schedule, so a restart does not lose it);
//!   `Terminated` → `term` (after the dead letter was written). A message
//!   that is never settled comes back after `ack_wait`.
//! * While a message is out, an `in_progress` is sent at least every
//!   `in_progress_every` (one task per source, [`keepalive`]), so a long
//!   handler or slow sink does not cause a redelivery.
//! * [`Message::attempt`] is the server's delivery count,
//!   [`Message::offset`] the stream sequence, the timestamp the time the
//!   stream stored it; headers are carried (the `sluice-key` header becomes
//!   the key).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::message::{AckKind, Acker};
use async_nats::jetstream::{self, stream};
use futures::StreamExt as _;
use futures::future::BoxFuture;

use super::{Delivery, Settle, Settlement, Source, SourceError};
use crate::brokers::nats as connect;
use crate::config::nats::JetStreamSourceConfig;
use crate::message::Message;
use crate::stats::LagGauge;

/// How long one pull request waits for messages before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// How long a settle may wait for the client to take its ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

mod keepalive;
use keepalive::Keepalive;

/// A `jetstream` source. See the module documentation.
pub struct JetStreamSource {
    js: jetstream::Context,
    cfg: JetStreamSourceConfig,
    consumer: Option<PullConsumer>,
    /// The continuous pull; `None` until the first `next`, while paused and
    /// after an error.
    pull: Option<pull::Stream>,
    /// Consecutive failures to pull, for the backoff.
    errors: u32,
    paused: bool,
    closed: bool,
    /// The consumer's pending count, from each message's metadata.
    lag: LagGauge,
    /// Tells the server about messages out (`None`: `in_progress_every = "0s"`).
    keepalive: Option<Arc<Keepalive>>,
}

/// Connects, makes sure the stream and the durable consumer exist, and binds.
pub async fn open(cfg: &JetStreamSourceConfig, pipeline: &str) -> anyhow::Result<JetStreamSource> {
    let (client, _stats) = connect::connect(&cfg.connection, pipeline, "source", None).await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(cfg.connection.connect_timeout.0)
        .build(client);
    let consumer = ensure_consumer(&js, cfg).await?;
    Ok(JetStreamSource {
        js,
        cfg: cfg.clone(),
        consumer: Some(consumer),
        pull: None,
        errors: 0,
        paused: false,
        closed: false,
        lag: LagGauge::default(),
        keepalive: (!cfg.in_progress_every().is_zero())
            .then(|| Keepalive::start(cfg.in_progress_every())),
    })
}

/// The stream (created when missing and `subjects` are given) and the durable consumer.
async fn ensure_consumer(
    js: &jetstream::Context,
    cfg: &JetStreamSourceConfig,
) -> anyhow::Result<PullConsumer> {
    let stream = match js.get_stream(&cfg.stream).await {
        Ok(s) => s,
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                anyhow::ensure!(
                    !cfg.subjects.is_empty(),
                    "the JetStream stream {:?} does not exist; create it, or give `subjects` so \
                     Sluice creates it",
                    cfg.stream
                );
                js.create_stream(stream::Config {
                    name: cfg.stream.clone(),
                    subjects: cfg.subjects.clone(),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("creating the JetStream stream {:?}", cfg.stream))?;
                tracing::info!(stream = %cfg.stream, subjects = ?cfg.subjects, "created JetStream stream");
                js.get_stream(&cfg.stream)
                    .await
                    .with_context(|| format!("opening the JetStream stream {:?}", cfg.stream))?
            }
            _ => {
                return Err(anyhow::anyhow!(e)).with_context(|| {
                    format!(
                        "opening the JetStream stream {:?} (is JetStream enabled on the server?)",
                        cfg.stream
                    )
                });
            }
        },
    };
    let config = pull::Config {
        durable_name: Some(cfg.durable.clone()),
        filter_subject: cfg.filter_subject.clone().unwrap_or_default(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: cfg.ack_wait.0,
        max_ack_pending: cfg.max_ack_pending,
        max_deliver: cfg.max_deliver.unwrap_or(-1),
        ..Default::default()
    };
    stream
        .get_or_create_consumer(&cfg.durable, config)
        .await
        .with_context(|| {
            format!(
                "creating or binding the durable consumer {:?} on stream {:?}",
                cfg.durable, cfg.stream
            )
        })
}

impl JetStreamSource {
    fn delivery(&self, m: jetstream::Message) -> Delivery {
        let (attempt, offset, timestamp_ms) = match m.info() {
            Ok(i) => {
                // Messages of the consumer still waiting in the stream after this one.
                self.lag.set(i.pending);
                (
                    u32::try_from(i.delivered.max(1)).unwrap_or(u32::MAX),
                    Some(i64::try_from(i.stream_sequence).unwrap_or(i64::MAX)),
                    u64::try_from(i.published.unix_timestamp_nanos() / 1_000_000).ok(),
                )
            }
            Err(_) => (1, None, None),
        };
        let (msg, acker) = m.split();
        let fault = connect::unreadable(&msg);
        let (headers, key) = connect::from_nats_headers(msg.headers.as_ref());
        let mut message = Message::new(msg.subject.to_string(), msg.payload);
        message.headers = headers;
        message.key = key;
        message.offset = offset;
        message.attempt = attempt;
        message.timestamp_ms = timestamp_ms;
        let acker = Arc::new(acker);
        let keepalive = self
            .keepalive
            .as_ref()
            .map(|k| (k.clone(), k.add(acker.clone())));
        let settle = Box::new(JetStreamSettle { acker, keepalive });
        match fault {
            Some(why) => Delivery::undecodable(message, why, settle),
            None => Delivery::new(message, settle),
        }
    }

    /// Sleeps before the next pull after `errors` consecutive failures.
    async fn backoff(&self) {
        let exp = self.errors.saturating_sub(1).min(6) as i32;
        let base = Duration::from_millis(100).mul_f64(2f64.powi(exp)); // 100ms .. 6.4s
        tokio::time::sleep(crate::policy::backoff::equal_jitter(base)).await;
    }

    /// Starts the continuous pull, binding the consumer again first when
    /// it was lost.
    async fn start_pull(&mut self) -> Result<pull::Stream, SourceError> {
        let consumer = match &self.consumer {
            Some(c) => c,
            None => match ensure_consumer(&self.js, &self.cfg).await {
                Ok(c) => self.consumer.insert(c),
                Err(e) => return Err(self.transient(format!("{e:#}"))),
            },
        };
        let pull = consumer
            .stream()
            .max_messages_per_batch(self.cfg.batch)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        pull.map_err(|e| self.transient(format!("JetStream pull request: {e}")))
    }

    fn transient(&mut self, what: String) -> SourceError {
        self.errors += 1;
        self.pull = None;
        if self.errors >= 3 {
            // The consumer (or the stream) may have been deleted: look again.
            self.consumer = None;
        }
        SourceError::Transient(what)
    }
}

impl Source for JetStreamSource {
    fn report_lag(&mut self, gauge: LagGauge) {
        self.lag = gauge;
    }

    fn next(&mut self) -> BoxFuture<'_, Result<Option<Delivery>, SourceError>> {
        Box::pin(async move {
            if self.closed {
                return Ok(None);
            }
            if self.paused {
                // Paused means no pull requests at all; the pipeline does
                // not ask while paused, but stay put if something does.
                futures::future::pending::<()>().await;
            }
            if self.errors > 0 {
                self.backoff().await;
            }
            if self.pull.is_none() {
                let pull = self.start_pull().await?;
                self.pull = Some(pull);
            }
            let next = match self.pull.as_mut() {
                Some(pull) => pull.next().await,
                None => None,
            };
            match next {
                Some(Ok(m)) => {
                    self.errors = 0;
                    Ok(Some(self.delivery(m)))
                }
                Some(Err(e)) => Err(self.transient(format!("JetStream pull: {e}"))),
                // The pull's task ended: start another, after a backoff.
                None => Err(self.transient("JetStream pull ended".into())),
            }
        })
    }

    fn redelivers(&self) -> bool {
        true
    }

    fn pause(&mut self) {
        // The pull requests ahead of what was handed out; dropping it stops
        // its requests. `next` starts a new one after `resume`.
        self.paused = true;
        self.pull = None;
    }

    fn resume(&mut self) {
        self.paused = false;
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Messages pulled and not handed out come back after `ack_wait`.
            self.closed = true;
            self.pull = None;
            let _ = tokio::time::timeout(Duration::from_secs(2), self.js.client().flush()).await;
        })
    }
}

/// The settle handle of one `jetstream` delivery.
struct JetStreamSettle {
    acker: Arc<Acker>,
    /// Its entry in the source's keepalive, removed when settled or dropped.
    keepalive: Option<(Arc<Keepalive>, u64)>,
}

impl Drop for JetStreamSettle {
    fn drop(&mut self) {
        if let Some((k, key)) = self.keepalive.take() {
            k.remove(key);
        }
    }
}

impl Settle for JetStreamSettle {
    /// The handle's keepalive entry goes when it is dropped, at the end of
    /// this call, before the ack is sent.
    fn settle(self: Box<Self>, how: Settlement) -> BoxFuture<'static, anyhow::Result<()>> {
        let kind = match how {
            Settlement::Ack => AckKind::Ack,
            Settlement::Terminated => AckKind::Term,
            Settlement::Redeliver { delay } if delay.is_zero() => AckKind::Nak(None),
            Settlement::Redeliver { delay } => AckKind::Nak(Some(delay)),
        };
        let acker = self.acker.clone();
        Box::pin(async move {
            // The ack is queued with the client at once: no timer unless it waits.
            crate::wait::within_for(ACK_TIMEOUT, acker.ack_with(kind))
                .await
                .map_err(|_| anyhow::anyhow!("JetStream {how:?} timed out"))?
                .map_err(|e| anyhow::anyhow!("JetStream {how:?}: {e}"))
        })
    }

    fn in_progress(&self) -> BoxFuture<'static, ()> {
        let acker = self.acker.clone();
        Box::pin(async move {
            if let Err(e) = acker.ack_with(AckKind::Progress).await {
                tracing::debug!("in_progress failed: {e}");
            }
        })
    }
}
