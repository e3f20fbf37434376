//! Request/reply for the `nats` source: the settle handle of a request
//! answers it. Never silence: whatever the pipeline decided, the caller gets
//! a reply.
//!
//! The pipeline hands the handle the outcome before settling it
//! ([`NatsSettle::answer`]): the handler's first output (which is then not
//! published to a sink), or the last failure. On settle:
//!
//! | recorded answer | settlement | reply |
//! | --- | --- | --- |
//! | the first output | `Ack` | its payload and headers |
//! | none | `Ack` | empty payload (the handler returned no output) |
//! | a failure | any | `fallback` (header `sluice-error-class`), else an error reply |
//! | unavailable (shed: breaker open) | any | `fallback` (class `unavailable`), else an error reply (`503`) |
//! | none | `Terminated` / `Redeliver` | `fallback` (class `unavailable`), else an error reply (`503`) |
//!
//! A request dropped at the pending limits never reaches the pipeline; the
//! source answers it the same way ([`overloaded`]).
//!
//! An error reply has an empty payload and the headers `Nats-Service-Error`
//! (class and message), `Nats-Service-Error-Code` (`500`, or `503` when
//! Sluice is overloaded or shutting down) and `sluice-error-class`. Core NATS
//! cannot redeliver: a `Redeliver` settlement (shutdown, stop) is answered
//! with an error reply and the message is gone.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, HeaderMap, Subject};
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::sources::{Settle, Settlement};

use crate::brokers::nats::{header_text, to_nats_headers};

/// How long sending a reply may take (publish and flush).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `Nats-Service-Error` text.
const MAX_ERROR_TEXT: usize = 512;

/// The header naming the failure class in error and fallback replies.
pub const CLASS_HEADER: &str = "sluice-error-class";
/// The NATS micro-services error header.
pub const SERVICE_ERROR: &str = "Nats-Service-Error";
/// The NATS micro-services error code header.
pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

pub use crate::sources::Answer;

/// The settle handle of one `nats` delivery.
pub struct NatsSettle {
    /// Set for a request (`request_reply = true` and a reply subject).
    request: Option<Request>,
    answer: Option<Answer>,
    pipeline: Arc<str>,
}

/// What answering a request takes; a plain message carries none of it.
pub(super) struct Request {
    pub client: Client,
    pub to: Subject,
    pub fallback: Option<Bytes>,
}

impl NatsSettle {
    pub(super) fn new(request: Option<Request>, pipeline: Arc<str>) -> Self {
        NatsSettle {
            request,
            answer: None,
            pipeline,
        }
    }

    /// The reply for `how`, given what was recorded.
    fn reply(&self, fallback: Option<&Bytes>, how: Settlement) -> (Bytes, HeaderMap) {
        reply_to(self.answer.as_ref(), fallback, how)
    }
}

/// The reply a request gets for the `answer` recorded and the settlement
/// (the table above); `sluice test` shows it for a request case.
pub fn reply_to(
    answer: Option<&Answer>,
    fallback: Option<&Bytes>,
    how: Settlement,
) -> (Bytes, HeaderMap) {
    match (answer, how) {
        (Some(Answer::Reply(o)), Settlement::Ack) => (
            o.payload.clone(),
            to_nats_headers(&o.headers, o.key.as_ref()),
        ),
        (None, Settlement::Ack) => (Bytes::new(), HeaderMap::new()),
        (Some(Answer::Unavailable(why)), _) => unavailable_reply(fallback, why),
        (Some(Answer::Failed(f)), _) => match fallback {
            Some(fb) => {
                let mut h = HeaderMap::new();
                h.insert(CLASS_HEADER, f.class.as_str());
                (fb.clone(), h)
            }
            None => error_reply(f.class.as_str(), &f.message, 500),
        },
        (_, Settlement::Terminated | Settlement::Redeliver { .. }) => {
            unavailable_reply(fallback, "the request was not handled (pipeline stopping)")
        }
    }
}

/// The answer to a request Sluice did not handle (shed, shutting down): the
/// fallback with the class header `unavailable`, else a `503` error reply.
fn unavailable_reply(fallback: Option<&Bytes>, why: &str) -> (Bytes, HeaderMap) {
    match fallback {
        Some(fb) => {
            let mut h = HeaderMap::new();
            h.insert(CLASS_HEADER, "unavailable");
            (fb.clone(), h)
        }
        None => error_reply("unavailable", why, 503),
    }
}

