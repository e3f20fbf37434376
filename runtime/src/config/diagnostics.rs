//! Errors of a pipeline file: each names the file, the line, the key and what was expected.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line of the offending key or value, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted key path, e.g. `handler.timeout`, when the problem has one.
    pub key: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Every problem found in one pipeline file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    /// The pipeline file, as it was named to [`load`](super::load) or [`parse`](super::parse).
    pub file: PathBuf,
    /// The problems, ordered by position in the file (those without one first).
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = e.line {
                write!(f, ":{line}")?;
                if let Some(col) = e.column {
                    write!(f, ":{col}")?;
                }
            }
            write!(f, ": ")?;
            if let Some(key) = &e.key {
                write!(f, "{key}: ")?;
            }
            write!(f, "{}", e.message)?;
        }
        Ok(())
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the document root to a key, shown as `sinks.alerts.path`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(pub(crate) Vec<Seg>);

impl KeyPath {
    /// The path made of these keys.
    pub(crate) fn of(keys: &[&str]) -> KeyPath {
        KeyPath(keys.iter().map(|k| Seg::Key((*k).to_string())).collect())
    }

    /// This path followed by `key`.
    pub(crate) fn key(&self, key: &str) -> KeyPath {
        self.join(&[Seg::Key(key.to_string())])
    }

    /// This path followed by `rest`.
    pub(crate) fn join(&self, rest: &[Seg]) -> KeyPath {
        let mut segs = self.0.clone();
        segs.extend_from_slice(rest);
        KeyPath(segs)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Collects the problems of one file, turning byte offsets into lines and columns.
pub(crate) struct Diag<'t> {
    text: &'t str,
    errors: Vec<ConfigError>,
    keys: Vec<String>,
}

impl<'t> Diag<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        Diag {
            text,
            errors: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// Records a problem at `key` (none for the whole file), located at `span` when known.
    pub(crate) fn error(
        &mut self,
        key: Option<&KeyPath>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let (line, column) = span
            .map(|s| line_col(self.text, s.start))
            .map_or((None, None), |(l, c)| (Some(l), Some(c)));
        let key = key.filter(|k| !k.0.is_empty()).map(ToString::to_string);
        if let Some(k) = &key {
            self.keys.push(k.clone());
        }
        self.errors.push(ConfigError {
            line,
            column,
            key,
            message: message.into(),
        });
    }

