//! The front's upgrade state machine, as a plain value: events and the current time go in,
//! actions come out, and nothing here touches a socket, a process or a clock.
//!
//! ```text
//! Starting(N+1) --Ready--> Active(N+1); Active(N) --> Draining(N) --exit--> gone
//! Starting(N+1) --exit / ready deadline / control connection lost--> Killed; Active(N) serves on
//! Active(N) --exit / control connection lost--> respawn after a delay that grows with each
//!                                               consecutive failure; give up after a bound
//! Draining(N) --drain deadline--> Killed --exit--> gone
//! with a probation window: Active(N) --N+1 ready--> Probation(N) --window over--> Draining(N)
//!                          Probation(N) --Active(N+1) exits or is lost--> Active(N) (reinstated)
//! Active(N) --StopRequested--> Starting(N+1) spawned; Active(N) serves until it is ready
//! front stop --stop delay (still accepting, Stopping sent)--> every generation drains
//! ```
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

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::deadline_after;
use crate::notice::report;
use crate::protocol::{Message, Role};
use crate::systemd::Supervisor;

/// A generation's number: 1 for the first, then 2, 3, …
pub(crate) type Gen = u64;
/// The shell's name for one control connection.
pub(crate) type PeerId = u64;

/// Consecutive failures after which a front whose service never became ready gives up.
pub(crate) const MAX_INITIAL_ATTEMPTS: u32 = 3;
/// Consecutive failures (failed starts, crashes soon after ready) after which the front gives
/// up even though the service served before: at the longest delay this is about a minute of
/// trying, after which a supervisor's restart policy is the better judge.
pub(crate) const MAX_CONSECUTIVE_FAILURES: u32 = 10;
/// A generation that served this long is healthy: the count of consecutive failures restarts.
/// A crash sooner after ready counts as a failed start.
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Shortest and longest wait before starting a replacement after a failure.
pub(crate) const MIN_RESPAWN_DELAY: Duration = Duration::from_millis(200);
pub(crate) const MAX_RESPAWN_DELAY: Duration = Duration::from_secs(10);
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
    /// The process for `generation` was started.
    Spawned { generation: Gen, pid: u32 },
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
}

/// Where one generation is in its life. Each phase holds exactly the deadline it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Spawned or connected, not ready yet: killed at `deadline`.
    Starting { deadline: Instant },
    /// The one serving generation.
    Active { since: Instant },
    /// Superseded, told to stop, or out of touch: killed at `deadline` if still there.
    Draining { since: Instant, deadline: Instant },
    /// Superseded, not accepting, but holding its sockets: reinstated if its successor dies
    /// before `until`, else draining from then on. At most one generation is on probation.
    Probation { since: Instant, until: Instant },
    /// The active generation's channel ended: most likely it is exiting, and its exit status
    /// decides what follows (status 0 ends the service, anything else is a crash). If it has
    /// not exited by `deadline`, it is out of touch: it drains by itself and is replaced.
    Lost { since: Instant, deadline: Instant },
    /// Killed; a spawned process stays here until its exit is reported.
    Killed,
}

#[derive(Debug, Clone)]
struct Generation {
    phase: Phase,
    /// Known once spawned (or from its Hello when started by hand).
    pid: Option<u32>,
    peer: Option<PeerId>,
    /// A process of ours: its exit will be reported, and the front waits for it.
    spawned: bool,
    started: Instant,
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
}

/// A takeover whose report waits for the generations it superseded to step aside.
#[derive(Debug, Clone)]
struct Handover {
    /// The generation that took over.
    generation: Gen,
    /// The generations it superseded; those still connected wait for their answers (see
    /// `Generation::told_aside`).
    superseded: Vec<Gen>,
    /// Reported anyway from then on.
    deadline: Instant,
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
    /// Told to stop, keeping on accepting until then (the stop delay).
    stop_at: Option<Instant>,
    generations: BTreeMap<Gen, Generation>,
    /// Peers that said Hello.
    peers: BTreeMap<PeerId, Peer>,
    /// Control clients waiting for the outcome of the upgrade they asked for.
    waiters: Vec<(PeerId, Gen)>,
    /// The last takeover, until it is reported.
    handover: Option<Handover>,
    next_generation: Gen,
    /// Consecutive failures since a generation last served for [`STABLE_AFTER`].
    failures: u32,
    /// When the most recent generation became ready.
    last_ready: Option<Instant>,
    ever_ready: bool,
    respawn_at: Option<Instant>,
    stopping: bool,
    /// `STOPPING=1` went out (at the start of the stop delay, or of the stop).
    stop_notified: bool,
    /// The upgrade whose outcome ends a `RELOADING=1` sent to the service manager.
    reload: Option<Gen>,
    exit_code: i32,
    exited: bool,
    out: Vec<Action>,
}

impl Machine {
    /// A machine whose generations get `defaults` until they say otherwise in their Hello,
    /// and which keeps accepting for `stop_delay` once told to stop.
    pub(crate) fn new(defaults: Timeouts, stop_delay: Duration) -> Self {
        Machine {
            defaults,
            stop_delay,
            stop_at: None,
            generations: BTreeMap::new(),
            peers: BTreeMap::new(),
            waiters: Vec::new(),
            handover: None,
            next_generation: 1,
            failures: 0,
            last_ready: None,
            ever_ready: false,
            respawn_at: None,
            stopping: false,
            stop_notified: false,
            reload: None,
            exit_code: 0,
            exited: false,
            out: Vec::new(),
        }
    }

