//! [`DrainLayer`]: `Connection: close` on HTTP/1 responses once the generation is draining.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, Version};
use pin_project::pin_project;
use tower::{Layer, Service};

use crate::process::is_draining;

/// A tower layer that adds `Connection: close` to every HTTP/1 response written after this
/// generation was superseded, so keep-alive clients leave after their current request instead
/// of sending their next one on a connection the server is about to close.
///
/// Use it with `axum::serve(..).with_graceful_shutdown(risefront::superseded())`; together they
/// let no request fail across a takeover (see the crate docs for the measurements). HTTP/2
/// responses are left alone: HTTP/2 has GOAWAY for this, sent by hyper's graceful shutdown.
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
        let http1 = request.version() < Version::HTTP_2;
        DrainFuture::new(self.inner.call(request), http1)
    }
}

/// The response future of [`DrainService`].
#[pin_project]
#[derive(Debug)]
pub struct DrainFuture<F> {
    #[pin]
    inner: F,
    http1: bool,
}

impl<F> DrainFuture<F> {
    /// `http1`: whether the request was HTTP/1.x, the only version `Connection: close` exists in.
    pub(crate) fn new(inner: F, http1: bool) -> Self {
        DrainFuture { inner, http1 }
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
        if *this.http1 && is_draining() {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response))
    }
}
