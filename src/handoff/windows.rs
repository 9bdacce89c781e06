//! Windows transport for the control channel: a named pipe per service, readable and writable
//! by the current user only, with the peer's process id and user checked on every connection,
//! and listening sockets passed as `WSADuplicateSocketW` protocol info. By concern: the pipe
//! endpoint ([`pipe`]), the security descriptor and the user checks ([`security`]), socket
//! duplication ([`socket`]), a spawned child's private pipe ([`child`]), the pipe between two
//! generations for the connection handoff ([`pair`]), the handle on a process started by
//! hand ([`process`]) and a starting generation's stderr ([`stderr`]).
//!
//! These files hold most of the crate's `unsafe` code (the rest adopts inherited descriptors in
//! `handoff/unix.rs`): Win32 has no safe wrapper for the security descriptor, the pipe's
//! process ids, the process tokens or socket duplication.

mod child;
mod pair;
mod pipe;
mod process;
mod security;
mod socket;
mod stderr;

use std::io;

pub(crate) use self::child::{child_channel, child_pid, inherited_channel, wait_connected};
pub(crate) use self::pair::{accept_pair, connect_pair};
pub(crate) use self::pipe::{ControlListener, Endpoint, FrontLock, Stream};
pub(crate) use self::process::ProcessHandle;
pub(crate) use self::security::check_peer;
pub(crate) use self::socket::{
    activated_listeners, duplicate_socket, listener_from_protocol_info, stream_from_protocol_info,
};
pub(crate) use self::stderr::{Lent, borrow_stderr, lend_stderr, return_stderr};

/// Most sockets one frame may carry; a front has one per listening address.
pub(crate) const MAX_FDS: usize = 64;

/// Adds the operation and pipe name to an error, so `bind` failures say what they were doing.
fn context(e: io::Error, op: &str, pipe: &str) -> io::Error {
    io::Error::new(e.kind(), format!("risefront: {op} {pipe}: {e}"))
}

fn is_os_error(e: &io::Error, code: u32) -> bool {
    e.raw_os_error()
        .is_some_and(|raw| u32::try_from(raw).is_ok_and(|raw| raw == code))
}

/// Whether `e` says this process has no handle left to open: Windows has no per-process
/// limit as low as Unix's descriptor limit, so the front never makes room for that reason.
pub(crate) fn out_of_descriptors(_e: &io::Error) -> bool {
    false
}
