//! Unix transport for the control channel: a socket file in a private directory, peer
//! credentials checked on every connection, and listening sockets passed with `SCM_RIGHTS`.
//!
//! Nearly everything here is safe Rust: `rustix` wraps `sendmsg`/`recvmsg` and the descriptors
//! come back as `OwnedFd`. The `unsafe` blocks adopt descriptors known only by number: the
//! control channel a front-spawned generation inherits, the sockets systemd passes a
//! socket-activated front, (in [`stderr`]) the front's stderr lent to a starting generation,
//! and (in [`reexec`]) what a front's previous image left open across `exec`, with the signal
//! mask that keeps the front alive meanwhile; no safe API can express any of them.

use std::fs;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};

use crate::error::BindError;
use crate::socket::Socket;

mod reexec;
mod stderr;
pub(crate) use reexec::{adopt, exec, keep_across_exec, unblock_signals, wait_adopted};
pub(crate) use stderr::{Lent, borrow_stderr, lend_stderr, return_stderr};

/// Most descriptors one frame may carry; a front has one per listening address.
pub(crate) const MAX_FDS: usize = 64;

/// The stream type of the control channel on this platform.
pub(crate) type Stream = UnixStream;

/// The directory holding control sockets, created private (0700) and checked before use.
///
/// The first that is set: `explicit` (`Builder::control_dir` or `RISEFRONT_DIR`), used as it
/// is; `$RUNTIME_DIRECTORY/risefront` (systemd's `RuntimeDirectory=`, private to the service);
/// `$XDG_RUNTIME_DIR/risefront` (per user, cleaned at logout); `risefront-<uid>` in the
/// temporary directory (`/tmp` unless `TMPDIR` says otherwise). A directory that another user
/// owns or that others can enter is refused, never used and never worked around: whoever
/// controls it could plant a socket and hand us their own listeners. The refusal says how to
/// pick a private one instead.
fn runtime_dir(explicit: Option<&Path>) -> io::Result<PathBuf> {
    let uid = rustix::process::getuid().as_raw();
    let nonempty = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
    let (dir, from) = if let Some(dir) = explicit {
        (
            dir.to_owned(),
            "set by RISEFRONT_DIR or Builder::control_dir",
        )
    } else if let Some(systemd) = nonempty("RUNTIME_DIRECTORY") {
        // Several `RuntimeDirectory=` entries arrive colon-separated: the first is ours.
        let first = systemd
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        (
            PathBuf::from(first).join("risefront"),
            "under RUNTIME_DIRECTORY",
        )
    } else if let Some(base) = nonempty("XDG_RUNTIME_DIR") {
        (
            PathBuf::from(base).join("risefront"),
            "under XDG_RUNTIME_DIR",
        )
    } else {
        (
            std::env::temp_dir().join(format!("risefront-{uid}")),
            "the fallback in the temporary directory, as none of RISEFRONT_DIR, RUNTIME_DIRECTORY and XDG_RUNTIME_DIR is set",
        )
    };
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(context(e, "create control directory", &dir)),
    }
    let meta =
        fs::symlink_metadata(&dir).map_err(|e| context(e, "inspect control directory", &dir))?;
    if !meta.is_dir() {
        return Err(refuse(&dir, from, "it is not a directory"));
    }
    if meta.uid() != uid {
        return Err(refuse(
            &dir,
            from,
            &format!(
                "it is owned by uid {}, not {uid} (another user created it first)",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(refuse(
            &dir,
            from,
            &format!(
                "its mode is {:o}: others can enter it; it must be 0700",
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(dir)
}

fn refuse(dir: &Path, from: &str, why: &str) -> io::Error {
    BindError::ControlDirRefused {
        path: dir.to_owned(),
        chosen: from.to_owned(),
        reason: why.to_owned(),
    }
    .into()
}

/// Adds the operation and path to an error, so `bind` failures say what they were doing.
pub(crate) fn context(e: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("risefront: {op} {}: {e}", path.display()))
}

/// The control endpoint of a service, and the lock that decides who is its front.
pub(crate) struct Endpoint {
    socket: PathBuf,
    lock: PathBuf,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.socket.display().fmt(f)
    }
}

impl Endpoint {
    /// The endpoint of service `name`, in the private control directory (`dir` if given).
    pub(crate) fn for_service(name: &str, dir: Option<&Path>) -> io::Result<Self> {
        let dir = runtime_dir(dir)?;
        Ok(Endpoint {
            socket: dir.join(format!("{name}.sock")),
            lock: dir.join(format!("{name}.lock")),
        })
    }

    /// Connects to a running front. `Ok(None)` means there is none (no socket, or a stale one).
    pub(crate) async fn connect(&self) -> io::Result<Option<UnixStream>> {
        match UnixStream::connect(&self.socket).await {
            Ok(stream) => {
                check_peer(&stream)?;
                Ok(Some(stream))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(context(e, "connect to front at", &self.socket)),
        }
    }

    /// Tries to become the front: takes the service's lock without waiting. `Ok(None)` means
    /// another process holds it (a front is running or starting).
    ///
    /// The lock, not the socket file, decides: a socket file survives a `kill -9`, a lock does
    /// not, so two processes starting at once can never both become the front.
    ///
    /// A front removes the lock file on its way out, so a file opened just before that is
    /// locked afterwards with no one else holding it, while the next process locks a new file
    /// of the same name: two fronts. A lock counts only on the file the name still leads to.
    pub(crate) fn try_lock(&self) -> io::Result<Option<FrontLock>> {
        // Each turn means a front came and went between our open and our lock: a handful
        // is already an unlikely race; more would be a file replaced on purpose.
        for _ in 0..16 {
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&self.lock)
                .map_err(|e| context(e, "open lock file", &self.lock))?;
            match self.lock_opened(file)? {
                Locked::Ours(lock) => return Ok(Some(lock)),
                Locked::Taken => return Ok(None),
                Locked::Stale => {}
            }
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "risefront: lock file {} keeps being replaced while it is locked",
                self.lock.display()
            ),
        ))
    }

    /// Locks `file`, an opened lock file, and checks that it is still the file the lock's
    /// name leads to.
    fn lock_opened(&self, file: fs::File) -> io::Result<Locked> {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(Locked::Taken),
            Err(e) => return Err(context(e.into(), "lock", &self.lock)),
        }
        let held = file
            .metadata()
            .map_err(|e| context(e, "inspect lock file", &self.lock))?;
        let named = match fs::symlink_metadata(&self.lock) {
            Ok(named) => Some(named),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(context(e, "inspect lock file", &self.lock)),
        };
        let same = named.is_some_and(|n| (n.dev(), n.ino()) == (held.dev(), held.ino()));
        Ok(if same {
            Locked::Ours(FrontLock { file })
        } else {
            Locked::Stale
        })
    }

    /// Binds the control socket, replacing a stale file left by a front that was killed.
    /// Only called while holding the lock, so the file cannot belong to a live front.
    pub(crate) fn listen(&self, _lock: &FrontLock) -> io::Result<ControlListener> {
        match fs::remove_file(&self.socket) {
            Ok(()) => {
                tracing::debug!(path = %self.socket.display(), "removed stale control socket")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(context(e, "remove stale control socket", &self.socket)),
        }
        UnixListener::bind(&self.socket)
            .map(ControlListener)
            .map_err(|e| context(e, "bind control socket", &self.socket))
    }

    /// The names of the other services whose fronts have (or had) a socket beside ours.
    pub(crate) fn other_services(&self) -> Vec<String> {
        let Some(dir) = self.socket.parent() else {
            return Vec::new();
        };
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                if path == self.socket || path.extension()? != "sock" {
                    return None;
                }
                Some(path.file_stem()?.to_string_lossy().into_owned())
            })
            .collect()
    }

    /// The socket and lock files, for a front's next image (see `front/reexec.rs`).
    pub(crate) fn paths(&self) -> (&Path, &Path) {
        (&self.socket, &self.lock)
    }

    /// The endpoint whose files a front's previous image named.
    pub(crate) fn at(socket: PathBuf, lock: PathBuf) -> Self {
        Endpoint { socket, lock }
    }

    /// Removes the socket and lock files; called by a front on its way out.
    pub(crate) fn remove(&self) {
        let _ = fs::remove_file(&self.socket);
        let _ = fs::remove_file(&self.lock);
    }
}

