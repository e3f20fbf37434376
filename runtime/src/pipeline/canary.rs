//! A canary rollout: a second plugin version that handles the messages whose
//! key falls in its share, its handler calls counted by outcome beside the
//! stable version's, and the rule that rolls it back or promotes it.
//!
//! The rule is judged after each of the canary's handler calls, from the
//! counts since the canary started: once it made `min_messages` calls, a
//! failure rate above the stable version's plus `failure_margin` rolls it
//! back; after `promote_after` calls within the margin it is promoted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::config::CanaryConfig;
use crate::engine::Plugin;
use crate::failure::FailureClass;
use crate::message::Message;
use crate::stats::Histogram;

/// Buckets the key hash is taken modulo; a share is a number of them.
pub const BUCKETS: u64 = 10_000;

/// The bucket of a message: the 64-bit FNV-1a hash of its key (of its payload
/// when it has no key) modulo [`BUCKETS`].
pub fn bucket(msg: &Message) -> u64 {
    let bytes = msg.key.as_deref().unwrap_or(&msg.payload);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h % BUCKETS
}

/// When a canary is rolled back or promoted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// Buckets (of [`BUCKETS`]) whose messages go to the canary.
    pub buckets: u64,
    pub min_messages: u64,
    pub failure_margin: f64,
    /// 0 = only on request.
    pub promote_after: u64,
}

impl Rule {
    pub fn from_config(c: &CanaryConfig) -> Self {
        Rule {
            buckets: ((c.share * BUCKETS as f64).round() as u64).clamp(1, BUCKETS - 1),
            min_messages: c.min_messages,
            failure_margin: c.failure_margin,
            promote_after: c.promote_after,
        }
    }

    /// The verdict on counts (calls, failed calls) of the canary and of the
    /// stable version over the same time, if there is one yet.
    pub fn judge(&self, canary: (u64, u64), stable: (u64, u64)) -> Option<Verdict> {
        let rate = |(calls, failed): (u64, u64)| {
            if calls == 0 {
                0.0
            } else {
                failed as f64 / calls as f64
            }
        };
        let (c, s) = (rate(canary), rate(stable));
        if canary.0 < self.min_messages {
            return None;
        }
        if c > s + self.failure_margin {
            return Some(Verdict::RollBack(format!(
                "failure rate {:.2}% over {} calls, the stable version's {:.2}% over {} calls, margin {:.2} points",
                c * 100.0,
                canary.0,
                s * 100.0,
                stable.0,
                self.failure_margin * 100.0
            )));
        }
        if self.promote_after > 0 && canary.0 >= self.promote_after {
            return Some(Verdict::Promote(format!(
                "{} calls with a failure rate of {:.2}%, the stable version's {:.2}%",
                canary.0,
                c * 100.0,
                s * 100.0
            )));
        }
        None
    }
}

/// What the rule decided, with why.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    RollBack(String),
    Promote(String),
}

/// Handler calls of one version by outcome, and their latency.
#[derive(Debug, Default)]
pub struct Tally {
    calls: AtomicU64,
    /// Failed calls per class, in [`FailureClass::ALL`] order.
    failures: [AtomicU64; FailureClass::ALL.len()],
    latency: Histogram,
}

impl Tally {
    /// Records one handler call.
    pub fn record(&self, failed: Option<FailureClass>, elapsed: Duration) {
        self.calls.fetch_add(1, Relaxed);
        if let Some(class) = failed
            && let Some(i) = FailureClass::ALL.iter().position(|c| *c == class)
        {
            self.failures[i].fetch_add(1, Relaxed);
        }
        self.latency.observe(elapsed);
    }

    /// (calls, failed calls).
    pub fn counts(&self) -> (u64, u64) {
        let failed = self.failures.iter().map(|f| f.load(Relaxed)).sum();
        (self.calls.load(Relaxed), failed)
    }

    /// Failed calls by class name, every class listed.
    pub fn failures(&self) -> Vec<(&'static str, u64)> {
        FailureClass::ALL
            .iter()
            .zip(&self.failures)
            .map(|(c, n)| (c.as_str(), n.load(Relaxed)))
            .collect()
    }

    pub fn latency(&self) -> &Histogram {
        &self.latency
    }

