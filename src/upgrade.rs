//! The client side of `risefront::upgrade`: asks a running front to start a new generation and
//! waits until it serves (or fails), so a deploy script can rely on the exit status.

use std::time::Duration;
use std::{error, fmt, io};

use tokio::time::timeout;

use crate::channel::Channel;
use crate::config::Config;
use crate::error::BindError;
use crate::handoff::Endpoint;
use crate::protocol::{Message, Program, Role, STDERR_TAIL, VERSION, other_version};

/// Why [`upgrade`](fn@crate::upgrade) did not produce a new serving generation.
///
/// A deploy script can tell "retry later" ([`Busy`](Self::Busy)) from "roll back"
/// ([`Failed`](Self::Failed)) from "nothing to upgrade" ([`NoFront`](Self::NoFront)). It
/// converts into an `io::Error` (kinds `NotFound`, `ResourceBusy`, `Other`, or the kind of the
/// [`BindError`] or `io::Error` it carries), so `?` works in
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
        /// Who holds the service's first TCP address instead, when that tells how to reach it
        /// (a systemd unit to reload, another control directory, another user; Linux).
        holder: Option<crate::holder::Holder>,
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
        /// The front's words: which generation, and why (its exit status, or the deadline it
        /// missed).
        reason: String,
        /// The last lines (at most 12) the failed generation wrote to stderr before it failed,
        /// oldest first: usually the error that stopped it. Empty when it wrote none (or when
        /// the front could not read it: a front of an earlier release).
        stderr: Vec<String>,
    },
    /// Refused before the front was asked, or by a front of another release, for a cause
    /// [`bind`](crate::bind) would also fail with: a bad address or setting, a control
    /// directory that is not private, a front speaking another protocol version
    /// ([`BindError::ProtocolMismatch`]).
    Bind(BindError),
    /// Talking to the front failed.
    Io(io::Error),
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeError::NoFront {
                service,
                endpoint,
                holder: None,
            } => write!(
                f,
                "risefront: no front is running for service {service:?} (nothing answers at {endpoint})"
            ),
            UpgradeError::NoFront {
                service,
                endpoint,
                holder: Some(holder),
            } => write!(
                f,
                "risefront: no front of service {service:?} answers at {endpoint}, but its address is held by {holder}: {}",
                holder.advice()
            ),
            UpgradeError::Busy { reason } => {
                write!(f, "risefront: no upgrade now, try again later: {reason}")
            }
            UpgradeError::Failed { reason, stderr } => {
                write!(f, "risefront: upgrade failed: {reason}")?;
                if !stderr.is_empty() {
                    write!(f, "\n{STDERR_TAIL}")?;
                }
                for line in stderr {
                    write!(f, "\n  | {line}")?;
                }
                Ok(())
            }
            UpgradeError::Bind(e) => e.fmt(f),
            UpgradeError::Io(e) => e.fmt(f),
        }
    }
}

