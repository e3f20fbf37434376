//! `alloc-bomb` (hostile fixture): on payload "alloc" keeps 1 MiB blocks (each written, so
//! none can be elided) until the host refuses to grow memory and the guest traps; else echoes.
use sluice_guest::{HandlerError, Message, Output, export_handler};
use std::hint::black_box;

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    if msg.payload == b"alloc" {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![0xA5; 1 << 20]);
            black_box(&mut hoard);
        }
    }
    Ok(vec![Output::new(msg.payload)])
}

export_handler!(handle);
