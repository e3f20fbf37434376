//! Connecting to NATS for every `nats` and `jetstream` source and sink: auth,
//! TLS, failover URLs, reconnect backoff with jitter, a bounded first attempt
//! that turns refused credentials into a clear error, and the header mapping.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event, HeaderMap, ServerAddr};
use bytes::Bytes;

use crate::config::nats::NatsConnection;
use crate::message::Header;

/// The header that carries a record's key (NATS messages have none) when the
/// key is printable text.
pub const KEY_HEADER: &str = "sluice-key";
/// The header that carries a key that is not printable text, base64-encoded.
pub const KEY_B64_HEADER: &str = "sluice-key-base64";

/// Counters a connection keeps from the client's events.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Slow-consumer events the client reported (its subscription buffer was full).
    pub slow_consumer: AtomicU64,
    pub disconnects: AtomicU64,
}

/// Connects to the servers `conn` names. Fails within about
/// `connect_timeout` per server when none accepts, and at once when the
/// server refuses the credentials; afterwards the client reconnects by itself
/// with capped, jittered backoff.
pub async fn connect(
    conn: &NatsConnection,
    pipeline: &str,
    role: &str,
    subscription_capacity: Option<usize>,
) -> anyhow::Result<(Client, Arc<ConnStats>)> {
    let servers = conn.servers();
    let addrs: Vec<ServerAddr> = servers
        .iter()
        .map(|u| {
            u.parse::<ServerAddr>().with_context(|| {
                format!(
                    "{:?} is not a NATS server address",
                    crate::config::secret::redact_url(u)
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let shown = servers.join(", ");
    let stats = Arc::new(ConnStats::default());
    let mut opts = match (&conn.token, &conn.user, &conn.password, &conn.creds_file) {
        (Some(t), _, _, _) => ConnectOptions::with_token(t.read().context("reading `token`")?),
        (None, Some(u), Some(p), _) => ConnectOptions::with_user_and_password(
            u.clone(),
            p.read().context("reading `password`")?,
        ),
        (None, _, _, Some(path)) => ConnectOptions::with_credentials_file(path)
            .await
            .with_context(|| format!("reading `creds_file` {}", path.display()))?,
        _ => ConnectOptions::new(),
    };
    // A `tls://` URL turns TLS on without a `tls` table.
    crate::crypto::init();
    if let Some(tls) = &conn.tls {
        opts = opts.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            anyhow::ensure!(ca.exists(), "`tls.ca_file` {} does not exist", ca.display());
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
    }
    if let Some(c) = subscription_capacity {
        opts = opts.subscription_capacity(c.max(1));
    }
    let (initial, max) = (conn.reconnect_initial.0, conn.reconnect_max.0);
    let ev_stats = stats.clone();
    let name = format!("sluice:{pipeline}:{role}");
    let log_name = name.clone();
    opts = opts
        .name(&name)
        .connection_timeout(conn.connect_timeout.0)
        .ping_interval(Duration::from_secs(20))
        .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, initial, max))
        .event_callback(move |event| {
            let stats = ev_stats.clone();
            let name = log_name.clone();
            async move {
                match event {
                    Event::Connected => tracing::info!(client = %name, "NATS connected"),
                    Event::Disconnected => {
                        stats.disconnects.fetch_add(1, Relaxed);
                        tracing::warn!(client = %name, "NATS disconnected; reconnecting");
                    }
                    Event::SlowConsumer(sid) => {
                        let n = stats.slow_consumer.fetch_add(1, Relaxed) + 1;
                        if n.is_power_of_two() {
                            tracing::warn!(client = %name, sid, total = n,
                                "NATS slow consumer: the client dropped messages");
                        }
                    }
                    Event::LameDuckMode => {
                        tracing::warn!(client = %name, "NATS server entering lame duck mode")
                    }
                    other => tracing::warn!(client = %name, "NATS: {other}"),
                }
            }
        });
    // Every server gets one connection attempt; bound the whole first try.
    let budget = conn.connect_timeout.0 * (addrs.len() as u32) + Duration::from_secs(1);
    let client = match tokio::time::timeout(budget, opts.connect(addrs)).await {
        Err(_) => anyhow::bail!("connecting to NATS at {shown}: no answer within {budget:?}"),
        Ok(Err(e)) => {
            let why = match e.kind() {
                ConnectErrorKind::AuthorizationViolation => {
                    "the server refused the credentials (authorization violation): check \
                     `token`, `user`/`password` or `creds_file`"
                        .to_string()
                }
                ConnectErrorKind::Authentication => {
                    format!("authentication failed (signing the server's nonce): {e}")
                }
                ConnectErrorKind::Tls => format!("TLS failed: {e}"),
                ConnectErrorKind::TimedOut => format!("timed out: {e}"),
                _ => e.to_string(),
            };
            anyhow::bail!("connecting to NATS at {shown}: {why}");
        }
        Ok(Ok(c)) => c,
    };
    Ok((client, stats))
}

/// Delay before reconnect attempt `attempts`: doubling from `initial`, capped
/// at `max`, with "equal" jitter (half fixed, half random) so instances spread out.
pub fn reconnect_delay(attempts: usize, initial: Duration, max: Duration) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO.max(initial.min(max) / 2);
    }
    let exp = (attempts - 1).min(32) as i32;
    let base = initial.as_secs_f64() * 2f64.powi(exp);
    let base = Duration::try_from_secs_f64(base.min(max.as_secs_f64())).unwrap_or(max);
    crate::policy::backoff::equal_jitter(base)
}

/// Our headers (plus the record key) as NATS headers. NATS headers are text:
/// bytes that are not UTF-8 are replaced, line breaks become spaces.
pub fn to_nats_headers(headers: &[Header], key: Option<&Bytes>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for h in headers {
        // A name NATS cannot carry is left out (the sinks refuse such an
        // output before sending: `nats_header_problem`); `append` with a
        // `&str` would panic on it.
        let Ok(name) = async_nats::HeaderName::from_str(&h.key) else {
            continue;
        };
        if h.key.is_empty() {
            continue;
        }
        map.append(name, header_text(&h.value));
    }
    if let Some(k) = key {
        match std::str::from_utf8(k) {
            Ok(s) if !s.contains(['\r', '\n']) && s.trim() == s && !s.is_empty() => {
                map.insert(KEY_HEADER, s)
            }
            _ => {
                use base64::Engine as _;
                let b = base64::engine::general_purpose::STANDARD.encode(k);
                map.insert(KEY_B64_HEADER, b)
            }
        }
    }
    map
}

/// A header value as NATS can carry it.
pub fn header_text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).replace(['\r', '\n'], " ")
}

