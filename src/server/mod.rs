//! [`GracefulServer`]: hyper's HTTP/1 + HTTP/2 server, with draining wired to the takeover.

mod connection;
mod io;

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::connection::{Builders, End};
use crate::accept::Accept;
use crate::config::deadline_after;
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
/// - each plain HTTP/1 keep-alive connection **moves** to the new generation at its next idle
///   point (between two requests, never in the middle of one), with whatever the client already
///   sent of its next request: the client keeps its connection, does not reconnect and cannot
///   race a close (see [`Builder::connection_handoff`](crate::Builder::connection_handoff));
/// - HTTP/2 connections get GOAWAY at once and finish their open streams;
/// - HTTP/1 connections that cannot move (TLS, a request with a body just answered, the handoff
///   off or refused) get `Connection: close` on their next response, so their clients leave
///   after it. An idle one is never closed under its client, who may be sending on it right
///   now: it waits for that next request (HAProxy's `idle-close-on-response`), unless an
///   [idle grace](Self::idle_grace) is set;
/// - at the drain deadline whatever is left is closed, counted and logged.
///
/// [`serve`](Self::serve) returns a [`ServeSummary`] once drained, so `main` can exit.
///
/// The client's address is in each request's extensions, as the [`Accept`] type's `Addr`
/// ([`Addr`](crate::Addr) for a [`RiseFrontListener`](crate::RiseFrontListener)) and, with the
/// `axum` feature, as `axum::extract::ConnectInfo` of it, so an axum handler can extract
/// `ConnectInfo<risefront::Addr>`.
///
/// Use `GracefulServer` for axum, hyper and tower services alike: it is what moves connections
/// at a takeover, drains HTTP/2 and returns the summary. With plain `axum::serve`, use
/// [`DrainLayer`](crate::DrainLayer) and [`superseded`](crate::superseded) for the old HTTP/1
/// behaviour (connections close and clients reconnect).
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
/// let summary = risefront::GracefulServer::new().serve(listener, service).await;
/// eprintln!("{summary}");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct GracefulServer {
    http1: http1::Builder,
    http2: http2::Builder<Executor>,
    idle_grace: Option<Duration>,
    drain_timeout: Option<Duration>,
}

impl Default for GracefulServer {
    fn default() -> Self {
        Self::new()
    }
}

/// The executor HTTP/2 connections of a [`GracefulServer`] run their streams on: the current
/// tokio runtime. It appears only as the type parameter of the HTTP/2 options
/// ([`GracefulServer::http2`]).
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct Executor;

impl<F> hyper::rt::Executor<F> for Executor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future);
    }
}

/// What a [`GracefulServer`] did, returned when it has drained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeSummary {
    /// Connections accepted in total (handed-over ones included).
    pub served: u64,
    /// Connections that moved to the generation that took over.
    pub moved: u64,
    /// Connections open when draining started that then finished here.
    pub drained: u64,
    /// Connections handed over whose new generation never confirmed it took them (it died or
    /// hung): they went with it.
    pub lost: u64,
    /// Connections still open at the drain deadline, closed by force.
    pub forced: u64,
    /// How long draining took.
    pub drain_time: Duration,
}

impl fmt::Display for ServeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "served {} connections; moved {} to the new generation, drained {} in {} ms; {} closed at the drain deadline",
            self.served,
            self.moved,
            self.drained,
            self.drain_time.as_millis(),
            self.forced
        )?;
        if self.lost > 0 {
            write!(
                f,
                "; {} lost with a new generation that never confirmed it took them",
                self.lost
            )?;
        }
        Ok(())
    }
}

/// Per-connection drain stage, broadcast to every connection task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    Serving,
    /// Draining started: HTTP/2 connections get GOAWAY now, HTTP/1 ones move at their next
    /// idle point.
    Draining,
    /// The idle grace (if one was set) is over: HTTP/1 connections that cannot move close once
    /// idle.
    GraceOver,
}

impl GracefulServer {
    /// A server with hyper's defaults (HTTP/1 with keep-alive, HTTP/2 with prior knowledge on
    /// the same port), the generation's drain timeout from the [`Builder`](crate::Builder), and
    /// no idle grace (see [`idle_grace`](Self::idle_grace)).
    #[must_use]
    pub fn new() -> Self {
        GracefulServer {
            http1: http1::Builder::new(),
            http2: http2::Builder::new(Executor),
            idle_grace: None,
            drain_timeout: None,
        }
    }

