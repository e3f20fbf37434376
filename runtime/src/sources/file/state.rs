//! What the `file` source shares with its settle handles and its checkpoint
//! thread: the lines in flight, the redeliveries due, and the low-water mark.

use std::fs::File;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::checkpoint::Checkpoint;
use crate::files::SyncTarget;
use crate::sources::delayed::Delayed;
use crate::sources::low_water::LowWater;
use crate::sources::{Settle, Settlement};

/// State shared between the source, its settle handles and the checkpoint thread.
pub(super) struct Shared {
    state: Mutex<State>,
    /// Woken by every settlement (the source waits on it).
    pub(super) notify: Notify,
    /// Wakes the checkpoint thread (with `state`'s mutex).
    cp_wake: Condvar,
    checkpoint: Mutex<Option<Checkpoint>>,
    has_checkpoint: bool,
    /// Sink files to sync before the checkpoint is written.
    sync: Vec<SyncTarget>,
    /// Write the checkpoint in the settling call (`checkpoint_every = 0`).
    eager: bool,
    /// Settled lines since the last checkpoint that call for the next one at once.
    soon: usize,
}

pub(super) struct State {
    /// Start offsets of the lines handed out since the last checkpoint
    /// written, with whether each settled (a line waiting for its
    /// redelivery is not). Offsets grow in hand-out order (a start over
    /// happens with nothing in flight).
    pub(super) outstanding: LowWater<u64>,
    /// Start offset of the next line not yet handed out.
    pub(super) next_line: u64,
    pub(super) redeliveries: Delayed<Pending>,
    /// The low-water mark may have moved since the last checkpoint.
    dirty: bool,
    /// Many lines settled since the last checkpoint: write it without resting.
    urgent: bool,
    /// The source is gone: the checkpoint thread writes once more and ends.
    stop: bool,
}

/// A line waiting to be handed out again.
pub(super) struct Pending {
    pub(super) line: LineRef,
    pub(super) attempt: u32,
}

/// What it takes to hand a line out again: its offset and raw bytes.
#[derive(Clone)]
pub(super) struct LineRef {
    pub(super) start: u64,
    pub(super) bytes: Bytes,
    pub(super) overflow: u64,
}

impl State {
    /// The offset to resume at: the first unsettled line, else the next unread one.
    fn low_water(&self) -> u64 {
        self.outstanding.first_unsettled().unwrap_or(self.next_line)
    }
}

