//! The front's upgrade state machine, as a plain value: events and the current time go in,
//! actions come out, and nothing here touches a socket, a process or a clock.
//!
//! ```text
//! Starting(N+1) --Ready--> Active(N+1); Active(N) --> Draining(N) --exit--> gone
//! Starting(N+1) --exit / ready deadline / control connection lost--> Killed; Active(N) serves on
//! Active(N) --exit / control connection lost--> respawn after a delay that grows with each
//!                                               consecutive failure; give up after a bound
//! Draining(N) --drain deadline--> Killed --exit--> gone
//! with a probation window: Active(N) --N+1 ready--> Probation(N) --window over, N+1 answers
//!                          a ping--> Draining(N)
//!                          Probation(N) --Active(N+1) exits, is lost, or answers no ping-->
//!                          Active(N) (reinstated)
//! Active(N) --StopRequested--> Starting(N+1) spawned; Active(N) serves until it is ready
//! front stop --stop delay (still accepting, Stopping sent)--> every generation drains
//! ```
//!
//! The service itself is in one [`Life`] at a time (running, stop delay, stopping, exited),
//! and every deadline is in one timer table ([`timers`]) that both [`Machine::next_deadline`]
//! and [`Input::Tick`] walk. The rest is split by concern: starting and taking over
//! ([`starting`]), probation and the liveness check of the generation that took over
//! ([`probation`]), generations ending ([`ending`]), the stop ([`stopping`]), the respawn
//! policy ([`backoff`]), what systemd and control clients hear ([`outcome`]), and the front's
//! re-exec into another build at a quiet point ([`reexec`]).
//!
//! An upgrade is reported done (to the control client that asked, and to systemd) only once
//! every generation it superseded has said it stepped aside, or after [`STEP_ASIDE_TIMEOUT`]:
//! whoever hears "upgraded" can count on new connections reaching the new generation.
//!
//! The I/O shell in [`super`] turns signals, peer frames and child exits into [`Input`]s, feeds
//! them to [`Machine::handle`], performs the [`Action`]s it returns, and sleeps until
//! [`Machine::next_deadline`] to send [`Input::Tick`]. Every rule about upgrades lives here, so
//! that unit and property tests can drive it through any order of events with a fake clock —
//! the pattern of quinn-proto and h2.

mod backoff;
mod ending;
mod outcome;
mod probation;
mod reexec;
mod starting;
mod stopping;
mod timers;

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use self::backoff::{Backoff, STABLE_AFTER};
pub(crate) use self::reexec::Snapshot;
use self::timers::{Timer, Timers};
use crate::notice::report;
use crate::protocol::{Message, Role};
use crate::systemd::Supervisor;

/// A generation's number: 1 for the first, then 2, 3, …
pub(crate) type Gen = u64;
/// The shell's name for one control connection.
pub(crate) type PeerId = u64;

/// How long a spawned generation whose channel ended before ready has to exit: its exit
/// status says more about what went wrong than the end of the channel.
pub(crate) const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long the report of an upgrade waits for the generations it superseded to say they
/// accept no more. They only have to read one frame, so this is only reached by a generation
/// whose runtime is stuck, and then the upgrade is reported anyway, with a warning.
pub(crate) const STEP_ASIDE_TIMEOUT: Duration = Duration::from_secs(2);
/// Extra time a generation gets past its own drain deadline before the front kills it: the
/// generation enforces the deadline itself and needs a moment to exit.
pub(crate) const DRAIN_SLACK: Duration = Duration::from_secs(5);

/// The deadlines a generation asked for in its Hello (its own build's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub(crate) ready: Duration,
    pub(crate) drain: Duration,
    /// How long the generation, once superseded, can be reinstated (zero: never).
    pub(crate) probation: Duration,
}

