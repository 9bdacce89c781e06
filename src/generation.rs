//! The generation side of the control channel: joining a front, telling it when we are ready,
//! and starting to drain when it says a newer generation took over.

use std::io;

use tokio::time::timeout;

use crate::channel::Channel;
use crate::config::Config;
use crate::error::BindError;
use crate::handoff::{self, Stream};
use crate::listener::RiseFrontListener;
use crate::net::Target;
use crate::process::{Process, process};
use crate::protocol::{Message, Program, Role, VERSION, other_version};

/// Joins the front on `stream`: introduces ourselves, receives our generation number and the
/// listening sockets, and keeps the channel open in the background for the rest of our life.
pub(crate) async fn join(
    stream: Stream,
    config: &Config,
    addrs: &[Target],
) -> io::Result<RiseFrontListener> {
    let mut channel = Channel::new(stream, true);
    // The front's ready deadline starts when it reads our Hello, after this.
    let introduced_at = tokio::time::Instant::now();
    let handshake = async {
        let sent = channel
            .send(&Message::Hello {
                pid: std::process::id(),
                role: Role::Generation,
                ready_timeout: config.ready_timeout,
                drain_timeout: config.drain_timeout,
                probation: config.probation,
                // Without it (a program that cannot say where it is) the front starts its own.
                program: Program::of_this_process().ok(),
                addresses: addrs.to_vec(),
            })
            .await;
        match (sent, channel.recv().await) {
            // A front turning us away may have said why before our Hello reached it.
            (Err(_), Ok(Some(refusal @ Message::Error { .. }))) => Ok(Some(refusal)),
            (Err(e), _) => Err(e),
            (Ok(()), reply) => reply,
        }
    };
    let reply = timeout(config.handshake_timeout, handshake)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "risefront: the front did not answer within {:?}",
                    config.handshake_timeout
                ),
            )
        })?
        .map_err(|e| match other_version(&e) {
            Some(front) => BindError::ProtocolMismatch {
                service: config.name.clone(),
                front,
                ours: VERSION,
            }
            .into(),
            None => e,
        })?;
    let (generation, sockets) = match reply {
        Some(Message::Listeners {
            generation,
            sockets,
        }) => (generation, sockets),
        Some(Message::Error { reason }) => {
            return Err(BindError::FrontRefused {
                service: config.name.clone(),
                reason,
            }
            .into());
        }
        Some(other) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("risefront: the front sent {other:?} instead of the listening sockets"),
            ));
        }
        None => {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "risefront: the front closed the connection during the handshake",
            ));
        }
    };
    let mut listeners = Vec::with_capacity(sockets.len());
    for socket in channel.take_listeners(sockets)? {
        listeners.push(socket.into_accepting()?);
    }
    let process = process();
    process.configure(config, generation);
    process.joined_front();
    process.install_signals();
    ignore_hangup(generation);
    let listener = RiseFrontListener::new(listeners, generation, config);
    tracing::info!(
        generation,
        pid = std::process::id(),
        addresses = ?listener.local_addrs(),
        "generation {generation} received its listeners"
    );
    tokio::spawn(async move {
        talk_to_front(channel, process, generation).await;
        // The front is gone: the pipe it read our stderr from with it.
        handoff::return_stderr();
    });
    tokio::spawn(warn_if_never_ready(
        process,
        generation,
        introduced_at,
        config.ready_timeout,
    ));
    Ok(listener)
}

/// Says, in this process's own output, that the front is about to stop it for missing its
/// ready timeout: a build started by hand in a terminal would otherwise just die (SIGKILL),
/// its cause written only in the front's log, which is often in the journal. Said shortly
/// before the front's deadline, which starts later than ours, so that it comes first.
async fn warn_if_never_ready(
    process: &'static Process,
    generation: u64,
    introduced_at: tokio::time::Instant,
    ready_timeout: std::time::Duration,
) {
    let margin = (ready_timeout / 10).min(std::time::Duration::from_secs(1));
    // A timeout too large for the clock means never (as the front reads it).
    let warn_at =
        crate::config::deadline_after(introduced_at, ready_timeout.saturating_sub(margin));
    if tokio::time::timeout_at(warn_at, process.wait_ready())
        .await
        .is_ok()
    {
        return;
    }
    let message = format!(
        "risefront: generation {generation} is still not ready after {:?}: unless it is within \
         {margin:?}, the front stops it at its ready timeout ({ready_timeout:?}, \
         Builder::ready_timeout or RISEFRONT_READY_TIMEOUT) and the serving generation goes on. \
         It is ready once its server polls the listener (or, with Builder::manual_ready, once it \
         calls risefront::ready())",
        ready_timeout.saturating_sub(margin)
    );
    if tracing::dispatcher::has_been_set() {
        tracing::error!(generation, "{message}");
    } else {
        // No subscriber: straight to stderr, where the person who started it looks. A closed
        // stderr is not worth failing over.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{message}");
    }
}

