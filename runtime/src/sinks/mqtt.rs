//! The `mqtt` sink (rumqttc, MQTT 3.1.1 and 5): publishes each record with the
//! configured QoS and returns once the broker acknowledged every one.
//!
//! * QoS 1 returns on PUBACK, QoS 2 on PUBCOMP, QoS 0 once rumqttc wrote the
//!   packet. Acks are matched by packet id: rumqttc reports each written
//!   publish (`Outgoing::Publish(pkid)`) in the order the publishes were
//!   queued, so every queued record waits in a FIFO until its id is known.
//! * A lost connection fails every record not yet acknowledged with the
//!   `sink` class (the pipeline retries; the broker may have received some, so
//!   a retry can duplicate), and rumqttc's replay queue is emptied so a stale
//!   packet id can never be matched with a newer record. The sink always starts
//!   a clean session.
//! * A MQTT 5 PUBACK/PUBREC with a refusal reason — not authorized (0x87),
//!   topic name invalid (0x90), packet too large (0x95), payload format
//!   invalid (0x99), implementation specific (0x83, what Mosquitto 2.0 answers
//!   for `message_size_limit`) — is a `rejected` failure; quota exceeded
//!   (0x97) and unspecified (0x80) are `sink` (transient). A record larger than
//!   the broker's Maximum Packet Size (MQTT 5 CONNACK) is rejected before it is
//!   sent. MQTT 3.1.1 has no refusal: Mosquitto acknowledges and drops what it
//!   refuses (too large, denied by an ACL), so on 3.1.1 those losses are silent.
//! * Timeouts (`timeout` per publish call, waiting for room in the in-flight
//!   window included) are `sink` failures.
//! * Headers: MQTT 5 user properties (values must be UTF-8, else the record is
//!   rejected); 3.1.1 has none. The record key is not sent (MQTT has no key).
//!   With `envelope = true` (the default for a `[dead_letter]` on 3.1.1) the
//!   payload is the JSON envelope of [`crate::envelope`] holding key, payload
//!   and headers, so dead letters keep their `sluice-*` metadata.
//! * Reconnects: capped exponential backoff with jitter, rotating through `urls`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use rand::RngExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Accepted, Record, Sink};
use crate::brokers::mqtt::{self as conn, AckKind, Client, ConnError, Ev, Loop, Reconnect, Spec};
use crate::config::mqtt::{MqttSinkConfig, MqttVersion, topic_problem};
use crate::envelope;
use crate::failure::{Failure, FailureClass};

type Outcome = Result<(), Failure>;

/// One queued record waiting for its acknowledgement.
struct Waiter {
    /// Queue order, to find the oldest unacknowledged publish.
    seq: u64,
    tx: oneshot::Sender<Outcome>,
    _permit: OwnedSemaphorePermit,
}

impl Waiter {
    fn finish(self, o: Outcome) {
        let _ = self.tx.send(o);
    }
}

#[derive(Default)]
struct State {
    connected: bool,
    /// Queued to rumqttc, not yet written, in queue order.
    fifo: VecDeque<Waiter>,
    /// Written QoS 1/2 publishes awaiting PUBACK / PUBCOMP.
    bound: HashMap<u16, Waiter>,
    /// Written later, once its packet id is free (out-of-order acks).
    collided: Option<(u16, Waiter)>,
    /// The broker's Maximum Packet Size (MQTT 5).
    max_packet: Option<u32>,
    /// Why the connection is down, for error messages.
    last_error: Option<String>,
    closing: bool,
    seq: u64,
}

