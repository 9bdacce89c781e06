//! The front: the first process of a service. It binds the listening sockets once, keeps them
//! for its whole life, and runs the upgrade state machine. It runs no request handlers, so app
//! changes never need a new front and its PID stays stable for supervisors. When its own code
//! must change (a release with another control protocol, or its own fixes), it re-executes
//! itself into the newer build, same pid, sockets and generations ([`reexec`], Unix).
//!
//! This file is the I/O shell: sockets, child processes, signals and timers. It turns what
//! happens into [`machine::Input`]s and performs the [`machine::Action`]s that come back;
//! every decision is in [`machine`]. Each control peer gets its own task ([`peer`]), so no
//! peer, however slow or hostile, can block the front, and a generation the front spawns
//! gets its control channel pre-connected, so no crowd of peers on the public endpoint can
//! keep it out.

mod listeners;
mod machine;
mod orphans;
mod peer;
#[cfg(unix)]
mod reexec;
mod tail;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::{Instant, sleep_until};

use self::listeners::Listeners;
use self::machine::{Action, Gen, Input, Machine, PeerId, Snapshot, Timeouts};
use self::peer::{Command, Event, PeerContext};
use self::tail::Tail;
use crate::config::{Config, deadline_after};
use crate::error::BindError;
use crate::handoff::{self, ControlListener, Endpoint, FrontLock, ProcessHandle, Stream};
use crate::net::{Target, bind_target};
use crate::protocol::{Message, Program, STDERR_TAIL};
use crate::socket::Socket;
use crate::systemd::Supervisor;

/// How long a spawned generation's exit waits for the last of its stderr to be read.
const TAIL_WAIT: Duration = Duration::from_millis(500);
/// Control connections on the public endpoint served at once. When all are taken, the oldest
/// that has not said Hello yet makes room; pre-connected generations do not count.
const MAX_PEERS: usize = 64;
/// How long accepting on the control endpoint pauses after an accept error (out of
/// descriptors, most likely), instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How long it pauses when an accept failed for lack of descriptors and a silent peer was
/// dropped to make room: just long enough for that peer's task to close its connection.
const ROOM_PAUSE: Duration = Duration::from_millis(10);
/// Silent peers dropped when a spawn fails for lack of descriptors: a spawn needs a few (the
/// control channel pair, std's pipes), and the new generation's listeners a few more.
const ROOM_FOR_SPAWN: usize = 8;
/// How many times a spawn is tried when it fails for a reason that passes: no descriptor left
/// (after making room), or Wine's `ERROR_INTERNAL_ERROR` (1359) while many processes come
/// and go. Tried again from the event loop's timer, never by sleeping on the runtime.
const SPAWN_ATTEMPTS: u32 = 4;
const SPAWN_RETRY: Duration = Duration::from_millis(50);
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
    // The sockets, with the socket files this front creates (not those systemd passed: a
    // socket unit's file must outlive the service), removed when it stops.
    let mut initial: Vec<(Target, Socket, Option<crate::net::SocketFile>)> = Vec::new();
    let started = async {
        let own = Program::of_this_process()?;
        // Sockets systemd passed (socket activation) are used for the addresses they match.
        let mut activated = handoff::activated_listeners()?;
        for target in &addrs {
            let passed = activated.iter().position(|(listener, _)| {
                listener
                    .local_addr()
                    .is_some_and(|addr| target.matches(&addr))
            });
            if let Some(i) = passed {
                let (listener, name) = activated.remove(i);
                tracing::info!("using the socket systemd passed for {target} ({name:?})");
                initial.push((target.clone(), listener, None));
                continue;
            }
            let socket = bind_retrying(target, config.unix_mode)
                .await
                .map_err(|e| explain_bind_error(e, target, &config.name, &endpoint))?;
            initial.push((target.clone(), socket, socket_file(target)));
        }
        let sockets: Vec<Socket> = initial
            .iter()
            .map(|(_, socket, _)| socket.try_clone())
            .collect::<io::Result<_>>()?;
        crate::systemd::store_listeners(&sockets);
        for (listener, name) in activated {
            tracing::warn!(
                "systemd passed a socket for {:?} ({name:?}), which matches none of the addresses given to bind; it is not used",
                listener.local_addr()
            );
        }
        let control = endpoint.listen(&lock)?;
        Ok::<_, io::Error>((own, control))
    };
    let (own, control) = match started.await {
        Ok(started) => started,
        Err(e) => {
            // Nothing of a front that never started is left behind.
            for file in initial.iter().filter_map(|(_, _, file)| file.as_ref()) {
                file.remove();
            }
            endpoint.remove();
            drop(lock);
            return Err(e);
        }
    };
    let listeners = Arc::new(Mutex::new(Listeners::new(initial)));
    let addresses = lock_listeners(&listeners).addresses();
    tracing::info!(
        pid = std::process::id(),
        addresses = ?addresses,
        control = %endpoint,
        "front started for service {:?}",
        config.name
    );
    let code = Front::new(config, own, Arc::clone(&listeners), &endpoint, &lock)
        .run(control, None)
        .await;
    endpoint.remove();
    lock_listeners(&listeners).remove_files();
    drop(lock);
    std::process::exit(code)
}

