//! `flaky`: fails with `Retriable("flaky: attempt N of M")` while the delivery attempt N is at
//! most M = config `fail_times` (default 2), then echoes the payload.
use sluice_guest::{Config, HandlerError, Message, Output, config, export_handler};
use std::sync::atomic::{AtomicU32, Ordering};

static FAIL_TIMES: AtomicU32 = AtomicU32::new(2);

fn init(cfg: Config) -> Result<(), String> {
    FAIL_TIMES.store(
        config::parse_or(&cfg, "fail_times", 2u32)?,
        Ordering::Relaxed,
    );
    Ok(())
}

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    let fail_times = FAIL_TIMES.load(Ordering::Relaxed);
    if msg.attempt <= fail_times {
        return Err(HandlerError::retriable(format_args!(
            "flaky: attempt {} of {fail_times}",
            msg.attempt
        )));
    }
    Ok(vec![Output::new(msg.payload)])
}

export_handler!(handle, init = init);
