//! Addresses: what [`bind`](crate::bind) listens on ([`ListenAddr`], given as anything
//! [`ToListenAddr`]) and who connected ([`Addr`]).
//!
//! TCP addresses are written as tokio's `ToSocketAddrs` takes them (`127.0.0.1:8080`,
//! `localhost:8080`, `[::1]:8080`, a `SocketAddr`, an `(ip, port)` pair); a Unix domain socket
//! as `unix:` followed by its path (`unix:/run/app/http.sock`) or as [`ListenAddr::Unix`]. One
//! `bind` call may mix both kinds.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::BindError;

/// The prefix that makes an address string a Unix domain socket path.
pub(crate) const UNIX_PREFIX: &str = "unix:";

/// An address a [`RiseFrontListener`](crate::RiseFrontListener) listens on.
///
/// Parses from and displays as `127.0.0.1:8080` or `[::1]:8080` for TCP and
/// `unix:/run/app/http.sock` for a Unix domain socket; it can be given to
/// [`bind`](crate::bind) as it is.
///
/// ```
/// use risefront::ListenAddr;
///
/// let tcp: ListenAddr = "127.0.0.1:8080".parse()?;
/// let unix: ListenAddr = "unix:/run/app/http.sock".parse()?;
/// assert_eq!(unix, ListenAddr::unix("/run/app/http.sock"));
/// assert_eq!(unix.to_string(), "unix:/run/app/http.sock");
/// assert_eq!(tcp.port(), Some(8080));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ListenAddr {
    /// A TCP socket address.
    Tcp(SocketAddr),
    /// The path of a Unix domain socket (Unix only; on Windows `bind` refuses it).
    Unix(PathBuf),
}

impl ListenAddr {
    /// A Unix domain socket at `path`.
    #[must_use]
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        ListenAddr::Unix(path.into())
    }

    /// The TCP address, if this is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(addr) => Some(*addr),
            ListenAddr::Unix(_) => None,
        }
    }

    /// The socket file's path, if this is a Unix domain socket.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            ListenAddr::Tcp(_) => None,
            ListenAddr::Unix(path) => Some(path),
        }
    }

    /// The TCP port, if this is a TCP address.
    pub fn port(&self) -> Option<u16> {
        self.tcp().map(|addr| addr.port())
    }

    /// Whether a connection whose local address is `local` could have been accepted on this
    /// listening address: the same path, or the same port on this IP (any IP for a wildcard
    /// address such as `0.0.0.0:8080`).
    pub(crate) fn covers(&self, local: &ListenAddr) -> bool {
        match (self, local) {
            (ListenAddr::Tcp(ours), ListenAddr::Tcp(theirs)) => {
                ours.port() == theirs.port()
                    && (ours.ip().is_unspecified() || ours.ip() == theirs.ip())
            }
            (ListenAddr::Unix(ours), ListenAddr::Unix(theirs)) => ours == theirs,
            _ => false,
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => fmt::Display::fmt(addr, f),
            ListenAddr::Unix(path) => write!(f, "{UNIX_PREFIX}{}", path.display()),
        }
    }
}

impl fmt::Debug for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ListenAddr {
    type Err = io::Error;

    /// `unix:PATH`, or a literal socket address (no name resolution: give host names to
    /// [`bind`](crate::bind) directly).
    fn from_str(s: &str) -> io::Result<Self> {
        if let Some(path) = unix_path(s)? {
            return Ok(ListenAddr::Unix(path));
        }
        s.parse().map(ListenAddr::Tcp).map_err(|e| {
            BindError::InvalidAddress {
                address: s.to_owned(),
                reason: format!("{e} (expected IP:PORT or unix:PATH)"),
            }
            .into()
        })
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        ListenAddr::Tcp(addr)
    }
}

impl PartialEq<SocketAddr> for ListenAddr {
    fn eq(&self, other: &SocketAddr) -> bool {
        self.tcp() == Some(*other)
    }
}

/// `Some(path)` for `unix:PATH`; for `unix:` with no path, an error saying so.
fn unix_path(s: &str) -> Result<Option<PathBuf>, BindError> {
    let Some(path) = s.strip_prefix(UNIX_PREFIX) else {
        return Ok(None);
    };
    if path.is_empty() {
        return Err(BindError::InvalidAddress {
            address: s.to_owned(),
            reason: NO_UNIX_PATH.to_owned(),
        });
    }
    Ok(Some(PathBuf::from(path)))
}

const NO_UNIX_PATH: &str = "no path after \"unix:\" (expected unix:/run/app/http.sock)";

