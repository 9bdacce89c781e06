//! The front: the first process of a service. It binds the listening sockets once, keeps them
//! for its whole life, and runs the upgrade state machine. It runs no request handlers, so app
//! changes never need a new front and its PID stays stable for supervisors.
//!
//! ```text
//! Starting(N+1) --Ready--> Active(N+1); Active(N) --> Draining(N) --exit--> gone
//! Starting(N+1) --exit / ready timeout / protocol error--> killed; Active(N) keeps serving
//! Active(N) --unexpected exit--> respawn with backoff
//! ```
//!
//! One upgrade at a time: a request while a generation is starting is refused, not queued.
//! The state machine runs in one task; each control peer gets its own task that talks to it
//! through channels, so no peer, however slow or hostile, can block the front.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout};

use crate::config::Config;
use crate::channel::Channel;
use crate::handoff::{self, ControlListener, Endpoint, FrontLock, Stream};
use crate::net::bind_first;
use crate::protocol::{Message, Role};

/// Consecutive failed starts after which a front whose service never became ready gives up.
const MAX_INITIAL_ATTEMPTS: u32 = 3;
/// Longest wait between respawns of a crashing generation.
const MAX_RESPAWN_DELAY: Duration = Duration::from_secs(10);
/// Extra time the front gives a draining generation past its own drain deadline before killing it.
const DRAIN_SLACK: Duration = Duration::from_secs(5);
/// Control connections served at once; more are closed on arrival.
const MAX_PEERS: usize = 64;
/// How long a new process waits for the port when the generations of a killed front are
/// still closing it.
const ADDR_IN_USE_RETRY: Duration = Duration::from_secs(3);

/// Becomes the front of the service: binds, spawns generation 1, and runs until told to stop.
/// Returns only start-up errors; otherwise the process exits from here.
pub(crate) async fn run(
    config: Config,
    addrs: Vec<Vec<SocketAddr>>,
    endpoint: Endpoint,
    lock: FrontLock,
) -> io::Result<Infallible> {
    let (exe, args) = startup_command()?;
    let mut sockets = Vec::with_capacity(addrs.len());
    for candidates in &addrs {
        sockets.push(bind_retrying(candidates).await?.into_std()?);
    }
    let control = endpoint.listen(&lock)?;
    let mut front = Front::new(config, exe, args, sockets);
    tracing::info!(
        pid = std::process::id(),
        addresses = ?front.addresses(),
        control = %endpoint,
        "front started for service {:?}",
        front.config.name
    );
    let code = front.run(control).await;
    endpoint.remove();
    drop(lock);
    tracing::info!("front exiting with status {code}");
    std::process::exit(code)
}

