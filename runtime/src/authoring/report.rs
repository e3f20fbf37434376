//! Judges a case's result against what it expects: the differences, one
//! line each (`expected …, got …`), and the result as JSON for `--json`.

use bytes::Bytes;
use serde_json::{Value, json};

use super::fixtures::{Expect, ExpectOutput};
use super::harness::Got;
use crate::message::Output;

/// Text for a report: UTF-8 as it is, other bytes escaped.
fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap_or_else(|_| b.escape_ascii().to_string())
}

fn opt_text(b: Option<&Bytes>) -> String {
    b.map_or("none".to_string(), |b| format!("{:?}", text(b)))
}

fn opt_str(s: Option<&str>) -> String {
    s.map_or("none".to_string(), |s| format!("{s:?}"))
}

/// The differences between what `expect` says and `got`; empty = passed.
pub fn judge(expect: &Expect, got: &Got) -> Vec<String> {
    let mut diff = Vec::new();
    match got {
        Got::Error(e) => diff.push(e.clone()),
        Got::Outputs(outs) => {
            if let Some(class) = expect.failure {
                diff.push(format!(
                    "expected a `{class}` failure, got {} output(s)",
                    outs.len()
                ));
            }
            if let Some(want) = &expect.outputs {
                outputs(want, outs, &mut diff);
            }
        }
        Got::Failed(f) => match expect.failure {
            Some(class) => {
                if class != f.class {
                    diff.push(format!("expected a `{class}` failure, got {f}"));
                }
                if let Some(m) = &expect.message
                    && !f.message.contains(m.as_str())
                {
                    diff.push(format!(
                        "expected the message to contain {m:?}, got {:?}",
                        f.message
                    ));
                }
            }
            None => diff.push(format!("expected outputs, got {f}")),
        },
        Got::Pipeline {
            outcome,
            attempts,
            class,
            outputs: outs,
            reply,
            ..
        } => {
            if let Some(want) = &expect.reply {
                let got = reply
                    .as_ref()
                    .map_or("no reply".to_string(), |(p, _)| format!("{:?}", text(p)));
                if format!("{want:?}") != got {
                    diff.push(format!("reply: expected {want:?}, got {got}"));
                }
            }
            if let Some(want) = expect.outcome
                && want != *outcome
            {
                diff.push(format!(
                    "expected outcome {}, got {}",
                    want.as_str(),
                    outcome.as_str()
                ));
            }
            if let Some(want) = expect.attempts
                && want != *attempts
            {
                diff.push(format!("expected {want} attempt(s), got {attempts}"));
            }
            if let Some(want) = expect.class
                && Some(want) != *class
            {
                diff.push(format!(
                    "expected class {want}, got {}",
                    class.map_or("none", |c| c.as_str())
                ));
            }
            if let Some(want) = &expect.outputs {
                outputs(want, outs, &mut diff);
            }
        }
    }
    diff
}

fn outputs(want: &[ExpectOutput], got: &[Output], diff: &mut Vec<String>) {
    if want.len() != got.len() {
        diff.push(format!(
            "expected {} output(s), got {}",
            want.len(),
            got.len()
        ));
    }
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        let mut field = |name: &str, want: String, got: String| {
            if want != got {
                diff.push(format!("outputs[{i}].{name}: expected {want}, got {got}"));
            }
        };
        if let Some(p) = &w.payload {
            field(
                "payload",
                format!("{p:?}"),
                format!("{:?}", text(&g.payload)),
            );
        }
        if let Some(k) = &w.key {
            field("key", format!("{k:?}"), opt_text(g.key.as_ref()));
        }
        if let Some(t) = &w.topic {
            field("topic", format!("{t:?}"), opt_str(g.topic.as_deref()));
        }
        if let Some(s) = &w.sink {
            field("sink", format!("{s:?}"), opt_str(g.sink.as_deref()));
        }
        if let Some(h) = &w.headers {
            let got: std::collections::BTreeMap<String, String> = g
                .headers
                .iter()
                .map(|h| (h.key.clone(), text(&h.value)))
                .collect();
            field("headers", format!("{h:?}"), format!("{got:?}"));
        }
    }
}

fn output_json(o: &Output) -> Value {
    json!({
        "sink": o.sink,
        "topic": o.topic,
        "key": o.key.as_ref().map(|k| text(k)),
        "headers": o.headers.iter().map(|h| (h.key.clone(), Value::String(text(&h.value)))).collect::<serde_json::Map<_, _>>(),
        "payload": text(&o.payload),
    })
}

/// One JSON object for a case.
pub fn json(name: &str, got: &Got, diff: &[String]) -> Value {
    let mut v = json!({ "case": name, "ok": diff.is_empty(), "diff": diff });
    let extra = match got {
        Got::Outputs(o) => json!({ "outputs": o.iter().map(output_json).collect::<Vec<_>>() }),
        Got::Failed(f) => json!({ "failure": f.class.as_str(), "message": f.message }),
        Got::Error(e) => json!({ "error": e }),
        Got::Pipeline {
            outcome,
            attempts,
            class,
            outputs,
            dead_letter,
            reply,
        } => json!({
            "reply": reply.as_ref().map(|(p, c)| json!({ "payload": text(p), "class": c })),
            "outcome": outcome.as_str(),
            "attempts": attempts,
            "class": class.map(|c| c.as_str()),
            "outputs": outputs.iter().map(output_json).collect::<Vec<_>>(),
            "dead_letter": dead_letter.as_ref().map(|r| json!({
                "headers": r.headers.iter().map(|h| (h.key.clone(), Value::String(text(&h.value)))).collect::<serde_json::Map<_, _>>(),
                "payload": text(&r.payload),
            })),
        }),
    };
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

/// A short text of what happened, for a passing case's line.
pub fn summary(got: &Got) -> String {
    match got {
        Got::Outputs(o) => format!("{} output(s)", o.len()),
        Got::Failed(f) => f.class.to_string(),
        Got::Error(_) => "error".into(),
        Got::Pipeline {
            outcome, attempts, ..
        } => format!("{} after {attempts} attempt(s)", outcome.as_str()),
    }
}
