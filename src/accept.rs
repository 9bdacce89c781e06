//! [`Accept`]: what a [`GracefulServer`](crate::GracefulServer) takes connections from.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::addr::Addr;
use crate::listener::{Connection, RiseFrontListener};

/// A source of connections for [`GracefulServer`](crate::GracefulServer): a
/// [`RiseFrontListener`], or a `TlsListener` wrapping one (with the `tls` feature).
///
/// Shaped like `axum::serve::Listener`, except that `accept` returns `None` once the
/// generation stops accepting: that is when the server starts draining.
///
/// # Example
///
/// ```no_run
/// async fn run(listener: impl risefront::Accept, app: axum::Router) -> std::io::Result<()> {
///     let summary = risefront::GracefulServer::new().serve(listener, app).await;
///     eprintln!("{summary}");
///     Ok(())
/// }
/// ```
pub trait Accept: Send {
    /// The connection, as the server reads and writes it.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The client's address. [`GracefulServer`](crate::GracefulServer) puts it in each
    /// request's extensions (and, with the `axum` feature, `ConnectInfo` of it).
    type Addr: Clone + Send + Sync + 'static;

    /// Waits for the next connection; `None` once the generation stopped accepting.
    ///
    /// Must be cancel-safe: the server drops this future whenever another event wins the race,
    /// and a connection it had taken must not be lost then.
    fn accept(&mut self) -> impl Future<Output = Option<(Self::Io, Self::Addr)>> + Send;
}

impl Accept for RiseFrontListener {
    type Io = Connection;
    type Addr = Addr;

    fn accept(&mut self) -> impl Future<Output = Option<(Connection, Addr)>> + Send {
        RiseFrontListener::accept(self)
    }
}