/// Why the client could not read a message (a subject that is not UTF-8, a
/// header block it cannot parse), or `None` for a message read whole. The
/// client delivers such a message without headers and without a status, its
/// description naming the fault (see `vendor/async-nats/SLUICE.md`); the
/// pipeline routes it as `decode`.
pub fn unreadable(m: &async_nats::Message) -> Option<String> {
    match (&m.status, &m.description) {
        (None, Some(why)) => Some(why.clone()),
        _ => None,
    }
}

/// NATS headers as ours, and the key the `sluice-key*` headers carry.
pub fn from_nats_headers(map: Option<&HeaderMap>) -> (Vec<Header>, Option<Bytes>) {
    let Some(map) = map else {
        return (Vec::new(), None);
    };
    let mut headers = Vec::with_capacity(map.len());
    let mut key = None;
    for (name, values) in map.iter() {
        let name: &str = name.as_ref();
        for v in values {
            if name.eq_ignore_ascii_case(KEY_HEADER) {
                key = Some(Bytes::copy_from_slice(v.as_str().as_bytes()));
            } else if name.eq_ignore_ascii_case(KEY_B64_HEADER) {
                use base64::Engine as _;
                match base64::engine::general_purpose::STANDARD.decode(v.as_str()) {
                    Ok(k) => key = Some(Bytes::from(k)),
                    Err(_) => headers.push(Header::new(name, v.as_str().to_string())),
                }
            } else {
                headers.push(Header::new(name, v.as_str().to_string()));
            }
        }
    }
    // HeaderMap does not keep the order of names: make it deterministic.
    headers.sort_by(|a, b| a.key.cmp(&b.key));
    (headers, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(2));
        for a in 2..40 {
            let d = reconnect_delay(a, i, m);
            let exp = (a - 1).min(32) as i32;
            let base = Duration::from_secs_f64((0.1 * 2f64.powi(exp)).min(2.0));
            assert!(d >= base / 2 && d <= base, "attempt {a}: {d:?} vs {base:?}");
        }
        assert!(reconnect_delay(1, i, m) <= i);
    }

    #[test]
    fn headers_round_trip_with_keys() {
        let hs = vec![Header::new("a", "1"), Header::new("b", "x\ny")];
        let map = to_nats_headers(&hs, Some(&Bytes::from_static(b"k1")));
        let (back, key) = from_nats_headers(Some(&map));
        assert_eq!(back, vec![Header::new("a", "1"), Header::new("b", "x y")]);
        assert_eq!(key.as_deref(), Some(&b"k1"[..]));
        let map = to_nats_headers(&[], Some(&Bytes::from_static(b"\xff\x00")));
        let (_, key) = from_nats_headers(Some(&map));
        assert_eq!(key.as_deref(), Some(&b"\xff\x00"[..]));
    }
}
