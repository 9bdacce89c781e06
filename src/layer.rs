//! [`DrainLayer`]: `Connection: close` on HTTP/1 responses once the generation is draining,
//! except on protocol upgrades (WebSocket), whose `Connection: upgrade` must stand.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::{CONNECTION, HeaderValue, UPGRADE};
use http::{Request, Response, StatusCode, Version};
use pin_project::pin_project;
use tower::{Layer, Service};

use crate::process::process;

/// A tower layer that adds `Connection: close` to HTTP/1 responses written after this
/// generation was superseded, so keep-alive clients leave after their current request instead
/// of sending their next one on a connection the server is about to close.
///
/// The closes are spread over a short window ([`Builder::close_spread`], 250 ms by default):
/// each connection open at the takeover gets one, in turn, so a thousand keep-alive clients do
/// not all reconnect to the new generation in the same millisecond. After the window every
/// response closes its connection.
///
/// [`Builder::close_spread`]: crate::Builder::close_spread
///
/// Use it with `axum::serve(..).with_graceful_shutdown(risefront::superseded())`; together they
/// let no request fail across a takeover (see the crate docs for the measurements). HTTP/2
/// responses are left alone: HTTP/2 has GOAWAY for this, sent by hyper's graceful shutdown. So
/// are requests asking for a protocol upgrade and `101 Switching Protocols` responses: a
/// WebSocket handshake during the idle grace still succeeds (the handler then closes the
/// socket itself, see [`draining`](crate::draining)).
///
/// # Example
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// # async fn run() -> std::io::Result<()> {
/// let app = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(risefront::DrainLayer::new());
/// axum::serve(risefront::bind(["127.0.0.1:8080"]).await?, app)
///     .with_graceful_shutdown(risefront::superseded())
///     .await
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DrainLayer {
    _private: (),
}

impl DrainLayer {
    /// Creates the layer.
    #[must_use]
    pub fn new() -> Self {
        DrainLayer { _private: () }
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = DrainService<S>;

    fn layer(&self, inner: S) -> DrainService<S> {
        DrainService { inner }
    }
}

/// The service made by [`DrainLayer`].
#[derive(Debug, Clone)]
pub struct DrainService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for DrainService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = DrainFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let closable = closable(&request);
        let will_move = request.extensions().get::<WillMove>().cloned();
        DrainFuture::new(self.inner.call(request), closable, will_move)
    }
}

/// Put in a request's extensions by a server that can move its connection to the next
/// generation ([`GracefulServer`](crate::GracefulServer)): asked when the response is written,
/// it says whether the connection is to move after this response rather than close. Such a
/// connection must not be told to close, or its client would leave it.
#[derive(Clone)]
pub(crate) struct WillMove(pub(crate) Arc<dyn Fn() -> bool + Send + Sync>);

impl fmt::Debug for WillMove {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WillMove").field(&(self.0)()).finish()
    }
}

/// Whether `Connection: close` may be added to the response to `request`: HTTP/1 only (the
/// header does not exist in HTTP/2), and never when the request asks for a protocol upgrade.
pub(crate) fn closable<B>(request: &Request<B>) -> bool {
    let asks_upgrade = request.headers().contains_key(UPGRADE)
        || request
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    request.version() < Version::HTTP_2 && !asks_upgrade
}

/// The response future of [`DrainService`].
#[pin_project]
#[derive(Debug)]
pub struct DrainFuture<F> {
    #[pin]
    inner: F,
    closable: bool,
    will_move: Option<WillMove>,
}

impl<F> DrainFuture<F> {
    /// `closable`: whether the response may get `Connection: close` (see [`closable`]);
    /// `will_move`: whether its connection moves to the next generation instead.
    pub(crate) fn new(inner: F, closable: bool, will_move: Option<WillMove>) -> Self {
        DrainFuture {
            inner,
            closable,
            will_move,
        }
    }
}

impl<F, ResBody, E> Future for DrainFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        // Decided when the response is written, not when the request arrived: a request that
        // started before the takeover and ends after it must still close its connection.
        if *this.closable
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
            && !this.will_move.as_ref().is_some_and(|moves| (moves.0)())
            && process().close_now()
        {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response))
    }
}
