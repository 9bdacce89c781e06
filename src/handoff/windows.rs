//! Windows transport for the control channel: a named pipe per service, readable and writable
//! by the current user only, with the peer's process id and user checked on every connection,
//! and listening sockets passed as `WSADuplicateSocketW` protocol info.
//!
//! This is the only module of the crate with `unsafe` code: Win32 has no safe wrapper for the
//! security descriptor, the pipe's process ids, the process tokens or socket duplication.

use std::ffi::c_void;
use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::TcpListener;
use std::os::windows::io::{AsRawHandle, AsRawSocket, FromRawHandle, FromRawSocket, OwnedHandle};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::ptr;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions,
};
use tokio::time::Instant;
use windows_sys::Win32::Foundation::{
    ERROR_FILE_NOT_FOUND, ERROR_NO_DATA, ERROR_PIPE_BUSY, ERROR_SHARING_VIOLATION, HANDLE,
    LocalFree,
};
use windows_sys::Win32::Networking::WinSock::{
    FROM_PROTOCOL_INFO, INVALID_SOCKET, SOCKET, WSA_FLAG_NO_HANDLE_INHERIT, WSA_FLAG_OVERLAPPED,
    WSADATA, WSADuplicateSocketW, WSAGetLastError, WSAPROTOCOL_INFOW, WSASocketW, WSAStartup,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{
    GetTokenInformation, PSECURITY_DESCRIPTOR, PSID, SECURITY_ATTRIBUTES, TOKEN_QUERY, TOKEN_USER,
    TokenUser,
};
use windows_sys::Win32::System::Pipes::{GetNamedPipeClientProcessId, GetNamedPipeServerProcessId};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_TERMINATE, TerminateProcess,
};

/// Most sockets one frame may carry; a front has one per listening address.
pub(crate) const MAX_FDS: usize = 64;

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

/// Adds the operation and pipe name to an error, so `bind` failures say what they were doing.
fn context(e: io::Error, op: &str, pipe: &str) -> io::Error {
    io::Error::new(e.kind(), format!("risefront: {op} {pipe}: {e}"))
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
    prefix: String,
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

    /// Creates an instance of pipe `name` with the owner-only descriptor.
    fn create_pipe(
        &self,
        name: &str,
        first: bool,
        max_instances: Option<usize>,
    ) -> io::Result<NamedPipeServer> {
        let descriptor = SecurityDescriptor::from_sddl(&self.sddl)?;
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
            options
                .create_with_security_attributes_raw(name, (&raw mut attributes).cast::<c_void>())
        }
    }
}

/// A self-relative security descriptor allocated by `ConvertStringSecurityDescriptor…`.
struct SecurityDescriptor(PSECURITY_DESCRIPTOR);

impl SecurityDescriptor {
    fn from_sddl(sddl: &[u16]) -> io::Result<Self> {
        let mut descriptor: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // SAFETY: `sddl` is NUL-terminated (built in `for_service`), `descriptor` is a valid out
        // pointer, and the size out-parameter is optional.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                ptr::null_mut(),
            )
        };
        if ok == 0 || descriptor.is_null() {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("risefront: build the control pipe's security descriptor: {e}"),
            ));
        }
        Ok(SecurityDescriptor(descriptor))
    }
}