/// The front's end of the control endpoint.
pub(crate) struct ControlListener(UnixListener);

impl ControlListener {
    /// Waits for the next control connection; the peer is not verified yet.
    pub(crate) async fn accept(&mut self) -> io::Result<Stream> {
        self.0.accept().await.map(|(stream, _)| stream)
    }

    /// The listening socket, to keep across a re-exec of the front.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// The listening socket a front's previous image kept open for this one.
    pub(crate) fn carried(fd: OwnedFd) -> io::Result<Self> {
        let listener = std::os::unix::net::UnixListener::from(fd);
        listener.set_nonblocking(true)?;
        UnixListener::from_std(listener).map(ControlListener)
    }
}

/// Held by the front for its whole life; the kernel releases it if the front dies.
pub(crate) struct FrontLock {
    file: fs::File,
}

impl FrontLock {
    /// The locked file, to keep across a re-exec of the front (the lock is the open file's,
    /// so it holds for the new image).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The lock a front's previous image kept open for this one.
    pub(crate) fn carried(fd: OwnedFd) -> Self {
        FrontLock {
            file: fs::File::from(fd),
        }
    }
}

/// What locking an opened lock file gave.
enum Locked {
    Ours(FrontLock),
    /// Another process holds it: a front is running or starting.
    Taken,
    /// Locked, but the name now leads to another file (or none): a front removed it after we
    /// opened it. Holding this one would make a second front beside whoever locks the new one.
    Stale,
}

