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
