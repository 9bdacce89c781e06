//! [`RiseFrontListener`], the [`Connection`]s it yields and their [`Addr`].
//!
//! A generation accepts directly on duplicates of the front's listening sockets: no proxy,
//! no per-connection cost, real client addresses. When the generation is superseded its
//! duplicates are closed at once, so the kernel hands every new connection to the successor.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use pin_project::{pin_project, pinned_drop};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::addr::{Addr, ListenAddr};
use crate::config::Config;
use crate::net::{Target, bind_target};
use crate::process::{self, Gate};
use crate::replay::Replay;
use crate::socket::{Accepting, Socket, Stream};

/// Accepts connections on the sockets handed over by the front.
///
/// Implements `axum::serve::Listener` (with the default `axum` feature), so it goes straight
/// into `axum::serve`, and
/// [`futures_core::Stream`] for hand-written hyper loops. Connections are accepted fairly from
/// every address. Transient accept errors (out of descriptors, aborted handshakes) are logged
/// and retried with backoff; they never end the listener.
///
/// Once the generation is superseded (or asked to stop) the listener stops accepting: the
/// stream ends, and `axum::serve`'s accept waits forever while the server drains. During a
/// [probation](crate::Builder::probation) window it only pauses, keeping its sockets, and
/// accepts again if the generation is reinstated.
///
/// # Example
///
/// ```no_run
/// use axum::{Router, extract::ConnectInfo, routing::get};
///
/// # async fn run() -> std::io::Result<()> {
/// let listener = risefront::bind(["127.0.0.1:8080"]).await?;
/// let app = Router::new().route(
///     "/",
///     get(|ConnectInfo(client): ConnectInfo<risefront::Addr>| async move {
///         format!("hello {client}\n")
///     }),
/// );
/// axum::serve(listener, app.into_make_service_with_connect_info::<risefront::Addr>())
///     .with_graceful_shutdown(risefront::superseded())
///     .await
/// # }
/// ```
pub struct RiseFrontListener {
    slot: Arc<Slot>,
    local: Vec<ListenAddr>,
    generation: u64,
    next: usize,
    auto_ready: bool,
    /// With manual readiness: accept nothing until the app says it is ready, so that a
    /// warming-up generation does not take connections from the shared queue too early.
    waiting_ready: bool,
    backoff: Option<Pin<Box<Sleep>>>,
    delay: Duration,
}

/// The listening sockets of one listener, shared with the drain logic so that they can be
/// closed the instant the generation is superseded, even if nobody is polling `accept`.
struct Slot {
    inner: Mutex<SlotInner>,
}

struct SlotInner {
    listeners: Vec<Accepting>,
    /// Where the listeners accept, to route handed-over connections.
    local: Vec<ListenAddr>,
    /// Connections a superseded generation handed over, yielded before new ones (and even
    /// once closed: they were taken and must be served).
    handed: VecDeque<Connection>,
    closed: bool,
    /// On probation: accept nothing, but keep the sockets for a possible reinstatement.
    paused: bool,
    waker: Option<Waker>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotInner> {
        // A poisoned lock only means a panic elsewhere; the data is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Gate for Slot {
    fn wake(&self) {
        if let Some(waker) = self.lock().waker.take() {
            waker.wake();
        }
    }

    /// Closes our duplicates of the listening sockets; the front and the successor keep theirs.
    fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.listeners.clear();
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
    }

    /// Connections queued meanwhile go to the generation that took over; if this one is
    /// reinstated, the next poll takes whatever waits in the queue.
    fn pause(&self, paused: bool) {
        let mut inner = self.lock();
        inner.paused = paused;
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
    }

    fn covers(&self, local: &ListenAddr) -> bool {
        self.lock().local.iter().any(|ours| ours.covers(local))
    }

