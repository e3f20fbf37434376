//! `fatal-on`: returns `Fatal("refused: <payload>")` when the payload starts with "bad",
//! else echoes it.
use sluice_guest::{HandlerError, Message, Output, export_handler};

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    if msg.payload.starts_with(b"bad") {
        let text = String::from_utf8_lossy(&msg.payload);
        return Err(HandlerError::fatal(format_args!("refused: {text}")));
    }
    Ok(vec![Output::new(msg.payload)])
}

export_handler!(handle);
