//! One MQTT connection over rumqttc, the same for 3.1.1 and 5: options from
//! the config, events normalised, the rumqttc state cleaned after a lost
//! connection, and reconnect backoff. Shared by the `mqtt` source and sink.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use rumqttc as p4;
use rumqttc::Transport;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5 as p5;

use crate::config::TlsConfig;
use crate::config::mqtt::{BrokerAddr, MqttVersion, parse_url};
use crate::config::secret::Secret;
use crate::message::Header;

/// The largest packet Sluice accepts or sends (MQTT's own limit is 256 MiB).
pub(crate) const MAX_PACKET: usize = 256 * 1024 * 1024 - 1;

/// Everything needed to (re)connect.
#[derive(Clone)]
pub(crate) struct Spec {
    pub addrs: Vec<BrokerAddr>,
    pub version: MqttVersion,
    pub client_id: String,
    pub clean_start: bool,
    /// MQTT 5 session expiry, seconds.
    pub session_expiry: Option<u32>,
    pub keep_alive: Duration,
    /// MQTT 5 Receive Maximum we announce.
    pub receive_max: Option<u16>,
    /// Outgoing QoS 1/2 window.
    pub inflight: u16,
    pub manual_acks: bool,
    pub credentials: Option<(String, String)>,
    pub tls: Option<TlsBits>,
    pub connect_timeout: Duration,
    pub reconnect_max: Duration,
    /// rumqttc's request channel capacity.
    pub channel: usize,
}