/// A client's address, as given to axum's `ConnectInfo`.
///
/// A TCP client's IP address and port, or [`Addr::Unix`] for a client of a Unix domain socket
/// listener, with the client process's credentials. Displays like the `SocketAddr` it holds
/// (`unix` for a Unix client).
///
/// It is a type of its own rather than `SocketAddr` because axum's `ConnectInfo` needs the
/// listener's address type to implement axum's `Connected` for the connection type, and
/// neither trait nor `SocketAddr` is this crate's to join.
///
/// ```no_run
/// use axum::extract::ConnectInfo;
///
/// async fn handler(ConnectInfo(client): ConnectInfo<risefront::Addr>) -> String {
///     match client {
///         risefront::Addr::Tcp(addr) => format!("your address is {}\n", addr.ip()),
///         risefront::Addr::Unix(peer) => format!("you are uid {:?}\n", peer.uid()),
///         _ => "hello\n".to_owned(),
///     }
/// }
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Addr {
    /// A TCP client.
    Tcp(SocketAddr),
    /// A client of a Unix domain socket listener. Such clients have no IP address and, as
    /// they connect without binding a path of their own, no name either: what is known is
    /// the connecting process's user and process id ([`UnixPeer`]). The listener's path is
    /// [`Connection::local_addr`](crate::Connection::local_addr). Behind a reverse proxy, the
    /// client's real address is in the proxy's headers (`X-Forwarded-For`, `Forwarded`).
    Unix(UnixPeer),
}

/// The process at the other end of a Unix domain socket connection, as the kernel reported it
/// when the connection was accepted (`SO_PEERCRED` on Linux, `getpeereid` and
/// `LOCAL_PEERPID` on macOS). A value the system did not give is `None`.
///
/// ```
/// let peer = risefront::UnixPeer::default();
/// assert_eq!(peer.uid(), None);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnixPeer {
    uid: Option<u32>,
    gid: Option<u32>,
    pid: Option<u32>,
}

impl UnixPeer {
    /// The credentials of the process at the other end of `stream`, as far as the system
    /// says.
    #[cfg(unix)]
    pub(crate) fn of(stream: &tokio::net::UnixStream) -> UnixPeer {
        match stream.peer_cred() {
            Ok(cred) => UnixPeer {
                uid: Some(cred.uid()),
                gid: Some(cred.gid()),
                pid: cred.pid().and_then(|pid| u32::try_from(pid).ok()),
            },
            Err(_) => UnixPeer::default(),
        }
    }

    /// The client process's user id.
    pub fn uid(&self) -> Option<u32> {
        self.uid
    }

    /// The client process's group id.
    pub fn gid(&self) -> Option<u32> {
        self.gid
    }

    /// The client process's id, where the system says (Linux, macOS).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }
}

impl Addr {
    /// The TCP client's socket address; `None` for a Unix socket client.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Addr::Tcp(addr) => Some(*addr),
            Addr::Unix(_) => None,
        }
    }

    /// The TCP client's IP address; `None` for a Unix socket client.
    pub fn ip(&self) -> Option<IpAddr> {
        self.tcp().map(|addr| addr.ip())
    }

    /// The TCP client's port; `None` for a Unix socket client.
    pub fn port(&self) -> Option<u16> {
        self.tcp().map(|addr| addr.port())
    }

    /// Whether the client came through a Unix domain socket.
    pub fn is_unix(&self) -> bool {
        matches!(self, Addr::Unix(_))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(addr) => fmt::Display::fmt(addr, f),
            Addr::Unix(_) => f.write_str("unix"),
        }
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(addr) => fmt::Debug::fmt(addr, f),
            Addr::Unix(peer) => f.debug_tuple("Unix").field(peer).finish(),
        }
    }
}

impl From<SocketAddr> for Addr {
    fn from(addr: SocketAddr) -> Addr {
        Addr::Tcp(addr)
    }
}

/// What [`bind`](crate::bind) and [`upgrade`](fn@crate::upgrade) take as one address: whatever
/// tokio's `ToSocketAddrs` takes, `unix:PATH` strings, and [`ListenAddr`].
///
/// Sealed: the addresses are described by this crate, as tokio's `ToSocketAddrs` is.
pub trait ToListenAddr: sealed::Sealed {}

pub(crate) mod sealed {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    /// One address as given, before name resolution.
    #[derive(Debug, Clone)]
    pub enum Spec {
        /// `host:port`, resolved like tokio's `lookup_host`.
        Host(String),
        /// A host and a port given apart.
        HostPort(String, u16),
        /// Already socket addresses.
        Socket(Vec<SocketAddr>),
        /// A Unix domain socket path.
        Unix(PathBuf),
        /// Not an address at all (`unix:` with no path): the address and what is wrong.
        Invalid { address: String, reason: String },
    }

    pub trait Sealed {
        /// This address, as given.
        fn spec(&self) -> Spec;
    }
}

use sealed::{Sealed, Spec};

impl<T: ToListenAddr + ?Sized> ToListenAddr for &T {}
impl<T: Sealed + ?Sized> Sealed for &T {
    fn spec(&self) -> Spec {
        (**self).spec()
    }
}

