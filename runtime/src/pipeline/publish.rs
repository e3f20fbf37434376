//! Publishing: a call's outputs grouped by sink and sent with their stable
//! record ids, dead-letter records cut down until one fits, publish timeouts.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use crate::failure::{Failure, FailureClass};
use crate::message::{Message, Output};
use crate::policy::dead_letter;
use crate::sinks::{Accepted, Record, Sink};

/// Closes every sink (each flushes what it holds); a failure is logged.
pub(super) async fn close_sinks(sh: &Shared) {
    let all = sh
        .sinks
        .default
        .iter()
        .chain(sh.sinks.named.values())
        .chain(sh.dead_letter.iter());
    for s in all {
        if let Err(e) = s.close().await {
            tracing::warn!(pipeline = %sh.name, "closing a sink: {e:#}");
        }
    }
}

/// What the stable ids of a message's records are made from (the same on
/// every retry of the delivery): the message's own position where it has
/// one, else a number unique to this delivery. The id text itself is built
/// only for sinks that read it ([`Sink::wants_ids`]) and for dead letters.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ids {
    /// For a message without an offset (NATS core, MQTT, stdin): this
    /// delivery's number, so two equal payloads are never taken for one by
    /// a deduplicating sink.
    delivery: Option<u64>,
}

impl Ids {
    pub(super) fn of(msg: &Message) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Ids {
            delivery: msg.offset.is_none().then(|| NEXT.fetch_add(1, Relaxed)),
        }
    }

    /// `<pipeline>:<topic>:<partition>:<offset>`, or
    /// `<pipeline>:<topic>:<process nonce>-<delivery>` without an offset.
    pub(super) fn base(self, sh: &Shared, msg: &Message) -> String {
        // Built by hand: `format!` (padded hex, then the formatter's
        // per-character writes) showed in profiles.
        let mut num = itoa::Buffer::new();
        let mut id = String::with_capacity(sh.name.len() + msg.topic.len() + 40);
        id.push_str(&sh.name);
        id.push(':');
        id.push_str(&msg.topic);
        id.push(':');
        match (msg.offset, self.delivery) {
            (Some(o), _) => {
                id.push_str(num.format(msg.partition.unwrap_or(0)));
                id.push(':');
                id.push_str(num.format(o));
            }
            (None, delivery) => {
                static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                id.push_str(NONCE.get_or_init(|| format!("{:016x}", rand::random::<u64>())));
                id.push('-');
                id.push_str(num.format(delivery.unwrap_or(0)));
            }
        }
        id
    }
}

/// Publishes a dead-letter record; when the sink refuses it for good
/// (`rejected`), publishes it cut down step by step
/// ([`dead_letter::cut_down`]) until one fits. The last failure otherwise.
pub(super) async fn publish_dead_letter(
    sh: &Shared,
    dlq: &dyn Sink,
    record: &Record,
) -> Result<(), Failure> {
    let mut failed = match timed_publish(sh, dlq, std::slice::from_ref(record)).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    for step in 1.. {
        if failed.class != FailureClass::Rejected {
            break;
        }
        let Some((cut, how)) = dead_letter::cut_down(record, step) else {
            break;
        };
        tracing::warn!(pipeline = %sh.name, "the dead-letter sink refused a record ({failed}); sending it {how}");
        match timed_publish(sh, dlq, std::slice::from_ref(&cut)).await {
            Ok(()) => return Ok(()),
            Err(e) => failed = e,
        }
    }
    Err(failed)
}

async fn timed_publish(sh: &Shared, sink: &dyn Sink, records: &[Record]) -> Result<(), Failure> {
    match tokio::time::timeout(sh.publish_timeout, sink.publish(records)).await {
        Ok(r) => r,
        Err(_) => Err(publish_timed_out(sh.publish_timeout)),
    }
}

pub(super) fn publish_timed_out(timeout: Duration) -> Failure {
    Failure::new(
        FailureClass::Sink,
        format!("publish timed out after {timeout:?}"),
    )
}

