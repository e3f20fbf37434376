//! Pipelines that could not load or start because the process or the
//! machine ran short of a resource (file descriptors, memory, disk): such a
//! shortage may pass, so the file is tried again, backing off, until it
//! starts or its text changes.

use std::time::Duration;

use tokio::time::Instant;

/// First wait before trying a file again; it doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between two tries.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// The OS errors that name a shortage rather than a fault of the pipeline:
/// too many open files (process, system), out of memory, no space left.
const SHORTAGES: [i32; 4] = [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::ENOSPC];

/// Whether an error's text (with its causes, as `{:#}` prints them) names
/// a resource shortage. The text is what every layer keeps: library errors
/// and plugin-load errors carry the OS error only as `(os error N)`.
pub fn short_of_resources(error: &str) -> bool {
    SHORTAGES
        .iter()
        .any(|n| error.contains(&format!("(os error {n})")))
}

/// A file to try again: when, and how many tries failed so far.
#[derive(Debug, Clone)]
pub struct Retry {
    /// The file's text that failed; another text is not retried but loaded.
    pub text: String,
    pub at: Instant,
    pub failures: u32,
}

impl Retry {
    /// The retry after `failures` failed tries of `text` (from 1).
    pub fn after(text: String, failures: u32) -> Self {
        let delay = FIRST_DELAY
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(MAX_DELAY);
        Retry {
            text,
            at: Instant::now() + delay,
            failures,
        }
    }

    /// How long until the retry, for messages.
    pub fn delay(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortages_are_told_from_faults() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(short_of_resources(&format!("opening x: {emfile}")));
        let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert!(!short_of_resources(&format!("opening x: {enoent}")));
        assert!(!short_of_resources("handler.plugin: not a component"));
    }

    #[test]
    fn delays_double_up_to_a_minute() {
        let d = |n| Retry::after(String::new(), n).delay().as_secs_f64().round() as u64;
        assert_eq!([d(1), d(2), d(3), d(7), d(8), d(40)], [1, 2, 4, 60, 60, 60]);
    }
}
