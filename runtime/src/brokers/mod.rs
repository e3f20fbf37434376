//! What a broker technology's source and sink share: connecting, TLS, auth,
//! reconnecting with jitter, failover and header mapping. Sources and sinks
//! import from here, never from each other.

pub mod kafka;
pub mod mqtt;
pub mod nats;
