//! The control endpoint: a named pipe per service whose name nobody else can predict, with the
//! lock that decides which process is the front, and the connection type both ends use.

use std::ffi::c_void;
use std::io;
use std::mem::size_of;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions,
};
use tokio::time::Instant;
use windows_sys::Win32::Foundation::{
    ERROR_FILE_NOT_FOUND, ERROR_NO_DATA, ERROR_PIPE_BUSY, ERROR_SHARING_VIOLATION,
};
use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;

use super::security::{SecurityDescriptor, current_user_sid};
use super::{check_peer, context, is_os_error};

/// How long a client keeps retrying while every pipe instance is busy: the front creates the
/// next instance right after each connection, so this only covers bursts.
const PIPE_BUSY_WAIT: Duration = Duration::from_secs(5);

/// The control connection: the client and server ends of a named pipe are different types in
/// tokio, and a channel is one or the other.
pub(crate) enum Stream {
    /// A generation's or control client's end.
    Client(NamedPipeClient),
    /// The front's end.
    Server(NamedPipeServer),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Client(pipe) => Pin::new(pipe).poll_read(cx, buf),
            Stream::Server(pipe) => Pin::new(pipe).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Client(pipe) => Pin::new(pipe).poll_write(cx, buf),
            Stream::Server(pipe) => Pin::new(pipe).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Client(pipe) => Pin::new(pipe).poll_flush(cx),
            Stream::Server(pipe) => Pin::new(pipe).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Client(pipe) => Pin::new(pipe).poll_shutdown(cx),
            Stream::Server(pipe) => Pin::new(pipe).poll_shutdown(cx),
        }
    }
}

/// The control endpoint of a service: a named pipe whose name nobody else can predict,
/// `\\.\pipe\risefront-<user SID>-<service>-<128 random bits>`, announced in a file of the
/// user's own (`%LOCALAPPDATA%\risefront\<service>.pipe`, or in `RISEFRONT_DIR`).
///
/// Any user may create a pipe of any name, so a predictable name could be taken first by
/// another user to keep the service from starting; a random one cannot. The owner-only
/// descriptor and the peer checks still decide who may talk to the front. Which process is the
/// front is decided by an exclusive lock on `<service>.lock` beside the name file, which
/// Windows releases when the process ends, however it ends.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// `\\.\pipe\risefront-<SID>-<service>`: what every pipe name of the service starts with.
    pub(super) prefix: String,
    /// The file that names the front's pipe.
    name_file: PathBuf,
    lock_file: PathBuf,
    /// The front's pipe, once this process is the front.
    pipe: Arc<OnceLock<String>>,
    /// The owner-only descriptor, as SDDL, converted afresh for each pipe instance.
    sddl: Vec<u16>,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pipe.get() {
            Some(pipe) => pipe.fmt(f),
            None => self.name_file.display().fmt(f),
        }
    }
}

