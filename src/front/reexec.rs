//! The front re-executing itself into another build (Unix): the old image hands its peers'
//! connections back from their tasks, writes what it carries ([`state`]) and calls `exec`;
//! the new image, the same process, adopts every descriptor and resumes the loop where the
//! old one stopped, from the machine's [`Snapshot`]. When to re-execute is the machine's
//! decision (`machine/reexec.rs`); the system calls are in `handoff/unix/reexec.rs`.
//!
//! Windows has no `exec` that keeps handles: a front there answers that it cannot (its
//! `reexec_now` is in the front's main file).

mod state;

pub(super) use state::{STATE_VAR, take};

use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::Front;
use super::listeners::Listeners;
use super::machine::{Action, Gen, Input, Machine, PeerId, Snapshot};
use super::peer::{self, Command};
use super::tail::{self, Tail};
use super::{PeerSlot, lock_listeners, timeouts};
use crate::config::Config;
use crate::handoff::{self, ControlListener, Endpoint, FrontLock, ProcessHandle, Stream};
use crate::protocol::{Program, Role};
use crate::socket::Socket;

/// The front's new image: what the old one carried across `exec`, adopted, and the loop
/// resumed where it stopped. Returns only errors from before the loop.
pub(super) async fn resume(config: Config, state: state::State) -> io::Result<Infallible> {
    let lock = FrontLock::carried(handoff::adopt(state.lock)?);
    let control = ControlListener::carried(handoff::adopt(state.control)?)?;
    let endpoint = Endpoint::at(state.endpoint.0.clone(), state.endpoint.1.clone());
    let mut carried = Vec::with_capacity(state.listeners.len());
    for c in &state.listeners {
        let socket = Socket::try_from(handoff::adopt(c.fd)?)?;
        let file = c
            .file
            .clone()
            .map(|(path, inode)| crate::net::SocketFile::from_parts(path, inode));
        carried.push((c.target.clone(), socket, c.users.clone(), file));
    }
    let listeners = Arc::new(Mutex::new(Listeners::resumed(carried)));
    let own = Program::of_this_process()?;
    tracing::info!(
        pid = std::process::id(),
        generation = state.snapshot.generation,
        "front re-executed into {} (protocol {}): generation {} serves on",
        own.exe.display(),
        crate::protocol::VERSION,
        state.snapshot.generation
    );
    let mut front = Front::new(config, own, Arc::clone(&listeners), &endpoint, &lock);
    let first = front.resumed(&state)?;
    let code = front.run(control, Some(first)).await;
    endpoint.remove();
    lock_listeners(&listeners).remove_files();
    drop(lock);
    std::process::exit(code)
}

/// A control connection carried across `exec`, as the stream it was.
fn carried_stream(connection: state::Connection) -> io::Result<Stream> {
    let stream = std::os::unix::net::UnixStream::from(handoff::adopt(connection.fd)?);
    stream.set_nonblocking(true)?;
    Stream::from_std(stream)
}

