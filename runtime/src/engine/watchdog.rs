//! The watchdog of a call's wall-clock deadline while the guest waits in a
//! host call (a WASI sleep or poll), where the epoch interrupt cannot reach.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use super::limits::Deadline;

/// How long after its deadline a call waiting inside a host call (a WASI
/// sleep or poll) is ended. Running wasm code is stopped by the epoch
/// interrupt within one tick; a host call is not wasm code, so the watchdog
/// ends it, a little later so that the interrupt wins where it can.
pub const HOST_WAIT_GRACE: Duration = Duration::from_millis(20);

/// Runs `call` (a guest call on a fiber) to its end, or ends it once it has
/// waited inside a host call past `deadline` + [`HOST_WAIT_GRACE`] (the
/// call's fiber is then unwound and its instance must be discarded). A call
/// that finishes without waiting on the host, as nearly all do, costs no
/// timer: the timer is made only when the call first returns pending.
pub(crate) async fn watched<T>(
    call: impl Future<Output = wasmtime::Result<T>>,
    deadline: &Deadline,
) -> wasmtime::Result<T> {
    let mut call = pin!(call);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = call.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        loop {
            let Some(at) = deadline.get().and_then(|d| d.checked_add(HOST_WAIT_GRACE)) else {
                return Poll::Pending;
            };
            let at = tokio::time::Instant::from_std(at);
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if t.deadline() != at {
                t.as_mut().reset(at);
            }
            match t.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // `columns.answer` may have moved the deadline meanwhile.
                Poll::Ready(()) if tokio::time::Instant::now() >= at => {
                    return Poll::Ready(Err(wasmtime::Error::new(HostWaitTimeout)));
                }
                Poll::Ready(()) => {}
            }
        }
    })
    .await
}

/// A call that waited in a host call past its deadline (see [`watched`]).
#[derive(Debug, thiserror::Error)]
#[error("waited in a host call past its deadline")]
pub(crate) struct HostWaitTimeout;