    /// Under the lock that pausing and closing take: a generation that stepped aside takes
    /// nothing more, so the sender goes on serving what it offered.
    fn adopt(&self, stream: Stream, peer: Addr, unread: Vec<u8>) -> bool {
        let mut inner = self.lock();
        if inner.closed || inner.paused {
            return false;
        }
        inner
            .handed
            .push_back(Connection::adopted(stream, peer, unread));
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
        true
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl RiseFrontListener {
    pub(crate) fn new(listeners: Vec<Accepting>, generation: u64, config: &Config) -> Self {
        Self::with_readiness(listeners, generation, config.manual_ready)
    }

    fn with_readiness(listeners: Vec<Accepting>, generation: u64, manual_ready: bool) -> Self {
        let local: Vec<ListenAddr> = listeners.iter().filter_map(Accepting::local_addr).collect();
        let slot = Arc::new(Slot {
            inner: Mutex::new(SlotInner {
                listeners,
                local: local.clone(),
                handed: VecDeque::new(),
                closed: false,
                paused: false,
                waker: None,
            }),
        });
        let weak: Weak<Slot> = Arc::downgrade(&slot);
        let gate: Weak<dyn Gate> = weak;
        process::process().register(gate);
        RiseFrontListener {
            slot,
            local,
            generation,
            next: 0,
            auto_ready: !manual_ready,
            waiting_ready: manual_ready,
            backoff: None,
            delay: MIN_BACKOFF,
        }
    }

    /// Binds every address in this process, with no front (standalone mode).
    pub(crate) async fn standalone(targets: &[Target], config: &Config) -> io::Result<Self> {
        let mut listeners = Vec::with_capacity(targets.len());
        for target in targets {
            listeners.push(
                bind_target(target, config.unix_mode)
                    .await
                    .and_then(Socket::into_accepting)?,
            );
        }
        process::process().configure(config, 0);
        process::process().install_signals();
        Ok(Self::new(listeners, 0, config))
    }

    /// The generation number the front gave this process: 1 for the first, then 2, 3, …
    /// (0 in standalone mode).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The addresses this listener accepts on, in the order given to `bind`.
    pub fn local_addrs(&self) -> &[ListenAddr] {
        &self.local
    }

    /// Splits this listener into one per address, in the order given to `bind` (repeated
    /// addresses count once), so that each address can be served by its own app: a public
    /// router on one port and an admin or metrics router on another, say.
    ///
    /// Each part drains with the generation like the whole would: all stop accepting at the
    /// takeover, and [`superseded`](crate::superseded) serves as the graceful-shutdown signal
    /// of each server. With automatic readiness, the first part polled for a connection makes
    /// the generation ready.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::future::IntoFuture;
    ///
    /// use axum::{Router, routing::get};
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let [public, admin]: [risefront::RiseFrontListener; 2] =
    ///     risefront::bind(["0.0.0.0:8080", "127.0.0.1:9090"])
    ///         .await?
    ///         .split()
    ///         .try_into()
    ///         .expect("two addresses");
    /// let app = Router::new()
    ///     .route("/", get(|| async { "hello" }))
    ///     .layer(risefront::DrainLayer::new());
    /// let metrics = Router::new().route("/metrics", get(|| async { "up 1\n" }));
    /// tokio::try_join!(
    ///     axum::serve(public, app)
    ///         .with_graceful_shutdown(risefront::superseded())
    ///         .into_future(),
    ///     axum::serve(admin, metrics)
    ///         .with_graceful_shutdown(risefront::superseded())
    ///         .into_future(),
    /// )?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use = "the listeners are closed when dropped"]
    pub fn split(self) -> Vec<RiseFrontListener> {
        let manual_ready = self.waiting_ready;
        let listeners = std::mem::take(&mut self.slot.lock().listeners);
        listeners
            .into_iter()
            .map(|listener| Self::with_readiness(vec![listener], self.generation, manual_ready))
            .collect()
    }

    /// Tells the front this generation is ready to take over: the same as [`crate::ready`],
    /// which is the one to call, since it needs no listener (the listener has usually moved
    /// into `axum::serve` by the time the app is warm).
    #[doc(hidden)] // Still compiles for old code; the docs show each item once.
    #[deprecated(
        since = "0.1.0",
        note = "call `risefront::ready()`, which needs no listener"
    )]
    pub fn ready(&self) {
        process::process().mark_ready();
    }

