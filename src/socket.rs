//! Sockets of either kind, TCP or Unix domain: the listening sockets the front holds and
//! hands over ([`Socket`]), the same in a generation's runtime ([`Accepting`]), and the
//! connections they yield ([`Stream`]). The rest of the crate treats both kinds alike.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};

#[cfg(unix)]
use crate::addr::UnixPeer;
use crate::addr::{Addr, ListenAddr};

/// A listening socket outside any runtime, as the front binds, stores and passes it.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(std::net::TcpListener),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener),
}

impl Socket {
    pub(crate) fn try_clone(&self) -> io::Result<Socket> {
        match self {
            Socket::Tcp(l) => l.try_clone().map(Socket::Tcp),
            #[cfg(unix)]
            Socket::Unix(l) => l.try_clone().map(Socket::Unix),
        }
    }

    /// Where it listens; `None` if the system cannot say (an unnamed Unix socket).
    pub(crate) fn local_addr(&self) -> Option<ListenAddr> {
        match self {
            Socket::Tcp(l) => l.local_addr().ok().map(ListenAddr::Tcp),
            #[cfg(unix)]
            Socket::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(ListenAddr::unix)),
        }
    }

    /// Registers the socket with the current tokio runtime.
    pub(crate) fn into_accepting(self) -> io::Result<Accepting> {
        match self {
            Socket::Tcp(l) => {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l).map(Accepting::Tcp)
            }
            #[cfg(unix)]
            Socket::Unix(l) => {
                l.set_nonblocking(true)?;
                UnixListener::from_std(l).map(Accepting::Unix)
            }
        }
    }
}

#[cfg(unix)]
impl std::os::fd::AsFd for Socket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Socket::Tcp(l) => l.as_fd(),
            Socket::Unix(l) => l.as_fd(),
        }
    }
}

#[cfg(unix)]
impl TryFrom<std::os::fd::OwnedFd> for Socket {
    type Error = io::Error;

    /// A descriptor passed by the front (or systemd): its address family says its kind.
    fn try_from(fd: std::os::fd::OwnedFd) -> io::Result<Socket> {
        let family = rustix::net::getsockname(&fd)?.address_family();
        if family == rustix::net::AddressFamily::UNIX {
            Ok(Socket::Unix(fd.into()))
        } else if family == rustix::net::AddressFamily::INET
            || family == rustix::net::AddressFamily::INET6
        {
            Ok(Socket::Tcp(fd.into()))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "risefront: a passed socket has address family {family:?}, neither TCP nor Unix"
                ),
            ))
        }
    }
}

/// A listening socket registered with tokio, in the generation that accepts on it.
#[derive(Debug)]
pub(crate) enum Accepting {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(UnixListener),
}

impl Accepting {
    pub(crate) fn local_addr(&self) -> Option<ListenAddr> {
        match self {
            Accepting::Tcp(l) => l.local_addr().ok().map(ListenAddr::Tcp),
            #[cfg(unix)]
            Accepting::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(ListenAddr::unix)),
        }
    }

    pub(crate) fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Stream, Addr)>> {
        match self {
            Accepting::Tcp(l) => l
                .poll_accept(cx)
                .map_ok(|(stream, peer)| (Stream::Tcp(stream), Addr::Tcp(peer))),
            #[cfg(unix)]
            Accepting::Unix(l) => l.poll_accept(cx).map_ok(|(stream, _unnamed)| {
                let peer = UnixPeer::of(&stream);
                (Stream::Unix(stream), Addr::Unix(peer))
            }),
        }
    }
}

/// An accepted connection of either kind.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Stream {
    /// A connection another generation handed over (its descriptor, passed with
    /// `SCM_RIGHTS`), registered with the current tokio runtime, and its client's address.
    /// Anything but a connected stream socket of either kind is refused.
    #[cfg(unix)]
    pub(crate) fn from_moved(fd: std::os::fd::OwnedFd) -> io::Result<(Stream, Addr)> {
        use rustix::net::{AddressFamily, SocketType, sockopt};
        let refuse = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("risefront: a handed-over descriptor is not a client connection: {why}"),
            )
        };
        if sockopt::socket_type(&fd)? != SocketType::STREAM {
            return Err(refuse("not a stream socket"));
        }
        // Only a connected socket has a peer (a listening one has none): portable, unlike
        // SO_ACCEPTCONN, which macOS lacks.
        if rustix::net::getpeername(&fd).is_err() {
            return Err(refuse("not connected"));
        }
        let family = rustix::net::getsockname(&fd)?.address_family();
        if family == AddressFamily::UNIX {
            let stream = std::os::unix::net::UnixStream::from(fd);
            stream.set_nonblocking(true)?;
            let stream = UnixStream::from_std(stream)?;
            let peer = UnixPeer::of(&stream);
            Ok((Stream::Unix(stream), Addr::Unix(peer)))
        } else if family == AddressFamily::INET || family == AddressFamily::INET6 {
            let stream = std::net::TcpStream::from(fd);
            stream.set_nonblocking(true)?;
            let peer = stream.peer_addr()?;
            Ok((Stream::Tcp(TcpStream::from_std(stream)?), Addr::Tcp(peer)))
        } else {
            Err(refuse(&format!("address family {family:?}")))
        }
    }

    /// A connection another generation handed over (opened from the protocol info it made
    /// for this process with `WSADuplicateSocketW`), registered with the current tokio
    /// runtime, and its client's address.
    #[cfg(windows)]
    pub(crate) fn from_duplicate(stream: std::net::TcpStream) -> io::Result<(Stream, Addr)> {
        stream.set_nonblocking(true)?;
        let peer = stream.peer_addr()?;
        Ok((Stream::Tcp(TcpStream::from_std(stream)?), Addr::Tcp(peer)))
    }

    /// `TCP_NODELAY`, as HTTP servers want; best effort: a socket that refuses it still works.
    pub(crate) fn set_nodelay(&self) {
        match self {
            Stream::Tcp(s) => {
                let _ = s.set_nodelay(true);
            }
            #[cfg(unix)]
            Stream::Unix(_) => {}
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().map(ListenAddr::Tcp),
            #[cfg(unix)]
            Stream::Unix(s) => s.local_addr().and_then(|a| {
                a.as_pathname().map(ListenAddr::unix).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "risefront: unnamed Unix socket")
                })
            }),
        }
    }
}

#[cfg(unix)]
impl std::os::fd::AsFd for Stream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// Both stream types are `Unpin`, so each call pins the variant in place.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => {
                let $s = Pin::new($s);
                $call
            }
            #[cfg(unix)]
            Stream::Unix($s) => {
                let $s = Pin::new($s);
                $call
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_handed_over_descriptor_must_be_a_connected_stream() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        let (stream, addr) = Stream::from_moved(accepted.into()).unwrap();
        assert_eq!(addr, Addr::Tcp(peer));
        assert_eq!(addr, Addr::Tcp(client.local_addr().unwrap()));
        assert!(matches!(stream, Stream::Tcp(_)));

        let listening = Stream::from_moved(listener.into()).map(|_| ()).unwrap_err();
        assert!(
            listening.to_string().contains("not connected"),
            "{listening}"
        );
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let datagram = Stream::from_moved(udp.into()).map(|_| ()).unwrap_err();
        assert!(
            datagram.to_string().contains("not a stream socket"),
            "{datagram}"
        );
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(Stream::from_moved(file.into()).is_err());

        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (stream, addr) = Stream::from_moved(a.into()).unwrap();
        assert!(matches!((stream, addr), (Stream::Unix(_), Addr::Unix(_))));
    }
}
