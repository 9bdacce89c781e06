//! The property test: random histories of the world around the machine, with the machine's
//! actions performed the way the shell performs them, and the safety of the service checked
//! after every step from what each generation was told, not from the machine's bookkeeping.
//!
//! The world is processes (spawned by the machine, or started by hand), control clients, and
//! the shell's queue of events not delivered yet: a process's death shows as the end of its
//! channel and, for a spawned one, its exit status, delivered in either order and interleaved
//! with anything else, as the shell's `select!` can; a peer the machine closed still reports
//! its end; a peer's task may relay a frame after the machine closed it.
//!
//! Each generation's own view is derived from the messages it received: `Listeners` (joined,
//! not accepting), its first accept and `Ready` (accepting), `Probation` (paused),
//! `Reinstated` (accepting), `Superseded` or `Shutdown` or the end of its channel (closing).
//! The invariants, checked after every step (`Model::check` and `Model::input`):
//!
//! 1. The active generation accepts, and no other live one does once it serves: a generation
//!    is never told to stop accepting before its successor accepts.
//! 2. Serving liveness: not stopping and nothing active ⇒ a generation is starting, or the
//!    active one's end is being judged, or a respawn is due within the longest delay, and
//!    `next_deadline` covers it; the watched generation's ping deadline is covered too.
//! 3. A stop begins only on a signal, a clean exit of the last generation, or giving up (with
//!    as many consecutive failures as the policy says, counted here independently), and Exit
//!    only after one; its status is 0 only if nothing that served had to be killed.
//! 4. Active ⇒ a live process whose channel is open (its death not delivered).
//! 5. After a stop begins: no spawn, no takeover, no reinstatement.
//! 6. Every control client that asked gets exactly one answer (`Upgraded`, `Error` or `Busy`),
//!    `Busy` once the service is stopping; `Upgraded` only once the superseded generations
//!    stepped aside or the timeout passed.
//! 7. A generation started by hand whose channel ended is forgotten.
//! 8. A respawn waits as long as the failures counted say; a generation on probation is
//!    released only once its successor answered a ping sent after the window.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::backoff::{
    MAX_CONSECUTIVE_FAILURES, MAX_INITIAL_ATTEMPTS, MAX_RESPAWN_DELAY, STABLE_AFTER, respawn_delay,
};
use super::probation::{PING_INTERVAL, PING_TIMEOUT};
use super::timers::Timer;
use super::{
    Action, EXIT_GRACE, Gen, Input, Machine, Message, PeerId, Phase, Role, STEP_ASIDE_TIMEOUT,
    Timeouts,
};
use crate::systemd::Supervisor;

const SEC: Duration = Duration::from_secs(1);

/// One abstract event; indices pick among whatever exists at that moment.
#[derive(Debug, Clone)]
enum Op {
    Hangup,
    /// A whole upgrade as it usually goes: SIGHUP, then the new build says Hello (with a
    /// probation window or not) and Ready. Histories with several takeovers in a row are where
    /// probation, release and reinstatement meet.
    Takeover(bool),
    /// A control client connects, says Hello and asks for an upgrade.
    Upgrade,
    /// A control client hangs up before its answer.
    ClientLeaves(usize),
    /// A spawned process says Hello on its inherited channel: with a probation window or not,
    /// and with its own pid or (a confused or hostile process on the channel) another.
    Hello(usize, bool, bool),
    /// A spawned process says Hello through the public endpoint instead (where it could not
    /// use its inherited channel).
    HelloViaEndpoint(usize),
    /// A build started by hand connects, with these ready, drain and probation timeouts
    /// (seconds).
    HandStarted(u64, u64, u64),
    /// A peer that said Hello says it again (the peer task never relays one; the machine must
    /// not care).
    HelloAgain(usize),
    /// A process that joined starts accepting and says Ready.
    Ready(usize),
    /// A frame from any peer ever seen, closed or not, asked for or not: what a peer task may
    /// still relay after the machine closed it, or a confused peer sends.
    Stray(usize, u8),
    /// A live process exits on its own with this status code.
    Exit(usize, i32),
    /// A live process stops answering anything (SIGSTOP, a deadlocked runtime).
    Freeze(usize),
    /// A killed process is reaped.
    Reap(usize),
    /// The shell delivers one of the events it has queued.
    Deliver(usize),
    /// The shell drops a connection (not writable): the process lives on without it.
    Drop(usize),
    Terminate,
    Advance(u64),
    Tick,
    /// The next spawn fails.
    FailNextSpawn,
    /// A generation was sent SIGTERM from outside.
    StopRequested(usize),
    /// A generation answers the oldest `Probation` or `Superseded` it has not answered.
    SteppedAside(usize),
    /// A generation answers the ping it was sent.
    Pong(usize),
    /// A control client connects, says Hello and asks the front to re-execute; if it does,
    /// the shell's part is played here: the old image's connections other than the serving
    /// generation's and the client's end, and a new machine resumes from the snapshot.
    ReExec,
    /// A spawned process says Hello in the next protocol version (unreadable: the shell
    /// reports it), then exits, unable to join.
    NewerHello(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Hangup),
        3 => any::<bool>().prop_map(Op::Takeover),
        1 => Just(Op::Upgrade),
        1 => any::<usize>().prop_map(Op::ClientLeaves),
        5 => (any::<usize>(), any::<bool>(), prop::bool::weighted(0.05))
            .prop_map(|(i, p, w)| Op::Hello(i, p, w)),
        1 => any::<usize>().prop_map(Op::HelloViaEndpoint),
        1 => (0u64..120, 0u64..120, 0u64..20).prop_map(|(r, d, p)| Op::HandStarted(r, d, p)),
        1 => any::<usize>().prop_map(Op::HelloAgain),
        5 => any::<usize>().prop_map(Op::Ready),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, k)| Op::Stray(i, k)),
        2 => (any::<usize>(), prop_oneof![Just(0), Just(1), Just(101)])
            .prop_map(|(i, code)| Op::Exit(i, code)),
        1 => any::<usize>().prop_map(Op::Freeze),
        3 => any::<usize>().prop_map(Op::Reap),
        6 => any::<usize>().prop_map(Op::Deliver),
        1 => any::<usize>().prop_map(Op::Drop),
        1 => Just(Op::Terminate),
        4 => (0u64..15_000).prop_map(Op::Advance),
        4 => Just(Op::Tick),
        1 => Just(Op::FailNextSpawn),
        1 => any::<usize>().prop_map(Op::StopRequested),
        3 => any::<usize>().prop_map(Op::SteppedAside),
        4 => any::<usize>().prop_map(Op::Pong),
        1 => Just(Op::ReExec),
        1 => any::<usize>().prop_map(Op::NewerHello),
    ]
}