/// Goes on as the front if this process is a front that re-executed itself into this build
/// (see [`reexec`]): never returns then. Returns at once otherwise.
pub(crate) async fn resume_if_reexecuted(config: &Config) -> io::Result<()> {
    #[cfg(unix)]
    if let Some(state) = reexec::take()? {
        match reexec::resume(config.clone(), state).await? {}
    }
    #[cfg(not(unix))]
    let _ = config;
    Ok(())
}

/// The socket file the front creates for a Unix address, to remove when the socket closes.
fn socket_file(target: &Target) -> Option<crate::net::SocketFile> {
    match target {
        #[cfg(unix)]
        Target::Unix(path) => crate::net::SocketFile::of(path),
        Target::Tcp(_) => None,
    }
}

/// The deadlines generations get until their Hello says otherwise.
fn timeouts(config: &Config) -> Timeouts {
    Timeouts {
        ready: config.ready_timeout,
        drain: config.drain_timeout,
        probation: config.probation,
    }
}

/// The registry, whatever a panicking holder left it as (it holds no invariant a panic could
/// break halfway).
fn lock_listeners(listeners: &Mutex<Listeners>) -> std::sync::MutexGuard<'_, Listeners> {
    listeners.lock().unwrap_or_else(|e| e.into_inner())
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

/// Wine (the Windows test bed) now and then fails a process creation with
/// `ERROR_INTERNAL_ERROR` (1359) while many processes come and go: worth another try.
fn spawn_glitch(e: &io::Error) -> bool {
    const INTERNAL_ERROR: i32 = 1359;
    cfg!(windows) && e.raw_os_error() == Some(INTERNAL_ERROR)
}

/// An address in use is most often another risefront service of this user: on the same
/// address with another name (another program, or this one with other addresses), or on the
/// same port of another IP (`0.0.0.0:8080` against `127.0.0.1:8080`). Say which, and how to
/// join it on purpose.
fn explain_bind_error(e: io::Error, target: &Target, ours: &str, endpoint: &Endpoint) -> io::Error {
    if e.kind() != io::ErrorKind::AddrInUse {
        return e;
    }
    let part = crate::config::derive_addrs_name(&[target.named()]);
    let others: Vec<String> = endpoint
        .other_services()
        .into_iter()
        .filter(|name| name != ours)
        .collect();
    let holder = others.iter().find(|name| name.contains(&part)).or_else(|| {
        let port = target.tcp_port()?;
        others.iter().find(|name| holds_port(name, port))
    });
    match holder {
        Some(service) => {
            let program = crate::config::program_name();
            let prefix = format!("{program}-");
            BindError::InUseByService {
                address: target.to_string(),
                service: service.clone(),
                ours: ours.to_owned(),
                same_program: !program.is_empty()
                    && ours.starts_with(&prefix)
                    && service.starts_with(&prefix),
            }
            .into()
        }
        None => {
            // A front elsewhere (under systemd, in another control directory, of another
            // user) is worth naming with the way to reach it; anything else, the binding
            // already said.
            let ours = std::path::PathBuf::from(endpoint.to_string());
            match target
                .tcp_port()
                .and_then(|port| crate::holder::of_port(port, Some(&ours)))
            {
                Some(holder) => BindError::InUseElsewhere {
                    address: target.to_string(),
                    holder: Box::new(holder),
                    source: os_error(e),
                }
                .into(),
                None => e,
            }
        }
    }
}