impl Endpoint {
    /// The endpoint of service `name` for the current user; its name file lives in `dir` if
    /// given, else in `%LOCALAPPDATA%\risefront`.
    pub(crate) fn for_service(name: &str, dir: Option<&Path>) -> io::Result<Self> {
        let sid = current_user_sid().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("risefront: read the current user's SID: {e}"),
            )
        })?;
        let dir = match dir {
            Some(dir) => dir.to_owned(),
            None => std::env::var_os("LOCALAPPDATA")
                .filter(|d| !d.is_empty())
                .map_or_else(std::env::temp_dir, PathBuf::from)
                .join("risefront"),
        };
        std::fs::create_dir_all(&dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("risefront: create control directory {}: {e}", dir.display()),
            )
        })?;
        // Protected DACL with one entry: full access for this user, nobody else (no Everyone,
        // no Anonymous, no inherited entries).
        let sddl = format!("D:P(A;;GA;;;{sid})");
        Ok(Endpoint {
            prefix: format!(r"\\.\pipe\risefront-{sid}-{name}"),
            name_file: dir.join(format!("{name}.pipe")),
            lock_file: dir.join(format!("{name}.lock")),
            pipe: Arc::new(OnceLock::new()),
            sddl: sddl.encode_utf16().chain([0]).collect(),
        })
    }

    /// Connects to a running front. `Ok(None)` means there is none: no name file, or a name
    /// whose pipe is gone with the front that made it.
    pub(crate) async fn connect(&self) -> io::Result<Option<Stream>> {
        let pipe = match std::fs::read_to_string(&self.name_file) {
            Ok(pipe) => pipe.trim().to_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("risefront: read {}: {e}", self.name_file.display()),
                ));
            }
        };
        if !pipe.starts_with(&self.prefix) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "risefront: {} names {pipe:?}, not a pipe of this service",
                    self.name_file.display()
                ),
            ));
        }
        let deadline = Instant::now() + PIPE_BUSY_WAIT;
        loop {
            match ClientOptions::new().open(&pipe) {
                Ok(client) => {
                    let stream = Stream::Client(client);
                    check_peer(&stream).map_err(|e| context(e, "verify the front at", &pipe))?;
                    return Ok(Some(stream));
                }
                Err(e) if is_os_error(&e, ERROR_FILE_NOT_FOUND) => return Ok(None),
                Err(e) if is_os_error(&e, ERROR_PIPE_BUSY) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(context(e, "connect to front at", &pipe)),
            }
        }
    }

    /// Tries to become the front: takes the service's lock without waiting, then creates a
    /// pipe with a fresh random name and announces it. `Ok(None)` means another process holds
    /// the lock (a front is running or starting).
    pub(crate) fn try_lock(&self) -> io::Result<Option<FrontLock>> {
        use std::os::windows::fs::OpenOptionsExt;
        let file = match std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .share_mode(0)
            .open(&self.lock_file)
        {
            Ok(file) => file,
            Err(e) if is_os_error(&e, ERROR_SHARING_VIOLATION) => return Ok(None),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("risefront: lock {}: {e}", self.lock_file.display()),
                ));
            }
        };
        let pipe = format!("{}-{}", self.prefix, random_suffix());
        let first = self
            .create_pipe(&pipe, true, None)
            .map_err(|e| context(e, "create control pipe", &pipe))?;
        // Written aside and renamed, so a reader sees the old name or the new, never half.
        let fresh = self.name_file.with_extension("pipe.new");
        std::fs::write(&fresh, &pipe)
            .and_then(|()| std::fs::rename(&fresh, &self.name_file))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("risefront: write {}: {e}", self.name_file.display()),
                )
            })?;
        let _ = self.pipe.set(pipe);
        Ok(Some(FrontLock {
            _file: file,
            first: Mutex::new(Some(first)),
        }))
    }

    /// Starts serving the pipe whose first instance `lock` holds.
    pub(crate) fn listen(&self, lock: &FrontLock) -> io::Result<ControlListener> {
        let pipe = self.pipe.get().cloned().unwrap_or_default();
        let first = lock
            .first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("risefront: control pipe {pipe} is already listening"),
                )
            })?;
        Ok(ControlListener {
            endpoint: self.clone(),
            pipe,
            next: Some(first),
        })
    }

    /// Pipes cannot be listed by prefix without scanning every pipe of the machine: the
    /// address-in-use error stays generic on Windows.
    pub(crate) fn other_services(&self) -> Vec<String> {
        Vec::new()
    }

    /// Removes the name file, if it still names our pipe; called by a front on its way out.
    /// The pipe itself goes away with the front's handles.
    pub(crate) fn remove(&self) {
        if let Some(ours) = self.pipe.get()
            && std::fs::read_to_string(&self.name_file).is_ok_and(|named| named.trim() == ours)
        {
            let _ = std::fs::remove_file(&self.name_file);
        }
    }

    /// A fresh name for the pipe over which one generation hands its connections to another
    /// (see `pair`): the service's prefix and 128 random bits.
    pub(crate) fn handoff_pipe_name(&self) -> String {
        format!("{}-handoff-{}", self.prefix, random_suffix())
    }

    /// Creates an instance of pipe `name` with the owner-only descriptor.
    pub(super) fn create_pipe(
        &self,
        name: &str,
        first: bool,
        max_instances: Option<usize>,
    ) -> io::Result<NamedPipeServer> {
        create_owned_pipe(&self.sddl, name, first, max_instances)
    }
}

