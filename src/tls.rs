//! TLS with rustls (the `tls` feature): [`TlsListener`] wraps a
//! [`RiseFrontListener`] and yields [`TlsConnection`]s whose handshake runs in the connection's
//! own task, on its first read or write, never inside `accept`: a client that connects and
//! sends nothing cannot stall accepting, and handshakes run in parallel on every core.
//!
//! Certificates are rotated by upgrading: every generation loads the certificate files when it
//! starts, so after replacing them an upgrade gives new connections the new certificate while
//! connections already open finish on the old one.
//!
//! rustls needs a crypto provider, which is the application's choice (enable `ring` or
//! `aws-lc-rs` on `tokio-rustls` or `rustls` and install it once at start).
//!
//! ```no_run
//! use tokio_rustls::rustls;
//!
//! # async fn run(app: axum::Router) -> std::io::Result<()> {
//! let _ = rustls::crypto::ring::default_provider().install_default();
//! // Before `bind`: a bad file is an error before this process serves anything.
//! let config = risefront::tls::server_config_from_pem("cert.pem", "key.pem")?;
//! let listener = risefront::bind(["0.0.0.0:8443"]).await?;
//! let listener = risefront::tls::TlsListener::new(listener, config);
//! risefront::GracefulServer::new().serve(listener, app).await;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::accept::Accept;
use crate::addr::Addr;
use crate::config::env_tls_handshake_timeout;
use crate::listener::{Connection, RiseFrontListener};

/// How long a client may take to complete its TLS handshake, unless
/// [`TlsListener::tls_handshake_timeout`] or `RISEFRONT_TLS_HANDSHAKE_TIMEOUT` says otherwise.
///
/// ```
/// assert_eq!(risefront::tls::DEFAULT_TLS_HANDSHAKE_TIMEOUT.as_secs(), 10);
/// ```
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The former name of [`DEFAULT_TLS_HANDSHAKE_TIMEOUT`].
#[doc(hidden)] // Still compiles for old code; the docs show each item once.
#[deprecated(since = "0.1.0", note = "renamed `DEFAULT_TLS_HANDSHAKE_TIMEOUT`")]
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = DEFAULT_TLS_HANDSHAKE_TIMEOUT;

/// A [`RiseFrontListener`] that speaks TLS: accepts at once and leaves the handshake to each
/// [`TlsConnection`].
///
/// Goes into [`GracefulServer::serve`](crate::GracefulServer::serve) (it is [`Accept`]) and,
/// with the `axum` feature, into `axum::serve` like the plain listener, with
/// `ConnectInfo<risefront::Addr>`.
///
/// ALPN: set `alpn_protocols` to `h2` and `http/1.1` on the `ServerConfig` so that clients
/// can pick HTTP/2 ([`server_config_from_pem`] does).
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
///
/// use axum::{Router, extract::ConnectInfo, routing::get};
/// use tokio_rustls::rustls;
///
/// # async fn run() -> std::io::Result<()> {
/// let _ = rustls::crypto::ring::default_provider().install_default();
/// let config = risefront::tls::server_config_from_pem("cert.pem", "key.pem")?;
/// let listener = risefront::bind(["127.0.0.1:8443"]).await?;
/// let listener = risefront::tls::TlsListener::new(listener, config)
///     .tls_handshake_timeout(Duration::from_secs(5));
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
pub struct TlsListener {
    inner: RiseFrontListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    /// `RISEFRONT_TLS_HANDSHAKE_TIMEOUT`, which beats the value set in code.
    handshake_timeout_env: Option<Duration>,
}

