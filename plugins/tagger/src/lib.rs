//! `tagger`: prefixes the payload with `<tag>:`; config `tag` (default "untagged").
//! Two deployments with different tags make a hot swap visible in the outputs.
use sluice_guest::{Config, HandlerError, Message, Output, export_handler};
use std::sync::OnceLock;

static TAG: OnceLock<String> = OnceLock::new();

fn init(config: Config) -> Result<(), String> {
    let tag = config
        .get("tag")
        .cloned()
        .unwrap_or_else(|| "untagged".to_owned());
    let _ = TAG.set(tag);
    Ok(())
}

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    let tag = TAG.get().map_or("untagged", String::as_str);
    let mut payload = Vec::with_capacity(tag.len() + 1 + msg.payload.len());
    payload.extend_from_slice(tag.as_bytes());
    payload.push(b':');
    payload.extend_from_slice(&msg.payload);
    Ok(vec![Output::new(payload)])
}

export_handler!(handle, init = init);
