//! [`BindError`]: why `bind` refused, as a value a caller can match. A leaf: it imports nothing
//! from the crate, so every module that detects one of these causes can build it.

use std::path::PathBuf;
use std::{error, fmt, io};

/// Why [`bind`](crate::bind) (or [`Builder::bind`](crate::Builder::bind)) refused, for the
/// causes a caller may want to tell apart.
///
/// `bind` returns `io::Result`, so that it composes with `axum::serve` and `?` in `main`; for
/// these causes the `io::Error` carries a `BindError` inside, and its text is the
/// `BindError`'s. Each keeps the `io::ErrorKind` named on its variant. Errors with no variant
/// here (a handshake timeout, a failed system call) are plain `io::Error`s.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use risefront::BindError;
///
/// let listener = match risefront::bind(["127.0.0.1:8080"]).await {
///     Ok(listener) => listener,
///     Err(err) => {
///         match err.get_ref().and_then(|e| e.downcast_ref::<BindError>()) {
///             Some(BindError::AddressInUse { address, .. }) => {
///                 eprintln!("{address} is taken: stop the other program first");
///             }
///             Some(BindError::InUseByService { service, .. }) => {
///                 eprintln!("upgrade service {service} instead");
///             }
///             _ => eprintln!("{err}"),
///         }
///         return Err(err);
///     }
/// };
/// # Ok(())
/// # }
/// ```
#[non_exhaustive]
pub enum BindError {
    /// An address is held by a program that is not a risefront service of this user (kind
    /// `AddrInUse`).
    AddressInUse {
        /// The address, as `127.0.0.1:8080` or `unix:/run/app/http.sock`.
        address: String,
        /// What the system said.
        source: io::Error,
    },
    /// An address is held by a process risefront could identify as a service to reach another
    /// way: one run by systemd (reload its unit), one whose control directory is not the one
    /// this program looked in, or one of another user (kind `AddrInUse`; Linux, from `/proc`).
    /// The message says what to do instead.
    InUseElsewhere {
        /// The address.
        address: String,
        /// Who holds it.
        holder: Box<crate::holder::Holder>,
        /// What the system said.
        source: io::Error,
    },
    /// An address is held by another risefront service of this user: another program, or
    /// the same program under another [`Builder::name`](crate::Builder::name) (kind
    /// `AddrInUse`).
    InUseByService {
        /// The address.
        address: String,
        /// The service that holds it.
        service: String,
        /// This program's service, which would have bound it.
        ours: String,
        /// The holder is this same program with another address list (`0.0.0.0:8080`
        /// against a service on `127.0.0.1:8080`, say), so another service name: a build
        /// whose address list changed joins its service by name (`RISEFRONT_NAME`,
        /// `Builder::name`).
        same_program: bool,
    },
    /// The control directory is not private to this user: another user owns it, others can
    /// enter it, or it is not a directory (kind `PermissionDenied`). It is never used nor
    /// repaired: whoever controls it could hand this service their own sockets.
    ControlDirRefused {
        /// The directory.
        path: PathBuf,
        /// How it was chosen (`set by RISEFRONT_DIR or Builder::control_dir`, `under
        /// XDG_RUNTIME_DIR`, ...).
        chosen: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An address that cannot be parsed or resolved, or an empty list of addresses (kind
    /// `InvalidInput`).
    InvalidAddress {
        /// The address as given.
        address: String,
        /// Why, with the expected form.
        reason: String,
    },
    /// No address at all: `bind` was given an empty list (kind `InvalidInput`).
    NoAddress,
    /// An address of a kind this platform cannot listen on: `unix:` on Windows (kind
    /// `Unsupported`).
    UnsupportedAddress {
        /// The address as given.
        address: String,
        /// Why, and what to use instead.
        reason: String,
    },
    /// The running front of the service speaks another version of the control protocol than
    /// this build, so it cannot hand its sockets over (kind `InvalidData`).
    ProtocolMismatch {
        /// The service.
        service: String,
        /// The front's protocol version.
        front: u8,
        /// This build's protocol version.
        ours: u8,
    },
    /// The running front turned this process away and said why (kind `ConnectionRefused`).
    FrontRefused {
        /// The service.
        service: String,
        /// The front's words.
        reason: String,
    },
    /// `bind` was already called in this process: a process is one generation of one
    /// service, so every address goes to one `bind` call (kind `AlreadyExists`).
    AlreadyBound,
    /// A service name with characters that cannot be part of a file name, or too long (kind
    /// `InvalidInput`).
    InvalidServiceName {
        /// The name as given.
        name: String,
    },
    /// A setting with a value that cannot work: unparsable, or a timeout of zero that would
    /// fail every start (kind `InvalidInput`).
    InvalidSetting {
        /// The environment variable (`RISEFRONT_READY_TIMEOUT`) or the method
        /// (`Builder::ready_timeout`) it came from.
        setting: String,
        /// The value as given.
        value: String,
        /// Why it is refused, and what would work.
        reason: String,
    },
}

/// The longest service name, which becomes a file name.
pub(crate) const MAX_NAME: usize = 64;

impl BindError {
    /// The `io::ErrorKind` the `io::Error` carrying this error has.
    fn kind(&self) -> io::ErrorKind {
        match self {
            BindError::AddressInUse { .. }
            | BindError::InUseElsewhere { .. }
            | BindError::InUseByService { .. } => io::ErrorKind::AddrInUse,
            BindError::ControlDirRefused { .. } => io::ErrorKind::PermissionDenied,
            BindError::InvalidAddress { .. }
            | BindError::NoAddress
            | BindError::InvalidServiceName { .. }
            | BindError::InvalidSetting { .. } => io::ErrorKind::InvalidInput,
            BindError::UnsupportedAddress { .. } => io::ErrorKind::Unsupported,
            BindError::ProtocolMismatch { .. } => io::ErrorKind::InvalidData,
            BindError::FrontRefused { .. } => io::ErrorKind::ConnectionRefused,
            BindError::AlreadyBound => io::ErrorKind::AlreadyExists,
        }
    }
}

/// The message, as a string, like the `io::Error` of a string message: `main` returning
/// `io::Result` prints its error with `Debug`, and that must read as the message did before
/// it became a value. The message names every field.
impl fmt::Debug for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // A Unix socket path can be held by any process, this program's included.
            BindError::AddressInUse { address, source } if address.starts_with("unix:") => {
                write!(f, "risefront: {address} is in use: {source}")
            }
            BindError::AddressInUse { address, source } => {
                write!(f, "risefront: {address} is in use by another program: {source}")
            }
            BindError::InUseElsewhere {
                address,
                holder,
                source,
            } => write!(
                f,
                "risefront: {address} is in use by {holder}: {} ({source})",
                holder.advice()
            ),
            BindError::InUseByService {
                address,
                service,
                ours,
                same_program: true,
            } => write!(
                f,
                "risefront: {address} is in use by risefront service {service:?} of this user: the same program with another address list (this one would be service {ours:?}). To make this build that service's next generation, with this address list, start it with RISEFRONT_NAME={service} (or Builder::name): the front then binds the new addresses and closes those no generation uses"
            ),
            BindError::InUseByService {
                address,
                service,
                ours,
                same_program: false,
            } => write!(
                f,
                "risefront: {address} is in use by risefront service {service:?} of this user, not by this program's service {ours:?}: to upgrade that service, start a program of the same file name, or give both programs the same Builder::name"
            ),
            BindError::ControlDirRefused {
                path,
                chosen,
                reason,
            } => write!(
                f,
                "risefront: refusing to use control directory {} ({chosen}): {reason}. Use a private directory instead: RISEFRONT_DIR=/path (yours, mode 0700), or RuntimeDirectory=<name> in the systemd unit, or XDG_RUNTIME_DIR",
                path.display()
            ),
            BindError::InvalidAddress { address, reason } => {
                write!(f, "risefront: cannot use address {address:?}: {reason}")
            }
            BindError::NoAddress => f.write_str("risefront: bind needs at least one address"),
            BindError::UnsupportedAddress { address, reason } => {
                write!(f, "risefront: cannot listen on {address}: {reason}")
            }
            BindError::ProtocolMismatch {
                service,
                front,
                ours,
            } => write!(
                f,
                "risefront: the front refused this build: it speaks risefront protocol version {front}, this build speaks {ours} (service {service:?})"
            ),
            BindError::FrontRefused { service, reason } => write!(
                f,
                "risefront: the front refused this generation: {reason} (service {service:?})"
            ),
            BindError::AlreadyBound => f.write_str(
                "risefront: bind was already called in this process; pass every address to one bind call (in a test suite, where each test binds: set RISEFRONT=off or use Builder::standalone())",
            ),
            BindError::InvalidServiceName { name } => write!(
                f,
                "risefront: invalid service name {name:?}: use 1 to {MAX_NAME} letters, digits, '.', '_' or '-', not starting with '.'"
            ),
            BindError::InvalidSetting {
                setting,
                value,
                reason,
            } => write!(f, "risefront: {setting}={value:?} {reason}"),
        }
    }
}

impl error::Error for BindError {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self {
            BindError::AddressInUse { source, .. } | BindError::InUseElsewhere { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

impl From<BindError> for io::Error {
    fn from(e: BindError) -> Self {
        io::Error::new(e.kind(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_io_error_keeps_the_kind_the_text_and_the_value() {
        let e = io::Error::from(BindError::AlreadyBound);
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(e.to_string().contains("bind was already called"), "{e}");
        // What `main` returning this error prints.
        assert!(
            format!("{e:?}").contains("bind was already called"),
            "{e:?}"
        );
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<BindError>());
        assert!(matches!(inner, Some(BindError::AlreadyBound)), "{inner:?}");

        let e = io::Error::from(BindError::AddressInUse {
            address: "127.0.0.1:80".into(),
            source: io::ErrorKind::AddrInUse.into(),
        });
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(
            e.to_string()
                .starts_with("risefront: 127.0.0.1:80 is in use by another program: "),
            "{e}"
        );
    }
}
