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
    /// Only the status line changes: `STATUS=`.
    Status { status: String },
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

/// Hands the listening sockets to systemd's fd store (`FDSTORE=1`), when the unit has one
/// (`FileDescriptorStoreMax=`, which systemd 254 and later announce as `$FDSTORE`; on older
/// ones, which have the store but do not announce it, `RISEFRONT_FDSTORE=1` says it is
/// there). A front restarted after a crash gets them back through socket activation, so the
/// listen queue never closes: connections made while no front runs wait in the kernel's
/// backlog instead of being refused.
pub(crate) fn store_listeners(listeners: &[crate::socket::Socket]) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsFd;
        if std::env::var_os(NOTIFY_SOCKET).is_none() || !has_fd_store() {
            return;
        }
        for listener in listeners {
            let Some(addr) = listener.local_addr() else {
                continue;
            };
            let name = store_name(&addr);
            let states = [
                sd_notify::NotifyState::FdStore,
                sd_notify::NotifyState::FdName(&name),
            ];
            match sd_notify::notify_with_fds(&states, &[listener.as_fd()]) {
                Ok(()) => tracing::info!("stored the socket for {addr} with systemd ({name})"),
                Err(e) => tracing::warn!("cannot store the socket for {addr} with systemd: {e}"),
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = listeners;
}

/// Takes a socket the front closes out of systemd's fd store, so that the store does not keep
/// an address listening that the service no longer serves.
pub(crate) fn unstore_listener(listener: &crate::socket::Socket) {
    #[cfg(target_os = "linux")]
    {
        if std::env::var_os(NOTIFY_SOCKET).is_none() || !has_fd_store() {
            return;
        }
        let Some(addr) = listener.local_addr() else {
            return;
        };
        let name = store_name(&addr);
        let states = [
            sd_notify::NotifyState::FdStoreRemove,
            sd_notify::NotifyState::FdName(&name),
        ];
        if let Err(e) = sd_notify::notify(&states) {
            tracing::warn!("cannot take the socket for {addr} out of systemd's store: {e}");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = listener;
}

/// A stored socket's name. Names may not contain ':' (the separator of LISTEN_FDNAMES).
#[cfg(target_os = "linux")]
fn store_name(addr: &crate::addr::ListenAddr) -> String {
    format!("risefront-{addr}").replace(':', "_")
}

/// Whether the unit has an fd store: systemd says so (`$FDSTORE`, 254+), or the unit does
/// (`RISEFRONT_FDSTORE=1`, for 252 and 253, whose store works but is not announced).
#[cfg(target_os = "linux")]
fn has_fd_store() -> bool {
    let announced = std::env::var("FDSTORE")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n > 0);
    announced || fd_store_opt_in(std::env::var("RISEFRONT_FDSTORE").ok().as_deref())
}

/// `RISEFRONT_FDSTORE`'s value read as a yes; anything else (unset included) is a no.
#[cfg(target_os = "linux")]
fn fd_store_opt_in(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        ["1", "on", "yes", "true"]
            .iter()
            .any(|yes| v.trim().eq_ignore_ascii_case(yes))
    })
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
        Supervisor::Status { status } => sd_notify::notify(&[NotifyState::Status(&line(status))]),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_fd_store_opt_in_reads_yes_only() {
        for yes in ["1", "on", "ON", "yes", "true", " 1 "] {
            assert!(fd_store_opt_in(Some(yes)), "{yes:?}");
        }
        for no in [
            None,
            Some(""),
            Some("0"),
            Some("off"),
            Some("no"),
            Some("2"),
        ] {
            assert!(!fd_store_opt_in(no), "{no:?}");
        }
    }
}