/// Upgrades are the front's business: a SIGHUP sent to a generation by mistake (or by a
/// closing terminal, which signals the whole process group) would otherwise kill it in the
/// middle of its requests.
fn ignore_hangup(generation: u64) {
    match crate::signal::Hangup::new() {
        Ok(mut hangup) => {
            tokio::spawn(async move {
                loop {
                    hangup.recv().await;
                    tracing::warn!(
                        generation,
                        "generation {generation} got SIGHUP and ignores it: send SIGHUP to the front to upgrade"
                    );
                }
            });
        }
        Err(e) => tracing::warn!("cannot listen for SIGHUP: {e}"),
    }
}

/// The generation's half of the control channel, for as long as the process lives.
async fn talk_to_front(mut channel: Channel, process: &'static Process, generation: u64) {
    let mut ready_sent = false;
    let mut stop_sent = false;
    loop {
        tokio::select! {
            _ = process.stop_requested(), if !stop_sent => {
                stop_sent = true;
                if let Err(e) = channel.send(&Message::StopRequested).await {
                    process.start_draining(&format!("lost the front ({e})"));
                    return;
                }
            }
            _ = process.wait_ready(), if !ready_sent => {
                ready_sent = true;
                // Ready, so no upgrade fails for what it writes from now on: its stderr is the
                // service's again, and stays so if the front dies.
                handoff::return_stderr();
                if let Err(e) = channel.send(&Message::Ready).await {
                    process.start_draining(&format!("lost the front ({e})"));
                    return;
                }
                tracing::debug!(generation, "generation {generation} told the front it is ready");
            }
            message = channel.recv() => match message {
                Ok(Some(Message::Superseded)) => {
                    process.start_draining("was superseded by a newer generation");
                    if !stepped_aside(&mut channel, process).await {
                        return;
                    }
                }
                Ok(Some(Message::Probation)) => {
                    process.start_probation();
                    if !stepped_aside(&mut channel, process).await {
                        return;
                    }
                }
                Ok(Some(Message::Reinstated)) => process.reinstate(),
                // Answered from this task, which runs only if the runtime does: a stopped or
                // deadlocked generation stays silent, and the front reinstates its predecessor.
                Ok(Some(Message::Ping)) => {
                    if let Err(e) = channel.send(&Message::Pong).await {
                        process.start_draining(&format!("lost the front ({e})"));
                        return;
                    }
                }
                Ok(Some(Message::HandoffTo { pid, pipe })) => {
                    match crate::transfer::pair_end(&mut channel, pipe, pid, false) {
                        Ok(pair) => crate::transfer::hand_to(pair, pid),
                        // Connections are then closed as without a handoff.
                        Err(e) => tracing::warn!(generation, "connection handoff unavailable: {e}"),
                    }
                }
                Ok(Some(Message::HandoffFrom { pid, pipe })) => {
                    match crate::transfer::pair_end(&mut channel, pipe, pid, true) {
                        Ok(pair) => crate::transfer::receive_from(pair),
                        Err(e) => tracing::warn!(generation, "connection handoff unavailable: {e}"),
                    }
                }
                Ok(Some(Message::Shutdown)) => {
                    process.set_stopping();
                    process.start_draining("was asked to stop by the front");
                }
                Ok(Some(Message::Stopping)) => {
                    process.set_stopping();
                    tracing::info!(generation, "the service is stopping: generation {generation} serves on until the front's stop delay ends");
                }
                Ok(Some(Message::Error { reason })) => {
                    tracing::warn!(generation, "the front says: {reason}");
                }
                Ok(Some(other)) => {
                    tracing::warn!(generation, "ignoring unexpected control message {other:?}");
                }
                Ok(None) => {
                    process.start_draining("lost the front (it exited)");
                    return;
                }
                Err(e) => {
                    process.start_draining(&format!("lost the front ({e})"));
                    return;
                }
            }
        }
    }
}

/// Tells the front this generation accepts no new connection: our listeners accept under the
/// same lock that pausing or closing them takes, so from the moment `start_probation` or
/// `start_draining` returned no new connection is ours, and the front may report the upgrade
/// done. False if the front is gone (the generation then drains).
async fn stepped_aside(channel: &mut Channel, process: &'static Process) -> bool {
    match channel.send(&Message::SteppedAside).await {
        Ok(()) => true,
        Err(e) => {
            process.start_draining(&format!("lost the front ({e})"));
            false
        }
    }
}
