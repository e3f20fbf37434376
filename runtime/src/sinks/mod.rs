//! Sinks: one module per broker. A sink returns from `publish` only once the
//! broker (or the file system) durably accepted every record.

pub mod file;
pub mod jetstream;
pub mod kafka;
pub mod memory;
pub mod mqtt;
pub mod nats;

use futures::future::BoxFuture;

use crate::failure::Failure;
use crate::message::Output;
pub use crate::message::Record;
pub use crate::wait::{within, within_for};

/// What a [`Sink::send`] leaves to wait for: resolves once the broker
/// accepted every record of that send. It borrows nothing, so a pipeline
/// worker can keep several in flight while it handles the next message.
pub type Accepted = BoxFuture<'static, Result<(), Failure>>;

/// An [`Accepted`] that is already done (sinks whose `send` does it all).
pub fn done() -> Accepted {
    crate::wait::settled()
}

/// Why a NATS sink could never publish `o`: its subject, or a header name
/// NATS cannot carry (visible ASCII without `:`).
pub(crate) fn nats_output_problem(o: &Output) -> Option<String> {
    if let Some(p) = topic_problem(o, |s| {
        crate::config::nats::bad_subject(s, false).then(|| {
            "a subject to publish to is not empty and has no spaces, control characters, \
             empty tokens or wildcards"
                .to_string()
        })
    }) {
        return Some(p);
    }
    o.headers.iter().find_map(|h| {
        (h.key.is_empty() || !h.key.chars().all(|c| c.is_ascii_graphic() && c != ':')).then(|| {
            format!(
                "header \"{}\": a NATS header name is visible ASCII without `:`",
                crate::engine::guest_text(&h.key)
            )
        })
    })
}

/// Why an output's topic fails `check` (none: the sink's default topic).
fn topic_problem(o: &Output, check: fn(&str) -> Option<String>) -> Option<String> {
    let topic = o.topic.as_deref()?;
    check(topic).map(|p| format!("topic \"{}\": {p}", crate::engine::guest_text(topic)))
}

/// Why an MQTT sink could never publish `o`.
pub(crate) fn mqtt_output_problem(o: &Output) -> Option<String> {
    topic_problem(o, crate::config::mqtt::topic_problem)
}

/// Why a Kafka sink could never publish `o`.
pub(crate) fn kafka_output_problem(o: &Output) -> Option<String> {
    topic_problem(o, |t| {
        (!crate::config::kafka::valid_topic(t))
            .then(|| "a Kafka topic is 1 to 249 of a-z A-Z 0-9 . _ -".to_string())
    })
}

/// A publisher to one broker destination.
///
/// Publishing has two steps so that a worker can pipeline: `send` hands the
/// records to the client in order and returns once they are queued there
/// (a later `send` goes out after them), with an [`Accepted`] future that
/// resolves once the broker acknowledged them. A failure of either step is
/// classed [`crate::failure::FailureClass::Sink`] (transient: broker away,
/// timeout, queue full) or [`crate::failure::FailureClass::Rejected`] (this
/// very record is refused).
pub trait Sink: Send + Sync {
    /// Queues the records in order; the returned future waits for the broker.
    /// Sinks that cannot split the steps (file, memory) do the whole publish
    /// here and return [`done`].
    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Accepted, Failure>>;

    /// Whether this sink reads [`Record::id`] (a broker that deduplicates by
    /// it). The pipeline builds the ids, two strings a message, only for
    /// sinks that do.
    fn wants_ids(&self) -> bool {
        false
    }

    /// Why this sink could never publish `output` (its own topic, its
    /// headers; checked with every other output of its message before any
    /// is sent), or `None` when it can. Such an output is `rejected`: no
    /// broker would take it, however often it is tried.
    fn refuses(&self, _output: &Output) -> Option<String> {
        None
    }

    /// Publishes the records in order and returns once all were accepted.
    fn publish<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move { self.send(records).await?.await })
    }

    /// Flushes and closes the sink at shutdown.
    fn close(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::message::Header;

    fn output(topic: Option<&str>, header: Option<&str>) -> Output {
        Output {
            sink: None,
            topic: topic.map(str::to_string),
            key: None,
            payload: Bytes::from_static(b"x"),
            headers: header
                .map(|k| vec![Header::new(k.to_string(), b"v".to_vec())])
                .unwrap_or_default(),
        }
    }

    #[test]
    fn outputs_no_broker_would_take_are_named() {
        for bad in ["", "a/+/b", "a/#", "a\nb", "a\u{0}b"] {
            assert!(
                mqtt_output_problem(&output(Some(bad), None)).is_some(),
                "{bad:?}"
            );
        }
        assert!(mqtt_output_problem(&output(Some(&"t".repeat(70_000)), None)).is_some());
        assert_eq!(
            mqtt_output_problem(&output(Some("fleet/a/temp"), None)),
            None
        );
        assert_eq!(mqtt_output_problem(&output(None, None)), None);

        for bad in [
            "", "a b", "a..b", ".a", "a.", "a.*", "a.>", "a\u{0}b", "a\tb",
        ] {
            assert!(
                nats_output_problem(&output(Some(bad), None)).is_some(),
                "{bad:?}"
            );
        }
        for bad in ["", "b\tad", "é", "a:b", "a b", "a\u{7f}"] {
            let p = nats_output_problem(&output(Some("ok.subject"), Some(bad)));
            assert!(p.is_some(), "header {bad:?}");
        }
        assert_eq!(
            nats_output_problem(&output(Some("orders.eu"), Some("X-Trace"))),
            None
        );

        for bad in ["", ".", "..", "a b", "a/b", "é"] {
            assert!(
                kafka_output_problem(&output(Some(bad), None)).is_some(),
                "{bad:?}"
            );
        }
        assert!(kafka_output_problem(&output(Some(&"t".repeat(250)), None)).is_some());
        assert_eq!(
            kafka_output_problem(&output(Some("logs.app-1_x"), None)),
            None
        );
    }
}