impl TlsListener {
    /// Wraps `listener`; connections are served with `config` (a `ServerConfig`, or an
    /// `Arc` of one to share it).
    ///
    /// ```no_run
    /// use std::sync::Arc;
    ///
    /// # async fn run(config: tokio_rustls::rustls::ServerConfig) -> std::io::Result<()> {
    /// let config = Arc::new(config);
    /// let listener = risefront::bind(["127.0.0.1:8443"]).await?;
    /// let listener = risefront::tls::TlsListener::new(listener, Arc::clone(&config));
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn new(listener: RiseFrontListener, config: impl Into<Arc<ServerConfig>>) -> Self {
        TlsListener {
            inner: listener,
            acceptor: TlsAcceptor::from(config.into()),
            handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            // `bind` already refused a value that does not parse or is zero.
            handshake_timeout_env: env_tls_handshake_timeout().ok().flatten(),
        }
    }

    /// How long a client may take, from being accepted, to complete its TLS handshake; then
    /// its connection fails with [`io::ErrorKind::TimedOut`] and is closed. Default
    /// [`DEFAULT_TLS_HANDSHAKE_TIMEOUT`] (10 s).
    ///
    /// `RISEFRONT_TLS_HANDSHAKE_TIMEOUT` (`500ms`, `5s`, ...) beats the value set here, as the
    /// variables of [`Builder`](crate::Builder) beat its methods; [`bind`](crate::bind)
    /// refuses a value that does not parse, or zero. Not the control channel's handshake:
    /// that is [`Builder::control_handshake_timeout`](crate::Builder::control_handshake_timeout).
    ///
    /// ```no_run
    /// # async fn run(config: tokio_rustls::rustls::ServerConfig) -> std::io::Result<()> {
    /// let listener = risefront::bind(["127.0.0.1:8443"]).await?;
    /// let listener = risefront::tls::TlsListener::new(listener, config)
    ///     .tls_handshake_timeout(std::time::Duration::from_secs(3));
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn tls_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The former name of [`tls_handshake_timeout`](Self::tls_handshake_timeout).
    #[doc(hidden)] // Still compiles for old code; the docs show each item once.
    #[deprecated(since = "0.1.0", note = "renamed `tls_handshake_timeout`")]
    #[must_use]
    pub fn handshake_timeout(self, timeout: Duration) -> Self {
        self.tls_handshake_timeout(timeout)
    }

    /// The handshake timeout in force: the variable's, else the one set in code.
    fn effective_handshake_timeout(&self) -> Duration {
        self.handshake_timeout_env.unwrap_or(self.handshake_timeout)
    }

    /// The plain listener, for its generation and addresses.
    ///
    /// ```no_run
    /// # fn run(listener: &risefront::tls::TlsListener) {
    /// println!("generation {}", listener.get_ref().generation());
    /// # }
    /// ```
    pub fn get_ref(&self) -> &RiseFrontListener {
        &self.inner
    }

    /// Polls for the next connection, whose handshake has not started yet; `Ready(None)` once
    /// the generation stopped accepting.
    ///
    /// ```no_run
    /// # async fn run(mut listener: risefront::tls::TlsListener) {
    /// let next = std::future::poll_fn(|cx| listener.poll_accept(cx)).await;
    /// # }
    /// ```
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<(TlsConnection, Addr)>> {
        let Some((io, peer)) = ready!(self.inner.poll_accept(cx)) else {
            return Poll::Ready(None);
        };
        let timeout = self.effective_handshake_timeout();
        let connection = TlsConnection {
            state: State::Handshaking {
                accept: self.acceptor.accept(io),
                deadline: Box::pin(tokio::time::sleep(timeout)),
            },
            peer,
            timeout,
        };
        Poll::Ready(Some((connection, peer)))
    }

    /// Waits for the next connection; `None` once the generation stopped accepting.
    ///
    /// ```no_run
    /// use tokio::io::AsyncWriteExt;
    ///
    /// # async fn run(mut listener: risefront::tls::TlsListener) {
    /// while let Some((mut connection, _peer)) = listener.accept().await {
    ///     // The handshake happens here, in the connection's task.
    ///     tokio::spawn(async move { connection.write_all(b"hello\n").await });
    /// }
    /// # }
    /// ```
    pub async fn accept(&mut self) -> Option<(TlsConnection, Addr)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }
}

