//! `logger`: writes one host log line at each level (trace..error), then echoes the payload.
use sluice_guest::{HandlerError, Message, Output, export_handler, log};

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    let text = String::from_utf8_lossy(&msg.payload);
    log::trace(format!("logger trace: {text}"));
    log::debug(format!("logger debug: {text}"));
    log::info(format!("logger info: {text}"));
    log::warn(format!("logger warn: {text}"));
    log::error(format!("logger error: {text}"));
    Ok(vec![Output::new(msg.payload)])
}

export_handler!(handle);
