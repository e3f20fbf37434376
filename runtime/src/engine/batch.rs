//! A batch as `handle-batch` (world `batch-handler`) takes it: five flat
//! lists (see `columns.batch` in `handler.wit`) in buffers the instance
//! reuses from batch to batch. (`call.rs` makes the call; each answer comes
//! back through `columns.answer`, `host/columns.rs`.)

use crate::message::Message;

/// A batch as the guest gets it: the host's buffers, reused from batch to
/// batch (see `columns.batch` in `handler.wit`).
#[derive(Default)]
pub(crate) struct Columns {
    pub(super) bytes: Vec<u8>,
    pub(super) ends: Vec<u32>,
    pub(super) shapes: Vec<u32>,
    pub(super) timestamps: Vec<u64>,
    pub(super) attempts: Vec<u32>,
}

/// Bytes of a batch's buffer kept for the next batch; a larger one (a batch
/// of large messages) is freed after its call.
const KEEP_BYTES: usize = 1 << 20;

impl Columns {
    /// Lays `msgs` out as columns. `None` when they do not fit the format
    /// (4 GiB of bytes, or 2^30 headers to one message): they then go one
    /// per call.
    pub(super) fn fill(&mut self, msgs: &[&Message]) -> Option<()> {
        self.bytes.clear();
        self.ends.clear();
        self.shapes.clear();
        self.timestamps.clear();
        self.attempts.clear();
        for m in msgs {
            self.field(m.topic.as_bytes())?;
            self.field(m.key.as_deref().unwrap_or_default())?;
            self.field(&m.payload)?;
            for h in &m.headers {
                self.field(h.key.as_bytes())?;
                self.field(&h.value)?;
            }
            let headers = u32::try_from(m.headers.len())
                .ok()
                .filter(|&n| n <= u32::MAX >> 2)?;
            self.shapes.push(
                headers << 2
                    | u32::from(m.timestamp_ms.is_some()) << 1
                    | u32::from(m.key.is_some()),
            );
            self.timestamps.push(m.timestamp_ms.unwrap_or(0));
            self.attempts.push(m.attempt);
        }
        Some(())
    }

    fn field(&mut self, bytes: &[u8]) -> Option<()> {
        self.bytes.extend_from_slice(bytes);
        self.ends.push(u32::try_from(self.bytes.len()).ok()?);
        Some(())
    }

    /// Frees a buffer that grew past what is worth keeping.
    pub(super) fn trim(&mut self) {
        if self.bytes.capacity() > KEEP_BYTES {
            self.bytes = Vec::new();
        }
        if self.ends.capacity() > KEEP_BYTES / 4 {
            self.ends = Vec::new();
        }
    }
}