/// The system's own error inside a binding error that already explained it, so that the
/// explanation is not said twice.
fn os_error(e: io::Error) -> io::Error {
    let raw = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<BindError>())
        .and_then(|bind| match bind {
            BindError::AddressInUse { source, .. } => source.raw_os_error(),
            _ => None,
        });
    raw.map_or(e, io::Error::from_raw_os_error)
}

/// Whether a derived service name lists a TCP address on `port` (`..._8080`, followed by the
/// end, another address or a suffix).
fn holds_port(name: &str, port: u16) -> bool {
    let needle = format!("_{port}");
    name.match_indices(&needle).any(|(at, _)| {
        let rest = &name[at + needle.len()..];
        rest.is_empty() || rest.starts_with('_') || rest.starts_with('-')
    })
}

/// A connection the shell tracks, from accept (or spawn) until its task ends.
struct PeerSlot {
    tx: mpsc::Sender<Command>,
    said_hello: bool,
    /// The verified pid from its Hello.
    pid: Option<u32>,
    /// The program it runs, from its Hello (generations only).
    program: Option<Program>,
    /// The spawned generation whose inherited channel this is: never evicted, never counted.
    preconnected: Option<Gen>,
    task: AbortHandle,
}

struct Front<'a> {
    config: Config,
    /// What the front itself was started as: what it starts until a generation says what it
    /// runs, and when that program is gone.
    own: Program,
    /// What the generation serving now (or last) runs, as it said in its Hello: the newest
    /// build, which respawns and upgrades start.
    serving: Option<Program>,
    /// The listening sockets, shared with the peer tasks that bind and hand them over; emptied
    /// (so closed) when the service stops.
    sockets: Arc<Mutex<Listeners>>,
    endpoint: &'a Endpoint,
    /// The service's lock, which a re-exec carries.
    #[cfg(unix)]
    lock: &'a FrontLock,
    machine: Machine,
    peers: BTreeMap<PeerId, PeerSlot>,
    next_peer: PeerId,
    /// Spawned processes not reaped yet: sending on the channel kills one.
    children: BTreeMap<Gen, oneshot::Sender<()>>,
    /// The pids of the generations we spawned and have not seen exit: never reaped as
    /// orphans.
    child_pids: BTreeMap<Gen, u32>,
    /// The last lines each spawned generation wrote to stderr before it was ready, until its
    /// exit was reported: what a failed upgrade's answer adds.
    tails: BTreeMap<Gen, Arc<Mutex<Tail>>>,
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
    /// A spawn that failed for a reason that passes: its generation, the attempts so far, and
    /// when to try again.
    spawn_retry: Option<(Gen, u32, Instant)>,
    /// What control clients asked the front to re-execute into, until answered.
    reexec_programs: BTreeMap<PeerId, Option<Program>>,
    /// A re-exec the machine decided, for the loop to perform once the event at hand is done.
    reexec: Option<Snapshot>,
    /// The program of each generation the front spawned, and the one a spawned build of the
    /// next protocol runs: what the front re-executes into for it.
    spawned_programs: BTreeMap<Gen, Program>,
    newer_program: Option<Program>,
    /// A copy of the read end of each spawned generation's stderr pipe, to carry across a
    /// re-exec: a process it started before ready may still write there.
    #[cfg(unix)]
    stderr_copies: BTreeMap<Gen, std::os::fd::OwnedFd>,
    exit: Option<i32>,
}

