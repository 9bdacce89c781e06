//! Connection handoff: at a takeover, a superseded generation moves its idle HTTP/1
//! connections to the generation that took over instead of closing them, so that their
//! clients neither reconnect nor race a close.
//!
//! The connections go directly from one generation to the other, over a socket pair (a
//! private pipe on Windows) the front made to introduce them (`HandoffTo` to the old one,
//! `HandoffFrom` to the new one), not through the front: the front never holds a client
//! connection, so its descriptors and memory do not grow with the clients, its event loop
//! stays free for the takeover itself, and a front that dies meanwhile loses nothing in
//! transit. It verified both generations when they joined.
//!
//! On the pair, the old generation sends `Connections` frames (up to
//! [`MAX_BATCH`](crate::protocol::MAX_BATCH) connections each, with the bytes it read and no
//! request consumed) and the new one answers each with `Received`: which it took, which it
//! refused. The new generation reads nothing from a connection before it answers, so a refused
//! one is served on by the old generation (and closed the old way). A taken one the old
//! generation never reads, writes or shuts down again: it closes only its own descriptor, as
//! `shutdown(2)` would cut the connection for the new owner too. A frame whose answer never
//! comes (the new generation died or hung) is lost with it: those connections were idle, no
//! request on them was being answered, and no byte of them is read twice.
//!
//! Unix passes each connection's descriptor with the frame (`SCM_RIGHTS`); Windows puts in it
//! `WSADuplicateSocketW` protocol info made for the new generation's pid, and the pair is a
//! pipe the front names, the new generation creates and the old one connects to.

mod receive;
mod send;

pub(crate) use receive::receive_from;
pub(crate) use send::{Outbox, Outcome, hand_to, introduced, successor};

use std::future::Future;
use std::io;

use crate::channel::Channel;
use crate::handoff::Stream;

/// The pair end a generation was introduced with, once it is usable: the socket that rode on
/// the message (Unix), taken from `channel` now.
#[cfg(unix)]
pub(crate) fn pair_end(
    channel: &mut Channel,
    _pipe: String,
    _pid: u32,
    _receiving: bool,
) -> io::Result<impl Future<Output = io::Result<Stream>> + Send + 'static> {
    let fd = channel.take_fds(1)?.pop().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "risefront: a handoff introduction came without its socket",
        )
    })?;
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(stream)?;
    Ok(async move { Ok(stream) })
}

/// The pair end a generation was introduced with, once it is usable: the private pipe named by
/// the message (Windows), created by the receiving generation, connected to by the sending
/// one, each checking that `pid` is on the other end.
#[cfg(windows)]
pub(crate) fn pair_end(
    _channel: &mut Channel,
    pipe: String,
    pid: u32,
    receiving: bool,
) -> io::Result<impl Future<Output = io::Result<Stream>> + Send + 'static> {
    Ok(async move {
        if receiving {
            crate::handoff::accept_pair(pipe, pid).await
        } else {
            crate::handoff::connect_pair(pipe, pid).await
        }
    })
}
