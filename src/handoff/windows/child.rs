//! The private pipe of a generation the front spawns: created before the spawn, named in the
//! child's environment, and connected to by the child instead of the public endpoint.

use std::io;

use tokio::net::windows::named_pipe::ClientOptions;
use windows_sys::Win32::Foundation::{ERROR_FILE_NOT_FOUND, ERROR_PIPE_BUSY};

use super::pipe::random_suffix;
use super::{Endpoint, Stream, check_peer, context, is_os_error};

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