    /// Applies one event at time `now` and returns what to do, in order.
    pub(crate) fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        if self.exited {
            return Vec::new();
        }
        match input {
            Input::Start => {
                if let Err(why) = self.spawn(now, "first start") {
                    report!(error, "cannot start generation 1: {why}");
                }
            }
            Input::Hangup => match self.spawn(now, "SIGHUP") {
                Ok(n) => self.begin_reload(n, "SIGHUP"),
                Err(why) => tracing::warn!("SIGHUP ignored: {why}"),
            },
            Input::UpgradeRequested { peer } => self.on_upgrade(now, peer),
            Input::Spawned { generation, pid } => self.on_spawned(generation, pid),
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
            Input::Exited {
                generation,
                status,
                success,
            } => self.on_exited(now, generation, &status, success),
            Input::Terminate { signal } => self.on_terminate(now, signal),
            Input::Tick => self.on_tick(now),
        }
        // Whatever just happened (a confirmation, an exit, a lost channel, a stop, the time)
        // may settle the pending report.
        self.settle_handover(now);
        if self.winding_down() && self.generations.is_empty() {
            self.exited = true;
            if self.exit_code == 0 {
                tracing::info!("front exiting with status 0");
            } else {
                report!(error, "front exiting with status {}", self.exit_code);
            }
            self.out.push(Action::Exit(self.exit_code));
        }
        std::mem::take(&mut self.out)
    }

    /// The earliest time at which [`Input::Tick`] has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if self.exited {
            return None;
        }
        self.generations
            .values()
            .filter_map(|g| match g.phase {
                Phase::Starting { deadline }
                | Phase::Draining { deadline, .. }
                | Phase::Lost { deadline, .. }
                | Phase::Probation {
                    until: deadline, ..
                } => Some(deadline),
                Phase::Active { .. } | Phase::Killed => None,
            })
            .chain(self.respawn_at)
            .chain(self.stop_at)
            .chain(self.handover.as_ref().map(|h| h.deadline))
            .min()
    }

    /// Stopping, or about to once the stop delay has passed: no new generation is started.
    fn winding_down(&self) -> bool {
        self.stopping || self.stop_at.is_some()
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

    fn starting(&self) -> Option<(Gen, &Generation)> {
        self.generations
            .iter()
            .find(|(_, g)| matches!(g.phase, Phase::Starting { .. }))
            .map(|(n, g)| (*n, g))
    }

    fn active(&self) -> Option<Gen> {
        self.generations
            .iter()
            .find(|(_, g)| matches!(g.phase, Phase::Active { .. }))
            .map(|(n, _)| *n)
    }

    fn on_probation(&self) -> Option<Gen> {
        self.generations
            .iter()
            .find(|(_, g)| matches!(g.phase, Phase::Probation { .. }))
            .map(|(n, _)| *n)
    }

    fn by_peer(&self, peer: PeerId) -> Option<Gen> {
        self.generations
            .iter()
            .find(|(_, g)| g.peer == Some(peer))
            .map(|(n, _)| *n)
    }

    /// Starts a new generation, unless the service is stopping or one is starting already.
    fn spawn(&mut self, now: Instant, reason: &str) -> Result<Gen, String> {
        if self.winding_down() {
            return Err("the service is shutting down".to_owned());
        }
        if let Some((n, g)) = self.starting() {
            return Err(format!(
                "an upgrade is already in progress: generation {n}{} is starting; try again once it is ready or has failed",
                pid_note(g.pid)
            ));
        }
        self.respawn_at = None;
        let n = self.next_generation;
        self.next_generation += 1;
        self.generations.insert(
            n,
            Generation {
                phase: Phase::Starting {
                    deadline: deadline_after(now, self.defaults.ready),
                },
                pid: None,
                peer: None,
                spawned: true,
                started: now,
                timeouts: self.defaults,
                reason: reason.to_owned(),
                lost: None,
                stop_requested: false,
                told_aside: 0,
                stepped_aside: 0,
            },
        );
        self.out.push(Action::Spawn(n));
        Ok(n)
    }

    fn on_upgrade(&mut self, now: Instant, peer: PeerId) {
        let Some(client) = self.peers.get(&peer).copied() else {
            return;
        };
        if client.role != Role::Control {
            return;
        }
        match self.spawn(now, &format!("upgrade requested by pid {}", client.pid)) {
            Ok(n) => {
                self.waiters.push((peer, n));
                self.begin_reload(n, "requested");
            }
            Err(reason) => {
                tracing::warn!(pid = client.pid, "upgrade refused: {reason}");
                // Not a failure of any build: the client may ask again later.
                self.out.push(Action::Send {
                    peer,
                    message: Message::Busy { reason },
                });
                self.close_peer(peer);
            }
        }
    }

    fn on_spawned(&mut self, n: Gen, pid: u32) {
        if let Some(g) = self.generations.get_mut(&n) {
            g.pid = Some(pid);
            tracing::info!(
                generation = n,
                pid,
                "generation {n} (pid {pid}) starting ({})",
                g.reason
            );
        }
    }

    fn on_spawn_failed(&mut self, now: Instant, n: Gen, why: &str) {
        let Some(g) = self.generations.remove(&n) else {
            return;
        };
        if g.phase == Phase::Killed {
            return;
        }
        report!(error, "cannot start generation {n}: {why}");
        self.end_failed_reload(n, &format!("could not be started: {why}"));
        self.answer_waiters(
            n,
            Message::Error {
                reason: format!("generation {n} could not be started: {why}"),
            },
        );
        self.failed(now, why);
    }

    fn on_hello(
        &mut self,
        now: Instant,
        peer: PeerId,
        pid: u32,
        role: Role,
        timeouts: Timeouts,
        preconnected: Option<Gen>,
    ) {
        if self.peers.contains_key(&peer) || self.by_peer(peer).is_some() {
            // One Hello per connection; the peer task never relays a second one.
            return;
        }
        if self.winding_down() {
            self.refuse(peer, "the service is shutting down".to_owned());
            return;
        }
        if role == Role::Control {
            if preconnected.is_some() {
                self.refuse(
                    peer,
                    "a generation's channel is not a control client".to_owned(),
                );
                return;
            }
            self.peers.insert(peer, Peer { role, pid });
            return;
        }
        let number = match (preconnected, self.starting()) {
            // Our own child on the channel it inherited, or (where it could not use one)
            // through the endpoint with the pid we spawned.
            (Some(n), Some((s, g))) if n == s && g.spawned && g.peer.is_none() => {
                if g.pid != Some(pid) {
                    let reason = format!(
                        "the channel of generation {n} was opened by pid {pid}, not by the process the front started{}",
                        pid_note(g.pid)
                    );
                    tracing::warn!("refused a generation: {reason}");
                    self.refuse(peer, reason);
                    return;
                }
                n
            }
            (Some(n), _) => {
                self.refuse(peer, format!("generation {n} is no longer starting"));
                return;
            }
            (None, Some((n, g))) if g.spawned && g.peer.is_none() && g.pid == Some(pid) => n,
            (None, Some((n, g))) => {
                let reason = format!(
                    "an upgrade is already in progress: generation {n}{} is starting; try again once it is ready or has failed",
                    pid_note(g.pid)
                );
                tracing::warn!(pid, "refused a new generation: {reason}");
                self.refuse(peer, reason);
                return;
            }
            (None, None) if self.generations.values().any(|g| g.pid == Some(pid)) => {
                self.refuse(
                    peer,
                    "this process is already a generation of the service".to_owned(),
                );
                return;
            }
            // A new build started by hand: the seed's upgrade workflow.
            (None, None) => {
                let n = self.next_generation;
                self.next_generation += 1;
                self.generations.insert(
                    n,
                    Generation {
                        phase: Phase::Starting { deadline: now },
                        pid: Some(pid),
                        peer: None,
                        spawned: false,
                        started: now,
                        timeouts,
                        reason: String::new(),
                        lost: None,
                        stop_requested: false,
                        told_aside: 0,
                        stepped_aside: 0,
                    },
                );
                tracing::info!(
                    generation = n,
                    pid,
                    "generation {n} (pid {pid}) starting (started by hand)"
                );
                self.begin_reload(n, "started by hand");
                n
            }
        };
        let Some(g) = self.generations.get_mut(&number) else {
            return;
        };
        // From now on the new build's own deadlines count, not the front's.
        g.timeouts = timeouts;
        g.phase = Phase::Starting {
            deadline: deadline_after(g.started, timeouts.ready),
        };
        g.peer = Some(peer);
        self.peers.insert(peer, Peer { role, pid });
        self.out.push(Action::SendListeners {
            peer,
            generation: number,
        });
    }

    fn on_ready(&mut self, now: Instant, peer: PeerId) {
        let Some(n) = self.by_peer(peer) else {
            return;
        };
        let Some(g) = self.generations.get(&n) else {
            return;
        };
        if !matches!(g.phase, Phase::Starting { .. }) {
            return;
        }
        let took = now.saturating_duration_since(g.started);
        // A takeover still unreported (its predecessor is slow to step aside) is reported as it
        // stands: its generation did serve.
        self.complete_handover();
        // One generation to fall back on at most: the one that served last.
        if let Some(previous) = self.on_probation() {
            self.release(now, previous);
        }
        let mut superseded = Vec::new();
        for (old, g) in &mut self.generations {
            if matches!(g.phase, Phase::Active { .. }) {
                let probation = g.timeouts.probation;
                // A generation asked to stop wants to go, not to be kept as a fallback.
                let (phase, message) = if probation.is_zero() || g.stop_requested {
                    let deadline = drain_deadline(now, g.timeouts);
                    (
                        Phase::Draining {
                            since: now,
                            deadline,
                        },
                        Message::Superseded,
                    )
                } else {
                    let until = deadline_after(now, probation);
                    (Phase::Probation { since: now, until }, Message::Probation)
                };
                g.phase = phase;
                if let Some(p) = g.peer {
                    self.out.push(Action::Send { peer: p, message });
                    g.told_aside = g.told_aside.saturating_add(1);
                }
                superseded.push(*old);
            }
        }
        if let Some(g) = self.generations.get_mut(&n) {
            g.phase = Phase::Active { since: now };
        }
        self.ever_ready = true;
        self.last_ready = Some(now);
        self.respawn_at = None;
        tracing::info!(
            generation = n,
            ready_ms = took.as_millis(),
            superseded = ?superseded,
            "generation {n} ready after {} ms and serving{}",
            took.as_millis(),
            if superseded.is_empty() {
                String::new()
            } else {
                format!("; superseded {superseded:?}")
            }
        );
        self.handover = Some(Handover {
            generation: n,
            superseded,
            deadline: deadline_after(now, STEP_ASIDE_TIMEOUT),
            took,
        });
    }

    fn on_stepped_aside(&mut self, peer: PeerId) {
        let Some(old) = self.by_peer(peer) else {
            return;
        };
        let Some(g) = self.generations.get_mut(&old) else {
            return;
        };
        if g.stepped_aside >= g.told_aside {
            // Nothing asked: an answer is not banked for a later message.
            return;
        }
        // Until it has answered the latest message, it has not read it yet.
        g.stepped_aside += 1;
        if g.stepped_aside == g.told_aside {
            tracing::debug!(generation = old, "generation {old} stepped aside");
        }
    }

    /// Reports the pending takeover once nothing is left to wait for: every superseded
    /// generation stepped aside, exited, lost its channel or was brought back, or the
    /// timeout passed. If the new generation stopped serving meanwhile, the upgrade failed.
    fn settle_handover(&mut self, now: Instant) {
        let Some(n) = self.handover.as_ref().map(|h| h.generation) else {
            return;
        };
        if self.winding_down() {
            // The clients were refused and STOPPING=1 went out (or is about to): no report.
            self.handover = None;
            return;
        }
        let serving = self
            .generations
            .get(&n)
            .is_some_and(|g| matches!(g.phase, Phase::Active { .. }));
        if !serving {
            self.handover = None;
            let why = "stopped serving right after it took over";
            self.end_failed_reload(n, why);
            self.answer_waiters(
                n,
                Message::Error {
                    reason: format!("generation {n} {why}"),
                },
            );
            return;
        }
        let Some(h) = &self.handover else {
            return;
        };
        // Still superseded and connected, with a message unanswered; one that is gone, out of
        // touch or reinstated is not waited for.
        let late: Vec<String> = h
            .superseded
            .iter()
            .filter(|old| {
                self.generations.get(old).is_some_and(|g| {
                    g.peer.is_some()
                        && g.stepped_aside < g.told_aside
                        && matches!(g.phase, Phase::Probation { .. } | Phase::Draining { .. })
                })
            })
            .map(ToString::to_string)
            .collect();
        if late.is_empty() {
            self.complete_handover();
        } else if h.deadline <= now {
            let (who, they) = match late.len() {
                1 => ("generation", "it"),
                _ => ("generations", "they"),
            };
            report!(
                warn,
                "{who} {} did not confirm within {STEP_ASIDE_TIMEOUT:?} that {they} stopped accepting: reporting generation {n} serving anyway; until then, {they} may still take some new connections",
                late.join(", ")
            );
            self.complete_handover();
        }
    }

    /// Reports the pending takeover: `Upgraded` to the control clients that asked for it,
    /// `READY=1` to systemd.
    fn complete_handover(&mut self) {
        let Some(h) = self.handover.take() else {
            return;
        };
        let n = h.generation;
        self.answer_waiters(n, Message::Upgraded { generation: n });
        let pid = self.generations.get(&n).and_then(|g| g.pid);
        let outcome = if self.reload == Some(n) {
            self.reload = None;
            format!(
                "; last upgrade: generation {n} ready in {} ms",
                h.took.as_millis()
            )
        } else {
            String::new()
        };
        let status = format!(
            "generation {n}{} serving; {} draining{outcome}",
            pid_note(pid),
            h.superseded.len()
        );
        self.out.push(Action::Notify(Supervisor::Ready { status }));
    }

    /// An upgrade begins: systemd hears `RELOADING=1` now and `READY=1` once it has an outcome.
    fn begin_reload(&mut self, n: Gen, how: &str) {
        // The previous upgrade's READY=1 goes out before this one's RELOADING=1.
        self.complete_handover();
        self.reload = Some(n);
        self.out.push(Action::Notify(Supervisor::Reloading {
            status: format!("upgrading: generation {n} starting ({how})"),
        }));
    }

    /// The upgrade to `n` failed: the service serves on, as systemd hears with `READY=1`.
    fn end_failed_reload(&mut self, n: Gen, why: &str) {
        if self.reload != Some(n) {
            return;
        }
        self.reload = None;
        if self.winding_down() {
            // STOPPING=1 went out, or is about to: no READY=1 after it.
            return;
        }
        let serving = self
            .active()
            .map(|a| {
                let pid = self.generations.get(&a).and_then(|g| g.pid);
                format!("generation {a}{} serving", pid_note(pid))
            })
            .unwrap_or_else(|| "no generation serving".to_owned());
        self.out.push(Action::Notify(Supervisor::Ready {
            status: format!("{serving}; last upgrade failed: generation {n} {why}"),
        }));
    }

    fn on_peer_gone(&mut self, now: Instant, peer: PeerId, why: &str) {
        self.waiters.retain(|(p, _)| *p != peer);
        self.peers.remove(&peer);
        let Some(n) = self.by_peer(peer) else {
            return;
        };
        let can_reinstate = self.can_reinstate();
        let Some(g) = self.generations.get_mut(&n) else {
            return;
        };
        g.peer = None;
        let why = format!("its control connection ended: {why}");
        match g.phase {
            Phase::Starting { deadline } if g.spawned => {
                // Most likely exiting: wait briefly for its status, which says why.
                g.phase = Phase::Starting {
                    deadline: deadline.min(deadline_after(now, EXIT_GRACE)),
                };
                g.lost = Some(why);
            }
            Phase::Starting { .. } => self.fail_starting(now, n, &why),
            Phase::Active { since } if can_reinstate => {
                let pid = g.pid;
                self.kill(n);
                self.reinstate(now, n, pid, since, &why);
            }
            Phase::Active { since } if g.spawned => {
                g.phase = Phase::Lost {
                    since,
                    deadline: deadline_after(now, EXIT_GRACE),
                };
                g.lost = Some(why);
            }
            Phase::Active { since } => {
                let pid = g.pid;
                self.generations.remove(&n);
                report!(error, "active generation {n}{} lost: {why}", pid_note(pid));
                self.crashed(now, since);
            }
            Phase::Draining { .. } | Phase::Probation { .. } if !g.spawned => {
                self.generations.remove(&n);
            }
            Phase::Probation { .. } => {
                // Out of touch, it cannot be reinstated: it drains by itself (it lost the
                // front) and is held to its drain deadline.
                g.phase = Phase::Draining {
                    since: now,
                    deadline: drain_deadline(now, g.timeouts),
                };
                g.lost = Some(why);
            }
            Phase::Draining { .. } | Phase::Lost { .. } | Phase::Killed => {}
        }
    }

    fn on_exited(&mut self, now: Instant, n: Gen, status: &str, success: bool) {
        let Some(g) = self.generations.remove(&n) else {
            return;
        };
        if let Some(peer) = g.peer {
            self.close_peer(peer);
        }
        if let Phase::Active { since } = g.phase
            && self.can_reinstate()
        {
            self.reinstate(now, n, g.pid, since, &format!("it exited with {status}"));
            return;
        }
        let pid = pid_note(g.pid);
        match g.phase {
            // Respawning is for failures: a program that ends by itself, successfully, ends
            // the service (as systemd's Restart=on-failure would). A test calling `bind`
            // ends this way instead of being started again forever.
            Phase::Lost { since, .. }
                if success
                    && !self.winding_down()
                    && self.active().is_none()
                    && self.starting().is_none() =>
            {
                report!(
                    info,
                    "generation {n}{pid} exited with status 0 by itself after serving {} ms: the service ends",
                    now.saturating_duration_since(since).as_millis()
                );
                self.stop(now, &format!("stops: generation {n} ended by itself"));
            }
            Phase::Lost { since, .. } if self.winding_down() => tracing::info!(
                generation = n,
                "generation {n}{pid} stopped after serving {} ms ({status})",
                now.saturating_duration_since(since).as_millis()
            ),
            Phase::Lost { since, .. } => {
                report!(
                    error,
                    "active generation {n}{pid} exited with {status} after serving {} ms",
                    now.saturating_duration_since(since).as_millis()
                );
                self.crashed(now, since);
            }
            Phase::Active { since } if success && !self.winding_down() => {
                report!(
                    info,
                    "generation {n}{pid} exited with status 0 by itself after serving {} ms: the service ends",
                    now.saturating_duration_since(since).as_millis()
                );
                self.stop(now, &format!("stops: generation {n} ended by itself"));
            }
            Phase::Starting { .. }
                if success && !self.winding_down() && self.active().is_none() =>
            {
                report!(
                    info,
                    "generation {n}{pid} exited with status 0 before it served: nothing to serve, the service ends"
                );
                self.answer_waiters(
                    n,
                    Message::Error {
                        reason: format!("generation {n} exited with status 0 before it was ready"),
                    },
                );
                self.stop(now, &format!("stops: generation {n} ended by itself"));
            }
            Phase::Starting { .. } => {
                let why = format!("it exited with {status}");
                self.log_failed_start(n, g.pid, &why);
                self.answer_waiters(
                    n,
                    Message::Error {
                        reason: format!("generation {n} failed before it was ready: {why}"),
                    },
                );
                self.failed(now, &why);
            }
            Phase::Active { since } if self.winding_down() => tracing::info!(
                generation = n,
                "generation {n}{pid} stopped after serving {} ms ({status})",
                now.saturating_duration_since(since).as_millis()
            ),
            Phase::Active { since } => {
                report!(
                    error,
                    "active generation {n}{pid} exited with {status} after serving {} ms",
                    now.saturating_duration_since(since).as_millis()
                );
                self.crashed(now, since);
            }
            Phase::Draining { .. } if g.lost.is_some() => tracing::warn!(
                generation = n,
                "generation {n}{pid} exited with {status} after losing its control connection"
            ),
            Phase::Draining { since, .. } => tracing::info!(
                generation = n,
                "generation {n}{pid} finished draining after {} ms ({status})",
                now.saturating_duration_since(since).as_millis()
            ),
            Phase::Probation { since, .. } => tracing::warn!(
                generation = n,
                "generation {n}{pid} exited with {status} {} ms into its probation: it can no longer be reinstated",
                now.saturating_duration_since(since).as_millis()
            ),
            Phase::Killed => {
                tracing::info!(generation = n, "generation {n}{pid} exited ({status})")
            }
        }
    }

    /// SIGTERM and friends: with a stop delay, keep accepting that long first (generations are
    /// told `Stopping`, for their health checks); a signal during the delay ends it early.
    fn on_terminate(&mut self, now: Instant, signal: &str) {
        if self.stopping || self.stop_at.is_some() || self.stop_delay.is_zero() {
            self.stop_at = None;
            self.stop(now, &format!("got {signal}"));
            return;
        }
        self.stop_at = Some(deadline_after(now, self.stop_delay));
        self.respawn_at = None;
        tracing::info!(
            "front got {signal}: still accepting for the stop delay ({:?}), then stopping",
            self.stop_delay
        );
        self.notify_stopping(&format!("got {signal}; stop delay {:?}", self.stop_delay));
        let starting: Vec<Gen> = self
            .generations
            .iter()
            .filter(|(_, g)| matches!(g.phase, Phase::Starting { .. }))
            .map(|(n, _)| *n)
            .collect();
        for n in starting {
            self.fail_starting(now, n, "the service is stopping");
        }
        let peers: Vec<PeerId> = self.generations.values().filter_map(|g| g.peer).collect();
        for peer in peers {
            self.out.push(Action::Send {
                peer,
                message: Message::Stopping,
            });
        }
        for (peer, _) in std::mem::take(&mut self.waiters) {
            self.refuse(peer, "the service is shutting down".to_owned());
        }
    }

    /// A generation was sent SIGTERM or SIGINT by someone else than the front: start its
    /// replacement; it keeps serving until the replacement is ready, then drains as superseded.
    fn on_stop_requested(&mut self, now: Instant, peer: PeerId) {
        if self.winding_down() {
            // It was told to stop (or will be) by the front itself.
            return;
        }
        let Some(n) = self.by_peer(peer) else {
            return;
        };
        let Some(g) = self.generations.get_mut(&n) else {
            return;
        };
        let pid = pid_note(g.pid);
        match g.phase {
            Phase::Active { .. } => {
                g.stop_requested = true;
                tracing::info!(
                    generation = n,
                    "generation {n}{pid} was asked to stop: starting its replacement; it serves until then"
                );
                let spawned = self.spawn(now, &format!("generation {n} was asked to stop"));
                if let Ok(new) = spawned {
                    self.begin_reload(new, "the active generation was asked to stop");
                }
                if let Err(why) = spawned {
                    tracing::info!(
                        generation = n,
                        "no new replacement for generation {n}: {why}"
                    );
                }
            }
            Phase::Starting { .. } => self.fail_starting(now, n, "it was asked to stop"),
            Phase::Probation { .. } => {
                tracing::info!(
                    generation = n,
                    "generation {n}{pid} was asked to stop during its probation: it drains now"
                );
                self.release(now, n);
            }
            Phase::Draining { .. } | Phase::Lost { .. } | Phase::Killed => {}
        }
    }

    /// Stops the service: starting generations are killed, the others drain by their own
    /// deadlines; a second stop kills everything. The front exits once every process it
    /// spawned has been reaped.
    fn stop(&mut self, now: Instant, why: &str) {
        if self.stopping {
            tracing::warn!("front {why} again: killing the remaining generations");
            let all: Vec<Gen> = self.generations.keys().copied().collect();
            for n in all {
                self.kill(n);
            }
            self.exit_code = 1;
            return;
        }
        self.stopping = true;
        self.respawn_at = None;
        tracing::info!(
            "front {why}: stopping {} generation(s)",
            self.generations.len()
        );
        self.notify_stopping(why);
        // Nothing will accept again: once the generations have closed their copies too, a late
        // client is refused at once instead of waiting in a queue nobody reads.
        self.out.push(Action::CloseListeners);
        let all: Vec<Gen> = self.generations.keys().copied().collect();
        for n in all {
            let Some(g) = self.generations.get_mut(&n) else {
                continue;
            };
            match g.phase {
                Phase::Starting { .. } => self.fail_starting(now, n, "the service is stopping"),
                Phase::Active { .. }
                | Phase::Draining { .. }
                | Phase::Lost { .. }
                | Phase::Probation { .. } => {
                    let deadline = drain_deadline(now, g.timeouts);
                    g.phase = match g.phase {
                        Phase::Draining { since, deadline: d } => Phase::Draining {
                            since,
                            deadline: d.min(deadline),
                        },
                        _ => Phase::Draining {
                            since: now,
                            deadline,
                        },
                    };
                    if let Some(peer) = g.peer {
                        self.out.push(Action::Send {
                            peer,
                            message: Message::Shutdown,
                        });
                    }
                }
                Phase::Killed => {}
            }
        }
        for (peer, _) in std::mem::take(&mut self.waiters) {
            self.refuse(peer, "the service is shutting down".to_owned());
        }
    }

    fn on_tick(&mut self, now: Instant) {
        if self.stop_at.is_some_and(|t| t <= now) {
            self.stop_at = None;
            self.stop(now, "ends its stop delay");
        }
        if self.respawn_at.is_some_and(|t| t <= now) {
            self.respawn_at = None;
            if let Err(why) = self.spawn(now, "respawn") {
                tracing::warn!("respawn skipped: {why}");
            }
        }
        let expired: Vec<(Gen, Phase)> = self
            .generations
            .iter()
            .filter(|(_, g)| match g.phase {
                Phase::Starting { deadline }
                | Phase::Draining { deadline, .. }
                | Phase::Lost { deadline, .. }
                | Phase::Probation {
                    until: deadline, ..
                } => deadline <= now,
                Phase::Active { .. } | Phase::Killed => false,
            })
            .map(|(n, g)| (*n, g.phase))
            .collect();
        for (n, phase) in expired {
            let Some(g) = self.generations.get(&n) else {
                continue;
            };
            if let Phase::Starting { .. } = phase {
                let why = match &g.lost {
                    Some(lost) => format!("{lost}, and it was still running {EXIT_GRACE:?} later"),
                    None => format!("not ready within {:?}", g.timeouts.ready),
                };
                self.fail_starting(now, n, &why);
                continue;
            }
            if let Phase::Probation { since, .. } = phase {
                tracing::info!(
                    generation = n,
                    "generation {n}{} ends its probation after {} ms: the new generation held, it drains now",
                    pid_note(g.pid),
                    now.saturating_duration_since(since).as_millis()
                );
                self.release(now, n);
                continue;
            }
            if let Phase::Lost { since, .. } = phase {
                // Still running without its channel: it drains by itself (it lost the front);
                // keep it, with a kill deadline, until it exits, and replace it now.
                let why = g.lost.clone().unwrap_or_default();
                let pid = pid_note(g.pid);
                let deadline = drain_deadline(now, g.timeouts);
                if let Some(g) = self.generations.get_mut(&n) {
                    g.phase = Phase::Draining {
                        since: now,
                        deadline,
                    };
                }
                report!(error, "active generation {n}{pid} lost: {why}");
                self.crashed(now, since);
                continue;
            }
            tracing::warn!(
                generation = n,
                "generation {n}{} still running {:?} after it was told to stop: killing it",
                pid_note(g.pid),
                g.timeouts.drain.saturating_add(DRAIN_SLACK)
            );
            self.kill(n);
            if self.stopping {
                self.exit_code = 1;
            }
        }
    }

    /// Whether the death of the active generation would bring back the one on probation.
    fn can_reinstate(&self) -> bool {
        !self.stopping && self.on_probation().is_some()
    }

    /// The generation on probation will not be needed: it drains and exits as superseded.
    fn release(&mut self, now: Instant, n: Gen) {
        let Some(g) = self.generations.get_mut(&n) else {
            return;
        };
        if !matches!(g.phase, Phase::Probation { .. }) {
            return;
        }
        g.phase = Phase::Draining {
            since: now,
            deadline: drain_deadline(now, g.timeouts),
        };
        if let Some(peer) = g.peer {
            self.out.push(Action::Send {
                peer,
                message: Message::Superseded,
            });
            g.told_aside = g.told_aside.saturating_add(1);
        }
    }

    /// The active generation `dead` (ready at `since`) died while its predecessor was on
    /// probation: the predecessor accepts again at once, and the failed build is not started
    /// again until someone asks for an upgrade.
    fn reinstate(
        &mut self,
        now: Instant,
        dead: Gen,
        dead_pid: Option<u32>,
        since: Instant,
        how: &str,
    ) {
        let Some(back) = self.on_probation() else {
            return;
        };
        let Some(g) = self.generations.get_mut(&back) else {
            return;
        };
        g.phase = Phase::Active { since: now };
        let (peer, pid) = (g.peer, g.pid);
        if let Some(peer) = peer {
            self.out.push(Action::Send {
                peer,
                message: Message::Reinstated,
            });
        }
        let lived = now.saturating_duration_since(since).as_millis();
        report!(
            error,
            "generation {dead}{} died {lived} ms after taking over ({how}); generation {back}{} reinstated and accepting again; the failed build is not restarted (upgrade again once it is fixed)",
            pid_note(dead_pid),
            pid_note(pid)
        );
        self.out.push(Action::Notify(Supervisor::Status {
            status: format!(
                "generation {back}{} serving again (reinstated): generation {dead} died {lived} ms after taking over",
                pid_note(pid)
            ),
        }));
        // Counted like any crash soon after ready, so a build that keeps dying is noticed;
        // with a generation serving, nothing is respawned.
        self.failed(
            now,
            &format!("generation {dead} died {lived} ms after taking over"),
        );
    }

    fn notify_stopping(&mut self, why: &str) {
        if !std::mem::replace(&mut self.stop_notified, true) {
            self.out.push(Action::Notify(Supervisor::Stopping {
                status: format!("stopping ({why})"),
            }));
        }
    }

    /// A starting generation failed (deadline, lost connection, stop): kill it, roll back.
    fn fail_starting(&mut self, now: Instant, n: Gen, why: &str) {
        let pid = self.generations.get(&n).and_then(|g| g.pid);
        self.kill(n);
        self.log_failed_start(n, pid, why);
        self.answer_waiters(
            n,
            Message::Error {
                reason: format!("generation {n} failed before it was ready: {why}"),
            },
        );
        if !self.winding_down() {
            self.failed(now, why);
        }
    }

    fn log_failed_start(&mut self, n: Gen, pid: Option<u32>, why: &str) {
        self.end_failed_reload(n, &format!("failed before it was ready ({why})"));
        let pid = pid_note(pid);
        let active = self.active();
        let asked_to_stop = active
            .and_then(|a| self.generations.get(&a))
            .is_some_and(|g| g.stop_requested);
        match active {
            Some(active) if !self.winding_down() && asked_to_stop => report!(
                warn,
                "rollback: generation {n}{pid} failed before it was ready ({why}); generation {active} was asked to stop but keeps serving until a replacement is ready (signal it again to stop it anyway)"
            ),
            Some(active) if !self.winding_down() => report!(
                warn,
                "rollback: generation {n}{pid} failed before it was ready ({why}); generation {active} keeps serving"
            ),
            _ => report!(
                warn,
                "generation {n}{pid} failed before it was ready ({why})"
            ),
        }
    }

    /// The active generation that became ready at `since` is gone without being asked.
    fn crashed(&mut self, now: Instant, since: Instant) {
        if self.winding_down() {
            return;
        }
        let served = now.saturating_duration_since(since);
        self.failed(
            now,
            &format!(
                "the active generation ended after serving {} ms",
                served.as_millis()
            ),
        );
    }

    /// Counts one failure (a failed start, or a crash) and decides what follows: nothing while
    /// another generation serves, else a respawn after a growing delay, or giving up.
    fn failed(&mut self, now: Instant, why: &str) {
        if self
            .last_ready
            .is_some_and(|t| now.saturating_duration_since(t) >= STABLE_AFTER)
        {
            // The last generation served long enough to count as healthy.
            self.failures = 0;
            self.last_ready = None;
        }
        self.failures = self.failures.saturating_add(1);
        if self.winding_down() || self.active().is_some() || self.starting().is_some() {
            return;
        }
        let limit = if self.ever_ready {
            MAX_CONSECUTIVE_FAILURES
        } else {
            MAX_INITIAL_ATTEMPTS
        };
        if self.failures >= limit {
            report!(
                error,
                "{} consecutive failures with no generation serving (last: {why}); the front gives up",
                self.failures
            );
            self.exit_code = 1;
            self.stop(now, "gives up");
            return;
        }
        let delay = respawn_delay(self.failures);
        report!(
            warn,
            {
                respawn_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                failures = self.failures,
                limit
            },
            "no generation is serving; starting another in {} ms (failure {} of at most {limit})",
            delay.as_millis(),
            self.failures
        );
        self.respawn_at = Some(deadline_after(now, delay));
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
        let peer = g.peer.take();
        self.out.push(Action::Kill(n));
        if g.spawned {
            g.phase = Phase::Killed;
        } else {
            self.generations.remove(&n);
        }
        if let Some(peer) = peer {
            self.close_peer(peer);
        }
    }

    fn close_peer(&mut self, peer: PeerId) {
        self.peers.remove(&peer);
        for g in self.generations.values_mut() {
            if g.peer == Some(peer) {
                g.peer = None;
            }
        }
        self.waiters.retain(|(p, _)| *p != peer);
        self.out.push(Action::Close(peer));
    }

    fn refuse(&mut self, peer: PeerId, reason: String) {
        self.out.push(Action::Send {
            peer,
            message: Message::Error { reason },
        });
        self.close_peer(peer);
    }

    fn answer_waiters(&mut self, n: Gen, answer: Message) {
        let (done, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(_, waited)| *waited == n);
        self.waiters = rest;
        for (peer, _) in done {
            self.out.push(Action::Send {
                peer,
                message: answer.clone(),
            });
            self.close_peer(peer);
        }
    }
}

fn drain_deadline(now: Instant, timeouts: Timeouts) -> Instant {
    deadline_after(now, timeouts.drain.saturating_add(DRAIN_SLACK))
}

/// Wait before the `failures`-th consecutive respawn: 200 ms, doubling, at most 10 s.
pub(crate) fn respawn_delay(failures: u32) -> Duration {
    MIN_RESPAWN_DELAY
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_RESPAWN_DELAY)
}

fn pid_note(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

#[cfg(test)]
mod tests;