impl fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener")
            .field("inner", &self.inner)
            .field("tls_handshake_timeout", &self.effective_handshake_timeout())
            .finish_non_exhaustive()
    }
}

impl Accept for TlsListener {
    type Io = TlsConnection;
    type Addr = Addr;

    fn accept(&mut self) -> impl Future<Output = Option<(TlsConnection, Addr)>> + Send {
        TlsListener::accept(self)
    }
}

impl futures_core::Stream for TlsListener {
    type Item = io::Result<TlsConnection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .poll_accept(cx)
            .map(|accepted| accepted.map(|(conn, _)| Ok(conn)))
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::serve::Listener for TlsListener {
    type Io = TlsConnection;
    type Addr = Addr;

    async fn accept(&mut self) -> (TlsConnection, Addr) {
        match TlsListener::accept(self).await {
            Some(accepted) => accepted,
            // Superseded: as with the plain listener, graceful shutdown or the drain deadline
            // ends the process.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Addr> {
        axum::serve::Listener::local_addr(&self.inner)
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Addr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        *stream.remote_addr()
    }
}

/// A client connection accepted by a [`TlsListener`]: a [`Connection`] whose TLS handshake
/// runs on the first read or write.
///
/// A handshake that fails or outlasts the listener's timeout makes that read or write fail
/// with an error naming the client; the connection is closed when dropped. Closing (shutdown)
/// sends TLS `close_notify`, then closes the TCP connection as [`Connection`] does, lingering
/// so that the last response is not lost to a reset.
///
/// ```no_run
/// use tokio::io::AsyncReadExt;
///
/// # async fn run(mut connection: risefront::tls::TlsConnection) -> std::io::Result<()> {
/// let mut first = [0u8; 1];
/// connection.read_exact(&mut first).await?; // handshakes first
/// let h2 = connection.alpn_protocol() == Some(b"h2".as_slice());
/// # Ok(())
/// # }
/// ```
pub struct TlsConnection {
    state: State,
    peer: Addr,
    timeout: Duration,
}

enum State {
    Handshaking {
        accept: tokio_rustls::Accept<Connection>,
        deadline: Pin<Box<Sleep>>,
    },
    Established(TlsStream<Connection>),
    /// The handshake failed or timed out; the TCP connection is already closed.
    Failed,
}

impl TlsConnection {
    /// The client's address.
    ///
    /// ```no_run
    /// # fn run(connection: &risefront::tls::TlsConnection) {
    /// println!("client {}", connection.peer_addr());
    /// # }
    /// ```
    pub fn peer_addr(&self) -> Addr {
        self.peer
    }

    /// The rustls session once the handshake is done (`None` before, or if it failed): the
    /// certificate the client sent, the cipher suite, and so on.
    ///
    /// ```no_run
    /// # fn run(connection: &risefront::tls::TlsConnection) {
    /// if let Some(session) = connection.session() {
    ///     println!("{:?}", session.negotiated_cipher_suite());
    /// }
    /// # }
    /// ```
    pub fn session(&self) -> Option<&tokio_rustls::rustls::ServerConnection> {
        match &self.state {
            State::Established(stream) => Some(stream.get_ref().1),
            _ => None,
        }
    }

    /// The protocol the client and server agreed on with ALPN (`h2`, `http/1.1`), once the
    /// handshake is done.
    ///
    /// ```no_run
    /// # fn run(connection: &risefront::tls::TlsConnection) {
    /// let http2 = connection.alpn_protocol() == Some(b"h2".as_slice());
    /// # }
    /// ```
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.session()?.alpn_protocol()
    }

    /// The host name the client asked for (SNI), once the handshake is done.
    ///
    /// ```no_run
    /// # fn run(connection: &risefront::tls::TlsConnection) {
    /// let host = connection.server_name().unwrap_or("(none)");
    /// # }
    /// ```
    pub fn server_name(&self) -> Option<&str> {
        self.session()?.server_name()
    }

    /// Drives the handshake to its end; `Ready(Ok)` once the TLS stream is usable.
    fn poll_handshake(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<&mut TlsStream<Connection>>> {
        if let State::Handshaking { accept, deadline } = &mut self.state {
            let result = match Pin::new(accept).poll(cx) {
                Poll::Ready(result) => result.map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("TLS handshake with {} failed: {e}", self.peer),
                    )
                }),
                Poll::Pending => {
                    ready!(deadline.as_mut().poll(cx));
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "TLS handshake with {} timed out after {} ms",
                            self.peer,
                            self.timeout.as_millis()
                        ),
                    ))
                }
            };
            match result {
                Ok(stream) => self.state = State::Established(stream),
                Err(e) => {
                    tracing::debug!("{e}");
                    // Dropping the half-done handshake closes the TCP connection now, rather
                    // than when the server gets round to dropping this connection.
                    self.state = State::Failed;
                    return Poll::Ready(Err(e));
                }
            }
        }
        match &mut self.state {
            State::Established(stream) => Poll::Ready(Ok(stream)),
            _ => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("TLS handshake with {} failed earlier", self.peer),
            ))),
        }
    }
}