/// What a generation process believes about its own listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    /// Not joined yet (no `Listeners`).
    Outside,
    /// Has the listening sockets, not accepting yet.
    Joined,
    Accepting,
    /// On probation: holds the sockets, accepts nothing.
    Paused,
    /// Superseded, stopping, or it lost the front: accepts nothing ever again.
    Closing,
}

/// One process of the service.
#[derive(Debug, Clone)]
struct Proc {
    /// The machine's number for it: the spawned one, or what `Listeners` said.
    generation: Option<Gen>,
    spawned: bool,
    /// The connection it talks on: its inherited channel, or the endpoint connection it said
    /// Hello on.
    peer: Option<PeerId>,
    /// Its inherited channel (spawned processes), which it may leave unused.
    channel: Option<PeerId>,
    alive: bool,
    frozen: bool,
    killed: bool,
    said_hello: bool,
    /// The pid its Hello claimed.
    claimed: u32,
    said_ready: bool,
    view: View,
    /// `Probation` and `Superseded` received and not answered yet.
    owed_aside: u32,
    /// When the ping it has not answered was sent.
    ping: Option<Instant>,
}

#[derive(Debug, Clone, Default)]
struct Client {
    asked: bool,
    answers: u32,
    /// It hung up: nobody is owed an answer any more.
    left: bool,
}

/// What one input was, for checking the actions it produced.
struct Step {
    before: BTreeMap<Gen, Phase>,
    is_tick: bool,
    /// For a `Pong`: when the ping it answers was sent.
    answering: Option<Instant>,
    may_begin_upgrade: bool,
    getting_ready: Option<Gen>,
    /// Control clients hear `Busy`, not `Error`: the service was stopping, or stops now.
    busy_only: bool,
}

/// The world outside the machine.
struct Model {
    m: Machine,
    defaults: Timeouts,
    stop_delay: Duration,
    /// Re-execs done, for the test to show it explored them.
    reexecs: u32,
    /// Generations whose build spoke the next protocol version.
    newer: BTreeSet<Gen>,
    now: Instant,
    next_peer: PeerId,
    next_pid: u32,
    procs: BTreeMap<u32, Proc>,
    clients: BTreeMap<PeerId, Client>,
    /// Peers the machine has not closed.
    open: BTreeSet<PeerId>,
    /// Every peer ever seen, for stray frames.
    known: Vec<PeerId>,
    /// Events the shell has yet to deliver.
    pending: Vec<Input>,
    fail_next_spawn: bool,
    exited: Option<i32>,
    /// Why the service began to stop, once it did.
    stopping: Option<&'static str>,
    /// What the exit status must be, from what happened since the stop began.
    expected_failure: bool,
    // The respawn policy, counted here from what the machine did.
    failures: u32,
    ever_ready: bool,
    // systemd's view.
    reloading: bool,
    stop_notified: bool,
    /// Serving generations told to stop accepting: by which successor's takeover, when, on
    /// which peer, and the how-manieth such message to that peer it was.
    told_aside: BTreeMap<Gen, (Gen, Instant, PeerId, u32)>,
    tells: BTreeMap<PeerId, u32>,
    answers: BTreeMap<PeerId, u32>,
    /// The current probation: the generation on it, and when its window ends.
    window: Option<(Gen, Instant)>,
    /// When the ping that the `Pong` being fed answers was sent.
    answering: Option<Instant>,
    /// When each generation first took over, for the health rule.
    first_ready: BTreeMap<Gen, Instant>,
}

fn is_active(phase: Option<&Phase>) -> bool {
    matches!(phase, Some(Phase::Active))
}

impl Model {
    fn new(stop_delay: Duration) -> Self {
        let timeouts = Timeouts {
            ready: 5 * SEC,
            drain: 10 * SEC,
            probation: 4 * SEC,
        };
        let mut model = Model {
            m: Machine::new(timeouts, stop_delay),
            defaults: timeouts,
            stop_delay,
            reexecs: 0,
            newer: BTreeSet::new(),
            now: Instant::now(),
            next_peer: 100,
            next_pid: 1000,
            procs: BTreeMap::new(),
            clients: BTreeMap::new(),
            open: BTreeSet::new(),
            known: Vec::new(),
            pending: Vec::new(),
            fail_next_spawn: false,
            exited: None,
            stopping: None,
            expected_failure: false,
            failures: 0,
            ever_ready: false,
            reloading: false,
            stop_notified: false,
            told_aside: BTreeMap::new(),
            tells: BTreeMap::new(),
            answers: BTreeMap::new(),
            window: None,
            answering: None,
            first_ready: BTreeMap::new(),
        };
        model.input(Input::Start);
        model
    }

    fn pick<T: Copy>(items: impl Iterator<Item = T>, index: usize) -> Option<T> {
        let items: Vec<T> = items.collect();
        (!items.is_empty()).then(|| items[index % items.len()])
    }

    fn new_peer(&mut self) -> PeerId {
        self.next_peer += 1;
        self.open.insert(self.next_peer);
        self.known.push(self.next_peer);
        self.next_peer
    }