/// The verified identity of a control peer.
pub(crate) struct Peer {
    /// Process id reported by the kernel, where the platform reports one.
    pub(crate) pid: Option<u32>,
}

/// Checks that the peer runs as our user; anyone else is refused before a byte is read.
pub(crate) fn check_peer(stream: &UnixStream) -> io::Result<Peer> {
    let cred = stream.peer_cred()?;
    let ours = rustix::process::getuid().as_raw();
    if cred.uid() != ours {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "risefront: control peer runs as uid {} (pid {:?}), not uid {ours}",
                cred.uid(),
                cred.pid()
            ),
        ));
    }
    Ok(Peer {
        pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
    })
}

/// Writes all of `bytes`, attaching `fds` to the first segment with `SCM_RIGHTS`.
pub(crate) async fn send_with_fds(
    stream: &UnixStream,
    mut bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut fds = fds;
    while !bytes.is_empty() {
        let n = stream
            .async_io(Interest::WRITABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "risefront: cannot pass {} descriptors in one frame",
                            fds.len()
                        ),
                    ));
                }
                Ok(rustix::net::sendmsg(
                    stream,
                    &[IoSlice::new(bytes)],
                    &mut control,
                    send_flags(),
                )?)
            })
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // The kernel attached the descriptors to the bytes just written.
        fds = &[];
        bytes = &bytes[n..];
    }
    Ok(())
}

fn send_flags() -> SendFlags {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return SendFlags::NOSIGNAL;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    return SendFlags::empty();
}