/// The front re-executing itself (Unix): the old image's side, then the new one's.
impl Front<'_> {
    /// Re-executes into the program asked for (the client's, a newer build's, or what
    /// serves), carrying the serving generation's connection and those of the control clients
    /// waiting; returns only if that did not happen, as the input that tells the machine why.
    pub(super) async fn reexec_now(
        &mut self,
        snapshot: Snapshot,
        control: &ControlListener,
    ) -> Input {
        let failed = |why: String, busy: bool| Input::ReExecFailed { why, busy };
        let asked_for = snapshot
            .asked
            .and_then(|client| self.reexec_programs.remove(&client).flatten());
        let newer = self.newer_program.take();
        let program = match asked_for.or(newer) {
            Some(program) => program,
            None => self.program_to_start().clone(),
        };
        if !program.exe.is_file() {
            return failed(
                format!(
                    "cannot re-execute into {}: no such file",
                    program.exe.display()
                ),
                false,
            );
        }
        let mut carried: Vec<(PeerId, Role, Detached)> = Vec::new();
        let mut wanted = vec![(snapshot.peer, Role::Generation)];
        wanted.extend(
            snapshot
                .asked
                .iter()
                .chain(&snapshot.clients)
                .map(|client| (*client, Role::Control)),
        );
        for (peer, role) in wanted {
            match self.detach(peer).await {
                Some(detached) => carried.push((peer, role, detached)),
                None if role == Role::Generation => {
                    self.reattach_all(carried);
                    return failed(
                        format!(
                            "generation {} is busy talking to the front; try again",
                            snapshot.generation
                        ),
                        true,
                    );
                }
                // A client that left (or is mid-frame) is not carried: it hears nothing more.
                None => {}
            }
        }
        // An event already queued (an exit, a frame relayed just before the detach) would be
        // lost with this image: the machine hears it first, and the re-exec is tried again.
        if !self.events.is_empty() || !self.exits.is_empty() {
            self.reattach_all(carried);
            return failed(
                "the service changed while the front prepared to re-execute; try again".to_owned(),
                true,
            );
        }
        let e = self.exec_with(&snapshot, &program, control, &carried);
        // Only a failed exec comes back.
        self.reattach_all(carried);
        failed(
            format!("cannot re-execute into {}: {e}", program.exe.display()),
            false,
        )
    }

    /// Writes the state, lets every descriptor in it cross `exec`, and execs; returns the
    /// error if `exec` failed, with the descriptors closed on exec again.
    fn exec_with(
        &self,
        snapshot: &Snapshot,
        program: &Program,
        control: &ControlListener,
        carried: &[(PeerId, Role, Detached)],
    ) -> io::Error {
        use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
        let registry = lock_listeners(&self.sockets);
        let listeners = registry.carried();
        let stderr = self.stderr_copies.get(&snapshot.generation);
        let (socket_path, lock_path) = self.endpoint.paths();
        let connections = carried
            .iter()
            .map(|(peer, _, ((_, version), stream))| {
                (
                    *peer,
                    state::Connection {
                        fd: stream.as_raw_fd(),
                        // Said outright: the next image may be of another release, whose own
                        // version is not this one's.
                        version: Some(version.unwrap_or(crate::protocol::VERSION)),
                    },
                )
            })
            .collect();
        // Clients that left are not carried: nobody is to answer them.
        let generation = snapshot.generation;
        let mut snapshot = snapshot.clone();
        snapshot
            .clients
            .retain(|client| carried.iter().any(|(peer, _, _)| peer == client));
        snapshot.asked = snapshot
            .asked
            .filter(|asked| carried.iter().any(|(peer, _, _)| peer == asked));
        let state = state::State {
            front: std::process::id(),
            snapshot,
            endpoint: (socket_path.to_owned(), lock_path.to_owned()),
            control: control.fd().as_raw_fd(),
            lock: self.lock.fd().as_raw_fd(),
            connections,
            stderr: stderr.map(AsRawFd::as_raw_fd),
            serving: self.serving.clone(),
            next_peer: self.next_peer,
            listeners: listeners
                .iter()
                .map(|(target, socket, users, file)| state::Carried {
                    target: (*target).clone(),
                    fd: socket.as_fd().as_raw_fd(),
                    users: users.clone(),
                    file: file.map(|f| {
                        let (path, inode) = f.parts();
                        (path.to_owned(), inode)
                    }),
                })
                .collect(),
        };
        let mut fds: Vec<BorrowedFd<'_>> = vec![control.fd(), self.lock.fd()];
        fds.extend(carried.iter().map(|(_, _, (_, stream))| stream.as_fd()));
        fds.extend(stderr.map(AsFd::as_fd));
        fds.extend(listeners.iter().map(|(_, socket, _, _)| socket.as_fd()));
        let kept = fds
            .iter()
            .try_for_each(|fd| handoff::keep_across_exec(*fd, true));
        let e = match kept {
            Ok(()) => {
                tracing::info!(
                    "front re-executing into {}; generation {generation} serves on",
                    program.exe.display()
                );
                handoff::exec(
                    &program.exe,
                    &program.args,
                    &program.cwd,
                    (STATE_VAR, &state.encode()),
                )
            }
            Err(e) => e,
        };
        for fd in fds {
            let _ = handoff::keep_across_exec(fd, false);
        }
        tracing::warn!(
            "the front could not re-execute into {}: {e}",
            program.exe.display()
        );
        e
    }

    /// Takes a peer's connection back from its task, which ends without a word; `None` if it
    /// cannot be had now (a frame half read, the task gone or not answering).
    async fn detach(&mut self, peer: PeerId) -> Option<Detached> {
        let (reply, answer) = oneshot::channel();
        let slot = self.peers.get(&peer)?;
        slot.tx.try_send(Command::Detach(reply)).ok()?;
        let (stream, version) = tokio::time::timeout(Duration::from_secs(1), answer)
            .await
            .ok()?
            .ok()??;
        let slot = self.peers.remove(&peer)?;
        Some(((slot, version), stream))
    }

    /// Gives detached connections a task again, as they were.
    fn reattach_all(&mut self, carried: Vec<(PeerId, Role, Detached)>) {
        for (peer, role, ((slot, version), stream)) in carried {
            let talk = peer::Talk::resumed(role, slot.pid.unwrap_or_default());
            self.resume_peer(peer, stream, version, talk, slot.program, slot.preconnected);
        }
    }

    fn resume_peer(
        &mut self,
        peer: PeerId,
        stream: Stream,
        version: Option<u8>,
        talk: peer::Talk,
        program: Option<Program>,
        preconnected: Option<Gen>,
    ) {
        let pid = talk.pid();
        let (tx, commands) = mpsc::channel(8);
        let cx = self.peer_context();
        let channel = crate::channel::Channel::resumed(stream, version);
        let task = tokio::spawn(peer::resume(peer, channel, talk, commands, cx)).abort_handle();
        self.peers.insert(
            peer,
            PeerSlot {
                tx,
                said_hello: true,
                pid: Some(pid),
                program,
                preconnected,
                task,
            },
        );
    }

    /// The new image: adopts what the old one carried and returns the resumed machine's first
    /// actions (the answer to the client that asked, or the upgrade started again).
    fn resumed(&mut self, state: &state::State) -> io::Result<Vec<Action>> {
        let s = &state.snapshot;
        let (machine, first) = Machine::resume(
            timeouts(&self.config),
            self.config.stop_delay,
            Instant::now(),
            s,
        );
        self.machine = machine;
        let highest = state.connections.iter().map(|(peer, _)| *peer).max();
        self.next_peer = state.next_peer.max(highest.unwrap_or_default() + 1);
        self.serving = state.serving.clone();
        for (peer, connection) in &state.connections {
            let stream = carried_stream(*connection)?;
            if *peer == s.peer {
                let preconnected = s.spawned.then_some(s.generation);
                let talk = peer::Talk::resumed(Role::Generation, s.pid);
                let program = state.serving.clone();
                self.resume_peer(
                    *peer,
                    stream,
                    connection.version,
                    talk,
                    program,
                    preconnected,
                );
            } else {
                let talk = peer::Talk::resumed(Role::Control, 0);
                self.resume_peer(*peer, stream, connection.version, talk, None, None);
            }
        }
        if let Some(fd) = state.stderr {
            let copy = handoff::adopt(fd)?;
            let again = copy.try_clone()?;
            let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(copy)?;
            let tail = Arc::new(Mutex::new(Tail::default()));
            self.tails.insert(s.generation, Arc::clone(&tail));
            self.stderr_copies.insert(s.generation, again);
            tokio::spawn(tail::pass_through(reader, tail));
        }
        if s.spawned {
            self.adopt_child(s.generation, s.pid);
        } else {
            match ProcessHandle::open(s.pid) {
                Ok(handle) => {
                    self.handles.insert(s.generation, handle);
                }
                Err(e) => tracing::warn!(
                    "cannot take hold of generation {} (pid {}) again: {e}",
                    s.generation,
                    s.pid
                ),
            }
        }
        Ok(first)
    }

    /// Waits for a child the previous image spawned (still ours: `exec` keeps children), as
    /// a spawned one is waited for: its exit reported, killed when asked.
    fn adopt_child(&mut self, n: Gen, pid: u32) {
        let (kill, killed) = oneshot::channel::<()>();
        self.children.insert(n, kill);
        self.child_pids.insert(n, pid);
        let exits = self.exits_tx.clone();
        tokio::spawn(async move {
            let (status, success) = handoff::wait_adopted(pid, killed).await;
            let _ = exits.send((n, status, success));
        });
    }
}

/// A connection taken back from its peer task: the slot it had, the version its peer speaks,
/// and the stream.
type Detached = ((PeerSlot, Option<u8>), Stream);
