//! Retry delays: exponential backoff with a cap and jitter, and the jitter
//! every reconnect backoff uses.

use std::time::Duration;

use rand::RngExt;

use crate::config::{Jitter, RetryConfig};

/// The delay before attempt `next_attempt` (2 = the first retry), before jitter.
pub fn base_delay(cfg: &RetryConfig, next_attempt: u32) -> Duration {
    let exp = next_attempt.saturating_sub(2).min(64) as i32;
    let secs = cfg.initial.0.as_secs_f64() * cfg.multiplier.powi(exp);
    let capped = secs.min(cfg.max.0.as_secs_f64());
    Duration::try_from_secs_f64(capped).unwrap_or(cfg.max.0)
}

/// The delay before attempt `next_attempt`, jittered as configured.
pub fn delay(cfg: &RetryConfig, next_attempt: u32) -> Duration {
    let base = base_delay(cfg, next_attempt);
    match cfg.jitter {
        Jitter::None => base,
        Jitter::Full => full_jitter(base),
        Jitter::Equal => equal_jitter(base),
    }
}

/// A random duration from `lo` to `hi` (`lo` when `hi` is shorter).
pub fn between(lo: Duration, hi: Duration) -> Duration {
    lo + hi
        .saturating_sub(lo)
        .mul_f64(rand::rng().random_range(0.0..=1.0))
}

/// "Full" jitter: a random duration up to `base`.
pub fn full_jitter(base: Duration) -> Duration {
    between(Duration::ZERO, base)
}

/// "Equal" jitter: half of `base` fixed, the other half random, so that many
/// clients waiting out the same outage spread out and none retries at once.
pub fn equal_jitter(base: Duration) -> Duration {
    base / 2 + full_jitter(base / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::Dur;

    fn cfg(jitter: Jitter) -> RetryConfig {
        RetryConfig {
            max_attempts: 10,
            initial: Dur(Duration::from_millis(100)),
            max: Dur(Duration::from_secs(1)),
            multiplier: 2.0,
            jitter,
        }
    }

    #[test]
    fn grows_then_caps() {
        let c = cfg(Jitter::None);
        let d: Vec<u128> = (2..=7).map(|a| delay(&c, a).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        for a in 2..8 {
            let base = base_delay(&cfg(Jitter::None), a);
            for _ in 0..100 {
                assert!(delay(&cfg(Jitter::Full), a) <= base);
                let e = delay(&cfg(Jitter::Equal), a);
                assert!(e >= base / 2 && e <= base);
            }
        }
    }

    #[test]
    fn between_stays_within_its_bounds() {
        let (lo, hi) = (Duration::from_millis(50), Duration::from_millis(80));
        for _ in 0..100 {
            let d = between(lo, hi);
            assert!(d >= lo && d <= hi, "{d:?}");
        }
        assert_eq!(between(lo, Duration::from_millis(10)), lo, "hi below lo");
    }
}