/// TLS material, read once at open.
#[derive(Clone)]
pub(crate) struct TlsBits {
    pub ca: Option<Vec<u8>>,
    pub client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

/// Broker addresses, credentials and TLS material, ready to connect.
pub(crate) type Prepared = (Vec<BrokerAddr>, Option<(String, String)>, Option<TlsBits>);

/// Parses the URLs and reads the secret and TLS files.
pub(crate) fn prepare(
    urls: &[String],
    username: &Option<String>,
    password: &Option<Secret>,
    tls: &Option<TlsConfig>,
) -> anyhow::Result<Prepared> {
    let addrs = urls
        .iter()
        .map(|u| parse_url(u).map_err(|e| anyhow::anyhow!(e)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!addrs.is_empty(), "no broker URL given");
    let credentials = match (username, password) {
        (Some(u), Some(p)) => Some((u.clone(), p.read().context("reading the MQTT password")?)),
        (Some(u), None) => Some((u.clone(), String::new())),
        (None, _) => None,
    };
    let wants_tls = tls.is_some() || addrs.iter().any(|a| a.tls);
    let tls = if wants_tls {
        let t = tls.clone().unwrap_or_default();
        let read = |p: &std::path::PathBuf| {
            std::fs::read(p).with_context(|| format!("reading TLS file {}", p.display()))
        };
        let ca = t.ca_file.as_ref().map(read).transpose()?;
        let client_auth = match (&t.cert_file, &t.key_file) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        Some(TlsBits { ca, client_auth })
    } else {
        None
    };
    Ok((addrs, credentials, tls))
}

fn transport(tls: &Option<TlsBits>) -> anyhow::Result<Transport> {
    if tls.is_some() {
        crate::crypto::init();
    }
    Ok(match tls {
        None => Transport::tcp(),
        Some(TlsBits {
            ca: Some(ca),
            client_auth,
        }) => Transport::tls(ca.clone(), client_auth.clone(), None),
        Some(TlsBits {
            ca: None,
            client_auth: None,
        }) => std::panic::catch_unwind(Transport::tls_with_default_config).map_err(|_| {
            anyhow::anyhow!("cannot load the system's root certificates; give tls.ca_file")
        })?,
        Some(TlsBits {
            ca: None,
            client_auth: Some(_),
        }) => {
            anyhow::bail!("a TLS client certificate needs tls.ca_file too")
        }
    })
}

/// A client handle (cheap to clone) of either version.
#[derive(Clone)]
pub(crate) enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The event loop of either version.
pub(crate) enum Loop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// Creates the client and its event loop for `spec.addrs[index]`.
pub(crate) fn create(spec: &Spec, index: usize) -> anyhow::Result<(Client, Loop)> {
    Ok(match spec.version {
        MqttVersion::V311 => {
            let (c, mut l) = rumqttc::AsyncClient::new(options4(spec, index)?, spec.channel);
            l.network_options
                .set_connection_timeout(spec.connect_timeout.as_secs().max(1));
            (Client::V4(c), Loop::V4(Box::new(l)))
        }
        MqttVersion::V5 => {
            let (c, l) = rumqttc::v5::AsyncClient::new(options5(spec, index)?, spec.channel);
            (Client::V5(c), Loop::V5(Box::new(l)))
        }
    })
}

fn options4(spec: &Spec, index: usize) -> anyhow::Result<rumqttc::MqttOptions> {
    let a = &spec.addrs[index % spec.addrs.len()];
    let mut o = rumqttc::MqttOptions::new(spec.client_id.clone(), a.host.clone(), a.port);
    o.set_keep_alive(spec.keep_alive)
        .set_clean_session(spec.clean_start)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_request_channel_capacity(spec.channel)
        .set_inflight(spec.inflight.max(1))
        .set_manual_acks(spec.manual_acks)
        .set_transport(transport(&spec.tls)?);
    if let Some((u, p)) = &spec.credentials {
        o.set_credentials(u.clone(), p.clone());
    }
    Ok(o)
}

fn options5(spec: &Spec, index: usize) -> anyhow::Result<rumqttc::v5::MqttOptions> {
    let a = &spec.addrs[index % spec.addrs.len()];
    let mut o = rumqttc::v5::MqttOptions::new(spec.client_id.clone(), a.host.clone(), a.port);
    o.set_keep_alive(spec.keep_alive)
        .set_clean_start(spec.clean_start)
        .set_max_packet_size(Some(MAX_PACKET as u32))
        .set_request_channel_capacity(spec.channel)
        .set_outgoing_inflight_upper_limit(spec.inflight.max(1))
        .set_manual_acks(spec.manual_acks)
        .set_connection_timeout(spec.connect_timeout.as_secs().max(1))
        .set_transport(transport(&spec.tls)?);
    o.set_receive_maximum(spec.receive_max);
    o.set_session_expiry_interval(spec.session_expiry);
    if let Some((u, p)) = &spec.credentials {
        o.set_credentials(u.clone(), p.clone());
    }
    Ok(o)
}

/// A received PUBLISH.
#[derive(Debug, Clone)]
pub(crate) struct InPublish {
    pub topic: String,
    pub qos: u8,
    pub pkid: u16,
    pub payload: Bytes,
    pub headers: Vec<Header>,
}

/// Which acknowledgement arrived for an outgoing publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckKind {
    /// PUBACK (QoS 1).
    Ack,
    /// PUBREC (QoS 2, first half).
    Rec,
    /// PUBCOMP (QoS 2, done).
    Comp,
}

/// A normalised rumqttc event.
#[derive(Debug)]
pub(crate) enum Ev {
    ConnAck {
        session_present: bool,
        /// The broker's Maximum Packet Size (MQTT 5).
        max_packet: Option<u32>,
    },
    Publish(InPublish),
    /// A PUBACK/PUBREC/PUBCOMP for one of our publishes; `error` holds the
    /// MQTT 5 reason code and text when it is a refusal.
    Ack {
        kind: AckKind,
        pkid: u16,
        error: Option<(u8, String)>,
    },
    /// rumqttc wrote one of our publishes (pkid 0 for QoS 0).
    Sent(u16),
    /// A publish waits for its packet id to be freed (out-of-order acks).
    AwaitAck(u16),
    /// The broker released a received QoS 2 message (PUBREL); the client
    /// answers it with PUBCOMP.
    Released(u16),
    SubAck {
        failures: Vec<String>,
    },
    Other,
}

/// Why the connection failed.
#[derive(Debug)]
pub(crate) enum ConnError {
    /// The broker refused the credentials or the client: retrying will not help.
    Refused(String),
    /// Anything else: reconnect.
    Lost(String),
    /// The broker answered with a reason code rumqttc cannot parse (0x95
    /// packet too large, what Mosquitto 2.0 sends for `message_size_limit`);
    /// rumqttc drops the connection. The refused publish is the oldest
    /// unacknowledged one when the broker answers in order (Mosquitto does).
    UnknownReason(u8, String),
}

fn refused4(code: p4::ConnectReturnCode) -> ConnError {
    use p4::ConnectReturnCode as C;
    match code {
        C::BadUserNamePassword => ConnError::Refused(
            "the broker refused the user name or password (CONNACK: bad user name or password)"
                .into(),
        ),
        C::NotAuthorized => ConnError::Refused(
            "the broker refused the connection (CONNACK: not authorized); check username/password"
                .into(),
        ),
        C::BadClientId => ConnError::Refused(
            "the broker refused the client_id (CONNACK: identifier rejected)".into(),
        ),
        C::RefusedProtocolVersion => ConnError::Refused(
            "the broker does not speak MQTT 3.1.1 (CONNACK: unacceptable protocol version)".into(),
        ),
        other => ConnError::Lost(format!("the broker refused the connection: {other:?}")),
    }
}

fn refused5(code: p5::ConnectReturnCode) -> ConnError {
    use p5::ConnectReturnCode as C;
    let permanent = matches!(
        code,
        C::BadUserNamePassword
            | C::NotAuthorized
            | C::BadClientId
            | C::ClientIdentifierNotValid
            | C::Banned
            | C::BadAuthenticationMethod
            | C::RefusedProtocolVersion
            | C::UnsupportedProtocolVersion
    );
    let what = match code {
        C::BadUserNamePassword => "bad user name or password".to_string(),
        C::NotAuthorized => "not authorized; check username/password".to_string(),
        other => format!("{other:?}"),
    };
    let msg = format!("the broker refused the connection (CONNACK: {what})");
    if permanent {
        ConnError::Refused(msg)
    } else {
        ConnError::Lost(msg)
    }
}

fn err4(e: rumqttc::ConnectionError) -> ConnError {
    match e {
        rumqttc::ConnectionError::ConnectionRefused(code) => refused4(code),
        e => ConnError::Lost(e.to_string()),
    }
}

fn err5(e: rumqttc::v5::ConnectionError) -> ConnError {
    use rumqttc::v5::{ConnectionError as E, StateError as S};
    match e {
        E::ConnectionRefused(code) => refused5(code),
        E::MqttState(S::ConnFail { reason }) => refused5(reason),
        E::MqttState(S::Deserialization(
            rumqttc::v5::mqttbytes::Error::InvalidConnectReturnCode(code),
        )) if code >= 0x80 => ConnError::UnknownReason(code, format!("reason code 0x{code:02x}")),
        e => ConnError::Lost(e.to_string()),
    }
}

fn qos_num4(q: rumqttc::QoS) -> u8 {
    q as u8
}

fn qos_num5(q: QoS5) -> u8 {
    q as u8
}

/// QoS from a number (0, 1, 2; anything else is 1).
pub(crate) fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        2 => rumqttc::QoS::ExactlyOnce,
        _ => rumqttc::QoS::AtLeastOnce,
    }
}

