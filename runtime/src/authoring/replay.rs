//! `sluice replay`: dead-letter records sent back through a pipeline.
//!
//! A dead-letter topic is just a source: the replay runs a pipeline file
//! whose `[source]` reads the dead letters (a `file` in `envelope` format, a
//! Kafka or MQTT topic, a JetStream stream) through [`ReplaySource`], which
//! keeps the records the filters select and turns each back into the message
//! that failed: its source topic, its original headers, attempt 1, and the
//! replay's headers (a record whose metadata is inside a JSON envelope
//! payload, as MQTT 3.1.1 dead letters are, is unwrapped first). The
//! pipeline does the rest as for any message, so a
//! record leaves the dead-letter source only once its outputs were accepted
//! or it was dead-lettered again (settled like every delivery).
//!
//! A record dead-lettered again keeps the replay's headers (as
//! `original-sluice-replay` and `original-sluice-replay-attempts`, the way a
//! dead-letter record keeps every incoming `sluice-*` header): its attempts
//! in all are `sluice-attempts` plus `original-sluice-replay-attempts`. When
//! the replay meets a record its own run dead-lettered (the dead letter is
//! the source it reads), it has come round and ends there.

use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;

use crate::failure::FailureClass;
use crate::message::{Header, Message};
use crate::router::dead_letter::headers as dl;
use crate::sources::{Delivery, Settlement, Source, SourceError};
use crate::stats::{LagGauge, SourceDrops, SourceHealth};

/// The header naming the replay a message comes from.
pub const REPLAY: &str = "sluice-replay";
/// The header with the attempts a replayed message had before this replay.
pub const REPLAY_ATTEMPTS: &str = "sluice-replay-attempts";
/// The same headers as a dead-letter record keeps them.
const KEPT_REPLAY: &str = "original-sluice-replay";
const KEPT_REPLAY_ATTEMPTS: &str = "original-sluice-replay-attempts";

/// Which dead-letter records to replay; every filter given must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Failure classes (any of them).
    pub classes: Vec<FailureClass>,
    /// The pipeline that dead-lettered it.
    pub pipeline: Option<String>,
    /// The plugin digest that failed it (a prefix of `sha256:…` is enough).
    pub digest: Option<String>,
    /// Failed at or after this time.
    pub since: Option<SystemTime>,
    /// Failed before this time.
    pub until: Option<SystemTime>,
    /// Its source topic.
    pub topic: Option<String>,
}

/// The metadata of a dead-letter record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub class: Option<String>,
    pub pipeline: Option<String>,
    pub digest: Option<String>,
    pub failed_at: Option<SystemTime>,
    pub topic: Option<String>,
    /// Attempts before this replay: the record's own, and those of the
    /// replays before it.
    pub attempts: u64,
    /// The replay that dead-lettered it again, if one did.
    pub replay: Option<String>,
}

fn header<'a>(msg: &'a Message, key: &str) -> Option<&'a str> {
    msg.headers
        .iter()
        .rev()
        .find(|h| h.key == key)
        .and_then(|h| std::str::from_utf8(&h.value).ok())
}

/// Reads a record's metadata; a value that does not parse counts as absent
/// and is reported (the record is untrusted input).
pub fn meta_of(msg: &Message) -> (Meta, Vec<String>) {
    let mut problems = Vec::new();
    let mut number = |key: &str| -> u64 {
        match header(msg, key) {
            None => 0,
            Some(v) => v.trim().parse().unwrap_or_else(|_| {
                problems.push(format!("header {key}: {v:?} is not a number"));
                0
            }),
        }
    };
    let attempts = number(dl::ATTEMPTS).saturating_add(number(KEPT_REPLAY_ATTEMPTS));
    let failed_at = header(msg, dl::FAILED_AT).and_then(|v| {
        humantime::parse_rfc3339_weak(v)
            .map_err(|e| problems.push(format!("header {}: {v:?}: {e}", dl::FAILED_AT)))
            .ok()
    });
    let meta = Meta {
        class: header(msg, dl::CLASS).map(str::to_string),
        pipeline: header(msg, dl::PIPELINE).map(str::to_string),
        digest: header(msg, dl::DIGEST).map(str::to_string),
        failed_at,
        topic: header(msg, dl::TOPIC).map(str::to_string),
        attempts,
        replay: header(msg, KEPT_REPLAY).map(str::to_string),
    };
    (meta, problems)
}

impl Filter {
    /// Whether a record with `meta` is to be replayed.
    pub fn selects(&self, meta: &Meta) -> bool {
        let eq = |want: &Option<String>, got: &Option<String>| {
            want.as_ref().is_none_or(|w| got.as_ref() == Some(w))
        };
        (self.classes.is_empty()
            || meta
                .class
                .as_deref()
                .is_some_and(|c| self.classes.iter().any(|k| k.as_str() == c)))
            && eq(&self.pipeline, &meta.pipeline)
            && eq(&self.topic, &meta.topic)
            && self.digest.as_ref().is_none_or(|d| {
                meta.digest
                    .as_ref()
                    .is_some_and(|g| g.starts_with(d.as_str()))
            })
            && self
                .since
                .is_none_or(|s| meta.failed_at.is_some_and(|t| t >= s))
            && self
                .until
                .is_none_or(|u| meta.failed_at.is_some_and(|t| t < u))
    }
}

