//! What the app sees of its generation's drain: the futures a server or a `main` waits on, and
//! the flags a handler or a health check reads. Free functions, since one process is one
//! generation.

use std::future::Future;
use std::sync::atomic::Ordering;

use super::{Stage, process};
use crate::config::deadline_after;

/// Resolves when this generation should stop serving: a newer generation has taken over, the
/// front is shutting the service down, or the process got SIGTERM/SIGINT (Ctrl-C).
///
/// The listener stops accepting at that moment, but this future resolves only after the idle
/// grace (500 ms by default, see [`Builder::idle_grace`](crate::Builder::idle_grace)) or as
/// soon as the generation has no connection left, whichever comes first. That delay is what
/// keeps requests from failing: hyper cancels connections it has accepted but not yet read
/// from, and closes idle keep-alive connections that clients may be sending on right now, the
/// instant graceful shutdown starts.
///
/// With a probation window (see [`Builder::probation`](crate::Builder::probation)) it resolves
/// only once the window has passed without the new generation dying: until then this
/// generation may be reinstated, and its server must still be running.
///
/// Once polled (a server polls its shutdown signal as soon as it starts serving), it also
/// tells risefront that the app ends the process itself: without it, a superseded generation
/// exits on its own once its last connection closes. Creating it and never polling it changes
/// nothing. Either way the process exits at the drain deadline.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let app = axum::Router::new()
///     .route("/", axum::routing::get(|| async { "hello" }))
///     .layer(risefront::DrainLayer::new());
/// axum::serve(risefront::bind(["127.0.0.1:8080"]).await?, app)
///     .with_graceful_shutdown(risefront::superseded())
///     .await
/// # }
/// ```
pub fn superseded() -> impl Future<Output = ()> + Send + 'static {
    let process = process();
    async move {
        process.take_responsibility();
        process.install_signals();
        let since = process.draining_since().await;
        let grace = process.idle_grace();
        tokio::select! {
            _ = tokio::time::sleep_until(deadline_after(since, grace)) => {}
            _ = process.idle() => {}
        }
    }
}

/// Resolves the moment this generation stops accepting: a newer generation took over, or the
/// service is stopping. For handlers of long-lived connections (WebSocket, server-sent events,
/// long streams) to tell their clients to reconnect now, while the new generation serves.
///
/// Unlike [`superseded`], which is the server's graceful-shutdown signal and fires only after
/// the idle grace, this fires at once and has no effect on how the process exits; it is cheap
/// to call once per connection. It also fires when the generation goes on probation: its
/// clients should move to the new generation, and if this one is reinstated, a later call
/// waits for the next takeover.
///
/// # Example
///
/// ```no_run
/// use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
///
/// async fn echo(mut socket: WebSocket) {
///     let takeover = risefront::draining();
///     tokio::pin!(takeover);
///     loop {
///         tokio::select! {
///             message = socket.recv() => match message {
///                 Some(Ok(Message::Text(text))) => {
///                     if socket.send(Message::Text(text)).await.is_err() {
///                         return;
///                     }
///                 }
///                 Some(Ok(_)) => {}
///                 _ => return,
///             },
///             () = &mut takeover => {
///                 // 1012 Service Restart: reconnect, the new generation is serving.
///                 let close = CloseFrame { code: close_code::RESTART, reason: "upgrade".into() };
///                 let _ = socket.send(Message::Close(Some(close))).await;
///                 return;
///             }
///         }
///     }
/// }
/// ```
pub fn draining() -> impl Future<Output = ()> + Send + 'static {
    let process = process();
    async move {
        let mut rx = process.stage.subscribe();
        if rx.wait_for(|stage| *stage != Stage::Serving).await.is_err() {
            // The sender lives in a static and is never dropped.
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves once this generation is draining and has no connection left, upgraded ones
/// (WebSocket) included: what a `main` that served with `axum::serve` waits for before it
/// returns, so that connections handed over to handlers are not cut when the process ends.
/// Whatever is still open at the drain deadline is closed then, and the log says so.
pub fn drained() -> impl Future<Output = ()> + Send + 'static {
    let process = process();
    async move {
        process.draining_since().await;
        process.idle().await;
    }
}

/// Whether this generation has stopped accepting because it was superseded or told to stop.
/// It turns false again if the generation is reinstated after a failed takeover (see
/// [`Builder::probation`](crate::Builder::probation)).
pub fn is_draining() -> bool {
    // Read on every response by the drain layer: an atomic, not the watch channel's lock.
    process().draining_now.load(Ordering::Relaxed)
}

/// Whether the service is stopping: it was told to stop (SIGTERM or SIGINT to the front, or
/// to a standalone process) and is in its stop delay or draining.
///
/// Unlike [`is_draining`], it stays false when this generation is merely replaced by a newer
/// one (the service goes on), so it is the flag for a health check that load balancers
/// watch: answer 503 while it is true and they stop sending traffic before the listener
/// closes. See [`Builder::stop_delay`](crate::Builder::stop_delay).
///
/// # Example
///
/// ```no_run
/// use axum::{http::StatusCode, routing::get};
///
/// let health = get(|| async {
///     if risefront::is_stopping() {
///         (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
///     } else {
///         (StatusCode::OK, "ok\n")
///     }
/// });
/// let app: axum::Router = axum::Router::new().route("/healthz", health);
/// ```
pub fn is_stopping() -> bool {
    process().stopping_now.load(Ordering::Relaxed)
}

/// Resolves when the service is told to stop (SIGTERM or SIGINT to the front, or to a
/// standalone process): the moment [`is_stopping`] turns true, at the start of the stop delay,
/// while the listener still accepts. Never when this generation is merely replaced by a newer
/// one, since the service goes on. For a health reporter that pushes its status instead of
/// being asked, such as gRPC's `grpc.health.v1.Health` (see the `grpc` example).
///
/// # Example
///
/// ```no_run
/// # async fn mark_not_serving() {}
/// tokio::spawn(async {
///     risefront::stopping().await;
///     // Load balancers stop sending during the stop delay, before the listener closes.
///     mark_not_serving().await;
/// });
/// ```
pub fn stopping() -> impl Future<Output = ()> + Send + 'static {
    let process = process();
    async move { process.stopping().await }
}

/// Tells the front this generation is ready to take over. Only needed with
/// [`Builder::manual_ready`](crate::Builder::manual_ready), where the listener accepts nothing
/// until then; otherwise the server's first poll for a connection says so. Calling it again
/// does nothing. Any task may call it: it needs no listener.
///
/// # Example
///
/// ```no_run
/// # async fn warm_the_cache() {}
/// # async fn run() -> std::io::Result<()> {
/// let listener = risefront::Builder::new().manual_ready().bind(["127.0.0.1:8080"]).await?;
/// tokio::spawn(async {
///     warm_the_cache().await;
///     // The previous generation served until now; this one takes over from here.
///     risefront::ready();
/// });
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
/// axum::serve(listener, app)
///     .with_graceful_shutdown(risefront::superseded())
///     .await
/// # }
/// ```
pub fn ready() {
    process().mark_ready();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn superseded_does_nothing_until_polled() {
        let process = process();
        let unpolled = superseded();
        drop(unpolled);
        assert!(!process.handled.load(Ordering::Relaxed));
        let mut polled = Box::pin(superseded());
        assert!(futures_poll_once(polled.as_mut()).await.is_pending());
        assert!(process.handled.load(Ordering::Relaxed));
    }

    async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> std::task::Poll<F::Output> {
        std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut future).poll(cx)))
            .await
    }
}