pub(crate) fn qos5(q: u8) -> QoS5 {
    match q {
        0 => QoS5::AtMostOnce,
        2 => QoS5::ExactlyOnce,
        _ => QoS5::AtLeastOnce,
    }
}

fn reason_text(props: Option<String>) -> String {
    props.map(|r| format!(": {r}")).unwrap_or_default()
}

impl Loop {
    /// Polls once: the next event, or the reason the connection failed.
    pub(crate) async fn poll(&mut self) -> Result<Ev, ConnError> {
        match self {
            Loop::V4(l) => l.poll().await.map(ev4).map_err(err4),
            Loop::V5(l) => l.poll().await.map(ev5).map_err(err5),
        }
    }

    /// After a failed poll: forgets everything rumqttc would otherwise replay
    /// on the next connection (unsent requests, retransmissions, buffered
    /// events). The caller fails or re-queues what it was tracking, so a stale
    /// packet id can never be matched with a newer message. `keep` decides
    /// which queued requests survive (none for acks and publishes).
    pub(crate) fn forget(&mut self) {
        match self {
            Loop::V4(l) => {
                l.clean();
                l.pending.retain(|r| {
                    matches!(
                        r,
                        rumqttc::Request::Subscribe(_) | rumqttc::Request::Unsubscribe(_)
                    )
                });
                l.state.events.clear();
            }
            Loop::V5(l) => {
                l.clean();
                l.pending.retain(|r| {
                    matches!(
                        r,
                        rumqttc::v5::Request::Subscribe(_) | rumqttc::v5::Request::Unsubscribe(_)
                    )
                });
                l.state.events.clear();
            }
        }
    }

