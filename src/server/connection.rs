//! One connection of a [`GracefulServer`](super::GracefulServer), from its first bytes to its
//! end: HTTP/2 or HTTP/1, drained at the takeover, and, where it can, moved to the generation
//! that took over at its next idle point instead of being closed.

use std::any::{Any, TypeId};
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use http::header::CONNECTION;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use pin_project::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, watch};

use super::Stage;
use super::io::{Protocol, ServedIo};
use crate::layer::{DrainFuture, WillMove, closable};
use crate::listener::Connection;
use crate::transfer::{self, Outbox, Outcome};

type BoxError = Box<dyn StdError + Send + Sync>;

/// How a connection ended, for the drain summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Closed here (by either side), or failed.
    Closed,
    /// Taken by the generation that took over.
    Moved,
    /// Handed over, but the new generation never answered: gone with it.
    Lost,
}

/// A service as `GracefulServer` runs it: one clone per connection, its futures on any thread.
pub(super) trait Served<B>:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> Served<B> for S where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Clone
        + Send
        + 'static
{
}

/// A response body hyper can send from any thread.
pub(super) trait SentBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> SentBody for B where B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

/// hyper's connection builders, shared by every connection of one server.
pub(super) struct Builders {
    pub(super) http1: http1::Builder,
    pub(super) http2: http2::Builder<super::Executor>,
}

/// Serves one accepted connection to its end.
pub(super) async fn serve<I, A, S, B>(
    builders: Arc<Builders>,
    io: I,
    addr: A,
    service: S,
    mut stage: watch::Receiver<Stage>,
) -> End
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Clone + Send + Sync + 'static,
    S: Served<B>,
    B: SentBody,
{
    // Only risefront's own connections can move: a TLS session cannot be handed to another
    // process (no kTLS), and other `Accept` types are not sockets we know.
    let movable = TypeId::of::<I>() == TypeId::of::<Connection>();
    let mut refused_by = None;
    let mut io = ServedIo::new(io, Vec::new());
    let protocol = loop {
        let introduced = transfer::introduced();
        tokio::pin!(introduced);
        let now = *stage.borrow_and_update();
        // A connection that has not said what it speaks yet is at an idle point too.
        if movable
            && now >= Stage::Draining
            && let Some(outbox) = successor(refused_by)
        {
            let (inner, prefix) = io.into_parts();
            match hand_over(&outbox, inner, prefix).await {
                Handed::Done(end) => return end,
                Handed::Kept(inner, prefix) => {
                    io = ServedIo::new(inner, prefix);
                    refused_by = Some(outbox.id());
                }
            }
        }
        tokio::select! {
            sniffed = io.sniff() => match sniffed {
                Ok(protocol) => break protocol,
                Err(e) => {
                    tracing::debug!("connection failed before its first request: {e}");
                    return End::Closed;
                }
            },
            () = &mut introduced, if movable => {}
            () = changed(&mut stage) => {
                // As hyper does at its graceful shutdown: a connection that sent nothing by
                // the end of the idle grace, and that nobody takes, is closed.
                if *stage.borrow() == Stage::GraceOver
                    && (!movable || successor(refused_by).is_none())
                {
                    return End::Closed;
                }
            }
        }
    };
    match protocol {
        Protocol::Closed => End::Closed,
        Protocol::Http2 => serve_http2(&builders, io, addr, service, stage).await,
        Protocol::Http1 => {
            serve_http1(&builders, io, addr, service, stage, movable, refused_by).await
        }
    }
}

/// The generation to move a connection to: the current successor, unless that one already
/// refused it (a newer one, introduced later, may take it).
fn successor(refused_by: Option<u64>) -> Option<Outbox> {
    transfer::successor().filter(|outbox| Some(outbox.id()) != refused_by)
}