    /// HTTP/1 keep-alive (on by default): off, every connection closes after one response.
    #[must_use]
    pub fn keep_alive(mut self, on: bool) -> Self {
        self.http1.keep_alive(on);
        self
    }

    /// How long a client may take to send a request's headers on HTTP/1 before its
    /// connection is closed; `None` (the default) for no limit.
    ///
    /// hyper's clock for it also runs while a keep-alive connection waits for its next
    /// request, so a limit closes connections idle that long under their clients, who may be
    /// sending on them at that moment; hence off by default here.
    #[must_use]
    pub fn header_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        let timeout = timeout.into();
        if timeout.is_some() {
            // Without a timer hyper would panic at the first connection.
            self.http1.timer(hyper_util::rt::TokioTimer::new());
        }
        self.http1.header_read_timeout(timeout);
        self
    }

    /// Most concurrent HTTP/2 streams a client may open on one connection (hyper's default:
    /// 200).
    #[must_use]
    pub fn max_concurrent_streams(mut self, max: u32) -> Self {
        self.http2.max_concurrent_streams(max);
        self
    }

    /// HTTP/2 keep-alive pings: one every `interval` on a connection, which is closed if an
    /// answer takes longer than `timeout` (off by default).
    #[must_use]
    pub fn http2_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.http2
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(interval)
            .keep_alive_timeout(timeout);
        self
    }

    /// Any other HTTP/1 option, on hyper's own builder. An option that needs a timer (a
    /// timeout) needs `http1.timer(hyper_util::rt::TokioTimer::new())` too, as with hyper.
    ///
    /// ```
    /// let server = risefront::GracefulServer::new()
    ///     .http1(|http1| {
    ///         http1.max_buf_size(64 * 1024).title_case_headers(true);
    ///     });
    /// ```
    #[must_use]
    pub fn http1(mut self, configure: impl FnOnce(&mut http1::Builder)) -> Self {
        configure(&mut self.http1);
        self
    }

    /// Any other HTTP/2 option, on hyper's own builder (timeouts need a timer, as with
    /// hyper).
    ///
    /// ```
    /// let server = risefront::GracefulServer::new()
    ///     .http2(|http2| {
    ///         http2.initial_stream_window_size(1 << 20).max_header_list_size(64 * 1024);
    ///     });
    /// ```
    #[must_use]
    pub fn http2(mut self, configure: impl FnOnce(&mut http2::Builder<Executor>)) -> Self {
        configure(&mut self.http2);
        self
    }

    /// How long an idle HTTP/1 connection that cannot move may stay open once draining
    /// started; by default, until the drain deadline.
    ///
    /// Without a grace such a connection is only closed after answering its next request
    /// (with `Connection: close`), so a close never races a request the client is sending, and
    /// one still idle at the drain deadline is closed there. With one, idle connections are
    /// closed when it ends, as hyper's graceful shutdown does: the generation goes sooner, but
    /// a request sent at that moment fails. Connections that move are not affected.
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
    /// stack, `tower::service_fn`) until the generation has drained, and says what it did.
    ///
    /// It cannot fail: a failed connection is that connection's end, logged at debug level as
    /// hyper's own servers do, and an accept error is retried by the listener.
    pub async fn serve<L, S, B>(self, listener: L, service: S) -> ServeSummary
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
    pub async fn serve_hyper<L, S, B>(self, mut listener: L, service: S) -> ServeSummary
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
        // By default an idle connection that cannot move is never closed under its client: it
        // waits for its next request, answered with `Connection: close`, or for the deadline.
        let idle_grace = self.idle_grace;
        let drain_timeout = self
            .drain_timeout
            .unwrap_or_else(|| process.drain_timeout());
        let builders = Arc::new(Builders {
            http1: self.http1,
            http2: self.http2,
        });
        let (stage_tx, stage) = watch::channel(Stage::Serving);
        let mut connections = JoinSet::new();
        let mut served = 0u64;
        let mut moved = 0u64;

        // Accept until the listener stops (superseded or signalled), reaping finished
        // connections as we go so the set stays as small as the live connections.
        let mut generation = process.stages();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Some((io, addr)) = accepted else { break };
                    served += 1;
                    connections.spawn(connection::serve(
                        Arc::clone(&builders),
                        io,
                        addr,
                        service.clone(),
                        stage.clone(),
                    ));
                }
                // Connections also move during a probation.
                Some(joined) = connections.join_next(), if !connections.is_empty() => {
                    if matches!(joined, Ok(End::Moved)) {
                        moved += 1;
                    }
                }
                // On probation the listener only pauses, but clients should go to the new
                // generation as in a drain: connections move or get GOAWAY now. Reinstated,
                // those left are served normally again.
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
            "draining {open} connections (idle grace {}, deadline {} ms)",
            idle_grace.map_or_else(
                || "none: idle ones close after their next response".to_owned(),
                |grace| format!("{} ms", grace.as_millis())
            ),
            drain_timeout.as_millis()
        );
        let deadline = deadline_after(started, drain_timeout);
        let grace_over =
            tokio::time::sleep_until(deadline_after(started, idle_grace.unwrap_or(Duration::MAX)));
        tokio::pin!(grace_over);
        let mut grace_done = idle_grace.is_none();
        let (mut drained, mut lost) = (0u64, 0u64);
        loop {
            tokio::select! {
                joined = connections.join_next() => match joined {
                    Some(Ok(End::Moved)) => moved += 1,
                    Some(Ok(End::Lost)) => lost += 1,
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
            moved,
            drained,
            lost,
            forced,
            drain_time: started.elapsed(),
        };
        if forced > 0 || lost > 0 {
            tracing::warn!(moved, drained, lost, forced, "{summary}");
        } else {
            tracing::info!(moved, drained, "{summary}");
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::Full;
    use hyper::body::Bytes;

    use super::*;

    fn spawnable<F: std::future::Future + Send + 'static>(future: F) -> F {
        future
    }

    /// A plain tokio listener, as the tests' own `Accept`.
    struct Plain(tokio::net::TcpListener);

    impl Accept for Plain {
        type Io = tokio::net::TcpStream;
        type Addr = std::net::SocketAddr;

        async fn accept(&mut self) -> Option<(Self::Io, Self::Addr)> {
            self.0.accept().await.ok()
        }
    }

    /// Serves "hi" with `server` on a loopback port; the task is aborted on drop.
    async fn serving(server: GracefulServer) -> (std::net::SocketAddr, tokio::task::AbortHandle) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = tower::service_fn(|_: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hi"))))
        });
        let task = tokio::spawn(server.serve(Plain(listener), service));
        (addr, task.abort_handle())
    }

    /// Sends half a request head and reports whether the server closed the connection within
    /// `within`.
    async fn closes_a_slow_head(addr: std::net::SocketAddr, within: Duration) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        matches!(
            tokio::time::timeout(within, stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn a_header_read_timeout_closes_a_slow_head_and_none_is_the_default() {
        let (addr, task) =
            serving(GracefulServer::new().header_read_timeout(Duration::from_millis(200))).await;
        assert!(closes_a_slow_head(addr, Duration::from_secs(5)).await);
        task.abort();
        let (addr, task) = serving(GracefulServer::new()).await;
        assert!(!closes_a_slow_head(addr, Duration::from_millis(700)).await);
        task.abort();
    }

    #[tokio::test]
    async fn options_set_through_hyper_builders_take_effect() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, task) = serving(
            GracefulServer::new()
                .keep_alive(false)
                .http1(|http1| {
                    http1.title_case_headers(true);
                })
                .max_concurrent_streams(10)
                .http2_keep_alive(Duration::from_secs(10), Duration::from_secs(5)),
        )
        .await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
            .await
            .expect("keep-alive off: the server closes after the response")
            .unwrap();
        let response = String::from_utf8_lossy(&response);
        assert!(response.contains("Content-Length: 2"), "{response}");
        task.abort();
    }

    /// Type-checked, not run: a service that is `Clone + Send` but not `Sync` (tower's
    /// `BoxCloneService`) is served as before, by a future that `tokio::spawn` takes.
    #[allow(dead_code)]
    fn a_service_that_is_not_sync_can_be_served(listener: crate::RiseFrontListener) {
        let service =
            tower::util::BoxCloneService::new(tower::service_fn(|_: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hi"))))
            }));
        drop(spawnable(GracefulServer::new().serve(listener, service)));
    }
}
