//! Every hostile fixture behind one handler, picked by how the payload
//! starts (so each poison message can be told apart, e.g. `panic-3`), for
//! the fault-injection suite to mix all kinds of poison into one stream:
//!
//! * `panic`   → panics (class `trap`)
//! * `crash`   → panics with a formatted message over two lines (class `trap`)
//! * `recurse` → unbounded recursion, stack overflow (class `trap`)
//! * `loop`    → never returns; each turn is a host call (`kv-set` of 64 KiB),
//!   so it spends wall-clock time much faster than fuel (class `timeout`)
//! * `burn`    → a tight arithmetic loop of `burn_iterations` (default 10^10)
//!   turns, which runs out of fuel long before a wall-clock deadline (class `fuel`)
//! * `alloc`   → allocates 1 MiB blocks until the memory cap (class `memory`)
//! * `bad…`    → refuses the message (class `fatal`)
//! * `peek`    → reaches for what WASI could give (files, environment,
//!   arguments, stdout, the clocks) and answers with what it got
//!
//! Anything else is echoed, after `work` turns of the same arithmetic loop
//! (config, default 0), which makes a deliberately slow handler for
//! backpressure tests.

use sluice_guest::{Config, HandlerError, Message, Output, config, export_handler, kv};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

static BURN_ITERATIONS: AtomicU64 = AtomicU64::new(10_000_000_000);
static WORK: AtomicU64 = AtomicU64::new(0);

fn init(cfg: Config) -> Result<(), String> {
    BURN_ITERATIONS.store(
        config::parse_or(&cfg, "burn_iterations", 10_000_000_000u64)?,
        Ordering::Relaxed,
    );
    WORK.store(config::parse_or(&cfg, "work", 0u64)?, Ordering::Relaxed);
    Ok(())
}

fn spin(n: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..n {
        h = black_box((h ^ i).wrapping_mul(0x0100_0000_01b3).rotate_left(17));
    }
    h
}

/// One `name=what` pair per thing a handler might reach for through WASI.
fn peek() -> String {
    use std::io::Write;
    let fs = ["/", ".", "/etc/passwd"]
        .iter()
        .map(|p| match std::fs::metadata(p) {
            Ok(_) => format!("{p}:found"),
            Err(e) => format!("{p}:{:?}", e.kind()),
        })
        .collect::<Vec<_>>()
        .join(",");
    let stdout = match std::io::stdout().write_all(b"peek\n") {
        Ok(()) => "written",
        Err(_) => "refused",
    };
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "fs={fs};env={};args={};stdout={stdout};clock={}",
        std::env::vars_os().count(),
        std::env::args_os().count(),
        u8::from(clock > 1_600_000_000),
    )
}

#[inline(never)]
fn descend(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let frame = black_box([depth; 32]);
    let below = descend(black_box(depth + 1));
    below.wrapping_add(frame[(depth % 32) as usize])
}

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    let p = msg.payload.as_slice();
    if p.starts_with(b"crash") {
        panic!("{}\nover two lines", String::from_utf8_lossy(p));
    } else if p.starts_with(b"panic") {
        panic!("the payload asked for a panic");
    } else if p.starts_with(b"recurse") {
        Ok(vec![Output::new(descend(0).to_string())])
    } else if p.starts_with(b"loop") {
        let block = vec![0x5a; 64 << 10];
        let mut i = 0u64;
        loop {
            kv::set(&format!("loop-{}", i % 4), &block);
            i = black_box(i + 1);
        }
    } else if p.starts_with(b"burn") {
        Ok(vec![Output::new(format!(
            "{:016x}",
            spin(BURN_ITERATIONS.load(Ordering::Relaxed))
        ))])
    } else if p.starts_with(b"alloc") {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![0xA5; 1 << 20]);
            black_box(&mut hoard);
        }
    } else if p.starts_with(b"peek") {
        Ok(vec![Output::new(peek())])
    } else if p.starts_with(b"bad") {
        let text = String::from_utf8_lossy(p);
        Err(HandlerError::fatal(format_args!("refused: {text}")))
    } else {
        let work = WORK.load(Ordering::Relaxed);
        if work > 0 {
            black_box(spin(work));
        }
        Ok(vec![Output::new(msg.payload)])
    }
}

export_handler!(handle, init = init);
