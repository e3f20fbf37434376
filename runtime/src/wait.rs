//! Futures both sources and sinks use: one already settled that allocates
//! nothing when boxed, and timeouts that arm no timer for a future that is
//! ready on its first poll.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;

/// A future already finished with `Ok(())` — a settle with nothing left to
/// do, or a sink's `done`. It has no size, so boxing it
/// allocates nothing (an `async` block of no awaits still has a state byte,
/// and `std::future::ready` holds its output: either allocates per message).
pub fn settled<E: 'static>() -> BoxFuture<'static, Result<(), E>> {
    struct Settled<E>(PhantomData<fn() -> E>);
    impl<E> Future for Settled<E> {
        type Output = Result<(), E>;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            Poll::Ready(Ok(()))
        }
    }
    Box::pin(Settled(PhantomData))
}

/// Awaits `fut` until `deadline`, making the timer only when the future
/// does not finish on its first poll. Queueing a record with a client
/// almost always finishes at once, and a `timeout` per message cost a
/// runtime-handle lookup, a timer entry and its drop even when it never fired.
pub async fn within<F: std::future::Future>(
    deadline: tokio::time::Instant,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    within_by(|| deadline, fut).await
}

/// [`within`] a `limit` from now; the clock is read only when the future
/// does not finish on its first poll.
pub async fn within_for<F: std::future::Future>(
    limit: std::time::Duration,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    within_by(|| tokio::time::Instant::now() + limit, fut).await
}

async fn within_by<F: std::future::Future>(
    deadline: impl FnOnce() -> tokio::time::Instant,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut fut = std::pin::pin!(fut);
    if let std::task::Poll::Ready(v) = futures::poll!(fut.as_mut()) {
        return Ok(v);
    }
    tokio::time::timeout_at(deadline(), fut).await
}
