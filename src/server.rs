//! [`GracefulServer`]: hyper-util's HTTP/1 + HTTP/2 server, with draining wired to the takeover.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::accept::Accept;
use crate::config::deadline_after;
use crate::layer::DrainFuture;
use crate::process;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Serves HTTP/1 and HTTP/2 (prior knowledge, on the same port) on a
/// [`RiseFrontListener`](crate::RiseFrontListener) (or any [`Accept`], such as a TLS listener)
/// with any tower service — an axum `Router`, a `ServiceBuilder` stack, or a hyper
/// `service_fn` wrapped with [`tower::service_fn`] — and drains with no request lost when the
/// generation is superseded or gets SIGTERM/SIGINT. No shutdown code in `main`.
///
/// Draining, from the moment a newer generation takes over:
/// - the listener stops accepting (the successor gets every new connection);
/// - HTTP/2 connections get GOAWAY at once and finish their open streams;
/// - HTTP/1 responses carry `Connection: close`, so keep-alive clients leave after their
///   current request;
/// - an idle HTTP/1 keep-alive connection is closed only after the idle grace, because a client
///   may be sending its next request on it right now; that request is still answered;
/// - at the drain deadline whatever is left is closed, counted and logged.
///
/// [`serve`](Self::serve) returns a [`ServeSummary`] once drained, so `main` can exit.
///
/// Use `GracefulServer` for hyper and tower services, or when you want HTTP/2 draining and the
/// summary; with plain `axum::serve`, use [`DrainLayer`](crate::DrainLayer) and
/// [`superseded`](crate::superseded) for the same HTTP/1 behaviour.
///
/// # Example
///
/// ```no_run
/// use std::convert::Infallible;
///
/// use http_body_util::Full;
/// use hyper::{Request, Response, body::{Bytes, Incoming}};
///
/// # async fn run() -> std::io::Result<()> {
/// let listener = risefront::bind(["127.0.0.1:8080"]).await?;
/// let service = tower::service_fn(|_req: Request<Incoming>| async {
///     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello\n"))))
/// });
/// let summary = risefront::GracefulServer::new().serve(listener, service).await?;
/// eprintln!("{summary}");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct GracefulServer {
    builder: auto::Builder<TokioExecutor>,
    idle_grace: Option<Duration>,
    drain_timeout: Option<Duration>,
}

impl Default for GracefulServer {
    fn default() -> Self {
        Self::new()
    }
}

/// What a [`GracefulServer`] did, returned when it has drained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeSummary {
    /// Connections accepted in total.
    pub served: u64,
    /// Connections still open when draining started that then finished cleanly.
    pub drained: u64,
    /// Connections still open at the drain deadline, closed by force.
    pub forced: u64,
    /// How long draining took.
    pub drain_time: Duration,
}

impl fmt::Display for ServeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "served {} connections; drained {} in {} ms; {} closed at the drain deadline",
            self.served,
            self.drained,
            self.drain_time.as_millis(),
            self.forced
        )
    }
}

/// Per-connection drain stage, broadcast to every connection task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Serving,
    /// Draining started: HTTP/2 connections get GOAWAY now.
    Draining,
    /// The idle grace is over: HTTP/1 connections close once idle.
    GraceOver,
}

impl GracefulServer {
    /// A server with hyper-util's defaults (HTTP/1 with keep-alive, HTTP/2 with prior
    /// knowledge) and the generation's idle grace and drain timeout from the
    /// [`Builder`](crate::Builder).
    #[must_use]
    pub fn new() -> Self {
        GracefulServer {
            builder: auto::Builder::new(TokioExecutor::new()),
            idle_grace: None,
            drain_timeout: None,
        }
    }

    /// The hyper-util builder, for HTTP/1 and HTTP/2 options.
    ///
    /// ```
    /// let mut server = risefront::GracefulServer::new();
    /// server.http().http2().max_concurrent_streams(500);
    /// server.http().http1().keep_alive(true);
    /// ```
    pub fn http(&mut self) -> &mut auto::Builder<TokioExecutor> {
        &mut self.builder
    }