    /// Polls for the next connection; `Ready(None)` once the generation stopped accepting.
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<(Connection, Addr)>> {
        if self.auto_ready {
            self.auto_ready = false;
            process::process().mark_ready();
        }
        if self.waiting_ready {
            let mut inner = self.slot.lock();
            // Checked under the slot's lock, which `mark_ready` takes to wake us: no lost wakeup.
            // Closed before it was ready (it lost the front, say), readiness no longer matters:
            // the listener ends below.
            if !inner.closed && !process::process().is_ready() {
                inner.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            drop(inner);
            self.waiting_ready = false;
        }
        loop {
            if let Some(sleep) = self.backoff.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                self.backoff = None;
            }
            let error = {
                let mut inner = self.slot.lock();
                if let Some(moved) = inner.handed.pop_front() {
                    let peer = moved.peer;
                    return Poll::Ready(Some((moved, peer)));
                }
                if inner.closed {
                    return Poll::Ready(None);
                }
                if inner.paused {
                    inner.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                if !inner
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    inner.waker = Some(cx.waker().clone());
                }
                match poll_listeners(&inner.listeners, &mut self.next, cx) {
                    Poll::Ready(Ok(accepted)) => {
                        self.delay = MIN_BACKOFF;
                        return Poll::Ready(Some(accepted));
                    }
                    Poll::Ready(Err(e)) => e,
                    Poll::Pending => return Poll::Pending,
                }
            };
            tracing::warn!(error = %error, retry_in = ?self.delay, "accept failed");
            self.backoff = Some(Box::pin(tokio::time::sleep(self.delay)));
            self.delay = (self.delay * 2).min(MAX_BACKOFF);
        }
    }

    /// Waits for the next connection; `None` once the generation stopped accepting.
    pub async fn accept(&mut self) -> Option<(Connection, Addr)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }
}