impl error::Error for UpgradeError {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self {
            UpgradeError::Bind(e) => Some(e),
            UpgradeError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for UpgradeError {
    /// An `io::Error` carrying a [`BindError`] becomes [`UpgradeError::Bind`], so that the
    /// causes `bind` names stay matchable here too.
    fn from(e: io::Error) -> Self {
        if !e.get_ref().is_some_and(|inner| inner.is::<BindError>()) {
            return UpgradeError::Io(e);
        }
        let kind = e.kind();
        match e.into_inner().map(|inner| inner.downcast::<BindError>()) {
            Some(Ok(bind)) => UpgradeError::Bind(*bind),
            Some(Err(other)) => UpgradeError::Io(io::Error::new(kind, other)),
            None => UpgradeError::Io(kind.into()),
        }
    }
}

impl From<UpgradeError> for io::Error {
    fn from(e: UpgradeError) -> Self {
        let kind = match &e {
            UpgradeError::NoFront { .. } => io::ErrorKind::NotFound,
            UpgradeError::Busy { .. } => io::ErrorKind::ResourceBusy,
            UpgradeError::Failed { .. } => io::ErrorKind::Other,
            UpgradeError::Bind(_) | UpgradeError::Io(_) => io::ErrorKind::Other,
        };
        match e {
            UpgradeError::Bind(inner) => inner.into(),
            UpgradeError::Io(inner) => inner,
            other => io::Error::new(kind, other),
        }
    }
}

pub(crate) async fn request(endpoint: &Endpoint, config: &Config) -> Result<u64, UpgradeError> {
    request_for(endpoint, config, &Message::Upgrade).await
}

/// Asks the front to re-execute itself into the build that serves; the generation serving
/// once it did.
pub(crate) async fn reexec(endpoint: &Endpoint, config: &Config) -> Result<u64, UpgradeError> {
    request_for(endpoint, config, &Message::ReExec { program: None }).await
}

/// Asks a front of protocol `version` (the previous one) to re-execute itself into `program`
/// (this build), in its own version; the generation serving once it did.
pub(crate) async fn reexec_into(
    endpoint: &Endpoint,
    config: &Config,
    version: u8,
    program: Program,
) -> Result<u64, UpgradeError> {
    let request = Message::ReExec {
        program: Some(program),
    };
    request_in(endpoint, config, &request, Some(version)).await
}

async fn request_for(
    endpoint: &Endpoint,
    config: &Config,
    request: &Message,
) -> Result<u64, UpgradeError> {
    request_in(endpoint, config, request, None).await
}

/// Asks for `request`, in `version` if given (else ours).
async fn request_in(
    endpoint: &Endpoint,
    config: &Config,
    request: &Message,
    version: Option<u8>,
) -> Result<u64, UpgradeError> {
    let Some(stream) = endpoint.connect().await? else {
        return Err(UpgradeError::NoFront {
            service: config.name.clone(),
            endpoint: endpoint.to_string(),
            holder: None,
        });
    };
    let mut channel = Channel::new(stream, false);
    if let Some(version) = version {
        channel = channel.speaking(version);
    }
    let hello = Message::Hello {
        pid: std::process::id(),
        role: Role::Control,
        ready_timeout: config.ready_timeout,
        drain_timeout: config.drain_timeout,
        probation: config.probation,
        program: None,
        addresses: Vec::new(),
    };
    // The front answers once the new generation is ready or has failed, which its own ready
    // deadline bounds; the margin covers a build whose ready timeout differs from ours.
    let wait = config
        .ready_timeout
        .saturating_add(config.handshake_timeout)
        .saturating_add(Duration::from_secs(5));
    ask(
        &mut channel,
        &hello,
        request,
        wait,
        config.handshake_timeout,
        &config.name,
    )
    .await
}

/// Says `hello`, asks for `request` (an upgrade or a re-exec), and waits up to `wait` for the
/// outcome.
async fn ask(
    channel: &mut Channel,
    hello: &Message,
    request: &Message,
    wait: Duration,
    handshake: Duration,
    service: &str,
) -> Result<u64, UpgradeError> {
    // A front of another release writes its frames in its own version.
    let other_release = |e: io::Error| match other_version(&e) {
        Some(front) => UpgradeError::Bind(BindError::ProtocolMismatch {
            service: service.to_owned(),
            front,
            ours: VERSION,
        }),
        None => UpgradeError::from(e),
    };
    let sent = async {
        channel.send(hello).await?;
        channel.send(request).await
    }
    .await;
    let answer = match sent {
        Ok(()) => timeout(wait, channel.recv())
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "risefront: the front did not report the upgrade's outcome within {wait:?}"
                    ),
                )
            })?
            .map_err(other_release)?,
        // A front that cannot read our Hello (a release speaking another protocol version)
        // says why and hangs up, maybe before our request is written: what it said is the
        // error worth reporting, not the broken pipe.
        Err(e) => match timeout(handshake, channel.recv()).await {
            Ok(Ok(Some(answer))) => Some(answer),
            Ok(Err(unreadable)) if unreadable.kind() == io::ErrorKind::InvalidData => {
                return Err(other_release(unreadable));
            }
            _ => return Err(UpgradeError::Io(e)),
        },
    };
    match answer {
        Some(Message::Upgraded { generation }) => Ok(generation),
        Some(Message::Busy { reason }) => Err(UpgradeError::Busy { reason }),
        Some(Message::Error { reason }) => Err(failed(&reason)),
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

/// An upgrade's `Error` as [`UpgradeError::Failed`]: the reason, and the failed generation's
/// last lines on stderr when the front added them.
fn failed(answer: &str) -> UpgradeError {
    let (reason, tail) = answer
        .split_once(&format!("\n{STDERR_TAIL}\n"))
        .unwrap_or((answer, ""));
    UpgradeError::Failed {
        reason: reason.to_owned(),
        stderr: tail.lines().map(str::to_owned).collect(),
    }
}

#[cfg(test)]
mod failed_tests {
    use super::{STDERR_TAIL, UpgradeError, failed};

    #[test]
    fn the_stderr_tail_is_split_from_the_reason_and_shown_indented() {
        let e = failed(&format!(
            "generation 3 failed before it was ready: it exited with exit status: 1\n{STDERR_TAIL}\nloading config\nError: cannot read cert.pem"
        ));
        let UpgradeError::Failed { reason, stderr } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(
            reason,
            "generation 3 failed before it was ready: it exited with exit status: 1"
        );
        assert_eq!(stderr, &["loading config", "Error: cannot read cert.pem"]);
        assert_eq!(
            e.to_string(),
            format!(
                "risefront: upgrade failed: {reason}\n{STDERR_TAIL}\n  | loading config\n  | Error: cannot read cert.pem"
            )
        );
        let plain = failed("generation 3 did not take over");
        assert!(
            matches!(&plain, UpgradeError::Failed { reason, stderr } if reason == "generation 3 did not take over" && stderr.is_empty())
        );
        assert_eq!(
            plain.to_string(),
            "risefront: upgrade failed: generation 3 did not take over"
        );
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// An `Error` frame as a front speaking protocol `version` writes it.
    fn error_frame(version: u8, reason: &str) -> Vec<u8> {
        let mut body = vec![version, 8];
        body.extend(u16::try_from(reason.len()).expect("short").to_be_bytes());
        body.extend(reason.as_bytes());
        let mut frame = u32::try_from(body.len())
            .expect("short")
            .to_be_bytes()
            .to_vec();
        frame.extend(body);
        frame
    }

    /// An older front cannot read our Hello, says so in its own version, and hangs up before
    /// our request is written: the report is the version mismatch, not a broken pipe.
    #[tokio::test]
    async fn a_front_of_another_version_is_reported_as_such_not_as_a_broken_pipe() {
        use std::io::Write;

        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
        let older = crate::protocol::VERSION - 1;
        (&theirs)
            .write_all(&error_frame(older, "unsupported protocol version"))
            .expect("the front's answer");
        drop(theirs);
        ours.set_nonblocking(true).expect("nonblocking");
        let mut channel = Channel::new(
            tokio::net::UnixStream::from_std(ours).expect("tokio"),
            false,
        );
        let hello = Message::Hello {
            pid: 1,
            role: Role::Control,
            ready_timeout: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(1),
            probation: Duration::ZERO,
            program: None,
            addresses: Vec::new(),
        };
        let outcome = ask(
            &mut channel,
            &hello,
            &Message::Upgrade,
            Duration::from_secs(5),
            Duration::from_secs(5),
            "svc",
        )
        .await;
        let Err(UpgradeError::Bind(BindError::ProtocolMismatch {
            service,
            front,
            ours,
        })) = &outcome
        else {
            panic!("{outcome:?}");
        };
        assert_eq!((service.as_str(), *front, *ours), ("svc", older, VERSION));
        let e = io::Error::from(outcome.expect_err("an error"));
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("protocol version"), "{e}");
    }
}