impl<'a> Front<'a> {
    fn new(
        config: Config,
        own: Program,
        sockets: Arc<Mutex<Listeners>>,
        endpoint: &'a Endpoint,
        lock: &'a FrontLock,
    ) -> Self {
        #[cfg(not(unix))]
        let _ = lock;
        let (events_tx, events) = mpsc::unbounded_channel();
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let machine = Machine::new(timeouts(&config), config.stop_delay);
        Front {
            config,
            own,
            serving: None,
            sockets,
            endpoint,
            #[cfg(unix)]
            lock,
            machine,
            peers: BTreeMap::new(),
            next_peer: 0,
            children: BTreeMap::new(),
            child_pids: BTreeMap::new(),
            tails: BTreeMap::new(),
            handles: BTreeMap::new(),
            hello_handles: BTreeMap::new(),
            events_tx,
            events,
            exits_tx,
            exits,
            evicted: 0,
            spawn_retry: None,
            reexec_programs: BTreeMap::new(),
            reexec: None,
            spawned_programs: BTreeMap::new(),
            newer_program: None,
            #[cfg(unix)]
            stderr_copies: BTreeMap::new(),
            exit: None,
        }
    }

    /// Runs the front until it exits: from its first start (`resumed` is `None`), or from the
    /// actions a resumed machine began with.
    async fn run(mut self, mut control: ControlListener, resumed: Option<Vec<Action>>) -> i32 {
        let mut terminate = match crate::signal::Terminate::new() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("cannot listen for termination signals: {e}");
                return 1;
            }
        };
        let mut orphans = orphans::Orphans::new();
        let mut hangup = match crate::signal::Hangup::new() {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP: {e}");
                return 1;
            }
        };
        // Blocked across a re-exec until the handlers above were installed; a no-op otherwise.
        #[cfg(unix)]
        if let Err(e) = handoff::unblock_signals() {
            tracing::warn!("cannot unblock SIGHUP, SIGTERM and SIGINT: {e}");
        }
        match resumed {
            None => self.feed(Input::Start),
            Some(actions) => self.perform_all(actions),
        }
        let mut accept_paused_until: Option<Instant> = None;
        loop {
            if let Some(code) = self.exit {
                return code;
            }
            let now = Instant::now();
            if accept_paused_until.is_some_and(|t| t <= now) {
                accept_paused_until = None;
            }
            if let Some((n, attempts, at)) = self.spawn_retry
                && at <= now
            {
                self.spawn_retry = None;
                if let Some(input) = self.spawn(n, attempts) {
                    self.feed(input);
                }
                continue;
            }
            // The accept pause and a spawn's next try are deadlines like the machine's: with
            // nothing else pending, they must still come on time.
            let wake = self
                .machine
                .next_deadline()
                .into_iter()
                .chain(accept_paused_until)
                .chain(self.spawn_retry.map(|(_, _, at)| at))
                .min();
            tokio::select! {
                accepted = control.accept(), if accept_paused_until.is_none() => match accepted {
                    Ok(stream) => self.admit(stream),
                    Err(e) => {
                        // Out of descriptors, the oldest peer that said nothing makes room: a
                        // crowd of silent connections must not lock out every upgrade.
                        let pause = if handoff::out_of_descriptors(&e) && self.evict_silent(1) > 0 {
                            ROOM_PAUSE
                        } else {
                            ACCEPT_PAUSE
                        };
                        tracing::warn!("control endpoint accept failed: {e}; pausing {pause:?}");
                        accept_paused_until = Some(deadline_after(Instant::now(), pause));
                    }
                },
                Some(event) = self.events.recv() => self.on_event(event),
                Some((generation, status, success)) = self.exits.recv() => {
                    self.children.remove(&generation);
                    self.child_pids.remove(&generation);
                    self.spawned_programs.remove(&generation);
                    #[cfg(unix)]
                    self.stderr_copies.remove(&generation);
                    self.feed(Input::Exited { generation, status, success });
                    self.tails.remove(&generation);
                }
                _ = hangup.recv() => self.feed(Input::Hangup),
                () = orphans.changed() => {
                    let ours = &self.child_pids;
                    orphans.reap(|pid| ours.values().any(|p| *p == pid));
                }
                signal = terminate.recv() => self.feed(Input::Terminate { signal }),
                _ = sleep_until(wake.unwrap_or(now)), if wake.is_some() => self.feed(Input::Tick),
            }
            // After the event that decided it; tried again (when something happened meanwhile)
            // only after one more event, so that what happened is heard first.
            if let Some(snapshot) = self.reexec.take() {
                let failed = self.reexec_now(snapshot, &control).await;
                self.feed(failed);
            }
        }
    }

    /// A status that says who serves also says which build that is (`systemctl status`
    /// shows it): the program the serving generation runs, as it said in its Hello.
    fn naming_the_build(&self, event: Supervisor) -> Supervisor {
        let program = self
            .machine
            .active_peer()
            .and_then(|peer| self.peers.get(&peer))
            .and_then(|slot| slot.program.as_ref());
        let Some(program) = program else {
            return event;
        };
        // The front's own build too when it is another one (until an upgrade that needs it
        // re-executes the front): which risefront answers `risefrontctl` and upgrades.
        let front = if program.exe == self.own.exe {
            String::new()
        } else {
            format!(" (the front runs {})", self.own.exe.display())
        };
        let with_build =
            |status: String| format!("{status}; runs {}{front}", program.exe.display());
        match event {
            Supervisor::Ready { status } => Supervisor::Ready {
                status: with_build(status),
            },
            Supervisor::Status { status } => Supervisor::Status {
                status: with_build(status),
            },
            other => other,
        }
    }

    /// Gives the machine one input and performs what it decides, including the inputs those
    /// actions produce (a spawn reports its pid or its failure at once).
    fn feed(&mut self, input: Input) {
        self.settle(VecDeque::from([input]), Vec::new());
    }

    /// Performs actions the machine decided outside [`Machine::handle`] (a resumed machine's
    /// first), then as [`Front::feed`].
    fn perform_all(&mut self, actions: Vec<Action>) {
        self.settle(VecDeque::new(), actions);
    }

    fn settle(&mut self, mut queue: VecDeque<Input>, first: Vec<Action>) {
        for action in first {
            if let Some(next) = self.perform(action) {
                queue.push_back(next);
            }
        }
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
        lock_listeners(&self.sockets)
            .release(|n| machine.has_generation(n), machine.active_generation());
        // Whoever serves now is the build to start next; once it is gone (a crash), the last
        // one that served still is.
        if let Some(program) = self
            .machine
            .active_peer()
            .and_then(|peer| self.peers.get(&peer))
            .and_then(|slot| slot.program.as_ref())
            && self.serving.as_ref() != Some(program)
        {
            tracing::info!(
                "upgrades and respawns now start {} (what generation {} runs)",
                program.exe.display(),
                self.machine.active_generation().unwrap_or_default()
            );
            self.serving = Some(program.clone());
        }
    }

    /// What the next generation runs: what the serving generation runs if its file is still
    /// there, else the front's own program.
    fn program_to_start(&self) -> &Program {
        match &self.serving {
            Some(serving) if serving.exe.is_file() => serving,
            Some(serving) => {
                tracing::warn!(
                    "{} (what the serving generation runs) is gone; starting {} (the front's own program) instead",
                    serving.exe.display(),
                    self.own.exe.display()
                );
                &self.own
            }
            None => &self.own,
        }
    }

    fn perform(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::Spawn(generation) => self.spawn(generation, 0),
            Action::SendListeners { peer, generation } => {
                if let Some(handle) = self.hello_handles.remove(&peer) {
                    self.handles.insert(generation, handle);
                }
                self.command(peer, Command::SendListeners(generation))
            }
            Action::Send { peer, message } => self.command(peer, Command::Send(message)),
            Action::Failed {
                peer,
                generation,
                reason,
            } => {
                let reason = self.with_stderr_of(generation, reason);
                self.command(peer, Command::Send(Message::Error { reason }))
            }
            Action::Introduce { from, to } => self.introduce(from, to),
            Action::Close(peer) => {
                if let Some(slot) = self.peers.remove(&peer)
                    && slot.tx.try_send(Command::Close).is_err()
                {
                    slot.task.abort();
                }
                None
            }
            Action::Kill(generation) => {
                if self
                    .spawn_retry
                    .take_if(|(n, _, _)| *n == generation)
                    .is_some()
                {
                    // Never started: nothing to kill, and no exit to wait for.
                    return Some(Input::SpawnFailed {
                        generation,
                        why: "killed before it could be started".to_owned(),
                    });
                }
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
                crate::systemd::notify(&self.naming_the_build(event));
                None
            }
            Action::CloseListeners => {
                lock_listeners(&self.sockets).close_all();
                None
            }
            Action::Exit(code) => {
                self.exit = Some(code);
                None
            }
            Action::ReExec(snapshot) => {
                self.reexec = Some(snapshot);
                None
            }
        }
    }

    /// Introduces the generation on `from` to the one on `to`, which took over, so that `from`
    /// hands its idle connections to `to` directly: on Unix each gets one end of a fresh socket
    /// pair; on Windows both get the name of a private pipe, which `to` creates and `from`
    /// connects to. The front never sees those connections: it only introduces the two (it
    /// verified both), so neither its memory nor its descriptors grow with the clients, and a
    /// front that dies meanwhile loses none of them.
    ///
    /// If either side cannot be told, the other sees the pair closed (or never connected) and
    /// falls back to closing its connections, as without a handoff.
    fn introduce(&mut self, from: PeerId, to: PeerId) -> Option<Input> {
        let pid = |peer| self.peers.get(&peer).and_then(|slot| slot.pid);
        let (Some(from_pid), Some(to_pid)) = (pid(from), pid(to)) else {
            return None;
        };
        let (to_receiver, to_sender) = match self.introductions(from_pid, to_pid) {
            Ok(commands) => commands,
            Err(e) => {
                tracing::warn!("{e}; this takeover closes connections instead of moving them");
                return None;
            }
        };
        // The receiver first: on Windows it creates the pipe the sender then connects to.
        let gone = self.command(to, to_receiver);
        if gone.is_some() {
            return gone;
        }
        self.command(from, to_sender)
    }

    /// What the receiving generation and the sending one are told, each with the other's pid.
    #[cfg(unix)]
    fn introductions(&self, sender: u32, receiver: u32) -> io::Result<(Command, Command)> {
        let (sending, receiving) = handoff::handoff_pair()?;
        let pipe = String::new;
        Ok((
            Command::SendWithFd(
                Message::HandoffFrom {
                    pid: sender,
                    pipe: pipe(),
                },
                receiving,
            ),
            Command::SendWithFd(
                Message::HandoffTo {
                    pid: receiver,
                    pipe: pipe(),
                },
                sending,
            ),
        ))
    }

    /// What the receiving generation and the sending one are told, each with the other's pid.
    #[cfg(windows)]
    fn introductions(&self, sender: u32, receiver: u32) -> io::Result<(Command, Command)> {
        let pipe = self.endpoint.handoff_pipe_name();
        Ok((
            Command::Send(Message::HandoffFrom {
                pid: sender,
                pipe: pipe.clone(),
            }),
            Command::Send(Message::HandoffTo {
                pid: receiver,
                pipe,
            }),
        ))
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
                program,
            } => {
                // A peer evicted after its Hello was sent but before it was read is gone.
                let Some(slot) = self.peers.get_mut(&peer) else {
                    return;
                };
                slot.said_hello = true;
                slot.pid = Some(pid);
                slot.program = program;
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
            Event::Pong { peer } => self.feed(Input::Pong { peer }),
            Event::NewerBuild { peer } => {
                let generation = self.peers.get(&peer).and_then(|slot| slot.preconnected);
                self.newer_program = generation
                    .and_then(|n| self.spawned_programs.get(&n))
                    .cloned();
                self.feed(Input::NewerBuild { peer });
            }
            Event::ReExec { peer, program } => {
                self.reexec_programs.insert(peer, program);
                self.feed(Input::ReExecRequested { peer });
            }
            Event::Gone { peer, why } => {
                self.peers.remove(&peer);
                self.reexec_programs.remove(&peer);
                lock_listeners(&self.sockets).unreserve(peer);
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
            match self.evict_silent(1) {
                1.. => {}
                0 => {
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

    /// Drops up to `count` of the oldest peers that have not said Hello yet (never a spawned
    /// generation's channel), to make room; returns how many.
    fn evict_silent(&mut self, count: usize) -> usize {
        // Peer ids grow with age, so the first silent ones are the oldest.
        let silent: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.preconnected.is_none() && !p.said_hello)
            .map(|(id, _)| *id)
            .take(count)
            .collect();
        for id in &silent {
            if let Some(slot) = self.peers.remove(id) {
                slot.task.abort();
            }
            self.evicted += 1;
            if self.evicted.is_power_of_two() {
                tracing::warn!(
                    "control connections crowd the front at {}; dropped the oldest that had not said hello ({} so far)",
                    self.endpoint,
                    self.evicted
                );
            }
        }
        silent.len()
    }

    fn peer_context(&self) -> PeerContext {
        PeerContext {
            events: self.events_tx.clone(),
            sockets: Arc::clone(&self.sockets),
            handshake: self.config.handshake_timeout,
            unix_mode: self.config.unix_mode,
        }
    }

    fn start_peer(&mut self, stream: Stream, preconnected: Option<Gen>) -> PeerId {
        let peer = self.next_peer;
        self.next_peer += 1;
        let (tx, commands) = mpsc::channel(8);
        let cx = self.peer_context();
        let task = tokio::spawn(peer::run(peer, stream, preconnected, commands, cx)).abort_handle();
        self.peers.insert(
            peer,
            PeerSlot {
                tx,
                said_hello: false,
                pid: None,
                program: None,
                preconnected,
                task,
            },
        );
        peer
    }

    /// Starts generation `n` by running this program again, with its control channel
    /// pre-connected. `None` while a failure that passes waits for its next try.
    fn spawn(&mut self, n: Gen, attempts: u32) -> Option<Input> {
        // Chosen once: the failure names the program that failed, and the fallback is said once.
        let program = self.program_to_start().clone();
        match self.try_spawn(n, &program) {
            Ok((pid, peer)) => Some(Input::Spawned {
                generation: n,
                pid,
                peer,
            }),
            Err(e)
                if attempts + 1 < SPAWN_ATTEMPTS
                    && (spawn_glitch(&e)
                        || handoff::out_of_descriptors(&e)
                            && self.evict_silent(ROOM_FOR_SPAWN) > 0) =>
            {
                tracing::debug!(
                    generation = n,
                    "cannot start generation {n} yet ({e}); trying again"
                );
                self.spawn_retry =
                    Some((n, attempts + 1, deadline_after(Instant::now(), SPAWN_RETRY)));
                None
            }
            Err(e) => Some(Input::SpawnFailed {
                generation: n,
                why: format!("cannot run {}: {e}", program.exe.display()),
            }),
        }
    }

    /// The child's pid and the peer of its pre-connected channel.
    fn try_spawn(&mut self, n: Gen, program: &Program) -> io::Result<(u32, PeerId)> {
        let (ours, theirs) = handoff::child_channel(self.endpoint)?;
        let mut command = tokio::process::Command::new(&program.exe);
        if program.cwd.is_dir() {
            command.current_dir(&program.cwd);
        }
        // Only the front talks to systemd (`NotifyAccess=main`).
        command
            .args(&program.args)
            .stdin(Stdio::null())
            .env_remove(crate::systemd::NOTIFY_SOCKET)
            // The activated sockets were the front's; a generation gets them from the front.
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES");
        #[cfg(unix)]
        command.env_remove(reexec::STATE_VAR);
        let lent = handoff::lend_stderr(&mut command).unwrap_or_else(|e| {
            tracing::debug!(
                generation = n,
                "generation {n} keeps the front's stderr: {e}"
            );
            None
        });
        let spawned = {
            // Held until the spawn returned; then the front keeps only its own end.
            let _inherited = theirs.attach(&mut command)?;
            command.spawn()
        };
        let mut child = spawned?;
        // Dropped now, so that the pipe ends when the generation (and whatever it started)
        // closes its stderr, not when the front does.
        drop(command);
        #[cfg(unix)]
        if let Some(copy) = lent.as_ref().and_then(|l| l.reader_copy().ok()) {
            self.stderr_copies.insert(n, copy);
        }
        let reading = match lent.map(handoff::Lent::into_reader).transpose() {
            Ok(Some(reader)) => {
                let tail = Arc::new(Mutex::new(Tail::default()));
                self.tails.insert(n, Arc::clone(&tail));
                Some(tokio::spawn(tail::pass_through(reader, tail)))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(generation = n, "cannot read generation {n}'s stderr: {e}");
                None
            }
        };
        let pid = child.id().unwrap_or_default();
        self.spawned_programs.insert(n, program.clone());
        let (kill, killed) = oneshot::channel::<()>();
        self.children.insert(n, kill);
        self.child_pids.insert(n, pid);
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
            // Its last words before its exit is reported; bounded, since a process it started
            // may hold the pipe open long after.
            if let Some(reading) = reading {
                let _ = tokio::time::timeout(TAIL_WAIT, reading).await;
            }
            let _ = exits.send((n, status, success));
        });
        let peer = self.start_peer(ours, Some(n));
        Ok((pid, peer))
    }
}

