//! `{{name}}`: upper-cases the payload and appends a mark (config `mark`,
//! default "!"); keeps the key and adds a `handled-by` header. An empty
//! payload is `fatal`: it will never succeed, so the policy dead-letters it.
use std::sync::OnceLock;

use sluice_guest::{Config, HandlerError, Message, Output, export_handler};

static MARK: OnceLock<String> = OnceLock::new();

fn init(config: Config) -> Result<(), String> {
    let mark = config.get("mark").cloned().unwrap_or_else(|| "!".to_owned());
    let _ = MARK.set(mark);
    Ok(())
}

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    if msg.payload.is_empty() {
        return Err(HandlerError::fatal("empty payload"));
    }
    let mark = MARK.get().map_or("!", String::as_str);
    let mut payload = msg.payload.to_ascii_uppercase();
    payload.extend_from_slice(mark.as_bytes());
    let mut out = Output::new(payload).with_header("handled-by", "{{name}}");
    if let Some(key) = msg.key {
        out = out.with_key(key);
    }
    Ok(vec![out])
}

export_handler!(handle, init = init);