/// One pass over the listeners, starting after the one that last yielded, so a busy address
/// cannot starve the others.
fn poll_listeners(
    listeners: &[Accepting],
    next: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<(Connection, Addr)>> {
    let n = listeners.len();
    for i in 0..n {
        let index = (*next + i) % n;
        loop {
            match listeners[index].poll_accept(cx) {
                Poll::Ready(Ok((stream, peer))) => {
                    *next = index + 1;
                    return Poll::Ready(Ok((Connection::new(stream, peer), peer)));
                }
                // The client gave up before we accepted; nothing is wrong with the listener.
                Poll::Ready(Err(e)) if is_per_connection(&e) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
    }
    Poll::Pending
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

impl fmt::Debug for RiseFrontListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RiseFrontListener")
            .field("generation", &self.generation)
            .field("local_addrs", &self.local)
            .finish_non_exhaustive()
    }
}

impl futures_core::Stream for RiseFrontListener {
    type Item = io::Result<Connection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .poll_accept(cx)
            .map(|accepted| accepted.map(|(conn, _)| Ok(conn)))
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::serve::Listener for RiseFrontListener {
    type Io = Connection;
    type Addr = Addr;

    async fn accept(&mut self) -> (Connection, Addr) {
        match RiseFrontListener::accept(self).await {
            Some(accepted) => accepted,
            // Superseded: accept nothing more; the server's graceful shutdown (or the drain
            // deadline) ends the process.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Addr> {
        let first = self.local.first().map(|addr| match addr {
            ListenAddr::Tcp(addr) => Addr::Tcp(*addr),
            // Not a client: no credentials to report.
            ListenAddr::Unix(_) => Addr::Unix(crate::addr::UnixPeer::default()),
        });
        first.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "risefront: listener has no address",
            )
        })
    }
}

/// A client connection accepted by a [`RiseFrontListener`].
///
/// A TCP connection or, from a `unix:` address, a Unix domain socket connection. Counts
/// itself as live until dropped, which is how a superseded generation knows it has drained.
/// On TCP, `TCP_NODELAY` is on, as HTTP servers want.
#[pin_project(PinnedDrop)]
pub struct Connection {
    #[pin]
    stream: Stream,
    peer: Addr,
    /// What the generation that handed this connection over had read from it and no request
    /// consumed yet (the start of the client's next request): read before the socket.
    unread: Replay,
    /// Set once our side is shut down: how long we keep reading before the socket is closed.
    linger: Option<Linger>,
}

/// Lingering close: after the server shuts its side down, read and discard what the client
/// still sends until it closes its side (or a short bound passes). Closing a socket that has
/// unread data makes the kernel reset the connection, and a reset can destroy the last
/// response (or HTTP/2 GOAWAY) still on its way to the client.
struct Linger {
    until: Pin<Box<Sleep>>,
    discarded: usize,
}

/// How long, and how much, a closing connection keeps reading.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

impl Connection {
    fn new(stream: Stream, peer: Addr) -> Self {
        stream.set_nodelay();
        process::process().connection_opened();
        Connection {
            stream,
            peer,
            unread: Replay::default(),
            linger: None,
        }
    }

    /// A connection handed over by a superseded generation, with the bytes it had read.
    pub(crate) fn adopted(stream: Stream, peer: Addr, unread: Vec<u8>) -> Self {
        let mut connection = Connection::new(stream, peer);
        connection.unread = Replay::new(unread);
        connection
    }

    /// Takes what is left of the bytes handed over with this connection and not read yet, to
    /// hand them over in turn.
    pub(crate) fn take_replay(&mut self) -> Vec<u8> {
        self.unread.take()
    }

    /// The socket, to hand this connection over.
    #[cfg(unix)]
    pub(crate) fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.stream)
    }

    /// The protocol info that lets process `pid` open a copy of this connection's socket, to
    /// hand it over.
    #[cfg(windows)]
    pub(crate) fn duplicate_for(&self, pid: u32) -> io::Result<Vec<u8>> {
        match &self.stream {
            Stream::Tcp(stream) => crate::handoff::duplicate_socket(stream, pid),
        }
    }

    /// The client's address ([`Addr::Unix`] for a Unix socket client).
    pub fn peer_addr(&self) -> Addr {
        self.peer
    }

    /// The address the client connected to: the TCP address, or the Unix socket's path.
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        self.stream.local_addr()
    }

    /// The underlying TCP stream, for socket options; `None` on a Unix socket connection.
    pub fn tcp_stream(&self) -> Option<&TcpStream> {
        match &self.stream {
            Stream::Tcp(stream) => Some(stream),
            #[cfg(unix)]
            Stream::Unix(_) => None,
        }
    }

    /// The underlying Unix domain socket stream; `None` on a TCP connection.
    #[cfg(unix)]
    #[cfg_attr(docsrs, doc(cfg(unix)))]
    pub fn unix_stream(&self) -> Option<&tokio::net::UnixStream> {
        match &self.stream {
            Stream::Unix(stream) => Some(stream),
            Stream::Tcp(_) => None,
        }
    }
}

#[pinned_drop]
impl PinnedDrop for Connection {
    fn drop(self: Pin<&mut Self>) {
        process::process().connection_closed();
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.unread.read_into(buf) {
            return Poll::Ready(Ok(()));
        }
        this.stream.poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if this.linger.is_none() {
            ready!(this.stream.as_mut().poll_shutdown(cx))?;
            *this.linger = Some(Linger {
                until: Box::pin(tokio::time::sleep(LINGER_TIME)),
                discarded: 0,
            });
        }
        let Some(linger) = this.linger.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match this.stream.as_mut().poll_read(cx, &mut buf) {
                // The client closed its side too: closing now sends no reset.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    linger.discarded += buf.filled().len();
                    if linger.discarded > LINGER_BYTES {
                        return Poll::Ready(Ok(()));
                    }
                }
                // Our side is already shut down cleanly; a read error changes nothing.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return match linger.until.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, RiseFrontListener>>
    for Addr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, RiseFrontListener>) -> Self {
        *stream.remote_addr()
    }
}
