//! Secrets (passwords, tokens) named in the TOML, read from a file or an
//! environment variable — never written in the TOML, never logged.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a secret comes from: exactly one of `env` or `file`.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// The environment variable that holds the secret.
    #[serde(default)]
    pub env: Option<String>,
    /// The file that holds the secret (trailing newline trimmed). Relative
    /// paths are relative to the pipeline file.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

// Never print where-from details as if they were the value; never the value.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.env, &self.file) {
            (Some(e), _) => write!(f, "Secret(env {e})"),
            (None, Some(p)) => write!(f, "Secret(file {})", p.display()),
            (None, None) => f.write_str("Secret(unset)"),
        }
    }
}

impl Secret {
    /// Reads the secret's value. The error names the variable or file, never the value.
    pub fn read(&self) -> anyhow::Result<String> {
        match (&self.env, &self.file) {
            (Some(var), None) => std::env::var(var).map_err(|_| {
                anyhow::anyhow!("the environment variable {var} (named as a secret) is not set")
            }),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| {
                    anyhow::anyhow!("cannot read the secret file {}: {e}", path.display())
                }),
            (Some(_), Some(_)) => anyhow::bail!("a secret takes `env` or `file`, not both"),
            (None, None) => anyhow::bail!("a secret needs `env = \"VAR\"` or `file = \"path\"`"),
        }
    }

    /// Makes a relative `file` relative to `base`.
    pub fn resolve(&mut self, base: &std::path::Path) {
        if let Some(p) = &mut self.file
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_file_and_env_without_echoing() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let s = Secret {
            env: None,
            file: Some(f),
        };
        assert_eq!(s.read().unwrap(), "s3cret");
        assert!(!format!("{s:?}").contains("s3cret"));
        let s = Secret {
            env: Some("SLUICE_TEST_SURELY_UNSET_VAR".into()),
            file: None,
        };
        let e = s.read().unwrap_err().to_string();
        assert!(e.contains("SLUICE_TEST_SURELY_UNSET_VAR"), "{e}");
    }
}
