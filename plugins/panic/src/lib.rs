//! `panic` (hostile fixture): panics when the payload is "panic", else echoes it.
use sluice_guest::{HandlerError, Message, Output, export_handler};

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    if msg.payload == b"panic" {
        panic!("the payload asked for a panic");
    }
    Ok(vec![Output::new(msg.payload)])
}

export_handler!(handle);
