//! What a handler may ask of the host: `log` and a small bounded key/value
//! store. WASI is linked but grants nothing: no files, env, network or stdio
//! (stdout and stderr are discarded; a guest that fills a captured pipe
//! could otherwise turn a harmless `eprintln!` into a panic). A WASI sleep or
//! poll is allowed but counts toward the call's deadline.
//!
//! Every text a guest hands the host that may reach the log (log lines,
//! error texts, panic messages) goes through [`guest_text`]: control
//! characters escaped, so no guest line can pass for one of Sluice's, and
//! the length bounded. Log lines have a byte budget per message; lines past
//! it are dropped and counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{Level, sluice};
use super::limits::{Deadline, Limiter};

/// Longest guest log line, error text or panic message kept, in bytes after
/// escaping; longer ones are cut and say how much was cut.
pub const GUEST_TEXT_MAX: usize = 2048;

/// Bytes of log lines a handler may write per message (or per `init`);
/// lines past it are dropped and counted (`sluice_guest_log_dropped_total`).
pub const LOG_BUDGET: usize = 16 * 1024;

/// Bytes each log line counts against [`LOG_BUDGET`] beyond its own, so
/// that empty lines are not free (at most 256 lines a message).
pub const LOG_LINE_OVERHEAD: usize = 64;

/// Most random bytes one WASI call may ask for: generating them is a host
/// call that runs to its end, out of reach of the deadline.
pub const MAX_RANDOM_BYTES: u64 = 64 * 1024;

/// Most resource handles (WASI pollables, streams, ...) one instance may
/// hold at once; each pins a little host memory.
pub const MAX_HANDLES: usize = 10_000;

/// The data of one store: one handler instance.
pub struct HostState {
    /// Built on the guest's first WASI call: most handlers make none (a Rust
    /// handler's panic ends through `exit`, which needs no context), and
    /// building one (clocks, random sources) was ~5% of an instantiation.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    kv: Arc<Mutex<KvStore>>,
    pipeline: Arc<str>,
    /// The last error-level line the guest logged during the current call
    /// (the Rust SDK logs panic messages this way), for failure messages.
    pub(crate) last_error: Option<String>,
    /// Set while a `handle-batch` call runs.
    pub(crate) batch: Option<super::batch::BatchCall>,
    /// The current message's wall-clock deadline, also read by the watchdog.
    pub(crate) deadline: Arc<Deadline>,
    /// Log bytes written for the current message.
    pub(crate) log_used: usize,
    /// Log lines dropped for the current message (past [`LOG_BUDGET`]).
    pub(crate) log_dropped: u32,
}

impl HostState {
    pub fn new(pipeline: Arc<str>, kv: Arc<Mutex<KvStore>>, limiter: Limiter) -> Self {
        HostState {
            wasi: None,
            table: ResourceTable::new(),
            limiter,
            kv,
            pipeline,
            last_error: None,
            batch: None,
            deadline: Arc::new(Deadline::new()),
            log_used: 0,
            log_dropped: 0,
        }
    }

    /// Starts the budgets of the next message's log.
    pub(crate) fn reset_log(&mut self) {
        self.last_error = None;
        self.log_used = 0;
        self.log_dropped = 0;
    }

    /// The last error the guest logged during this call (e.g. a Rust panic message).
    pub fn stderr_text(&self) -> String {
        self.last_error.clone().unwrap_or_default()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(sealed_wasi),
            table: &mut self.table,
        }
    }
}

/// The WASI a handler gets: no preopens, no env, no args, no network, no
/// inherited stdio.
fn sealed_wasi() -> WasiCtx {
    wasmtime_wasi::WasiCtxBuilder::new()
        .max_random_size(MAX_RANDOM_BYTES)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// WASI `exit`, the way a Rust handler's panic ends its instance (see the
/// SDK's panic hook): the same `I32Exit` as wasmtime-wasi's, linked over it
/// so that a poison message does not build the WASI context just to leave.
impl wasmtime_wasi::p2::bindings::cli::exit::Host for HostState {
    fn exit(&mut self, status: Result<(), ()>) -> wasmtime::Result<()> {
        Err(wasmtime::format_err!(wasmtime_wasi::I32Exit(i32::from(
            status.is_err()
        ))))
    }

    fn exit_with_code(&mut self, status_code: u8) -> wasmtime::Result<()> {
        Err(wasmtime::format_err!(wasmtime_wasi::I32Exit(
            status_code.into()
        )))
    }
}

impl sluice::handler::types::Host for HostState {}

impl sluice::handler::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let message = guest_text(&message);
        let pipeline = &*self.pipeline;
        let cost = message.len() + LOG_LINE_OVERHEAD;
        let over = self.log_used + cost > LOG_BUDGET;
        if over {
            if self.log_dropped == 0 {
                tracing::warn!(target: "sluice::guest", pipeline, "the handler logged more than {LOG_BUDGET} bytes for one message; its further lines for this message are dropped");
            }
            self.log_dropped = self.log_dropped.saturating_add(1);
        } else {
            self.log_used += cost;
            match level {
                Level::Trace => tracing::trace!(target: "sluice::guest", pipeline, "{message}"),
                Level::Debug => tracing::debug!(target: "sluice::guest", pipeline, "{message}"),
                Level::Info => tracing::info!(target: "sluice::guest", pipeline, "{message}"),
                Level::Warn => tracing::warn!(target: "sluice::guest", pipeline, "{message}"),
                Level::Error => tracing::error!(target: "sluice::guest", pipeline, "{message}"),
            }
        }
        // A panic message reaches the failure even past the log budget.
        if level == Level::Error {
            self.last_error = Some(message);
        }
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.kv.lock().ok()?.get(&key, Instant::now())
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) {
        if let Ok(mut kv) = self.kv.lock() {
            kv.set(
                key,
                value,
                ttl_ms.map(Duration::from_millis),
                Instant::now(),
            );
        }
    }
}

