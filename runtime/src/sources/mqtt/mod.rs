//! The `mqtt` source (rumqttc, MQTT 3.1.1 and 5): subscribes to topic filters
//! and acknowledges each message only after the pipeline settled it.
//!
//! # Delivery
//!
//! * **Manual acknowledgement.** rumqttc runs with manual acks: the PUBACK
//!   (QoS 1) or PUBREC (QoS 2) of a message goes out only when its delivery is
//!   settled with `Ack` or `Terminated`. QoS 0 messages have nothing to ack.
//! * **In order.** MQTT (3.1.1 §4.6, 5 §4.6) asks a client to acknowledge in
//!   the order it received. Mosquitto accepts any order (it looks packets up by
//!   id), but other brokers may not, so acks are sent in receive order: a
//!   message settled early waits, unacknowledged, for the ones before it. They
//!   all count against the receive window meanwhile.
//! * **Redeliver { delay }.** MQTT has no negative ack: the message is queued
//!   again in-process (attempt + 1, handed out after the delay) and stays
//!   unacknowledged until it is finally settled.
//! * **Lost connection.** Acks are tied to the connection the message arrived
//!   on. After a disconnect, the broker redelivers every unacknowledged QoS 1/2
//!   message of a persistent session (with the DUP flag), so settlements of
//!   messages from the old connection send nothing — an ack by packet id on
//!   the new connection could hit a different message. Messages received but
//!   not yet handed out are dropped when the session was resumed (the broker
//!   sends them again); when it was not (clean session, expired session,
//!   failover to another broker), they are handed out, and so are old
//!   messages the pipeline re-queues: without a session nothing can be acked,
//!   and the broker no longer has them.
//! * **QoS 2, exactly once.** A resumed session brings again every QoS 2
//!   message whose PUBREC the broker did not get, and the PUBREL of every
//!   one whose PUBREC it did. The source keeps the packet ids of the
//!   session's settled QoS 2 messages until their PUBREL: a copy of one of
//!   them is acknowledged again, not handed out, so a settled message is
//!   handled once. A PUBREL the client does not know (its PUBREC went out on
//!   an earlier connection or process) is answered with PUBCOMP
//!   (`vendor/rumqttc/SLUICE.md`). Only a message still being handled when
//!   the connection went can come out twice: its copy arrives before it is
//!   settled. The packet ids are kept in memory: a restarted process
//!   handles such copies again.
//! * **Persistent session.** `clean_session = false` (default) keeps the
//!   subscriptions and the QoS 1/2 messages published while Sluice is away
//!   (MQTT 5: for `session_expiry`). Mosquitto queues at most
//!   `max_queued_messages` (default 1000) per client and drops the rest: size
//!   it for the longest outage.
//! * **Backpressure.** At most `max_in_flight` QoS 1/2 messages are
//!   unacknowledged (MQTT 5 Receive Maximum; on 3.1.1 the broker's own window,
//!   Mosquitto `max_inflight_messages`): then the broker waits. `pause()` only
//!   stops handing out; the window does the rest. A broker that sends past
//!   the window (Mosquitto 2.0.11 does once the client acknowledges) is not
//!   held back: rumqttc writes the acknowledgements from the same poll that
//!   reads, so not reading would stall them. QoS 0 messages are buffered up
//!   to `max_in_flight`, then the socket is no longer read (from the first
//!   SUBACK on: before it nothing is handed out yet).
//!
//! # Messages
//!
//! `topic` is the topic the message was published to; MQTT 5 user properties
//! become headers (3.1.1 has none); there is no key, partition or offset;
//! `timestamp_ms` is the receive time.
//!
//! # Connection
//!
//! A background task polls rumqttc's event loop. rumqttc reconnects on the
//! next poll without pausing, so the task sleeps between failed attempts
//! (exponential from 100 ms to `reconnect_max`, full jitter) and, with several
//! `urls`, moves to the next broker. After a connect that did not resume the
//! session it subscribes again. `open` waits for the first connection and
//! subscription: refused credentials or subscriptions fail it with the
//! broker's reason, and so does no broker answering within `connect_timeout`
//! for each address (plus the reconnect pauses between them).
//! Credentials refused later (e.g. a rotated password) end the source with a
//! fatal error instead of a silent retry loop.

