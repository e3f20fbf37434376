//! Native unit tests of the log-line parser (`cargo test-host -p log-parser`).
use super::*;

fn json(line: &str) -> String {
    to_json(&parse_line(line.as_bytes()).unwrap())
}

fn err(line: &[u8]) -> String {
    parse_line(line).unwrap_err()
}

#[test]
fn parses_all_parts() {
    let r = parse_line(b"2026-11-26T09:15:02.123Z ERROR [payments] charge failed: card declined user=42 amount=19.99").unwrap();
    assert_eq!(r.ts, "2026-11-26T09:15:02.123Z");
    assert_eq!(r.level, Level::Error);
    assert_eq!(r.service, "payments");
    assert_eq!(r.message, "charge failed: card declined");
    assert_eq!(r.fields, vec![("user", "42"), ("amount", "19.99")]);
}

#[test]
fn only_trailing_pairs_are_fields() {
    let r = parse_line(b"2026-11-26T09:15:02Z WARN [db] retry=3 of query failed after=2s").unwrap();
    assert_eq!(r.message, "retry=3 of query failed");
    assert_eq!(r.fields, vec![("after", "2s")]);
}

#[test]
fn message_may_be_empty_or_all_fields() {
    assert_eq!(
        json("2026-11-26T09:15:02Z info [svc]"),
        r#"{"ts":"2026-11-26T09:15:02Z","level":"info","service":"svc","message":"","fields":{}}"#
    );
    assert_eq!(
        json("2026-11-26T09:15:02Z info [svc] a=1 b="),
        r#"{"ts":"2026-11-26T09:15:02Z","level":"info","service":"svc","message":"","fields":{"a":"1","b":""}}"#
    );
}

#[test]
fn values_may_hold_equals_and_repeated_keys_keep_first_place() {
    let r = parse_line(b"2026-11-26T09:15:02Z DEBUG [x] m q=a=b k=1 z=2 k=3").unwrap();
    assert_eq!(r.fields, vec![("q", "a=b"), ("k", "3"), ("z", "2")]);
}

#[test]
fn tokens_that_are_not_pairs_stay_in_the_message() {
    let r = parse_line(b"2026-11-26T09:15:02Z INFO [x] total 1+1=2 =x").unwrap();
    assert_eq!(r.message, "total 1+1=2 =x");
    assert!(r.fields.is_empty());
}

#[test]
fn line_endings_tabs_and_extra_spaces() {
    let r =
        parse_line(b"2026-11-26T09:15:02Z\tINFO   [api]   hello  world  \t user=7\r\n").unwrap();
    assert_eq!(
        (r.level, r.service, r.message),
        (Level::Info, "api", "hello  world")
    );
    assert_eq!(r.fields, vec![("user", "7")]);
}

#[test]
fn unicode_whitespace_and_text() {
    let r =
        parse_line("2026-11-26T09:15:02Z INFO [api] héllo\u{3000}wörld k=ü".as_bytes()).unwrap();
    assert_eq!(r.message, "héllo\u{3000}wörld");
    assert_eq!(r.fields, vec![("k", "ü")]);
}

#[test]
fn json_escapes_quotes_backslashes_and_controls() {
    assert_eq!(
        json("2026-11-26T09:15:02Z INFO [a\"b] say \"hi\" c:\\ \u{1}\u{7f} k=\"v\""),
        "{\"ts\":\"2026-11-26T09:15:02Z\",\"level\":\"info\",\"service\":\"a\\\"b\",\"message\":\"say \\\"hi\\\" c:\\\\ \\u0001\\u007f\",\"fields\":{\"k\":\"\\\"v\\\"\"}}"
    );
}

#[test]
fn levels_any_case_and_fatal() {
    for (name, level) in [
        ("trace", Level::Trace),
        ("Debug", Level::Debug),
        ("FATAL", Level::Fatal),
    ] {
        let line = format!("2026-11-26T09:15:02Z {name} [s] m");
        assert_eq!(parse_line(line.as_bytes()).unwrap().level, level);
    }
    assert!(Level::Trace < Level::Debug && Level::Error < Level::Fatal);
}

#[test]
fn timestamps() {
    for ok in [
        "2026-11-26T09:15:02Z",
        "2026-11-26t09:15:02.1z",
        "2026-11-26T09:15:02.123456789+05:30",
        "2024-02-29T23:59:60-00:00",
    ] {
        assert!(is_rfc3339(ok), "{ok}");
    }
    for bad in [
        "2026-11-26",
        "2026-11-26 09:15:02Z",
        "2026-13-01T00:00:00Z",
        "2025-02-29T00:00:00Z",
        "2026-11-26T24:00:00Z",
        "2026-11-26T09:15:02",
        "2026-11-26T09:15:02.Z",
        "2026-11-26T09:15:02+0530",
        "2026-11-26T09:15:02Zjunk",
        "2026-1a-26T09:15:02Z",
    ] {
        assert!(!is_rfc3339(bad), "{bad}");
    }
}

#[test]
fn precise_errors() {
    assert_eq!(
        err(b"ERROR [payments] no timestamp"),
        "malformed log line: expected an RFC 3339 timestamp (like 2026-11-26T09:15:02.123Z) at the start, found \"ERROR\""
    );
    assert_eq!(
        err(b"2026-11-26T09:15:02.123Z FOO [payments] x"),
        "malformed log line: expected a level (TRACE|DEBUG|INFO|WARN|ERROR|FATAL) after the timestamp, found \"FOO\""
    );
    assert_eq!(
        err(b"2026-11-26T09:15:02.123Z"),
        "malformed log line: expected a level (TRACE|DEBUG|INFO|WARN|ERROR|FATAL) after the timestamp, found end of line"
    );
    assert_eq!(
        err(b"2026-11-26T09:15:02.123Z ERROR payments: x"),
        "malformed log line: expected \"[service]\" after the level, found \"payments:\""
    );
    assert_eq!(
        err(b"2026-11-26T09:15:02.123Z ERROR"),
        "malformed log line: expected \"[service]\" after the level, found end of line"
    );
    assert_eq!(
        err(b"2026-11-26T09:15:02.123Z ERROR [payments x"),
        "malformed log line: \"[\" opens the service name but no \"]\" closes it"
    );
    assert_eq!(
        err(b"2026-11-26T09:15:02.123Z ERROR [ ] x"),
        "malformed log line: the service name between \"[\" and \"]\" is empty"
    );
    assert_eq!(
        err(b"2026-11-26T09:15:02.123Z ERROR [pay]ments x"),
        "malformed log line: expected a space after \"[pay]\", found \"ments x\""
    );
    assert_eq!(
        err(b"2026-11-26T09:15:02Z INFO [s] caf\xe9"),
        "malformed log line: not valid UTF-8 (invalid byte at offset 33)"
    );
    assert_eq!(err(b""), "malformed log line: empty line");
    assert_eq!(err(b" \r\n"), "malformed log line: empty line");
}

#[test]
fn long_tokens_are_cut_in_errors() {
    let e = err("x".repeat(500).as_bytes());
    assert!(
        e.ends_with(&format!("found \"{}\"...", "x".repeat(64))),
        "{e}"
    );
}

#[test]
fn output_is_deterministic() {
    let line = "2026-11-26T09:15:02.123Z ERROR [payments] charge failed: card declined user=42 amount=19.99";
    assert_eq!(json(line), json(line));
}