/// The message that failed, rebuilt from its dead-letter record: its source
/// topic, its own headers (not the record's metadata), attempt 1, and the
/// replay's id and the attempts it had before.
pub fn restore(record: &Message, meta: &Meta, replay: &str) -> Message {
    let mut m = Message::new(
        meta.topic.clone().unwrap_or_else(|| record.topic.clone()),
        record.payload.clone(),
    );
    m.key = record.key.clone();
    m.timestamp_ms = record.timestamp_ms;
    m.headers = record
        .headers
        .iter()
        .filter(|h| {
            let k = h.key.to_ascii_lowercase();
            !k.starts_with("sluice-") && k != KEPT_REPLAY && k != KEPT_REPLAY_ATTEMPTS
        })
        .cloned()
        .collect();
    m.headers.push(Header::new(REPLAY, replay.to_string()));
    m.headers
        .push(Header::new(REPLAY_ATTEMPTS, meta.attempts.to_string()));
    m.attempt = 1;
    m
}

/// Counts of what the replay source saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub replayed: std::sync::atomic::AtomicU64,
    pub skipped: std::sync::atomic::AtomicU64,
}

/// The dead-letter source seen through the filters, handing out the
/// restored messages. It ends when the source ends, when nothing came for
/// `idle`, or when it meets a record its own replay dead-lettered.
pub struct ReplaySource {
    pub inner: Box<dyn Source>,
    pub filter: Filter,
    /// The id in the `sluice-replay` header of what this run replays.
    pub id: String,
    pub idle: Duration,
    pub seen: std::sync::Arc<Seen>,
    pub ended: bool,
    /// Set for `--dry-run`: records left out are held, never settled.
    pub hold_skipped: Option<Vec<Delivery>>,
}

impl ReplaySource {
    /// Reads `inner` through `filter` as the replay `id`.
    pub fn new(inner: Box<dyn Source>, filter: Filter, id: String, idle: Duration) -> Self {
        ReplaySource {
            inner,
            filter,
            id,
            idle,
            seen: Default::default(),
            ended: false,
            hold_skipped: None,
        }
    }
}

impl ReplaySource {
    async fn take(&mut self) -> Result<Option<Delivery>, SourceError> {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            if self.ended {
                return Ok(None);
            }
            let d = match tokio::time::timeout(self.idle, self.inner.next()).await {
                Err(_) => {
                    tracing::info!(replay = %self.id, "nothing new for {:?}: the replay ends", self.idle);
                    self.ended = true;
                    return Ok(None);
                }
                Ok(r) => match r? {
                    Some(d) => d,
                    None => return Ok(None),
                },
            };
            if d.decode_error.is_some() {
                // Not a record at all: the pipeline routes it as `decode`
                // (dead-lettered again with the reader's error), never lost.
                self.seen.replayed.fetch_add(1, Relaxed);
                return Ok(Some(d));
            }
            let d = match unwrap_envelope(d) {
                Ok(d) => d,
                Err(d) => {
                    self.seen.replayed.fetch_add(1, Relaxed);
                    return Ok(Some(d));
                }
            };
            let (meta, problems) = meta_of(&d.message);
            let at = position(&d.message);
            for p in &problems {
                tracing::warn!(replay = %self.id, "dead-letter record {at}: {p}");
            }
            if meta.replay.as_deref() == Some(self.id.as_str()) {
                // Come round to what this run dead-lettered: the end.
                tracing::info!(replay = %self.id, "dead-letter record {at} was dead-lettered by this replay: the replay ends");
                self.ended = true;
                let (_, _, handle) = d.into_parts();
                let _ = handle
                    .settle(Settlement::Redeliver {
                        delay: Duration::ZERO,
                    })
                    .await;
                return Ok(None);
            }
            if !self.filter.selects(&meta) {
                self.seen.skipped.fetch_add(1, Relaxed);
                if let Some(held) = &mut self.hold_skipped {
                    held.push(d);
                    continue;
                }
                if let Err(e) = d.settle(Settlement::Ack).await {
                    tracing::warn!(replay = %self.id, "settling a skipped record {at}: {e:#}");
                }
                continue;
            }
            self.seen.replayed.fetch_add(1, Relaxed);
            let (record, _, handle) = d.into_parts();
            return Ok(Some(Delivery::new(
                restore(&record, &meta, &self.id),
                handle,
            )));
        }
    }
}

