//! Telling systemd what the service is doing (`sd_notify`), when `NOTIFY_SOCKET` is set.
//!
//! Only the front talks to systemd: it sends readiness once generation 1 serves, the
//! `RELOADING=1` / `READY=1` pair around every upgrade (as `Type=notify-reload` expects), a
//! one-line `STATUS=`, and `STOPPING=1`. Generations are started without `NOTIFY_SOCKET`, so
//! `NotifyAccess=main` holds. The wire format is the `sd-notify` crate's; elsewhere than Linux
//! this is a no-op.

/// A state change for the service manager, as the upgrade state machine decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Supervisor {
    /// The service serves (first start, or the end of an upgrade, failed or not).
    Ready { status: String },
    /// An upgrade started: `RELOADING=1` and `MONOTONIC_USEC=` in one datagram.
    Reloading { status: String },
    /// The service is stopping.
    Stopping { status: String },
}

/// The variable that names systemd's notification socket.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `event` if systemd is listening. A failure is logged once, and serving goes on.
pub(crate) fn notify(event: &Supervisor) {
    #[cfg(target_os = "linux")]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        static WARNED: AtomicBool = AtomicBool::new(false);
        if std::env::var_os(NOTIFY_SOCKET).is_none() {
            return;
        }
        if let Err(e) = send(event)
            && !WARNED.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "cannot notify systemd at {:?}: {e}; serving goes on",
                std::env::var_os(NOTIFY_SOCKET).unwrap_or_default()
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = event;
}

#[cfg(target_os = "linux")]
fn send(event: &Supervisor) -> std::io::Result<()> {
    use sd_notify::NotifyState;
    // One line per field: a reason with a line break must not start a field of its own.
    let line = |status: &str| status.replace(['\n', '\r'], " ");
    match event {
        Supervisor::Ready { status } => {
            sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&line(status))])
        }
        Supervisor::Reloading { status } => sd_notify::notify(&[
            NotifyState::Reloading,
            NotifyState::monotonic_usec_now()?,
            NotifyState::Status(&line(status)),
        ]),
        Supervisor::Stopping { status } => {
            sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status(&line(status))])
        }
    }
}
