//! The front: the first process of a service. It binds the listening sockets once, keeps them
//! for its whole life, and runs the upgrade state machine. It runs no request handlers, so app
//! changes never need a new front and its PID stays stable for supervisors.
//!
//! This file is the I/O shell: sockets, child processes, signals and timers. It turns what
//! happens into [`machine::Input`]s and performs the [`machine::Action`]s that come back;
//! every decision is in [`machine`]. Each control peer gets its own task ([`peer`]), so no
//! peer, however slow or hostile, can block the front, and a generation the front spawns
//! gets its control channel pre-connected, so no crowd of peers on the public endpoint can
//! keep it out.

mod machine;
mod peer;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::{Instant, sleep_until};

use self::machine::{Action, Gen, Input, Machine, PeerId, Timeouts};
use self::peer::{Command, Event, PeerContext};
use crate::config::{Config, deadline_after};
use crate::handoff::{self, ControlListener, Endpoint, FrontLock, ProcessHandle, Stream};
use crate::net::{Target, bind_target};
use crate::socket::Socket;

/// Control connections on the public endpoint served at once. When all are taken, the oldest
/// that has not said Hello yet makes room; pre-connected generations do not count.
const MAX_PEERS: usize = 64;
/// How long accepting on the control endpoint pauses after an accept error (out of
/// descriptors, most likely), instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How long a new process waits for the port when the generations of a killed front are
/// still closing it.
const ADDR_IN_USE_RETRY: Duration = Duration::from_secs(3);

/// Becomes the front of the service: binds, spawns generation 1, and runs until told to stop.
/// Returns only start-up errors; otherwise the process exits from here.
pub(crate) async fn run(
    config: Config,
    addrs: Vec<Target>,
    endpoint: Endpoint,
    lock: FrontLock,
) -> io::Result<Infallible> {
    // Socket files this front creates (not those systemd passed: a socket unit's file must
    // outlive the service), removed when it stops.
    #[cfg_attr(windows, allow(unused_mut))]
    let mut files: Vec<crate::net::SocketFile> = Vec::new();
    let started = async {
        let (exe, args) = startup_command()?;
        // Sockets systemd passed (socket activation) are used for the addresses they match.
        let mut activated = handoff::activated_listeners()?;
        let mut sockets = Vec::with_capacity(addrs.len());
        for target in &addrs {
            let passed = activated.iter().position(|(listener, _)| {
                listener
                    .local_addr()
                    .is_some_and(|addr| target.matches(&addr))
            });
            if let Some(i) = passed {
                let (listener, name) = activated.remove(i);
                tracing::info!("using the socket systemd passed for {target} ({name:?})");
                sockets.push(listener);
                continue;
            }
            let socket = bind_retrying(target, config.unix_mode)
                .await
                .map_err(|e| explain_bind_error(e, target, &config.name, &endpoint))?;
            #[cfg(unix)]
            if let Target::Unix(path) = target {
                files.extend(crate::net::SocketFile::of(path));
            }
            sockets.push(socket);
        }
        crate::systemd::store_listeners(&sockets);
        for (listener, name) in activated {
            tracing::warn!(
                "systemd passed a socket for {:?} ({name:?}), which matches none of the addresses given to bind; it is not used",
                listener.local_addr()
            );
        }
        let control = endpoint.listen(&lock)?;
        Ok::<_, io::Error>((exe, args, sockets, control))
    };
    let (exe, args, sockets, control) = match started.await {
        Ok(started) => started,
        Err(e) => {
            // Nothing of a front that never started is left behind.
            for file in &files {
                file.remove();
            }
            endpoint.remove();
            drop(lock);
            return Err(e);
        }
    };
    let addresses: Vec<_> = sockets.iter().filter_map(Socket::local_addr).collect();
    tracing::info!(
        pid = std::process::id(),
        addresses = ?addresses,
        control = %endpoint,
        "front started for service {:?}",
        config.name
    );
    let code = Front::new(config, exe, args, sockets, &endpoint)
        .run(control)
        .await;
    endpoint.remove();
    for file in &files {
        file.remove();
    }
    drop(lock);
    std::process::exit(code)
}

