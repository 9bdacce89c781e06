//! The private pipe over which a superseded generation hands its connections to the one that
//! took over: Windows' counterpart of the Unix socket pair. The front names it (the service's
//! prefix and 128 random bits) and tells both generations; the new one creates it, with the
//! owner-only descriptor, as its first and only instance; the old one connects to it. Each end
//! checks that the process on the other is the one the front named.

use std::io;
use std::time::Duration;

use tokio::net::windows::named_pipe::ClientOptions;
use tokio::time::{Instant, timeout};
use windows_sys::Win32::Foundation::{ERROR_FILE_NOT_FOUND, ERROR_PIPE_BUSY};

use super::pipe::{Stream, create_owned_pipe, owner_only_sddl};
use super::{check_peer, context, is_os_error};

/// How long either side waits for the other: the two are told within microseconds of each
/// other, but each reads its message when its runtime gets to it.
const MEET_WITHIN: Duration = Duration::from_secs(5);

/// The new generation's end: creates the pipe `name` and waits for generation `pid` to
/// connect.
pub(crate) async fn accept_pair(name: String, pid: u32) -> io::Result<Stream> {
    let server = create_owned_pipe(&owner_only_sddl()?, &name, true, Some(1))
        .map_err(|e| context(e, "create connection handoff pipe", &name))?;
    timeout(MEET_WITHIN, server.connect())
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("risefront: generation pid {pid} did not connect to {name} within {MEET_WITHIN:?}"),
            )
        })?
        .map_err(|e| context(e, "accept on connection handoff pipe", &name))?;
    verified(Stream::Server(server), pid, &name)
}

/// The old generation's end: connects to the pipe `name` that generation `pid` creates,
/// waiting for it to appear.
pub(crate) async fn connect_pair(name: String, pid: u32) -> io::Result<Stream> {
    let deadline = Instant::now() + MEET_WITHIN;
    loop {
        match ClientOptions::new().open(&name) {
            Ok(client) => return verified(Stream::Client(client), pid, &name),
            Err(e)
                if (is_os_error(&e, ERROR_FILE_NOT_FOUND) || is_os_error(&e, ERROR_PIPE_BUSY))
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return Err(context(e, "connect to connection handoff pipe", &name)),
        }
    }
}

/// The pipe, once the process on its other end is `pid` of our own user.
fn verified(stream: Stream, pid: u32, name: &str) -> io::Result<Stream> {
    let peer = check_peer(&stream).map_err(|e| context(e, "verify the other end of", name))?;
    if peer.pid != Some(pid) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "risefront: {name} was opened by pid {:?}, not by generation pid {pid}",
                peer.pid
            ),
        ));
    }
    Ok(stream)
}