/// Sends a call's outputs, in order, grouped by sink; the returned future
/// resolves once every sink accepted its share. Sending must be done by
/// `deadline`; the caller bounds the wait for acceptance by it (one timer
/// per worker's window, not one per message).
pub(super) async fn send(
    sh: &Shared,
    msg: &Message,
    ids: Ids,
    outputs: Vec<Output>,
    deadline: Instant,
) -> Result<Accepted, Failure> {
    // Every output is checked before any is sent: a message whose second
    // output names no sink must not have its first one published (and again
    // on every retry).
    for o in &outputs {
        if let Some(problem) = sink_for(sh, o.sink.as_deref())?.refuses(o) {
            return Err(Failure::new(
                FailureClass::Rejected,
                format!("bad output: {problem}"),
            ));
        }
    }
    // Most calls publish to one sink: its wait is kept without a Vec.
    let mut first_wait: Option<Accepted> = None;
    let mut more_waits: Vec<Accepted> = Vec::new();
    // The ids' common part, built once a sink wants ids.
    let mut built: Option<String> = None;
    let mut i = 0;
    let mut outputs = outputs.into_iter().peekable();
    while let Some(first) = outputs.next() {
        let name = first.sink.clone();
        let sink = sink_for(sh, name.as_deref())?;
        let base = if sink.wants_ids() {
            Some(built.get_or_insert_with(|| ids.base(sh, msg)).as_str())
        } else {
            None
        };
        i += 1;
        let head = record(first, base, i);
        let sending = if outputs.peek().is_some_and(|o| o.sink == name) {
            let mut records = vec![head];
            while let Some(o) = outputs.next_if(|o| o.sink == name) {
                i += 1;
                records.push(record(o, base, i));
            }
            crate::wait::within(deadline, sink.send(&records)).await
        } else {
            // One record for this sink (the common case) needs no Vec.
            crate::wait::within(deadline, sink.send(std::slice::from_ref(&head))).await
        };
        let wait = sending.map_err(|_| publish_timed_out(sh.publish_timeout))??;
        match first_wait {
            None => first_wait = Some(wait),
            Some(_) => more_waits.push(wait),
        }
    }
    let Some(first_wait) = first_wait else {
        return Ok(crate::sinks::done());
    };
    if more_waits.is_empty() {
        return Ok(first_wait);
    }
    Ok(Box::pin(async move {
        first_wait.await?;
        for wait in more_waits {
            wait.await?;
        }
        Ok(())
    }))
}

/// The sink an output names (`None`: the pipeline's default sink).
fn sink_for<'a>(sh: &'a Shared, name: Option<&str>) -> Result<&'a dyn Sink, Failure> {
    match name {
        None => sh.sinks.default.as_deref().ok_or_else(|| {
            Failure::new(
                FailureClass::Trap,
                "bad output: it names no sink and the pipeline has no default [sink]",
            )
        }),
        Some(s) => sh.sinks.named.get(s).map(|b| &**b).ok_or_else(|| {
            let known: Vec<&str> = sh.sinks.named.keys().map(String::as_str).collect();
            Failure::new(
                FailureClass::Trap,
                format!(
                    "bad output: no sink named \"{}\" (the pipeline has: {})",
                    crate::engine::guest_text(s),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        }),
    }
}

/// Output number `i` of a call as a sink record, with its stable id
/// `<base>:<i>` when the sink wants ids (`base` given), else none.
fn record(o: Output, base: Option<&str>, i: usize) -> Record {
    let id = match base {
        Some(base) => {
            let mut id = String::with_capacity(base.len() + 4);
            id.push_str(base);
            id.push(':');
            id.push_str(itoa::Buffer::new().format(i));
            id
        }
        None => String::new(),
    };
    Record {
        topic: o.topic,
        key: o.key,
        payload: o.payload,
        headers: o.headers,
        id,
    }
}
