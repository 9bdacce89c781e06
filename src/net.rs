//! Resolving the addresses given to `bind` and binding them: TCP as tokio's
//! `TcpListener::bind` does (each address may resolve to several candidates and the first that
//! binds wins), Unix domain sockets at their path, replacing a stale socket file but never a
//! live one.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
#[cfg(unix)]
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};

use crate::addr::sealed::Spec;
use crate::addr::{ListenAddr, ToListenAddr};
use crate::error::BindError;
use crate::socket::Socket;

/// One address given to `bind`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The candidates a TCP address resolved to; the first that binds is used.
    Tcp(Vec<SocketAddr>),
    /// A Unix domain socket, at an absolute path.
    #[cfg(unix)]
    Unix(PathBuf),
}

impl Target {
    /// The TCP port this target asks for (that of its first candidate); none for a Unix
    /// socket.
    pub(crate) fn tcp_port(&self) -> Option<u16> {
        match self {
            Target::Tcp(candidates) => candidates.first().map(SocketAddr::port),
            #[cfg(unix)]
            Target::Unix(_) => None,
        }
    }

    /// Whether a socket listening on `addr` serves this target (a socket systemd passed).
    pub(crate) fn matches(&self, addr: &ListenAddr) -> bool {
        match (self, addr) {
            (Target::Tcp(candidates), ListenAddr::Tcp(addr)) => candidates.contains(addr),
            #[cfg(unix)]
            (Target::Unix(path), ListenAddr::Unix(bound)) => path == bound,
            _ => false,
        }
    }

    /// This address as the service name shows it.
    pub(crate) fn named(&self) -> crate::config::Named<'_> {
        match self {
            Target::Tcp(candidates) => crate::config::Named::Tcp(
                candidates
                    .first()
                    .copied()
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            ),
            #[cfg(unix)]
            Target::Unix(path) => crate::config::Named::Unix(path),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(candidates) => match candidates.first() {
                Some(addr) => write!(f, "{addr}"),
                None => f.write_str("(no address)"),
            },
            #[cfg(unix)]
            Target::Unix(path) => write!(f, "{}", ListenAddr::Unix(path.clone())),
        }
    }
}

/// Resolves each address: TCP ones to their candidates (the front binds the first candidate
/// that works, as `tokio::net::TcpListener::bind` does), Unix ones to an absolute path, so
/// that a build started from another directory names the same socket.
pub(crate) async fn resolve<I, A>(addrs: I) -> io::Result<Vec<Target>>
where
    I: IntoIterator<Item = A>,
    A: ToListenAddr,
{
    let mut out = Vec::new();
    for addr in addrs {
        let target = match addr.spec() {
            Spec::Host(host) => Target::Tcp(lookup(&host, tokio::net::lookup_host(&host)).await?),
            Spec::HostPort(host, port) => {
                let shown = format!("{host}:{port}");
                Target::Tcp(lookup(&shown, tokio::net::lookup_host((host.as_str(), port))).await?)
            }
            Spec::Socket(candidates) if candidates.is_empty() => {
                return Err(BindError::InvalidAddress {
                    address: "[]".to_owned(),
                    reason: "an empty list of socket addresses".to_owned(),
                }
                .into());
            }
            Spec::Socket(candidates) => Target::Tcp(candidates),
            Spec::Unix(path) => unix_target(path)?,
            Spec::Invalid { address, reason } => {
                return Err(BindError::InvalidAddress { address, reason }.into());
            }
        };
        if !out.contains(&target) {
            out.push(target);
        }
    }
    if out.is_empty() {
        return Err(BindError::NoAddress.into());
    }
    Ok(out)
}

async fn lookup(
    shown: &str,
    found: impl Future<Output = io::Result<impl Iterator<Item = SocketAddr>>>,
) -> io::Result<Vec<SocketAddr>> {
    let candidates: Vec<SocketAddr> = found
        .await
        .map_err(|e| bad_address(shown, &e.to_string()))?
        .collect();
    if candidates.is_empty() {
        return Err(bad_address(shown, "it resolves to nothing"));
    }
    Ok(candidates)
}