impl Shared {
    pub(super) fn new(
        start: u64,
        checkpoint: Option<Checkpoint>,
        sync: Vec<SyncTarget>,
        eager: bool,
        soon: usize,
    ) -> Self {
        Shared {
            state: Mutex::new(State {
                outstanding: LowWater::default(),
                next_line: start,
                redeliveries: Delayed::default(),
                dirty: false,
                urgent: false,
                stop: false,
            }),
            notify: Notify::new(),
            cp_wake: Condvar::new(),
            has_checkpoint: checkpoint.is_some(),
            checkpoint: Mutex::new(checkpoint),
            sync,
            eager,
            soon,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_checkpoint(&self) -> MutexGuard<'_, Option<Checkpoint>> {
        self.checkpoint.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The low-water mark may have moved: write the checkpoint now (eager)
    /// or tell the checkpoint thread (at once when `soon` lines settled
    /// since the last one). Without a checkpoint (standard input) there is
    /// nothing to write. Takes the state lock's guard.
    pub(super) fn moved(&self, mut st: MutexGuard<'_, State>) -> anyhow::Result<()> {
        if !self.has_checkpoint {
            let lwm = st.low_water();
            st.outstanding.forget_settled_before(lwm);
            return Ok(());
        }
        if self.eager {
            drop(st);
            return self.commit();
        }
        let mut wake = !st.dirty;
        st.dirty = true;
        if !st.urgent && st.outstanding.settled_front() >= self.soon {
            st.urgent = true;
            wake = true;
        }
        drop(st);
        if wake {
            self.cp_wake.notify_one();
        }
        Ok(())
    }

    /// Writes the low-water mark if it moved forward: the sinks it covers
    /// synced first, the checkpoint synced after (when there are such sinks).
    pub(super) fn commit(&self) -> anyhow::Result<()> {
        let lwm = self.lock().low_water();
        {
            let mut cp = self.lock_checkpoint();
            let Some(cp) = cp.as_mut().filter(|cp| lwm > cp.written) else {
                return Ok(());
            };
            for s in &self.sync {
                s.sync()
                    .with_context(|| format!("syncing file sink {}", s.path().display()))?;
            }
            cp.write(lwm)
                .with_context(|| format!("writing checkpoint {}", cp.path.display()))?;
            if !self.sync.is_empty() {
                cp.sync()
                    .with_context(|| format!("syncing checkpoint {}", cp.path.display()))?;
            }
        }
        self.lock().outstanding.forget_settled_before(lwm);
        // The source may be waiting for lines to leave the window.
        self.notify.notify_one();
        Ok(())
    }

    /// The data file starts over at byte 0 (nothing is in flight).
    pub(super) fn start_over(&self, data: Option<File>) {
        {
            let mut st = self.lock();
            st.next_line = 0;
            st.outstanding = LowWater::default();
        }
        if let Some(cp) = self.lock_checkpoint().as_mut() {
            let synced = cp.reset(data).and_then(|()| {
                if self.sync.is_empty() {
                    Ok(())
                } else {
                    cp.sync()
                }
            });
            if let Err(e) = synced {
                tracing::warn!(checkpoint = %cp.path.display(), error = %e, "checkpoint not written");
            }
        }
    }

    /// Checkpoint thread: waits until the mark may have moved or the source
    /// is gone; returns whether it is gone.
    pub(super) fn wait_dirty(&self) -> bool {
        let mut st = self.lock();
        while !st.dirty && !st.stop {
            st = self.cp_wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.dirty = false;
        st.urgent = false;
        st.stop
    }

    /// Checkpoint thread: rests `every` (cut short when the source is gone
    /// or many lines settled); returns whether the source is gone.
    pub(super) fn rest(&self, every: Duration) -> bool {
        let st = self.lock();
        let (st, _) = self
            .cp_wake
            .wait_timeout_while(st, every, |st| !st.stop && !st.urgent)
            .unwrap_or_else(|p| p.into_inner());
        st.stop
    }

    /// The source is gone: the checkpoint thread writes once more and ends.
    pub(super) fn stop(&self) {
        self.lock().stop = true;
        self.cp_wake.notify_all();
    }

    fn requeue(&self, line: LineRef, attempt: u32, delay: Duration) {
        let mut st = self.lock();
        st.redeliveries
            .push(Instant::now() + delay, Pending { line, attempt });
        drop(st);
        self.notify.notify_one();
    }
}

/// The settle handle of one line.
pub(super) struct FileSettle {
    pub(super) shared: Arc<Shared>,
    /// The line as handed out, for a redelivery; `None` once settled.
    pub(super) line: Option<LineRef>,
    pub(super) attempt: u32,
    pub(super) offset: u64,
}

impl FileSettle {
    fn redeliver(&mut self, delay: Duration) {
        if let Some(line) = self.line.take() {
            self.shared
                .requeue(line, self.attempt.saturating_add(1), delay);
        }
    }
}

impl Settle for FileSettle {
    fn settle(mut self: Box<Self>, how: Settlement) -> BoxFuture<'static, anyhow::Result<()>> {
        let result = match how {
            Settlement::Ack | Settlement::Terminated => {
                self.line = None;
                let mut st = self.shared.lock();
                st.outstanding.settle(self.offset);
                let result = self.shared.moved(st);
                self.shared.notify.notify_one();
                result
            }
            Settlement::Redeliver { delay } => {
                self.redeliver(delay);
                Ok(())
            }
        };
        match result {
            // A future of no size: settling allocates nothing.
            Ok(()) => crate::sources::settled(),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

impl Drop for FileSettle {
    fn drop(&mut self) {
        // Never settled (the line is only taken by a settlement): hand it out again.
        self.redeliver(Duration::ZERO);
    }
}
