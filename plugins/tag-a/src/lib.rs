//! `tag-a`: prefixes the payload with `A:`, fixed in code (not config), so
//! that swapping the plugin file between `tag-a` and `tag-b` shows in the
//! outputs which version handled each message (the hot-swap test).
use sluice_guest::{HandlerError, Message, Output, export_handler};

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    let mut payload = Vec::with_capacity(2 + msg.payload.len());
    payload.extend_from_slice(b"A:");
    payload.extend_from_slice(&msg.payload);
    Ok(vec![Output::new(payload)])
}

export_handler!(handle);
