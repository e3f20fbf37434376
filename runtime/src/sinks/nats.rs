//! The `nats` sink: core NATS publish, then a flush so `publish` returns
//! once the server has the records (not that anyone received them: core NATS
//! keeps nothing for absent subscribers).
//!
//! Errors: the server away or the flush timing out → `sink` (transient); a
//! record larger than the server's `max_payload` or an invalid subject →
//! `rejected`. Headers are carried; the record key travels in the
//! `sluice-key` header (`sluice-key-base64` when it is not text).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use async_nats::client::PublishErrorKind;
use async_nats::{Client, Subject};
use futures::future::BoxFuture;

use super::{Accepted, Record, Sink};
use crate::brokers::nats as connect;
use crate::config::nats::NatsSinkConfig;
use crate::failure::{Failure, FailureClass};

/// A `nats` sink. See the module documentation.
pub struct NatsSink {
    subject: DefaultSubject,
    timeout: std::time::Duration,
    flushes: Arc<Flushes>,
}

/// One flush for many sends: every send takes a ticket once its records are
/// queued with the client; a flush covers every ticket taken before it began,
/// so a send whose ticket an earlier flush covered has nothing left to wait
/// for. Flushes run one at a time (a fair lock), in ticket order.
struct Flushes {
    /// The sink's client.
    client: Client,
    /// Tickets taken.
    queued: AtomicU64,
    /// Every ticket up to this one was written out by a successful flush.
    written: AtomicU64,
    lock: tokio::sync::Mutex<()>,
}

/// Connects. Fails when no server answers or the credentials are refused.
pub async fn open(cfg: &NatsSinkConfig, pipeline: &str) -> anyhow::Result<NatsSink> {
    let (client, _stats) = connect::connect(&cfg.connection, pipeline, "sink", None).await?;
    Ok(NatsSink {
        subject: DefaultSubject::new(&cfg.subject),
        timeout: cfg.timeout.0,
        flushes: Arc::new(Flushes {
            client,
            queued: AtomicU64::new(0),
            written: AtomicU64::new(0),
            lock: tokio::sync::Mutex::new(()),
        }),
    })
}

impl NatsSink {
    /// The underlying client (for tests and benchmarks).
    pub fn client(&self) -> &Client {
        &self.flushes.client
    }
}

/// A sink's default subject, shared by every record that names none (a
/// clone is a reference count, not a copy), checked once.
pub(crate) struct DefaultSubject {
    subject: Subject,
    ok: bool,
}

impl DefaultSubject {
    pub(crate) fn new(subject: &str) -> Self {
        DefaultSubject {
            subject: Subject::from(subject),
            ok: valid_publish_subject(subject),
        }
    }

    /// The subject a record goes to — its own `topic`, else the default —
    /// or, when that cannot be published to, its text.
    pub(crate) fn pick<'a>(&'a self, topic: Option<&'a str>) -> Result<Subject, &'a str> {
        match topic {
            Some(t) if valid_publish_subject(t) => Ok(Subject::from(t)),
            Some(t) => Err(t),
            None if self.ok => Ok(self.subject.clone()),
            None => Err(&self.subject),
        }
    }
}

/// Checks a subject to publish to: the server would drop a bad one silently.
fn valid_publish_subject(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(char::is_whitespace)
        && s.split('.').all(|t| !t.is_empty() && t != "*" && t != ">")
}

impl Sink for NatsSink {
    fn refuses(&self, output: &crate::message::Output) -> Option<String> {
        super::nats_output_problem(output)
    }

    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Accepted, Failure>> {
        Box::pin(async move {
            for r in records {
                let subject = self.subject.pick(r.topic.as_deref()).map_err(|s| {
                    Failure::new(
                        FailureClass::Rejected,
                        format!("NATS: {s:?} is not a valid subject to publish to"),
                    )
                })?;
                let headers = connect::to_nats_headers(&r.headers, r.key.as_ref());
                let sent = super::within_for(
                    self.timeout,
                    self.flushes
                        .client
                        .publish_with_headers(subject, headers, r.payload.clone()),
                )
                .await;
                match sent {
                    Err(_) => {
                        return Err(Failure::new(
                            FailureClass::Sink,
                            format!("NATS publish timed out after {:?}", self.timeout),
                        ));
                    }
                    Ok(Err(e)) => {
                        let class = match e.kind() {
                            PublishErrorKind::MaxPayloadExceeded
                            | PublishErrorKind::InvalidSubject => FailureClass::Rejected,
                            _ => FailureClass::Sink,
                        };
                        return Err(Failure::new(class, format!("NATS publish: {e}")));
                    }
                    Ok(Ok(())) => {}
                }
            }
            // Accepted = written to the server's socket (the flush fails
            // while the server is away); core NATS confirms nothing more.
            let ticket = self.flushes.queued.fetch_add(1, Relaxed) + 1;
            let (timeout, flushes) = (self.timeout, self.flushes.clone());
            let flushed: Accepted = Box::pin(async move {
                // A flush begun after this ticket was taken may already
                // have covered it: then there is no lock to take.
                if flushes.written.load(Relaxed) >= ticket {
                    return Ok(());
                }
                let _turn = flushes.lock.lock().await;
                if flushes.written.load(Relaxed) >= ticket {
                    return Ok(());
                }
                let upto = flushes.queued.load(Relaxed);
                match tokio::time::timeout(timeout, flushes.client.flush()).await {
                    Err(_) => Err(Failure::new(
                        FailureClass::Sink,
                        format!("NATS flush timed out after {timeout:?} (server away?)"),
                    )),
                    Ok(Err(e)) => Err(Failure::new(FailureClass::Sink, format!("NATS flush: {e}"))),
                    Ok(Ok(())) => {
                        flushes.written.fetch_max(upto, Relaxed);
                        Ok(())
                    }
                }
            });
            Ok(flushed)
        })
    }

    fn close(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.flushes.client.flush())
                .await
                .map_err(|_| anyhow::anyhow!("NATS flush at close timed out"))??;
            Ok(())
        })
    }
}