/// Reads some bytes into `buf`, collecting any descriptors that arrive with them into `fds`.
/// Returns 0 at end of stream.
pub(crate) async fn recv_with_fds(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    stream
        .async_io(Interest::READABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = rustix::net::recvmsg(
                stream,
                &mut [IoSliceMut::new(buf)],
                &mut control,
                recv_flags(),
            )?;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    for fd in received {
                        set_cloexec(&fd)?;
                        fds.push(fd);
                    }
                }
            }
            if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "risefront: front sent more descriptors than fit in one message",
                ));
            }
            Ok(msg.bytes)
        })
        .await
}

fn recv_flags() -> RecvFlags {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    return RecvFlags::CMSG_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    return RecvFlags::empty();
}

/// Where `MSG_CMSG_CLOEXEC` exists the descriptor already is close-on-exec; elsewhere (macOS)
/// there is a short window in which a concurrent `exec` could leak it, which is why the
/// flag is used where available.
fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    rustix::io::fcntl_setfd(fd.as_fd(), rustix::io::FdFlags::CLOEXEC)?;
    Ok(())
}

/// The variable that tells a front-spawned generation which descriptor is its control channel:
/// `<front pid>:<descriptor>`.
pub(crate) const CHANNEL_VAR: &str = "RISEFRONT_CHANNEL";

/// The end of a control channel that a generation the front spawns inherits, so that it never
/// has to compete with other peers for a connection to the public endpoint.
pub(crate) struct ChildChannel {
    end: OwnedFd,
}

/// A connected pair: the front's end, and the end the child inherits.
pub(crate) fn child_channel(_endpoint: &Endpoint) -> io::Result<(Stream, ChildChannel)> {
    // std creates both ends close-on-exec on every Unix.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| {
        if out_of_descriptors(&e) {
            // Kept as it is: the front makes room and tries again.
            return e;
        }
        io::Error::new(
            e.kind(),
            format!("risefront: create a control channel: {e}"),
        )
    })?;
    ours.set_nonblocking(true)?;
    Ok((
        UnixStream::from_std(ours)?,
        ChildChannel { end: theirs.into() },
    ))
}

impl ChildChannel {
    /// Prepares `command` so the child inherits this end. Keep what it returns until the spawn
    /// returned, then drop it.
    ///
    /// The inherited copy is a `dup` (which clears close-on-exec) rather than a `pre_exec`
    /// hook, so no code runs between fork and exec. Another thread of the front that spawned a
    /// program in that instant would inherit it too; the front runs no such threads (it runs
    /// no application code once it is the front).
    pub(crate) fn attach(self, command: &mut tokio::process::Command) -> io::Result<Inherited> {
        let inheritable = rustix::io::dup(&self.end).map_err(|e| {
            let e = io::Error::from(e);
            if out_of_descriptors(&e) {
                // Kept as it is: the front makes room and tries again.
                return e;
            }
            io::Error::new(
                e.kind(),
                format!("risefront: duplicate the control channel for a child: {e}"),
            )
        })?;
        command.env(
            CHANNEL_VAR,
            format!("{}:{}", std::process::id(), inheritable.as_raw_fd()),
        );
        Ok(Inherited {
            _ends: [self.end, inheritable],
        })
    }
}

/// The child's end of a channel, held until the spawn returned; dropping it closes the
/// front's copies, so the child's exit shows as the end of the channel.
pub(crate) struct Inherited {
    _ends: [OwnedFd; 2],
}

/// Whether `e` says this process (or the system) has no descriptor left to open.
pub(crate) fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
    )
}

/// A connected pair of stream sockets, both ends close-on-exec: how the front introduces a
/// superseded generation to the one that took over, which then exchange connections directly
/// (`HandoffTo` and `HandoffFrom`, one end each).
pub(crate) fn handoff_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = std::os::unix::net::UnixStream::pair().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("risefront: create a connection handoff channel: {e}"),
        )
    })?;
    Ok((a.into(), b.into()))
}

/// The front's end of an inherited channel is connected from birth.
pub(crate) async fn wait_connected(_stream: &Stream) -> io::Result<()> {
    Ok(())
}

