//! The process's TLS crypto provider. The broker clients enable different
//! rustls back ends (async-nats `ring`, rumqttc's tokio-rustls `aws-lc-rs`);
//! with both compiled in, rustls cannot choose one by itself and the first
//! TLS handshake panics. Every TLS connection calls [`init`] before it is
//! made, so the choice is made once, here.

use std::sync::Once;

/// Installs `ring` as the process's provider, unless one is installed
/// already (a program embedding Sluice may have chosen its own).
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means a provider is installed already: that one stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
