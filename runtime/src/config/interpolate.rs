//! Environment interpolation in string values: `${NAME}` and
//! `${NAME:-default}` are replaced by the variable's value (the default when
//! it is unset or empty), so one pipeline file runs against another broker
//! unchanged (`url = "${NATS_URL:-nats://127.0.0.1:4222}"`). `$${` writes a
//! literal `${`. Keys are never interpolated, only string values.
//!
//! A value that came from the environment is never echoed: every error
//! message of the file has the substituted values replaced by the `${NAME}`
//! that brought them. Secret keys (`password`, `token`, …) still take only
//! `{ env = "VAR" }` or `{ file = "path" }`; a string there is refused
//! without being shown, interpolated or not.

use std::borrow::Cow;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostics::{ConfigError, Diag, KeyPath, Seg};

/// Longest variable name accepted.
const MAX_NAME: usize = 256;
/// Values shorter than this are not redacted from messages (they would
/// garble every message that happens to contain them).
const MIN_REDACTED: usize = 4;

/// What was substituted: (variable, value), for redaction.
#[derive(Debug, Default)]
pub(crate) struct Substituted(Vec<(String, String)>);

impl Substituted {
    /// Replaces every substituted value in `errors` by the `${NAME}` it came from.
    pub(crate) fn redact(&self, errors: &mut [ConfigError]) {
        let mut by_len: Vec<&(String, String)> = self
            .0
            .iter()
            .filter(|(_, v)| v.len() >= MIN_REDACTED)
            .collect();
        // Longest first, so a value containing another is replaced whole.
        by_len.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        for e in errors {
            for (name, value) in &by_len {
                if e.message.contains(value.as_str()) {
                    e.message = e.message.replace(value.as_str(), &format!("${{{name}}}"));
                }
            }
        }
    }
}

/// Expands `${…}` in every string value of `root`, recording a problem (file,
/// line, key) for an unset variable without a default or a malformed `${`.
pub(crate) fn expand(
    d: &mut Diag<'_>,
    root: &mut Spanned<DeTable<'_>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Substituted {
    let mut out = Substituted::default();
    for (k, v) in root.get_mut().iter_mut() {
        let path = KeyPath::of(&[k.get_ref()]);
        walk(d, &path, v, env, &mut out);
    }
    out
}

fn walk(
    d: &mut Diag<'_>,
    path: &KeyPath,
    v: &mut Spanned<DeValue<'_>>,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut Substituted,
) {
    let span = v.span();
    match v.get_mut() {
        DeValue::String(s) => {
            if !s.contains('$') {
                return;
            }
            match expand_str(s, env, out) {
                Ok(Some(new)) => *s = Cow::Owned(new),
                Ok(None) => {}
                Err(why) => d.error(Some(path), Some(span), why),
            }
        }
        DeValue::Table(t) => {
            for (k, v) in t.iter_mut() {
                walk(d, &path.key(k.get_ref()), v, env, out);
            }
        }
        DeValue::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                walk(d, &path.join(&[Seg::Index(i)]), v, env, out);
            }
        }
        _ => {}
    }
}

/// The expanded text, `None` when nothing was to be expanded.
fn expand_str(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut Substituted,
) -> Result<Option<String>, String> {
    let mut result = String::with_capacity(s.len());
    let mut rest = s;
    let mut changed = false;
    while let Some(at) = rest.find('$') {
        result.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            result.push_str("${");
            rest = after;
            changed = true;
            continue;
        }
        let Some(inner) = tail.strip_prefix("${") else {
            result.push('$');
            rest = &tail[1..];
            continue;
        };
        let Some(end) = inner.find('}') else {
            return Err("`${` without its closing `}`; write `${NAME}` or \
                        `${NAME:-default}` (or `$${` for a literal `${`)"
                .into());
        };
        let (name, default) = match inner[..end].split_once(":-") {
            Some((n, dflt)) => (n, Some(dflt)),
            None => (&inner[..end], None),
        };
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "`${{{}}}`: expected a variable name of letters, digits and `_` \
                 (and `:-default`), e.g. `${{NATS_URL:-nats://127.0.0.1:4222}}`",
                name.escape_debug()
            ));
        }
        match (env(name).filter(|v| !v.is_empty()), default) {
            (Some(value), _) => {
                result.push_str(&value);
                out.0.push((name.to_string(), value));
            }
            (None, Some(dflt)) => result.push_str(dflt),
            (None, None) => {
                return Err(format!(
                    "the environment variable `{name}` is not set; set it, or give a \
                     default: `${{{name}:-value}}`"
                ));
            }
        }
        changed = true;
        rest = &inner[end + 1..];
    }
    result.push_str(rest);
    Ok(changed.then_some(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("broker.example:4222".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn x(s: &str) -> Result<Option<String>, String> {
        expand_str(s, &env, &mut Substituted::default())
    }

    #[test]
    fn expands_defaults_and_escapes() {
        assert_eq!(
            x("nats://${HOST}").unwrap().as_deref(),
            Some("nats://broker.example:4222")
        );
        assert_eq!(x("${NOPE:-a:b}").unwrap().as_deref(), Some("a:b"));
        assert_eq!(x("${EMPTY:-d}").unwrap().as_deref(), Some("d"));
        assert_eq!(x("$${HOST} $5").unwrap().as_deref(), Some("${HOST} $5"));
        assert_eq!(x("price $5").unwrap(), None);
        assert!(x("${NOPE}").unwrap_err().contains("`NOPE` is not set"));
        assert!(x("${HOST").unwrap_err().contains("closing"));
        assert!(x("${9X}").unwrap_err().contains("variable name"));
    }

    #[test]
    fn redacts_substituted_values() {
        let mut s = Substituted::default();
        expand_str("${HOST}", &env, &mut s).unwrap();
        let mut errors = vec![ConfigError {
            line: Some(1),
            column: None,
            key: None,
            message: "bad url \"broker.example:4222\"".into(),
        }];
        s.redact(&mut errors);
        assert_eq!(errors[0].message, "bad url \"${HOST}\"");
    }
}