struct Shared {
    state: Mutex<State>,
    client: Client,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An `mqtt` sink. See the module documentation.
pub struct MqttSink {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    task: Mutex<Option<JoinHandle<()>>>,
    topic: Option<String>,
    qos: u8,
    retain: bool,
    v5: bool,
    envelope: bool,
    timeout: std::time::Duration,
}

/// Opens a sink for outputs (`envelope` defaults to false).
pub async fn open(cfg: &MqttSinkConfig, pipeline: &str) -> anyhow::Result<MqttSink> {
    open_with(cfg, pipeline, false).await
}

/// Opens a sink; `dead_letter` picks the defaults for a `[dead_letter]`
/// table (`envelope` defaults to true on MQTT 3.1.1).
pub async fn open_with(
    cfg: &MqttSinkConfig,
    pipeline: &str,
    dead_letter: bool,
) -> anyhow::Result<MqttSink> {
    let (addrs, credentials, tls) =
        conn::prepare(&cfg.all_urls(), &cfg.username, &cfg.password, &cfg.tls)?;
    let client_id = cfg.client_id.clone().unwrap_or_else(|| {
        conn::sanitize_client_id(&format!(
            "sluice-{pipeline}-pub-{:08x}",
            rand::rng().random::<u32>()
        ))
    });
    let window = cfg.max_in_flight.max(1);
    let spec = Spec {
        addrs,
        version: cfg.version,
        client_id,
        clean_start: true,
        session_expiry: None,
        keep_alive: cfg.keep_alive.0,
        receive_max: None,
        inflight: window,
        manual_acks: false,
        credentials,
        tls,
        connect_timeout: cfg.connect_timeout.0,
        reconnect_max: cfg.reconnect_max.0,
        channel: usize::from(u16::MAX),
    };
    let (client, lp) = conn::create(&spec, 0)?;
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        client,
    });
    let (status_tx, mut status) = watch::channel::<Option<Result<(), String>>>(None);
    let task = tokio::spawn(run(lp, spec.clone(), Arc::clone(&shared), status_tx));
    let urls = cfg.all_urls().join(", ");
    let budget = conn::startup_budget(&spec);
    let waited = tokio::time::timeout(budget, status.wait_for(Option::is_some)).await;
    let result = match waited {
        Ok(Ok(s)) => match &*s {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
            None => unreachable!("waited for a status"),
        },
        Ok(Err(_)) => Err(anyhow::anyhow!("the MQTT event loop ended during start-up")),
        Err(_) => {
            let last = shared.lock().last_error.clone();
            Err(anyhow::anyhow!(
                "no MQTT broker answered within {budget:?}{}",
                last.map(|e| format!(": {e}")).unwrap_or_default()
            ))
        }
    };
    if let Err(e) = result {
        task.abort();
        return Err(e).with_context(|| format!("mqtt sink {urls} (client_id {})", spec.client_id));
    }
    Ok(MqttSink {
        shared,
        permits: Arc::new(Semaphore::new(usize::from(window))),
        task: Mutex::new(Some(task)),
        topic: cfg.topic.clone(),
        qos: cfg.qos.min(2),
        retain: cfg.retain,
        v5: cfg.version == MqttVersion::V5,
        envelope: cfg.uses_envelope(dead_letter),
        timeout: cfg.timeout.0,
    })
}

/// The event-loop task of a sink.
async fn run(
    mut lp: Loop,
    spec: Spec,
    shared: Arc<Shared>,
    status: watch::Sender<Option<Result<(), String>>>,
) {
    let mut reconnect = Reconnect::new(&spec);
    let mut started = false;
    loop {
        let ev = lp.poll().await;
        let (why, refused) = match handle(&mut lp, &spec, &shared, &status, &mut started, ev) {
            Step::Go => continue,
            Step::Connected => {
                reconnect.connected();
                continue;
            }
            Step::Lost(why, refused) => (why, refused),
        };
        if shared.lock().closing
            || (refused && status.borrow().as_ref().is_some_and(Result::is_err))
        {
            return;
        }
        let delay = reconnect.next_delay();
        if started {
            if refused {
                tracing::error!(client_id = %spec.client_id, "mqtt sink: {why}; retrying in {delay:?}");
            } else {
                tracing::warn!(client_id = %spec.client_id, "mqtt sink connection lost: {why}; reconnecting in {delay:?}");
            }
        }
        reconnect.wait(&mut lp, &spec, delay).await;
    }
}

/// What the event loop does after an event.
enum Step {
    Go,
    Connected,
    /// The connection was lost: why, and whether the broker refused us.
    Lost(String, bool),
}

