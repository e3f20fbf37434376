//! The `nats` source: a core NATS subscription (optionally in a queue group).
//!
//! Core NATS is **at most once**: the server keeps nothing, so a message
//! published while Sluice is away, dropped as a slow consumer, or in flight
//! when the process dies is gone. Settling is therefore a no-op, except for
//! requests (messages with a reply subject), whose settle sends the reply
//! (see [`reply`]). Use `jetstream` when messages must not be lost.
//!
//! Messages wait between the client and the pipeline in a queue bounded by
//! `pending_messages` and `pending_bytes`; beyond that they are dropped and
//! counted as slow-consumer events ([`NatsSource::slow_consumer_events`],
//! the pipeline's `shed` and `slow_consumer` counts), and a dropped request
//! is answered at once with the fallback or an `unavailable` error reply.
//! Memory stays bounded. A request/reply source is never paused (requests
//! are answered `unavailable` while the circuit breaker is open); a plain
//! one, while paused, keeps filling its queue up to its limits, then drops.

pub mod reply;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::{Delivery, Source, SourceError};
use crate::brokers::nats::{self as connect, ConnStats};
use crate::config::nats::NatsSourceConfig;
use crate::message::Message;
use reply::NatsSettle;

/// A `nats` source. See the module documentation.
pub struct NatsSource {
    client: Client,
    queue: Arc<Queue>,
    forwarder: tokio::task::JoinHandle<()>,
    conn_stats: Arc<ConnStats>,
    request_reply: bool,
    fallback: Option<Bytes>,
    pipeline: Arc<str>,
    closed: bool,
}

/// Messages received and not yet handed out, bounded in count and bytes.
struct Queue {
    items: Mutex<(VecDeque<async_nats::Message>, usize)>,
    max_messages: usize,
    max_bytes: usize,
    notify: Notify,
    /// Messages dropped because the queue was full.
    dropped: AtomicU64,
    /// The subscription ended (client closed or unsubscribed).
    ended: AtomicBool,
}

impl Queue {
    /// Queues `m`, or gives it back when the queue is full.
    fn push(&self, m: async_nats::Message) -> Option<async_nats::Message> {
        let mut g = self.items.lock().unwrap_or_else(|e| e.into_inner());
        let size = m.payload.len();
        if g.0.len() >= self.max_messages || (g.1 + size > self.max_bytes && !g.0.is_empty()) {
            return Some(m);
        }
        g.1 += size;
        g.0.push_back(m);
        drop(g);
        self.notify.notify_one();
        None
    }

    fn pop(&self) -> Option<async_nats::Message> {
        let mut g = self.items.lock().unwrap_or_else(|e| e.into_inner());
        let m = g.0.pop_front()?;
        g.1 -= m.payload.len();
        Some(m)
    }
}

/// Subscribes as `cfg` says. Fails when the server cannot be reached, refuses
/// the credentials, or refuses the subscription.
pub async fn open(cfg: &NatsSourceConfig, pipeline: &str) -> anyhow::Result<NatsSource> {
    let (client, conn_stats) = connect::connect(
        &cfg.connection,
        pipeline,
        "source",
        // Our queue enforces the limits; the client's own buffer only has to
        // absorb bursts while the forwarder is not scheduled. Its drops are
        // counted through its slow-consumer events, which it may coalesce
        // under a storm, so it is kept large enough to rarely drop.
        Some(cfg.pending_messages.saturating_mul(4).clamp(8192, 65_536)),
    )
    .await?;
    let mut sub = match &cfg.queue_group {
        Some(q) => client
            .queue_subscribe(cfg.subject.clone(), q.clone())
            .await
            .with_context(|| format!("subscribing to {:?} in queue group {q:?}", cfg.subject))?,
        None => client
            .subscribe(cfg.subject.clone())
            .await
            .with_context(|| format!("subscribing to {:?}", cfg.subject))?,
    };
    // The SUB reaches the server before `open` returns, and a permissions
    // error for it shows up here rather than as silence later.
    tokio::time::timeout(cfg.connection.connect_timeout.0, client.flush())
        .await
        .map_err(|_| anyhow::anyhow!("NATS did not confirm the subscription in time"))?
        .context("confirming the subscription")?;
    // A flush only writes the SUB out. A request nobody answers comes back as
    // "no responders" only after the server processed what this connection
    // sent before it, so the subscription is live when `open` returns (a
    // message published right after would otherwise be missed).
    let probe = format!(
        "_SLUICE_PROBE{}",
        client.new_inbox().trim_start_matches("_INBOX")
    );
    match tokio::time::timeout(
        cfg.connection.connect_timeout.0,
        client.request(probe, bytes::Bytes::new()),
    )
    .await
    {
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(pipeline, "NATS subscription probe: {e}"),
        Err(_) => tracing::debug!(pipeline, "NATS subscription probe: no answer"),
    }
    let queue = Arc::new(Queue {
        items: Mutex::new((VecDeque::new(), 0)),
        max_messages: cfg.pending_messages.max(1),
        max_bytes: usize::try_from(cfg.pending_bytes.0).unwrap_or(usize::MAX),
        notify: Notify::new(),
        dropped: AtomicU64::new(0),
        ended: AtomicBool::new(false),
    });
    let q = queue.clone();
    let c = client.clone();
    let name = pipeline.to_string();
    let request_reply = cfg.request_reply;
    let fallback = cfg.fallback.clone().map(Bytes::from);
    let forwarder = tokio::spawn(async move {
        let mut log = DropLog::default();
        let mut tick = tokio::time::interval(DROP_LOG_EVERY);
        loop {
            let m = tokio::select! {
                m = sub.next() => m,
                _ = tick.tick() => {
                    log.catch_up(&name, q.dropped.load(Relaxed));
                    continue;
                }
            };
            let Some(m) = m else { break };
            if let Some(m) = q.push(m) {
                let n = q.dropped.fetch_add(1, Relaxed) + 1;
                log.dropped(&name, &m.subject, n);
                if let (true, Some(to)) = (request_reply, m.reply) {
                    reply::overloaded(&c, to, fallback.as_ref()).await;
                }
            }
        }
        log.catch_up(&name, q.dropped.load(Relaxed));
        q.ended.store(true, Relaxed);
        q.notify.notify_one();
    });
    Ok(NatsSource {
        client,
        queue,
        forwarder,
        conn_stats,
        request_reply: cfg.request_reply,
        fallback: cfg.fallback.clone().map(Bytes::from),
        pipeline: pipeline.into(),
        closed: false,
    })
}

