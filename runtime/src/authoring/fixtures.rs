//! The fixtures file of `sluice test`: TOML cases, each an input message, the
//! handler's config and budgets, a kv state, injected faults, and what is
//! expected. A fixtures file is untrusted input: every problem is reported
//! with the file, line and key, all at once, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::config::units::{Dur, Size};
use crate::config::{ConfigError, ConfigErrors, line_col};
use crate::failure::FailureClass;

/// Largest fixtures file read.
pub const MAX_FIXTURES_BYTES: u64 = 1 << 20;

/// A whole fixtures file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixtures {
    /// A pipeline file (relative to the fixtures file) whose handler,
    /// budgets, failure policy, breaker and sinks the cases use.
    #[serde(default)]
    pub pipeline: Option<PathBuf>,
    /// The handler (relative to the fixtures file); overrides the pipeline's.
    /// Without a pipeline, the default policy applies.
    #[serde(default)]
    pub plugin: Option<PathBuf>,
    /// Handler config of every case (over the pipeline's).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Budgets of every case (over the pipeline's).
    #[serde(default)]
    pub budgets: Budgets,
    /// The cases, in the order they run.
    #[serde(default, rename = "case")]
    pub cases: Vec<Spanned<Case>>,
}

/// Handler budgets; what is not given keeps the pipeline's value.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    /// Fuel per message.
    pub fuel: Option<u64>,
    /// Wall-clock time per message, e.g. "50ms".
    pub timeout: Option<Dur>,
    /// Linear memory cap, e.g. "16MiB".
    pub memory: Option<Size>,
}

/// One case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the report calls it.
    pub name: String,
    /// The message.
    #[serde(default)]
    pub input: Input,
    /// Handler config of this case (over the file's).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Budgets of this case (over the file's).
    #[serde(default)]
    pub budgets: Budgets,
    /// Entries in the handler's kv store before the message arrives.
    #[serde(default)]
    pub kv: BTreeMap<String, String>,
    /// Faults injected around the handler (only with `expect.outcome`).
    #[serde(default)]
    pub faults: Faults,
    /// What must happen.
    pub expect: Spanned<Expect>,
}

/// The input message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The payload (UTF-8 text).
    #[serde(default)]
    pub payload: String,
    /// The key.
    #[serde(default)]
    pub key: Option<String>,
    /// The topic it comes from.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Headers, name → value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The attempt the handler sees (2 = a redelivery).
    #[serde(default = "one")]
    pub attempt: u32,
    /// A request waiting for a reply (NATS request/reply). Default: when
    /// the pipeline's source is a `nats` source with `request_reply`.
    #[serde(default)]
    pub request: Option<bool>,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            payload: String::new(),
            key: None,
            topic: default_topic(),
            headers: BTreeMap::new(),
            attempt: 1,
            request: None,
        }
    }
}

fn default_topic() -> String {
    "test".to_string()
}
fn one() -> u32 {
    1
}

/// How an injected sink fault fails a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkFault {
    /// The broker is away: a `sink` failure (transient).
    Transient,
    /// The broker refuses this record for good: `rejected`.
    Rejected,
}

/// Faults injected around the handler.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Every output sink fails its publishes so.
    pub sink: Option<SinkFault>,
    /// Publishes that fail before the sink works again (default: all).
    pub times: Option<u32>,
    /// The dead-letter sink fails so.
    pub dead_letter: Option<SinkFault>,
    /// `"open"`: the circuit breaker is open when the message arrives.
    pub breaker: Option<BreakerFault>,
}

/// The circuit breaker's state when the message arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerFault {
    Open,
}

/// What the broker sees in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Settled after its outputs were accepted.
    Acked,
    /// Its dead-letter record was written, then it was settled.
    DeadLettered,
    /// The policy dropped it (settled without outputs).
    Dropped,
    /// The circuit breaker opened: the message was handed back (or never taken).
    Held,
    /// Handed back to the broker for a later delivery.
    Redelivered,
    /// The policy stopped the pipeline; the message stays at the broker.
    Stopped,
    /// A request, answered (`reply`: the handler's first output, the
    /// fallback, or an error reply).
    Answered,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Acked => "acked",
            Outcome::DeadLettered => "dead-lettered",
            Outcome::Dropped => "dropped",
            Outcome::Held => "held",
            Outcome::Redelivered => "redelivered",
            Outcome::Stopped => "stopped",
            Outcome::Answered => "answered",
        }
    }
}