/// Binds, retrying briefly while the port (or socket file) is still held: after a front is
/// killed, its generations close their copies of the sockets as they notice.
async fn bind_retrying(target: &Target, unix_mode: Option<u32>) -> io::Result<Socket> {
    let deadline = Instant::now() + ADDR_IN_USE_RETRY;
    // Each try at a Unix socket path probes whoever holds it with a connection: back off, so a
    // foreign server sees about ten, not sixty.
    let mut pause = Duration::from_millis(50);
    loop {
        match bind_target(target, unix_mode).await {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(400));
            }
            other => return other,
        }
    }
}

/// Starts `command`. Wine (the Windows test bed) now and then fails a process creation with
/// `ERROR_INTERNAL_ERROR` (1359) while many processes come and go; a failed start would be a
/// rollback, so that one error is retried briefly. Elsewhere this is a plain spawn.
fn spawn_retrying(command: &mut tokio::process::Command) -> io::Result<tokio::process::Child> {
    const INTERNAL_ERROR: i32 = 1359;
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Err(e) if cfg!(windows) && e.raw_os_error() == Some(INTERNAL_ERROR) && attempts < 3 => {
                attempts += 1;
                tracing::debug!("process creation failed ({e}); retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// An address in use is most often another risefront service of this user, on the same
/// address but with another name (another program): say which, and how to join it on purpose.
fn explain_bind_error(e: io::Error, target: &Target, ours: &str, endpoint: &Endpoint) -> io::Error {
    if e.kind() != io::ErrorKind::AddrInUse {
        return e;
    }
    let part = crate::config::derive_addrs_name(&[target.named()]);
    let holder = endpoint
        .other_services()
        .into_iter()
        .find(|name| name != ours && name.contains(&part));
    let message = match holder {
        Some(other) => format!(
            "risefront: {target} is in use by risefront service {other:?} of this user, not by this program's service {ours:?}: to upgrade that service, start a program of the same file name, or give both programs the same Builder::name"
        ),
        None => match target {
            Target::Tcp(_) => format!("risefront: {target} is in use by another program: {e}"),
            // The binding already said what holds it.
            #[cfg(unix)]
            Target::Unix(_) => e.to_string(),
        },
    };
    io::Error::new(io::ErrorKind::AddrInUse, message)
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

/// A connection the shell tracks, from accept (or spawn) until its task ends.
struct PeerSlot {
    tx: mpsc::Sender<Command>,
    said_hello: bool,
    /// The spawned generation whose inherited channel this is: never evicted, never counted.
    preconnected: Option<Gen>,
    task: AbortHandle,
}

struct Front<'a> {
    config: Config,
    exe: PathBuf,
    args: Vec<OsString>,
    /// The listening sockets, shared with the peer tasks that hand them over; emptied (so
    /// closed) when the service stops.
    sockets: Arc<RwLock<Vec<Socket>>>,
    endpoint: &'a Endpoint,
    machine: Machine,
    peers: BTreeMap<PeerId, PeerSlot>,
    next_peer: PeerId,
    /// Spawned processes not reaped yet: sending on the channel kills one.
    children: BTreeMap<Gen, oneshot::Sender<()>>,
    /// Generations started by hand, held since their pid was verified.
    handles: BTreeMap<Gen, ProcessHandle>,
    /// The handle that came with a Hello, until the machine says which generation it is.
    hello_handles: BTreeMap<PeerId, ProcessHandle>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    exits_tx: mpsc::UnboundedSender<(Gen, String, bool)>,
    exits: mpsc::UnboundedReceiver<(Gen, String, bool)>,
    /// Silent peers dropped to make room, for the log.
    evicted: u64,
    exit: Option<i32>,
}

impl<'a> Front<'a> {
    fn new(
        config: Config,
        exe: PathBuf,
        args: Vec<OsString>,
        sockets: Vec<Socket>,
        endpoint: &'a Endpoint,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let machine = Machine::new(
            Timeouts {
                ready: config.ready_timeout,
                drain: config.drain_timeout,
                probation: config.probation,
            },
            config.stop_delay,
        );
        Front {
            config,
            exe,
            args,
            sockets: Arc::new(RwLock::new(sockets)),
            endpoint,
            machine,
            peers: BTreeMap::new(),
            next_peer: 0,
            children: BTreeMap::new(),
            handles: BTreeMap::new(),
            hello_handles: BTreeMap::new(),
            events_tx,
            events,
            exits_tx,
            exits,
            evicted: 0,
            exit: None,
        }
    }

    async fn run(mut self, mut control: ControlListener) -> i32 {
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
        self.feed(Input::Start);
        let mut accept_paused_until: Option<Instant> = None;
        loop {
            if let Some(code) = self.exit {
                return code;
            }
            let now = Instant::now();
            if accept_paused_until.is_some_and(|t| t <= now) {
                accept_paused_until = None;
            }
            // The accept pause is a deadline like the machine's: with nothing else pending,
            // accepting must still resume on time.
            let wake = self
                .machine
                .next_deadline()
                .into_iter()
                .chain(accept_paused_until)
                .min();
            tokio::select! {
                accepted = control.accept(), if accept_paused_until.is_none() => match accepted {
                    Ok(stream) => self.admit(stream),
                    Err(e) => {
                        tracing::warn!("control endpoint accept failed: {e}; pausing {ACCEPT_PAUSE:?}");
                        accept_paused_until = Some(deadline_after(Instant::now(), ACCEPT_PAUSE));
                    }
                },
                Some(event) = self.events.recv() => self.on_event(event),
                Some((generation, status, success)) = self.exits.recv() => {
                    self.children.remove(&generation);
                    self.feed(Input::Exited { generation, status, success });
                }
                _ = hangup.recv() => self.feed(Input::Hangup),
                signal = terminate.recv() => self.feed(Input::Terminate { signal }),
                _ = sleep_until(wake.unwrap_or(now)), if wake.is_some() => self.feed(Input::Tick),
            }
        }
    }

    /// Gives the machine one input and performs what it decides, including the inputs those
    /// actions produce (a spawn reports its pid or its failure at once).
    fn feed(&mut self, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            for action in self.machine.handle(Instant::now(), input) {
                if let Some(next) = self.perform(action) {
                    queue.push_back(next);
                }
            }
        }
        self.hello_handles.clear();
        let machine = &self.machine;
        self.handles.retain(|n, _| machine.has_generation(*n));
    }

    fn perform(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::Spawn(generation) => Some(self.spawn(generation)),
            Action::SendListeners { peer, generation } => {
                if let Some(handle) = self.hello_handles.remove(&peer) {
                    self.handles.insert(generation, handle);
                }
                self.command(peer, Command::SendListeners(generation))
            }
            Action::Send { peer, message } => self.command(peer, Command::Send(message)),
            Action::Close(peer) => {
                if let Some(slot) = self.peers.remove(&peer)
                    && slot.tx.try_send(Command::Close).is_err()
                {
                    slot.task.abort();
                }
                None
            }
            Action::Kill(generation) => {
                if let Some(kill) = self.children.remove(&generation) {
                    let _ = kill.send(());
                } else if let Some(handle) = self.handles.remove(&generation)
                    && let Err(e) = handle.kill()
                {
                    tracing::warn!(generation, "cannot kill generation {generation}: {e}");
                }
                None
            }
            Action::Notify(event) => {
                crate::systemd::notify(&event);
                None
            }
            Action::CloseListeners => {
                self.sockets
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                None
            }
            Action::Exit(code) => {
                self.exit = Some(code);
                None
            }
        }
    }

    /// Queues a command for a peer task; a peer that cannot take it is gone for the machine.
    fn command(&mut self, peer: PeerId, command: Command) -> Option<Input> {
        let slot = self.peers.get(&peer)?;
        if slot.tx.try_send(command).is_ok() {
            return None;
        }
        slot.task.abort();
        self.peers.remove(&peer);
        Some(Input::PeerGone {
            peer,
            why: "its control connection is not writable".to_owned(),
        })
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Hello {
                peer,
                pid,
                role,
                timeouts,
                handle,
            } => {
                // A peer evicted after its Hello was sent but before it was read is gone.
                let Some(slot) = self.peers.get_mut(&peer) else {
                    return;
                };
                slot.said_hello = true;
                let preconnected = slot.preconnected;
                tracing::debug!(
                    peer,
                    pid,
                    ?role,
                    "control peer {peer} (pid {pid}) said hello"
                );
                if let Some(handle) = handle {
                    if let Some(exe) = handle.executable() {
                        tracing::info!(
                            pid,
                            "a generation started by hand: pid {pid} runs {}",
                            exe.display()
                        );
                    }
                    self.hello_handles.insert(peer, handle);
                }
                self.feed(Input::Hello {
                    peer,
                    pid,
                    role,
                    timeouts,
                    preconnected,
                });
            }
            Event::Ready { peer } => self.feed(Input::Ready { peer }),
            Event::Upgrade { peer } => self.feed(Input::UpgradeRequested { peer }),
            Event::StopRequested { peer } => self.feed(Input::StopRequested { peer }),
            Event::SteppedAside { peer } => self.feed(Input::SteppedAside { peer }),
            Event::Gone { peer, why } => {
                self.peers.remove(&peer);
                self.feed(Input::PeerGone { peer, why });
            }
        }
    }

    /// Admits a connection from the public endpoint, making room if every slot is taken.
    fn admit(&mut self, stream: Stream) {
        let open = self
            .peers
            .values()
            .filter(|p| p.preconnected.is_none())
            .count();
        if open >= MAX_PEERS {
            // Peer ids grow with age, so the first silent one is the oldest.
            let oldest_silent = self
                .peers
                .iter()
                .find(|(_, p)| p.preconnected.is_none() && !p.said_hello)
                .map(|(id, _)| *id);
            match oldest_silent {
                Some(id) => {
                    if let Some(slot) = self.peers.remove(&id) {
                        slot.task.abort();
                    }
                    self.evicted += 1;
                    if self.evicted.is_power_of_two() {
                        tracing::warn!(
                            "{MAX_PEERS} control connections open on {}; dropped the oldest that had not said hello ({} so far)",
                            self.endpoint,
                            self.evicted
                        );
                    }
                }
                None => {
                    let reason = format!(
                        "the front at {} already serves {MAX_PEERS} control connections (its limit), all of them introduced; try again shortly",
                        self.endpoint
                    );
                    tracing::warn!("turned a control connection away: {reason}");
                    tokio::spawn(peer::turn_away(
                        stream,
                        reason,
                        self.config.handshake_timeout,
                    ));
                    return;
                }
            }
        }
        self.start_peer(stream, None);
    }

    fn start_peer(&mut self, stream: Stream, preconnected: Option<Gen>) -> PeerId {
        let peer = self.next_peer;
        self.next_peer += 1;
        let (tx, commands) = mpsc::channel(8);
        let cx = PeerContext {
            events: self.events_tx.clone(),
            sockets: Arc::clone(&self.sockets),
            handshake: self.config.handshake_timeout,
        };
        let task = tokio::spawn(peer::run(peer, stream, preconnected, commands, cx)).abort_handle();
        self.peers.insert(
            peer,
            PeerSlot {
                tx,
                said_hello: false,
                preconnected,
                task,
            },
        );
        peer
    }

    /// Starts generation `n` by running this program again, with its control channel
    /// pre-connected.
    fn spawn(&mut self, n: Gen) -> Input {
        match self.try_spawn(n) {
            Ok(pid) => Input::Spawned { generation: n, pid },
            Err(e) => Input::SpawnFailed {
                generation: n,
                why: format!("cannot run {}: {e}", self.exe.display()),
            },
        }
    }

    fn try_spawn(&mut self, n: Gen) -> io::Result<u32> {
        let (ours, theirs) = handoff::child_channel(self.endpoint)?;
        let mut command = tokio::process::Command::new(&self.exe);
        // Only the front talks to systemd (`NotifyAccess=main`).
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .env_remove(crate::systemd::NOTIFY_SOCKET)
            // The activated sockets were the front's; a generation gets them from the front.
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES");
        let spawned = {
            // Held until the spawn returned; then the front keeps only its own end.
            let _inherited = theirs.attach(&mut command)?;
            spawn_retrying(&mut command)
        };
        let mut child = spawned?;
        let pid = child.id().unwrap_or_default();
        let (kill, killed) = oneshot::channel::<()>();
        self.children.insert(n, kill);
        let exits = self.exits_tx.clone();
        tokio::spawn(async move {
            // The child stays unreaped until this wait returns, so its pid cannot be reused
            // before a kill sent through `child` lands.
            let status = tokio::select! {
                status = child.wait() => status,
                Ok(()) = killed => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let (status, success) = match status {
                Ok(s) => (s.to_string(), s.success()),
                Err(e) => (format!("unknown status ({e})"), false),
            };
            let _ = exits.send((n, status, success));
        });
        self.start_peer(ours, Some(n));
        Ok(pid)
    }
}