    /// Whether a problem was already recorded at `key` or inside it (so rules
    /// about it would only repeat it, or judge a default that replaced it).
    pub(crate) fn has_error_at(&self, key: &KeyPath) -> bool {
        let key = key.to_string();
        self.keys.iter().any(|k| {
            k == &key
                || k.strip_prefix(key.as_str())
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The problems in file order (those without a position first).
    pub(crate) fn finish(mut self, file: &Path) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors {
            file: file.to_path_buf(),
            errors: self.errors,
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// `:line:column` of the value at `keys` in a pipeline file's `text` (or of
/// the nearest table written, when the key is not), for a problem found
/// after parsing (loading the plugin it names); empty when unknown.
pub fn position_of(text: &str, keys: &[&str]) -> String {
    let (root, _) = DeTable::parse_recoverable(text);
    span_at(&root, &KeyPath::of(keys))
        .map(|s| {
            let (line, column) = line_col(text, s.start);
            format!(":{line}:{column}")
        })
        .unwrap_or_default()
}

/// The first line nested deepest (dotted keys, table headers, arrays and
/// inline tables), as a span: where a "recursion limit" error, which the
/// TOML reader gives without a position, comes from.
pub(crate) fn deepest_line(text: &str) -> Option<Range<usize>> {
    let mut best: Option<(usize, Range<usize>)> = None;
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let (mut depth, mut most, mut quoted) = (0usize, 0usize, None);
        for c in line.chars() {
            match (quoted, c) {
                (Some(q), c) if c == q => quoted = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quoted = Some(c),
                (None, '#') => break,
                (None, '.' | '[' | '{') => {
                    depth += 1;
                    most = most.max(depth);
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        if best.as_ref().is_none_or(|(d, _)| most > *d) {
            best = Some((most, start..start + line.len().min(1)));
        }
        start += line.len();
    }
    best.map(|(_, span)| span)
}

/// The path, relative to `value`, of the key or value whose span is exactly
/// `span` (the deepest one): where a deserialization error happened.
pub(crate) fn find_path(value: &Spanned<DeValue<'_>>, span: &Range<usize>) -> Option<Vec<Seg>> {
    match value.get_ref() {
        DeValue::Table(t) => {
            for (k, v) in t.iter() {
                if let Some(mut rest) = find_path(v, span) {
                    rest.insert(0, Seg::Key(k.get_ref().to_string()));
                    return Some(rest);
                }
                if k.span() == *span {
                    return Some(vec![Seg::Key(k.get_ref().to_string())]);
                }
            }
        }
        DeValue::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                if let Some(mut rest) = find_path(v, span) {
                    rest.insert(0, Seg::Index(i));
                    return Some(rest);
                }
            }
        }
        _ => {}
    }
    (value.span() == *span).then(Vec::new)
}

/// The span of the value at `path`, or of its nearest ancestor that is in the
/// file (a table header) when the key itself is not written (a default).
pub(crate) fn span_at(root: &Spanned<DeTable<'_>>, path: &KeyPath) -> Option<Range<usize>> {
    let mut table = Some(root.get_ref());
    let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
    let mut found = None;
    for seg in &path.0 {
        let next = match seg {
            Seg::Key(k) => table.and_then(|t| t.get(k.as_str())),
            Seg::Index(i) => array.and_then(|a| a.get(*i)),
        };
        let Some(next) = next else { break };
        found = Some(next.span());
        table = next.get_ref().as_table();
        array = next.get_ref().as_array().map(|a| &a[..]);
    }
    found
}

/// Rewrites serde's messages in the words of a TOML file.
pub(crate) fn polish(message: &str) -> String {
    if let Some(field) = message.strip_prefix("missing field ") {
        return format!("missing key {field}");
    }
    let mut m = match message.strip_prefix("unknown field ") {
        Some(rest) => format!("unknown key {rest}"),
        None => message.to_string(),
    };
    const EXPECTED: [(&str, &str); 8] = [
        ("usize", "a non-negative integer"),
        ("u64", "a non-negative integer"),
        ("u32", "a non-negative integer"),
        ("f64", "a number"),
        ("path string", "a path (a string)"),
        ("a map", "a table"),
        ("a boolean", "a boolean (`true` or `false`)"),
        ("a sequence", "an array"),
    ];
    for (serde, ours) in EXPECTED {
        let suffix = format!("expected {serde}");
        if let Some(head) = m.strip_suffix(suffix.as_str()) {
            m = format!("{head}expected {ours}");
            break;
        }
    }
    if let Some(at) = m.find("expected struct ") {
        m.truncate(at);
        m.push_str("expected a table");
    }
    m
}

/// A TOML syntax error's message, naming the duplicated key when there is one.
pub(crate) fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message();
    let message = message
        .strip_suffix(", expected nothing")
        .unwrap_or(message);
    let key = e.span().and_then(|s| text.get(s)).filter(|k| !k.is_empty());
    match key {
        Some(key) if message == "duplicate key" => format!("duplicate key `{key}`"),
        _ if message.contains("recursion limit") => {
            "keys, arrays or inline tables nested too deeply for the TOML reader (recursion limit)"
                .to_string()
        }
        _ => message.to_string(),
    }
}

/// The field named by serde's "missing field `x`" message.
pub(crate) fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
}

/// `` `a`, `b`, `c` ``: a list of names for a message.
pub(crate) fn one_of<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
