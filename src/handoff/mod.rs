//! Platform transport for the control channel and the listening-socket handoff.
//!
//! Each platform module offers the same small surface: the private control endpoint, the peer
//! check, passing sockets, and killing a process by its verified id.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;