    /// Points the next connection attempt at `spec.addrs[index]` (failover).
    pub(crate) fn retarget(&mut self, spec: &Spec, index: usize) -> anyhow::Result<()> {
        match self {
            Loop::V4(l) => l.mqtt_options = options4(spec, index)?,
            Loop::V5(l) => l.options = options5(spec, index)?,
        }
        Ok(())
    }
}

fn ev4(e: rumqttc::Event) -> Ev {
    use rumqttc::{Event, Outgoing, Packet};
    match e {
        Event::Incoming(Packet::ConnAck(c)) => Ev::ConnAck {
            session_present: c.session_present,
            max_packet: None,
        },
        Event::Incoming(Packet::Publish(p)) => Ev::Publish(InPublish {
            topic: p.topic,
            qos: qos_num4(p.qos),
            pkid: p.pkid,
            payload: p.payload,
            headers: Vec::new(),
        }),
        Event::Incoming(Packet::PubAck(a)) => Ev::Ack {
            kind: AckKind::Ack,
            pkid: a.pkid,
            error: None,
        },
        Event::Incoming(Packet::PubRec(a)) => Ev::Ack {
            kind: AckKind::Rec,
            pkid: a.pkid,
            error: None,
        },
        Event::Incoming(Packet::PubComp(a)) => Ev::Ack {
            kind: AckKind::Comp,
            pkid: a.pkid,
            error: None,
        },
        Event::Incoming(Packet::PubRel(r)) => Ev::Released(r.pkid),
        Event::Incoming(Packet::SubAck(s)) => Ev::SubAck {
            failures: s
                .return_codes
                .iter()
                .filter(|c| matches!(c, p4::SubscribeReasonCode::Failure))
                .map(|c| format!("{c:?}"))
                .collect(),
        },
        Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Sent(pkid),
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => Ev::AwaitAck(pkid),
        _ => Ev::Other,
    }
}