/// Windows has no `exec` that keeps handles: a front there upgrades by a restart.
#[cfg(windows)]
impl Front<'_> {
    async fn reexec_now(&mut self, snapshot: Snapshot, _control: &ControlListener) -> Input {
        if let Some(asked) = snapshot.asked {
            self.reexec_programs.remove(&asked);
        }
        self.newer_program = None;
        Input::ReExecFailed {
            why: "a front on Windows cannot re-execute itself (Windows has no exec that keeps handles); restart the service to run a newer front".to_owned(),
            busy: false,
        }
    }
}

impl Front<'_> {
    /// `reason` with the last lines generation `n` wrote to stderr, when the front read them.
    fn with_stderr_of(&self, n: Gen, reason: String) -> String {
        let lines = self
            .tails
            .get(&n)
            .and_then(|tail| tail.lock().ok().map(|t| t.lines()))
            .unwrap_or_default();
        if lines.is_empty() {
            return reason;
        }
        format!("{reason}\n{STDERR_TAIL}\n{}", lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::holds_port;

    #[test]
    fn a_port_is_found_only_as_a_whole_address_component() {
        assert!(holds_port("hello-127.0.0.1_8088", 8088));
        assert!(holds_port("hello-127.0.0.1_8088_and_unix_run_x.sock", 8088));
        assert!(holds_port("hello-127.0.0.1_0-pid42", 0));
        assert!(!holds_port("hello-127.0.0.1_80880", 8088));
        assert!(!holds_port("hello-127.0.0.1_8088", 808));
    }
}
