//! `deep-recursion` (hostile fixture): on payload "recurse" recurses without bound (not a tail
//! call: each frame keeps an opaque array used after the call) until the stack overflows and
//! the guest traps; else echoes.
use sluice_guest::{HandlerError, Message, Output, export_handler};
use std::hint::black_box;

#[inline(never)]
fn descend(depth: u64) -> u64 {
    // Never true (a u64 frame counter cannot get there); it only keeps the lint quiet.
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let frame = black_box([depth; 32]);
    let below = descend(black_box(depth + 1));
    below.wrapping_add(frame[(depth % 32) as usize])
}

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    if msg.payload == b"recurse" {
        let n = descend(0);
        return Ok(vec![Output::new(n.to_string())]);
    }
    Ok(vec![Output::new(msg.payload)])
}

export_handler!(handle);