/// A record whose metadata travels inside its payload as a JSON envelope
/// (an MQTT 3.1.1 dead letter, which has no headers) is unwrapped: payload,
/// key and headers from the envelope. A record with neither the headers nor
/// such an envelope is no dead-letter record: `Err` with it marked
/// undecodable, so the pipeline dead-letters it again as `decode`.
#[allow(clippy::result_large_err)]
pub fn unwrap_envelope(d: Delivery) -> Result<Delivery, Delivery> {
    if header(&d.message, dl::CLASS).is_some() {
        return Ok(d);
    }
    let decoded = std::str::from_utf8(&d.message.payload)
        .map_err(|_| "the payload is not UTF-8".to_string())
        .and_then(crate::envelope::decode);
    let at = position(&d.message);
    let (mut msg, _, handle) = d.into_parts();
    match decoded {
        Ok(e) if e.headers.iter().any(|h| h.key == dl::CLASS) => {
            msg.payload = e.payload;
            msg.key = e.key;
            msg.headers = e.headers;
            Ok(Delivery::new(msg, handle))
        }
        Ok(_) => Err(Delivery::undecodable(
            msg,
            format!(
                "{at}: not a dead-letter record: no {} header, in its headers or in an envelope payload",
                dl::CLASS
            ),
            handle,
        )),
        Err(e) => Err(Delivery::undecodable(
            msg,
            format!(
                "{at}: not a dead-letter record: no {} header, and the payload is no envelope ({e})",
                dl::CLASS
            ),
            handle,
        )),
    }
}

/// Where a record came from, for messages about it.
pub fn position(m: &Message) -> String {
    match (m.partition, m.offset) {
        (Some(p), Some(o)) => format!("{}:{p}:{o}", m.topic),
        (None, Some(o)) => format!("{} at {o}", m.topic),
        _ => m.topic.clone(),
    }
}

impl Source for ReplaySource {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Delivery>, SourceError>> {
        Box::pin(self.take())
    }
    fn redelivers(&self) -> bool {
        self.inner.redelivers()
    }
    fn report_lag(&mut self, gauge: LagGauge) {
        self.inner.report_lag(gauge)
    }
    fn report_health(&mut self, health: SourceHealth) {
        self.inner.report_health(health)
    }
    fn report_drops(&mut self, drops: SourceDrops) {
        self.inner.report_drops(drops)
    }
    fn pause(&mut self) {
        self.inner.pause()
    }
    fn resume(&mut self) {
        self.inner.resume()
    }
    fn close(&mut self) -> BoxFuture<'_, ()> {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(headers: &[(&str, &str)]) -> Message {
        let mut m = Message::new("dlq", b"p".to_vec());
        m.headers = headers
            .iter()
            .map(|(k, v)| Header::new(k.to_string(), v.as_bytes().to_vec()))
            .collect();
        m
    }

    #[test]
    fn metadata_filters_and_restore() {
        let r = record(&[
            ("trace", "t1"),
            (dl::CLASS, "fatal"),
            (dl::ATTEMPTS, "3"),
            (dl::PIPELINE, "orders"),
            (dl::DIGEST, "sha256:abcdef"),
            (dl::TOPIC, "in"),
            (dl::FAILED_AT, "2026-01-02T03:04:05.678Z"),
            (KEPT_REPLAY, "orders@old"),
            (KEPT_REPLAY_ATTEMPTS, "2"),
        ]);
        let (meta, problems) = meta_of(&r);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(meta.attempts, 5, "this record's and the earlier replays'");
        let t = |s| humantime::parse_rfc3339_weak(s).expect("time");
        let f = |f: Filter| f.selects(&meta);
        assert!(f(Filter::default()));
        assert!(f(Filter {
            classes: vec![FailureClass::Trap, FailureClass::Fatal],
            pipeline: Some("orders".into()),
            digest: Some("sha256:abc".into()),
            topic: Some("in".into()),
            since: Some(t("2026-01-02T03:04:05Z")),
            until: Some(t("2026-01-02T03:04:06Z")),
        }));
        assert!(!f(Filter {
            classes: vec![FailureClass::Trap],
            ..Default::default()
        }));
        assert!(!f(Filter {
            pipeline: Some("other".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            digest: Some("sha256:x".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            until: Some(t("2026-01-02T03:04:05Z")),
            ..Default::default()
        }));
        assert!(!f(Filter {
            topic: Some("x".into()),
            ..Default::default()
        }));

        let m = restore(&r, &meta, "orders@now");
        assert_eq!(m.topic, "in");
        assert_eq!(m.attempt, 1);
        let hs: Vec<(&str, &[u8])> = m
            .headers
            .iter()
            .map(|h| (h.key.as_str(), &h.value[..]))
            .collect();
        assert_eq!(
            hs,
            vec![
                ("trace", &b"t1"[..]),
                (REPLAY, b"orders@now"),
                (REPLAY_ATTEMPTS, b"5")
            ]
        );

        // Untrusted values: reported, counted as absent, never a panic.
        let (meta, problems) = meta_of(&record(&[
            (dl::ATTEMPTS, "lots"),
            (dl::FAILED_AT, "yesterday"),
        ]));
        assert_eq!(meta.attempts, 0);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            !Filter {
                since: Some(SystemTime::UNIX_EPOCH),
                ..Default::default()
            }
            .selects(&meta)
        );
    }
}
