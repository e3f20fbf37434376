//! The `mqtt` source's shared state: messages waiting to be handed out,
//! re-queued ones, the in-order acknowledgement queue of the current
//! connection, and the QoS 2 messages settled and not yet released. The
//! event-loop task and the settle handles meet here.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::brokers::mqtt::{Client, InPublish, Loop};
use crate::message::Message;
use crate::sources::delayed::Delayed;
use crate::sources::{Settle, Settlement, SourceError};

/// A message received from the broker.
pub(crate) struct Received {
    /// The connection it arrived on.
    conn: u64,
    /// Its place in the ack queue; `None` = nothing to ack (QoS 0, or its
    /// connection is gone and the session with it).
    ack: Option<AckRef>,
    /// A QoS 2 message's packet id, and the session it belongs to.
    qos2: Option<(u64, u16)>,
    pub(crate) message: Message,
}

#[derive(Clone, Copy)]
struct AckRef {
    id: u64,
    pkid: u16,
    qos: u8,
}

struct AckSlot {
    id: u64,
    pkid: u16,
    qos: u8,
    done: bool,
}

struct State {
    /// The connection counter: bumped on every lost connection.
    conn: u64,
    connected: bool,
    ready: VecDeque<Received>,
    delayed: Delayed<Received>,
    /// QoS 1/2 messages of the current connection, in receive order.
    acks: VecDeque<AckSlot>,
    next_id: u64,
    /// Deliveries handed out and not yet settled.
    outstanding: usize,
    /// The session counter: bumped by every connection that did not resume
    /// the session (its packet ids start afresh).
    session: u64,
    /// The broker address of the current session (its place in the URLs).
    address: usize,
    /// Packet ids of this session's QoS 2 messages that were settled and
    /// whose PUBREL has not come. Until it comes the broker may send the
    /// same message again (its PUBREC was lost with a connection); such a
    /// copy is acknowledged, not handled again: exactly once.
    released_pending: HashSet<u16>,
    fatal: Option<String>,
    closing: bool,
}

/// Shared between the source, its settle handles and the event-loop task.
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) client: Client,
    /// Wakes `next()`: a message arrived, one was re-queued, or a fatal error.
    pub(crate) notify: Notify,
    /// Wakes the event loop waiting for room for QoS 0 messages.
    space: Notify,
    capacity: usize,
}

