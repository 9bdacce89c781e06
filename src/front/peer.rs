//! One task per control connection: it verifies the peer, reads its Hello within the handshake
//! deadline, then relays frames between the peer and the front's event loop until either side
//! ends it. A slow or hostile peer only ever stalls its own task.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
#[cfg(unix)]
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until, timeout};

use super::listeners::{Listeners, Picks};
use super::lock_listeners;
use super::machine::{Gen, PeerId, Timeouts};
use crate::channel::Channel;
use crate::config::deadline_after;
use crate::handoff::{self, ProcessHandle, Stream};
use crate::net::{SocketFile, Target, bind_target};
use crate::protocol::{Message, Program, Role};
use crate::socket::Socket;

/// What a peer task tells the front.
pub(crate) enum Event {
    /// The peer proved who it is. A generation started by hand comes with a handle on its
    /// process, taken right after its pid was verified.
    Hello {
        peer: PeerId,
        pid: u32,
        role: Role,
        timeouts: Timeouts,
        handle: Option<ProcessHandle>,
        /// What a generation runs, as it said.
        program: Option<Program>,
    },
    Ready {
        peer: PeerId,
    },
    Upgrade {
        peer: PeerId,
    },
    /// A generation was told to stop from outside and asks to be replaced first.
    StopRequested {
        peer: PeerId,
    },
    /// A superseded generation accepts no new connection any more.
    SteppedAside {
        peer: PeerId,
    },
    /// A generation answered a `Ping`.
    Pong {
        peer: PeerId,
    },
    /// The front's own child on a pre-connected channel speaks the next protocol version.
    NewerBuild {
        peer: PeerId,
    },
    /// A control client asks the front to re-execute into `program` (none: what serves).
    ReExec {
        peer: PeerId,
        program: Option<Program>,
    },
    /// The task ended; `why` is for the log.
    Gone {
        peer: PeerId,
        why: String,
    },
}

/// What the front asks a peer task to do.
pub(crate) enum Command {
    SendListeners(Gen),
    Send(Message),
    /// A message with one descriptor riding on it (`HandoffTo`, `HandoffFrom`).
    #[cfg(unix)]
    SendWithFd(Message, std::os::fd::OwnedFd),
    Close,
    /// Hand the connection back, with the version its peer speaks, and end without a word to
    /// the front: it crosses a re-exec of the front. `None` if a frame is half read (or the
    /// task ended meanwhile), and the task goes on.
    #[cfg(unix)]
    Detach(Detaching),
}

/// Where the front's request for a connection back is answered.
#[cfg(unix)]
type Detaching = oneshot::Sender<Option<(Stream, Option<u8>)>>;
#[cfg(not(unix))]
type Detaching = std::convert::Infallible;

/// Everything a peer task needs besides its connection.
pub(crate) struct PeerContext {
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) sockets: Arc<Mutex<Listeners>>,
    pub(crate) handshake: Duration,
    /// The mode of Unix socket files the front binds (`Builder::unix_mode`).
    pub(crate) unix_mode: Option<u32>,
}

/// Runs one control connection to its end and reports it gone. `preconnected` names the
/// generation whose inherited channel this is: its peer is the child the front spawned, it
/// has no handshake deadline of its own (the ready deadline covers a slow start), and it is
/// never counted against the connection limit.
pub(crate) async fn run(
    peer: PeerId,
    stream: Stream,
    preconnected: Option<Gen>,
    commands: mpsc::Receiver<Command>,
    cx: PeerContext,
) {
    let why = match serve(peer, stream, preconnected, commands, &cx).await {
        Ok(Ended::Detached) => return,
        Ok(Ended::Closed) => "closed the connection".to_owned(),
        Err(e) => {
            // Refusals and protocol violations are worth an operator's attention; a
            // generation's connection resetting as it exits is not.
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidData
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::UnexpectedEof
            ) {
                tracing::warn!(peer, "dropped control connection: {e}");
            }
            e.to_string()
        }
    };
    let _ = cx.events.send(Event::Gone { peer, why });
}

/// How a connection the peer task served ended, when it ended well.
enum Ended {
    Closed,
    /// Handed back to the front (`Command::Detach`, Unix only).
    #[cfg_attr(not(unix), allow(dead_code))]
    Detached,
}

/// Where a conversation stands, kept across a detach that did not happen (a frame was half
/// read) and given to a conversation that crossed a re-exec.
pub(crate) struct Talk {
    role: Role,
    pid: u32,
    /// A control client sent its request, or a generation said Ready.
    asked: bool,
    stop_asked: bool,
    /// `Probation` and `Superseded` sent and not yet answered with `SteppedAside`: no more
    /// answers than that are relayed, so a confused peer cannot flood the front with them.
    unanswered: u32,
    /// Likewise for `Ping` and `Pong`.
    pinged: u32,
    /// When a control client must have asked by.
    request_deadline: Option<Instant>,
}

