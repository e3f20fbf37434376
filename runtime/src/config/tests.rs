//! Unit tests of parsing and of each validation rule.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// A valid pipeline; tests append to it or replace lines in it.
const BASE: &str = r#"name = "t"

[source]
type = "file"
path = "in.jsonl"

[handler]
plugin = "echo.wasm"

[dead_letter]
type = "file"
path = "dead.jsonl"
"#;

/// The `file` source of a config (the only source type the tests use).
#[allow(unreachable_patterns)]
fn file_source(c: &PipelineConfig) -> &FileSourceConfig {
    match &c.source {
        SourceConfig::File(f) => f,
        _ => panic!("not a file source"),
    }
}

fn parse_str(text: &str) -> Result<PipelineConfig, ConfigErrors> {
    parse(Path::new("dir/p.toml"), text)
}

/// The errors of `BASE` followed by `extra`, as `(line, key, message)`.
fn errors(text: &str) -> Vec<(Option<usize>, Option<String>, String)> {
    match parse_str(text) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .errors
            .into_iter()
            .map(|e| (e.line, e.key, e.message))
            .collect(),
    }
}

/// The keys of the errors of `BASE` with `extra` appended.
fn keys_with(extra: &str) -> Vec<String> {
    errors(&format!("{BASE}{extra}"))
        .into_iter()
        .map(|(_, k, _)| k.unwrap_or_default())
        .collect()
}

/// `BASE` with `[handler]` getting `line`.
fn handler_with(line: &str) -> String {
    BASE.replace(
        "plugin = \"echo.wasm\"\n",
        &format!("plugin = \"echo.wasm\"\n{line}\n"),
    )
}

#[test]
fn base_is_valid_and_paths_are_resolved() {
    let c = parse_str(BASE).expect("valid");
    assert_eq!(c.name, "t");
    assert_eq!(c.handler.plugin, PathBuf::from("dir/echo.wasm"));
    let f = file_source(&c);
    assert_eq!(f.path, PathBuf::from("dir/in.jsonl"));
    assert!(
        matches!(&c.dead_letter, Some(SinkConfig::File(s)) if s.path == Path::new("dir/dead.jsonl"))
    );
}

#[test]
fn stdin_and_absolute_paths_stay() {
    let text = BASE
        .replace("\"in.jsonl\"", "\"-\"")
        .replace("\"dead.jsonl\"", "\"/tmp/dead.jsonl\"");
    let c = parse_str(&text).expect("valid");
    let f = file_source(&c);
    assert_eq!(f.path, PathBuf::from("-"));
    assert!(
        matches!(&c.dead_letter, Some(SinkConfig::File(s)) if s.path == Path::new("/tmp/dead.jsonl"))
    );
}

#[test]
fn syntax_error_has_position() {
    let e = errors("name = \"t\"\n[handler\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].0, Some(2));
    assert_eq!(e[0].1, None);
}

#[test]
fn unknown_keys_everywhere_are_all_reported() {
    let text = handler_with("tmeout = \"1s\"\nfoo = 1") + "\n[extra]\n";
    let e = errors(&text);
    let keys: Vec<_> = e.iter().map(|e| e.1.clone().unwrap_or_default()).collect();
    assert_eq!(keys, ["handler.tmeout", "handler.foo", "extra"], "{e:?}");
    assert!(
        e[0].2
            .starts_with("unknown key `tmeout`, expected one of `plugin`")
    );
    assert_eq!(e[0].0, Some(9));
}

#[test]
fn missing_key_names_table_and_header_line() {
    let text = BASE.replace("path = \"in.jsonl\"\n", "");
    let e = errors(&text);
    assert_eq!(
        e,
        [(
            Some(3),
            Some("source".to_string()),
            "missing key `path`".to_string()
        )]
    );
}

#[test]
fn wrong_value_is_not_also_missing() {
    let text = BASE.replace("path = \"in.jsonl\"", "path = 5");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].1.as_deref(), Some("source.path"));
}

#[test]
fn unknown_type_lists_valid_types() {
    let text = BASE.replace("type = \"file\"\npath = \"in.jsonl\"", "type = \"mqttt\"");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].1.as_deref(), Some("source.type"));
    assert_eq!(
        e[0].2,
        "unknown type `mqttt`, expected one of `file`, `kafka`, `mqtt`, `nats`, `jetstream`"
    );
}