#[cfg(unix)]
fn unix_target(path: PathBuf) -> io::Result<Target> {
    std::path::absolute(&path)
        .map(Target::Unix)
        .map_err(|e| io::Error::new(e.kind(), format!("risefront: unix:{}: {e}", path.display())))
}

#[cfg(windows)]
fn unix_target(path: PathBuf) -> io::Result<Target> {
    Err(BindError::UnsupportedAddress {
        address: format!("unix:{}", path.display()),
        reason: "Unix domain sockets are not supported on Windows (yet); use a TCP address"
            .to_owned(),
    }
    .into())
}

fn bad_address(shown: &str, why: &str) -> io::Error {
    BindError::InvalidAddress {
        address: shown.to_owned(),
        reason: format!(
            "{why} (expected HOST:PORT, for example 127.0.0.1:8080, 0.0.0.0:8080, [::1]:8080 or localhost:8080, or unix:PATH)"
        ),
    }
    .into()
}

/// Binds one target: the first TCP candidate that works, or the Unix socket path (with
/// `unix_mode`, if given, set on the socket file).
pub(crate) async fn bind_target(target: &Target, unix_mode: Option<u32>) -> io::Result<Socket> {
    #[cfg(windows)]
    let _ = unix_mode;
    match target {
        Target::Tcp(candidates) => Ok(Socket::Tcp(bind_first(candidates).await?.into_std()?)),
        #[cfg(unix)]
        Target::Unix(path) => Ok(Socket::Unix(bind_unix(path, unix_mode).await?)),
    }
}

/// The listen backlog asked for (Linux caps it at `net.core.somaxconn`, 4096 by default since
/// 5.4). tokio's `TcpListener::bind` asks for 1024: at a takeover, up to every keep-alive
/// client of the old generation reconnects within a few hundred milliseconds, and connections
/// beyond the backlog wait for a SYN retransmit, a full second.
const BACKLOG: u32 = 4096;

/// Binds the first candidate that works, like `tokio::net::TcpListener::bind` (with
/// `SO_REUSEADDR` on Unix, as it does) but with a deeper backlog.
pub(crate) async fn bind_first(candidates: &[SocketAddr]) -> io::Result<TcpListener> {
    let mut last = None;
    for addr in candidates {
        match bind(*addr) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                last = Some(
                    BindError::AddressInUse {
                        address: addr.to_string(),
                        source: e,
                    }
                    .into(),
                );
            }
            Err(e) => {
                last = Some(io::Error::new(
                    e.kind(),
                    format!("risefront: bind {addr}: {e}"),
                ))
            }
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "risefront: no address")))
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Restarting the front right after a stop must not fail on connections in TIME_WAIT. Not
    // on Windows, where the flag would let another socket take the port.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// How long probing a socket file may take before it counts as live. Connecting to a Unix
/// socket completes as soon as the connection is queued, accepted or not, so only a socket
/// whose queue is full (connect then fails with `WouldBlock`) or a very slow system comes
/// near it.
#[cfg(unix)]
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds a Unix domain socket at `path`, with the same backlog as TCP.
///
/// A socket file already there is probed: if nothing accepts on it (connect refused) it is
/// left over from a process that was killed, and it is replaced; if something accepts, it is
/// live, and this is an `AddrInUse` error. A file that is not a socket is never touched.
#[cfg(unix)]
pub(crate) async fn bind_unix(
    path: &std::path::Path,
    mode: Option<u32>,
) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;

    let shown = ListenAddr::unix(path);
    let context = |e: io::Error, what: &str| {
        io::Error::new(e.kind(), format!("risefront: {what} {shown}: {e}"))
    };
    let listener = match listen_unix(path) {
        Ok(listener) => listener,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let meta = std::fs::symlink_metadata(path).map_err(|e| context(e, "inspect"))?;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "risefront: cannot listen on {shown}: the path exists and is not a socket; it is left alone"
                    ),
                ));
            }
            let probe = probe_unix(path).await;
            match probe {
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                    ) =>
                {
                    tracing::info!(
                        "replacing the stale socket file {shown}: nothing listens on it"
                    );
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(context(e, "remove the stale socket file")),
                    }
                    listen_unix(path).map_err(|e| context(e, "bind"))?
                }
                Ok(Err(e)) if e.kind() != io::ErrorKind::WouldBlock => {
                    return Err(context(e, "probe the existing socket file"));
                }
                // Connected, queue full, or too slow to say: someone listens on it.
                Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                    return Err(BindError::AddressInUse {
                        address: shown.to_string(),
                        source: io::Error::new(
                            io::ErrorKind::AddrInUse,
                            "another process accepts connections on it; stop it, or remove the file if that process is yours and gone",
                        ),
                    }
                    .into());
                }
            }
        }
        Err(e) => return Err(context(e, "bind")),
    };
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| context(e, &format!("set mode {mode:o} on")))?;
    }
    Ok(listener)
}

