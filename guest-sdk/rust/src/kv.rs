//! The plugin's small key/value store on the host: bounded, oldest entries evicted first,
//! so treat every value as a cache that may vanish.
use std::time::Duration;

/// Reads the value stored under `key`, if any (and not expired or evicted).
pub fn get(key: &str) -> Option<Vec<u8>> {
    imp::get(key)
}

/// Stores `value` under `key` with no time to live.
pub fn set(key: &str, value: impl AsRef<[u8]>) {
    imp::set(key, value.as_ref(), None)
}

/// Stores `value` under `key`; the host forgets it after `ttl` (millisecond resolution).
pub fn set_with_ttl(key: &str, value: impl AsRef<[u8]>, ttl: Duration) {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    imp::set(key, value.as_ref(), Some(ms))
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::sluice::handler::host;
    pub fn get(key: &str) -> Option<Vec<u8>> {
        host::kv_get(key)
    }
    pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) {
        host::kv_set(key, value, ttl_ms)
    }
}

// Native builds (unit tests of handler logic): one in-memory map per thread, no TTL.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static STORE: RefCell<HashMap<String, Vec<u8>>> = RefCell::new(HashMap::new());
    }
    pub fn get(key: &str) -> Option<Vec<u8>> {
        STORE.with(|s| s.borrow().get(key).cloned())
    }
    pub fn set(key: &str, value: &[u8], _ttl_ms: Option<u64>) {
        STORE.with(|s| s.borrow_mut().insert(key.to_owned(), value.to_vec()));
    }
}