#[test]
fn name_rules() {
    let bad = |name: &str| errors(&BASE.replace("name = \"t\"", &format!("name = {name:?}")));
    assert!(bad("a-b_c.1").is_empty());
    assert_eq!(bad("")[0].1.as_deref(), Some("name"));
    assert!(bad("a b")[0].2.contains("invalid character ' '"));
    assert!(!bad("ü").is_empty());
}

#[test]
fn handler_limits() {
    let key_of = |line: &str| {
        errors(&handler_with(line))
            .into_iter()
            .map(|e| e.1.unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!(key_of("concurrency = 0"), ["handler.concurrency"]);
    assert_eq!(key_of("fuel = 0"), ["handler.fuel"]);
    assert_eq!(key_of("timeout = \"0s\""), ["handler.timeout"]);
    assert_eq!(key_of("memory = \"63KiB\""), ["handler.memory"]);
    assert_eq!(key_of("memory = \"5GiB\""), ["handler.memory"]);
    assert!(key_of("memory = \"64KiB\"").is_empty());
    assert!(key_of("memory = \"4GiB\"").is_empty());
    assert!(key_of("concurrency = 1\nfuel = 1").is_empty());
    assert_eq!(key_of("concurrency = 1000000000"), ["handler.concurrency"]);
    assert!(key_of("concurrency = 64").is_empty());
    assert_eq!(
        key_of("publish_window = 100000000"),
        ["handler.publish_window"]
    );
    assert_eq!(key_of("max_outputs = 0"), ["handler.max_outputs"]);
    assert_eq!(key_of("max_outputs = 100001"), ["handler.max_outputs"]);
    assert_eq!(key_of("retry_after = 1").len(), 1, "unknown key");
}

#[test]
fn absurd_durations_are_refused_with_their_key() {
    for line in [
        "timeout = \"92233720368547758s\"",
        "timeout = \"300000000000y\"",
    ] {
        assert_eq!(errors(&handler_with(line)).len(), 1, "{line}");
    }
    let e = keys_with("[retry]\nmax = \"300000000000y\"\n");
    assert_eq!(e, ["retry.max"]);
    let e = keys_with("[circuit_breaker]\nopen_for = \"1000y\"\n");
    assert_eq!(e, ["circuit_breaker.open_for"]);
}

#[test]
fn retry_rules() {
    assert_eq!(
        keys_with("[retry]\nmax_attempts = 0\n"),
        ["retry.max_attempts"]
    );
    assert_eq!(
        keys_with("[retry]\nmultiplier = 0.9\n"),
        ["retry.multiplier"]
    );
    assert_eq!(
        keys_with("[retry]\nmultiplier = nan\n"),
        ["retry.multiplier"]
    );
    assert!(keys_with("[retry]\nmultiplier = 1.0\nmax_attempts = 1\n").is_empty());
    assert_eq!(keys_with("[retry]\ninitial = \"2m\"\n"), ["retry.initial"]);
    assert!(keys_with("[retry]\ninitial = \"1m\"\nmax = \"1m\"\n").is_empty());
    // A bad `max` is reported once, not again as "initial > max".
    assert_eq!(
        keys_with("[retry]\ninitial = \"2m\"\nmax = \"soon\"\n"),
        ["retry.max"]
    );
}

#[test]
fn exhausted_must_not_retry() {
    assert_eq!(
        keys_with("[errors]\nexhausted = \"retry\"\n"),
        ["errors.exhausted"]
    );
    assert!(keys_with("[errors]\nexhausted = \"stop\"\n").is_empty());
}

#[test]
fn dead_letter_needed_only_when_used() {
    let without = BASE.replace(
        "[dead_letter]\ntype = \"file\"\npath = \"dead.jsonl\"\n",
        "",
    );
    let e = errors(&without);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].1.as_deref(), Some("errors"));
    assert!(e[0].2.contains("`fatal` (by default)"), "{}", e[0].2);
    assert!(e[0].2.contains("`exhausted` (by default)"), "{}", e[0].2);
    let all_drop = format!(
        "{without}[errors]\nfatal = \"drop\"\ntrap = \"drop\"\nfuel = \"drop\"\nmemory = \"drop\"\n\
         rejected = \"drop\"\ndecode = \"stop\"\nexhausted = \"drop\"\n"
    );
    assert!(errors(&all_drop).is_empty());
    let one = all_drop.replace("fuel = \"drop\"", "fuel = \"dead-letter\"");
    let e = errors(&one);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].2.starts_with("`fuel` maps to"), "{}", e[0].2);
    assert_eq!(e[0].0, Some(13), "points at `fuel`");
}

