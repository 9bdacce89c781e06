//! The termination signals a process of the service reacts to.

use std::io;

/// SIGTERM and SIGINT, as one stream.
#[cfg(unix)]
pub(crate) struct Terminate {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Terminate {
    pub(crate) fn new() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Terminate {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next signal and names it, for the logs.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// SIGHUP: the front starts a new generation, as `systemctl reload` expects.
#[cfg(unix)]
pub(crate) struct Hangup(tokio::signal::unix::Signal);

#[cfg(unix)]
impl Hangup {
    pub(crate) fn new() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Hangup(signal(SignalKind::hangup())?))
    }

    pub(crate) async fn recv(&mut self) {
        self.0.recv().await;
    }
}

/// Ctrl-C, Ctrl-Break and closing the console window, as one stream: what a Windows console
/// program gets instead of SIGTERM/SIGINT.
#[cfg(windows)]
pub(crate) struct Terminate {
    c: tokio::signal::windows::CtrlC,
    brk: tokio::signal::windows::CtrlBreak,
    close: tokio::signal::windows::CtrlClose,
}

#[cfg(windows)]
impl Terminate {
    pub(crate) fn new() -> io::Result<Self> {
        use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close};
        Ok(Terminate {
            c: ctrl_c()?,
            brk: ctrl_break()?,
            close: ctrl_close()?,
        })
    }

    /// Waits for the next event and names it, for the logs.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.c.recv() => "Ctrl-C",
            _ = self.brk.recv() => "Ctrl-Break",
            _ = self.close.recv() => "console close",
        }
    }
}

/// Windows has no SIGHUP, so this never fires: upgrades there are started by running the
/// binary again or with [`crate::upgrade`] (`--upgrade` in the examples).
#[cfg(windows)]
pub(crate) struct Hangup;

#[cfg(windows)]
impl Hangup {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Hangup)
    }

    pub(crate) async fn recv(&mut self) {
        std::future::pending::<()>().await;
    }
}
