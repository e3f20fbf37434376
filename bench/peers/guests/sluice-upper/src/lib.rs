//! The bench map for Sluice: the payload in ASCII uppercase, as one output.
use sluice_guest::{HandlerError, Message, Output, export_handler};

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    Ok(vec![Output::new(msg.payload.to_ascii_uppercase())])
}

export_handler!(handle);