fn ev5(e: rumqttc::v5::Event) -> Ev {
    use p5::Packet;
    use rumqttc::Outgoing;
    use rumqttc::v5::Event;
    match e {
        Event::Incoming(Packet::ConnAck(c)) => Ev::ConnAck {
            session_present: c.session_present,
            max_packet: c.properties.and_then(|p| p.max_packet_size),
        },
        Event::Incoming(Packet::Publish(p)) => Ev::Publish(InPublish {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            qos: qos_num5(p.qos),
            pkid: p.pkid,
            payload: p.payload,
            headers: p
                .properties
                .map(|pr| {
                    pr.user_properties
                        .into_iter()
                        .map(|(k, v)| Header::new(k, v))
                        .collect()
                })
                .unwrap_or_default(),
        }),
        Event::Incoming(Packet::PubAck(a)) => {
            let error = match a.reason {
                p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers => None,
                r => Some((
                    puback_code(r),
                    format!(
                        "{r:?}{}",
                        reason_text(a.properties.and_then(|p| p.reason_string))
                    ),
                )),
            };
            Ev::Ack {
                kind: AckKind::Ack,
                pkid: a.pkid,
                error,
            }
        }
        Event::Incoming(Packet::PubRec(a)) => {
            let error = match a.reason {
                p5::PubRecReason::Success | p5::PubRecReason::NoMatchingSubscribers => None,
                r => Some((
                    pubrec_code(r),
                    format!(
                        "{r:?}{}",
                        reason_text(a.properties.and_then(|p| p.reason_string))
                    ),
                )),
            };
            Ev::Ack {
                kind: AckKind::Rec,
                pkid: a.pkid,
                error,
            }
        }
        Event::Incoming(Packet::PubComp(a)) => {
            let error = match a.reason {
                p5::PubCompReason::Success => None,
                r => Some((0x92, format!("{r:?}"))),
            };
            Ev::Ack {
                kind: AckKind::Comp,
                pkid: a.pkid,
                error,
            }
        }
        Event::Incoming(Packet::PubRel(r)) => Ev::Released(r.pkid),
        Event::Incoming(Packet::SubAck(s)) => Ev::SubAck {
            failures: s
                .return_codes
                .iter()
                .filter(|c| !matches!(c, p5::SubscribeReasonCode::Success(_)))
                .map(|c| format!("{c:?}"))
                .collect(),
        },
        Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Sent(pkid),
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => Ev::AwaitAck(pkid),
        _ => Ev::Other,
    }
}

fn puback_code(r: p5::PubAckReason) -> u8 {
    use p5::PubAckReason as R;
    match r {
        R::Success => 0,
        R::NoMatchingSubscribers => 0x10,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

fn pubrec_code(r: p5::PubRecReason) -> u8 {
    use p5::PubRecReason as R;
    match r {
        R::Success => 0,
        R::NoMatchingSubscribers => 0x10,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

/// Why a request could not be queued to rumqttc.
pub(crate) type QueueError = String;

impl Client {
    /// Queues the acknowledgement of a received QoS 1/2 message (PUBACK / PUBREC).
    pub(crate) fn try_ack(&self, pkid: u16, qos: u8) -> Result<(), QueueError> {
        match self {
            Client::V4(c) => {
                let mut p = rumqttc::Publish::new("", qos4(qos), Vec::new());
                p.pkid = pkid;
                c.try_ack(&p).map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                let mut p = p5::Publish::new("", qos5(qos), Bytes::new(), None);
                p.pkid = pkid;
                c.try_ack(&p).map_err(|e| e.to_string())
            }
        }
    }

    /// Queues a publish.
    pub(crate) fn try_publish(
        &self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: Bytes,
        user_properties: Vec<(String, String)>,
    ) -> Result<(), QueueError> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, qos4(qos), retain, payload.to_vec())
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                let props = (!user_properties.is_empty()).then(|| p5::PublishProperties {
                    user_properties,
                    ..Default::default()
                });
                match props {
                    Some(pr) => c
                        .try_publish_with_properties(topic, qos5(qos), retain, payload, pr)
                        .map_err(|e| e.to_string()),
                    None => c
                        .try_publish(topic, qos5(qos), retain, payload)
                        .map_err(|e| e.to_string()),
                }
            }
        }
    }

    /// Queues a SUBSCRIBE for every filter.
    pub(crate) fn try_subscribe(&self, filters: &[String], qos: u8) -> Result<(), QueueError> {
        match self {
            Client::V4(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos4(qos))),
                )
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| p5::Filter::new(f.clone(), qos5(qos))),
                )
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues a DISCONNECT.
    pub(crate) fn try_disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