/// The owner-only descriptor for the current user, as SDDL: a protected DACL with one entry,
/// full access for this user, nobody else (no Everyone, no Anonymous, no inherited entries).
pub(super) fn owner_only_sddl() -> io::Result<Vec<u16>> {
    let sid = current_user_sid().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("risefront: read the current user's SID: {e}"),
        )
    })?;
    Ok(format!("D:P(A;;GA;;;{sid})")
        .encode_utf16()
        .chain([0])
        .collect())
}

/// Creates an instance of pipe `name` with the descriptor `sddl`.
pub(super) fn create_owned_pipe(
    sddl: &[u16],
    name: &str,
    first: bool,
    max_instances: Option<usize>,
) -> io::Result<NamedPipeServer> {
    let descriptor = SecurityDescriptor::from_sddl(sddl)?;
    let mut attributes = SECURITY_ATTRIBUTES {
        nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: descriptor.0,
        bInheritHandle: 0,
    };
    let mut options = ServerOptions::new();
    options
        .first_pipe_instance(first)
        .reject_remote_clients(true)
        .access_inbound(true)
        .access_outbound(true);
    if let Some(max) = max_instances {
        options.max_instances(max);
    }
    // SAFETY: `attributes` is a valid SECURITY_ATTRIBUTES for the whole call, and the
    // descriptor it points to lives in `descriptor`, dropped only after the call returns
    // (CreateNamedPipeW copies it into the pipe object).
    unsafe {
        options.create_with_security_attributes_raw(name, (&raw mut attributes).cast::<c_void>())
    }
}

/// The front's end of the control endpoint: always one instance waiting for a client, so the
/// pipe (and with it the front's claim to the name) never disappears while the front lives.
pub(crate) struct ControlListener {
    endpoint: Endpoint,
    pipe: String,
    next: Option<NamedPipeServer>,
}

impl ControlListener {
    /// Waits for the next control connection; the peer is not verified yet.
    ///
    /// Cancel-safe: the waiting instance stays in `self`, and tokio's `connect` loses no
    /// connection when dropped.
    pub(crate) async fn accept(&mut self) -> io::Result<Stream> {
        loop {
            let server = match &mut self.next {
                Some(server) => server,
                empty => empty.insert(
                    self.endpoint
                        .create_pipe(&self.pipe, false, None)
                        .map_err(|e| context(e, "create control pipe instance", &self.pipe))?,
                ),
            };
            match server.connect().await {
                Ok(()) => {}
                // The client came and went before we saw it; reuse the instance instead of
                // dropping it, which could leave the pipe without any instance for a moment.
                Err(e) if is_os_error(&e, ERROR_NO_DATA) => {
                    let _ = server.disconnect();
                    continue;
                }
                Err(e) => {
                    let _ = server.disconnect();
                    return Err(context(e, "accept on control pipe", &self.pipe));
                }
            }
            // The next instance is created before the connected one is handed out, so new
            // clients find the pipe free and a second process cannot claim the name.
            let fresh = self.endpoint.create_pipe(&self.pipe, false, None);
            let connected = match fresh {
                Ok(fresh) => self.next.replace(fresh),
                Err(e) => {
                    tracing::warn!(
                        "risefront: create control pipe instance {}: {e}; retrying on the next accept",
                        self.pipe
                    );
                    self.next.take()
                }
            };
            if let Some(connected) = connected {
                return Ok(Stream::Server(connected));
            }
        }
    }
}

/// Held by the front for its whole life: the exclusively opened lock file, and from
/// `try_lock` until `listen` the pipe's first instance.
pub(crate) struct FrontLock {
    _file: std::fs::File,
    first: Mutex<Option<NamedPipeServer>>,
}

/// 128 bits from std's randomly keyed hasher (seeded from the system's random source once per
/// process), mixed with the time and a counter: not guessable by another process.
pub(super) fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut halves = [0u64; 2];
    for (i, half) in halves.iter_mut().enumerate() {
        let mut hasher = std::hash::RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u64(count);
        hasher.write_usize(i);
        *half = hasher.finish();
    }
    format!("{:016x}{:016x}", halves[0], halves[1])
}
