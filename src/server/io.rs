//! The connection as a [`GracefulServer`](super::GracefulServer) hands it to hyper: the bytes
//! read to tell HTTP/1 from HTTP/2 are replayed first, and the final shutdown can be held back
//! so that the connection survives hyper and moves to the next generation.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::replay::Replay;

/// What every HTTP/2 connection with prior knowledge starts with (RFC 9113, 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection speaks, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    Http2,
    /// The client closed the connection before sending anything.
    Closed,
}

/// Flags shared between the connection task and the IO hyper owns.
#[derive(Debug, Default)]
pub(super) struct Flags {
    /// The next shutdown is held back: the connection is to move, not to close.
    hold: AtomicBool,
    /// A held-back shutdown happened: hyper is done and left the socket alone.
    held: AtomicBool,
    /// The client closed its side: there is nothing to move.
    eof: AtomicBool,
}

impl Flags {
    /// From now on, hyper's shutdown leaves the socket open (see [`ServedIo`]).
    pub(super) fn hold_shutdown(&self) {
        self.hold.store(true, Ordering::Release);
    }

    /// Whether hyper ended the connection at an idle point with the socket left as it was,
    /// the client still there.
    pub(super) fn ended_movable(&self) -> bool {
        self.held.load(Ordering::Acquire) && !self.eof.load(Ordering::Acquire)
    }
}

/// A connection being served: `prefix` (bytes already read from `inner`) comes first.
///
/// Its shutdown is held back once [`Flags::hold_shutdown`] was called and the client is still
/// there: hyper's graceful shutdown of an idle HTTP/1 connection then ends the connection
/// without touching the socket, which `into_parts` gives back, ready to move.
pub(super) struct ServedIo<I> {
    inner: I,
    prefix: Replay,
    flags: Arc<Flags>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> ServedIo<I> {
    pub(super) fn new(inner: I, prefix: Vec<u8>) -> Self {
        ServedIo {
            inner,
            prefix: Replay::new(prefix),
            flags: Arc::new(Flags::default()),
        }
    }

    pub(super) fn flags(&self) -> Arc<Flags> {
        Arc::clone(&self.flags)
    }

    /// Reads until the first bytes tell HTTP/2 with prior knowledge from anything else.
    /// Cancel-safe: what was read stays in the prefix.
    pub(super) async fn sniff(&mut self) -> io::Result<Protocol> {
        loop {
            let prefix = self.prefix.rest();
            let seen = prefix.len().min(PREFACE.len());
            if prefix[..seen] != PREFACE[..seen] {
                return Ok(Protocol::Http1);
            }
            if seen == PREFACE.len() {
                return Ok(Protocol::Http2);
            }
            let mut chunk = [0u8; 64];
            let n = self.inner.read(&mut chunk[..PREFACE.len() - seen]).await?;
            if n == 0 {
                return Ok(if self.prefix.rest().is_empty() {
                    Protocol::Closed
                } else {
                    Protocol::Http1
                });
            }
            self.prefix.push(&chunk[..n]);
        }
    }

    /// The connection, and the bytes read from it that hyper was not given yet.
    pub(super) fn into_parts(mut self) -> (I, Vec<u8>) {
        let rest = self.prefix.take();
        (self.inner, rest)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ServedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.read_into(buf) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && buf.remaining() > 0
        {
            this.flags.eof.store(true, Ordering::Release);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ServedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    /// hyper calls this once it is done with the connection, after flushing everything it
    /// wrote. Held back, it leaves the socket open and untouched for the next generation:
    /// a `shutdown(2)` here would end the connection for the new owner too.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.flags.hold.load(Ordering::Acquire) && !this.flags.eof.load(Ordering::Acquire) {
            this.flags.held.store(true, Ordering::Release);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncWriteExt, duplex};

    #[tokio::test]
    async fn sniffing_tells_http2_from_http1_and_replays_what_it_read() {
        for (sent, protocol) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], Protocol::Http1),
            (PREFACE, Protocol::Http2),
            (&b"PRI * HTTP/1.1\r\n"[..], Protocol::Http1),
            (&b"P"[..], Protocol::Http1),
            (&b""[..], Protocol::Closed),
        ] {
            let (mut client, server) = duplex(1024);
            client.write_all(sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut io = ServedIo::new(server, Vec::new());
            assert_eq!(io.sniff().await.unwrap(), protocol, "{sent:?}");
            let mut all = Vec::new();
            io.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, sent, "every byte is read once, in order");
        }
    }

    #[tokio::test]
    async fn sniffing_reads_no_further_than_it_must() {
        let (mut client, server) = duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut io = ServedIo::new(server, Vec::new());
        assert_eq!(io.sniff().await.unwrap(), Protocol::Http1);
        // Decided on the first byte that differs from the preface: the rest is still unread.
        let (_, unread) = io.into_parts();
        assert!(unread.len() <= PREFACE.len(), "{unread:?}");
        assert!(b"GET / HTTP/1.1\r\n".starts_with(&unread));
    }

    #[tokio::test]
    async fn a_held_shutdown_leaves_the_connection_open() {
        let (mut client, server) = duplex(1024);
        let mut io = ServedIo::new(server, b"GET".to_vec());
        let flags = io.flags();
        let mut first = [0u8; 2];
        io.read_exact(&mut first).await.unwrap();
        flags.hold_shutdown();
        io.shutdown().await.unwrap();
        assert!(flags.ended_movable());
        // Still open both ways, and the prefix not read yet comes back.
        io.write_all(b"x").await.unwrap();
        let mut got = [0u8; 1];
        client.read_exact(&mut got).await.unwrap();
        let (_, unread) = io.into_parts();
        assert_eq!(unread, b"T");
    }

    #[tokio::test]
    async fn a_client_that_closed_is_shut_down_not_moved() {
        let (client, server) = duplex(1024);
        drop(client);
        let mut io = ServedIo::new(server, Vec::new());
        let flags = io.flags();
        flags.hold_shutdown();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        let _ = io.shutdown().await;
        assert!(!flags.ended_movable());
    }
}