/// How long start-up waits for the first connection: one `connect_timeout`
/// for each broker address, tried in order, and the longest reconnect pause
/// before each, so a primary that does not answer (it accepts connections
/// but never acknowledges them) leaves time for the standby.
pub(crate) fn startup_budget(spec: &Spec) -> Duration {
    let pauses: Duration = (0..spec.addrs.len())
        .map(|i| {
            Duration::from_millis(100)
                .saturating_mul(1u32 << i.min(20))
                .min(spec.reconnect_max)
        })
        .sum();
    spec.connect_timeout
        .saturating_mul(u32::try_from(spec.addrs.len()).unwrap_or(u32::MAX))
        .saturating_add(pauses)
}

/// Capped exponential backoff with full jitter, from 100 ms.
pub(crate) struct Backoff {
    failures: u32,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Self {
        Backoff { failures: 0, max }
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The pause before the next attempt: a random time up to
    /// `min(max, 100ms * 2^failures)`, at least 50 ms.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let cap = Duration::from_millis(100)
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        crate::policy::backoff::between(Duration::from_millis(50), cap)
    }
}

/// What the source's and the sink's event loops do between two
/// connections: back off (from scratch after a CONNACK), then point the next
/// attempt at the next broker address when there are several.
pub(crate) struct Reconnect {
    backoff: Backoff,
    index: usize,
}

impl Reconnect {
    pub(crate) fn new(spec: &Spec) -> Self {
        Reconnect {
            backoff: Backoff::new(spec.reconnect_max),
            index: 0,
        }
    }

    /// A connection was made: the next loss backs off from the start.
    pub(crate) fn connected(&mut self) {
        self.backoff.reset();
    }

    /// The broker address (its place in `spec.addrs`) the event loop
    /// connects to.
    pub(crate) fn address(&self) -> usize {
        self.index
    }

    /// The pause before the next attempt, for the log line that announces it.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.backoff.next_delay()
    }

    /// Sleeps `delay`, then moves `lp` on to the next address.
    pub(crate) async fn wait(&mut self, lp: &mut Loop, spec: &Spec, delay: Duration) {
        tokio::time::sleep(delay).await;
        if spec.addrs.len() > 1 {
            self.index = (self.index + 1) % spec.addrs.len();
            if let Err(e) = lp.retarget(spec, self.index) {
                tracing::error!("mqtt: {e:#}");
            }
        }
    }
}

/// A client id allowed by every broker: `[0-9A-Za-z_-]`, other characters as `-`.
pub(crate) fn sanitize_client_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// This machine's host name, when it can be read.
pub(crate) fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_secs(1));
        for _ in 0..30 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    /// Start-up waits one `connect_timeout` per address and the longest
    /// reconnect pause before each (100 ms, 200 ms, ... up to `reconnect_max`).
    #[test]
    fn startup_waits_for_every_address() {
        let addr = |port| BrokerAddr {
            host: "127.0.0.1".into(),
            port,
            tls: false,
        };
        let mut spec = Spec {
            addrs: vec![addr(1)],
            version: MqttVersion::V5,
            client_id: "c".into(),
            clean_start: true,
            session_expiry: None,
            keep_alive: Duration::from_secs(30),
            receive_max: None,
            inflight: 1,
            manual_acks: false,
            credentials: None,
            tls: None,
            connect_timeout: Duration::from_secs(2),
            reconnect_max: Duration::from_millis(150),
            channel: 1,
        };
        assert_eq!(startup_budget(&spec), Duration::from_millis(2100));
        spec.addrs.push(addr(2));
        spec.addrs.push(addr(3));
        assert_eq!(startup_budget(&spec), Duration::from_millis(6400));
    }

    #[test]
    fn client_ids_are_sanitized() {
        assert_eq!(
            sanitize_client_id("sluice-iot alerts/1"),
            "sluice-iot-alerts-1"
        );
    }
}
