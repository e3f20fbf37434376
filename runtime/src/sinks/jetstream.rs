//! The `jetstream` sink: publishes into a stream and returns once the server
//! acknowledged every record (PubAck), so the record is stored.
//!
//! Each record carries `Nats-Msg-Id` = [`Record::id`], stable across retries
//! of the same message, so the stream stores a retried record once (within
//! its duplicate window, 2 minutes by default). Records of one call are
//! published back to back and their acknowledgements awaited together.
//!
//! Errors: no stream listening ("no responders"), a timeout, the connection
//! away, or a server error with a 5xx code → `sink` (transient, retried); the
//! broker full (a stream at its limits with discard `new`, the account past
//! its JetStream storage limit, the server's store exhausted) → `sink` too,
//! marked as broker full for the log and `/metrics`, whatever the HTTP-like
//! code; a record over `max_payload`, an invalid subject, or the server
//! refusing the record (message too large for the stream, stream sealed,
//! wrong expected sequence, other 4xx errors) → `rejected`. Headers are carried (the key in
//! `sluice-key`); `Nats-Msg-Id` and `Nats-Expected-*` headers of the record
//! itself are replaced/removed, since they belong to the message it came from.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::Subject;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use futures::future::BoxFuture;

use super::nats::DefaultSubject;
use super::{Accepted, Record, Sink};
use crate::brokers::nats as connect;
use crate::config::nats::JetStreamSinkConfig;
use crate::failure::{Failure, FailureClass};
use crate::message::Header;

/// A `jetstream` sink. See the module documentation.
pub struct JetStreamSink {
    js: jetstream::Context,
    subject: DefaultSubject,
    timeout: Duration,
}

/// Connects, creates the stream when `stream` is given and missing, and
/// checks that some stream captures `subject`.
pub async fn open(cfg: &JetStreamSinkConfig, pipeline: &str) -> anyhow::Result<JetStreamSink> {
    let (client, _stats) = connect::connect(&cfg.connection, pipeline, "sink", None).await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(cfg.timeout.0)
        .build(client);
    if let Some(name) = &cfg.stream {
        js.get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![cfg.subject.clone()],
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating or opening the JetStream stream {name:?}"))?;
    }
    js.stream_by_subject(cfg.subject.clone())
        .await
        .with_context(|| {
            format!(
                "no JetStream stream captures the subject {:?}: create one, or give `stream` so \
                 Sluice creates it (is JetStream enabled on the server?)",
                cfg.subject
            )
        })?;
    Ok(JetStreamSink {
        js,
        subject: DefaultSubject::new(&cfg.subject),
        timeout: cfg.timeout.0,
    })
}

impl JetStreamSink {
    /// The JetStream context (for tests and benchmarks).
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    fn message(&self, r: &Record) -> PublishMessage {
        let carried: Vec<Header> = r
            .headers
            .iter()
            .filter(|h| {
                !h.key.eq_ignore_ascii_case("Nats-Msg-Id")
                    && !h.key.to_ascii_lowercase().starts_with("nats-expected-")
            })
            .cloned()
            .collect();
        let headers = connect::to_nats_headers(&carried, r.key.as_ref());
        PublishMessage::build()
            .payload(r.payload.clone())
            .headers(headers)
            .message_id(&r.id)
    }
}

/// The server's error behind a failed publish or PubAck, if it answered one.
fn server_error(e: &PublishError) -> Option<&jetstream::Error> {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<jetstream::Error>())
}

/// Whether the server refused the record because it is full: the stream at
/// `max_msgs`, `max_bytes` or `max_msgs_per_subject` with discard `new`
/// (10077, "maximum ... exceeded"), the account past its JetStream storage
/// or memory limit (10002), or the server's own store or memory exhausted
/// (10047, 10028, 10023). Servers that send no `err_code` are recognised by
/// their description.
fn is_full(j: &jetstream::Error) -> bool {
    let code = j.error_code();
    let text = j.to_string().to_ascii_lowercase();
    let limit_text = text.contains("maximum messages")
        || text.contains("maximum bytes")
        || text.contains("resource limits exceeded")
        || text.contains("insufficient storage")
        || text.contains("insufficient memory");
    code == ErrorCode::ACCOUNT_RESOURCES_EXCEEDED
        || code == ErrorCode::STORAGE_RESOURCES_EXCEEDED
        || code == ErrorCode::MEMORY_RESOURCES_EXCEEDED
        || code == ErrorCode::INSUFFICIENT_RESOURCES
        || (code == ErrorCode::STREAM_STORE_FAILED && text.contains("exceeded"))
        || (code.0 == 0 && limit_text)
}

