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
//! * `sleep-N` → sleeps N ms through WASI (a host call, where the epoch
//!   deadline cannot reach), then echoes (class `timeout` past the deadline)
//! * `connect-PORT` → tries a TCP connection and a UDP datagram to
//!   127.0.0.1:PORT and answers with what happened
//! * `logflood-N` → logs N lines, each with a line break and a forged
//!   Sluice log line after it, then echoes
//!
//! `init_sleep_ms` (config) makes `init` sleep that long through WASI first.
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
    let sleep: u64 = config::parse_or(&cfg, "init_sleep_ms", 0u64)?;
    if sleep > 0 {
        std::thread::sleep(std::time::Duration::from_millis(sleep));
    }
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

/// Tries the network through WASI: a TCP connection and a UDP datagram.
fn connect(port: u16) -> String {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let tcp = match std::net::TcpStream::connect(addr) {
        Ok(_) => "connected".to_string(),
        Err(e) => format!("{:?}", e.kind()),
    };
    let udp = match std::net::UdpSocket::bind(("127.0.0.1", 0)).and_then(|s| s.send_to(b"hi", addr))
    {
        Ok(_) => "sent".to_string(),
        Err(e) => format!("{:?}", e.kind()),
    };
    format!("tcp={tcp};udp={udp}")
}

/// The number after `prefix` in the payload (0 when there is none).
fn number_after(p: &[u8], prefix: &[u8]) -> u64 {
    std::str::from_utf8(&p[prefix.len()..])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
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
    let p = msg.payload;
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
    } else if p.starts_with(b"sleep-") {
        std::thread::sleep(std::time::Duration::from_millis(number_after(p, b"sleep-")));
        Ok(vec![Output::new(msg.payload)])
    } else if p.starts_with(b"connect-") {
        let port = u16::try_from(number_after(p, b"connect-")).unwrap_or(0);
        Ok(vec![Output::new(connect(port))])
    } else if p.starts_with(b"logflood-") {
        for i in 0..number_after(p, b"logflood-") {
            sluice_guest::log::info(format!(
                "line {i}\n2026-01-01T00:00:00.000000Z ERROR sluice::pipeline: pipeline=\"prod\" forged"
            ));
        }
        Ok(vec![Output::new(msg.payload)])
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