/// Resolves when the stage changes; never if the server is gone (it then aborts us anyway).
async fn changed(stage: &mut watch::Receiver<Stage>) {
    if stage.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn serve_http2<I, A, S, B>(
    builders: &Builders,
    io: ServedIo<I>,
    addr: A,
    service: S,
    mut stage: watch::Receiver<Stage>,
) -> End
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Clone + Send + Sync + 'static,
    S: Served<B>,
    B: SentBody,
{
    let state = Arc::new(ConnState::new(false, None));
    let tracked = Tracked::new(Box::new(service), addr, Arc::clone(&state));
    let mut connection = builders.http2.serve_connection(TokioIo::new(io), tracked);
    // HTTP/2 has GOAWAY, which lets open streams finish and sends the client elsewhere for new
    // ones: sent as soon as the generation stops accepting, once the connection has carried a
    // request. On a connection that has not yet, the client's first request may be on its way
    // with the preface, and a GOAWAY sent now could refuse it: that one is answered first.
    let mut shut_down = false;
    let result = loop {
        let notified = state.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = *stage.borrow_and_update();
        let used = state.requests.load(Ordering::Acquire) > 0;
        if !shut_down && now >= Stage::Draining && (used || now == Stage::GraceOver) {
            shut_down = true;
            Pin::new(&mut connection).graceful_shutdown();
        }
        tokio::select! {
            result = &mut connection => break result,
            () = changed(&mut stage) => {}
            () = &mut notified => {}
        }
    };
    if let Err(e) = result {
        tracing::debug!("connection ended with an error: {e}");
    }
    End::Closed
}

/// What an HTTP/1 connection should do next, decided from the generation's stage and the
/// connection's own state each time either changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Go on serving.
    Serve,
    /// Idle, and a successor takes connections: end it here without closing it, and hand it
    /// over.
    Move,
    /// Start hyper's graceful shutdown: an idle connection closes now, a busy one after its
    /// response (the old way, for what cannot move).
    Shutdown,
}

/// A connection's state as [`decide`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Snapshot {
    /// Requests being answered: handlers running plus responses being written.
    pub(super) in_flight: usize,
    /// Whether the connection may move at its next idle point (see [`ConnState::will_move`]).
    pub(super) will_move: bool,
}

/// The idle-point decision. A connection moves only when nothing is being answered on it, so
/// no response is ever cut or sent by two generations: the handler is done and its response
/// fully written (hyper flushes before it would shut the socket down). Until then it serves
/// on, its responses without `Connection: close`. A connection that cannot move drains the old
/// way: `Connection: close` on its next response, and after the idle grace hyper's graceful
/// shutdown, which closes it once idle.
pub(super) fn decide(stage: Stage, now: Snapshot) -> Step {
    match stage {
        Stage::Serving => Step::Serve,
        Stage::Draining | Stage::GraceOver if now.will_move => {
            if now.in_flight == 0 {
                Step::Move
            } else {
                Step::Serve
            }
        }
        Stage::Draining => Step::Serve,
        Stage::GraceOver => Step::Shutdown,
    }
}

async fn serve_http1<I, A, S, B>(
    builders: &Builders,
    mut io: ServedIo<I>,
    addr: A,
    service: S,
    mut stage: watch::Receiver<Stage>,
    movable: bool,
    mut refused_by: Option<u64>,
) -> End
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Clone + Send + Sync + 'static,
    S: Served<B>,
    B: SentBody,
{
    // Each turn is one hyper connection on the socket; a connection the successor refused
    // comes back for another, served the old way.
    loop {
        let flags = io.flags();
        let state = Arc::new(ConnState::new(movable, refused_by));
        let tracked = Tracked::new(Box::new(service.clone()), addr.clone(), Arc::clone(&state));
        let mut connection = builders
            .http1
            .serve_connection(TokioIo::new(io), tracked)
            .with_upgrades();
        let mut shut_down = false;
        let outbox = loop {
            // Registered before the state is read, so that a change in between is not missed.
            let notified = state.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let introduced = transfer::introduced();
            tokio::pin!(introduced);
            let successor = if movable { successor(refused_by) } else { None };
            let now = Snapshot {
                in_flight: state.in_flight.load(Ordering::Acquire),
                will_move: successor.is_some() && state.may_move(),
            };
            match decide(*stage.borrow_and_update(), now) {
                Step::Move => {
                    if let Some(outbox) = successor {
                        break Some(outbox);
                    }
                }
                Step::Shutdown if !shut_down => {
                    shut_down = true;
                    Pin::new(&mut connection).graceful_shutdown();
                }
                Step::Shutdown | Step::Serve => {}
            }
            tokio::select! {
                result = &mut connection => {
                    if let Err(e) = result {
                        tracing::debug!("connection ended with an error: {e}");
                    }
                    break None;
                }
                () = changed(&mut stage) => {}
                () = &mut notified => {}
                () = &mut introduced, if movable => {}
            }
        };
        let Some(outbox) = outbox else {
            return End::Closed;
        };
        // Idle, and nothing ran in between: hyper ends the connection at once, without a
        // byte written, and gives the socket back untouched.
        flags.hold_shutdown();
        Pin::new(&mut connection).graceful_shutdown();
        if let Err(e) = (&mut connection).await {
            tracing::debug!("connection ended with an error: {e}");
            return End::Closed;
        }
        if !flags.ended_movable() {
            // The client closed it meanwhile; hyper shut it down.
            return End::Closed;
        }
        // None after an upgrade, which `may_move` rules out.
        let Some(parts) = connection.into_parts() else {
            return End::Closed;
        };
        let (inner, rest) = parts.io.into_inner().into_parts();
        let mut unread = parts.read_buf.to_vec();
        unread.extend_from_slice(&rest);
        match hand_over(&outbox, inner, unread).await {
            Handed::Done(end) => return end,
            Handed::Kept(inner, unread) => {
                io = ServedIo::new(inner, unread);
                refused_by = Some(outbox.id());
            }
        }
    }
}