/// The pid on the far end of an inherited channel, where the system can tell: a socketpair
/// reports the process that created it (the front), so here it cannot, and the child the
/// front spawned is the only other holder of the pair.
pub(crate) fn child_pid(_stream: &Stream) -> io::Result<Option<u32>> {
    Ok(None)
}

/// In a generation: the control channel inherited from the front that spawned this process.
///
/// `Ok(None)` when there is none: no variable, or one meant for another process (it is
/// inherited by our own children too, whose parent is not the front; and a child orphaned by
/// a front killed with `-9` is not one it can reach).
pub(crate) fn inherited_channel() -> io::Result<Option<Stream>> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let Some(value) = std::env::var_os(CHANNEL_VAR) else {
        return Ok(None);
    };
    let Some((front, fd)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return Err(bad_channel(&value, "expected <front pid>:<descriptor>"));
    };
    let (Ok(front), Ok(fd)) = (front.parse::<i32>(), fd.parse::<RawFd>()) else {
        return Err(bad_channel(&value, "expected <front pid>:<descriptor>"));
    };
    let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    if parent != front || fd < 3 || TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(None);
    }
    // SAFETY: the front that is our parent (checked above) started this process with `fd`
    // open and close-on-exec cleared, for this process to own (see `ChildChannel::attach`);
    // nothing else in the process knows the number, and `TAKEN` makes sure it is adopted at
    // most once. It is checked to be a socket of our own user before any use.
    let end = unsafe { OwnedFd::from_raw_fd(fd) };
    if !is_open_socket(&end) {
        // Closed or reused by the program before it called bind: not ours to close.
        std::mem::forget(end);
        return Err(bad_channel(
            &value,
            &format!("descriptor {fd} is not an open socket"),
        ));
    }
    set_cloexec(&end)?;
    let stream = std::os::unix::net::UnixStream::from(end);
    stream.set_nonblocking(true)?;
    let stream = UnixStream::from_std(stream)?;
    check_peer(&stream)?;
    Ok(Some(stream))
}

/// Whether a descriptor adopted by number is an open socket (and so, presumably, the one it
/// was announced as); when it is not, the caller must forget it rather than close it.
fn is_open_socket(fd: &OwnedFd) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|stat| {
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Socket
    })
}

fn bad_channel(value: &std::ffi::OsStr, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("risefront: {CHANNEL_VAR}={value:?} cannot be used: {why}"),
    )
}

/// The listening sockets systemd passed this process (socket activation, sd_listen_fds(3)),
/// with their `LISTEN_FDNAMES` names: none unless `LISTEN_PID` names this process.
#[cfg(target_os = "linux")]
pub(crate) fn activated_listeners() -> io::Result<Vec<(Socket, String)>> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(Vec::new());
    }
    let passed = sd_notify::listen_fds_with_names().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("risefront: the sockets systemd passed (LISTEN_FDS): {e}"),
        )
    })?;
    let mut listeners = Vec::new();
    for (fd, name) in passed {
        let not_a_listener = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "risefront: systemd passed descriptor {fd} ({name:?}), which is not a listening TCP or Unix socket: {why}"
                ),
            )
        };
        // SAFETY: sd_listen_fds(3): LISTEN_PID names this process (checked by `listen_fds`),
        // which was started owning descriptors 3 to 3 + LISTEN_FDS for it to use; `TAKEN`
        // makes sure they are adopted at most once, and nothing else in the crate takes them.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if !is_open_socket(&owned) {
            // Not a socket (or not open): not ours to close.
            std::mem::forget(owned);
            return Err(not_a_listener("not a socket"));
        }
        if rustix::net::sockopt::socket_type(&owned) != Ok(rustix::net::SocketType::STREAM)
            || rustix::net::sockopt::socket_acceptconn(&owned) != Ok(true)
        {
            return Err(not_a_listener("not a listening stream socket"));
        }
        let listener = Socket::try_from(owned).map_err(|e| not_a_listener(&e.to_string()))?;
        if listener.local_addr().is_none() {
            return Err(not_a_listener("it has no address (an unnamed Unix socket)"));
        }
        listeners.push((listener, name));
    }
    Ok(listeners)
}

