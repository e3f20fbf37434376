//! Parses `<RFC 3339 timestamp> <LEVEL> [<service>] <message> [k=v ...]` and renders it as JSON.
//!
//! Plain functions with no host calls, so `cargo test-host -p log-parser` tests them natively.

/// A log level, ordered from least to most severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl Level {
    /// Parses a level name in any case (`ERROR`, `error`, `Error`).
    pub fn parse(name: &str) -> Option<Level> {
        const ALL: [Level; 6] = [
            Level::Trace,
            Level::Debug,
            Level::Info,
            Level::Warn,
            Level::Error,
            Level::Fatal,
        ];
        ALL.into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(name))
    }

    /// The lower-case name used in the JSON and in the `level` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }
}

/// One parsed line; every string borrows from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub ts: &'a str,
    pub level: Level,
    pub service: &'a str,
    pub message: &'a str,
    /// Trailing `k=v` tokens in line order; a repeated key keeps its first place, last value.
    pub fields: Vec<(&'a str, &'a str)>,
}

const PREFIX: &str = "malformed log line";

/// Parses one line (a trailing `\n` or `\r\n` is ignored). The error is the precise cause.
pub fn parse_line(bytes: &[u8]) -> Result<Record<'_>, String> {
    let line = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "{PREFIX}: not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        )
    })?;
    let line = line.trim_end_matches(['\n', '\r']).trim_start();
    if line.trim_end().is_empty() {
        return Err(format!("{PREFIX}: empty line"));
    }

    let (ts, rest) = next_token(line);
    if !is_rfc3339(ts) {
        return Err(format!(
            "{PREFIX}: expected an RFC 3339 timestamp (like 2026-11-26T09:15:02.123Z) at the start, found {}",
            shown(ts)
        ));
    }

    let (level_name, rest) = next_token(rest);
    let level = Level::parse(level_name).ok_or_else(|| {
        format!(
            "{PREFIX}: expected a level (TRACE|DEBUG|INFO|WARN|ERROR|FATAL) after the timestamp, found {}",
            shown(level_name)
        )
    })?;

    let (service, rest) = service(rest)?;
    let (message, fields) = split_fields(rest.trim());
    Ok(Record {
        ts,
        level,
        service,
        message,
        fields,
    })
}

/// Renders the record as one JSON object, byte for byte the same for the same line.
pub fn to_json(r: &Record<'_>) -> String {
    let mut out = String::with_capacity(64 + r.message.len());
    out.push_str("{\"ts\":");
    push_json_str(&mut out, r.ts);
    out.push_str(",\"level\":");
    push_json_str(&mut out, r.level.as_str());
    out.push_str(",\"service\":");
    push_json_str(&mut out, r.service);
    out.push_str(",\"message\":");
    push_json_str(&mut out, r.message);
    out.push_str(",\"fields\":{");
    for (i, (k, v)) in r.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, k);
        out.push(':');
        push_json_str(&mut out, v);
    }
    out.push_str("}}");
    out
}

/// Splits off the first whitespace-separated token; leading whitespace of the rest is kept.
fn next_token(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// `[service]` after the level: non-empty, closed, followed by whitespace or the end.
fn service(rest: &str) -> Result<(&str, &str), String> {
    let rest = rest.trim_start();
    let Some(inner) = rest.strip_prefix('[') else {
        let (found, _) = next_token(rest);
        return Err(format!(
            "{PREFIX}: expected \"[service]\" after the level, found {}",
            shown(found)
        ));
    };
    let Some(close) = inner.find(']') else {
        return Err(format!(
            "{PREFIX}: \"[\" opens the service name but no \"]\" closes it"
        ));
    };
    let (name, after) = (&inner[..close], &inner[close + 1..]);
    if name.trim().is_empty() {
        return Err(format!(
            "{PREFIX}: the service name between \"[\" and \"]\" is empty"
        ));
    }
    if !after.is_empty() && !after.starts_with(char::is_whitespace) {
        return Err(format!(
            "{PREFIX}: expected a space after \"[{name}]\", found {}",
            shown(after)
        ));
    }
    Ok((name, after))
}

/// Peels `k=v` tokens off the end of the message; returns the rest of the text and the fields.
fn split_fields(mut message: &str) -> (&str, Vec<(&str, &str)>) {
    let mut found = Vec::new();
    loop {
        let (head, last) = match message.rsplit_once(char::is_whitespace) {
            Some((head, last)) => (head.trim_end(), last),
            None => ("", message),
        };
        match field(last) {
            Some(kv) => {
                found.push(kv);
                message = head;
            }
            None => break,
        }
        if message.is_empty() {
            break;
        }
    }
    let mut fields: Vec<(&str, &str)> = Vec::with_capacity(found.len());
    for (k, v) in found.into_iter().rev() {
        match fields.iter_mut().find(|(seen, _)| *seen == k) {
            Some(slot) => slot.1 = v,
            None => fields.push((k, v)),
        }
    }
    (message, fields)
}

/// `key=value` with a key of letters, digits, `_`, `.` or `-`; the value may be empty.
fn field(token: &str) -> Option<(&str, &str)> {
    let (k, v) = token.split_once('=')?;
    let key_ok = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    key_ok.then_some((k, v))
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, with real month, day and time ranges.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |at: usize, len: usize| -> Option<u32> {
        let digits = b.get(at..at + len)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let sep = |at: usize, want: &[u8]| b.get(at).is_some_and(|c| want.contains(c));
    let (Some(year), Some(month), Some(day), Some(h), Some(m), Some(sec)) = (
        num(0, 4),
        num(5, 2),
        num(8, 2),
        num(11, 2),
        num(14, 2),
        num(17, 2),
    ) else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return false;
    }
    if !((1..=12).contains(&month) && day >= 1 && day <= days[month as usize - 1]) {
        return false;
    }
    if h > 23 || m > 59 || sec > 60 {
        return false;
    }
    let mut i = 19;
    if sep(i, b".") {
        let frac = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if frac == 0 {
            return false;
        }
        i += 1 + frac;
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i + 6 == b.len()
                && sep(i + 3, b":")
                && num(i + 1, 2).is_some_and(|oh| oh <= 23)
                && num(i + 4, 2).is_some_and(|om| om <= 59)
        }
        _ => false,
    }
}

/// A token quoted for an error message, cut to 64 characters; or "end of line".
fn shown(token: &str) -> String {
    if token.is_empty() {
        return "end of line".to_owned();
    }
    match token.char_indices().nth(64) {
        Some((cut, _)) => format!("{:?}...", &token[..cut]),
        None => format!("{token:?}"),
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