impl Drop for SecurityDescriptor {
    fn drop(&mut self) {
        // SAFETY: the descriptor was allocated with LocalAlloc by the conversion above and is
        // freed exactly once, here.
        unsafe { LocalFree(self.0) };
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

/// The verified identity of a control peer.
pub(crate) struct Peer {
    /// Process id of the other end, as the pipe reports it.
    pub(crate) pid: Option<u32>,
}

/// Checks that the other end of the pipe runs as our user and returns its process id.
///
/// The descriptor already keeps other users out of the front's pipe; the check matters on
/// the client side, where another user may have created a pipe of the same name first.
pub(crate) fn check_peer(stream: &Stream) -> io::Result<Peer> {
    let mut pid = 0u32;
    let (handle, what): (HANDLE, &str) = match stream {
        Stream::Server(pipe) => (pipe.as_raw_handle(), "client"),
        Stream::Client(pipe) => (pipe.as_raw_handle(), "server"),
    };
    // SAFETY: `handle` is the open pipe handle borrowed from `stream`, and `pid` is a valid
    // out pointer for the duration of the call.
    let ok = unsafe {
        match stream {
            Stream::Server(_) => GetNamedPipeClientProcessId(handle, &mut pid),
            Stream::Client(_) => GetNamedPipeServerProcessId(handle, &mut pid),
        }
    };
    if ok == 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("risefront: read the control pipe's {what} process id: {e}"),
        ));
    }
    let ours = current_user_sid()?;
    let theirs = process_user_sid(pid).map_err(|e| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("risefront: cannot verify the user of control pipe {what} pid {pid}: {e}"),
        )
    })?;
    if theirs != ours {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("risefront: control pipe {what} pid {pid} runs as {theirs}, not {ours}"),
        ));
    }
    Ok(Peer { pid: Some(pid) })
}

fn is_os_error(e: &io::Error, code: u32) -> bool {
    e.raw_os_error()
        .is_some_and(|raw| u32::try_from(raw).is_ok_and(|raw| raw == code))
}

fn current_user_sid() -> io::Result<String> {
    // SAFETY: GetCurrentProcess has no preconditions; it returns a pseudo handle that needs
    // no closing.
    let process = unsafe { GetCurrentProcess() };
    token_user_sid(process)
}

fn process_user_sid(pid: u32) -> io::Result<String> {
    // SAFETY: OpenProcess has no memory-safety preconditions; a null result is handled.
    let raw = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if raw.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a process handle we just opened and own; OwnedHandle closes it once.
    let process = unsafe { OwnedHandle::from_raw_handle(raw) };
    token_user_sid(process.as_raw_handle())
}

/// The SID (as `S-1-5-…`) of the user `process` runs as.
fn token_user_sid(process: HANDLE) -> io::Result<String> {
    let mut raw_token: HANDLE = ptr::null_mut();
    // SAFETY: `process` is a valid process handle (or the current-process pseudo handle) and
    // `raw_token` a valid out pointer.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut raw_token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call succeeded, so `raw_token` is a token handle we own.
    let token = unsafe { OwnedHandle::from_raw_handle(raw_token) };
    let mut len = 0u32;
    // SAFETY: a null buffer of length 0 asks only for the needed size, written to `len`.
    unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            ptr::null_mut(),
            0,
            &mut len,
        )
    };
    if (len as usize) < size_of::<TOKEN_USER>() {
        return Err(io::Error::last_os_error());
    }
    // u64 elements keep the buffer aligned for TOKEN_USER and the SID behind it.
    let mut buf = vec![0u64; (len as usize).div_ceil(size_of::<u64>())];
    // SAFETY: `buf` is writable for at least `len` bytes and suitably aligned.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle(),
            TokenUser,
            buf.as_mut_ptr().cast::<c_void>(),
            len,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success the buffer starts with a TOKEN_USER whose SID points into `buf`,
    // which outlives this read and the conversion below.
    let sid = unsafe { (*buf.as_ptr().cast::<TOKEN_USER>()).User.Sid };
    sid_to_string(sid)
}

fn sid_to_string(sid: PSID) -> io::Result<String> {
    let mut text: *mut u16 = ptr::null_mut();
    // SAFETY: `sid` is a valid SID (from a token) and `text` a valid out pointer.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 || text.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success `text` is a NUL-terminated UTF-16 string allocated with LocalAlloc;
    // we read up to the NUL, copy it, and free it exactly once.
    let out = unsafe {
        let len = (0..).take_while(|&i| *text.add(i) != 0).count();
        let out = String::from_utf16_lossy(std::slice::from_raw_parts(text, len));
        LocalFree(text.cast::<c_void>());
        out
    };
    Ok(out)
}