/// A guest's text as the host shows it: control characters (line breaks,
/// escape sequences) escaped as `\n`, `\u{1b}`..., so it stays one line of
/// the log that cannot pass for another; cut to [`GUEST_TEXT_MAX`] bytes.
pub fn guest_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(GUEST_TEXT_MAX));
    for (i, c) in text.char_indices() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > GUEST_TEXT_MAX {
            out.truncate(before);
            out.push_str(&format!("… ({} more bytes cut)", text.len() - i));
            break;
        }
    }
    out
}

/// A plugin's key/value store: shared by all instances of one pipeline's
/// handler and kept across instance recycling. Bounded in entries and bytes;
/// past a bound the least recently written entries are evicted.
#[derive(Debug)]
pub struct KvStore {
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    seq: u64,
    entries: HashMap<String, KvEntry>,
    /// Write order, oldest first: `seq → key`.
    order: BTreeMap<u64, String>,
}

#[derive(Debug)]
struct KvEntry {
    value: Vec<u8>,
    expires: Option<Instant>,
    seq: u64,
}

impl KvStore {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        KvStore {
            max_entries,
            max_bytes,
            bytes: 0,
            seq: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&mut self, key: &str, now: Instant) -> Option<Vec<u8>> {
        let expired = match self.entries.get(key) {
            None => return None,
            Some(e) => e.expires.is_some_and(|t| t <= now),
        };
        if expired {
            self.remove(key);
            return None;
        }
        self.entries.get(key).map(|e| e.value.clone())
    }

    pub fn set(&mut self, key: String, value: Vec<u8>, ttl: Option<Duration>, now: Instant) {
        self.remove(&key);
        let size = key.len() + value.len();
        if size > self.max_bytes || self.max_entries == 0 {
            return;
        }
        while self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= oldest.len() + e.value.len();
            }
        }
        self.seq += 1;
        self.order.insert(self.seq, key.clone());
        self.bytes += size;
        self.entries.insert(
            key,
            KvEntry {
                value,
                // A ttl too long to represent never expires (a guest may pass u64::MAX ms).
                expires: ttl.and_then(|t| now.checked_add(t)),
                seq: self.seq,
            },
        );
    }

    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.order.remove(&e.seq);
            self.bytes -= key.len() + e.value.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_is_one_bounded_line() {
        assert_eq!(guest_text("plain"), "plain");
        assert_eq!(
            guest_text("a\n2026-01-01 ERROR sluice: forged\r\u{1b}[31m"),
            "a\\n2026-01-01 ERROR sluice: forged\\r\\u{1b}[31m"
        );
        let long = "é".repeat(GUEST_TEXT_MAX);
        let cut = guest_text(&long);
        assert!(cut.len() <= GUEST_TEXT_MAX + 40, "{}", cut.len());
        assert!(
            cut.ends_with(&format!("({} more bytes cut)", long.len() - GUEST_TEXT_MAX)),
            "{cut}"
        );
        assert!(!guest_text(&"\n".repeat(5000)).contains('\n'));
    }

    #[test]
    fn kv_is_bounded_and_expires() {
        let now = Instant::now();
        let mut kv = KvStore::new(2, 1024);
        kv.set("a".into(), b"1".to_vec(), None, now);
        kv.set("b".into(), b"2".to_vec(), None, now);
        kv.set("c".into(), b"3".to_vec(), None, now);
        assert_eq!(kv.len(), 2);
        assert_eq!(kv.get("a", now), None, "oldest evicted");
        assert_eq!(kv.get("c", now), Some(b"3".to_vec()));
        kv.set(
            "t".into(),
            b"x".to_vec(),
            Some(Duration::from_millis(10)),
            now,
        );
        assert_eq!(kv.get("t", now), Some(b"x".to_vec()));
        assert_eq!(kv.get("t", now + Duration::from_millis(11)), None);

        let mut kv = KvStore::new(100, 10);
        kv.set("k".into(), vec![0; 20], None, now);
        assert!(kv.is_empty(), "an entry larger than the store is refused");
        kv.set("k1".into(), vec![0; 4], None, now);
        kv.set("k2".into(), vec![0; 4], None, now);
        assert_eq!(kv.len(), 1, "bytes bound evicts the oldest");
        assert_eq!(kv.bytes, 6);
    }
}