/// Connects to the socket file at `path` to see whether anyone accepts on it. A refusal is
/// asked again a few times over about 100 ms, and only a socket refused every time counts as
/// stale: Linux refuses only a socket nobody listens on, but macOS and the BSDs also refuse
/// while a live server's accept queue is full, and replacing that server's file would cut it
/// off. (Asked on every platform, so that the Linux tests run this path too; it only costs a
/// stale file's replacement about 100 ms.)
#[cfg(unix)]
async fn probe_unix(
    path: &std::path::Path,
) -> Result<io::Result<tokio::net::UnixStream>, tokio::time::error::Elapsed> {
    const REFUSALS: u32 = 4;
    let mut refused = 0;
    loop {
        let probe =
            tokio::time::timeout(PROBE_TIMEOUT, tokio::net::UnixStream::connect(path)).await;
        match &probe {
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                refused += 1;
                if refused == REFUSALS {
                    return probe;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            _ => return probe,
        }
    }
}

#[cfg(unix)]
fn listen_unix(path: &std::path::Path) -> io::Result<std::os::unix::net::UnixListener> {
    use rustix::net::SocketAddrUnix;

    let fd = unix_socket()?;
    rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&fd, BACKLOG as i32)?;
    Ok(fd.into())
}

/// A new Unix stream socket, close-on-exec from birth: generations get it over the control
/// channel, never by inheritance, and a flag set after `socket` returned would leave a moment
/// in which a process spawned by another thread inherits it.
#[cfg(unix)]
fn unix_socket() -> io::Result<std::os::fd::OwnedFd> {
    use rustix::net::{AddressFamily, SocketType};

    #[cfg(not(target_vendor = "apple"))]
    return Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?);
    // macOS has no SOCK_CLOEXEC: the flag follows at once, as std's own sockets do there.
    #[cfg(target_vendor = "apple")]
    {
        let fd = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None)?;
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
        Ok(fd)
    }
}

/// The inode of the socket file the front bound, so that it removes the file when the
/// service stops, unless someone replaced it meanwhile. (None on Windows, which has no Unix
/// socket listeners.)
#[derive(Debug)]
pub(crate) struct SocketFile {
    #[cfg(unix)]
    path: PathBuf,
    #[cfg(unix)]
    inode: (u64, u64),
}

impl SocketFile {
    #[cfg(unix)]
    pub(crate) fn of(path: &std::path::Path) -> Option<SocketFile> {
        Self::inode(path).map(|inode| SocketFile {
            path: path.to_owned(),
            inode,
        })
    }