/// What happened, as the shell saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    /// The front is up: start generation 1.
    Start,
    /// SIGHUP: start a new generation.
    Hangup,
    /// A control client that said Hello asked for an upgrade.
    UpgradeRequested { peer: PeerId },
    /// The process for `generation` was started, with its control channel pre-connected on
    /// `peer` (which it has yet to say Hello on).
    Spawned {
        generation: Gen,
        pid: u32,
        peer: PeerId,
    },
    /// The process for `generation` could not be started.
    SpawnFailed { generation: Gen, why: String },
    /// A peer proved who it is. `preconnected` names the generation whose inherited control
    /// channel this is; such a peer never went through the public endpoint.
    Hello {
        peer: PeerId,
        pid: u32,
        role: Role,
        timeouts: Timeouts,
        preconnected: Option<Gen>,
    },
    /// A generation's server is accepting.
    Ready { peer: PeerId },
    /// A control connection ended (closed, failed, timed out or refused).
    PeerGone { peer: PeerId, why: String },
    /// A generation was told to stop by someone other than the front: replace it first.
    StopRequested { peer: PeerId },
    /// A generation told `Probation` or `Superseded` accepts no new connection any more.
    SteppedAside { peer: PeerId },
    /// A generation answered a `Ping`.
    Pong { peer: PeerId },
    /// A process the front spawned was reaped; `success` for exit status 0.
    Exited {
        generation: Gen,
        status: String,
        success: bool,
    },
    /// SIGTERM, SIGINT or Ctrl-C.
    Terminate { signal: &'static str },
    /// [`Machine::next_deadline`] has passed.
    Tick,
    /// A control client that said Hello asked the front to re-execute (into a newer build).
    ReExecRequested { peer: PeerId },
    /// The process on a spawned generation's channel speaks the next protocol version: its
    /// Hello could not be read, and it is about to exit.
    NewerBuild { peer: PeerId },
    /// The re-exec [`Action::ReExec`] asked for did not happen; the old image goes on. `busy`
    /// when it may work if tried again (something happened meanwhile).
    ReExecFailed { why: String, busy: bool },
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start a process for `generation` (answer with `Spawned` or `SpawnFailed`).
    Spawn(Gen),
    /// Hand the listening sockets to the generation on `peer`.
    SendListeners { peer: PeerId, generation: Gen },
    /// Send one message to a peer.
    Send { peer: PeerId, message: Message },
    /// Tell a control client that the upgrade to `generation` failed: an `Error` with `reason`,
    /// to which the shell adds the last lines that generation wrote to stderr, when it read
    /// them. The peer is closed next, as after any answer.
    Failed {
        peer: PeerId,
        generation: Gen,
        reason: String,
    },
    /// Connect the generation on `from`, about to be told to stop accepting (or still
    /// draining), to the one on `to`, which took over, so that `from` can hand its idle
    /// connections to `to` directly: a socket pair (a private pipe on Windows), one end to each
    /// (`HandoffTo`, `HandoffFrom`). It comes before the message that tells `from` to step
    /// aside, so that no response written in between tells a client to leave.
    Introduce { from: PeerId, to: PeerId },
    /// Close a peer's connection once what was sent before is flushed.
    Close(PeerId),
    /// Kill the process of `generation`. For a spawned one, its exit is reported later.
    Kill(Gen),
    /// Close the front's copies of the listening sockets: the service is stopping.
    CloseListeners,
    /// Tell the service manager (systemd), if there is one.
    Notify(Supervisor),
    /// Exit the front with this status. Nothing follows.
    Exit(i32),
    /// Re-execute the front with this state (a quiet point: see [`reexec`]). Nothing follows
    /// unless it fails, which the shell reports as [`Input::ReExecFailed`].
    ReExec(Snapshot),
}

/// Where one generation is in its life. The deadline of each phase that has one is in the
/// timer table, as [`Timer::Phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Spawned or connected, not ready yet: killed at its deadline.
    Starting,
    /// The one serving generation.
    Active,
    /// Superseded, told to stop, or out of touch: killed at its deadline if still there.
    Draining { since: Instant },
    /// Superseded, not accepting, but holding its sockets: reinstated if its successor dies
    /// or hangs, else draining once its window `ends` and the successor answered a ping sent
    /// from then on. At most one generation is on probation.
    Probation { since: Instant, ends: Instant },
    /// The active generation's channel ended: most likely it is exiting, and its exit status
    /// decides what follows (status 0 ends the service, anything else is a crash). If it has
    /// not exited by its deadline, it is out of touch: it drains by itself and is replaced.
    Lost,
    /// Killed; a spawned process stays here until its exit is reported.
    Killed,
}

