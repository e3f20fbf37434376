//! A worker's instances of the plugin versions: one of the stable version,
//! and one of the canary while a canary runs. Each message goes to the
//! version its key falls on and stays with it through its retries.

use std::sync::Arc;
use std::time::Duration;

use super::canary::Canary;
use super::slot::PluginSlot;
use crate::engine::Worker;
use crate::failure::FailureClass;
use crate::message::Message;

/// The versions a worker runs, as of the slot's `version`.
pub(super) struct Lanes {
    version: u64,
    stable: Worker,
    canary: Option<(Arc<Canary>, Worker)>,
}

/// The version one message runs on: its instance, and the canary whose
/// counts its handler calls go to while a canary runs.
pub(super) struct Lane<'a> {
    pub(super) w: &'a mut Worker,
    canary: Option<&'a Arc<Canary>>,
    on_canary: bool,
}

impl Lanes {
    pub(super) fn new(slot: &PluginSlot) -> Self {
        let mut lanes = Lanes {
            version: slot.version(),
            stable: Worker::new(slot.get()),
            canary: None,
        };
        lanes.canary = slot.canary().map(|c| {
            let w = Worker::new(c.plugin.clone());
            (c, w)
        });
        lanes
    }

    /// Takes up the slot's versions if they changed. Called between
    /// batches, so a message in flight keeps the instance it started on.
    pub(super) fn refresh(&mut self, slot: &PluginSlot) {
        let v = slot.version();
        if v == self.version {
            return;
        }
        self.version = v;
        self.stable.set_plugin(slot.get());
        match slot.canary() {
            Some(c)
                if self
                    .canary
                    .as_ref()
                    .is_some_and(|(x, _)| Arc::ptr_eq(x, &c)) => {}
            Some(c) => {
                let w = Worker::new(c.plugin.clone());
                self.canary = Some((c, w));
            }
            None => self.canary = None,
        }
    }

    /// Whether a canary runs.
    pub(super) fn has_canary(&self) -> bool {
        self.canary.is_some()
    }

    /// Whether `msg` goes to the canary.
    pub(super) fn takes(&self, msg: &Message) -> bool {
        self.canary.as_ref().is_some_and(|(c, _)| c.takes(msg))
    }

    /// The lane of the canary (when `on_canary` and one runs) or of the
    /// stable version.
    pub(super) fn lane(&mut self, on_canary: bool) -> Lane<'_> {
        let Lanes { stable, canary, .. } = self;
        match canary {
            Some((c, w)) => Lane {
                w: if on_canary { w } else { stable },
                canary: Some(&*c),
                on_canary,
            },
            None => Lane {
                w: stable,
                canary: None,
                on_canary: false,
            },
        }
    }
}

impl<'a> Lane<'a> {
    /// Where this lane's handler calls are counted.
    pub(super) fn counter(&self) -> Counter<'a> {
        Counter {
            canary: self.canary,
            on_canary: self.on_canary,
        }
    }
}

/// Where a lane's handler calls are counted (nothing while no canary runs).
#[derive(Clone, Copy)]
pub(super) struct Counter<'a> {
    canary: Option<&'a Arc<Canary>>,
    on_canary: bool,
}

impl Counter<'_> {
    /// Counts a handler call for its version while a canary runs and, on the
    /// canary, carries out the rule's verdict when there is one.
    pub(super) fn record(self, slot: &PluginSlot, failed: Option<FailureClass>, took: Duration) {
        let Some(c) = self.canary else {
            return;
        };
        if !self.on_canary {
            c.stable.record(failed, took);
            return;
        }
        c.canary.record(failed, took);
        if let Some(verdict) = c.judge() {
            slot.conclude(c, verdict);
        }
    }
}