impl Talk {
    fn new(role: Role, pid: u32, handshake: Duration) -> Self {
        // A control client must ask for something promptly; a generation may take its time to
        // warm up (the front's ready deadline covers it).
        Talk {
            role,
            pid,
            asked: false,
            stop_asked: false,
            unanswered: 0,
            pinged: 0,
            request_deadline: (role == Role::Control)
                .then(|| deadline_after(Instant::now(), handshake)),
        }
    }

    /// The verified pid of the peer.
    #[cfg(unix)]
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// A conversation that crossed a re-exec: the serving generation (ready long ago, every
    /// `Probation` and `Superseded` answered, no ping out), or the client that asked for it.
    #[cfg(unix)]
    pub(crate) fn resumed(role: Role, pid: u32) -> Self {
        Talk {
            role,
            pid,
            asked: true,
            stop_asked: false,
            unanswered: 0,
            pinged: 0,
            request_deadline: None,
        }
    }
}

/// Runs a control connection that crossed a re-exec of the front: no handshake, the peer is
/// who it said it was to the previous image.
#[cfg(unix)]
pub(crate) async fn resume(
    peer: PeerId,
    channel: Channel,
    mut talk: Talk,
    mut commands: mpsc::Receiver<Command>,
    cx: PeerContext,
) {
    let why = match converse(peer, channel, &mut talk, &Picks::new(), &mut commands, &cx).await {
        Ok(Ended::Detached) => return,
        Ok(Ended::Closed) => "closed the connection".to_owned(),
        Err(e) => e.to_string(),
    };
    let _ = cx.events.send(Event::Gone { peer, why });
}

async fn serve(
    peer: PeerId,
    stream: Stream,
    preconnected: Option<Gen>,
    mut commands: mpsc::Receiver<Command>,
    cx: &PeerContext,
) -> io::Result<Ended> {
    // Until its Hello, a peer has no deadline of its own if it is a spawned child (whose
    // pipe, on Windows, waits for a connection that a child dying first never makes): the
    // front's word to close it must still end the task, and with it the pipe.
    let closed = async {
        loop {
            match commands.recv().await {
                Some(Command::Close) | None => return,
                // Nothing is sent to a peer before its Hello, and one that has not said it
                // does not cross a re-exec.
                #[cfg(unix)]
                Some(Command::Detach(reply)) => {
                    let _ = reply.send(None);
                }
                Some(_) => {}
            }
        }
    };
    let introduced = tokio::select! {
        introduced = introduce(peer, stream, preconnected, cx) => introduced?,
        () = closed => return Ok(Ended::Closed),
    };
    let Some((channel, pid, role, picks)) = introduced else {
        return Ok(Ended::Closed);
    };
    let mut talk = Talk::new(role, pid, cx.handshake);
    converse(peer, channel, &mut talk, &picks, &mut commands, cx).await
}

/// Talks until the end, or until the front takes the connection back (if it can: not with a
/// frame half read).
async fn converse(
    peer: PeerId,
    mut channel: Channel,
    talk: &mut Talk,
    picks: &Picks,
    commands: &mut mpsc::Receiver<Command>,
    cx: &PeerContext,
) -> io::Result<Ended> {
    // Windows has no re-exec: nothing asks for the connection back.
    #[cfg(not(unix))]
    return match relay(peer, &mut channel, talk, picks, commands, cx).await? {
        None => Ok(Ended::Closed),
        Some(never) => match never {},
    };
    #[cfg(unix)]
    loop {
        let Some(reply) = relay(peer, &mut channel, talk, picks, commands, cx).await? else {
            return Ok(Ended::Closed);
        };
        match channel.into_parts() {
            Ok(parts) => {
                if let Err(Some(parts)) = reply.send(Some(parts)) {
                    // The front gave up waiting: the connection stays here.
                    channel = Channel::resumed(parts.0, parts.1);
                    continue;
                }
                return Ok(Ended::Detached);
            }
            Err(kept) => {
                channel = *kept;
                let _ = reply.send(None);
            }
        }
    }
}