impl Phase {
    /// Whether the phase ends at a deadline of its own.
    fn has_deadline(self) -> bool {
        !matches!(self, Phase::Active | Phase::Killed)
    }
}

#[derive(Debug, Clone)]
struct Generation {
    phase: Phase,
    /// Known once spawned (or from its Hello when started by hand).
    pid: Option<u32>,
    /// The connection it said Hello on.
    peer: Option<PeerId>,
    /// The channel a spawned process inherited, until it says Hello: closed if the process
    /// ends first (a Windows pipe would otherwise wait for it forever).
    channel: Option<PeerId>,
    /// A process of ours: its exit will be reported, and the front waits for it.
    spawned: bool,
    started: Instant,
    /// When it first became ready. Kept through a probation and a reinstatement: a generation
    /// that served for long is healthy, however many failed upgrades it saw.
    ready_at: Option<Instant>,
    /// The front's defaults until the generation's Hello says otherwise.
    timeouts: Timeouts,
    /// Why it was started, for the log line once its pid is known.
    reason: String,
    /// Why its control connection ended, if it did before it was ready.
    lost: Option<String>,
    /// It asked to be replaced (it was sent SIGTERM from outside).
    stop_requested: bool,
    /// How many `Probation` and `Superseded` messages it was sent, and how many `SteppedAside`
    /// it answered: it answers each in order, so a confirmation that was on its way before it
    /// was reinstated and superseded again is not taken for the latest one.
    told_aside: u32,
    stepped_aside: u32,
    /// When the `Ping` it has not answered yet was sent.
    ping: Option<Instant>,
    /// It speaks the next protocol version (its Hello could not be read): its end waits for
    /// the front to re-execute into its build rather than failing its upgrade.
    newer: bool,
}

impl Generation {
    fn new(now: Instant, timeouts: Timeouts, spawned: bool) -> Self {
        Generation {
            phase: Phase::Starting,
            pid: None,
            peer: None,
            channel: None,
            spawned,
            started: now,
            ready_at: None,
            timeouts,
            reason: String::new(),
            lost: None,
            stop_requested: false,
            told_aside: 0,
            stepped_aside: 0,
            ping: None,
            newer: false,
        }
    }

    /// Served long enough, since it first became ready, to count as healthy.
    fn healthy(&self, now: Instant) -> bool {
        self.ready_at
            .is_some_and(|t| now.saturating_duration_since(t) >= STABLE_AFTER)
    }

    /// How long it served, for the log.
    fn served_ms(&self, now: Instant) -> u128 {
        self.ready_at
            .map_or(0, |t| now.saturating_duration_since(t).as_millis())
    }

    /// Told to stop accepting and not confirmed yet, while still in touch.
    fn owes_step_aside(&self) -> bool {
        self.peer.is_some()
            && self.stepped_aside < self.told_aside
            && matches!(self.phase, Phase::Probation { .. } | Phase::Draining { .. })
    }
}

/// Where the service is in its life: one value, so that an upgrade reported during a stop,
/// a respawn after it, or an exit before it cannot be written.
#[derive(Debug)]
enum Life {
    /// Serving, or trying to: generations are started, upgrades happen, crashes respawn.
    Running { upgrade: Option<Upgrade> },
    /// Told to stop with a stop delay: still accepting until [`Timer::StopDelay`], but no
    /// generation is started any more. `code` as for `Stopping`.
    StopDelay { code: i32 },
    /// Every generation drains; the front exits with `code` once each process it spawned is
    /// reaped. `code` is 0 unless something had to be killed or the front gave up.
    Stopping { code: i32 },
    /// `Exit` went out; nothing follows.
    Exited,
}

/// The generation being started, from its spawn (or a hand-started Hello) until the outcome
/// is reported: to the control clients that asked, and to systemd.
#[derive(Debug)]
struct Upgrade {
    generation: Gen,
    /// `RELOADING=1` went out: `READY=1`, with the outcome, must follow.
    reloading: bool,
    /// Control clients waiting for the outcome, each answered exactly once.
    clients: Vec<PeerId>,
    /// Once it took over: what it superseded, waited for until each stepped aside or
    /// [`Timer::Handover`].
    takeover: Option<Takeover>,
}