/// An error reply: empty payload, the error in headers.
fn error_reply(class: &str, message: &str, code: u16) -> (Bytes, HeaderMap) {
    let mut text = header_text(format!("{class}: {message}").as_bytes());
    if text.len() > MAX_ERROR_TEXT {
        let mut cut = MAX_ERROR_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    let mut h = HeaderMap::new();
    h.insert(SERVICE_ERROR, text);
    h.insert(SERVICE_ERROR_CODE, code.to_string());
    h.insert(CLASS_HEADER, class);
    (Bytes::new(), h)
}

async fn send(
    client: &Client,
    to: Subject,
    payload: Bytes,
    headers: HeaderMap,
) -> anyhow::Result<()> {
    let work = async {
        client.publish_with_headers(to, headers, payload).await?;
        client.flush().await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(REPLY_TIMEOUT, work)
        .await
        .map_err(|_| anyhow::anyhow!("sending the reply timed out after {REPLY_TIMEOUT:?}"))?
}

/// Answers a request dropped because the pending limits were reached
/// (queued without a flush: the forwarder must not wait on the server).
pub(super) async fn overloaded(client: &Client, to: Subject, fallback: Option<&Bytes>) {
    let (p, h) = unavailable_reply(fallback, "overloaded: pending limits reached");
    if let Err(e) = client.publish_with_headers(to, h, p).await {
        tracing::debug!("replying to a dropped request: {e}");
    }
}

/// Answers a request that will not be handled (shutdown).
pub(super) async fn unavailable(client: &Client, to: Subject, fallback: Option<&Bytes>) {
    let (p, h) = unavailable_reply(fallback, "shutting down");
    if let Err(e) = send(client, to, p, h).await {
        tracing::debug!("replying to a request at shutdown: {e:#}");
    }
}

impl Settle for NatsSettle {
    fn wants_answer(&self) -> bool {
        self.request.is_some()
    }

    fn answer(&mut self, answer: Answer) {
        self.answer = Some(answer);
    }

    fn settle(self: Box<Self>, how: Settlement) -> BoxFuture<'static, anyhow::Result<()>> {
        let Some(request) = &self.request else {
            if matches!(how, Settlement::Redeliver { .. }) {
                tracing::debug!(pipeline = %self.pipeline,
                    "core NATS cannot redeliver: the message is gone (at most once)");
            }
            // A plain message: nothing to send, nothing to allocate.
            return crate::sources::settled();
        };
        let (payload, headers) = self.reply(request.fallback.as_ref(), how);
        let (client, to) = (request.client.clone(), request.to.clone());
        Box::pin(async move { send(&client, to, payload, headers).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::{Failure, FailureClass};
    use crate::message::Output;

    fn text(h: &HeaderMap, k: &str) -> Option<String> {
        h.get(k).map(|v| v.as_str().to_string())
    }

    #[test]
    fn replies_by_outcome() {
        let fallback = Some(Bytes::from_static(b"busy"));
        let settle = || NatsSettle::new(None, "p".into());
        let mut s = settle();
        s.answer(Answer::Failed(Failure::new(
            FailureClass::Retriable,
            "nope",
        )));
        s.answer(Answer::Reply(Output::new("ok")));
        assert_eq!(s.reply(None, Settlement::Ack).0, Bytes::from_static(b"ok"));
        let mut s = settle();
        s.answer(Answer::Failed(Failure::new(
            FailureClass::Timeout,
            "slow\nline",
        )));
        let (p, h) = s.reply(None, Settlement::Ack);
        assert!(p.is_empty());
        assert_eq!(text(&h, CLASS_HEADER).as_deref(), Some("timeout"));
        assert_eq!(
            text(&h, SERVICE_ERROR).as_deref(),
            Some("timeout: slow line")
        );
        let mut s = settle();
        s.answer(Answer::Failed(Failure::new(FailureClass::Fatal, "x")));
        let (p, h) = s.reply(fallback.as_ref(), Settlement::Terminated);
        assert_eq!(p, Bytes::from_static(b"busy"));
        assert_eq!(text(&h, CLASS_HEADER).as_deref(), Some("fatal"));
        let (_, h) = settle().reply(
            None,
            Settlement::Redeliver {
                delay: Duration::ZERO,
            },
        );
        assert_eq!(text(&h, SERVICE_ERROR_CODE).as_deref(), Some("503"));
        let mut s = settle();
        s.answer(Answer::Unavailable("circuit breaker open".into()));
        let (p, h) = s.reply(None, Settlement::Terminated);
        assert!(p.is_empty());
        assert_eq!(text(&h, SERVICE_ERROR_CODE).as_deref(), Some("503"));
        assert_eq!(
            text(&h, SERVICE_ERROR).as_deref(),
            Some("unavailable: circuit breaker open")
        );
        let (p, h) = s.reply(fallback.as_ref(), Settlement::Terminated);
        assert_eq!(p, Bytes::from_static(b"busy"));
        assert_eq!(text(&h, CLASS_HEADER).as_deref(), Some("unavailable"));
    }
}
