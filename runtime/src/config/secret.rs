//! Secrets (passwords, tokens) named in the TOML, read from a file or an
//! environment variable — never written in the TOML, never logged.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Where a secret comes from: exactly one of `env` or `file`. Written
/// `{ env = "VAR" }` or `{ file = "path" }`; anything else is refused with
/// an error that never repeats what was written (it may be the secret).
#[derive(Clone, Serialize, PartialEq, Eq)]
pub struct Secret {
    /// The environment variable that holds the secret.
    #[serde(default)]
    pub env: Option<String>,
    /// The file that holds the secret (trailing newline trimmed). Relative
    /// paths are relative to the pipeline file.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// What a secret key takes, said in every refusal.
const EXPECTED: &str =
    "a secret is never written in the file: expected `{ env = \"VAR\" }` or `{ file = \"path\" }`";

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        /// Refuses a value without showing it.
        fn refuse<E: de::Error>(what: &str) -> E {
            E::custom(format!("{what} (not shown); {EXPECTED}"))
        }
        impl<'de> Visitor<'de> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Secret, E> {
                Err(refuse("found a string"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(refuse("found a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(refuse("found a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(refuse("found a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(refuse("found a number"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(refuse("found an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
                let mut secret = Secret {
                    env: None,
                    file: None,
                };
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "env" if secret.env.is_none() => {
                            secret.env = Some(map.next_value::<String>().map_err(|_| {
                                refuse::<A::Error>("`env` is not the name of a variable")
                            })?);
                        }
                        "file" if secret.file.is_none() => {
                            secret.file = Some(
                                map.next_value::<PathBuf>()
                                    .map_err(|_| refuse::<A::Error>("`file` is not a path"))?,
                            );
                        }
                        _ => {
                            let _ = map.next_value::<de::IgnoredAny>()?;
                            return Err(refuse(&format!(
                                "unknown or repeated key `{}`",
                                key.escape_debug()
                            )));
                        }
                    }
                }
                match (&secret.env, &secret.file) {
                    (Some(_), None) | (None, Some(_)) => Ok(secret),
                    (Some(_), Some(_)) => Err(refuse("found both `env` and `file`")),
                    (None, None) => Err(refuse("found an empty table")),
                }
            }
        }
        d.deserialize_any(V)
    }
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

/// `url` with the password of its userinfo (`scheme://user:PASSWORD@host`)
/// replaced by `***`, for every message that shows a URL.
pub fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.into();
    };
    let user = rest[..at].split(':').next().unwrap_or("");
    let redacted = if rest[..at].contains(':') {
        format!("{user}:***")
    } else {
        "***".to_string()
    };
    format!("{}{redacted}{}", &url[..scheme_end], &rest[at..]).into()
}

/// Whether `url` carries credentials in its userinfo (`user:pass@` or a
/// token as `token@`).
pub fn has_credentials(url: &str) -> bool {
    redact_url(url) != url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        #[allow(dead_code)]
        password: Secret,
    }

    #[test]
    fn a_secret_written_in_the_file_is_refused_without_being_echoed() {
        for bad in [
            "password = \"hunter2-s3cret\"",
            "password = 424242",
            "password = [\"hunter2-s3cret\"]",
            "password = {}",
            "password = { env = \"A\", file = \"hunter2-s3cret\" }",
            "password = { value = \"hunter2-s3cret\" }",
            "password = { env = 1 }",
        ] {
            // The message alone: toml's own Display quotes the source line.
            let e = toml::from_str::<T>(bad).unwrap_err().message().to_string();
            assert!(e.contains("a secret is never written"), "{bad}: {e}");
            assert!(
                !e.contains("hunter2") && !e.contains("424242"),
                "{bad}: {e}"
            );
        }
        let ok = toml::from_str::<T>("password = { env = \"PW\" }").unwrap();
        assert_eq!(ok.password.env.as_deref(), Some("PW"));
    }

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(redact_url("nats://u:pw@h:4222"), "nats://u:***@h:4222");
        assert_eq!(redact_url("mqtt://tok@h/x?a=b@c"), "mqtt://***@h/x?a=b@c");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        assert_eq!(redact_url("not a url @ all"), "not a url @ all");
        assert!(has_credentials("tls://a:b@h"));
        assert!(!has_credentials("tls://h"));
    }

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