/// The class of a failed publish or PubAck.
fn classify(e: &PublishError) -> FailureClass {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => FailureClass::Rejected,
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => FailureClass::Sink,
        PublishErrorKind::Other => match server_error(e) {
            // A full stream or account passes once it has room again.
            Some(j) if is_full(j) => FailureClass::Sink,
            // 503: JetStream temporarily unavailable (no quorum, restarting).
            Some(j) if j.code() >= 500 => FailureClass::Sink,
            Some(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => FailureClass::Sink,
            // 4xx: the server refuses this very record.
            Some(_) => FailureClass::Rejected,
            None if e.to_string().contains("subject") => FailureClass::Rejected,
            None => FailureClass::Sink,
        },
    }
}

fn failure(e: &PublishError, subject: &str) -> Failure {
    let detail = std::error::Error::source(e)
        .map(|s| format!("{e}: {s}"))
        .unwrap_or_else(|| e.to_string());
    if server_error(e).is_some_and(is_full) {
        return Failure::broker_full(format!(
            "JetStream broker full: publish to {subject:?} refused ({detail}); waiting until \
             the stream or account has room (raise its limits, purge or consume it)"
        ));
    }
    Failure::new(
        classify(e),
        format!("JetStream publish to {subject:?}: {detail}"),
    )
}

impl Sink for JetStreamSink {
    fn refuses(&self, output: &crate::message::Output) -> Option<String> {
        super::nats_output_problem(output)
    }

    /// Each record's id is its `Nats-Msg-Id`: the stream drops a republish
    /// of the same record within its duplicate window.
    fn wants_ids(&self) -> bool {
        true
    }

    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Accepted, Failure>> {
        Box::pin(async move {
            let timeout = self.timeout;
            let timed_out = move || {
                Failure::new(
                    FailureClass::Sink,
                    format!("JetStream publish timed out after {timeout:?}"),
                )
            };
            let deadline = tokio::time::Instant::now() + timeout;
            let mut acks: Vec<(PublishAckFuture, Subject)> = Vec::with_capacity(records.len());
            for r in records {
                let subject = self.subject.pick(r.topic.as_deref()).map_err(|s| {
                    Failure::new(
                        FailureClass::Rejected,
                        format!("JetStream: {s:?} is not a valid subject to publish to"),
                    )
                })?;
                let ack = super::within(
                    deadline,
                    self.js.send_publish(subject.clone(), self.message(r)),
                )
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| failure(&e, &subject))?;
                acks.push((ack, subject));
            }
            let accepted: Accepted = Box::pin(async move {
                for (ack, subject) in acks {
                    super::within(deadline, std::future::IntoFuture::into_future(ack))
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(|e| failure(&e, &subject))?;
                }
                Ok(())
            });
            Ok(accepted)
        })
    }

    fn close(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.js.client().flush())
                .await
                .map_err(|_| anyhow::anyhow!("NATS flush at close timed out"))??;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publish that failed with the server's error `{code, err_code, description}`.
    fn refused(code: usize, err_code: u64, description: &str) -> PublishError {
        let j: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": code,
            "err_code": err_code,
            "description": description,
        }))
        .expect("a JetStream error");
        PublishError::with_source(PublishErrorKind::Other, j)
    }

    #[test]
    fn a_full_broker_is_a_transient_sink_failure() {
        for (code, err_code, text) in [
            (503, 10077, "maximum messages exceeded"),
            (503, 10077, "maximum bytes exceeded"),
            (503, 10077, "maximum messages per subject exceeded"),
            (400, 10002, "resource limits exceeded for account"),
            (500, 10047, "insufficient storage resources available"),
            (500, 10028, "insufficient memory resources available"),
            (503, 10023, "insufficient resources"),
            // A server that sends no err_code.
            (400, 0, "maximum bytes exceeded"),
        ] {
            let f = failure(&refused(code, err_code, text), "out");
            assert_eq!(f.class, FailureClass::Sink, "{text}");
            assert!(f.broker_full, "{text}");
            assert!(f.message.contains("broker full"), "{}", f.message);
        }
    }

    #[test]
    fn other_server_errors_keep_their_class() {
        for (code, err_code, text, class) in [
            (
                400,
                10054,
                "message size exceeds maximum allowed",
                FailureClass::Rejected,
            ),
            (
                400,
                10109,
                "invalid operation on sealed stream",
                FailureClass::Rejected,
            ),
            (
                503,
                10077,
                "error opening msg block file",
                FailureClass::Sink,
            ),
            (
                503,
                10008,
                "JetStream system temporarily unavailable",
                FailureClass::Sink,
            ),
        ] {
            let f = failure(&refused(code, err_code, text), "out");
            assert_eq!(f.class, class, "{text}");
            assert!(!f.broker_full, "{text}");
        }
    }
}
