//! What a pipeline worker calls: one handler instance held between messages,
//! replaced after a sandbox failure or when the plugin version changes, and
//! batches of messages handed over in one call while the stream is healthy.

use std::sync::Arc;

use super::instance::{Instance, Plugin};
use super::limits::{CallStats, Handled};
use crate::failure::{Failure, FailureClass};
use crate::message::Message;

/// Messages handled one per call after a batch failed in a way it could not
/// pin on one message (any failure before the first answer: it may belong to
/// the batch call itself, e.g. lowering the batch), or returned without
/// answering every message, before batches resume.
/// Failures that are pinned cost nothing extra: the messages before
/// answered, the rest go one per call on a fresh instance.
const SINGLES_AFTER_UNPINNED: u32 = 16;

/// Runs one pipeline worker's messages: holds an instance between messages
/// and replaces it after a sandbox failure or when the plugin version changes.
pub struct Worker {
    plugin: Plugin,
    instance: Option<Instance>,
    /// Messages still to be handled one per call before batching again.
    singles: u32,
}

impl Worker {
    pub fn new(plugin: Plugin) -> Self {
        Worker {
            plugin,
            instance: None,
            singles: 0,
        }
    }

    /// Switches to another version; the next message gets an instance of it.
    pub fn set_plugin(&mut self, plugin: Plugin) {
        if plugin.digest() != self.plugin.digest()
            || !Arc::ptr_eq(&plugin.inner, &self.plugin.inner)
        {
            self.instance = None;
            self.plugin = plugin;
        }
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Handles one message, making an instance first when there is none.
    pub async fn handle(&mut self, msg: &Message) -> Handled {
        if let Some(f) = &self.plugin.inner.native {
            return (f(msg), CallStats::default());
        }
        self.singles = self.singles.saturating_sub(1);
        let instance = match self.instance().await {
            Ok(i) => i,
            Err(f) => return (Err(f), CallStats::default()),
        };
        let out = instance.handle(msg).await;
        if instance.is_poisoned() {
            self.instance = None;
        }
        out
    }

    /// Handles `msgs` in one `handle-batch` call, each under its own budgets.
    ///
    /// Returns the answers of the first messages, in order: all of them, or
    /// up to and including the one that failed the sandbox (trap, timeout,
    /// fuel, memory), after which the instance is replaced. Returns none when
    /// the plugin takes no batches, or when a batch failed before its first
    /// answer (and then for the next [`SINGLES_AFTER_UNPINNED`] messages, as
    /// after a batch that returned with messages unanswered). The caller handles every message
    /// it got no answer for with [`Worker::handle`], one at a time.
    pub async fn handle_batch(&mut self, msgs: &[&Message]) -> Vec<Handled> {
        if let Some(f) = &self.plugin.inner.native {
            return msgs.iter().map(|m| (f(m), CallStats::default())).collect();
        }
        if msgs.len() < 2 || self.singles > 0 || !self.plugin.takes_batches() {
            return Vec::new();
        }
        let instance = match self.instance().await {
            Ok(i) => i,
            // The first single call meets the same failure and reports it.
            Err(_) => return Vec::new(),
        };
        let out = instance.handle_batch(msgs).await;
        if instance.is_poisoned() {
            self.instance = None;
            if out.is_empty() {
                self.singles = SINGLES_AFTER_UNPINNED;
            }
        } else if out.len() < msgs.len() {
            // It returned without answering them all: its batches are not
            // to be relied on, so they are not tried on every message.
            self.singles = SINGLES_AFTER_UNPINNED;
        }
        out
    }

    /// The instance messages go to, made first when there is none.
    /// An instance left poisoned by a call that never finished (its caller
    /// dropped the call) is replaced too.
    async fn instance(&mut self) -> Result<&mut Instance, Failure> {
        if self.instance.as_ref().is_some_and(Instance::is_poisoned) {
            self.instance = None;
        }
        if self.instance.is_none() {
            self.instance = Some(self.plugin.instantiate().await?);
        }
        self.instance
            .as_mut()
            .ok_or_else(|| Failure::new(FailureClass::Trap, "no instance"))
    }
}