#[derive(Debug)]
struct Takeover {
    superseded: Vec<Gen>,
    /// How long the new generation took to become ready, for the report.
    took: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    role: Role,
    pid: u32,
}

/// The upgrade state machine of one front.
#[derive(Debug)]
pub(crate) struct Machine {
    defaults: Timeouts,
    stop_delay: Duration,
    life: Life,
    generations: BTreeMap<Gen, Generation>,
    /// Peers that said Hello.
    peers: BTreeMap<PeerId, Peer>,
    timers: Timers,
    backoff: Backoff,
    next_generation: Gen,
    /// An upgrade to a build of the next protocol, waiting for a quiet point to re-execute.
    pending_reexec: Option<reexec::Waiting>,
    /// The re-exec the shell is performing, and who waits on it.
    reexec_in_flight: Option<reexec::Waiting>,
    /// How the last upgrade systemd heard of ended, as its status line said: carried across a
    /// re-exec, so `systemctl status` keeps saying it.
    last_upgrade: Option<String>,
    out: Vec<Action>,
}

impl Machine {
    /// A machine whose generations get `defaults` until they say otherwise in their Hello,
    /// and which keeps accepting for `stop_delay` once told to stop.
    pub(crate) fn new(defaults: Timeouts, stop_delay: Duration) -> Self {
        Machine {
            defaults,
            stop_delay,
            life: Life::Running { upgrade: None },
            generations: BTreeMap::new(),
            peers: BTreeMap::new(),
            timers: Timers::default(),
            backoff: Backoff::default(),
            next_generation: 1,
            pending_reexec: None,
            reexec_in_flight: None,
            last_upgrade: None,
            out: Vec::new(),
        }
    }

