//! The client side of `risefront::upgrade`: asks a running front to start a new generation and
//! waits until it serves (or fails), so a deploy script can rely on the exit status.

use std::time::Duration;
use std::{error, fmt, io};

use tokio::time::timeout;

use crate::channel::Channel;
use crate::config::Config;
use crate::handoff::Endpoint;
use crate::protocol::{Message, Role};

/// Why [`upgrade`](crate::upgrade) did not produce a new serving generation.
///
/// A deploy script can tell "retry later" ([`Busy`](Self::Busy)) from "roll back"
/// ([`Failed`](Self::Failed)) from "nothing to upgrade" ([`NoFront`](Self::NoFront)). It
/// converts into an `io::Error` (kinds `NotFound`, `ResourceBusy`, `Other`), so `?` works in
/// functions returning `io::Result`.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> std::process::ExitCode {
/// match risefront::upgrade(["127.0.0.1:8080"]).await {
///     Ok(generation) => println!("generation {generation} is serving"),
///     Err(risefront::UpgradeError::Busy { reason }) => eprintln!("retry later: {reason}"),
///     Err(e) => {
///         eprintln!("{e}");
///         return std::process::ExitCode::FAILURE;
///     }
/// }
/// # std::process::ExitCode::SUCCESS
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum UpgradeError {
    /// No front runs for the service: nothing answers at its control endpoint.
    NoFront {
        /// The service's name.
        service: String,
        /// Where its front would be.
        endpoint: String,
    },
    /// The front cannot start an upgrade now (one is already starting, or the service is
    /// stopping); asking again later may work.
    Busy {
        /// The front's words.
        reason: String,
    },
    /// The new generation failed before it served (or the front gave up waiting); the old
    /// generation keeps serving.
    Failed {
        /// The front's words: which generation, and why.
        reason: String,
    },
    /// Talking to the front failed.
    Io(io::Error),
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeError::NoFront { service, endpoint } => write!(
                f,
                "risefront: no front is running for service {service:?} (nothing answers at {endpoint})"
            ),
            UpgradeError::Busy { reason } => {
                write!(f, "risefront: no upgrade now, try again later: {reason}")
            }
            UpgradeError::Failed { reason } => write!(f, "risefront: upgrade failed: {reason}"),
            UpgradeError::Io(e) => e.fmt(f),
        }
    }
}

impl error::Error for UpgradeError {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self {
            UpgradeError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for UpgradeError {
    fn from(e: io::Error) -> Self {
        UpgradeError::Io(e)
    }
}

impl From<UpgradeError> for io::Error {
    fn from(e: UpgradeError) -> Self {
        let kind = match &e {
            UpgradeError::NoFront { .. } => io::ErrorKind::NotFound,
            UpgradeError::Busy { .. } => io::ErrorKind::ResourceBusy,
            UpgradeError::Failed { .. } => io::ErrorKind::Other,
            UpgradeError::Io(inner) => inner.kind(),
        };
        match e {
            UpgradeError::Io(inner) => inner,
            other => io::Error::new(kind, other),
        }
    }
}

pub(crate) async fn request(endpoint: &Endpoint, config: &Config) -> Result<u64, UpgradeError> {
    let Some(stream) = endpoint.connect().await? else {
        return Err(UpgradeError::NoFront {
            service: config.name.clone(),
            endpoint: endpoint.to_string(),
        });
    };
    let mut channel = Channel::new(stream, false);
    channel
        .send(&Message::Hello {
            pid: std::process::id(),
            role: Role::Control,
            ready_timeout: config.ready_timeout,
            drain_timeout: config.drain_timeout,
            probation: config.probation,
        })
        .await?;
    channel.send(&Message::Upgrade).await?;
    // The front answers once the new generation is ready or has failed, which its own ready
    // deadline bounds; the margin covers a build whose ready timeout differs from ours.
    let wait = config
        .ready_timeout
        .saturating_add(config.handshake_timeout)
        .saturating_add(Duration::from_secs(5));
    let answer = timeout(wait, channel.recv()).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("risefront: the front did not report the upgrade's outcome within {wait:?}"),
        )
    })??;
    match answer {
        Some(Message::Upgraded { generation }) => Ok(generation),
        Some(Message::Busy { reason }) => Err(UpgradeError::Busy { reason }),
        Some(Message::Error { reason }) => Err(UpgradeError::Failed { reason }),
        Some(other) => Err(UpgradeError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("risefront: unexpected answer from the front: {other:?}"),
        ))),
        None => Err(UpgradeError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "risefront: the front closed the connection before reporting the upgrade's outcome",
        ))),
    }
}