#[test]
fn breaker_rules() {
    assert_eq!(
        keys_with(
            "[circuit_breaker]\nfailure_threshold = 0\nsuccess_threshold = 0\nopen_for = \"0s\"\n"
        ),
        [
            "circuit_breaker.failure_threshold",
            "circuit_breaker.success_threshold",
            "circuit_breaker.open_for"
        ]
    );
}

#[test]
fn dedup_rules() {
    for ok in ["key", "payload", "header:Nats-Msg-Id"] {
        assert!(validate::valid_dedup_by(ok), "{ok}");
    }
    for bad in ["", "header:", "Key", "headers:x", "id"] {
        assert!(!validate::valid_dedup_by(bad), "{bad}");
    }
    assert_eq!(
        keys_with("[dedup]\nby = \"id\"\nmax_entries = 0\n"),
        ["dedup.by", "dedup.max_entries"]
    );
    assert_eq!(keys_with("[dedup]\nwindow = \"1m\"\n"), ["dedup"]);
}

#[test]
fn sink_must_not_be_the_source_file() {
    assert_eq!(
        keys_with("[sinks.a]\ntype = \"file\"\npath = \"./in.jsonl\"\n"),
        ["sinks.a.path"]
    );
    assert!(keys_with("[sinks.a]\ntype = \"file\"\npath = \"out.jsonl\"\n").is_empty());
    // Standard input and standard output are different streams.
    let stdio = BASE.replace("\"in.jsonl\"", "\"-\"") + "[sink]\ntype = \"file\"\npath = \"-\"\n";
    assert!(errors(&stdio).is_empty());
}

#[test]
fn source_in_flight() {
    let text = BASE.replace(
        "path = \"in.jsonl\"",
        "path = \"in.jsonl\"\nmax_in_flight = 0",
    );
    assert_eq!(errors(&text)[0].1.as_deref(), Some("source.max_in_flight"));
}

#[test]
fn every_section_reports_independently() {
    let text = format!(
        "{}[retry]\ninitial = \"soon\"\n[circuit_breaker]\nopen_for = 5\n[dedup]\nby = 1\n",
        handler_with("timeout = \"never\"")
    );
    let keys: Vec<_> = errors(&text)
        .into_iter()
        .map(|e| e.1.unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        [
            "handler.timeout",
            "retry.initial",
            "circuit_breaker.open_for",
            "dedup.by"
        ]
    );
}

#[test]
fn quoted_keys_in_paths() {
    let e = errors(&format!("{BASE}[sinks.\"a.b\"]\ntype = \"file\"\n"));
    assert_eq!(e[0].1.as_deref(), Some("sinks.\"a.b\""));
    assert_eq!(e[0].2, "missing key `path`");
}

#[test]
fn display_has_file_line_column_key() {
    let e = parse_str(&handler_with("fuel = \"lots\"")).expect_err("invalid");
    assert_eq!(
        e.to_string(),
        "dir/p.toml:9:8: handler.fuel: invalid type: string \"lots\", expected a non-negative integer"
    );
}

#[test]
fn durations_and_sizes_are_parsed() {
    let c = parse_str(&handler_with("timeout = \"250ms\"\nmemory = \"1MiB\"")).expect("valid");
    assert_eq!(c.handler.timeout.0, Duration::from_millis(250));
    assert_eq!(c.handler.memory.0, 1024 * 1024);
}