impl ToListenAddr for str {}
impl Sealed for str {
    fn spec(&self) -> Spec {
        match unix_path(self) {
            Ok(Some(path)) => Spec::Unix(path),
            Ok(None) => Spec::Host(self.to_owned()),
            Err(_) => Spec::Invalid {
                address: self.to_owned(),
                reason: NO_UNIX_PATH.to_owned(),
            },
        }
    }
}

impl ToListenAddr for String {}
impl Sealed for String {
    fn spec(&self) -> Spec {
        self.as_str().spec()
    }
}

impl ToListenAddr for ListenAddr {}
impl Sealed for ListenAddr {
    fn spec(&self) -> Spec {
        match self {
            ListenAddr::Tcp(addr) => Spec::Socket(vec![*addr]),
            ListenAddr::Unix(path) => Spec::Unix(path.clone()),
        }
    }
}

impl ToListenAddr for [SocketAddr] {}
impl Sealed for [SocketAddr] {
    fn spec(&self) -> Spec {
        Spec::Socket(self.to_vec())
    }
}

impl ToListenAddr for (&str, u16) {}
impl Sealed for (&str, u16) {
    fn spec(&self) -> Spec {
        Spec::HostPort(self.0.to_owned(), self.1)
    }
}

impl ToListenAddr for (String, u16) {}
impl Sealed for (String, u16) {
    fn spec(&self) -> Spec {
        Spec::HostPort(self.0.clone(), self.1)
    }
}

/// Socket-address types: already resolved.
macro_rules! socket_addrs {
    ($($ty:ty),*) => {$(
        impl ToListenAddr for $ty {}
        impl Sealed for $ty {
            fn spec(&self) -> Spec {
                Spec::Socket(vec![SocketAddr::from(*self)])
            }
        }
    )*};
}

socket_addrs!(
    SocketAddr,
    SocketAddrV4,
    SocketAddrV6,
    (IpAddr, u16),
    (Ipv4Addr, u16),
    (Ipv6Addr, u16),
    ([u8; 4], u16),
    ([u16; 8], u16)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_address_covers_the_connections_it_accepts() {
        let any: ListenAddr = "0.0.0.0:8080".parse().unwrap();
        let lo: ListenAddr = "127.0.0.1:8080".parse().unwrap();
        let other_ip: ListenAddr = "127.0.0.2:8080".parse().unwrap();
        let other_port: ListenAddr = "127.0.0.1:8081".parse().unwrap();
        assert!(any.covers(&lo));
        assert!(any.covers(&other_ip));
        assert!(!any.covers(&other_port));
        assert!(lo.covers(&lo));
        assert!(!lo.covers(&other_ip));
        let sock = ListenAddr::unix("/run/a.sock");
        assert!(sock.covers(&ListenAddr::unix("/run/a.sock")));
        assert!(!sock.covers(&ListenAddr::unix("/run/b.sock")));
        assert!(!sock.covers(&lo));
        assert!(!lo.covers(&sock));
    }

    #[test]
    fn unix_strings_are_paths_and_others_are_hosts() {
        assert!(
            matches!("unix:/run/a.sock".spec(), Spec::Unix(p) if p == Path::new("/run/a.sock"))
        );
        assert!(matches!("unix:rel.sock".spec(), Spec::Unix(p) if p == Path::new("rel.sock")));
        assert!(
            matches!("unix:".spec(), Spec::Invalid { reason, .. } if reason.contains("no path"))
        );
        assert!(matches!("localhost:80".spec(), Spec::Host(h) if h == "localhost:80"));
        assert!(matches!(String::from("unix:/x").spec(), Spec::Unix(_)));
        assert!(matches!((&&"unix:/x").spec(), Spec::Unix(_)));
        assert!(matches!(("::1", 80).spec(), Spec::HostPort(h, 80) if h == "::1"));
        assert!(matches!(([127, 0, 0, 1], 80).spec(), Spec::Socket(v) if v.len() == 1));
    }

    #[test]
    fn listen_addrs_parse_and_display_both_ways() {
        for text in ["127.0.0.1:8080", "[::1]:80", "unix:/run/app/http.sock"] {
            let addr: ListenAddr = text.parse().expect(text);
            assert_eq!(addr.to_string(), text);
        }
        let err = "localhost:80".parse::<ListenAddr>().unwrap_err();
        assert!(err.to_string().contains("unix:PATH"), "{err}");
        assert!("unix:".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn client_addresses_say_what_they_hold() {
        let tcp = Addr::from(SocketAddr::from(([10, 0, 0, 1], 4000)));
        assert_eq!(tcp.to_string(), "10.0.0.1:4000");
        assert_eq!(tcp.port(), Some(4000));
        assert!(!tcp.is_unix());
        let unix = Addr::Unix(UnixPeer::default());
        assert_eq!(unix.to_string(), "unix");
        assert_eq!(unix.ip(), None);
        assert!(unix.is_unix());
    }
}
