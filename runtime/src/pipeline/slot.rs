//! The plugin versions of a running pipeline: the stable version every
//! message gets, and a canary beside it for a share of the keys. Both change
//! while messages flow; messages in flight finish on the version they
//! started with, the next message meets the new one.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use serde_json::json;

use super::canary::{Canary, Rule, Verdict};
use crate::engine::Plugin;

/// Rolled-back digests remembered per pipeline: a version rolled back is not
/// started again until its bytes change (oldest forgotten first).
const REMEMBERED: usize = 16;

/// How canaries ended so far, for the admin API and the metrics.
#[derive(Debug, Default, Clone)]
pub struct History {
    pub started: u64,
    pub rolled_back: u64,
    pub promoted: u64,
    /// Digests rolled back, oldest first.
    pub rejected: Vec<String>,
    /// The last ending.
    pub last: Option<Ended>,
}

/// How a canary ended.
#[derive(Clone)]
pub struct Ended {
    pub canary: Arc<Canary>,
    /// `rolled_back` or `promoted`.
    pub outcome: &'static str,
    pub reason: String,
    pub at: SystemTime,
}

impl std::fmt::Debug for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.outcome,
            self.canary.plugin.digest(),
            self.reason
        )
    }
}

impl Ended {
    /// The JSON the admin API shows: what, which digest, why, when, and
    /// the counts of both versions (the canary's including the messages
    /// that were in flight on it when it ended).
    pub fn info(&self) -> serde_json::Value {
        json!({
            "outcome": self.outcome,
            "digest": self.canary.plugin.digest(),
            "reason": self.reason,
            "at": humantime::format_rfc3339_millis(self.at).to_string(),
            "canary": self.canary.canary.info(),
            "stable": self.canary.stable.info(),
        })
    }
}

/// Swaps the plugin version of a running pipeline and holds its canary.
#[derive(Clone)]
pub struct PluginSlot {
    inner: Arc<Inner>,
}

struct Inner {
    pipeline: String,
    current: RwLock<Plugin>,
    canary: RwLock<Option<Arc<Canary>>>,
    /// Bumped at every change of either, so that workers notice with one load.
    version: AtomicU64,
    history: Mutex<History>,
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl PluginSlot {
    pub(super) fn new(pipeline: &str, p: Plugin) -> Self {
        PluginSlot {
            inner: Arc::new(Inner {
                pipeline: pipeline.to_string(),
                current: RwLock::new(p),
                canary: RwLock::new(None),
                version: AtomicU64::new(0),
                history: Mutex::new(History::default()),
            }),
        }
    }

    /// The version new messages get (outside the canary's share).
    pub fn get(&self) -> Plugin {
        read(&self.inner.current)
    }

    /// The canary running now, if any.
    pub fn canary(&self) -> Option<Arc<Canary>> {
        read(&self.inner.canary)
    }

    /// Changes whenever the stable version or the canary changes.
    pub(super) fn version(&self) -> u64 {
        self.inner.version.load(Relaxed)
    }

    /// Installs `p` as the stable version for the next messages.
    pub fn swap(&self, p: Plugin) {
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = p;
        self.inner.version.fetch_add(1, Relaxed);
    }

    /// Starts `p` as the canary under `rule`, replacing a canary that runs
    /// (which then ends with no verdict).
    pub fn start_canary(&self, p: Plugin, rule: Rule) {
        let digest = p.digest().to_string();
        *self.inner.canary.write().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new(Canary::new(p, rule)));
        self.inner.version.fetch_add(1, Relaxed);
        self.history().started += 1;
        tracing::info!(pipeline = %self.inner.pipeline, canary = %digest, share = rule.buckets as f64 / super::canary::BUCKETS as f64, "canary started");
    }

    /// Carries out `verdict` on canary `c`, if `c` still runs and nothing
    /// else ended it first. True when it did.
    pub fn conclude(&self, c: &Arc<Canary>, verdict: Verdict) -> bool {
        {
            let mut slot = self.inner.canary.write().unwrap_or_else(|e| e.into_inner());
            if !slot.as_ref().is_some_and(|x| Arc::ptr_eq(x, c)) || !c.end() {
                return false;
            }
            *slot = None;
            if let Verdict::Promote(_) = verdict {
                *self
                    .inner
                    .current
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = c.plugin.clone();
            }
            self.inner.version.fetch_add(1, Relaxed);
        }
        let digest = c.plugin.digest().to_string();
        let (what, why) = match &verdict {
            Verdict::RollBack(why) => ("rolled_back", why.as_str()),
            Verdict::Promote(why) => ("promoted", why.as_str()),
        };
        let mut h = self.history();
        match verdict {
            Verdict::RollBack(_) => {
                h.rolled_back += 1;
                tracing::error!(pipeline = %self.inner.pipeline, canary = %digest, "canary rolled back: {why}; it is not started again until its bytes change");
                h.rejected.retain(|d| *d != digest);
                h.rejected.push(digest.clone());
                if h.rejected.len() > REMEMBERED {
                    h.rejected.remove(0);
                }
            }
            Verdict::Promote(_) => {
                h.promoted += 1;
                tracing::info!(pipeline = %self.inner.pipeline, canary = %digest, "canary promoted: {why}");
            }
        }
        h.last = Some(Ended {
            canary: c.clone(),
            outcome: what,
            reason: why.to_string(),
            at: SystemTime::now(),
        });
        true
    }

    /// Promotes the canary running now (on request); its digest, or `None`
    /// when no canary runs.
    pub fn promote(&self) -> Option<String> {
        let c = self.canary()?;
        self.conclude(&c, Verdict::Promote("on request".to_string()))
            .then(|| c.plugin.digest().to_string())
    }

    /// Remembers digests rolled back earlier (by the pipeline this one replaced).
    pub fn remember_rejected(&self, digests: &[String]) {
        let mut h = self.history();
        for d in digests {
            if !h.rejected.contains(d) {
                h.rejected.push(d.clone());
            }
        }
        let excess = h.rejected.len().saturating_sub(REMEMBERED);
        h.rejected.drain(..excess);
    }

    /// How canaries ended so far.
    pub fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.inner.history.lock().unwrap_or_else(|e| e.into_inner())
    }
}