#[test]
fn a_pipelines_files_must_differ_however_they_are_spelled() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::write(d.join("in.log"), "x\n").unwrap();
    std::os::unix::fs::symlink(d.join("in.log"), d.join("link.log")).unwrap();
    let file = d.join("p.toml");
    let keys = |extra: &str| -> Vec<String> {
        let text = format!(
            "name = \"t\"\n[source]\ntype = \"file\"\npath = \"in.log\"\n{extra}\n[handler]\nplugin = \"echo.wasm\"\n"
        );
        match parse(&file, &text) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.into_iter().filter_map(|e| e.key).collect(),
        }
    };
    // The checkpoint on the input, on the dead letter, a sink through `..`
    // and through a link, a sink on the default checkpoint.
    assert_eq!(
        keys("checkpoint = \"in.log\"\n[dead_letter]\ntype = \"file\"\npath = \"d.log\""),
        ["source.checkpoint"]
    );
    assert_eq!(
        keys("checkpoint = \"cp\"\n[dead_letter]\ntype = \"file\"\npath = \"sub/../cp\""),
        ["dead_letter.path"]
    );
    assert_eq!(
        keys(
            "[sink]\ntype = \"file\"\npath = \"sub/../in.log\"\n[dead_letter]\ntype = \"file\"\npath = \"d.log\""
        ),
        ["sink.path"]
    );
    assert_eq!(
        keys(
            "[sink]\ntype = \"file\"\npath = \"link.log\"\n[dead_letter]\ntype = \"file\"\npath = \"d.log\""
        ),
        ["sink.path"]
    );
    assert_eq!(
        keys(
            "[sink]\ntype = \"file\"\npath = \"in.log.sluice-checkpoint\"\n[dead_letter]\ntype = \"file\"\npath = \"d.log\""
        ),
        ["sink.path"]
    );
    assert_eq!(
        keys(
            "[sink]\ntype = \"file\"\npath = \"out.log\"\n[dead_letter]\ntype = \"file\"\npath = \"out.log\""
        ),
        ["dead_letter.path"]
    );
    assert!(keys("[sink]\ntype = \"file\"\npath = \"out.log\"\n[dead_letter]\ntype = \"file\"\npath = \"d.log\"").is_empty());
}

#[test]
fn errors_found_without_a_position_get_one() {
    // The TOML reader's recursion limit has no span: the deepest line is named.
    let deep = format!("name = \"t\"\na{} = 1\n", ".a".repeat(200));
    let e = errors(&deep);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].0, Some(2), "{e:?}");
    assert!(e[0].2.contains("nested too deeply"), "{e:?}");
    // A problem with the plugin, found when loading it after parsing.
    assert_eq!(position_of(BASE, &["handler", "plugin"]), ":8:10");
    // A key not written: the table it belongs to.
    assert_eq!(position_of(BASE, &["handler", "timeout"]), ":7:1");
    assert_eq!(position_of("not toml [", &["handler", "plugin"]), "");
}

/// `BASE` with a NATS sink named `out` whose `tls` table holds `tls`.
fn nats_tls_sink(tls: &str) -> String {
    format!("{BASE}\n[sinks.out]\ntype = \"nats\"\nsubject = \"o\"\ntls = {{ {tls} }}\n")
}

fn nats_sink_tls(c: &PipelineConfig) -> &TlsConfig {
    match &c.sinks["out"] {
        SinkConfig::Nats(n) => n.connection.tls.as_ref().expect("tls"),
        other => panic!("not a nats sink: {other:?}"),
    }
}

#[test]
fn tls_keys_are_spelled_alike_for_every_broker() {
    let c = parse_str(&nats_tls_sink(
        "cert_file = \"c.pem\", key_file = \"k.pem\"",
    ))
    .unwrap();
    let t = nats_sink_tls(&c);
    assert_eq!(t.cert_file.as_deref(), Some(Path::new("dir/c.pem")));
    assert_eq!(t.key_file.as_deref(), Some(Path::new("dir/k.pem")));
    let text = nats_tls_sink("cert_file = \"c.pem\", key_file = \"k.pem\"").replace(
        "type = \"nats\"\nsubject = \"o\"",
        "type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\ntopic = \"o\"",
    );
    let c = parse_str(&text).unwrap();
    let SinkConfig::Mqtt(m) = &c.sinks["out"] else {
        panic!("not an mqtt sink")
    };
    assert_eq!(
        m.tls.as_ref().and_then(|t| t.key_file.as_deref()),
        Some(Path::new("dir/k.pem"))
    );
}

#[test]
fn older_tls_spelling_is_read_with_a_note_naming_the_line() {
    let text = nats_tls_sink("cert = \"c.pem\", key = \"k.pem\"");
    let c = parse_str(&text).unwrap();
    let t = nats_sink_tls(&c);
    assert_eq!(t.cert_file.as_deref(), Some(Path::new("dir/c.pem")));
    assert_eq!(t.key_file.as_deref(), Some(Path::new("dir/k.pem")));
    let (root, syntax) = toml::de::DeTable::parse_recoverable(&text);
    assert!(syntax.is_empty());
    let line = text.lines().position(|l| l.starts_with("tls =")).unwrap() + 1;
    assert_eq!(
        tls::deprecated_keys(&text, &root),
        [
            format!("line {line}: `sinks.out.tls.cert` is an older spelling of `cert_file`"),
            format!("line {line}: `sinks.out.tls.key` is an older spelling of `key_file`"),
        ]
    );
    let plain = nats_tls_sink("cert_file = \"c.pem\", key_file = \"k.pem\"");
    let (root, _) = toml::de::DeTable::parse_recoverable(&plain);
    assert!(tls::deprecated_keys(&plain, &root).is_empty());
}

