//! TLS settings, the same table and keys for every broker type.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::DeTable;

use super::diagnostics::line_col;
use super::table::{Problem, resolve_opt};

/// TLS to the broker: a custom CA and a client certificate. Relative paths
/// are relative to the pipeline file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) that signed the broker's
    /// certificate. Default: the system's root certificates.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that verify clients (give
    /// `key_file` too). `cert` is accepted as an older spelling.
    #[serde(default, alias = "cert")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (unencrypted). `key` is accepted as an
    /// older spelling.
    #[serde(default, alias = "key")]
    pub key_file: Option<PathBuf>,
}

/// The older spellings of [`TlsConfig`] keys, and the key each stands for.
pub(crate) const DEPRECATED_KEYS: [(&str, &str); 2] = [("cert", "cert_file"), ("key", "key_file")];

impl TlsConfig {
    /// `cert_file` without `key_file` or the other way round, reported at
    /// `prefix` + the key that is missing.
    pub fn check(&self, prefix: &str, out: &mut Vec<Problem>) {
        let missing = match (&self.cert_file, &self.key_file) {
            (Some(_), None) => "key_file",
            (None, Some(_)) => "cert_file",
            _ => return,
        };
        out.push(Problem::new(
            format!("{prefix}{missing}"),
            "give `cert_file` and `key_file` together (client authentication) or neither".into(),
        ));
    }

    /// Makes the files relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        resolve_opt(base, &mut self.ca_file);
        resolve_opt(base, &mut self.cert_file);
        resolve_opt(base, &mut self.key_file);
    }
}

/// A note for every `tls` key written in an older spelling, with its line:
/// "line 7: `source.tls.cert` is an older spelling of `cert_file`".
pub(crate) fn deprecated_keys(text: &str, root: &Spanned<DeTable<'_>>) -> Vec<String> {
    let root = root.get_ref();
    let tables = ["source", "sink", "dead_letter"]
        .into_iter()
        .filter_map(|k| Some((k.to_string(), root.get(k)?)))
        .chain(
            root.get("sinks")
                .and_then(|s| s.get_ref().as_table())
                .into_iter()
                .flat_map(|t| t.iter().map(|(k, v)| (format!("sinks.{}", k.get_ref()), v))),
        );
    let mut notes = Vec::new();
    for (name, table) in tables {
        let Some(tls) = table
            .get_ref()
            .as_table()
            .and_then(|t| t.get("tls"))
            .and_then(|t| t.get_ref().as_table())
        else {
            continue;
        };
        for (old, new) in DEPRECATED_KEYS {
            if let Some((key, _)) = tls.get_key_value(old) {
                let (line, _) = line_col(text, key.span().start);
                notes.push(format!(
                    "line {line}: `{name}.tls.{old}` is an older spelling of `{new}`"
                ));
            }
        }
    }
    notes
}