impl Shared {
    pub(crate) fn new(client: Client, capacity: usize) -> Self {
        Shared {
            state: Mutex::new(State {
                conn: 0,
                connected: false,
                ready: VecDeque::new(),
                delayed: Delayed::default(),
                acks: VecDeque::new(),
                next_id: 0,
                outstanding: 0,
                session: 0,
                address: 0,
                released_pending: HashSet::new(),
                fatal: None,
                closing: false,
            }),
            client,
            notify: Notify::new(),
            space: Notify::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A CONNACK arrived. With the session resumed, the broker redelivers
    /// every unacknowledged message of earlier connections, so the copies
    /// still queued here are dropped; without one they are all we have.
    /// `address` is the broker's place in the URL list: a session found on
    /// another broker is another session, whose packet ids say nothing of
    /// this one's.
    pub(crate) fn connected(&self, session_present: bool, address: usize) {
        let mut st = self.lock();
        if st.address != address {
            st.address = address;
            st.session += 1;
            st.released_pending.clear();
        }
        st.connected = true;
        let conn = st.conn;
        let from_here = |r: &Received| r.conn == conn || r.ack.is_none();
        if session_present {
            st.ready.retain(from_here);
            st.delayed.retain(from_here);
        } else {
            st.session += 1;
            st.released_pending.clear();
        }
    }

    /// The broker released a QoS 2 message (PUBREL): its packet id may now
    /// name a new message.
    pub(crate) fn released(&self, pkid: u16) {
        self.lock().released_pending.remove(&pkid);
    }

    /// The connection failed: forget what rumqttc would replay, and the acks
    /// of this connection (their packet ids mean nothing on the next one).
    /// Under the lock, so no settlement can queue a stale ack in between.
    pub(crate) fn disconnected(&self, lp: &mut Loop) {
        let mut st = self.lock();
        st.conn += 1;
        st.connected = false;
        st.acks.clear();
        lp.forget();
        // Messages waiting here may still be needed if the next connection
        // has no session; `connected` sorts that out.
    }

    /// A PUBLISH arrived.
    pub(crate) fn received(&self, p: InPublish) {
        let mut message = Message::new(p.topic, p.payload);
        message.headers = p.headers;
        message.timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as u64);
        let mut st = self.lock();
        if st.closing {
            // Never handed out now: left unacknowledged, for the broker to
            // send again to the next session.
            return;
        }
        if p.qos == 2 && st.released_pending.contains(&p.pkid) {
            // Settled already; the broker did not get its PUBREC. Answer in
            // turn with the acks before it, and hand nothing out.
            st.next_id += 1;
            let id = st.next_id;
            st.acks.push_back(AckSlot {
                id,
                pkid: p.pkid,
                qos: 2,
                done: true,
            });
            self.flush_acks(&mut st);
            return;
        }
        let ack = (p.qos > 0).then(|| {
            st.next_id += 1;
            let a = AckRef {
                id: st.next_id,
                pkid: p.pkid,
                qos: p.qos,
            };
            st.acks.push_back(AckSlot {
                id: a.id,
                pkid: a.pkid,
                qos: a.qos,
                done: false,
            });
            a
        });
        let conn = st.conn;
        let qos2 = (p.qos == 2).then_some((st.session, p.pkid));
        st.ready.push_back(Received {
            conn,
            ack,
            qos2,
            message,
        });
        drop(st);
        self.notify.notify_one();
    }

    /// Waits until fewer than `capacity` messages wait to be handed out
    /// (after a QoS 0 message: nothing else bounds those). QoS 1/2 messages
    /// are bounded by the broker's window only: holding back the event loop
    /// would hold back the acknowledgements too, since rumqttc writes them
    /// from the same poll that reads.
    pub(crate) async fn wait_for_room(&self) {
        let limit = self.capacity;
        loop {
            let n = self.space.notified();
            let room = {
                let st = self.lock();
                // Closing: read on, to write the acks and the DISCONNECT.
                st.ready.len() < limit || st.closing
            };
            if room {
                return;
            }
            n.await;
        }
    }

    /// The source cannot go on (refused credentials or subscription).
    pub(crate) fn fail(&self, why: String) {
        self.lock().fatal = Some(why);
        self.notify.notify_one();
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.lock().closing
    }

    /// Marks the source closing; true (and a DISCONNECT queued after the
    /// acks) once no delivery is unsettled.
    pub(crate) fn begin_close(&self) -> bool {
        let mut st = self.lock();
        st.closing = true;
        self.space.notify_one();
        if st.outstanding > 0 {
            return false;
        }
        if st.connected {
            self.client.try_disconnect();
        }
        true
    }

    /// The next message to hand out, or when the next re-queued one is due.
    pub(crate) fn take(&self) -> Result<Result<Received, Option<Instant>>, SourceError> {
        let mut st = self.lock();
        if let Some(f) = &st.fatal {
            return Err(SourceError::Fatal(f.clone()));
        }
        let now = Instant::now();
        let r = if let Some(r) = st.delayed.pop_due(now) {
            Some(r)
        } else {
            let r = st.ready.pop_front();
            if r.is_some() && st.ready.len() + 1 == self.capacity {
                self.space.notify_one();
            }
            r
        };
        match r {
            Some(mut r) => {
                if r.conn != st.conn {
                    // Its connection is gone: no ack is possible any more.
                    r.ack = None;
                }
                st.outstanding += 1;
                Ok(Ok(r))
            }
            None => Ok(Err(st.delayed.next_due())),
        }
    }

    /// Acknowledges, in receive order, every settled message at the head.
    fn settle_ack(&self, r: &Received) {
        let mut st = self.lock();
        st.outstanding = st.outstanding.saturating_sub(1);
        if let Some((session, pkid)) = r.qos2
            && session == st.session
        {
            st.released_pending.insert(pkid);
        }
        let Some(a) = r.ack else { return };
        if r.conn != st.conn {
            return;
        }
        if let Some(slot) = st.acks.iter_mut().find(|s| s.id == a.id) {
            slot.done = true;
        }
        self.flush_acks(&mut st);
    }

    /// Sends the acks at the head of the queue that are done, in order.
    fn flush_acks(&self, st: &mut State) {
        while st.acks.front().is_some_and(|s| s.done) {
            let Some(s) = st.acks.pop_front() else { break };
            if let Err(e) = self.client.try_ack(s.pkid, s.qos) {
                // The broker redelivers it after the next reconnect.
                tracing::warn!(pkid = s.pkid, "mqtt: cannot queue the ack: {e}");
            }
        }
    }

    fn requeue(&self, mut r: Received, delay: Duration) {
        let mut st = self.lock();
        st.outstanding = st.outstanding.saturating_sub(1);
        if r.conn != st.conn {
            r.ack = None;
        }
        r.message.attempt = r.message.attempt.saturating_add(1);
        st.delayed.push(Instant::now() + delay, r);
        drop(st);
        self.notify.notify_one();
    }
}

/// The settle handle of one MQTT message.
pub(crate) struct MqttSettle {
    shared: std::sync::Weak<Shared>,
    r: Option<Received>,
}

impl MqttSettle {
    pub(crate) fn new(shared: &std::sync::Arc<Shared>, r: Received) -> Self {
        MqttSettle {
            shared: std::sync::Arc::downgrade(shared),
            r: Some(r),
        }
    }
}

impl Settle for MqttSettle {
    fn settle(mut self: Box<Self>, how: Settlement) -> BoxFuture<'static, anyhow::Result<()>> {
        if let (Some(shared), Some(r)) = (self.shared.upgrade(), self.r.take()) {
            match how {
                Settlement::Ack | Settlement::Terminated => shared.settle_ack(&r),
                Settlement::Redeliver { delay } => shared.requeue(r, delay),
            }
        }
        crate::sources::settled()
    }
}

impl Drop for MqttSettle {
    fn drop(&mut self) {
        // Never settled: hand it out again.
        if let (Some(shared), Some(r)) = (self.shared.upgrade(), self.r.take()) {
            shared.requeue(r, Duration::ZERO);
        }
    }
}
