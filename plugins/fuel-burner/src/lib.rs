//! `fuel-burner` (hostile fixture): on payload "burn" runs a long but finite hash mix
//! (config `iterations`, default 10^10) and outputs the hash in hex; else echoes.
//! A small fuel budget stops it long before it ends.
use sluice_guest::{Config, HandlerError, Message, Output, config, export_handler};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

static ITERATIONS: AtomicU64 = AtomicU64::new(10_000_000_000);

fn init(cfg: Config) -> Result<(), String> {
    let n = config::parse_or(&cfg, "iterations", 10_000_000_000u64)?;
    ITERATIONS.store(n, Ordering::Relaxed);
    Ok(())
}

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    if msg.payload == b"burn" {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for i in 0..ITERATIONS.load(Ordering::Relaxed) {
            h = black_box((h ^ i).wrapping_mul(0x0100_0000_01b3).rotate_left(17));
        }
        return Ok(vec![Output::new(format!("{h:016x}"))]);
    }
    Ok(vec![Output::new(msg.payload)])
}

export_handler!(handle, init = init);