    /// The JSON the admin API shows.
    pub fn info(&self) -> serde_json::Value {
        let (calls, failed) = self.counts();
        let (_, sum) = self.latency.cumulative();
        let failures: serde_json::Map<String, serde_json::Value> = self
            .failures()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| (c.to_string(), n.into()))
            .collect();
        json!({
            "calls": calls,
            "failed": failed,
            "failure_rate": if calls == 0 { 0.0 } else { failed as f64 / calls as f64 },
            "failures": failures,
            "mean_latency_ms": if calls == 0 { 0.0 } else { sum * 1000.0 / calls as f64 },
        })
    }
}

/// A canary running beside the stable version.
pub struct Canary {
    pub plugin: Plugin,
    pub rule: Rule,
    /// The canary's calls.
    pub canary: Tally,
    /// The stable version's calls since the canary started.
    pub stable: Tally,
    pub started: SystemTime,
    /// Set once a verdict (or a request) ended it: only one ending counts.
    ended: AtomicBool,
}

impl Canary {
    pub fn new(plugin: Plugin, rule: Rule) -> Self {
        Canary {
            plugin,
            rule,
            canary: Tally::default(),
            stable: Tally::default(),
            started: SystemTime::now(),
            ended: AtomicBool::new(false),
        }
    }

    /// Whether `msg` goes to the canary.
    pub fn takes(&self, msg: &Message) -> bool {
        bucket(msg) < self.rule.buckets
    }

    /// The rule's verdict on the counts so far.
    pub fn judge(&self) -> Option<Verdict> {
        if self.ended.load(Relaxed) {
            return None;
        }
        self.rule.judge(self.canary.counts(), self.stable.counts())
    }

    /// Marks the canary ended; false when it already was.
    pub(super) fn end(&self) -> bool {
        !self.ended.swap(true, Relaxed)
    }

    /// The JSON the admin API shows.
    pub fn info(&self) -> serde_json::Value {
        json!({
            "file": self.plugin.file(),
            "digest": self.plugin.digest(),
            "share": self.rule.buckets as f64 / BUCKETS as f64,
            "min_messages": self.rule.min_messages,
            "failure_margin": self.rule.failure_margin,
            "promote_after": self.rule.promote_after,
            "started_at": humantime::format_rfc3339_millis(self.started).to_string(),
            "canary": self.canary.info(),
            "stable": self.stable.info(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Rule {
        Rule {
            buckets: 1000,
            min_messages: 100,
            failure_margin: 0.02,
            promote_after: 1000,
        }
    }

    #[test]
    fn no_verdict_before_min_messages() {
        assert_eq!(rule().judge((99, 99), (1000, 0)), None);
    }

    #[test]
    fn rolled_back_past_the_margin_over_the_stable_rate() {
        // 5% against 2%: within 3 points of it, past 2.
        assert!(matches!(
            rule().judge((100, 5), (1000, 20)),
            Some(Verdict::RollBack(_))
        ));
        // 4% against 2%: exactly the margin, kept.
        assert_eq!(rule().judge((100, 4), (1000, 20)), None);
    }

    #[test]
    fn promoted_after_promote_after_within_the_margin() {
        assert!(matches!(
            rule().judge((1000, 10), (9000, 90)),
            Some(Verdict::Promote(_))
        ));
        assert_eq!(rule().judge((999, 0), (9000, 0)), None);
        let manual = Rule {
            promote_after: 0,
            ..rule()
        };
        assert_eq!(manual.judge((1_000_000, 0), (9000, 0)), None);
    }

    #[test]
    fn keys_stay_in_their_bucket_and_shares_hold() {
        let msg = |k: &str| Message {
            key: Some(bytes::Bytes::copy_from_slice(k.as_bytes())),
            ..Message::new("t", "payload")
        };
        assert_eq!(bucket(&msg("user-1")), bucket(&msg("user-1")));
        // Without a key, the payload places it.
        assert_eq!(
            bucket(&Message::new("a", "same")),
            bucket(&Message::new("b", "same"))
        );
        let taken = (0..10_000)
            .filter(|i| bucket(&msg(&format!("key-{i}"))) < 1000)
            .count();
        assert!((800..1200).contains(&taken), "{taken} of 10000 for 10%");
    }
}