/// Verifies the peer and reads its Hello; `None` if it hung up first.
async fn introduce(
    peer: PeerId,
    stream: Stream,
    preconnected: Option<Gen>,
    cx: &PeerContext,
) -> io::Result<Option<(Channel, u32, Role, Picks)>> {
    let handshake = cx.handshake;
    let verified_pid = if preconnected.is_some() {
        handoff::wait_connected(&stream).await?;
        handoff::child_pid(&stream)?
    } else {
        handoff::check_peer(&stream)?.pid
    };
    let mut channel = Channel::new(stream, false).reading_one_version_back();
    let hello = if preconnected.is_some() {
        channel.recv().await
    } else {
        timeout(handshake, channel.recv()).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no hello within {handshake:?}"),
            )
        })?
    };
    let hello = match hello {
        Ok(hello) => hello,
        Err(e) => {
            // A build the front started that speaks the next protocol version: the front can
            // re-execute into it (the build itself exits, unable to join this front).
            if preconnected.is_some()
                && crate::protocol::other_version(&e) == Some(crate::protocol::VERSION + 1)
            {
                let _ = cx.events.send(Event::NewerBuild { peer });
            }
            if e.kind() == io::ErrorKind::InvalidData {
                // Say why in a frame: a build speaking another protocol version reads our
                // header and reports the mismatch instead of a bare hang-up.
                let reason = format!("the front cannot read this peer's hello: {e}");
                let _ = timeout(handshake, channel.send(&Message::Error { reason })).await;
            }
            return Err(e);
        }
    };
    let (pid, role, timeouts, program, addresses) = match hello {
        Some(Message::Hello {
            pid,
            role,
            ready_timeout,
            drain_timeout,
            probation,
            program,
            addresses,
        }) => (
            pid,
            role,
            Timeouts {
                ready: ready_timeout,
                drain: drain_timeout,
                probation,
            },
            program.filter(|_| role == Role::Generation),
            addresses,
        ),
        Some(other) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected hello, got {other:?}"),
            ));
        }
        None => return Ok(None),
    };
    if verified_pid.is_some_and(|real| real != pid) {
        let reason = format!("claims pid {pid} but the system says {verified_pid:?}");
        return Err(refuse(&mut channel, handshake, reason).await);
    }
    // A generation started by hand may have to be killed; hold its process now, while the pid
    // is known to be the one that connected, rather than by number later.
    let handle = if role == Role::Generation && preconnected.is_none() {
        match ProcessHandle::open(pid) {
            Ok(handle) => Some(handle),
            Err(e) => {
                let reason = format!("cannot take hold of process {pid}: {e}");
                return Err(refuse(&mut channel, handshake, reason).await);
            }
        }
    } else {
        None
    };
    // The sockets it asked for, bound now if they are new: an address the front cannot bind
    // fails this build before it is ready, and the one serving serves on.
    let picks = if role == Role::Generation {
        match sockets_for(peer, &addresses, cx).await {
            Ok(picks) => picks,
            Err(reason) => return Err(refuse(&mut channel, handshake, reason).await),
        }
    } else {
        Picks::new()
    };
    let _ = cx.events.send(Event::Hello {
        peer,
        pid,
        role,
        timeouts,
        handle,
        program,
    });
    Ok(Some((channel, pid, role, picks)))
}

/// Reserves for `peer` the sockets of `addresses`, binding those no socket serves yet.
async fn sockets_for(
    peer: PeerId,
    addresses: &[Target],
    cx: &PeerContext,
) -> Result<Picks, String> {
    let missing = lock_listeners(&cx.sockets).missing(addresses);
    let mut new: Vec<(Target, Socket, Option<SocketFile>)> = Vec::with_capacity(missing.len());
    for target in missing {
        match bind_target(&target, cx.unix_mode).await {
            Ok(socket) => {
                let file = super::socket_file(&target);
                new.push((target, socket, file));
            }
            Err(e) => {
                for file in new.iter().filter_map(|(_, _, f)| f.as_ref()) {
                    file.remove();
                }
                tracing::warn!("cannot bind {target}, which a new build asks for: {e}");
                return Err(format!(
                    "the front cannot bind {target}, which this build asks for: {e}"
                ));
            }
        }
    }
    Ok(lock_listeners(&cx.sockets).reserve(peer, addresses, new))
}