/// Winsock must be started before `WSASocketW`; std starts it only when it creates a socket
/// itself, which a generation never does before receiving its listeners. Never cleaned up:
/// the sockets live as long as the process.
fn winsock_started() -> io::Result<()> {
    static STARTED: OnceLock<i32> = OnceLock::new();
    let code = *STARTED.get_or_init(|| {
        let mut data = MaybeUninit::<WSADATA>::zeroed();
        // SAFETY: `data` is a writable WSADATA; the result is an error code, not errno.
        unsafe { WSAStartup(0x0202, data.as_mut_ptr()) }
    });
    if code == 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::Error::from_raw_os_error(code).kind(),
            format!(
                "risefront: start Winsock: {}",
                io::Error::from_raw_os_error(code)
            ),
        ))
    }
}

/// Duplicates `listener` for process `pid` and returns the protocol info that lets that
/// process open its copy.
pub(crate) fn duplicate_socket(listener: &TcpListener, pid: u32) -> io::Result<Vec<u8>> {
    let mut info = WSAPROTOCOL_INFOW::default();
    // SAFETY: the socket belongs to `listener`, borrowed for the call, and `info` is a
    // writable WSAPROTOCOL_INFOW.
    let failed =
        unsafe { WSADuplicateSocketW(listener.as_raw_socket() as SOCKET, pid, &mut info) } != 0;
    if failed {
        // SAFETY: WSAGetLastError has no preconditions.
        let e = io::Error::from_raw_os_error(unsafe { WSAGetLastError() });
        return Err(io::Error::new(
            e.kind(),
            format!("risefront: duplicate a listening socket for pid {pid}: {e}"),
        ));
    }
    // SAFETY: WSAPROTOCOL_INFOW is plain integers and arrays of them with no padding (its
    // size is a multiple of its 4-byte alignment and every field is 2 or 4 bytes), fully
    // initialised by `default()`; reading it as bytes for its exact size is sound.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&raw const info).cast::<u8>(),
            size_of::<WSAPROTOCOL_INFOW>(),
        )
    };
    Ok(bytes.to_vec())
}

/// Opens this process's copy of a listening socket from the protocol info the front sent.
pub(crate) fn listener_from_protocol_info(blob: &[u8]) -> io::Result<TcpListener> {
    if blob.len() != size_of::<WSAPROTOCOL_INFOW>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "risefront: the front sent {} bytes of socket protocol info; WSAPROTOCOL_INFOW has {}",
                blob.len(),
                size_of::<WSAPROTOCOL_INFOW>()
            ),
        ));
    }
    winsock_started()?;
    let mut info = WSAPROTOCOL_INFOW::default();
    // SAFETY: `blob` has exactly the struct's size (checked above), the destination is a
    // distinct local, and every bit pattern is a valid WSAPROTOCOL_INFOW (integers only).
    unsafe {
        ptr::copy_nonoverlapping(
            blob.as_ptr(),
            (&raw mut info).cast::<u8>(),
            size_of::<WSAPROTOCOL_INFOW>(),
        );
    }
    // SAFETY: `info` is a valid WSAPROTOCOL_INFOW for the duration of the call; the other
    // arguments are plain values.
    let socket = unsafe {
        WSASocketW(
            FROM_PROTOCOL_INFO,
            FROM_PROTOCOL_INFO,
            FROM_PROTOCOL_INFO,
            &info,
            0,
            WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT,
        )
    };
    if socket == INVALID_SOCKET {
        // SAFETY: WSAGetLastError has no preconditions.
        let e = io::Error::from_raw_os_error(unsafe { WSAGetLastError() });
        return Err(io::Error::new(
            e.kind(),
            format!("risefront: open a listening socket passed by the front: {e}"),
        ));
    }
    // SAFETY: `socket` was just created for this process and nothing else owns it.
    Ok(unsafe { TcpListener::from_raw_socket(socket as _) })
}

/// Socket activation is systemd's: nothing is ever passed on Windows.
pub(crate) fn activated_listeners() -> io::Result<Vec<(crate::socket::Socket, String)>> {
    Ok(Vec::new())
}

/// The variable that tells a front-spawned generation the name of its private control pipe.
pub(crate) const CHANNEL_VAR: &str = "RISEFRONT_CHANNEL";