mod state;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Delivery, Source, SourceError};
use crate::brokers::mqtt::{self as conn, ConnError, Ev, Loop, Reconnect, Spec};
use crate::config::mqtt::{MqttSourceConfig, MqttVersion};
use state::{Received, Shared};

/// How start-up is going, reported by the event-loop task.
#[derive(Debug, Clone)]
enum Status {
    Connecting(Option<String>),
    Ready,
    Failed(String),
}

/// An `mqtt` source. See the module documentation.
pub struct MqttSource {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
    paused: watch::Sender<bool>,
    closed: bool,
}

/// The client id used when the config names none.
pub fn default_client_id(cfg: &MqttSourceConfig, pipeline: &str) -> String {
    let mut id = format!("sluice-{pipeline}");
    if cfg.topics.iter().any(|t| t.starts_with("$share/"))
        && let Some(h) = conn::hostname()
    {
        id = format!("{id}-{h}");
    }
    conn::sanitize_client_id(&id)
}

/// Connects, subscribes and starts the event-loop task. Fails on refused
/// credentials or subscriptions, and when no broker answered within
/// [`conn::startup_budget`].
pub async fn open(cfg: &MqttSourceConfig, pipeline: &str) -> anyhow::Result<MqttSource> {
    let (addrs, credentials, tls) =
        conn::prepare(&cfg.all_urls(), &cfg.username, &cfg.password, &cfg.tls)?;
    let v5 = cfg.version == MqttVersion::V5;
    let spec = Spec {
        addrs,
        version: cfg.version,
        client_id: cfg
            .client_id
            .clone()
            .unwrap_or_else(|| default_client_id(cfg, pipeline)),
        clean_start: cfg.clean_session,
        session_expiry: (v5 && !cfg.clean_session)
            .then(|| u32::try_from(cfg.session_expiry.0.as_secs()).unwrap_or(u32::MAX)),
        keep_alive: cfg.keep_alive.0,
        receive_max: v5.then_some(cfg.max_in_flight.max(1)),
        inflight: 16,
        manual_acks: true,
        credentials,
        tls,
        connect_timeout: cfg.connect_timeout.0,
        reconnect_max: cfg.reconnect_max.0,
        channel: usize::from(u16::MAX),
    };
    let (client, lp) = conn::create(&spec, 0)?;
    let shared = Arc::new(Shared::new(client, usize::from(cfg.max_in_flight.max(1))));
    let (status_tx, mut status) = watch::channel(Status::Connecting(None));
    let task = tokio::spawn(run(
        lp,
        spec.clone(),
        cfg.topics.clone(),
        cfg.qos,
        Arc::clone(&shared),
        status_tx,
    ));
    let urls = cfg.all_urls().join(", ");
    let budget = conn::startup_budget(&spec);
    let outcome = tokio::time::timeout(budget, async {
        status
            .wait_for(|s| !matches!(s, Status::Connecting(_)))
            .await
            .map(|s| s.clone())
    })
    .await;
    let result = match outcome {
        Ok(Ok(Status::Failed(e))) => Err(anyhow::anyhow!("{e}")),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(anyhow::anyhow!("the MQTT event loop ended during start-up")),
        Err(_) => {
            let last = match &*status.borrow() {
                Status::Connecting(Some(e)) => format!(": {e}"),
                _ => String::new(),
            };
            Err(anyhow::anyhow!(
                "no MQTT broker answered within {budget:?}{last}"
            ))
        }
    };
    if let Err(e) = result {
        task.abort();
        return Err(e).with_context(|| {
            format!(
                "mqtt source {urls} (client_id {}, MQTT {})",
                spec.client_id,
                if v5 { "5" } else { "3.1.1" }
            )
        });
    }
    tracing::info!(pipeline, client_id = %spec.client_id, urls = %urls, topics = ?cfg.topics,
        "mqtt source connected and subscribed");
    Ok(MqttSource {
        shared,
        task: Some(task),
        paused: watch::channel(false).0,
        closed: false,
    })
}