/// Handles one event.
fn handle(
    lp: &mut Loop,
    spec: &Spec,
    shared: &Shared,
    status: &watch::Sender<Option<Result<(), String>>>,
    started: &mut bool,
    ev: Result<Ev, ConnError>,
) -> Step {
    let mut st = shared.lock();
    {
        match ev {
            Ok(Ev::ConnAck { max_packet, .. }) => {
                st.connected = true;
                st.max_packet = max_packet;
                st.last_error = None;
                if !*started {
                    *started = true;
                    status.send_replace(Some(Ok(())));
                } else {
                    tracing::info!(client_id = %spec.client_id, "mqtt sink reconnected");
                }
                return Step::Connected;
            }
            Ok(Ev::Sent(pkid)) => {
                let w = match st.collided.take() {
                    Some((p, w)) if p == pkid => Some(w),
                    other => {
                        st.collided = other;
                        st.fifo.pop_front()
                    }
                };
                if let Some(w) = w {
                    if pkid == 0 {
                        w.finish(Ok(()));
                    } else if let Some(old) = st.bound.insert(pkid, w) {
                        old.finish(Err(Failure::new(
                            FailureClass::Sink,
                            format!("mqtt: packet id {pkid} reused before its acknowledgement"),
                        )));
                    }
                }
            }
            Ok(Ev::AwaitAck(pkid)) => {
                if let Some(w) = st.fifo.pop_front() {
                    st.collided = Some((pkid, w));
                }
            }
            Ok(Ev::Ack { kind, pkid, error }) => {
                let finished = match (kind, &error) {
                    (AckKind::Rec, None) => None, // QoS 2: wait for PUBCOMP
                    _ => st.bound.remove(&pkid),
                };
                if let Some(w) = finished {
                    w.finish(match error {
                        None => Ok(()),
                        Some((code, why)) => Err(classify(code, &why)),
                    });
                }
            }
            Ok(_) => {}
            Err(e) => {
                st.connected = false;
                lp.forget();
                let (why, refused) = match e {
                    ConnError::Refused(w) => (w, true),
                    ConnError::Lost(w) => (w, false),
                    ConnError::UnknownReason(code, w) => {
                        let oldest = st.bound.iter().min_by_key(|(_, w)| w.seq).map(|(p, _)| *p);
                        if let Some(w) = oldest.and_then(|p| st.bound.remove(&p)) {
                            w.finish(Err(classify(
                                code,
                                "(rumqttc cannot parse it and reconnects)",
                            )));
                        }
                        (w, false)
                    }
                };
                let fail = Failure::new(
                    FailureClass::Sink,
                    format!("mqtt connection lost before the acknowledgement: {why}"),
                );
                let mut all: Vec<Waiter> = st.fifo.drain(..).collect();
                all.extend(st.bound.drain().map(|(_, w)| w));
                for w in all {
                    w.finish(Err(fail.clone()));
                }
                if let Some((_, w)) = st.collided.take() {
                    w.finish(Err(fail.clone()));
                }
                st.last_error = Some(why.clone());
                if !*started && refused {
                    status.send_replace(Some(Err(why.clone())));
                }
                return Step::Lost(why, refused);
            }
        }
    }
    Step::Go
}

/// A MQTT 5 refusal reason code → failure class.
fn classify(code: u8, why: &str) -> Failure {
    let class = match code {
        // Unspecified, quota exceeded, packet id in use: may pass.
        0x80 | 0x97 | 0x91 => FailureClass::Sink,
        _ => FailureClass::Rejected,
    };
    Failure::new(
        class,
        format!("the MQTT broker refused the message (reason 0x{code:02x} {why})"),
    )
}

/// A record ready to queue.
struct Prepared {
    topic: String,
    payload: Bytes,
    props: Vec<(String, String)>,
}