    /// Spawned processes that live, answer and have not said Hello on their open channel.
    fn fresh_children(&self) -> impl Iterator<Item = u32> + '_ {
        self.procs
            .iter()
            .filter(|(_, p)| {
                p.spawned
                    && p.alive
                    && !p.frozen
                    && !p.said_hello
                    && p.channel.is_some_and(|c| self.open.contains(&c))
            })
            .map(|(pid, _)| *pid)
    }

    fn new_pid(&mut self) -> u32 {
        self.next_pid += 1;
        self.next_pid
    }

    fn proc_on(&self, peer: PeerId) -> Option<u32> {
        self.procs
            .iter()
            .find(|(_, p)| p.peer == Some(peer) || p.channel == Some(peer))
            .map(|(pid, _)| *pid)
    }

    /// A live process that still hears from the front and answers (not frozen).
    fn talking(&self) -> impl Iterator<Item = (u32, &Proc)> {
        self.procs
            .iter()
            .filter(|(_, p)| {
                p.alive
                    && !p.frozen
                    && p.said_hello
                    && p.peer.is_some_and(|c| self.open.contains(&c))
            })
            .map(|(pid, p)| (*pid, p))
    }

    /// The process's channel ended (for whatever reason): it drains by itself.
    fn channel_ended(&mut self, peer: PeerId) {
        if let Some(pid) = self.proc_on(peer)
            && let Some(p) = self.procs.get_mut(&pid)
            && p.peer == Some(peer)
        {
            p.view = View::Closing;
        }
    }

    /// A process dies: the shell will report the end of its channels and, for a spawned one,
    /// its exit status, in some order.
    fn dies(&mut self, pid: u32, code: i32) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        if !p.alive {
            return;
        }
        p.alive = false;
        p.view = View::Closing;
        for peer in [p.peer, p.channel].into_iter().flatten() {
            self.pending.push(Input::PeerGone {
                peer,
                why: "end of stream".to_owned(),
            });
        }
        if p.spawned
            && let Some(generation) = p.generation
        {
            self.pending.push(Input::Exited {
                generation,
                status: if code == 9 {
                    "signal: 9 (SIGKILL)".to_owned()
                } else {
                    format!("exit status: {code}")
                },
                success: code == 0,
            });
        }
    }

    fn healthy(&self, n: Gen) -> bool {
        self.first_ready
            .get(&n)
            .is_some_and(|t| self.now.saturating_duration_since(*t) >= STABLE_AFTER)
    }

    /// Feeds one input, performs the actions the way the shell does, and checks each step.
    fn input(&mut self, input: Input) {
        if self.exited.is_some() {
            assert!(
                self.m.handle(self.now, input).is_empty(),
                "actions after Exit"
            );
            return;
        }
        let mut queue = vec![input];
        while let Some(input) = queue.pop() {
            let before = self.m.phases();
            let running = self.m.running();
            let respawn_before = self.m.timers.get(Timer::Respawn);
            let upgrade_from = match input {
                Input::UpgradeRequested { peer } => Some(peer),
                _ => None,
            };
            let was_starting = self.m.starting().is_some();
            // A new upgrade, or a newer generation ready, reports the previous takeover as it
            // stands, confirmed or not.
            let may_begin_upgrade = matches!(
                input,
                Input::Hangup
                    | Input::UpgradeRequested { .. }
                    | Input::Hello { .. }
                    | Input::StopRequested { .. }
            );
            let getting_ready = match input {
                Input::Ready { peer } => self.m.by_peer(peer),
                _ => None,
            };
            let repeated_hello = matches!(input, Input::Hello { peer, .. }
                if self.m.peers.contains_key(&peer) || self.m.by_peer(peer).is_some());
            let answering = match input {
                Input::Pong { .. } => self.answering.take(),
                _ => None,
            };
            let is_tick = input == Input::Tick;
            let is_terminate = matches!(input, Input::Terminate { .. });
            let clean_exit = match input {
                Input::Exited {
                    generation,
                    success: true,
                    ..
                } => Some(generation),
                _ => None,
            };
            let second_stop = is_terminate
                && matches!(self.m.life, super::Life::Stopping { .. })
                && !self.m.generations.is_empty();
            let busy_only = self.stopping.is_some() || is_terminate;
            let out = self.m.handle(self.now, input.clone());
            // (A re-exec tried again after a busy try goes out after whatever comes next.)
            assert!(
                !repeated_hello || out.iter().all(|a| matches!(a, Action::ReExec(_))),
                "a second Hello changed something: {out:?}"
            );
            if let Some(client) = upgrade_from
                && was_starting
                && self.clients.get(&client).is_some_and(|c| c.answers == 0)
                && self.m.peers.contains_key(&client)
                && !self
                    .m
                    .upgrade()
                    .is_some_and(|u| u.clients.contains(&client))
            {
                assert!(
                    out.iter().any(|a| matches!(a, Action::Send { peer, message: Message::Busy { reason } } if *peer == client && !reason.is_empty())),
                    "an upgrade while one starts must be Busy, with a reason: {out:?}"
                );
            }
            let after = self.m.phases();
            // Invariant 3: why the service stops.
            if running && !self.m.running() {
                let others_serve = before.iter().any(|(n, p)| {
                    Some(*n) != clean_exit
                        && matches!(
                            p,
                            Phase::Active | Phase::Starting | Phase::Lost | Phase::Probation { .. }
                        )
                });
                let why = if is_terminate {
                    "signal"
                } else if clean_exit.is_some_and(|n| before.contains_key(&n)) && !others_serve {
                    "a clean exit of the last generation"
                } else {
                    "giving up"
                };
                self.stopping = Some(why);
                if why == "giving up" {
                    self.expected_failure = true;
                }
            }
            if second_stop {
                self.expected_failure = true;
            }
            if !is_terminate {
                self.count_failures(&before, &after, running, &input);
            }
            if self.m.running() {
                // The policy's count, which decides every later delay and giving up, is the
                // one counted here from what happened.
                assert_eq!(
                    self.m.backoff.failures(),
                    self.failures,
                    "consecutive failures after {input:?} ({before:?} -> {after:?})"
                );
            }
            // A respawn scheduled now waits as long as the failures counted say.
            let respawn_after = self.m.timers.get(Timer::Respawn);
            if let Some(at) = respawn_after
                && respawn_after != respawn_before
            {
                assert_eq!(
                    at - self.now,
                    respawn_delay(self.failures),
                    "respawn delay after {} consecutive failures",
                    self.failures
                );
            }
            if self.stopping == Some("giving up") && running && !self.m.running() {
                let limit = if self.ever_ready {
                    MAX_CONSECUTIVE_FAILURES
                } else {
                    MAX_INITIAL_ATTEMPTS
                };
                assert!(
                    self.failures >= limit,
                    "the service stopped with {} consecutive failures of at most {limit} (input {input:?}; {before:?} -> {after:?})",
                    self.failures
                );
            }
            // Invariant 5: no takeover once stopping.
            for (n, phase) in &after {
                if matches!(phase, Phase::Active) && !is_active(before.get(n)) {
                    assert!(
                        self.m.running(),
                        "generation {n} took over while the service stops"
                    );
                    if before.get(n) == Some(&Phase::Starting) {
                        self.ever_ready = true;
                        self.first_ready.entry(*n).or_insert(self.now);
                    }
                }
            }
            let step = Step {
                before,
                is_tick,
                answering,
                may_begin_upgrade,
                getting_ready,
                busy_only,
            };
            for action in out {
                self.perform(action, &step, &mut queue);
            }
        }
        self.check();
    }

    /// The policy, counted from what the machine did: a generation that was starting, or
    /// serving, and ended (killed, gone, out of touch) while the service runs is a failure,
    /// except a clean exit with a replacement on its way; the count restarts when a
    /// generation had served [`STABLE_AFTER`].
    fn count_failures(
        &mut self,
        before: &BTreeMap<Gen, Phase>,
        after: &BTreeMap<Gen, Phase>,
        running: bool,
        input: &Input,
    ) {
        if !running {
            return;
        }
        let reinstated = before
            .iter()
            .any(|(n, p)| matches!(p, Phase::Probation { .. }) && is_active(after.get(n)));
        let took_over = after
            .iter()
            .any(|(n, p)| matches!(p, Phase::Active) && before.get(n) == Some(&Phase::Starting));
        let active_now = after
            .iter()
            .find(|(_, p)| matches!(p, Phase::Active))
            .map(|(n, _)| *n);
        for (n, was) in before {
            let now = after.get(n);
            let failed = match was {
                // A build of the next protocol whose end the front re-executes for instead.
                Phase::Starting
                    if self.newer.contains(n)
                        && (self.m.pending_reexec.is_some()
                            || self.m.reexec_in_flight.is_some()) =>
                {
                    false
                }
                Phase::Starting => matches!(now, None | Some(Phase::Killed)),
                Phase::Active | Phase::Lost => {
                    let ended = matches!(now, None | Some(Phase::Killed))
                        || (matches!(now, Some(Phase::Draining { .. })) && !took_over);
                    let clean = matches!(input, Input::Exited { generation, success: true, .. } if generation == n);
                    ended && (reinstated || !clean)
                }
                _ => false,
            };
            if failed {
                let healthy = self.healthy(*n) || active_now.is_some_and(|a| self.healthy(a));
                if healthy {
                    self.failures = 0;
                }
                self.failures += 1;
            }
        }
    }

    fn perform(&mut self, action: Action, step: &Step, queue: &mut Vec<Input>) {
        // To the client it is an `Error`; the shell adds what it knows of the generation.
        let action = match action {
            Action::Failed { peer, reason, .. } => Action::Send {
                peer,
                message: Message::Error { reason },
            },
            other => other,
        };
        let stopping = self.stopping.is_some();
        let before = &step.before;
        match action {
            Action::Spawn(n) => {
                assert!(!stopping, "generation {n} spawned while the service stops");
                if step.is_tick {
                    assert!(
                        self.m.active().is_none(),
                        "respawned while generation {:?} serves",
                        self.m.active()
                    );
                }
                if std::mem::take(&mut self.fail_next_spawn) {
                    queue.push(Input::SpawnFailed {
                        generation: n,
                        why: "injected".to_owned(),
                    });
                } else {
                    let pid = self.new_pid();
                    let peer = self.new_peer();
                    self.procs.insert(
                        pid,
                        Proc {
                            generation: Some(n),
                            spawned: true,
                            peer: None,
                            channel: Some(peer),
                            alive: true,
                            frozen: false,
                            killed: false,
                            said_hello: false,
                            claimed: pid,
                            said_ready: false,
                            view: View::Outside,
                            owed_aside: 0,
                            ping: None,
                        },
                    );
                    queue.push(Input::Spawned {
                        generation: n,
                        pid,
                        peer,
                    });
                }
            }
            Action::CloseListeners => {}
            Action::Notify(Supervisor::Reloading { .. }) => {
                assert!(!self.reloading, "RELOADING=1 twice without READY=1");
                self.reloading = true;
            }
            Action::Notify(Supervisor::Ready { .. }) => {
                assert!(!self.stop_notified, "READY=1 after STOPPING=1");
                self.reloading = false;
            }
            Action::Notify(Supervisor::Status { .. }) => {}
            Action::Notify(Supervisor::Stopping { .. }) => {
                assert!(!self.stop_notified, "STOPPING=1 twice");
                self.stop_notified = true;
                self.reloading = false;
            }
            Action::SendListeners { peer, generation } => {
                assert!(!stopping, "listeners handed over while the service stops");
                assert!(self.open.contains(&peer), "{action:?} to a closed peer");
                let pid = self.proc_on(peer).expect("listeners go to a process");
                let p = self.procs.get_mut(&pid).expect("process");
                if p.spawned {
                    assert_eq!(
                        p.generation,
                        Some(generation),
                        "listeners for generation {generation} to the process of another"
                    );
                }
                assert_eq!(
                    p.peer,
                    Some(peer),
                    "listeners on a connection it did not say Hello on"
                );
                assert_eq!(
                    p.claimed, pid,
                    "listeners to a process that claimed to be pid {}: only the one the front started, or one that connected itself, gets them",
                    p.claimed
                );
                p.generation = Some(generation);
                if p.view == View::Outside {
                    p.view = View::Joined;
                }
            }
            Action::Failed { .. } => unreachable!("turned into a Send above"),
            Action::Send { peer, ref message } => {
                assert!(self.open.contains(&peer), "{action:?} to a closed peer");
                if let Some(client) = self.clients.get_mut(&peer) {
                    assert!(
                        matches!(
                            message,
                            Message::Upgraded { .. } | Message::Error { .. } | Message::Busy { .. }
                        ),
                        "{message:?} to a control client"
                    );
                    client.answers += 1;
                    assert!(client.answers <= 1, "two answers to control client {peer}");
                    if step.busy_only && client.asked {
                        assert!(
                            matches!(message, Message::Busy { .. }),
                            "an upgrade refused because the service stops must be Busy: {message:?}"
                        );
                    }
                    if let Message::Upgraded { generation } = message {
                        self.check_reported(
                            *generation,
                            step.may_begin_upgrade,
                            step.getting_ready,
                        );
                    }
                    return;
                }
                let Some(pid) = self.proc_on(peer) else {
                    panic!("{action:?} to a peer that is neither a client nor a process");
                };
                self.told(pid, peer, message, step);
            }
            Action::Introduce { from, to } => {
                assert!(
                    from != to && self.open.contains(&from) && self.open.contains(&to),
                    "{action:?} between peers that are not both open"
                );
                let active = self.m.active();
                assert!(
                    active.is_some_and(|n| self.m.generations[&n].peer == Some(to)),
                    "{action:?}: connections must go to the active generation ({active:?})"
                );
            }
            Action::Close(peer) => {
                if self.open.remove(&peer) {
                    self.channel_ended(peer);
                    // The peer's task ends and says so, later.
                    self.pending.push(Input::PeerGone {
                        peer,
                        why: "closed by the front".to_owned(),
                    });
                }
            }
            Action::Kill(n) => {
                if stopping
                    && before
                        .get(&n)
                        .is_some_and(|p| !matches!(p, Phase::Starting | Phase::Killed))
                {
                    // Something that served had to be killed.
                    self.expected_failure = true;
                }
                let target = self
                    .procs
                    .iter()
                    .find(|(_, p)| p.generation == Some(n) && p.alive)
                    .map(|(pid, p)| (*pid, p.spawned));
                if let Some((pid, spawned)) = target {
                    self.procs.get_mut(&pid).expect("process").killed = true;
                    if !spawned {
                        // Not ours to reap: it just dies.
                        self.dies(pid, 9);
                    }
                }
            }
            Action::ReExec(snapshot) => self.reexec(&snapshot, queue),
            Action::Exit(code) => {
                let why = self.stopping.expect("Exit with no stop begun");
                assert!(
                    self.procs
                        .values()
                        .all(|p| !p.spawned || !p.alive || p.generation.is_none()),
                    "exited with children alive ({why})"
                );
                assert_eq!(
                    code != 0,
                    self.expected_failure,
                    "exit status {code} after a stop by {why}"
                );
                self.exited = Some(code);
            }
        }
    }

    /// The shell's part of a re-exec: checked against the world (one live process, serving,
    /// nothing else under way), given up with `Busy` if the shell still holds an event about
    /// the serving generation, else the old image's other connections end, its queue goes
    /// with it, and a machine resumed from the snapshot takes over.
    fn reexec(&mut self, snapshot: &super::Snapshot, queue: &mut Vec<Input>) {
        assert!(self.stopping.is_none(), "re-exec while the service stops");
        // What crosses: the serving generation's connection, and the clients still there.
        let mut snapshot = snapshot.clone();
        snapshot.clients.retain(|c| self.open.contains(c));
        snapshot.asked = snapshot.asked.filter(|c| self.open.contains(c));
        let crossing: Vec<PeerId> = std::iter::once(snapshot.peer)
            .chain(snapshot.asked)
            .chain(snapshot.clients.iter().copied())
            .collect();
        // The shell gives up (Busy) while it holds an event about what crosses or an exit,
        // which would be lost with the old image: a process that died is one.
        let concerns_it = |input: &Input| match input {
            Input::Exited { .. } => true,
            Input::PeerGone { peer, .. }
            | Input::Ready { peer }
            | Input::StopRequested { peer }
            | Input::SteppedAside { peer }
            | Input::Pong { peer } => crossing.contains(peer),
            _ => false,
        };
        if self.pending.iter().chain(queue.iter()).any(concerns_it) {
            queue.push(Input::ReExecFailed {
                why: "something happened meanwhile".to_owned(),
                busy: true,
            });
            return;
        }
        assert_eq!(
            self.reloading, snapshot.reloading,
            "RELOADING=1 unanswered and the snapshot disagree"
        );
        assert!(
            !snapshot.upgrade_after || snapshot.asked.is_none(),
            "a re-exec both asked for and for a newer build"
        );
        let live: Vec<(u32, &Proc)> = self
            .procs
            .iter()
            .filter(|(_, p)| p.alive)
            .map(|(pid, p)| (*pid, p))
            .collect();
        assert!(
            live.iter()
                .all(|(_, p)| p.generation == Some(snapshot.generation) || !p.spawned),
            "re-exec with another spawned process alive: {live:?}"
        );
        let serving = live
            .iter()
            .find(|(_, p)| p.generation == Some(snapshot.generation))
            .map(|(pid, p)| (*pid, p.peer, p.view));
        assert_eq!(
            serving,
            Some((snapshot.pid, Some(snapshot.peer), View::Accepting)),
            "re-exec while generation {} is not the one serving in touch",
            snapshot.generation
        );
        self.reexecs += 1;
        // The old image's connections end with it, but for those that cross.
        let ending: Vec<PeerId> = self
            .open
            .iter()
            .copied()
            .filter(|peer| !crossing.contains(peer))
            .collect();
        for peer in ending {
            self.open.remove(&peer);
            self.channel_ended(peer);
            if let Some(client) = self.clients.get_mut(&peer) {
                client.left = true;
            }
        }
        self.pending.clear();
        queue.clear();
        let (m, actions) = Machine::resume(self.defaults, self.stop_delay, self.now, &snapshot);
        self.m = m;
        let step = Step {
            before: self.m.phases(),
            is_tick: false,
            answering: None,
            may_begin_upgrade: true,
            getting_ready: None,
            busy_only: false,
        };
        assert_eq!(
            self.m.backoff.failures(),
            self.failures,
            "failures across the re-exec"
        );
        for action in actions {
            self.perform(action, &step, queue);
        }
    }

    /// A generation process receives a message: its view changes, and the rules about
    /// telling generations to stop accepting are checked.
    fn told(&mut self, pid: u32, peer: PeerId, message: &Message, step: &Step) {
        let (before, is_tick, answering) = (&step.before, step.is_tick, step.answering);
        let stopping = self.stopping.is_some();
        let generation = self.procs[&pid].generation;
        // The successor accepts, or it died already (a crash, which the machine hears of
        // later: the one way no generation accepts for a moment).
        let accepting_elsewhere = self.procs.iter().any(|(other, p)| {
            *other != pid
                && (p.view == View::Accepting || !p.alive)
                && p.generation
                    .is_some_and(|n| is_active(self.m.generations.get(&n).map(|g| &g.phase)))
        });
        match message {
            Message::Probation | Message::Superseded => {
                let tells = self.tells.entry(peer).or_default();
                *tells += 1;
                let nth = *tells;
                let p = &self.procs[&pid];
                if p.view == View::Accepting {
                    assert!(
                        accepting_elsewhere,
                        "generation {generation:?} told {message:?} with no successor accepting"
                    );
                }
                if let Some(n) = generation {
                    if is_active(before.get(&n))
                        && let Some(successor) = step.getting_ready
                    {
                        self.told_aside.insert(n, (successor, self.now, peer, nth));
                    }
                    // A release of the generation on probation, by its window: only once the
                    // successor answered a ping sent after the window.
                    if *message == Message::Superseded
                        && matches!(before.get(&n), Some(Phase::Probation { .. }))
                        && self.m.running()
                        && let Some((on, end)) = self.window
                        && on == n
                        && self
                            .m
                            .active()
                            .is_some_and(|a| before.get(&a) == Some(&Phase::Active))
                    {
                        assert!(!is_tick, "generation {n} released by the clock alone");
                        if let Some(sent) = answering {
                            assert!(
                                sent >= end,
                                "generation {n} released on an answer to a ping sent before its window ended"
                            );
                        }
                    }
                }
                let p = self.procs.get_mut(&pid).expect("process");
                p.owed_aside += 1;
                if *message == Message::Probation {
                    if p.view == View::Accepting {
                        p.view = View::Paused;
                    }
                    if let Some(n) = generation {
                        let window = self
                            .m
                            .generations
                            .get(&n)
                            .map_or(Duration::ZERO, |g| g.timeouts.probation);
                        self.window = Some((n, self.now + window));
                    }
                } else {
                    p.view = View::Closing;
                }
            }
            Message::Shutdown => {
                self.procs.get_mut(&pid).expect("process").view = View::Closing;
            }
            Message::Reinstated => {
                assert!(!stopping, "reinstated while the service stops");
                let n = generation.expect("Reinstated goes to a generation");
                assert!(
                    matches!(before.get(&n), Some(Phase::Probation { .. })),
                    "generation {n} reinstated from {:?}, not from probation",
                    before.get(&n)
                );
                let p = self.procs.get_mut(&pid).expect("process");
                if p.view == View::Paused {
                    p.view = View::Accepting;
                }
                self.window = None;
            }
            Message::Ping => {
                let p = self.procs.get_mut(&pid).expect("process");
                assert!(
                    p.ping.is_none(),
                    "a second ping before the first was answered"
                );
                p.ping = Some(self.now);
            }
            Message::Stopping | Message::Error { .. } => {}
            other => panic!("{other:?} sent to a generation"),
        }
    }

    /// `Upgraded` goes out only once every generation it superseded stepped aside, is out of
    /// touch or gone, or the timeout passed.
    fn check_reported(&self, generation: Gen, may_begin_upgrade: bool, getting_ready: Option<Gen>) {
        assert!(
            self.m.active() == Some(generation) || may_begin_upgrade || getting_ready.is_some(),
            "upgraded to generation {generation}, which is not serving"
        );
        for (old, (successor, since, old_peer, nth)) in &self.told_aside {
            if *successor != generation {
                continue;
            }
            let answered = self.answers.get(old_peer).copied().unwrap_or(0);
            let still_there = answered < *nth
                && self.open.contains(old_peer)
                && matches!(
                    self.m.phases().get(old),
                    Some(Phase::Probation { .. } | Phase::Draining { .. })
                );
            assert!(
                !still_there
                    || may_begin_upgrade
                    || getting_ready.is_some_and(|n| n != generation)
                    || self.now - *since >= STEP_ASIDE_TIMEOUT,
                "generation {generation} reported upgraded while generation {old} has not stepped aside ({:?} after it was told)",
                self.now - *since
            );
        }
    }

    fn check(&self) {
        let phases = self.m.phases();
        let next = self.m.next_deadline();
        // Invariant 1: the active generation accepts; nothing else that lives does.
        let active = self.m.active();
        for (pid, p) in &self.procs {
            let n = p.generation;
            let phase = n.and_then(|n| phases.get(&n));
            // A process that died accepts nothing, and the machine learns it from the shell
            // later: only a crash opens a moment in which no generation accepts.
            if is_active(phase) && p.alive {
                assert_eq!(
                    p.view,
                    View::Accepting,
                    "active generation {n:?} (pid {pid}) is not accepting: {phases:?}"
                );
            } else if p.alive
                && p.peer.is_some_and(|c| self.open.contains(&c))
                && let Some(phase) = phase
            {
                // What it was told agrees with what the machine holds it to.
                let told = match phase {
                    Phase::Probation { .. } => View::Paused,
                    Phase::Draining { .. } => View::Closing,
                    _ => p.view,
                };
                assert_eq!(
                    p.view, told,
                    "generation {n:?} (pid {pid}) is {phase:?} but was told otherwise: {phases:?}"
                );
            }
            if !is_active(phase) && p.alive && p.view == View::Accepting && !p.killed {
                assert!(
                    matches!(phase, Some(Phase::Killed)),
                    "generation {n:?} (pid {pid}) accepts alongside active generation {active:?}: {phases:?}"
                );
            }
        }
        // At most one live generation accepts (one killed may, until the kill lands).
        let accepting: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.alive && !p.killed && p.view == View::Accepting)
            .map(|(pid, _)| *pid)
            .collect();
        assert!(
            accepting.len() <= 1,
            "processes {accepting:?} all accept: {phases:?}"
        );
        // Invariant 4: the active generation is a live process in touch.
        if let Some(a) = active {
            let g = &self.m.generations[&a];
            let peer = g.peer.expect("an active generation has a channel");
            assert!(
                self.open.contains(&peer),
                "active generation {a} on a channel that ended"
            );
        }
        // Invariant 2: serving liveness, and every wait has its deadline.
        if self.m.running() && active.is_none() {
            let judging = phases
                .values()
                .any(|p| matches!(p, Phase::Starting | Phase::Lost));
            if !judging {
                let respawn = self.m.timers.get(Timer::Respawn);
                assert!(
                    respawn.is_some_and(|at| at <= self.now + MAX_RESPAWN_DELAY)
                        && next.is_some_and(|next| Some(next) <= respawn),
                    "nothing serves, nothing starts, and no respawn is due: {phases:?}, next {next:?}"
                );
            }
        }
        for (n, phase) in &phases {
            let bound = match phase {
                Phase::Starting | Phase::Probation { .. } => Some(self.now + 3650 * 86_400 * SEC),
                Phase::Lost => Some(self.now + EXIT_GRACE),
                Phase::Draining { .. } => Some(self.now + 200 * SEC),
                Phase::Active | Phase::Killed => None,
            };
            if let Some(bound) = bound {
                assert!(
                    next.is_some_and(|next| next <= bound),
                    "generation {n} waits with no deadline: {phase:?}, next {next:?}"
                );
            }
        }
        if let Some(a) = active
            && self.m.running()
            && phases
                .values()
                .any(|p| matches!(p, Phase::Probation { .. }))
        {
            // The watched generation: its ping is due, or its answer, soon.
            let sent = self
                .procs
                .values()
                .find(|p| p.generation == Some(a))
                .and_then(|p| p.ping);
            let bound = sent.map_or(self.now + PING_INTERVAL, |s| s + PING_TIMEOUT);
            assert!(
                next.is_some_and(|next| next <= bound.max(self.now)),
                "generation {a} is not watched: next {next:?}"
            );
        }
        if self.m.upgrade().is_some_and(|u| u.takeover.is_some()) {
            assert!(
                next.is_some_and(|next| next <= self.now + STEP_ASIDE_TIMEOUT),
                "the report of a takeover waits with no deadline"
            );
        }
        // Invariant 7: a hand-started generation whose channel ended is forgotten.
        for p in self.procs.values() {
            if !p.spawned
                && let (Some(n), Some(peer)) = (p.generation, p.peer)
                && !self.open.contains(&peer)
            {
                assert!(
                    !self.m.has_generation(n),
                    "hand-started generation {n} kept after its channel ended"
                );
            }
        }
        // Every spawned process not reaped is still tracked.
        for p in self.procs.values() {
            if p.spawned
                && let Some(n) = p.generation
                && (p.alive
                    || self
                        .pending
                        .iter()
                        .any(|i| matches!(i, Input::Exited { generation, .. } if *generation == n)))
            {
                assert!(
                    phases.contains_key(&n) || self.exited.is_some(),
                    "generation {n} is alive but forgotten: {phases:?}"
                );
            }
        }
    }

    fn step(&mut self, op: Op) {
        if self.exited.is_some() {
            return;
        }
        match op {
            Op::Hangup => self.input(Input::Hangup),
            Op::Takeover(probation) => {
                self.input(Input::Hangup);
                let fresh = self
                    .procs
                    .iter()
                    .filter(|(_, p)| p.spawned && p.alive && !p.said_hello)
                    .map(|(pid, _)| *pid)
                    .next_back();
                if fresh.is_some() {
                    self.step(Op::Hello(usize::MAX, probation, false));
                    self.step(Op::Ready(usize::MAX));
                }
            }
            Op::Upgrade => {
                let peer = self.new_peer();
                self.clients.insert(peer, Client::default());
                let pid = self.new_pid();
                self.clients.get_mut(&peer).expect("client").asked = true;
                self.input(Input::Hello {
                    peer,
                    pid,
                    role: Role::Control,
                    timeouts: Timeouts {
                        ready: SEC,
                        drain: SEC,
                        probation: SEC,
                    },
                    preconnected: None,
                });
                if self.open.contains(&peer) {
                    self.input(Input::UpgradeRequested { peer });
                }
            }
            Op::ReExec => {
                let peer = self.new_peer();
                self.clients.insert(
                    peer,
                    Client {
                        asked: true,
                        ..Client::default()
                    },
                );
                let pid = self.new_pid();
                self.input(Input::Hello {
                    peer,
                    pid,
                    role: Role::Control,
                    timeouts: self.defaults,
                    preconnected: None,
                });
                if self.open.contains(&peer) {
                    self.input(Input::ReExecRequested { peer });
                }
            }
            Op::NewerHello(i) => {
                if let Some(pid) = Self::pick(self.fresh_children(), i) {
                    let p = &self.procs[&pid];
                    let peer = p.channel.expect("channel");
                    if let Some(n) = p.generation {
                        self.newer.insert(n);
                    }
                    self.input(Input::NewerBuild { peer });
                    self.dies(pid, 1);
                }
            }
            Op::ClientLeaves(i) => {
                let waiting = self
                    .clients
                    .iter()
                    .filter(|(peer, c)| !c.left && self.open.contains(peer))
                    .map(|(peer, _)| *peer);
                if let Some(peer) = Self::pick(waiting, i) {
                    self.clients.get_mut(&peer).expect("client").left = true;
                    self.open.remove(&peer);
                    self.input(Input::PeerGone {
                        peer,
                        why: "hung up".to_owned(),
                    });
                }
            }
            Op::Hello(i, probation, wrong_pid) => {
                if let Some(pid) = Self::pick(self.fresh_children(), i) {
                    let p = self.procs.get_mut(&pid).expect("process");
                    let peer = p.channel.expect("channel");
                    p.said_hello = true;
                    p.peer = Some(peer);
                    let n = p.generation.expect("spawned generation");
                    let claimed = if wrong_pid { pid + 7919 } else { pid };
                    p.claimed = claimed;
                    self.input(Input::Hello {
                        peer,
                        pid: claimed,
                        role: Role::Generation,
                        timeouts: Timeouts {
                            ready: 3 * SEC,
                            drain: 20 * SEC,
                            probation: if probation { 5 * SEC } else { Duration::ZERO },
                        },
                        preconnected: Some(n),
                    });
                }
            }
            Op::HelloViaEndpoint(i) => {
                let fresh = self
                    .procs
                    .iter()
                    .filter(|(_, p)| p.spawned && p.alive && !p.frozen && !p.said_hello)
                    .map(|(pid, _)| *pid);
                if let Some(pid) = Self::pick(fresh, i) {
                    let peer = self.new_peer();
                    let p = self.procs.get_mut(&pid).expect("process");
                    p.said_hello = true;
                    p.peer = Some(peer);
                    self.input(Input::Hello {
                        peer,
                        pid,
                        role: Role::Generation,
                        timeouts: Timeouts {
                            ready: 3 * SEC,
                            drain: 20 * SEC,
                            probation: 5 * SEC,
                        },
                        preconnected: None,
                    });
                }
            }
            Op::HandStarted(ready, drain, probation) => {
                let peer = self.new_peer();
                let pid = self.new_pid();
                self.procs.insert(
                    pid,
                    Proc {
                        generation: None,
                        spawned: false,
                        peer: Some(peer),
                        channel: None,
                        alive: true,
                        frozen: false,
                        killed: false,
                        said_hello: true,
                        claimed: pid,
                        said_ready: false,
                        view: View::Outside,
                        owed_aside: 0,
                        ping: None,
                    },
                );
                self.input(Input::Hello {
                    peer,
                    pid,
                    role: Role::Generation,
                    timeouts: Timeouts {
                        ready: SEC * u32::try_from(ready).expect("small"),
                        drain: SEC * u32::try_from(drain).expect("small"),
                        probation: SEC * u32::try_from(probation).expect("small"),
                    },
                    preconnected: None,
                });
            }
            Op::HelloAgain(i) => {
                let introduced = self
                    .procs
                    .values()
                    .filter(|p| p.said_hello)
                    .filter_map(|p| p.peer)
                    .chain(self.clients.keys().copied())
                    .filter(|peer| self.open.contains(peer));
                if let Some(peer) = Self::pick(introduced, i) {
                    self.input(Input::Hello {
                        peer,
                        pid: 1,
                        role: Role::Generation,
                        timeouts: Timeouts {
                            ready: SEC,
                            drain: SEC,
                            probation: SEC,
                        },
                        preconnected: None,
                    });
                }
            }
            Op::Ready(i) => {
                let joined = self
                    .talking()
                    .filter(|(_, p)| !p.said_ready && p.view != View::Outside)
                    .map(|(pid, _)| pid);
                if let Some(pid) = Self::pick(joined, i) {
                    let p = self.procs.get_mut(&pid).expect("process");
                    p.said_ready = true;
                    // Its first accept: Ready is sent from there.
                    if p.view == View::Joined {
                        p.view = View::Accepting;
                    }
                    let peer = p.peer.expect("peer");
                    self.input(Input::Ready { peer });
                }
            }
            Op::Stray(i, kind) => {
                if let Some(peer) = Self::pick(self.known.iter().copied(), i) {
                    let input = match kind % 5 {
                        0 => Input::Ready { peer },
                        1 => Input::SteppedAside { peer },
                        2 => Input::Pong { peer },
                        3 => Input::StopRequested { peer },
                        _ => Input::UpgradeRequested { peer },
                    };
                    // Relayed by a task the machine closed, or unasked: it must change nothing
                    // that the invariants would notice. A stray Ready from a live joined
                    // process is its real first accept.
                    if let Input::Ready { peer } = input
                        && let Some(pid) = self.proc_on(peer)
                        && self.procs[&pid].view == View::Joined
                    {
                        return;
                    }
                    if let Input::Pong { peer } = input
                        && let Some(pid) = self.proc_on(peer)
                        && self.procs[&pid].ping.is_some()
                    {
                        return;
                    }
                    if let Input::SteppedAside { peer } = input
                        && let Some(pid) = self.proc_on(peer)
                        && self.procs[&pid].owed_aside > 0
                    {
                        return;
                    }
                    self.input(input);
                }
            }
            Op::Exit(i, code) => {
                let live = self
                    .procs
                    .iter()
                    .filter(|(_, p)| p.alive)
                    .map(|(pid, _)| *pid);
                if let Some(pid) = Self::pick(live, i) {
                    self.dies(pid, code);
                }
            }
            Op::Freeze(i) => {
                let live = self
                    .procs
                    .iter()
                    .filter(|(_, p)| p.alive)
                    .map(|(pid, _)| *pid);
                if let Some(pid) = Self::pick(live, i) {
                    self.procs.get_mut(&pid).expect("process").frozen = true;
                }
            }
            Op::Reap(i) => {
                let killed = self
                    .procs
                    .iter()
                    .filter(|(_, p)| p.alive && p.killed)
                    .map(|(pid, _)| *pid);
                if let Some(pid) = Self::pick(killed, i) {
                    self.dies(pid, 9);
                }
            }
            Op::Deliver(i) => {
                if !self.pending.is_empty() {
                    let input = self.pending.remove(i % self.pending.len());
                    if let Input::PeerGone { peer, .. } = input {
                        if self.open.remove(&peer) {
                            self.channel_ended(peer);
                        }
                        if let Some(client) = self.clients.get_mut(&peer) {
                            client.left = true;
                        }
                    }
                    self.input(input);
                }
            }
            Op::Drop(i) => {
                let open: Vec<PeerId> = self.open.iter().copied().collect();
                if let Some(peer) = Self::pick(open.into_iter(), i) {
                    self.open.remove(&peer);
                    self.channel_ended(peer);
                    if let Some(client) = self.clients.get_mut(&peer) {
                        client.left = true;
                    }
                    self.input(Input::PeerGone {
                        peer,
                        why: "not writable".to_owned(),
                    });
                }
            }
            Op::Terminate => self.input(Input::Terminate { signal: "SIGTERM" }),
            Op::Advance(ms) => self.now += Duration::from_millis(ms),
            Op::Tick => {
                if let Some(deadline) = self.m.next_deadline() {
                    if deadline > self.now {
                        self.now = deadline;
                    }
                    self.input(Input::Tick);
                }
            }
            Op::FailNextSpawn => self.fail_next_spawn = true,
            Op::StopRequested(i) => {
                let talking = self.talking().map(|(pid, _)| pid);
                if let Some(pid) = Self::pick(talking, i) {
                    let peer = self.procs[&pid].peer.expect("peer");
                    self.input(Input::StopRequested { peer });
                }
            }
            Op::SteppedAside(i) => {
                let owing = self
                    .talking()
                    .filter(|(_, p)| p.owed_aside > 0)
                    .map(|(pid, _)| pid);
                if let Some(pid) = Self::pick(owing, i) {
                    let p = self.procs.get_mut(&pid).expect("process");
                    p.owed_aside -= 1;
                    let peer = p.peer.expect("peer");
                    *self.answers.entry(peer).or_default() += 1;
                    self.input(Input::SteppedAside { peer });
                }
            }
            Op::Pong(i) => {
                let pinged = self
                    .talking()
                    .filter(|(_, p)| p.ping.is_some())
                    .map(|(pid, _)| pid);
                if let Some(pid) = Self::pick(pinged, i) {
                    let p = self.procs.get_mut(&pid).expect("process");
                    self.answering = p.ping.take();
                    let peer = p.peer.expect("peer");
                    self.input(Input::Pong { peer });
                }
            }
        }
    }

    /// After any history, a stop ends in Exit once the processes go when told or killed, and
    /// every control client that asked and stayed heard exactly once.
    fn stops(&mut self) {
        self.step(Op::Terminate);
        for _ in 0..200 {
            if self.exited.is_some() {
                break;
            }
            // Whatever the shell holds is delivered; processes told to stop (or killed)
            // exit; time passes to every deadline.
            while !self.pending.is_empty() && self.exited.is_none() {
                self.step(Op::Deliver(0));
            }
            let killed: Vec<u32> = self
                .procs
                .iter()
                .filter(|(_, p)| p.alive && p.killed)
                .map(|(pid, _)| *pid)
                .collect();
            for pid in killed {
                self.dies(pid, 9);
            }
            let closing: Vec<u32> = self
                .procs
                .iter()
                .filter(|(_, p)| p.alive && !p.frozen && p.view == View::Closing)
                .map(|(pid, _)| *pid)
                .collect();
            for pid in closing {
                self.dies(pid, 0);
            }
            if self.pending.is_empty() {
                self.step(Op::Tick);
            }
        }
        assert!(
            self.exited.is_some(),
            "the front never exited after a stop: {:?}",
            self.m.phases()
        );
        for (peer, client) in &self.clients {
            assert!(
                !client.asked || client.left || client.answers == 1,
                "control client {peer} asked and heard {} answers",
                client.answers
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES, where set, for a quicker pass (`cargo mutants`, say).
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(4096),
        max_shrink_iters: 10_000,
        ..ProptestConfig::default()
    })]

    /// Any order of events keeps the invariants, and a stop always ends in an exit that
    /// leaves no spawned process behind.
    #[test]
    fn any_event_order_keeps_the_invariants(
        ops in proptest::collection::vec(op(), 0..80),
        stop_delay_ms in prop_oneof![Just(0u64), 0u64..5_000],
    ) {
        let mut model = Model::new(Duration::from_millis(stop_delay_ms));
        for op in ops {
            model.step(op);
        }
        model.stops();
    }
}

