//! `echo`: returns the payload unchanged as one output (the trivial handler for benchmarks).
use sluice_guest::{HandlerError, Message, Output, export_handler};

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    Ok(vec![Output::new(msg.payload)])
}

export_handler!(handle);
