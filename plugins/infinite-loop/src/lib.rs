//! `infinite-loop` (hostile fixture): on payload "loop" spins forever without calling any
//! import (only fuel or the epoch deadline can stop it), else echoes.
use sluice_guest::{HandlerError, Message, Output, export_handler};
use std::hint::black_box;

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    if msg.payload == b"loop" {
        let mut x = 1u64;
        loop {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    Ok(vec![Output::new(msg.payload)])
}

export_handler!(handle);