/// The property test reaches re-execs: a history that makes one, then goes on through an
/// upgrade and a crash, and stops; every invariant is checked on the way.
#[test]
fn a_re_exec_in_a_history_keeps_the_invariants() {
    let mut model = Model::new(Duration::ZERO);
    model.step(Op::Hello(0, false, false));
    model.step(Op::Ready(0));
    model.step(Op::ReExec);
    assert_eq!(model.reexecs, 1, "a quiet service re-executed");
    model.step(Op::Takeover(true));
    model.step(Op::SteppedAside(0));
    model.step(Op::ReExec);
    assert_eq!(model.reexecs, 1, "not while one is on probation");
    model.step(Op::Exit(0, 101));
    for _ in 0..10 {
        model.step(Op::Deliver(0));
        model.step(Op::Tick);
    }
    model.step(Op::ReExec);
    model.stops();
}

/// The other way in: an upgrade whose new build speaks the next protocol re-executes the
/// front, which starts the upgrade again and answers the client that asked.
#[test]
fn an_upgrade_to_a_newer_build_re_executes_and_answers_its_client() {
    let mut model = Model::new(Duration::ZERO);
    model.step(Op::Hello(0, false, false));
    model.step(Op::Ready(0));
    model.step(Op::Advance(20_000));
    model.step(Op::Upgrade);
    model.step(Op::NewerHello(0));
    while !model.pending.is_empty() {
        model.step(Op::Deliver(0));
    }
    assert_eq!(model.reexecs, 1, "re-executed for the newer build");
    model.step(Op::Hello(0, false, false));
    model.step(Op::Ready(0));
    model.step(Op::SteppedAside(0));
    model.step(Op::Tick);
    assert!(
        model.clients.values().any(|c| c.asked && c.answers == 1),
        "the client heard the outcome"
    );
    model.stops();
}
