//! `log-parser`: turns one raw log line into one JSON object, for Kafka log aggregation.
//!
//! Input `2026-11-26T09:15:02.123Z ERROR [payments] charge failed: card declined user=42`
//! becomes `{"ts":"2026-11-26T09:15:02.123Z","level":"error","service":"payments",
//! "message":"charge failed: card declined","fields":{"user":"42"}}` with key = the service
//! and a header `level`. Config `min_level` (default `trace`): lines below it produce no
//! output. A malformed line is `Fatal` with the precise cause (retrying cannot fix it).
use sluice_guest::{Config, HandlerError, Message, Output, export_handler};
use std::sync::atomic::{AtomicU8, Ordering};

pub mod parse;
use parse::Level;

/// `min_level` as set by `init`; an atomic only because statics need `Sync`.
static MIN_LEVEL: AtomicU8 = AtomicU8::new(Level::Trace as u8);

fn init(config: Config) -> Result<(), String> {
    let level = min_level(&config)?;
    MIN_LEVEL.store(level as u8, Ordering::Relaxed);
    Ok(())
}

fn min_level(config: &Config) -> Result<Level, String> {
    let raw = config.get("min_level").map_or("trace", |s| s.trim());
    Level::parse(raw).ok_or_else(|| {
        format!(
            "config `min_level`: unknown level {raw:?} (expected trace, debug, info, warn, error or fatal)"
        )
    })
}

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    let min = MIN_LEVEL.load(Ordering::Relaxed);
    process(&msg.payload, min).map_err(HandlerError::Fatal)
}

/// The whole handler minus the host: parse, filter by level, build the output.
pub fn process(line: &[u8], min_level: u8) -> Result<Vec<Output>, String> {
    let record = parse::parse_line(line)?;
    if (record.level as u8) < min_level {
        return Ok(Vec::new());
    }
    let output = Output::new(parse::to_json(&record))
        .with_key(record.service)
        .with_header("level", record.level.as_str());
    Ok(vec![output])
}

export_handler!(handle, init = init);

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &[u8] = b"2026-11-26T09:15:02.123Z ERROR [payments] charge failed: card declined user=42 amount=19.99";

    #[test]
    fn example_line_becomes_one_keyed_output() {
        let out = process(LINE, Level::Trace as u8).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            String::from_utf8(out[0].payload.clone()).unwrap(),
            r#"{"ts":"2026-11-26T09:15:02.123Z","level":"error","service":"payments","message":"charge failed: card declined","fields":{"user":"42","amount":"19.99"}}"#
        );
        assert_eq!(out[0].key.as_deref(), Some(&b"payments"[..]));
        assert_eq!(out[0].headers.len(), 1);
        assert_eq!(out[0].headers[0].key, "level");
        assert_eq!(out[0].headers[0].value, b"error");
        assert_eq!((out[0].sink.clone(), out[0].topic.clone()), (None, None));
    }

    #[test]
    fn lines_below_min_level_produce_nothing() {
        let info = b"2026-11-26T09:15:02Z INFO [api] ok";
        assert!(process(info, Level::Warn as u8).unwrap().is_empty());
        assert_eq!(process(info, Level::Info as u8).unwrap().len(), 1);
        assert_eq!(process(LINE, Level::Warn as u8).unwrap().len(), 1);
        // Filtering never hides a malformed line.
        assert!(process(b"nonsense", Level::Fatal as u8).is_err());
    }

    #[test]
    fn min_level_config() {
        let cfg = |v: &str| Config::from([("min_level".to_owned(), v.to_owned())]);
        assert_eq!(min_level(&Config::new()), Ok(Level::Trace));
        assert_eq!(min_level(&cfg("WARN")), Ok(Level::Warn));
        assert_eq!(
            min_level(&cfg("loud")),
            Err("config `min_level`: unknown level \"loud\" (expected trace, debug, info, warn, error or fatal)".to_owned())
        );
    }

    #[test]
    fn handle_maps_parse_errors_to_fatal() {
        let err = handle(Message::new("hello")).unwrap_err();
        assert!(
            matches!(&err, HandlerError::Fatal(m) if m.starts_with("malformed log line: expected an RFC 3339 timestamp")),
            "{err:?}"
        );
    }
}