impl MqttSink {
    fn prepare(&self, r: &Record, max_packet: Option<u32>) -> Result<Prepared, Failure> {
        let reject = |m: String| Failure::new(FailureClass::Rejected, m);
        let topic = r
            .topic
            .clone()
            .or_else(|| self.topic.clone())
            .ok_or_else(|| {
                reject("the output names no topic and the mqtt sink has no `topic`".into())
            })?;
        if let Some(p) = topic_problem(&topic) {
            return Err(reject(format!("bad MQTT topic: {p}")));
        }
        let (payload, props) = if self.envelope {
            (Bytes::from(envelope::encode(r)), Vec::new())
        } else if self.v5 {
            let mut props = Vec::with_capacity(r.headers.len());
            for h in &r.headers {
                let v = std::str::from_utf8(&h.value).map_err(|_| {
                    reject(format!(
                        "header {:?} is not UTF-8; MQTT 5 user properties are strings (set `envelope = true` to keep bytes)",
                        h.key
                    ))
                })?;
                props.push((h.key.clone(), v.to_string()));
            }
            (r.payload.clone(), props)
        } else {
            (r.payload.clone(), Vec::new())
        };
        let size = 5
            + 2
            + topic.len()
            + 2
            + payload.len()
            + 4
            + props
                .iter()
                .map(|(k, v)| 5 + k.len() + v.len())
                .sum::<usize>();
        let limit = max_packet.map_or(conn::MAX_PACKET, |m| (m as usize).min(conn::MAX_PACKET));
        if size > limit {
            return Err(reject(format!(
                "the message is {size} bytes, over the broker's maximum packet size of {limit} bytes"
            )));
        }
        Ok(Prepared {
            topic,
            payload,
            props,
        })
    }

    /// Queues every record with the client (in order) and returns the wait
    /// for their PUBACK/PUBCOMP.
    async fn send_all(&self, records: &[Record]) -> Result<Accepted, Failure> {
        let deadline = Instant::now() + self.timeout;
        let timeout = self.timeout;
        let timed_out = move || {
            Failure::new(
                FailureClass::Sink,
                format!("mqtt publish not acknowledged within {timeout:?}"),
            )
        };
        let max_packet = self.shared.lock().max_packet;
        let prepared = records
            .iter()
            .map(|r| self.prepare(r, max_packet))
            .collect::<Result<Vec<_>, _>>()?;
        let mut waiting = Vec::with_capacity(prepared.len());
        for p in prepared {
            let permit =
                tokio::time::timeout_at(deadline, Arc::clone(&self.permits).acquire_owned())
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|_| Failure::new(FailureClass::Sink, "mqtt sink closed"))?;
            let (tx, rx) = oneshot::channel();
            let mut st = self.shared.lock();
            if st.closing {
                return Err(Failure::new(FailureClass::Sink, "mqtt sink closed"));
            }
            // Queue and register under one lock, so the FIFO matches rumqttc's order.
            self.shared
                .client
                .try_publish(&p.topic, self.qos, self.retain, p.payload, p.props)
                .map_err(|e| Failure::new(FailureClass::Sink, format!("mqtt publish: {e}")))?;
            st.seq += 1;
            let seq = st.seq;
            st.fifo.push_back(Waiter {
                seq,
                tx,
                _permit: permit,
            });
            drop(st);
            waiting.push(rx);
        }
        Ok(Box::pin(async move {
            for rx in waiting {
                match tokio::time::timeout_at(deadline, rx).await {
                    Err(_) => return Err(timed_out()),
                    Ok(Err(_)) => {
                        return Err(Failure::new(
                            FailureClass::Sink,
                            "mqtt sink event loop stopped",
                        ));
                    }
                    Ok(Ok(outcome)) => outcome?,
                }
            }
            Ok(())
        }))
    }
}

impl Sink for MqttSink {
    fn refuses(&self, output: &crate::message::Output) -> Option<String> {
        super::mqtt_output_problem(output)
    }

    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Accepted, Failure>> {
        Box::pin(self.send_all(records))
    }

    fn close(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let connected = {
                let mut st = self.shared.lock();
                st.closing = true;
                st.connected
            };
            if connected {
                self.shared.client.try_disconnect();
            }
            let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(task) = task {
                let abort = task.abort_handle();
                if tokio::time::timeout(std::time::Duration::from_secs(2), task)
                    .await
                    .is_err()
                {
                    abort.abort();
                }
            }
            Ok(())
        })
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        if let Some(t) = self
            .task
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_classified() {
        assert_eq!(
            classify(0x87, "NotAuthorized").class,
            FailureClass::Rejected
        );
        assert_eq!(
            classify(0x90, "TopicNameInvalid").class,
            FailureClass::Rejected
        );
        assert_eq!(
            classify(0x95, "PacketTooLarge").class,
            FailureClass::Rejected
        );
        assert_eq!(
            classify(0x83, "ImplementationSpecific").class,
            FailureClass::Rejected
        );
        assert_eq!(classify(0x97, "QuotaExceeded").class, FailureClass::Sink);
    }
}
