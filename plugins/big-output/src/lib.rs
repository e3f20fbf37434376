//! `big-output` (hostile fixture): on payload "big" returns one output of config `bytes`
//! bytes (default 32 MiB), for the host's output-size or memory cap to stop; else echoes.
use sluice_guest::{Config, HandlerError, Message, Output, config, export_handler};
use std::sync::atomic::{AtomicUsize, Ordering};

const DEFAULT_BYTES: usize = 32 << 20;
static BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_BYTES);

fn init(cfg: Config) -> Result<(), String> {
    BYTES.store(
        config::parse_or(&cfg, "bytes", DEFAULT_BYTES)?,
        Ordering::Relaxed,
    );
    Ok(())
}

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    if msg.payload == b"big" {
        return Ok(vec![Output::new(vec![b'x'; BYTES.load(Ordering::Relaxed)])]);
    }
    Ok(vec![Output::new(msg.payload)])
}

export_handler!(handle, init = init);