/// A private pipe for one generation the front spawns: a name nobody else knows, one
/// instance, the owner-only descriptor. The child connects to it instead of the public pipe,
/// so no crowd of other clients can keep it out.
pub(crate) struct ChildChannel {
    pipe: String,
}

/// Nothing to hold past the spawn: the child finds its pipe by name.
pub(crate) struct Inherited;

/// Creates the private pipe: the front's end, and the name the child is given.
pub(crate) fn child_channel(endpoint: &Endpoint) -> io::Result<(Stream, ChildChannel)> {
    let pipe = format!("{}-{}", endpoint.prefix, random_suffix());
    let server = endpoint
        .create_pipe(&pipe, true, Some(1))
        .map_err(|e| context(e, "create private control pipe", &pipe))?;
    Ok((Stream::Server(server), ChildChannel { pipe }))
}

/// 128 bits from std's randomly keyed hasher (seeded from the system's random source once per
/// process), mixed with the time and a counter: not guessable by another process.
fn random_suffix() -> String {
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

impl ChildChannel {
    /// Tells the child, through its environment, which pipe is its own.
    pub(crate) fn attach(self, command: &mut tokio::process::Command) -> io::Result<Inherited> {
        command.env(CHANNEL_VAR, &self.pipe);
        Ok(Inherited)
    }
}

/// Waits until the child the private pipe was made for has connected.
pub(crate) async fn wait_connected(stream: &Stream) -> io::Result<()> {
    match stream {
        Stream::Server(server) => server.connect().await,
        Stream::Client(_) => Ok(()),
    }
}

/// The pid of the process on the other end of a private pipe, as the pipe reports it; the
/// front compares it with the pid it spawned.
pub(crate) fn child_pid(stream: &Stream) -> io::Result<Option<u32>> {
    check_peer(stream).map(|peer| peer.pid)
}

/// In a generation: the private pipe of the front that spawned this process.
///
/// `Ok(None)` when there is none: no variable, or a pipe that is gone or already taken (the
/// variable is inherited by our own children too, and only the first process connects).
pub(crate) fn inherited_channel() -> io::Result<Option<Stream>> {
    let Ok(pipe) = std::env::var(CHANNEL_VAR) else {
        return Ok(None);
    };
    if !pipe.starts_with(r"\\.\pipe\risefront-") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("risefront: {CHANNEL_VAR}={pipe:?} is not a risefront control pipe"),
        ));
    }
    match ClientOptions::new().open(&pipe) {
        Ok(client) => {
            let stream = Stream::Client(client);
            check_peer(&stream).map_err(|e| context(e, "verify the front at", &pipe))?;
            Ok(Some(stream))
        }
        Err(e) if is_os_error(&e, ERROR_FILE_NOT_FOUND) || is_os_error(&e, ERROR_PIPE_BUSY) => {
            Ok(None)
        }
        Err(e) => Err(context(e, "connect to private control pipe", &pipe)),
    }
}

/// A generation process the front did not spawn (one started by hand), held open from the
/// moment its identity was verified: while the handle is open, Windows does not reuse its id,
/// so a kill can only ever reach that process.
pub(crate) struct ProcessHandle {
    process: OwnedHandle,
}

impl ProcessHandle {
    /// Opens process `pid`, which the caller just verified, with the right to terminate it.
    pub(crate) fn open(pid: u32) -> io::Result<Self> {
        // SAFETY: OpenProcess has no memory-safety preconditions; a null result is handled.
        let raw = unsafe { OpenProcess(PROCESS_TERMINATE, 0, pid) };
        if raw.is_null() {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("risefront: open process {pid}: {e}"),
            ));
        }
        // SAFETY: `raw` is a process handle we just opened and own; OwnedHandle closes it once.
        let process = unsafe { OwnedHandle::from_raw_handle(raw) };
        Ok(ProcessHandle { process })
    }

    /// The program the process runs; not read on Windows (the log names the pid only).
    pub(crate) fn executable(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// Terminates the process (exit code 1).
    pub(crate) fn kill(&self) -> io::Result<()> {
        // SAFETY: `process` is a valid handle opened with PROCESS_TERMINATE access.
        if unsafe { TerminateProcess(self.process.as_raw_handle(), 1) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