/// Socket activation is systemd's, so Linux's.
#[cfg(not(target_os = "linux"))]
pub(crate) fn activated_listeners() -> io::Result<Vec<(Socket, String)>> {
    Ok(Vec::new())
}

/// A generation process the front did not spawn (one started by hand), held from the moment
/// its identity was verified, so that a kill can never reach a later process that reused its
/// pid.
pub(crate) struct ProcessHandle {
    #[cfg(target_os = "linux")]
    pidfd: OwnedFd,
    #[cfg(target_os = "linux")]
    pid: u32,
    /// Where there is no pidfd (macOS, the BSDs), the verified pid is all there is: a kill
    /// could then reach a process that reused the pid after this one exited, which needs the
    /// pid space to wrap around within the few seconds a generation starts.
    #[cfg(not(target_os = "linux"))]
    pid: rustix::process::Pid,
}

impl ProcessHandle {
    /// Takes hold of process `pid`, which the caller just verified.
    pub(crate) fn open(pid: u32) -> io::Result<Self> {
        let raw = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad pid {pid}")))?;
        #[cfg(target_os = "linux")]
        return rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
            .map(|pidfd| ProcessHandle { pidfd, pid })
            .map_err(|e| {
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!("risefront: pidfd_open({pid}): {e}"),
                )
            });
        #[cfg(not(target_os = "linux"))]
        return Ok(ProcessHandle { pid: raw });
    }

    /// The program the process runs, where the system tells (Linux), for the log.
    pub(crate) fn executable(&self) -> Option<PathBuf> {
        #[cfg(target_os = "linux")]
        return fs::read_link(format!("/proc/{}/exe", self.pid)).ok();
        #[cfg(not(target_os = "linux"))]
        return None;
    }

    /// Kills the process (SIGKILL). One that already exited is not an error.
    pub(crate) fn kill(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        let result = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL);
        #[cfg(not(target_os = "linux"))]
        let result = rustix::process::kill_process(self.pid, rustix::process::Signal::KILL);
        match result {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private scratch directory, removed on drop even when a test fails.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "risefront-unix-{name}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .expect("scratch dir");
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_lock_file_opened_before_the_front_removed_it_makes_no_second_front() {
        let scratch = Scratch::new("lock");
        let endpoint = Endpoint::for_service("svc", Some(&scratch.0)).expect("endpoint");
        let front = endpoint
            .try_lock()
            .expect("lock")
            .expect("the first is the front");
        assert!(endpoint.try_lock().expect("lock").is_none(), "one front");
        // A process starting now opens the lock file, then is descheduled...
        let early = fs::OpenOptions::new()
            .write(true)
            .open(&endpoint.lock)
            .expect("open the lock file");
        // ... while the front stops and removes its files, and another process takes over.
        endpoint.remove();
        drop(front);
        let next = endpoint.try_lock().expect("lock");
        assert!(next.is_some(), "the next process is the front");
        // The early process now locks the file it opened: it must not be a front too.
        assert!(
            matches!(endpoint.lock_opened(early).expect("lock"), Locked::Stale),
            "a second front on the removed lock file"
        );
        assert!(
            endpoint.try_lock().expect("lock").is_none(),
            "still one front"
        );
    }

    #[test]
    fn a_removed_lock_file_is_made_again() {
        let scratch = Scratch::new("relock");
        let endpoint = Endpoint::for_service("svc", Some(&scratch.0)).expect("endpoint");
        let front = endpoint.try_lock().expect("lock").expect("front");
        endpoint.remove();
        drop(front);
        assert!(endpoint.try_lock().expect("lock").is_some());
    }
}