/// Relays frames both ways once the peer said Hello, until either side ends it (`None`) or
/// the front asks for the connection back (the reply to send it on).
async fn relay(
    peer: PeerId,
    channel: &mut Channel,
    talk: &mut Talk,
    picks: &Picks,
    commands: &mut mpsc::Receiver<Command>,
    cx: &PeerContext,
) -> io::Result<Option<Detaching>> {
    let handshake = cx.handshake;
    let (role, pid) = (talk.role, talk.pid);
    loop {
        let request_deadline = talk.request_deadline;
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::SendListeners(generation)) => {
                    // Duplicates, so that no lock is held across the send; counted as the
                    // generation's only once handed over.
                    let sockets = lock_listeners(&cx.sockets).copies(picks)?;
                    timeout(handshake, channel.send_listeners(generation, &sockets, pid))
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"))??;
                    lock_listeners(&cx.sockets).handed(peer, generation, picks);
                }
                Some(Command::Send(message)) => {
                    if matches!(message, Message::Probation | Message::Superseded) {
                        talk.unanswered = talk.unanswered.saturating_add(1);
                    }
                    if message == Message::Ping {
                        talk.pinged = talk.pinged.saturating_add(1);
                    }
                    timeout(handshake, channel.send(&message))
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"))??;
                }
                #[cfg(unix)]
                Some(Command::SendWithFd(message, fd)) => {
                    use std::os::fd::AsFd;
                    timeout(handshake, channel.send_with_fds(&message, &[fd.as_fd()]))
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"))??;
                }
                Some(Command::Close) | None => return Ok(None),
                #[cfg(unix)]
                Some(Command::Detach(reply)) => return Ok(Some(reply)),
            },
            message = channel.recv() => match message? {
                Some(Message::Ready) if role == Role::Generation && !talk.asked => {
                    talk.asked = true;
                    let _ = cx.events.send(Event::Ready { peer });
                }
                Some(Message::Upgrade) if role == Role::Control && !talk.asked => {
                    talk.asked = true;
                    let _ = cx.events.send(Event::Upgrade { peer });
                }
                Some(Message::ReExec { program }) if role == Role::Control && !talk.asked => {
                    talk.asked = true;
                    let _ = cx.events.send(Event::ReExec { peer, program });
                }
                Some(Message::StopRequested) if role == Role::Generation && !talk.stop_asked => {
                    talk.stop_asked = true;
                    let _ = cx.events.send(Event::StopRequested { peer });
                }
                // Once per probation or supersession, and a generation can be reinstated and
                // superseded again: not a one-shot like the requests above.
                Some(Message::SteppedAside) if role == Role::Generation && talk.unanswered > 0 => {
                    talk.unanswered -= 1;
                    let _ = cx.events.send(Event::SteppedAside { peer });
                }
                Some(Message::Pong) if role == Role::Generation && talk.pinged > 0 => {
                    talk.pinged -= 1;
                    let _ = cx.events.send(Event::Pong { peer });
                }
                Some(other) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected {other:?} from a {role:?} peer"),
                    ));
                }
                None => return Ok(None),
            },
            _ = sleep_until(request_deadline.unwrap_or_else(|| deadline_after(Instant::now(), Duration::MAX))),
                if request_deadline.is_some() && !talk.asked =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("control client sent no request within {handshake:?}"),
                ));
            }
        }
    }
}

/// Tells a peer why it is refused (bounded: one that does not read is simply dropped) and
/// returns the error that ends its task.
async fn refuse(channel: &mut Channel, handshake: Duration, reason: String) -> io::Error {
    let message = Message::Error {
        reason: reason.clone(),
    };
    let _ = timeout(handshake, channel.send(&message)).await;
    io::Error::new(io::ErrorKind::PermissionDenied, reason)
}

/// Tells a peer that arrived when every slot is taken by a peer that said Hello why it is
/// turned away, in words, then closes. Bounded: a peer that does not read is simply dropped.
pub(crate) async fn turn_away(stream: Stream, reason: String, handshake: Duration) {
    if handoff::check_peer(&stream).is_err() {
        return;
    }
    let mut channel = Channel::new(stream, false);
    let _ = timeout(handshake.min(Duration::from_secs(1)), async {
        channel.send(&Message::Error { reason }).await?;
        // Read what the peer sends until it hangs up: closing with its Hello unread could
        // reset the connection before it reads why it was turned away.
        while channel.recv().await?.is_some() {}
        Ok::<_, io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private scratch directory for a control endpoint, removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "risefront-peer-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .expect("scratch dir");
            }
            #[cfg(windows)]
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A spawned child that never says Hello (on Windows, one that died before it connected
    /// to its private pipe): the front closing its channel ends the task, and the pipe.
    #[tokio::test]
    async fn a_spawned_child_s_channel_closes_before_its_hello_when_told() {
        let scratch = Scratch::new();
        let endpoint =
            handoff::Endpoint::for_service("peer-test", Some(&scratch.0)).expect("endpoint");
        let (ours, theirs) = handoff::child_channel(&endpoint).expect("child channel");
        let (events, mut seen) = mpsc::unbounded_channel();
        let (tx, commands) = mpsc::channel(8);
        let cx = PeerContext {
            events,
            sockets: Arc::new(Mutex::new(Listeners::default())),
            handshake: Duration::from_secs(60),
            unix_mode: None,
        };
        let task = tokio::spawn(run(7, ours, Some(1), commands, cx));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished(), "waits for the child's hello");
        tx.send(Command::Close).await.expect("the task listens");
        timeout(Duration::from_secs(20), task)
            .await
            .expect("the task ended when told to close")
            .expect("no panic");
        assert!(
            matches!(seen.recv().await, Some(Event::Gone { peer: 7, .. })),
            "reported gone"
        );
        drop(theirs);
    }
}