#[test]
fn a_client_certificate_without_its_key_names_the_missing_key() {
    assert!(
        keys_with(
            "\n[sinks.out]\ntype = \"nats\"\nsubject = \"o\"\ntls = { cert_file = \"c.pem\" }\n"
        )
        .contains(&"sinks.out.tls.key_file".to_string())
    );
}

/// `delivery = "exactly-once"` is refused, with the key and line of each
/// reason, when something the pipeline writes cannot join the transaction.
#[test]
fn exactly_once_needs_every_sink_on_the_source_cluster() {
    let kafka = |delivery: &str, tail: &str| {
        format!(
            r#"name = "t"

[source]
type = "kafka"
brokers = ["k1:9092"]
topics = ["in"]
group = "g"
{delivery}

[handler]
plugin = "echo.wasm"

[sink]
type = "kafka"
brokers = ["k1:9092"]
topic = "out"
{tail}"#
        )
    };
    let ok = kafka(
        "delivery = \"exactly-once\"",
        "\n[dead_letter]\ntype = \"kafka\"\nbrokers = \"k1:9092\"\ntopic = \"dlq\"\n",
    );
    assert_eq!(errors(&ok), vec![], "one cluster: accepted");
    let c = parse_str(&ok).expect("valid");
    match &c.source {
        SourceConfig::Kafka(k) => {
            assert!(k.exactly_once());
            assert_eq!(k.transactional_id_for("t"), "sluice-g-t");
        }
        _ => panic!("kafka source"),
    }
    // The same file at least once takes any dead letter.
    let file_dlq = "\n[dead_letter]\ntype = \"file\"\npath = \"dead.jsonl\"\n";
    assert_eq!(errors(&kafka("", file_dlq)), vec![]);
    let refused = errors(&kafka("delivery = \"exactly-once\"", file_dlq));
    assert_eq!(refused.len(), 1, "{refused:?}");
    let (line, key, msg) = &refused[0];
    assert_eq!(key.as_deref(), Some("dead_letter.type"));
    assert_eq!(*line, Some(19), "the line of the dead letter's type");
    assert!(
        msg.contains("exactly-once") && msg.contains("cannot join the transaction"),
        "{msg}"
    );
    // Another cluster, other options, and [dedup].
    let other = kafka(
        "delivery = \"exactly-once\"",
        "\n[dead_letter]\ntype = \"kafka\"\nbrokers = \"k1:9092\"\ntopic = \"dlq\"\n\n[sinks.audit]\ntype = \"kafka\"\nbrokers = [\"k2:9092\"]\ntopic = \"a\"\noptions = { \"linger.ms\" = 5 }\n\n[dedup]\nby = \"key\"\n",
    );
    let keys: Vec<String> = errors(&other)
        .into_iter()
        .filter_map(|(_, k, _)| k)
        .collect();
    assert_eq!(
        keys,
        ["sinks.audit.brokers", "sinks.audit.options", "dedup"],
        "{:?}",
        errors(&other)
    );
    // A transaction timeout shorter than the commit interval.
    let short = kafka(
        "delivery = \"exactly-once\"\ncommit_interval = \"10s\"\ntransaction_timeout = \"5s\"",
        "\n[errors]\nfatal = \"drop\"\ntrap = \"drop\"\nfuel = \"drop\"\nmemory = \"drop\"\nrejected = \"drop\"\ndecode = \"drop\"\nexhausted = \"drop\"\n",
    );
    let keys: Vec<String> = errors(&short)
        .into_iter()
        .filter_map(|(_, k, _)| k)
        .collect();
    assert_eq!(keys, ["source.transaction_timeout"]);
    // A sink cannot set its own transactional id.
    let own = kafka(
        "",
        "options = { \"transactional.id\" = \"x\" }\n[dead_letter]\ntype = \"file\"\npath = \"d.jsonl\"\n",
    );
    let refused = errors(&own);
    assert_eq!(refused.len(), 1, "{refused:?}");
    let (_, key, msg) = &refused[0];
    assert!(
        key.as_deref()
            .is_some_and(|k| k.starts_with("sink.options")),
        "{key:?}"
    );
    assert!(msg.starts_with("transactional.id is refused"), "{msg}");
}
