//! The `[handler.canary]` table: a second plugin version rolled out to a
//! share of the keys, and the rule that rolls it back or promotes it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[handler.canary]`: a new plugin version that handles a share of the
/// traffic beside the `[handler]` plugin (the stable version), under the same
/// budgets and `config`, until the rule rolls it back or promotes it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// The new version: a `.wasm` component (or a folder holding exactly one
    /// `.wasm` file), another file than `handler.plugin`. Relative paths are
    /// relative to the pipeline file. Watched like `handler.plugin`: new bytes
    /// start a new canary.
    pub plugin: PathBuf,
    /// The share of the traffic the canary handles, above 0 and below 1
    /// (`0.1` = a tenth). Messages are placed by their key, so one key stays
    /// with one version: the canary takes a message when the 64-bit FNV-1a
    /// hash of its key, modulo 10,000, is below `share` × 10,000. A message
    /// without a key is placed by its payload the same way, so a redelivered
    /// copy meets the same version.
    pub share: f64,
    /// Handler calls the canary must have made before the rule judges it.
    #[serde(default = "default_min_messages")]
    pub min_messages: u64,
    /// How far the canary's failure rate (failed handler calls / handler
    /// calls, since the canary started) may exceed the stable version's over
    /// the same time before the canary is rolled back: `0.02` = two
    /// percentage points. Every class a handler call can fail with counts
    /// (`retriable`, `fatal`, `trap`, `timeout`, `fuel`, `memory`).
    #[serde(default = "default_failure_margin")]
    pub failure_margin: f64,
    /// Handler calls after which a canary still within the margin is
    /// promoted: it becomes the version every message gets. `0` = only on
    /// request (`POST /pipelines/{name}/promote`). At least `min_messages`
    /// when not 0.
    #[serde(default = "default_promote_after")]
    pub promote_after: u64,
}

fn default_min_messages() -> u64 {
    200
}
fn default_failure_margin() -> f64 {
    0.02
}
fn default_promote_after() -> u64 {
    10_000
}

/// What is wrong with a `[handler.canary]` table, as (key, message) pairs.
pub(crate) fn problems(c: &CanaryConfig, stable: &std::path::Path) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !(c.share > 0.0 && c.share < 1.0) {
        out.push((
            "share",
            format!("must be above 0 and below 1, e.g. 0.1, found {}", c.share),
        ));
    }
    if !(0.0..=1.0).contains(&c.failure_margin) {
        out.push((
            "failure_margin",
            format!(
                "must be from 0 to 1 (a difference of failure rates), e.g. 0.02, found {}",
                c.failure_margin
            ),
        ));
    }
    if c.min_messages < 1 {
        out.push(("min_messages", "must be at least 1, found 0".to_string()));
    }
    if c.promote_after != 0 && c.promote_after < c.min_messages {
        out.push((
            "promote_after",
            format!(
                "must be 0 (only on request) or at least min_messages ({}), found {}",
                c.min_messages, c.promote_after
            ),
        ));
    }
    if c.plugin == stable {
        out.push((
            "plugin",
            "names the same file as handler.plugin; a canary is another version".to_string(),
        ));
    }
    out
}