/// How often dropped messages are logged at most.
const DROP_LOG_EVERY: Duration = Duration::from_secs(5);

/// Logs drops at the pending limits: the first at once, then at most one
/// line every [`DROP_LOG_EVERY`] saying how many since the last line and in
/// all, so a burst's total reaches the log even when it ends between lines.
#[derive(Default)]
struct DropLog {
    last_line: Option<Instant>,
    /// The total the last line reported.
    reported: u64,
}

impl DropLog {
    fn dropped(&mut self, pipeline: &str, subject: &str, total: u64) {
        if self.last_line.is_none_or(|t| t.elapsed() >= DROP_LOG_EVERY) {
            self.line(pipeline, Some(subject), total);
        }
    }

    /// Reports drops not logged yet.
    fn catch_up(&mut self, pipeline: &str, total: u64) {
        if total > self.reported {
            self.line(pipeline, None, total);
        }
    }

    fn line(&mut self, pipeline: &str, subject: Option<&str>, total: u64) {
        let dropped = total - self.reported;
        self.last_line = Some(Instant::now());
        self.reported = total;
        tracing::warn!(
            pipeline,
            subject,
            dropped,
            total,
            "NATS slow consumer: pending limits reached, messages dropped (at most once; requests answered `unavailable`)"
        );
    }
}

impl NatsSource {
    /// Messages dropped because the pending limits were reached (ours plus
    /// the client's own slow-consumer events). Also logged, at most every 5 s.
    pub fn slow_consumer_events(&self) -> u64 {
        self.queue.dropped.load(Relaxed) + self.conn_stats.slow_consumer.load(Relaxed)
    }

    /// Messages waiting to be handed out.
    pub fn pending(&self) -> (usize, usize) {
        let g = self.queue.items.lock().unwrap_or_else(|e| e.into_inner());
        (g.0.len(), g.1)
    }

    fn delivery(&self, m: async_nats::Message) -> Delivery {
        let fault = connect::unreadable(&m);
        let (headers, key) = connect::from_nats_headers(m.headers.as_ref());
        let mut message = Message::new(m.subject.as_str().to_owned(), m.payload);
        message.headers = headers;
        message.key = key;
        message.timestamp_ms = Some(now_ms());
        // Only a request needs the client (to answer) and the fallback.
        let reply = match m.reply {
            Some(to) if self.request_reply => Some(reply::Request {
                client: self.client.clone(),
                to,
                fallback: self.fallback.clone(),
            }),
            _ => None,
        };
        let settle = NatsSettle::new(reply, self.pipeline.clone());
        match fault {
            Some(why) => Delivery::undecodable(message, why, Box::new(settle)),
            None => Delivery::new(message, Box::new(settle)),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Source for NatsSource {
    fn report_drops(&mut self, drops: crate::stats::SourceDrops) {
        let q = self.queue.clone();
        let c = self.conn_stats.clone();
        drops.set(move || {
            let shed = q.dropped.load(Relaxed);
            crate::stats::DropCounts {
                shed,
                slow_consumer: shed + c.slow_consumer.load(Relaxed),
            }
        });
    }

    fn answers_requests(&self) -> bool {
        self.request_reply
    }

    fn next(&mut self) -> BoxFuture<'_, Result<Option<Delivery>, SourceError>> {
        Box::pin(async move {
            loop {
                let notified = self.queue.notify.notified();
                if let Some(m) = self.queue.pop() {
                    return Ok(Some(self.delivery(m)));
                }
                if self.closed {
                    return Ok(None);
                }
                if self.queue.ended.load(Relaxed) {
                    return Err(SourceError::Fatal(
                        "the NATS subscription ended (connection closed)".into(),
                    ));
                }
                notified.await;
            }
        })
    }

    fn try_next(&mut self) -> Option<Result<Option<Delivery>, SourceError>> {
        if self.closed {
            return None;
        }
        self.queue.pop().map(|m| Ok(Some(self.delivery(m))))
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if !self.closed {
                self.closed = true;
                self.forwarder.abort();
                // Requests still queued get an answer rather than silence.
                while let Some(m) = self.queue.pop() {
                    if let (true, Some(to)) = (self.request_reply, m.reply) {
                        reply::unavailable(&self.client, to, self.fallback.as_ref()).await;
                    }
                }
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(2), self.client.flush())
                        .await;
            }
            self.queue.notify.notify_one();
        })
    }
}