/// What a case expects. A single call (`outputs`, or `failure` with an
/// optional `message`), or, with `outcome`, a run through the pipeline's
/// policy (`attempts`, `class`, and the `outputs` the sinks accepted).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The outputs, in order; fields left out are not compared.
    pub outputs: Option<Vec<ExpectOutput>>,
    /// The failure class of a single call.
    pub failure: Option<FailureClass>,
    /// A substring of the failure's message.
    pub message: Option<String>,
    /// The outcome through the pipeline's policy.
    pub outcome: Option<Outcome>,
    /// The attempt number the message reached.
    pub attempts: Option<u32>,
    /// The class of its last failure.
    pub class: Option<FailureClass>,
    /// The payload of a request's reply (with `outcome = "answered"`).
    pub reply: Option<String>,
}

/// One expected output; a field left out is not compared.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectOutput {
    pub sink: Option<String>,
    pub topic: Option<String>,
    pub key: Option<String>,
    /// Exactly these headers (name → value).
    pub headers: Option<BTreeMap<String, String>>,
    pub payload: Option<String>,
}

impl Case {
    /// True when the case runs through the pipeline's policy.
    pub fn through_pipeline(&self) -> bool {
        self.expect.get_ref().outcome.is_some()
    }
}

/// Reads and checks a fixtures file: every problem with its line and key.
pub fn load(path: &Path) -> Result<Fixtures, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        file: path.to_path_buf(),
        errors,
    };
    let text = crate::files::read_regular_text(path, MAX_FIXTURES_BYTES).map_err(|e| {
        fail(vec![ConfigError {
            line: None,
            column: None,
            key: None,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    let mut f: Fixtures = toml::from_str(&text).map_err(|e| {
        let at = e.span().map(|s| line_col(&text, s.start));
        fail(vec![ConfigError {
            line: at.map(|a| a.0),
            column: at.map(|a| a.1),
            key: e.span().and_then(|s| case_at(&text, s.start)),
            message: e.message().trim().to_string(),
        }])
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [&mut f.pipeline, &mut f.plugin].into_iter().flatten() {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    let errors = check(&text, &f);
    if errors.is_empty() {
        Ok(f)
    } else {
        Err(fail(errors))
    }
}

/// Problems serde cannot see: what a case must and may say together.
fn check(text: &str, f: &Fixtures) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |offset: Option<usize>, key: String, message: &str| {
        let at = offset.map(|o| line_col(text, o));
        errors.push(ConfigError {
            line: at.map(|a| a.0),
            column: at.map(|a| a.1),
            key: Some(key),
            message: message.to_string(),
        });
    };
    if f.pipeline.is_none() && f.plugin.is_none() {
        err(
            None,
            "pipeline".into(),
            "give `pipeline` (a pipeline file) or `plugin` (a .wasm handler)",
        );
    }
    if f.cases.is_empty() {
        err(None, "case".into(), "no [[case]]: nothing to test");
    }
    for (i, c) in f.cases.iter().enumerate() {
        let key = format!("case[{i}]");
        let case = c.get_ref();
        let at = Some(c.span().start);
        let e = case.expect.get_ref();
        let eat = Some(case.expect.span().start);
        if case.name.trim().is_empty() {
            err(at, format!("{key}.name"), "a case needs a name");
        }
        if case.input.attempt == 0 {
            err(at, format!("{key}.input.attempt"), "attempts count from 1");
        }
        if e.outcome.is_some() {
            if e.failure.is_some() || e.message.is_some() {
                err(
                    eat,
                    format!("{key}.expect"),
                    "`failure`/`message` are for a single call; with `outcome`, use `class`",
                );
            }
        } else {
            if e.outputs.is_some() == e.failure.is_some() {
                err(
                    eat,
                    format!("{key}.expect"),
                    "expect `outputs` or a `failure` (or an `outcome` through the pipeline)",
                );
            }
            if e.message.is_some() && e.failure.is_none() {
                err(eat, format!("{key}.expect.message"), "needs `failure`");
            }
            if e.attempts.is_some() || e.class.is_some() || e.reply.is_some() {
                err(
                    eat,
                    format!("{key}.expect"),
                    "`attempts`, `class` and `reply` need an `outcome`",
                );
            }
            let fl = &case.faults;
            if fl.sink.is_some() || fl.dead_letter.is_some() || fl.breaker.is_some() {
                err(
                    at,
                    format!("{key}.faults"),
                    "faults act on the pipeline: expect an `outcome`",
                );
            }
        }
        if case.faults.times.is_some() && case.faults.sink.is_none() {
            err(at, format!("{key}.faults.times"), "needs `sink`");
        }
    }
    errors
}

/// `case[N]` when `offset` lies after the N-th `[[case]]` header (0-based).
fn case_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset.min(text.len()))?;
    let n = before
        .lines()
        .filter(|l| l.trim_start().starts_with("[[case]]"))
        .count();
    (n > 0).then(|| format!("case[{}]", n - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Fixtures, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f.toml");
        std::fs::write(&p, text).expect("write");
        load(&p).map_err(|e| e.to_string().replace(&*dir.path().to_string_lossy(), "D"))
    }

    #[test]
    fn a_good_file_loads() {
        let f = load_text(
            "plugin = \"h.wasm\"\n[[case]]\nname = \"a\"\ninput = { payload = \"x\", attempt = 2 }\n\
             expect.outputs = [{ payload = \"X\" }]\n[[case]]\nname = \"b\"\n\
             faults = { sink = \"transient\", times = 2 }\nexpect = { outcome = \"acked\", attempts = 3 }\n",
        )
        .expect("loads");
        assert_eq!(f.cases.len(), 2);
        assert!(f.cases[1].get_ref().through_pipeline());
        assert_eq!(f.cases[0].get_ref().input.attempt, 2);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = load_text("plugin = \"h.wasm\"\n[[case]]\nname = \"a\"\ninput = { paylod = \"x\" }\nexpect.outputs = []\n")
            .unwrap_err();
        assert!(e.starts_with("D/f.toml:4:"), "{e}");
        assert!(e.contains("case[0]") && e.contains("paylod"), "{e}");

        let e = load_text(
            "plugin = \"h.wasm\"\n[[case]]\nname = \"a\"\nexpect = { failure = \"fatal\", attempts = 2 }\n\
             [[case]]\nname = \"b\"\nfaults = { sink = \"down\" }\nexpect = { outcome = \"acked\" }\n",
        )
        .unwrap_err();
        assert!(e.contains("case[1]") && e.contains(":7:"), "{e}");

        let e = load_text(
            "plugin = \"h.wasm\"\n[[case]]\nname = \"a\"\nfaults = { sink = \"rejected\" }\nexpect = { failure = \"fatal\", attempts = 2 }\n",
        )
        .unwrap_err();
        assert!(
            e.contains("D/f.toml:5:") && e.contains("case[0].expect: `attempts`"),
            "{e}"
        );
        assert!(
            e.contains("case[0].faults: faults act on the pipeline"),
            "{e}"
        );

        let e = load_text("[[case]]\nname = \"\"\nexpect = {}\n").unwrap_err();
        assert!(
            e.contains("pipeline: give") && e.contains("case[0].name"),
            "{e}"
        );
        // Deep nesting and huge numbers are errors, not panics.
        let deep = format!("x = {}{}", "[".repeat(5000), "]".repeat(5000));
        assert!(load_text(&deep).is_err());
        assert!(load_text("plugin = \"h\"\n[[case]]\nname = \"a\"\ninput = { attempt = 99999999999 }\nexpect.outputs = []\n").is_err());
    }
}
