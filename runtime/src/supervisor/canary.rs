//! A pipeline's canary as the supervisor runs it: loading the
//! `[handler.canary]` plugin when its bytes are new (never bytes that were
//! rolled back or failed to load), promotion on request, and what the admin
//! API and the metrics show of it.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::json;

use super::registry::{Handle, lock};
use crate::engine::Plugin;
use crate::pipeline::History;

/// Why promoting on request did nothing.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("pipeline {0} is not running")]
    NotRunning(String),
    #[error("pipeline {0} runs no canary")]
    NoCanary(String),
}

impl Handle {
    /// Whether the pipeline has a `[handler.canary]`.
    pub fn has_canary_config(&self) -> bool {
        self.canary.is_some()
    }

    /// The `.wasm` file `[handler.canary]` names (the folder's one file).
    pub fn canary_file(&self) -> Option<std::path::PathBuf> {
        let (spec, _) = self.canary.as_ref()?;
        crate::engine::resolve_file(&spec.path).ok()
    }

    /// The digest of the canary file's bytes when they should start a
    /// canary: not the stable version (nor a promoted canary), not the
    /// canary running, not rolled back, not failed to load.
    pub fn changed_canary(&self) -> Option<String> {
        let live = self.live.get()?;
        // Unreadable: removed or being replaced; the next event tells.
        let bytes = std::fs::read(self.canary_file()?).ok()?;
        let digest = crate::engine::cache::digest(&bytes);
        let running = live.slot.canary().map(|c| c.plugin.digest().to_string());
        let failed = lock(&self.canary_error)
            .as_ref()
            .and_then(|(_, d)| d.clone());
        let fresh = digest != live.slot.get().digest()
            && running.as_deref() != Some(&digest)
            && failed.as_deref() != Some(&digest)
            && !live.slot.history().rejected.contains(&digest);
        fresh.then_some(digest)
    }

    /// Loads the canary file and starts it as the canary when its bytes are
    /// still new; a failure is recorded and leaves the pipeline as it is.
    pub async fn load_canary(&self) -> Result<Option<Plugin>, String> {
        let _guard = self.reload_lock.lock().await;
        let (Some((spec, rule)), Some(live)) = (&self.canary, self.live.get()) else {
            return Ok(None);
        };
        let Some(attempted) = self.changed_canary() else {
            return Ok(None);
        };
        match Plugin::load(&self.engine, spec.clone()).await {
            Ok(p) => {
                *lock(&self.canary_error) = None;
                live.slot.start_canary(p.clone(), *rule);
                Ok(Some(p))
            }
            Err(e) => {
                let e = e.to_string();
                self.canary_loads_failed.fetch_add(1, Relaxed);
                tracing::error!(pipeline = %self.name, "canary not started: {e}");
                *lock(&self.canary_error) = Some((e.clone(), Some(attempted)));
                Err(e)
            }
        }
    }

    /// Promotes the running canary: every message gets it from now on.
    /// Returns its digest.
    pub fn promote(&self) -> Result<String, PromoteError> {
        let live = self
            .live
            .get()
            .ok_or_else(|| PromoteError::NotRunning(self.name.clone()))?;
        live.slot
            .promote()
            .ok_or_else(|| PromoteError::NoCanary(self.name.clone()))
    }

    /// How canaries ended so far (empty before the pipeline started).
    pub fn canary_history(&self) -> History {
        self.live
            .get()
            .map(|l| l.slot.history().clone())
            .unwrap_or_default()
    }

    /// Canary loads that failed.
    pub fn canary_loads_failed(&self) -> u64 {
        self.canary_loads_failed.load(Relaxed)
    }

    /// Remembers digests a pipeline this one replaced rolled back.
    pub fn remember_rejected(&self, digests: &[String]) {
        if let Some(l) = self.live.get() {
            l.slot.remember_rejected(digests);
        }
    }

    /// The running canary, for the metrics.
    pub fn running_canary(&self) -> Option<std::sync::Arc<crate::pipeline::canary::Canary>> {
        self.live.get()?.slot.canary()
    }

    /// The `canary` object of `GET /pipelines` (null without `[handler.canary]`).
    pub(super) fn canary_info(&self) -> serde_json::Value {
        if self.canary.is_none() {
            return serde_json::Value::Null;
        }
        let h = self.canary_history();
        json!({
            "running": self.running_canary().map(|c| c.info()),
            "started": h.started,
            "rolled_back": h.rolled_back,
            "promoted": h.promoted,
            "load_failed": self.canary_loads_failed(),
            "rolled_back_digests": h.rejected,
            "last": h.last.as_ref().map(|e| e.info()),
            "last_load_error": lock(&self.canary_error).as_ref().map(|(e, _)| e.clone()),
        })
    }
}
