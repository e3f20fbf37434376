//! `panic` (hostile fixture): panics when the payload is "panic"; answers "count" with how many
//! messages this instance has handled (a static in linear memory, so a fresh instance — or a
//! reused pool slot that was not reset — shows); echoes anything else.
use sluice_guest::{HandlerError, Message, Output, export_handler};
use std::sync::atomic::{AtomicU64, Ordering};

static HANDLED: AtomicU64 = AtomicU64::new(0);

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    let n = HANDLED.fetch_add(1, Ordering::Relaxed) + 1;
    if msg.payload == b"panic" {
        panic!("the payload asked for a panic");
    }
    if msg.payload == b"count" {
        return Ok(vec![Output::new(n.to_string().into_bytes())]);
    }
    Ok(vec![Output::new(msg.payload)])
}

export_handler!(handle);