/// The event-loop task: polls, hands messages over, reconnects.
async fn run(
    mut lp: Loop,
    spec: Spec,
    topics: Vec<String>,
    qos: u8,
    shared: Arc<Shared>,
    status: watch::Sender<Status>,
) {
    let mut reconnect = Reconnect::new(&spec);
    let mut started = false;
    loop {
        match lp.poll().await {
            Ok(Ev::ConnAck {
                session_present, ..
            }) => {
                reconnect.connected();
                shared.connected(session_present, reconnect.address());
                // Subscribe on the first connect (the filters may have changed
                // since the session was made) and whenever there is no session.
                if (!started || !session_present)
                    && let Err(e) = shared.client.try_subscribe(&topics, qos)
                {
                    tracing::error!("mqtt: cannot queue SUBSCRIBE: {e}");
                }
                if started {
                    tracing::info!(session_present, "mqtt source reconnected");
                }
            }
            Ok(Ev::SubAck { failures }) => {
                if failures.is_empty() {
                    if !started {
                        started = true;
                        status.send_replace(Status::Ready);
                    }
                } else {
                    let e = format!(
                        "the broker refused the subscription to {topics:?}: {}",
                        failures.join(", ")
                    );
                    status.send_replace(Status::Failed(e.clone()));
                    shared.fail(e);
                    return;
                }
            }
            Ok(Ev::Released(pkid)) => shared.released(pkid),
            Ok(Ev::Publish(p)) => {
                let qos0 = p.qos == 0;
                shared.received(p);
                // Not before the SUBACK: nothing is handed out until `open`
                // returns, and a resumed session's messages come before it.
                if qos0 && started {
                    shared.wait_for_room().await;
                }
            }
            Ok(_) => {}
            Err(e) => {
                shared.disconnected(&mut lp);
                match e {
                    ConnError::Refused(why) => {
                        status.send_replace(Status::Failed(why.clone()));
                        shared.fail(why);
                        return;
                    }
                    ConnError::Lost(why) | ConnError::UnknownReason(_, why) => {
                        if shared.is_closing() {
                            return;
                        }
                        let delay = reconnect.next_delay();
                        if started {
                            tracing::warn!(client_id = %spec.client_id, "mqtt source connection lost: {why}; reconnecting in {delay:?}");
                        } else {
                            status.send_replace(Status::Connecting(Some(why)));
                        }
                        reconnect.wait(&mut lp, &spec, delay).await;
                    }
                }
            }
        }
    }
}

impl MqttSource {
    async fn next_delivery(&mut self) -> Result<Option<Delivery>, SourceError> {
        loop {
            if self.closed {
                return Ok(None);
            }
            if *self.paused.borrow() {
                let mut rx = self.paused.subscribe();
                let _ = rx.wait_for(|p| !*p).await;
                continue;
            }
            let notified = self.shared.notify.notified();
            let next_due = match self.shared.take()? {
                Ok(r) => return Ok(Some(self.delivery(r))),
                Err(next_due) => next_due,
            };
            tokio::select! {
                () = notified => {}
                () = sleep_until(next_due) => {}
            }
        }
    }

    fn delivery(&self, r: Received) -> Delivery {
        let message = r.message.clone();
        Delivery::new(message, Box::new(state::MqttSettle::new(&self.shared, r)))
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Source for MqttSource {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Delivery>, SourceError>> {
        Box::pin(self.next_delivery())
    }

    fn try_next(&mut self) -> Option<Result<Option<Delivery>, SourceError>> {
        if self.closed || *self.paused.borrow() {
            return None;
        }
        match self.shared.take() {
            Ok(Ok(r)) => Some(Ok(Some(self.delivery(r)))),
            Ok(Err(_)) => None,
            Err(e) => Some(Err(e)),
        }
    }

    fn pause(&mut self) {
        self.paused.send_replace(true);
    }

    fn resume(&mut self) {
        self.paused.send_replace(false);
    }

    /// First call: stop handing out. Once nothing handed out is unsettled
    /// (the pipeline calls `close` again after its workers finished), the
    /// acks are flushed and the client disconnects; the session stays.
    fn close(&mut self) -> BoxFuture<'_, ()> {
        self.closed = true;
        Box::pin(async move {
            if !self.shared.begin_close() {
                return;
            }
            if let Some(task) = self.task.take() {
                // Give the event loop a moment to write the acks and the DISCONNECT.
                if tokio::time::timeout(Duration::from_secs(2), task)
                    .await
                    .is_err()
                {
                    tracing::debug!("mqtt source: event loop did not stop within 2s");
                }
            }
        })
    }
}

impl Drop for MqttSource {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