    /// Applies one event at time `now` and returns what to do, in order.
    pub(crate) fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        if matches!(self.life, Life::Exited) {
            return Vec::new();
        }
        let retrying = matches!(input, Input::ReExecFailed { .. });
        match input {
            Input::Start => {
                if let Err(why) = self.spawn(now, "first start") {
                    report!(error, "cannot start generation 1: {why}");
                }
            }
            Input::Hangup => match self.spawn(now, "SIGHUP") {
                Ok(n) => self.reloading(n, "SIGHUP"),
                Err(why) => tracing::warn!("SIGHUP ignored: {why}"),
            },
            Input::UpgradeRequested { peer } => self.on_upgrade(now, peer),
            Input::Spawned {
                generation,
                pid,
                peer,
            } => self.on_spawned(generation, pid, peer),
            Input::SpawnFailed { generation, why } => self.on_spawn_failed(now, generation, &why),
            Input::Hello {
                peer,
                pid,
                role,
                timeouts,
                preconnected,
            } => self.on_hello(now, peer, pid, role, timeouts, preconnected),
            Input::Ready { peer } => self.on_ready(now, peer),
            Input::PeerGone { peer, why } => self.on_peer_gone(now, peer, &why),
            Input::StopRequested { peer } => self.on_stop_requested(now, peer),
            Input::SteppedAside { peer } => self.on_stepped_aside(peer),
            Input::Pong { peer } => self.on_pong(now, peer),
            Input::Exited {
                generation,
                status,
                success,
            } => self.on_exited(now, generation, &status, success),
            Input::Terminate { signal } => self.on_terminate(now, signal),
            Input::Tick => self.on_tick(now),
            Input::ReExecRequested { peer } => self.on_reexec_requested(now, peer),
            Input::NewerBuild { peer } => self.on_newer_build(peer),
            Input::ReExecFailed { why, busy } => self.on_reexec_failed(why, busy),
        }
        // Whatever just happened (a confirmation, an exit, a lost channel, a stop) may settle
        // the pending report, or end the probation whose successor is being watched.
        self.settle_upgrade();
        self.keep_watch();
        // Not right after a failed try: the event that made it fail is heard first.
        if !retrying {
            self.reexec_when_quiet(now);
        }
        let code = match self.life {
            Life::StopDelay { code } | Life::Stopping { code } => Some(code),
            Life::Running { .. } | Life::Exited => None,
        };
        if let Some(code) = code
            && self.generations.is_empty()
        {
            self.life = Life::Exited;
            self.timers.clear_all();
            if code == 0 {
                tracing::info!("front exiting with status 0");
            } else {
                report!(error, "front exiting with status {code}");
            }
            self.out.push(Action::Exit(code));
        }
        self.debug_check();
        std::mem::take(&mut self.out)
    }

    /// The earliest time at which [`Input::Tick`] has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Whether the machine still tracks `generation` (the shell drops its handles otherwise).
    pub(crate) fn has_generation(&self, generation: Gen) -> bool {
        self.generations.contains_key(&generation)
    }

    /// Each generation's phase, for tests and diagnostics.
    #[cfg(test)]
    pub(crate) fn phases(&self) -> BTreeMap<Gen, Phase> {
        self.generations
            .iter()
            .map(|(n, g)| (*n, g.phase))
            .collect()
    }

    // ---- What the rules ask about the state, each in one place ----

    /// Serving or trying to: not stopping, not in the stop delay.
    fn running(&self) -> bool {
        matches!(self.life, Life::Running { .. })
    }

    fn upgrade(&self) -> Option<&Upgrade> {
        match &self.life {
            Life::Running { upgrade } => upgrade.as_ref(),
            _ => None,
        }
    }

    fn upgrade_mut(&mut self) -> Option<&mut Upgrade> {
        match &mut self.life {
            Life::Running { upgrade } => upgrade.as_mut(),
            _ => None,
        }
    }

    fn find(&self, phase: impl Fn(Phase) -> bool) -> Option<Gen> {
        self.generations
            .iter()
            .find(|(_, g)| phase(g.phase))
            .map(|(n, _)| *n)
    }

    fn starting(&self) -> Option<Gen> {
        self.find(|p| p == Phase::Starting)
    }

    fn active(&self) -> Option<Gen> {
        self.find(|p| p == Phase::Active)
    }

    /// The generation serving now, for the shell.
    pub(crate) fn active_generation(&self) -> Option<Gen> {
        self.active()
    }

    /// The control connection of the generation serving now, if it is in touch.
    pub(crate) fn active_peer(&self) -> Option<PeerId> {
        self.active()
            .and_then(|n| self.generations.get(&n))
            .and_then(|g| g.peer)
    }

    fn on_probation(&self) -> Option<Gen> {
        self.find(|p| matches!(p, Phase::Probation { .. }))
    }

    /// A generation serves, is about to (starting), or may still (the active one whose
    /// channel ended, until its exit status says).
    fn serving_or_starting(&self) -> bool {
        self.generations
            .values()
            .any(|g| matches!(g.phase, Phase::Active | Phase::Starting | Phase::Lost))
    }

    /// A generation that exited by itself, successfully, ends the service only if nothing
    /// else serves or is about to: respawning is for failures (as systemd's
    /// `Restart=on-failure`), and a replacement on its way takes over as it would have.
    /// Asked after the generation was removed, so that the order in which its exit status
    /// and the end of its channel arrive changes nothing.
    fn ends_the_service(&self, success: bool) -> bool {
        success && self.running() && !self.serving_or_starting()
    }

    /// Whether the death of the active generation would bring back the one on probation.
    fn can_reinstate(&self) -> bool {
        self.running() && self.on_probation().is_some()
    }

    fn by_peer(&self, peer: PeerId) -> Option<Gen> {
        self.generations
            .iter()
            .find(|(_, g)| g.peer == Some(peer))
            .map(|(n, _)| *n)
    }

    // ---- Changing a generation ----

    /// Moves generation `n` to `phase`, with the deadline it needs (and only then).
    fn set_phase(&mut self, n: Gen, phase: Phase, deadline: Option<Instant>) {
        let Some(g) = self.generations.get_mut(&n) else {
            return;
        };
        g.phase = phase;
        match deadline {
            Some(at) => self.timers.set(Timer::Phase(n), at),
            None => self.timers.clear(Timer::Phase(n)),
        }
    }

    /// Stops tracking `n`: its timers go, and so do its connections.
    fn forget(&mut self, n: Gen) -> Option<Generation> {
        let g = self.generations.remove(&n)?;
        self.timers.clear(Timer::Phase(n));
        self.timers.clear(Timer::Liveness(n));
        for peer in [g.peer, g.channel].into_iter().flatten() {
            self.close_peer(peer);
        }
        Some(g)
    }

    /// Kills `n`: a spawned process waits in `Killed` for its exit; one started by hand is
    /// forgotten at once (its exit is not ours to see).
    fn kill(&mut self, n: Gen) {
        let Some(g) = self.generations.get_mut(&n) else {
            return;
        };
        if g.phase == Phase::Killed {
            return;
        }
        self.out.push(Action::Kill(n));
        if !g.spawned {
            self.forget(n);
            return;
        }
        let connections = [g.peer.take(), g.channel.take()];
        g.ping = None;
        self.set_phase(n, Phase::Killed, None);
        self.timers.clear(Timer::Liveness(n));
        for peer in connections.into_iter().flatten() {
            self.close_peer(peer);
        }
    }

    fn close_peer(&mut self, peer: PeerId) {
        self.peers.remove(&peer);
        for g in self.generations.values_mut() {
            if g.peer == Some(peer) {
                g.peer = None;
            }
            if g.channel == Some(peer) {
                g.channel = None;
            }
        }
        if let Some(upgrade) = self.upgrade_mut() {
            upgrade.clients.retain(|p| *p != peer);
        }
        self.out.push(Action::Close(peer));
    }

    /// Answers a peer once and closes it.
    fn answer(&mut self, peer: PeerId, message: Message) {
        self.out.push(Action::Send { peer, message });
        self.close_peer(peer);
    }

    /// Answers a control client that the upgrade to `generation` failed, and closes it.
    fn answer_failed(&mut self, peer: PeerId, generation: Gen, reason: String) {
        self.out.push(Action::Failed {
            peer,
            generation,
            reason,
        });
        self.close_peer(peer);
    }

    /// The at-most-one rules and the bookkeeping that must agree, checked after every event
    /// in debug builds (every test, and the property test's thousands of histories).
    fn debug_check(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let count =
            |phase: fn(Phase) -> bool| self.generations.values().filter(|g| phase(g.phase)).count();
        debug_assert!(count(|p| p == Phase::Active) <= 1, "two active generations");
        debug_assert!(
            count(|p| p == Phase::Starting) <= 1,
            "two starting generations"
        );
        let probation = count(|p| matches!(p, Phase::Probation { .. }));
        debug_assert!(probation <= 1, "two generations on probation");
        debug_assert!(
            probation == 0 || self.active().is_some(),
            "a generation on probation with no successor serving"
        );
        for (n, g) in &self.generations {
            debug_assert_eq!(
                g.phase.has_deadline(),
                self.timers.get(Timer::Phase(*n)).is_some(),
                "generation {n} {:?} and its deadline disagree",
                g.phase
            );
            debug_assert!(
                !matches!(g.phase, Phase::Active | Phase::Probation { .. }) || g.peer.is_some(),
                "generation {n} {:?} without a channel",
                g.phase
            );
            debug_assert!(
                g.spawned || g.peer.is_some(),
                "hand-started generation {n} kept without its channel"
            );
        }
        if let Some(u) = self.upgrade()
            && u.takeover.is_none()
        {
            debug_assert_eq!(
                self.starting(),
                Some(u.generation),
                "an upgrade not ready must be starting"
            );
        }
        let watched = self.watched();
        for n in self.generations.keys() {
            debug_assert_eq!(
                self.timers.get(Timer::Liveness(*n)).is_some(),
                watched == Some(*n),
                "generation {n}'s liveness timer"
            );
        }
        debug_assert!(
            self.running() || self.timers.get(Timer::Respawn).is_none(),
            "a respawn while stopping"
        );
    }
}

/// ` (pid N)`, or nothing while the pid is unknown, for log lines.
fn pid_note(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}