/// Binds, retrying briefly while the port is still held: after a front is killed, its
/// generations close their copies of the sockets as they notice.
async fn bind_retrying(candidates: &[SocketAddr]) -> io::Result<tokio::net::TcpListener> {
    let deadline = Instant::now() + ADDR_IN_USE_RETRY;
    loop {
        match bind_first(candidates).await {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// The program and arguments this process was started with, to run again for each generation.
///
/// `argv[0]` is made absolute now rather than read from `/proc/self/exe` later, so that a
/// binary rebuilt or replaced at that path is what the next upgrade runs.
fn startup_command() -> io::Result<(PathBuf, Vec<OsString>)> {
    let mut args = std::env::args_os();
    let argv0 = PathBuf::from(args.next().unwrap_or_default());
    let exe = if argv0.components().count() > 1 {
        std::path::absolute(&argv0)?
    } else {
        find_in_path(&argv0).map_or_else(std::env::current_exe, Ok)?
    };
    Ok((exe, args.collect()))
}

fn find_in_path(program: &std::path::Path) -> Option<PathBuf> {
    if program.as_os_str().is_empty() {
        return None;
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .and_then(|found| std::path::absolute(found).ok())
}

type PeerId = u64;

enum Event {
    /// A peer proved who it is.
    Hello {
        peer: PeerId,
        pid: u32,
        role: Role,
        tx: mpsc::Sender<Command>,
    },
    Ready {
        peer: PeerId,
    },
    Upgrade {
        peer: PeerId,
    },
    PeerGone {
        peer: PeerId,
        why: String,
    },
    ChildExited {
        generation: u64,
        pid: u32,
        status: io::Result<ExitStatus>,
    },
}

/// What the front asks a peer task to do.
enum Command {
    SendListeners(u64),
    Send(Message),
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Active,
    Draining,
}

struct Generation {
    state: State,
    pid: Option<u32>,
    peer: Option<PeerId>,
    since: Instant,
    /// Ready deadline while starting; kill deadline while draining.
    deadline: Option<Instant>,
    /// Its end was logged; the front only waits for the process to exit (or kills it at the
    /// deadline), so that a spawned generation can never linger unnoticed.
    ended: bool,
}

struct Peer {
    tx: mpsc::Sender<Command>,
    role: Role,
    pid: u32,
}

struct Front {
    config: Config,
    exe: PathBuf,
    args: Vec<OsString>,
    sockets: Arc<Vec<std::net::TcpListener>>,
    generations: BTreeMap<u64, Generation>,
    /// Processes the front spawned and has not reaped yet, by generation: the way to kill them.
    children: BTreeMap<u64, oneshot::Sender<()>>,
    peers: BTreeMap<PeerId, Peer>,
    /// Control clients waiting for the outcome of the upgrade they asked for.
    waiters: Vec<(PeerId, u64)>,
    next_generation: u64,
    next_peer: PeerId,
    /// Consecutive generations that failed before becoming ready.
    failures: u32,
    ever_ready: bool,
    respawn_at: Option<Instant>,
    stopping: Option<Instant>,
    exit_code: i32,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    peer_slots: Arc<Semaphore>,
}

impl Front {
    fn new(
        config: Config,
        exe: PathBuf,
        args: Vec<OsString>,
        sockets: Vec<std::net::TcpListener>,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Front {
            config,
            exe,
            args,
            sockets: Arc::new(sockets),
            generations: BTreeMap::new(),
            children: BTreeMap::new(),
            peers: BTreeMap::new(),
            waiters: Vec::new(),
            next_generation: 1,
            next_peer: 0,
            failures: 0,
            ever_ready: false,
            respawn_at: None,
            stopping: None,
            exit_code: 0,
            events_tx,
            events,
            peer_slots: Arc::new(Semaphore::new(MAX_PEERS)),
        }
    }

    fn addresses(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    async fn run(&mut self, mut control: ControlListener) -> i32 {
        let mut terminate = match crate::signal::Terminate::new() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("cannot listen for termination signals: {e}");
                return 1;
            }
        };
        let mut hangup = match crate::signal::Hangup::new() {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP: {e}");
                return 1;
            }
        };
        if let Err(why) = self.spawn_generation("first start") {
            tracing::error!("{why}");
            return 1;
        }
        let mut accept_paused_until: Option<Instant> = None;
        loop {
            if self.stopping.is_some() && self.generations.is_empty() && self.children.is_empty() {
                return self.exit_code;
            }
            let deadline = self.next_deadline();
            let accepting = accept_paused_until.is_none_or(|t| Instant::now() >= t);
            tokio::select! {
                accepted = control.accept(), if accepting => match accepted {
                    Ok(stream) => {
                        accept_paused_until = None;
                        self.spawn_peer(stream);
                    }
                    Err(e) => {
                        // Out of descriptors, most likely: back off instead of spinning.
                        tracing::warn!("control socket accept failed: {e}");
                        accept_paused_until = Some(Instant::now() + Duration::from_millis(100));
                    }
                },
                Some(event) = self.events.recv() => self.handle(event),
                _ = hangup.recv() => {
                    if let Err(why) = self.spawn_generation("SIGHUP") {
                        tracing::warn!("SIGHUP ignored: {why}");
                    }
                }
                signal = terminate.recv() => self.stop(signal),
                _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() || !accepting => {
                    self.on_timer();
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.generations
            .values()
            .filter_map(|g| g.deadline)
            .chain(self.respawn_at)
            .chain(self.stopping)
            .min()
    }

    fn spawn_peer(&mut self, stream: Stream) {
        let Ok(permit) = Arc::clone(&self.peer_slots).try_acquire_owned() else {
            tracing::warn!("{MAX_PEERS} control connections open; closing a new one");
            return;
        };
        let peer = self.next_peer;
        self.next_peer += 1;
        let events = self.events_tx.clone();
        let sockets = Arc::clone(&self.sockets);
        let handshake = self.config.handshake_timeout;
        tokio::spawn(async move {
            let why = match serve_peer(peer, stream, &events, &sockets, handshake).await {
                Ok(()) => "closed the connection".to_owned(),
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
            drop(permit);
            let _ = events.send(Event::PeerGone { peer, why });
        });
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Hello {
                peer,
                pid,
                role,
                tx,
            } => self.on_hello(peer, pid, role, tx),
            Event::Ready { peer } => self.on_ready(peer),
            Event::Upgrade { peer } => self.on_upgrade(peer),
            Event::PeerGone { peer, why } => {
                self.waiters.retain(|(p, _)| *p != peer);
                let Some(gone) = self.peers.remove(&peer) else {
                    return;
                };
                if gone.role == Role::Generation {
                    let found = self
                        .generations
                        .iter()
                        .find(|(_, g)| g.peer == Some(peer))
                        .map(|(n, _)| *n);
                    if let Some(n) = found {
                        self.lost(n, &format!("its control connection ended: {why}"), false);
                    }
                } else {
                    tracing::debug!(peer, pid = gone.pid, "control client left: {why}");
                }
            }
            Event::ChildExited {
                generation,
                pid,
                status,
            } => {
                self.children.remove(&generation);
                let status = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("unknown status ({e})"),
                };
                tracing::info!(
                    generation,
                    pid,
                    "generation {generation} (pid {pid}) exited with {status}"
                );
                self.lost(generation, &format!("it exited with {status}"), true);
            }
        }
    }

    fn on_hello(&mut self, peer: PeerId, pid: u32, role: Role, tx: mpsc::Sender<Command>) {
        if self.stopping.is_some() {
            refuse(&tx, "the service is shutting down");
            return;
        }
        if role == Role::Control {
            self.peers.insert(peer, Peer { tx, role, pid });
            return;
        }
        let starting = self.starting();
        let number = match starting {
            // The generation we spawned, calling in.
            Some((n, g)) if g.peer.is_none() && g.pid == Some(pid) => n,
            Some((n, g)) => {
                let reason = format!(
                    "an upgrade is already in progress: generation {n} (pid {}) is starting; try again once it is ready or has failed",
                    g.pid.unwrap_or_default()
                );
                tracing::warn!(pid, "refused a new generation: {reason}");
                refuse(&tx, &reason);
                return;
            }
            None if self.generations.values().any(|g| g.pid == Some(pid)) => {
                refuse(&tx, "this process is already a generation of the service");
                return;
            }
            // A new build started by hand: the seed's upgrade workflow.
            None => {
                let n = self.next_generation;
                self.next_generation += 1;
                self.starting_generation(n, pid, "started by hand");
                n
            }
        };
        if tx.try_send(Command::SendListeners(number)).is_err() {
            self.lost(number, "its control connection is not writable", false);
            return;
        }
        if let Some(g) = self.generations.get_mut(&number) {
            g.peer = Some(peer);
        }
        self.peers.insert(peer, Peer { tx, role, pid });
    }

    fn starting(&self) -> Option<(u64, &Generation)> {
        self.generations
            .iter()
            .find(|(_, g)| g.state == State::Starting)
            .map(|(n, g)| (*n, g))
    }

    fn on_ready(&mut self, peer: PeerId) {
        let Some((n, took)) = self
            .generations
            .iter()
            .find(|(_, g)| g.peer == Some(peer) && g.state == State::Starting)
            .map(|(n, g)| (*n, g.since.elapsed()))
        else {
            return;
        };
        let takeover = Instant::now();
        let mut superseded = Vec::new();
        for (old, g) in self.generations.iter_mut() {
            if g.state == State::Active {
                g.state = State::Draining;
                g.since = takeover;
                g.deadline = Some(takeover + self.config.drain_timeout + DRAIN_SLACK);
                if let Some(p) = g.peer.and_then(|p| self.peers.get(&p)) {
                    let _ = p.tx.try_send(Command::Send(Message::Superseded));
                }
                superseded.push(*old);
            }
        }
        if let Some(g) = self.generations.get_mut(&n) {
            g.state = State::Active;
            g.since = takeover;
            g.deadline = None;
        }
        self.failures = 0;
        self.ever_ready = true;
        self.respawn_at = None;
        tracing::info!(
            generation = n,
            ready_ms = took.as_millis(),
            takeover_us = takeover.elapsed().as_micros(),
            superseded = ?superseded,
            "generation {n} ready after {} ms and serving{}",
            took.as_millis(),
            if superseded.is_empty() {
                String::new()
            } else {
                format!("; superseded {superseded:?}")
            }
        );
        self.answer_waiters(n, Message::Upgraded { generation: n });
    }

    fn on_upgrade(&mut self, peer: PeerId) {
        let Some(client) = self.peers.get(&peer) else {
            return;
        };
        let pid = client.pid;
        match self.spawn_generation(&format!("upgrade requested by pid {pid}")) {
            Ok(n) => self.waiters.push((peer, n)),
            Err(reason) => {
                tracing::warn!(pid, "upgrade refused: {reason}");
                if let Some(client) = self.peers.get(&peer) {
                    refuse(&client.tx, &reason);
                }
            }
        }
    }

    fn answer_waiters(&mut self, generation: u64, answer: Message) {
        let peers = &self.peers;
        self.waiters.retain(|(peer, n)| {
            if *n != generation {
                return true;
            }
            if let Some(p) = peers.get(peer) {
                let _ = p.tx.try_send(Command::Send(answer.clone()));
                let _ = p.tx.try_send(Command::Close);
            }
            false
        });
    }

    /// Starts a new generation by running this program again, unless one is already starting.
    fn spawn_generation(&mut self, reason: &str) -> Result<u64, String> {
        if self.stopping.is_some() {
            return Err("the service is shutting down".to_owned());
        }
        if let Some((n, g)) = self.starting() {
            return Err(format!(
                "an upgrade is already in progress: generation {n} (pid {}) is starting",
                g.pid.unwrap_or_default()
            ));
        }
        self.respawn_at = None;
        let n = self.next_generation;
        let mut command = tokio::process::Command::new(&self.exe);
        command.args(&self.args).stdin(Stdio::null());
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let why = format!(
                    "cannot start generation {n} from {}: {e}",
                    self.exe.display()
                );
                self.failed_start(&why);
                return Err(why);
            }
        };
        self.next_generation += 1;
        let pid = child.id().unwrap_or_default();
        let (kill, killed) = oneshot::channel::<()>();
        self.children.insert(n, kill);
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                Ok(()) = killed => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let _ = events.send(Event::ChildExited {
                generation: n,
                pid,
                status,
            });
        });
        self.starting_generation(n, pid, reason);
        Ok(n)
    }

    /// Records generation `n` (process `pid`) as starting, with its ready deadline.
    fn starting_generation(&mut self, n: u64, pid: u32, reason: &str) {
        let now = Instant::now();
        self.generations.insert(
            n,
            Generation {
                state: State::Starting,
                pid: Some(pid),
                peer: None,
                since: now,
                deadline: Some(now + self.config.ready_timeout),
                ended: false,
            },
        );
        tracing::info!(
            generation = n,
            pid,
            "generation {n} (pid {pid}) starting ({reason})"
        );
    }

    /// A generation is gone or going: its process exited (`exited`), or its control
    /// connection ended, or it missed its ready deadline. Logs one line for the state it was
    /// in and what follows (rollback, respawn, drained).
    fn lost(&mut self, n: u64, why: &str, exited: bool) {
        let Some((state, ended)) = self.generations.get(&n).map(|g| (g.state, g.ended)) else {
            return;
        };
        if state == State::Starting {
            self.kill(n);
        }
        // A spawned process whose control connection ended is still running: keep it (as
        // draining, with a kill deadline) until it exits, so it cannot linger unnoticed.
        let lingering = !exited && state != State::Starting && self.children.contains_key(&n);
        let drain_deadline = Instant::now() + self.config.drain_timeout + DRAIN_SLACK;
        let g = if lingering {
            let Some(g) = self.generations.get_mut(&n) else {
                return;
            };
            g.state = State::Draining;
            g.ended = true;
            g.deadline = Some(g.deadline.unwrap_or(drain_deadline));
            let peer = g.peer.take();
            let (pid, since) = (g.pid.unwrap_or_default(), g.since);
            self.close_peer(peer);
            (pid, since)
        } else {
            let Some(g) = self.generations.remove(&n) else {
                return;
            };
            self.close_peer(g.peer);
            (g.pid.unwrap_or_default(), g.since)
        };
        if ended {
            return;
        }
        let (pid, since) = g;
        match state {
            State::Starting => {
                self.answer_waiters(
                    n,
                    Message::Error {
                        reason: format!("generation {n} failed before it was ready: {why}"),
                    },
                );
                match self.active() {
                    Some(active) if self.stopping.is_none() => tracing::warn!(
                        generation = n,
                        pid,
                        "rollback: generation {n} (pid {pid}) failed before it was ready ({why}); generation {active} keeps serving"
                    ),
                    _ => tracing::warn!(
                        generation = n,
                        pid,
                        "generation {n} (pid {pid}) failed before it was ready ({why})"
                    ),
                }
                if self.active().is_none() {
                    self.failed_start(why);
                }
            }
            State::Active if self.stopping.is_some() => tracing::info!(
                generation = n,
                pid,
                "generation {n} (pid {pid}) stopped after serving {} ms",
                since.elapsed().as_millis()
            ),
            State::Active => {
                tracing::error!(
                    generation = n,
                    pid,
                    "active generation {n} (pid {pid}) lost: {why}"
                );
                if self.stopping.is_none() && self.active().is_none() && self.starting().is_none() {
                    let delay = respawn_delay(self.failures);
                    tracing::info!("starting a replacement in {} ms", delay.as_millis());
                    self.respawn_at = Some(Instant::now() + delay);
                }
            }
            State::Draining => tracing::info!(
                generation = n,
                pid,
                "generation {n} (pid {pid}) finished draining after {} ms",
                since.elapsed().as_millis()
            ),
        }
    }

    fn close_peer(&mut self, peer: Option<PeerId>) {
        if let Some(peer) = peer.and_then(|p| self.peers.remove(&p)) {
            let _ = peer.tx.try_send(Command::Close);
        }
    }

    /// Kills generation `n`: through its process handle if we spawned it, else by its verified pid.
    fn kill(&mut self, n: u64) {
        if let Some(kill) = self.children.remove(&n) {
            let _ = kill.send(());
        } else if let Some(pid) = self.generations.get_mut(&n).and_then(|g| g.pid.take()) {
            handoff::kill_pid(pid);
        }
    }

    fn kill_all(&mut self) {
        for kill in std::mem::take(&mut self.children).into_values() {
            let _ = kill.send(());
        }
        for g in self.generations.values_mut() {
            if let Some(pid) = g.pid.take() {
                handoff::kill_pid(pid);
            }
        }
        self.generations.clear();
    }

    fn active(&self) -> Option<u64> {
        self.generations
            .iter()
            .find(|(_, g)| g.state == State::Active)
            .map(|(n, _)| *n)
    }

    /// No generation serves and the last start failed: retry with backoff, or give up if the
    /// service never once became ready (a broken build should fail loudly, not loop).
    fn failed_start(&mut self, why: &str) {
        self.failures += 1;
        if self.stopping.is_some() || self.active().is_some() {
            return;
        }
        if !self.ever_ready && self.failures >= MAX_INITIAL_ATTEMPTS {
            tracing::error!(
                "no generation became ready after {} attempts (last: {why}); the front gives up",
                self.failures
            );
            self.exit_code = 1;
            self.stopping = Some(Instant::now());
            return;
        }
        let delay = respawn_delay(self.failures);
        tracing::info!(
            "no generation is serving; starting another in {} ms",
            delay.as_millis()
        );
        self.respawn_at = Some(Instant::now() + delay);
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.respawn_at.is_some_and(|t| t <= now) {
            self.respawn_at = None;
            if let Err(why) = self.spawn_generation("respawn") {
                tracing::warn!("respawn skipped: {why}");
            }
        }
        let expired: Vec<(u64, State)> = self
            .generations
            .iter()
            .filter(|(_, g)| g.deadline.is_some_and(|t| t <= now))
            .map(|(n, g)| (*n, g.state))
            .collect();
        for (n, state) in expired {
            if state == State::Starting {
                self.lost(
                    n,
                    &format!("not ready within {:?}", self.config.ready_timeout),
                    false,
                );
                continue;
            }
            let pid = self
                .generations
                .get(&n)
                .and_then(|g| g.pid)
                .unwrap_or_default();
            tracing::warn!(
                generation = n,
                pid,
                "generation {n} (pid {pid}) still running {:?} after it was told to stop: killing it",
                self.config.drain_timeout + DRAIN_SLACK
            );
            self.kill(n);
            if let Some(g) = self.generations.remove(&n) {
                self.close_peer(g.peer);
            }
            if self.stopping.is_some() {
                self.exit_code = 1;
            }
        }
        if let Some(deadline) = self.stopping
            && deadline <= now
            && !(self.generations.is_empty() && self.children.is_empty())
        {
            // Generations were told to stop and have their own deadlines; this only fires if
            // the front itself must not wait any longer.
            self.kill_all();
            self.exit_code = 1;
        }
    }

    /// SIGTERM/SIGINT: ask every generation to drain, wait for them (bounded), then exit.
    fn stop(&mut self, signal: &str) {
        if self.stopping.is_some() {
            tracing::warn!("second {signal}: killing the remaining generations");
            self.kill_all();
            self.exit_code = 1;
            return;
        }
        let deadline = Instant::now() + self.config.drain_timeout + DRAIN_SLACK;
        self.stopping = Some(deadline);
        self.respawn_at = None;
        tracing::info!(
            "front got {signal}: stopping {} generation(s)",
            self.generations.len()
        );
        let starting: Vec<u64> = self
            .generations
            .iter()
            .filter(|(_, g)| g.state == State::Starting)
            .map(|(n, _)| *n)
            .collect();
        for n in starting {
            self.lost(n, "the service is stopping", false);
        }
        for g in self.generations.values_mut() {
            g.deadline = Some(deadline);
            if let Some(p) = g.peer.and_then(|p| self.peers.get(&p)) {
                let _ = p.tx.try_send(Command::Send(Message::Shutdown));
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

fn respawn_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(100)
        .saturating_mul(1 << failures.min(16))
        .min(MAX_RESPAWN_DELAY)
}

fn refuse(tx: &mpsc::Sender<Command>, reason: &str) {
    let _ = tx.try_send(Command::Send(Message::Error {
        reason: reason.to_owned(),
    }));
    let _ = tx.try_send(Command::Close);
}

/// One control connection: verifies the peer, reads its Hello within the handshake deadline,
/// then relays frames both ways until either side ends it.
async fn serve_peer(
    peer: PeerId,
    stream: Stream,
    events: &mpsc::UnboundedSender<Event>,
    sockets: &[std::net::TcpListener],
    handshake: Duration,
) -> io::Result<()> {
    let verified = handoff::check_peer(&stream)?;
    let mut channel = Channel::new(stream, false);
    let hello = timeout(handshake, channel.recv()).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no hello within {handshake:?}"),
        )
    })??;
    let (pid, role) = match hello {
        Some(Message::Hello { pid, role, .. }) => (pid, role),
        Some(other) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected hello, got {other:?}"),
            ));
        }
        None => return Ok(()),
    };
    if verified.pid.is_some_and(|real| real != pid) {
        let reason = format!("claims pid {pid} but the kernel says {:?}", verified.pid);
        let _ = channel
            .send(&Message::Error {
                reason: reason.clone(),
            })
            .await;
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, reason));
    }
    let (tx, mut commands) = mpsc::channel(8);
    let _ = events.send(Event::Hello {
        peer,
        pid,
        role,
        tx,
    });
    // A control client must ask for something promptly; a generation may take its time to
    // warm up (the front's ready deadline covers it).
    let request_deadline = (role == Role::Control).then(|| Instant::now() + handshake);
    let mut asked = false;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::SendListeners(generation)) => {
                    timeout(handshake, channel.send_listeners(generation, sockets, pid))
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"))??;
                }
                Some(Command::Send(message)) => {
                    timeout(handshake, channel.send(&message))
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"))??;
                }
                Some(Command::Close) | None => return Ok(()),
            },
            message = channel.recv() => match message? {
                Some(Message::Ready) if role == Role::Generation && !asked => {
                    asked = true;
                    let _ = events.send(Event::Ready { peer });
                }
                Some(Message::Upgrade) if role == Role::Control && !asked => {
                    asked = true;
                    let _ = events.send(Event::Upgrade { peer });
                }
                Some(other) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected {other:?} from a {role:?} peer"),
                    ));
                }
                None => return Ok(()),
            },
            _ = sleep_until(request_deadline.unwrap_or_else(far_future)), if request_deadline.is_some() && !asked => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("control client sent no request within {handshake:?}"),
                ));
            }
        }
    }
}
