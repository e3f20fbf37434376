//! An in-memory sink that counts what it accepts (and keeps it when asked).
//! For benchmarks and tests.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use futures::future::BoxFuture;

use super::{Accepted, Record, Sink, done};
use crate::failure::Failure;

/// Accepts everything.
#[derive(Debug, Default)]
pub struct MemorySink {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    keep: bool,
    kept: Mutex<Vec<Record>>,
}

impl MemorySink {
    /// A sink that only counts.
    pub fn counting() -> Self {
        MemorySink::default()
    }

    /// A sink that keeps every record.
    pub fn keeping() -> Self {
        MemorySink {
            keep: true,
            ..Default::default()
        }
    }

    /// The records kept so far.
    pub fn kept(&self) -> Vec<Record> {
        self.kept.lock().map(|k| k.clone()).unwrap_or_default()
    }
}

impl Sink for MemorySink {
    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Accepted, Failure>> {
        self.records.fetch_add(records.len() as u64, Relaxed);
        let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
        self.bytes.fetch_add(bytes as u64, Relaxed);
        if self.keep
            && let Ok(mut k) = self.kept.lock()
        {
            k.extend_from_slice(records);
        }
        Box::pin(async { Ok(done()) })
    }
}