impl fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Handshaking { .. } => "handshaking",
            State::Established(_) => "established",
            State::Failed => "failed",
        };
        f.debug_struct("TlsConnection")
            .field("peer", &self.peer)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = ready!(self.get_mut().poll_handshake(cx))?;
        Pin::new(stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = ready!(self.get_mut().poll_handshake(cx))?;
        Pin::new(stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let stream = ready!(self.get_mut().poll_handshake(cx))?;
        Pin::new(stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Established(stream) => Pin::new(stream).poll_shutdown(cx),
            // Closing before the handshake finished: no TLS to close, only TCP.
            State::Handshaking { accept, .. } => match accept.get_mut() {
                Some(io) => Pin::new(io).poll_shutdown(cx),
                None => Poll::Ready(Ok(())),
            },
            State::Failed => Poll::Ready(Ok(())),
        }
    }
}

/// A `ServerConfig` for the certificate chain and private key in two PEM files, with ALPN
/// offering `h2` then `http/1.1`, and the process's default crypto provider.
///
/// Errors, naming the file, if a file cannot be read or holds no certificate or key, if they
/// do not match, or if no crypto provider is installed
/// (`CryptoProvider::install_default`).
///
/// ```no_run
/// use tokio_rustls::rustls;
///
/// # fn run() -> std::io::Result<()> {
/// let _ = rustls::crypto::ring::default_provider().install_default();
/// let config = risefront::tls::server_config_from_pem("cert.pem", "key.pem")?;
/// # Ok(())
/// # }
/// ```
pub fn server_config_from_pem(
    cert_file: impl AsRef<Path>,
    key_file: impl AsRef<Path>,
) -> io::Result<ServerConfig> {
    let (cert_file, key_file) = (cert_file.as_ref(), key_file.as_ref());
    let provider = CryptoProvider::get_default().cloned().ok_or_else(|| {
        io::Error::other(
            "risefront: no rustls crypto provider installed: call `CryptoProvider::install_default` first \
             (for example `rustls::crypto::ring::default_provider().install_default()`)",
        )
    })?;
    let invalid = |file: &Path, what: &dyn fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("risefront: {}: {what}", file.display()),
        )
    };
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(cert_file, &e))?;
    if certs.is_empty() {
        return Err(invalid(cert_file, &"no PEM certificate in this file"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| invalid(key_file, &e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(format!("risefront: TLS configuration: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            invalid(
                cert_file,
                &format_args!("does not go with {}: {e}", key_file.display()),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