    /// How long an idle HTTP/1 keep-alive connection stays open after draining starts.
    #[must_use]
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = Some(grace);
        self
    }

    /// How long draining may take before the remaining connections are closed.
    ///
    /// Capped by the process's own drain deadline ([`Builder::drain_timeout`](crate::Builder::drain_timeout),
    /// `RISEFRONT_DRAIN_TIMEOUT`): at that deadline risefront ends the process whatever this
    /// server is doing, so a longer value here has no effect.
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = Some(timeout);
        self
    }

    /// Serves connections from `listener` (a [`RiseFrontListener`](crate::RiseFrontListener),
    /// or anything [`Accept`]) with a tower `service` (an axum `Router`, a `ServiceBuilder`
    /// stack, `tower::service_fn`) until the generation has drained.
    ///
    /// Errors only if the server cannot start; failed connections are logged at debug level,
    /// as hyper's own servers do.
    pub async fn serve<L, S, B>(self, listener: L, service: S) -> std::io::Result<ServeSummary>
    where
        L: Accept,
        S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.serve_hyper(listener, TowerToHyperService::new(service))
            .await
    }

    /// Like [`serve`](Self::serve), for a hyper service such as `hyper::service::service_fn`.
    pub async fn serve_hyper<L, S, B>(
        self,
        mut listener: L,
        service: S,
    ) -> std::io::Result<ServeSummary>
    where
        L: Accept,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let process = process::process();
        process.take_responsibility();
        let idle_grace = self.idle_grace.unwrap_or_else(|| process.idle_grace());
        let drain_timeout = self
            .drain_timeout
            .unwrap_or_else(|| process.drain_timeout());
        let builder = Arc::new(self.builder);
        let (stage_tx, stage) = watch::channel(Stage::Serving);
        let mut connections = JoinSet::new();
        let mut served = 0u64;

        // Accept until the listener stops (superseded or signalled), reaping finished
        // connections as we go so the set stays as small as the live connections.
        let mut generation = process.stages();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Some((io, _)) = accepted else { break };
                    served += 1;
                    let service = Tracked::new(service.clone());
                    let builder = Arc::clone(&builder);
                    let stage = stage.clone();
                    connections.spawn(serve_connection(builder, io, service, stage));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                // On probation the listener only pauses, but clients should move to the new
                // generation as in a drain: HTTP/2 connections get GOAWAY now. Reinstated,
                // new connections are served normally again.
                Ok(()) = generation.changed() => {
                    let now = *generation.borrow_and_update();
                    let _ = stage_tx.send(if now == process::Stage::Serving {
                        Stage::Serving
                    } else {
                        Stage::Draining
                    });
                }
            }
        }

        let started = Instant::now();
        let open = connections.len() as u64;
        let _ = stage_tx.send(Stage::Draining);
        tracing::info!(
            open,
            "draining {open} connections (idle grace {} ms, deadline {} ms)",
            idle_grace.as_millis(),
            drain_timeout.as_millis()
        );
        let deadline = deadline_after(started, drain_timeout);
        let grace_over = tokio::time::sleep_until(deadline_after(started, idle_grace));
        tokio::pin!(grace_over);
        let mut grace_done = false;
        let mut drained = 0u64;
        loop {
            tokio::select! {
                joined = connections.join_next() => match joined {
                    Some(_) => drained += 1,
                    None => break,
                },
                _ = &mut grace_over, if !grace_done => {
                    grace_done = true;
                    let _ = stage_tx.send(Stage::GraceOver);
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let forced = connections.len() as u64;
        connections.shutdown().await;
        let summary = ServeSummary {
            served,
            drained,
            forced,
            drain_time: started.elapsed(),
        };
        if forced > 0 {
            tracing::warn!(forced, "{summary}");
        } else {
            tracing::info!("{summary}");
        }
        Ok(summary)
    }
}

async fn serve_connection<I, S, B>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    io: I,
    service: Tracked<S>,
    mut stage: watch::Receiver<Stage>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let http2 = Arc::clone(&service.http2);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = async {
            // HTTP/2 has GOAWAY, which lets in-flight streams finish and tells the client to
            // open new ones elsewhere: send it as soon as draining starts. HTTP/1 has nothing
            // like it, so wait out the idle grace.
            let _ = stage
                .wait_for(|s| *s == Stage::GraceOver || (*s == Stage::Draining && http2.load(Ordering::Relaxed)))
                .await;
        } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("connection ended with an error: {e}");
    }
}

/// The user's service (as a hyper service), marking HTTP/2 connections and adding `Connection: close` to HTTP/1
/// responses written while draining.
struct Tracked<S> {
    inner: S,
    http2: Arc<AtomicBool>,
}

impl<S> Tracked<S> {
    fn new(inner: S) -> Self {
        Tracked {
            inner,
            http2: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = DrainFuture<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        if request.version() >= Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        let closable = crate::layer::closable(&request);
        DrainFuture::new(self.inner.call(request), closable)
    }
}