enum Handed<I> {
    Done(End),
    /// Refused, or nobody to take it: serve it on, these bytes first.
    Kept(I, Vec<u8>),
}

/// Offers the connection to the successor with the bytes read from it that no request
/// consumed (hyper's buffer, then what it was not given yet, then what an earlier handoff
/// left to replay).
async fn hand_over<I: 'static>(outbox: &Outbox, io: I, mut unread: Vec<u8>) -> Handed<I> {
    let mut slot = Some(io);
    let Some(mut connection) = take_connection(&mut slot) else {
        return match slot {
            Some(io) => Handed::Kept(io, unread),
            None => Handed::Done(End::Closed),
        };
    };
    unread.extend(connection.take_replay());
    match outbox.offer(connection, unread).await {
        Outcome::Moved => Handed::Done(End::Moved),
        Outcome::Lost => Handed::Done(End::Lost),
        Outcome::Kept(connection, unread) => match put_back::<I>(connection) {
            Some(io) => Handed::Kept(io, unread),
            None => Handed::Done(End::Closed),
        },
    }
}

/// Takes the connection out of `slot` if it is risefront's own [`Connection`].
fn take_connection<I: 'static>(slot: &mut Option<I>) -> Option<Connection> {
    (slot as &mut dyn Any)
        .downcast_mut::<Option<Connection>>()?
        .take()
}

/// The connection as the server's own type again (which it is: see [`take_connection`]).
fn put_back<I: 'static>(connection: Connection) -> Option<I> {
    let mut slot = Some(connection);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<I>>()?
        .take()
}

/// What the connection task and its service share about one HTTP/1 connection.
pub(super) struct ConnState {
    /// A connection of ours: it can move.
    movable: bool,
    /// The successor that refused it, if one did: only a newer one may take it.
    refused_by: Option<u64>,
    /// Requests being answered: handlers running plus responses not fully written.
    in_flight: AtomicUsize,
    /// Requests received in all.
    requests: AtomicUsize,
    /// The last request had a body. hyper does not say whether the handler read it to its
    /// end, and a connection moved with the rest of a body unread would have that body parsed
    /// as the next request: such a connection moves only after a request without one.
    tainted: AtomicBool,
    /// Keep-alive ends with the current response: asked by the client or the app, or the
    /// connection was upgraded (WebSocket). Nothing to move.
    closing: AtomicBool,
    changed: Notify,
}

impl ConnState {
    fn new(movable: bool, refused_by: Option<u64>) -> Self {
        ConnState {
            movable,
            refused_by,
            in_flight: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            tainted: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// Whether the connection can move at its next idle point, if a successor takes it.
    fn may_move(&self) -> bool {
        self.movable
            && !self.tainted.load(Ordering::Acquire)
            && !self.closing.load(Ordering::Acquire)
    }

    /// Whether the connection moves after the response being written: then that response must
    /// not tell the client to close.
    fn will_move(&self) -> bool {
        self.may_move() && successor(self.refused_by).is_some()
    }

    fn begin(&self, request: &Request<Incoming>) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.requests.fetch_add(1, Ordering::AcqRel) == 0 {
            self.changed.notify_waiters();
        }
        self.tainted
            .store(!request.body().is_end_stream(), Ordering::Release);
        if asks_close(request.version(), request.headers()) {
            self.closing.store(true, Ordering::Release);
        }
    }

    fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }
}

/// A request with `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`: the
/// connection ends after its response.
fn asks_close(version: Version, headers: &HeaderMap) -> bool {
    has_token(headers, "close")
        || (version <= Version::HTTP_10 && !has_token(headers, "keep-alive"))
}

fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The user's service as one connection runs it: it passes the client's address on (as
/// `ConnectInfo` for axum), counts the requests being answered, and adds `Connection: close`
/// to HTTP/1 responses written while draining, unless the connection is to move.
pub(super) struct Tracked<S, A> {
    /// Boxed so that hyper's connection is `Unpin` whatever the service, which taking the
    /// connection back apart at an idle point needs.
    inner: Box<S>,
    addr: A,
    state: Arc<ConnState>,
}

impl<S, A> Tracked<S, A> {
    fn new(inner: Box<S>, addr: A, state: Arc<ConnState>) -> Self {
        Tracked { inner, addr, state }
    }
}

impl<S, A, B> hyper::service::Service<Request<Incoming>> for Tracked<S, A>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    A: Clone + Send + Sync + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        self.state.begin(&request);
        let extensions = request.extensions_mut();
        extensions.insert(self.addr.clone());
        #[cfg(feature = "axum")]
        extensions.insert(axum::extract::ConnectInfo(self.addr.clone()));
        let state = Arc::clone(&self.state);
        let will_move = WillMove(Arc::new(move || state.will_move()));
        extensions.insert(will_move.clone());
        let closable = closable(&request);
        TrackedFuture {
            inner: DrainFuture::new(self.inner.call(request), closable, Some(will_move)),
            guard: Some(InFlight(Arc::clone(&self.state))),
        }
    }
}

/// Counts one request as being answered until dropped: with the response body, once hyper has
/// written it all (or the handler failed).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The response future of [`Tracked`].
#[pin_project]
pub(super) struct TrackedFuture<F> {
    #[pin]
    inner: DrainFuture<F>,
    guard: Option<InFlight>,
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        if let Some(guard) = this.guard.as_ref()
            && (response.status() == StatusCode::SWITCHING_PROTOCOLS
                || has_token(response.headers(), "close"))
        {
            guard.0.closing.store(true, Ordering::Release);
        }
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody {
            inner,
            _guard: guard,
        })))
    }
}

/// A response body that keeps its request counted until hyper is done with it.
#[pin_project]
pub(super) struct TrackedBody<B> {
    #[pin]
    inner: B,
    _guard: Option<InFlight>,
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(in_flight: usize, will_move: bool) -> Snapshot {
        Snapshot {
            in_flight,
            will_move,
        }
    }

    #[test]
    fn a_serving_generation_never_moves_or_shuts_down() {
        for in_flight in [0, 1, 5] {
            for will_move in [false, true] {
                assert_eq!(
                    decide(Stage::Serving, snapshot(in_flight, will_move)),
                    Step::Serve
                );
            }
        }
    }

    #[test]
    fn a_connection_moves_only_when_nothing_is_being_answered() {
        for stage in [Stage::Draining, Stage::GraceOver] {
            assert_eq!(decide(stage, snapshot(0, true)), Step::Move);
            assert_eq!(decide(stage, snapshot(1, true)), Step::Serve);
            assert_eq!(decide(stage, snapshot(2, true)), Step::Serve);
        }
    }

    #[test]
    fn what_cannot_move_drains_the_old_way() {
        // Until the idle grace ends only `Connection: close` on responses; then hyper's
        // graceful shutdown, busy or not.
        assert_eq!(decide(Stage::Draining, snapshot(0, false)), Step::Serve);
        assert_eq!(decide(Stage::Draining, snapshot(3, false)), Step::Serve);
        assert_eq!(decide(Stage::GraceOver, snapshot(0, false)), Step::Shutdown);
        assert_eq!(decide(Stage::GraceOver, snapshot(3, false)), Step::Shutdown);
    }

    #[test]
    fn close_is_asked_by_the_header_or_by_http_1_0() {
        let mut headers = HeaderMap::new();
        assert!(!asks_close(Version::HTTP_11, &headers));
        assert!(asks_close(Version::HTTP_10, &headers));
        headers.insert(CONNECTION, "Keep-Alive".parse().unwrap());
        assert!(!asks_close(Version::HTTP_10, &headers));
        headers.insert(CONNECTION, "te, close".parse().unwrap());
        assert!(asks_close(Version::HTTP_11, &headers));
    }

    #[test]
    fn a_request_with_a_body_keeps_its_connection_until_one_without() {
        let state = ConnState::new(true, None);
        assert!(state.may_move());
        state.tainted.store(true, Ordering::Release);
        assert!(!state.may_move());
        state.tainted.store(false, Ordering::Release);
        state.closing.store(true, Ordering::Release);
        assert!(!state.may_move());
        assert!(!ConnState::new(false, None).may_move());
    }
}