    #[cfg(unix)]
    fn inode(path: &std::path::Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()))
    }

    /// The path and the identity of the file, for a front's next image.
    #[cfg(unix)]
    pub(crate) fn parts(&self) -> (&std::path::Path, (u64, u64)) {
        (&self.path, self.inode)
    }

    /// The file a front's previous image bound.
    #[cfg(unix)]
    pub(crate) fn from_parts(path: PathBuf, inode: (u64, u64)) -> SocketFile {
        SocketFile { path, inode }
    }

    /// Removes the file if it is still the one bound: a service that stopped leaves nothing.
    pub(crate) fn remove(&self) {
        #[cfg(unix)]
        if Self::inode(&self.path) == Some(self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};

    use super::*;

    /// A scratch directory, removed on drop, so a failing test leaves nothing behind.
    struct Scratch(PathBuf);

    impl Scratch {
        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("rf-net-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced_and_the_mode_set() {
        let dir = scratch("stale");
        let path = dir.join("http.sock");
        drop(UnixListener::bind(&path).expect("bind"));
        assert!(path.exists(), "a closed listener leaves its file");
        let listener = bind_unix(&path, Some(0o660)).await.expect("replace stale");
        let meta = std::fs::metadata(&path).expect("socket file");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        let _client = UnixStream::connect(&path).expect("connect");
        listener.accept().expect("accept");
    }

    #[tokio::test]
    async fn a_live_socket_is_refused_and_left_working() {
        let dir = scratch("live");
        let path = dir.join("http.sock");
        let theirs = UnixListener::bind(&path).expect("bind");
        let err = bind_unix(&path, None).await.expect_err("live socket");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("another process accepts"), "{err}");
        // The probe's connection is the only one queued; theirs still accepts new ones.
        theirs.accept().expect("probe connection");
        let _client = UnixStream::connect(&path).expect("still theirs");
        theirs.accept().expect("accept");
    }

    /// Linux: a full queue fails connect with `WouldBlock` (the BSDs and macOS refuse it).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_live_socket_with_a_full_queue_is_refused_as_in_use() {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketType};

        let dir = scratch("full");
        let path = dir.join("http.sock");
        let fd =
            rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).expect("socket");
        rustix::net::bind(&fd, &SocketAddrUnix::new(&path).expect("path")).expect("bind");
        // A queue of one, taken: the probe's connect fails with `WouldBlock`.
        rustix::net::listen(&fd, 0).expect("listen");
        let _queued = UnixStream::connect(&path).expect("fill the queue");
        let err = bind_unix(&path, None).await.expect_err("live socket");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains("another process accepts"), "{err}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_never_touched() {
        let dir = scratch("file");
        let path = dir.join("http.sock");
        std::fs::write(&path, "data").expect("write");
        let err = bind_unix(&path, None).await.expect_err("regular file");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "data");
    }

    #[tokio::test]
    async fn unix_addresses_resolve_to_absolute_paths() {
        let targets = resolve(["unix:rel.sock", "127.0.0.1:0", "unix:rel.sock"])
            .await
            .expect("resolve");
        assert_eq!(targets.len(), 2, "duplicates count once: {targets:?}");
        let Target::Unix(path) = &targets[0] else {
            panic!("{targets:?}")
        };
        assert!(path.is_absolute() && path.ends_with("rel.sock"), "{path:?}");
        let err = resolve(["unix:"]).await.expect_err("no path");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn unix_sockets_are_born_close_on_exec() {
        let fd = unix_socket().expect("socket");
        let flags = rustix::io::fcntl_getfd(&fd).expect("flags");
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[tokio::test]
    async fn the_socket_file_is_removed_only_if_still_ours() {
        let dir = scratch("remove");
        let path = dir.join("http.sock");
        let _listener = bind_unix(&path, None).await.expect("bind");
        let ours = SocketFile::of(&path).expect("inode");
        ours.remove();
        assert!(!path.exists());
        // Someone else's file at the same path later stays.
        let _theirs = UnixListener::bind(&path).expect("bind again");
        ours.remove();
        assert!(path.exists());
    }
}

#[cfg(all(test, windows))]
mod windows_tests {
    #[tokio::test]
    async fn unix_addresses_are_refused_on_windows() {
        let err = super::resolve(["unix:C:/app.sock"])
            .await
            .expect_err("windows");
        assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
        assert!(
            err.to_string().contains("not supported on Windows"),
            "{err}"
        );
    }
}
