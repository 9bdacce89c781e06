//! The machine driven directly: one test per rule, then random event sequences checked against
//! the invariants after every step. Time is a fake clock: an `Instant` moved by hand.

use std::collections::BTreeMap;

use super::backoff::{
    MAX_CONSECUTIVE_FAILURES, MAX_INITIAL_ATTEMPTS, MAX_RESPAWN_DELAY, MIN_RESPAWN_DELAY,
    STABLE_AFTER, respawn_delay,
};
use super::probation::{PING_INTERVAL, PING_TIMEOUT};
use super::*;
use crate::systemd::Supervisor;

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn defaults() -> Timeouts {
    Timeouts {
        ready: 60 * SEC,
        drain: 30 * SEC,
        probation: Duration::ZERO,
    }
}

/// A machine, a fake clock, and the bookkeeping of the world around it.
struct World {
    m: Machine,
    now: Instant,
    next_peer: PeerId,
    next_pid: u32,
    /// The pid and the pre-connected peer of each generation the machine had spawned.
    spawned: BTreeMap<Gen, (u32, PeerId)>,
    /// What the service manager was told, kept apart from the other actions.
    notified: Vec<Supervisor>,
}

impl World {
    fn new(defaults: Timeouts) -> Self {
        World {
            m: Machine::new(defaults, Duration::ZERO),
            now: Instant::now(),
            next_peer: 100,
            next_pid: 1000,
            spawned: BTreeMap::new(),
            notified: Vec::new(),
        }
    }

    /// Feeds `input`; returns the actions other than notifications, which go to `notified`.
    fn feed(&mut self, input: Input) -> Vec<Action> {
        let mut out = self.m.handle(self.now, input);
        out.retain(|action| match action {
            Action::Notify(event) => {
                self.notified.push(event.clone());
                false
            }
            _ => true,
        });
        out
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Advances to `by` later and ticks.
    fn tick_after(&mut self, by: Duration) -> Vec<Action> {
        self.advance(by);
        self.feed(Input::Tick)
    }

    /// Performs a Spawn the way the shell does: a pid and a pre-connected peer.
    fn spawned(&mut self, generation: Gen) -> Vec<Action> {
        let pid = self.next_pid;
        self.next_pid += 1;
        let peer = self.peer();
        self.spawned.insert(generation, (pid, peer));
        self.feed(Input::Spawned {
            generation,
            pid,
            peer,
        })
    }

    fn peer(&mut self) -> PeerId {
        self.next_peer += 1;
        self.next_peer
    }

    fn pid(&self, generation: Gen) -> u32 {
        self.spawned[&generation].0
    }

    fn peer_of(&self, generation: Gen) -> PeerId {
        self.spawned[&generation].1
    }

    /// A spawned generation says Hello on its inherited channel.
    fn hello(&mut self, generation: Gen, timeouts: Timeouts) -> Vec<Action> {
        let (pid, peer) = self.spawned[&generation];
        self.feed(Input::Hello {
            peer,
            pid,
            role: Role::Generation,
            timeouts,
            preconnected: Some(generation),
        })
    }

    /// A build started by hand connects to the endpoint and says Hello.
    fn hand_started(&mut self, pid: u32, timeouts: Timeouts) -> (PeerId, Vec<Action>) {
        let peer = self.peer();
        let out = self.feed(Input::Hello {
            peer,
            pid,
            role: Role::Generation,
            timeouts,
            preconnected: None,
        });
        (peer, out)
    }

    fn ready(&mut self, generation: Gen) -> Vec<Action> {
        let peer = self.peer_of(generation);
        self.feed(Input::Ready { peer })
    }

    /// The generation answers the ping it was sent.
    fn pong(&mut self, generation: Gen) -> Vec<Action> {
        let peer = self.peer_of(generation);
        self.feed(Input::Pong { peer })
    }

    fn exited(&mut self, generation: Gen, status: &str) -> Vec<Action> {
        self.feed(Input::Exited {
            generation,
            status: status.to_owned(),
            success: status.ends_with(": 0"),
        })
    }

    /// Spawn (already requested), Hello and Ready for `generation`, and the generations it
    /// superseded stepping aside.
    fn bring_up(&mut self, generation: Gen) {
        self.spawned(generation);
        self.hello(generation, defaults());
        let out = self.ready(generation);
        self.step_aside(&out);
    }

    /// Every generation that `out` tells to stop accepting says it did.
    fn step_aside(&mut self, out: &[Action]) -> Vec<Action> {
        let mut all = Vec::new();
        for action in out {
            if let Action::Send {
                peer,
                message: Message::Probation | Message::Superseded,
            } = action
            {
                all.extend(self.feed(Input::SteppedAside { peer: *peer }));
            }
        }
        all
    }

    /// A control client that said Hello; returns its peer.
    fn control_client(&mut self) -> PeerId {
        let peer = self.peer();
        let pid = self.next_pid;
        self.next_pid += 1;
        let out = self.feed(Input::Hello {
            peer,
            pid,
            role: Role::Control,
            timeouts: defaults(),
            preconnected: None,
        });
        assert_eq!(out, vec![]);
        peer
    }

    fn phase(&self, generation: Gen) -> Option<Phase> {
        self.m.phases().get(&generation).copied()
    }
}

fn ping(peer: PeerId) -> Action {
    Action::Send {
        peer,
        message: Message::Ping,
    }
}

fn is_active(phase: Option<Phase>) -> bool {
    matches!(phase, Some(Phase::Active))
}

fn is_draining(phase: Option<Phase>) -> bool {
    matches!(phase, Some(Phase::Draining { .. }))
}

/// The reason of an `Error` (or, to a control client refused for now, `Busy`) sent to `to`.
fn error_to(out: &[Action], to: PeerId) -> Option<String> {
    out.iter().find_map(|a| match a {
        Action::Send {
            peer,
            message: Message::Error { reason } | Message::Busy { reason },
        }
        | Action::Failed { peer, reason, .. }
            if *peer == to =>
        {
            Some(reason.clone())
        }
        _ => None,
    })
}

/// Generation 1 up and serving.
fn serving() -> World {
    let mut w = World::new(defaults());
    assert_eq!(w.feed(Input::Start), vec![Action::Spawn(1)]);
    w.bring_up(1);
    assert!(is_active(w.phase(1)));
    w
}

#[test]
fn first_start_spawns_hands_over_and_serves() {
    let mut w = World::new(defaults());
    assert_eq!(w.feed(Input::Start), vec![Action::Spawn(1)]);
    assert_eq!(w.spawned(1), vec![]);
    let peer = w.peer_of(1);
    assert_eq!(
        w.hello(1, defaults()),
        vec![Action::SendListeners {
            peer,
            generation: 1
        }]
    );
    assert!(matches!(w.phase(1), Some(Phase::Starting)));
    assert_eq!(w.ready(1), vec![]);
    assert!(is_active(w.phase(1)));
    assert_eq!(
        w.m.next_deadline(),
        None,
        "nothing to wait for while serving"
    );
}

#[test]
fn an_upgrade_supersedes_the_active_generation_once_the_new_one_is_ready() {
    let mut w = serving();
    assert_eq!(w.feed(Input::Hangup), vec![Action::Spawn(2)]);
    w.spawned(2);
    w.hello(2, defaults());
    assert!(
        is_active(w.phase(1)),
        "the old one serves until the new one is ready"
    );
    let old = w.peer_of(1);
    let new = w.peer_of(2);
    // Introduced first, so that it knows where its idle connections go once told.
    assert_eq!(
        w.ready(2),
        vec![
            Action::Introduce { from: old, to: new },
            Action::Send {
                peer: old,
                message: Message::Superseded
            },
        ]
    );
    assert!(is_draining(w.phase(1)));
    assert!(is_active(w.phase(2)));
    w.advance(2 * SEC);
    assert_eq!(w.exited(1, "exit status: 0"), vec![Action::Close(old)]);
    assert_eq!(w.phase(1), None);
}

#[test]
fn a_control_client_waits_for_the_outcome_of_its_upgrade() {
    let mut w = serving();
    let client = w.control_client();
    assert_eq!(
        w.feed(Input::UpgradeRequested { peer: client }),
        vec![Action::Spawn(2)]
    );
    w.spawned(2);
    w.hello(2, defaults());
    let out = w.ready(2);
    assert!(
        !out.iter().any(
            |a| matches!(a, Action::Send { peer, .. } | Action::Close(peer) if *peer == client)
        ),
        "no answer before generation 1 says it stopped accepting: {out:?}"
    );
    assert_eq!(
        w.notified.last(),
        Some(&Supervisor::Reloading {
            status: "upgrading: generation 2 starting (requested)".to_owned()
        })
    );
    assert_eq!(w.m.next_deadline(), Some(w.now + STEP_ASIDE_TIMEOUT));
    let out = w.step_aside(&out);
    assert_eq!(
        out,
        vec![
            Action::Send {
                peer: client,
                message: Message::Upgraded { generation: 2 }
            },
            Action::Close(client)
        ]
    );
    assert!(matches!(w.notified.last(), Some(Supervisor::Ready { .. })));
    w.exited(1, "exit status: 0");

    // A failing build: the client hears why, and generation 2 keeps serving.
    let client = w.control_client();
    assert_eq!(
        w.feed(Input::UpgradeRequested { peer: client }),
        vec![Action::Spawn(3)]
    );
    w.spawned(3);
    let out = w.exited(3, "exit status: 3");
    let reason = error_to(&out, client).expect("an error for the client");
    assert!(
        reason.contains("generation 3 failed before it was ready"),
        "{reason}"
    );
    assert!(reason.contains("exit status: 3"), "{reason}");
    assert!(is_active(w.phase(2)));
    assert_eq!(w.m.next_deadline(), None, "a rollback schedules no respawn");
}

/// An upgrade asked for by a control client, with generation 2 ready and generation 1 told
/// to stop accepting but not confirmed yet.
fn awaiting_step_aside(timeouts: Timeouts) -> (World, PeerId) {
    let mut w = World::new(timeouts);
    w.feed(Input::Start);
    w.spawned(1);
    w.hello(1, timeouts);
    w.ready(1);
    let client = w.control_client();
    w.feed(Input::UpgradeRequested { peer: client });
    w.spawned(2);
    w.hello(2, timeouts);
    w.notified.clear();
    let out = w.ready(2);
    assert!(error_to(&out, client).is_none() && !out.contains(&Action::Close(client)));
    assert!(w.notified.is_empty(), "{:?}", w.notified);
    (w, client)
}

fn upgraded_to(out: &[Action], to: PeerId, generation: Gen) -> bool {
    out.contains(&Action::Send {
        peer: to,
        message: Message::Upgraded { generation },
    }) && out.contains(&Action::Close(to))
}

#[test]
fn a_generation_that_never_confirms_delays_the_report_by_the_timeout_at_most() {
    let (mut w, client) = awaiting_step_aside(defaults());
    assert_eq!(w.m.next_deadline(), Some(w.now + STEP_ASIDE_TIMEOUT));
    assert_eq!(w.tick_after(STEP_ASIDE_TIMEOUT - MS), vec![]);
    let out = w.tick_after(MS);
    assert!(upgraded_to(&out, client, 2), "{out:?}");
    assert!(
        matches!(&w.notified[..], [Supervisor::Ready { status }] if status.contains("generation 2"))
    );
    // A late confirmation changes nothing.
    let one = w.peer_of(1);
    assert_eq!(w.feed(Input::SteppedAside { peer: one }), vec![]);
}

#[test]
fn a_superseded_generation_that_exits_or_goes_silent_needs_no_confirmation() {
    let (mut w, client) = awaiting_step_aside(defaults());
    let out = w.exited(1, "exit status: 0");
    assert!(upgraded_to(&out, client, 2), "{out:?}");

    let (mut w, client) = awaiting_step_aside(defaults());
    let one = w.peer_of(1);
    let out = w.feed(Input::PeerGone {
        peer: one,
        why: "end of stream".to_owned(),
    });
    assert!(upgraded_to(&out, client, 2), "{out:?}");
}

#[test]
fn only_the_superseded_generation_can_confirm() {
    let (mut w, client) = awaiting_step_aside(defaults());
    let two = w.peer_of(2);
    assert_eq!(w.feed(Input::SteppedAside { peer: two }), vec![]);
    let other = w.control_client();
    assert_eq!(w.feed(Input::SteppedAside { peer: other }), vec![]);
    assert_eq!(w.feed(Input::SteppedAside { peer: 999_999 }), vec![]);
    let one = w.peer_of(1);
    let out = w.feed(Input::SteppedAside { peer: one });
    assert!(upgraded_to(&out, client, 2), "{out:?}");
}

#[test]
fn a_new_build_dying_before_the_report_fails_the_upgrade() {
    let probation = Timeouts {
        probation: 10 * SEC,
        ..defaults()
    };
    let (mut w, client) = awaiting_step_aside(probation);
    let one = w.peer_of(1);
    let out = w.exited(2, "exit status: 4");
    assert!(reinstated_to(&out, one), "{out:?}");
    let reason = error_to(&out, client).expect("the client hears the upgrade failed");
    assert!(reason.contains("generation 2 stopped serving"), "{reason}");
    assert!(
        matches!(
            &w.notified[..],
            [Supervisor::Status { .. }, Supervisor::Ready { status }]
                if status.starts_with("generation 1") && status.contains("last upgrade failed")
        ),
        "{:?}",
        w.notified
    );
    assert_eq!(w.m.next_deadline(), None);
}

#[test]
fn a_new_upgrade_reports_the_pending_one_first() {
    let (mut w, client) = awaiting_step_aside(defaults());
    let out = w.feed(Input::Hangup);
    assert!(upgraded_to(&out, client, 2), "{out:?}");
    assert!(out.contains(&Action::Spawn(3)));
    assert!(
        matches!(
            &w.notified[..],
            [Supervisor::Ready { .. }, Supervisor::Reloading { .. }]
        ),
        "{:?}",
        w.notified
    );
}

#[test]
fn a_stop_before_the_report_refuses_the_client_and_reports_nothing_more() {
    let (mut w, client) = awaiting_step_aside(defaults());
    let out = w.feed(Input::Terminate { signal: "SIGTERM" });
    let reason = error_to(&out, client).expect("refused");
    assert!(reason.contains("shutting down"), "{reason}");
    assert!(
        matches!(&w.notified[..], [Supervisor::Stopping { .. }]),
        "{:?}",
        w.notified
    );
}

#[test]
fn an_answer_to_an_earlier_probation_does_not_count_for_the_latest() {
    // Generation 1 on probation has not read it yet; generation 2 dies, so 1 is reinstated;
    // generation 3 takes over and 1 is on probation again. Its first answer is to the first
    // probation, which it read before the rest: only its second one lets the upgrade report.
    let probation = Timeouts {
        probation: 10 * SEC,
        ..defaults()
    };
    let (mut w, _) = awaiting_step_aside(probation);
    let one = w.peer_of(1);
    let out = w.exited(2, "exit status: 4");
    assert!(reinstated_to(&out, one), "{out:?}");
    let client = w.control_client();
    w.feed(Input::UpgradeRequested { peer: client });
    w.spawned(3);
    w.hello(3, probation);
    let out = w.ready(3);
    assert!(out.contains(&Action::Send {
        peer: one,
        message: Message::Probation
    }));
    assert_eq!(w.feed(Input::SteppedAside { peer: one }), vec![]);
    let out = w.feed(Input::SteppedAside { peer: one });
    assert!(upgraded_to(&out, client, 3), "{out:?}");
    // Answers beyond what was asked are not kept for later.
    assert_eq!(w.feed(Input::SteppedAside { peer: one }), vec![]);
}

#[test]
fn a_second_upgrade_while_one_is_starting_is_refused_with_a_reason() {
    let mut w = serving();
    w.feed(Input::Hangup);
    w.spawned(2);
    let client = w.control_client();
    let out = w.feed(Input::UpgradeRequested { peer: client });
    let reason = error_to(&out, client).expect("refused");
    assert!(reason.contains("already in progress"), "{reason}");
    assert!(reason.contains("generation 2"), "{reason}");
    assert!(out.contains(&Action::Close(client)));
    assert!(!out.iter().any(|a| matches!(a, Action::Spawn(_))));
    // SIGHUP too.
    assert_eq!(w.feed(Input::Hangup), vec![]);
    // And a build started by hand.
    let (stranger, out) = w.hand_started(4242, defaults());
    assert!(error_to(&out, stranger).is_some_and(|r| r.contains("already in progress")));
}

#[test]
fn a_build_started_by_hand_is_held_to_its_own_deadlines() {
    let mut w = serving();
    let own = Timeouts {
        ready: 2 * SEC,
        drain: 120 * SEC,
        probation: Duration::ZERO,
    };
    let (peer, out) = w.hand_started(5000, own);
    assert_eq!(
        out,
        vec![Action::SendListeners {
            peer,
            generation: 2
        }]
    );
    assert_eq!(w.m.next_deadline(), Some(w.now + 2 * SEC));
    w.feed(Input::Ready { peer });
    assert!(is_active(w.phase(2)));
    w.exited(1, "exit status: 0");
    // Superseded by generation 3, it gets its own 120 s (+ slack), not the front's 30 s.
    w.feed(Input::Hangup);
    w.spawned(3);
    w.hello(3, defaults());
    w.ready(3);
    assert!(is_draining(w.phase(2)));
    assert_eq!(w.tick_after(40 * SEC), vec![]);
    assert!(is_draining(w.phase(2)));
    let out = w.tick_after(86 * SEC);
    assert!(out.contains(&Action::Kill(2)), "{out:?}");
    assert_eq!(w.phase(2), None, "not ours to reap: forgotten once killed");
}

#[test]
fn a_spawned_build_raising_its_ready_timeout_gets_it() {
    let mut w = serving();
    w.feed(Input::Hangup);
    w.spawned(2);
    w.hello(
        2,
        Timeouts {
            ready: 200 * SEC,
            drain: 30 * SEC,
            probation: Duration::ZERO,
        },
    );
    assert_eq!(w.tick_after(61 * SEC), vec![]);
    assert!(matches!(w.phase(2), Some(Phase::Starting)));
    let out = w.tick_after(140 * SEC);
    assert!(out.contains(&Action::Kill(2)));
    assert_eq!(w.phase(2), Some(Phase::Killed));
    assert!(is_active(w.phase(1)));
}

#[test]
fn timeouts_of_duration_max_mean_never_and_do_not_panic() {
    let forever = Timeouts {
        ready: Duration::MAX,
        drain: Duration::MAX,
        probation: Duration::MAX,
    };
    let mut w = World::new(forever);
    w.feed(Input::Start);
    w.spawned(1);
    w.hello(1, forever);
    assert!(
        w.m.next_deadline()
            .is_some_and(|d| d > w.now + 3650 * 86_400 * SEC)
    );
    w.ready(1);
    w.feed(Input::Hangup);
    w.spawned(2);
    w.hello(2, forever);
    w.ready(2);
    assert!(matches!(w.phase(1), Some(Phase::Probation { .. })));
    // A window that never ends: generation 2 is watched all along.
    let two = w.peer_of(2);
    assert_eq!(w.tick_after(86_400 * SEC), vec![ping(two)]);
    assert_eq!(w.pong(2), vec![]);
    w.feed(Input::Terminate { signal: "SIGTERM" });
    assert!(is_draining(w.phase(1)));
    assert!(is_draining(w.phase(2)));
}

#[test]
fn a_stop_while_a_generation_starts_waits_until_that_child_is_reaped() {
    let mut w = World::new(defaults());
    w.feed(Input::Start);
    w.spawned(1);
    let out = w.feed(Input::Terminate { signal: "SIGTERM" });
    assert!(out.contains(&Action::Kill(1)), "{out:?}");
    assert!(
        !out.iter().any(|a| matches!(a, Action::Exit(_))),
        "must not exit before the child is reaped: {out:?}"
    );
    assert_eq!(w.phase(1), Some(Phase::Killed));
    assert_eq!(w.exited(1, "signal: 9 (SIGKILL)"), vec![Action::Exit(0)]);
}

#[test]
fn a_stop_drains_the_active_generation_and_kills_it_at_its_deadline() {
    let mut w = serving();
    let peer = w.peer_of(1);
    let out = w.feed(Input::Terminate { signal: "SIGTERM" });
    assert_eq!(
        out,
        vec![
            Action::CloseListeners,
            Action::Send {
                peer,
                message: Message::Shutdown
            }
        ]
    );
    assert_eq!(w.m.next_deadline(), Some(w.now + 35 * SEC));
    // A new generation cannot join a stopping service.
    let (late, out) = w.hand_started(7, defaults());
    assert!(error_to(&out, late).is_some_and(|r| r.contains("shutting down")));
    let out = w.tick_after(35 * SEC);
    assert!(out.contains(&Action::Kill(1)));
    assert_eq!(w.exited(1, "signal: 9 (SIGKILL)"), vec![Action::Exit(1)]);
}

#[test]
fn a_second_stop_kills_everything() {
    let mut w = serving();
    w.feed(Input::Terminate { signal: "SIGTERM" });
    let out = w.feed(Input::Terminate { signal: "SIGINT" });
    assert!(out.contains(&Action::Kill(1)));
    assert_eq!(w.exited(1, "signal: 9 (SIGKILL)"), vec![Action::Exit(1)]);
}

#[test]
fn a_front_spawned_generation_failing_before_ready_is_retried_then_given_up() {
    let mut w = World::new(defaults());
    w.feed(Input::Start);
    let mut delays = Vec::new();
    for n in 1..=MAX_INITIAL_ATTEMPTS {
        let n = u64::from(n);
        w.spawned(n);
        w.hello(n, defaults());
        let out = w.exited(n, "exit status: 3");
        assert!(out.contains(&Action::Close(w.peer_of(n))));
        if n < u64::from(MAX_INITIAL_ATTEMPTS) {
            assert!(
                !out.iter()
                    .any(|a| matches!(a, Action::Spawn(_) | Action::Exit(_)))
            );
            let delay = w.m.next_deadline().expect("a respawn") - w.now;
            delays.push(delay);
            assert_eq!(w.tick_after(delay), vec![Action::Spawn(n + 1)]);
        } else {
            assert_eq!(
                out.last(),
                Some(&Action::Exit(1)),
                "gives up with a non-zero status"
            );
        }
    }
    assert_eq!(delays, vec![200 * MS, 400 * MS]);
}

#[test]
fn giving_up_still_waits_for_a_killed_child() {
    let quick = Timeouts {
        ready: SEC,
        drain: 30 * SEC,
        probation: Duration::ZERO,
    };
    let mut w = World::new(quick);
    w.feed(Input::Start);
    for n in 1..=3 {
        w.spawned(n);
        let out = w.tick_after(SEC);
        assert!(out.contains(&Action::Kill(n)), "{out:?}");
        assert!(!out.iter().any(|a| matches!(a, Action::Exit(_))));
        if n < 3 {
            w.exited(n, "signal: 9 (SIGKILL)");
            let delay = w.m.next_deadline().expect("a respawn") - w.now;
            assert_eq!(w.tick_after(delay), vec![Action::Spawn(n + 1)]);
        }
    }
    assert_eq!(w.exited(3, "signal: 9 (SIGKILL)"), vec![Action::Exit(1)]);
}

#[test]
fn a_crash_soon_after_ready_counts_as_a_failed_start_with_growing_delays() {
    let mut w = serving();
    let mut delays = Vec::new();
    let mut n = 1;
    loop {
        w.advance(200 * MS);
        let out = w.exited(n, "exit status: 101");
        if out.contains(&Action::Exit(1)) {
            break;
        }
        let delay = w.m.next_deadline().expect("a respawn") - w.now;
        delays.push(delay);
        assert_eq!(w.tick_after(delay), vec![Action::Spawn(n + 1)]);
        n += 1;
        w.bring_up(n);
        assert!(n < 20, "never gave up");
    }
    assert_eq!(
        delays,
        [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
            .map(|ms| ms * MS)
            .to_vec()
    );
    assert_eq!(delays.len() + 1, MAX_CONSECUTIVE_FAILURES as usize);
}

#[test]
fn a_crash_after_serving_a_while_starts_counting_afresh() {
    let mut w = serving();
    for n in 1..=5 {
        w.advance(STABLE_AFTER);
        w.exited(n, "signal: 11 (SIGSEGV)");
        let delay = w.m.next_deadline().expect("a respawn") - w.now;
        assert_eq!(delay, MIN_RESPAWN_DELAY, "crash {n}");
        assert_eq!(w.tick_after(delay), vec![Action::Spawn(n + 1)]);
        w.bring_up(n + 1);
    }
}

#[test]
fn failed_upgrades_while_one_serves_never_give_up() {
    let mut w = serving();
    w.advance(STABLE_AFTER);
    for n in 2..40 {
        assert_eq!(w.feed(Input::Hangup), vec![Action::Spawn(n)]);
        w.spawned(n);
        let channel = w.peer_of(n);
        assert_eq!(w.exited(n, "exit status: 3"), vec![Action::Close(channel)]);
        assert!(is_active(w.phase(1)));
    }
}

#[test]
fn a_failed_spawn_counts_as_a_failed_start() {
    let mut w = World::new(defaults());
    w.feed(Input::Start);
    let out = w.feed(Input::SpawnFailed {
        generation: 1,
        why: "No such file or directory".to_owned(),
    });
    assert_eq!(out, vec![]);
    assert_eq!(w.phase(1), None);
    assert_eq!(w.tick_after(200 * MS), vec![Action::Spawn(2)]);
}

#[test]
fn an_active_generation_out_of_touch_is_kept_until_it_exits_and_replaced() {
    let mut w = serving();
    let peer = w.peer_of(1);
    w.advance(STABLE_AFTER);
    let out = w.feed(Input::PeerGone {
        peer,
        why: "reset".to_owned(),
    });
    assert_eq!(out, vec![], "waits a moment for its exit status");
    assert!(matches!(w.phase(1), Some(Phase::Lost)));
    assert_eq!(w.tick_after(EXIT_GRACE), vec![]);
    assert!(
        is_draining(w.phase(1)),
        "still running: kept with a deadline"
    );
    assert_eq!(w.tick_after(200 * MS), vec![Action::Spawn(2)]);
    w.bring_up(2);
    assert_eq!(w.exited(1, "exit status: 0"), vec![]);
}

#[test]
fn an_active_generation_whose_channel_ends_as_it_exits_is_judged_by_its_status() {
    // Crash: the channel ends first, then the exit status arrives.
    let mut w = serving();
    let peer = w.peer_of(1);
    w.feed(Input::PeerGone {
        peer,
        why: "end of stream".to_owned(),
    });
    assert_eq!(w.exited(1, "signal: 11 (SIGSEGV)"), vec![]);
    assert_eq!(w.m.next_deadline(), Some(w.now + MIN_RESPAWN_DELAY));
    // Status 0: the program ended by itself, and so does the service.
    let mut w = serving();
    let peer = w.peer_of(1);
    w.feed(Input::PeerGone {
        peer,
        why: "end of stream".to_owned(),
    });
    assert_eq!(
        w.exited(1, "exit status: 0"),
        vec![Action::CloseListeners, Action::Exit(0)]
    );
}

#[test]
fn only_the_spawned_child_may_use_its_channel() {
    let mut w = serving();
    w.feed(Input::Hangup);
    w.spawned(2);
    let peer = w.peer_of(2);
    let out = w.feed(Input::Hello {
        peer,
        pid: 1,
        role: Role::Generation,
        timeouts: defaults(),
        preconnected: Some(2),
    });
    assert!(
        error_to(&out, peer).is_some_and(|r| r.contains("not by the process the front started"))
    );
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::SendListeners { .. }))
    );
    // A channel for a generation that is no longer starting.
    let out = w.feed(Input::Hello {
        peer: 999,
        pid: 1,
        role: Role::Generation,
        timeouts: defaults(),
        preconnected: Some(1),
    });
    assert!(error_to(&out, 999).is_some_and(|r| r.contains("no longer starting")));
}

#[test]
fn the_active_process_cannot_join_again() {
    let mut w = serving();
    let (peer, out) = w.hand_started(w.pid(1), defaults());
    assert!(error_to(&out, peer).is_some_and(|r| r.contains("already a generation")));
}

#[test]
fn peers_cannot_act_outside_their_role() {
    let mut w = serving();
    // A generation cannot ask for upgrades; a control client cannot say Ready.
    let gen_peer = w.peer_of(1);
    assert_eq!(w.feed(Input::UpgradeRequested { peer: gen_peer }), vec![]);
    let client = w.control_client();
    assert_eq!(w.feed(Input::Ready { peer: client }), vec![]);
    assert_eq!(w.feed(Input::UpgradeRequested { peer: 12345 }), vec![]);
}

#[test]
fn respawn_delays_grow_and_saturate() {
    assert_eq!(respawn_delay(1), 200 * MS);
    assert_eq!(respawn_delay(2), 400 * MS);
    assert_eq!(respawn_delay(7), MAX_RESPAWN_DELAY);
    assert_eq!(respawn_delay(u32::MAX), MAX_RESPAWN_DELAY);
}

#[test]
fn a_generation_asked_to_stop_from_outside_serves_until_its_replacement_is_ready() {
    let mut w = serving();
    let old = w.peer_of(1);
    assert_eq!(
        w.feed(Input::StopRequested { peer: old }),
        vec![Action::Spawn(2)]
    );
    assert!(is_active(w.phase(1)), "still serving");
    w.spawned(2);
    w.hello(2, defaults());
    let new = w.peer_of(2);
    assert_eq!(
        w.ready(2),
        vec![
            Action::Introduce { from: old, to: new },
            Action::Send {
                peer: old,
                message: Message::Superseded
            },
        ]
    );
    assert!(is_draining(w.phase(1)));
    // Asking twice, or while draining, changes nothing.
    assert_eq!(w.feed(Input::StopRequested { peer: old }), vec![]);
}

#[test]
fn a_failed_replacement_leaves_the_generation_that_asked_to_stop_serving() {
    let mut w = serving();
    let old = w.peer_of(1);
    w.feed(Input::StopRequested { peer: old });
    w.spawned(2);
    w.exited(2, "exit status: 3");
    assert!(is_active(w.phase(1)));
    assert_eq!(w.m.next_deadline(), None, "no respawn: generation 1 serves");
}

#[test]
fn a_stop_request_while_the_service_stops_is_the_front_s_business() {
    let mut w = serving();
    let old = w.peer_of(1);
    w.feed(Input::Terminate { signal: "SIGTERM" });
    assert_eq!(w.feed(Input::StopRequested { peer: old }), vec![]);
}

#[test]
fn the_stop_delay_keeps_serving_then_drains() {
    let mut w = World::new(defaults());
    w.m = Machine::new(defaults(), SEC);
    w.feed(Input::Start);
    w.bring_up(1);
    let peer = w.peer_of(1);
    let client = w.control_client();
    let out = w.feed(Input::Terminate { signal: "SIGTERM" });
    assert_eq!(
        out,
        vec![Action::Send {
            peer,
            message: Message::Stopping
        }]
    );
    assert!(is_active(w.phase(1)), "keeps accepting during the delay");
    // No upgrade during the delay.
    let out = w.feed(Input::UpgradeRequested { peer: client });
    assert!(error_to(&out, client).is_some_and(|r| r.contains("shutting down")));
    assert_eq!(w.feed(Input::Hangup), vec![]);
    assert_eq!(w.m.next_deadline(), Some(w.now + SEC));
    let out = w.tick_after(SEC);
    assert_eq!(
        out,
        vec![
            Action::CloseListeners,
            Action::Send {
                peer,
                message: Message::Shutdown
            }
        ]
    );
    assert!(is_draining(w.phase(1)));
    assert_eq!(
        w.exited(1, "exit status: 0"),
        vec![Action::Close(peer), Action::Exit(0)]
    );
}

#[test]
fn a_second_signal_ends_the_stop_delay_early() {
    let mut w = World::new(defaults());
    w.m = Machine::new(defaults(), 60 * SEC);
    w.feed(Input::Start);
    w.bring_up(1);
    let peer = w.peer_of(1);
    w.feed(Input::Terminate { signal: "SIGTERM" });
    let out = w.feed(Input::Terminate { signal: "SIGINT" });
    assert_eq!(
        out,
        vec![
            Action::CloseListeners,
            Action::Send {
                peer,
                message: Message::Shutdown
            }
        ]
    );
}

#[test]
fn an_active_generation_exiting_0_by_itself_ends_the_service() {
    let mut w = serving();
    let peer = w.peer_of(1);
    assert_eq!(
        w.exited(1, "exit status: 0"),
        vec![Action::Close(peer), Action::CloseListeners, Action::Exit(0)]
    );
}

#[test]
fn exiting_0_before_serving_ends_the_service_when_nothing_serves() {
    let mut w = World::new(defaults());
    w.feed(Input::Start);
    w.spawned(1);
    let channel = w.peer_of(1);
    assert_eq!(
        w.exited(1, "exit status: 0"),
        vec![
            Action::Close(channel),
            Action::CloseListeners,
            Action::Exit(0)
        ]
    );
}

#[test]
fn an_upgrade_exiting_0_before_ready_is_a_rollback() {
    let mut w = serving();
    w.feed(Input::Hangup);
    w.spawned(2);
    let channel = w.peer_of(2);
    assert_eq!(w.exited(2, "exit status: 0"), vec![Action::Close(channel)]);
    assert!(is_active(w.phase(1)));
}

#[test]
fn systemd_hears_ready_then_a_reloading_ready_pair_per_upgrade_then_stopping() {
    let mut w = serving();
    assert!(
        matches!(&w.notified[..], [Supervisor::Ready { status }] if status.starts_with("generation 1 (pid")),
        "{:?}",
        w.notified
    );
    w.notified.clear();
    w.feed(Input::Hangup);
    w.bring_up(2);
    assert!(
        matches!(
            &w.notified[..],
            [Supervisor::Reloading { .. }, Supervisor::Ready { status }]
                if status.contains("generation 2") && status.contains("ready in")
        ),
        "{:?}",
        w.notified
    );
    w.notified.clear();
    w.feed(Input::Hangup);
    w.spawned(3);
    w.exited(3, "exit status: 3");
    assert!(
        matches!(
            &w.notified[..],
            [Supervisor::Reloading { .. }, Supervisor::Ready { status }]
                if status.starts_with("generation 2") && status.contains("last upgrade failed: generation 3")
        ),
        "{:?}",
        w.notified
    );
    w.notified.clear();
    // A build started by hand is an upgrade too.
    let (peer, _) = w.hand_started(4242, defaults());
    let out = w.feed(Input::Ready { peer });
    w.step_aside(&out);
    assert!(
        matches!(
            &w.notified[..],
            [Supervisor::Reloading { .. }, Supervisor::Ready { .. }]
        ),
        "{:?}",
        w.notified
    );
    w.notified.clear();
    w.feed(Input::Terminate { signal: "SIGTERM" });
    assert!(
        matches!(&w.notified[..], [Supervisor::Stopping { .. }]),
        "{:?}",
        w.notified
    );
}

#[test]
fn a_spawned_generation_whose_channel_ends_before_ready_has_a_moment_to_report_its_exit() {
    let mut w = serving();
    let client = w.control_client();
    w.feed(Input::UpgradeRequested { peer: client });
    w.spawned(2);
    w.hello(2, defaults());
    let peer = w.peer_of(2);
    let out = w.feed(Input::PeerGone {
        peer,
        why: "end of stream".to_owned(),
    });
    assert_eq!(out, vec![], "waits for the exit status");
    assert_eq!(w.m.next_deadline(), Some(w.now + EXIT_GRACE));
    let out = w.exited(2, "exit status: 3");
    let reason = error_to(&out, client).expect("the client hears why");
    assert!(reason.contains("exit status: 3"), "{reason}");

    // One that stays alive without its channel is killed once the moment has passed.
    let client = w.control_client();
    w.feed(Input::UpgradeRequested { peer: client });
    w.spawned(3);
    w.hello(3, defaults());
    let peer = w.peer_of(3);
    w.feed(Input::PeerGone {
        peer,
        why: "end of stream".to_owned(),
    });
    let out = w.tick_after(EXIT_GRACE);
    assert!(out.contains(&Action::Kill(3)));
    let reason = error_to(&out, client).expect("the client hears why");
    assert!(reason.contains("still running"), "{reason}");
    assert!(is_active(w.phase(1)));
}

// ---- Probation ----

fn with_probation() -> Timeouts {
    Timeouts {
        probation: 10 * SEC,
        ..defaults()
    }
}

/// Generation 1 serving with a 10 s probation window, then generation 2 taking over.
fn taken_over() -> World {
    let mut w = World::new(with_probation());
    w.feed(Input::Start);
    w.spawned(1);
    w.hello(1, with_probation());
    w.ready(1);
    assert_eq!(w.feed(Input::Hangup), vec![Action::Spawn(2)]);
    w.spawned(2);
    w.hello(2, with_probation());
    w.advance(300 * MS);
    let out = w.ready(2);
    w.step_aside(&out);
    let one = w.peer_of(1);
    assert!(
        out.contains(&Action::Send {
            peer: one,
            message: Message::Probation
        }),
        "{out:?}"
    );
    assert!(!out.iter().any(|a| matches!(
        a,
        Action::Send {
            message: Message::Superseded,
            ..
        }
    )));
    assert!(matches!(w.phase(1), Some(Phase::Probation { .. })));
    assert!(is_active(w.phase(2)));
    w
}

/// Generation 2, watched, is pinged every second and answers, until just before `end`.
fn answer_pings_until(w: &mut World, end: Instant) {
    let two = w.peer_of(2);
    for _ in 0..100 {
        let Some(next) = w.m.next_deadline().filter(|d| *d < end) else {
            return;
        };
        w.now = next;
        assert_eq!(w.feed(Input::Tick), vec![ping(two)]);
        assert_eq!(w.pong(2), vec![]);
    }
    panic!("the pings never reached {end:?}");
}

fn reinstated_to(out: &[Action], to: PeerId) -> bool {
    out.contains(&Action::Send {
        peer: to,
        message: Message::Reinstated,
    })
}

#[test]
fn a_build_dying_inside_the_probation_window_hands_traffic_back() {
    let mut w = taken_over();
    w.notified.clear();
    w.advance(200 * MS);
    let one = w.peer_of(1);
    let out = w.exited(2, "exit status: 4");
    assert!(reinstated_to(&out, one), "{out:?}");
    assert!(is_active(w.phase(1)));
    assert_eq!(w.phase(2), None);
    assert!(
        matches!(&w.notified[..], [Supervisor::Status { status }]
            if status.contains("generation 1") && status.contains("reinstated")
                && status.contains("generation 2 died 200 ms after taking over")),
        "{:?}",
        w.notified
    );
    // The failed build is not started again while generation 1 serves, however long.
    for _ in 0..20 {
        let out = w.tick_after(5 * SEC);
        assert!(
            !out.iter().any(|a| matches!(a, Action::Spawn(_))),
            "{out:?}"
        );
    }
    assert!(is_active(w.phase(1)));
    // A later upgrade tries again, normally.
    assert_eq!(w.feed(Input::Hangup), vec![Action::Spawn(3)]);
    w.spawned(3);
    w.hello(3, with_probation());
    let out = w.ready(3);
    assert!(out.contains(&Action::Send {
        peer: one,
        message: Message::Probation
    }));
    assert!(is_active(w.phase(3)));
}

#[test]
fn the_channel_of_the_new_build_ending_is_enough_to_reinstate() {
    let mut w = taken_over();
    let (one, two) = (w.peer_of(1), w.peer_of(2));
    let out = w.feed(Input::PeerGone {
        peer: two,
        why: "end of stream".to_owned(),
    });
    assert!(reinstated_to(&out, one), "{out:?}");
    // Out of touch, it must not accept alongside the reinstated one: it is killed.
    assert!(out.contains(&Action::Kill(2)), "{out:?}");
    assert!(is_active(w.phase(1)));
    assert_eq!(w.phase(2), Some(Phase::Killed));
    let out = w.exited(2, "signal: 9 (SIGKILL)");
    assert!(!out.iter().any(|a| matches!(a, Action::Spawn(_))));
    assert!(is_active(w.phase(1)));
}

#[test]
fn a_clean_exit_inside_the_window_also_reinstates() {
    let mut w = taken_over();
    let one = w.peer_of(1);
    let out = w.exited(2, "exit status: 0");
    assert!(reinstated_to(&out, one), "{out:?}");
    assert!(
        !out.contains(&Action::CloseListeners),
        "the service goes on"
    );
}

#[test]
fn after_the_window_the_old_generation_drains_and_a_crash_is_a_respawn() {
    let mut w = taken_over();
    let (one, two) = (w.peer_of(1), w.peer_of(2));
    let end = w.now + 10 * SEC;
    // Generation 2 is asked every second whether it is alive, and says so.
    assert_eq!(w.m.next_deadline(), Some(w.now + PING_INTERVAL));
    answer_pings_until(&mut w, end);
    // The window is over: generation 1 goes once generation 2 answered a ping sent from now.
    w.now = end;
    assert_eq!(w.feed(Input::Tick), vec![ping(two)]);
    assert!(matches!(w.phase(1), Some(Phase::Probation { .. })));
    assert_eq!(
        w.pong(2),
        vec![Action::Send {
            peer: one,
            message: Message::Superseded
        }]
    );
    assert!(is_draining(w.phase(1)));
    w.exited(1, "exit status: 0");
    let out = w.exited(2, "exit status: 4");
    assert!(!reinstated_to(&out, one));
    // 10 s after ready: counted as healthy, so the first respawn delay.
    let out = w.tick_after(MIN_RESPAWN_DELAY);
    assert_eq!(out, vec![Action::Spawn(3)]);
}

#[test]
fn a_second_takeover_releases_the_generation_on_probation() {
    let mut w = taken_over();
    let (one, two) = (w.peer_of(1), w.peer_of(2));
    w.feed(Input::Hangup);
    w.spawned(3);
    w.hello(3, with_probation());
    let out = w.ready(3);
    assert!(out.contains(&Action::Send {
        peer: one,
        message: Message::Superseded
    }));
    assert!(out.contains(&Action::Send {
        peer: two,
        message: Message::Probation
    }));
    assert!(is_draining(w.phase(1)));
    // Generation 3 dying brings back 2, the one that served last, never 1.
    let out = w.exited(3, "exit status: 4");
    assert!(reinstated_to(&out, two), "{out:?}");
    assert!(!reinstated_to(&out, one));
}

#[test]
fn a_stop_during_probation_drains_both() {
    let mut w = taken_over();
    let (one, two) = (w.peer_of(1), w.peer_of(2));
    let out = w.feed(Input::Terminate { signal: "SIGTERM" });
    for peer in [one, two] {
        assert!(out.contains(&Action::Send {
            peer,
            message: Message::Shutdown
        }));
    }
    let out = w.exited(2, "exit status: 0");
    assert!(!reinstated_to(&out, one), "no reinstatement while stopping");
    assert!(is_draining(w.phase(1)));
}

#[test]
fn a_generation_asked_to_stop_is_not_kept_on_probation() {
    let mut w = World::new(with_probation());
    w.feed(Input::Start);
    w.spawned(1);
    w.hello(1, with_probation());
    w.ready(1);
    let one = w.peer_of(1);
    assert_eq!(
        w.feed(Input::StopRequested { peer: one }),
        vec![Action::Spawn(2)]
    );
    w.spawned(2);
    w.hello(2, with_probation());
    let out = w.ready(2);
    assert!(out.contains(&Action::Send {
        peer: one,
        message: Message::Superseded
    }));
    assert!(is_draining(w.phase(1)));
}

#[test]
fn a_generation_on_probation_that_loses_the_front_drains_and_cannot_come_back() {
    let mut w = taken_over();
    let one = w.peer_of(1);
    w.feed(Input::PeerGone {
        peer: one,
        why: "end of stream".to_owned(),
    });
    assert!(is_draining(w.phase(1)));
    let out = w.exited(2, "exit status: 4");
    assert!(!reinstated_to(&out, one));
    let out = w.tick_after(10 * SEC);
    assert!(out.iter().any(|a| matches!(a, Action::Spawn(_))), "{out:?}");
}

#[test]
fn a_generation_asked_to_stop_during_probation_drains_now() {
    let mut w = taken_over();
    let one = w.peer_of(1);
    let out = w.feed(Input::StopRequested { peer: one });
    assert_eq!(
        out,
        vec![Action::Send {
            peer: one,
            message: Message::Superseded
        }]
    );
    assert!(is_draining(w.phase(1)));
}

// ---- The fixes of issue 25, each in both orders where the shell can deliver either ----

/// The two ends of a process's death, in the order given.
fn dies(w: &mut World, generation: Gen, status: &str, channel_first: bool) -> Vec<Action> {
    let peer = w.peer_of(generation);
    let gone = Input::PeerGone {
        peer,
        why: "end of stream".to_owned(),
    };
    let mut out = Vec::new();
    if channel_first {
        out.extend(w.feed(gone.clone()));
        out.extend(w.exited(generation, status));
    } else {
        out.extend(w.exited(generation, status));
        out.extend(w.feed(gone));
    }
    out
}

#[test]
fn a_generation_asked_to_stop_exiting_0_while_its_replacement_starts_ends_nothing_in_either_order()
{
    for channel_first in [true, false] {
        let mut w = serving();
        let one = w.peer_of(1);
        assert_eq!(
            w.feed(Input::StopRequested { peer: one }),
            vec![Action::Spawn(2)]
        );
        w.spawned(2);
        w.hello(2, defaults());
        // A second SIGTERM, as the rollback message suggests: generation 1 exits 0.
        let out = dies(&mut w, 1, "exit status: 0", channel_first);
        assert!(
            !out.iter().any(|a| matches!(
                a,
                Action::CloseListeners | Action::Exit(_) | Action::Kill(_)
            )),
            "channel first: {channel_first}: {out:?}"
        );
        assert_eq!(w.phase(2), Some(Phase::Starting), "{channel_first}");
        assert!(
            !w.notified
                .iter()
                .any(|n| matches!(n, Supervisor::Stopping { .. })),
            "{channel_first}: {:?}",
            w.notified
        );
        w.ready(2);
        assert!(is_active(w.phase(2)), "{channel_first}");
    }
}

#[test]
fn an_active_generation_exiting_0_with_nothing_else_ends_the_service_in_either_order() {
    for channel_first in [true, false] {
        let mut w = serving();
        let out = dies(&mut w, 1, "exit status: 0", channel_first);
        assert!(
            out.ends_with(&[Action::CloseListeners, Action::Exit(0)]),
            "{channel_first}: {out:?}"
        );
    }
}

#[test]
fn an_active_generation_crashing_is_respawned_in_either_order() {
    for channel_first in [true, false] {
        let mut w = serving();
        w.advance(STABLE_AFTER);
        dies(&mut w, 1, "exit status: 101", channel_first);
        assert_eq!(
            w.m.next_deadline(),
            Some(w.now + MIN_RESPAWN_DELAY),
            "{channel_first}"
        );
        assert_eq!(w.tick_after(MIN_RESPAWN_DELAY), vec![Action::Spawn(2)]);
    }
}

#[test]
fn an_upgrade_refused_because_the_service_stops_is_busy_not_failed() {
    // Asked during the stop delay, or while the stop drains.
    for stop_delay in [Duration::ZERO, 5 * SEC] {
        let mut w = World::new(defaults());
        w.m = Machine::new(defaults(), stop_delay);
        w.feed(Input::Start);
        w.bring_up(1);
        w.feed(Input::Terminate { signal: "SIGTERM" });
        let peer = w.peer();
        let out = w.feed(Input::Hello {
            peer,
            pid: 4321,
            role: Role::Control,
            timeouts: defaults(),
            preconnected: None,
        });
        assert!(
            matches!(&out[..], [Action::Send { peer: p, message: Message::Busy { .. } }, Action::Close(c)] if *p == peer && *c == peer),
            "stop delay {stop_delay:?}: {out:?}"
        );
    }
    // Asked before the stop, with its generation still starting when the stop comes.
    for stop_delay in [Duration::ZERO, 5 * SEC] {
        let mut w = World::new(defaults());
        w.m = Machine::new(defaults(), stop_delay);
        w.feed(Input::Start);
        w.bring_up(1);
        let client = w.control_client();
        w.feed(Input::UpgradeRequested { peer: client });
        w.spawned(2);
        let out = w.feed(Input::Terminate { signal: "SIGTERM" });
        let busy: Vec<_> = out
            .iter()
            .filter(|a| matches!(a, Action::Send { peer, .. } if *peer == client))
            .collect();
        assert!(
            matches!(
                &busy[..],
                [Action::Send {
                    message: Message::Busy { .. },
                    ..
                }]
            ),
            "stop delay {stop_delay:?}: one Busy answer: {out:?}"
        );
    }
}

#[test]
fn failed_upgrades_never_count_against_respawning_a_generation_that_served() {
    let mut w = World::new(with_probation());
    w.feed(Input::Start);
    w.spawned(1);
    w.hello(1, with_probation());
    w.ready(1);
    w.advance(60 * SEC);
    // More failed upgrades than the front tolerates failures: each build takes over and dies
    // inside its probation window, and generation 1 is reinstated each time.
    let one = w.peer_of(1);
    for n in 2..=(u64::from(MAX_CONSECUTIVE_FAILURES) + 5) {
        assert_eq!(w.feed(Input::Hangup), vec![Action::Spawn(n)]);
        w.spawned(n);
        w.hello(n, with_probation());
        let out = w.ready(n);
        w.step_aside(&out);
        w.advance(300 * MS);
        let out = dies(&mut w, n, "exit status: 1", n % 2 == 0);
        assert!(reinstated_to(&out, one), "{out:?}");
        assert!(is_active(w.phase(1)));
        w.advance(SEC);
    }
    // Generation 1, serving for over a minute, crashes: a first failure, not the last straw.
    let out = dies(&mut w, 1, "signal: 11 (SIGSEGV)", true);
    assert!(!out.contains(&Action::CloseListeners), "gave up: {out:?}");
    assert_eq!(w.m.next_deadline(), Some(w.now + MIN_RESPAWN_DELAY));
    let next = u64::from(MAX_CONSECUTIVE_FAILURES) + 6;
    assert_eq!(w.tick_after(MIN_RESPAWN_DELAY), vec![Action::Spawn(next)]);
}

#[test]
fn a_spawned_child_dying_before_its_hello_has_its_channel_closed() {
    // It exits.
    let mut w = serving();
    w.feed(Input::Hangup);
    w.spawned(2);
    let channel = w.peer_of(2);
    assert!(
        w.exited(2, "exit status: 1")
            .contains(&Action::Close(channel))
    );
    // It never says Hello and is killed at its ready deadline.
    let mut w = serving();
    w.feed(Input::Hangup);
    w.spawned(2);
    let channel = w.peer_of(2);
    let out = w.tick_after(defaults().ready);
    assert!(
        out.contains(&Action::Kill(2)) && out.contains(&Action::Close(channel)),
        "{out:?}"
    );
    // Its channel ends first: the exit status gets its moment, as after a Hello.
    let mut w = serving();
    w.feed(Input::Hangup);
    w.spawned(2);
    let channel = w.peer_of(2);
    w.feed(Input::PeerGone {
        peer: channel,
        why: "end of stream".to_owned(),
    });
    assert_eq!(w.m.next_deadline(), Some(w.now + EXIT_GRACE));
}

#[test]
fn a_build_that_hangs_after_taking_over_is_treated_as_dead() {
    let mut w = taken_over();
    let (one, two) = (w.peer_of(1), w.peer_of(2));
    assert_eq!(w.tick_after(PING_INTERVAL), vec![ping(two)]);
    assert_eq!(w.pong(2), vec![]);
    assert_eq!(w.tick_after(PING_INTERVAL), vec![ping(two)]);
    // Stopped: no answer. Nothing happens before the timeout...
    assert_eq!(w.m.next_deadline(), Some(w.now + PING_TIMEOUT));
    assert_eq!(w.tick_after(PING_TIMEOUT - MS), vec![]);
    // ... then generation 1 accepts again first, and the hung one is killed.
    let out = w.tick_after(MS);
    let reinstated = out.iter().position(|a| {
        *a == Action::Send {
            peer: one,
            message: Message::Reinstated,
        }
    });
    let killed = out.iter().position(|a| *a == Action::Kill(2));
    assert!(
        reinstated.is_some() && killed.is_some() && reinstated < killed,
        "{out:?}"
    );
    assert!(is_active(w.phase(1)));
    assert_eq!(w.phase(2), Some(Phase::Killed));
    assert!(
        matches!(w.notified.last(), Some(Supervisor::Status { status }) if status.contains("hung")),
        "{:?}",
        w.notified
    );
    // Its late answer changes nothing, and the hung build is not started again.
    assert_eq!(w.feed(Input::Pong { peer: two }), vec![]);
    let out = w.exited(2, "signal: 9 (SIGKILL)");
    assert!(
        !out.iter().any(|a| matches!(a, Action::Spawn(_))),
        "{out:?}"
    );
    assert_eq!(w.m.next_deadline(), None);
}

#[test]
fn a_hang_at_the_end_of_the_window_is_caught_before_the_release() {
    let mut w = taken_over();
    let two = w.peer_of(2);
    let end = w.now + 10 * SEC;
    answer_pings_until(&mut w, end);
    w.now = end;
    assert_eq!(w.feed(Input::Tick), vec![ping(two)]);
    // It hangs now: the window is over, but generation 1 is still held.
    let out = w.tick_after(PING_TIMEOUT);
    assert!(reinstated_to(&out, w.peer_of(1)), "{out:?}");
    assert!(out.contains(&Action::Kill(2)), "{out:?}");
}

#[test]
fn pongs_nobody_asked_for_are_ignored() {
    let mut w = taken_over();
    // Before any ping, from the generation on probation, from a stranger.
    assert_eq!(w.pong(2), vec![]);
    assert_eq!(w.pong(1), vec![]);
    assert_eq!(w.feed(Input::Pong { peer: 999_999 }), vec![]);
    assert_eq!(w.m.next_deadline(), Some(w.now + PING_INTERVAL));
    // Without a probation nobody is pinged.
    let mut w = serving();
    w.feed(Input::Hangup);
    w.bring_up(2);
    assert_eq!(w.pong(2), vec![]);
    assert_eq!(
        w.m.next_deadline(),
        Some(w.now + 35 * SEC),
        "only the drain deadline"
    );
}

#[test]
fn an_answer_to_a_ping_sent_before_the_window_ended_does_not_release() {
    let mut w = taken_over();
    let (one, two) = (w.peer_of(1), w.peer_of(2));
    let end = w.now + 10 * SEC;
    w.now = end - 500 * MS;
    assert_eq!(w.feed(Input::Tick), vec![ping(two)]);
    w.now = end;
    assert_eq!(w.feed(Input::Tick), vec![], "the ping it owes is awaited");
    // Alive as of before the window's end: asked once more.
    assert_eq!(w.pong(2), vec![ping(two)]);
    assert!(matches!(w.phase(1), Some(Phase::Probation { .. })));
    assert_eq!(
        w.pong(2),
        vec![Action::Send {
            peer: one,
            message: Message::Superseded
        }]
    );
}

#[test]
fn a_late_tick_finding_the_new_build_hung_reports_a_failed_upgrade_not_a_success() {
    let (mut w, client) = awaiting_step_aside(with_probation());
    let two = w.peer_of(2);
    assert_eq!(w.tick_after(PING_INTERVAL), vec![ping(two)]);
    // The shell wakes late: the report's timeout and the ping's are both past.
    w.advance(PING_TIMEOUT + STEP_ASIDE_TIMEOUT);
    let out = w.feed(Input::Tick);
    assert!(reinstated_to(&out, w.peer_of(1)), "{out:?}");
    let reason = error_to(&out, client).expect("the client hears the upgrade failed");
    assert!(reason.contains("generation 2"), "{reason}");
    assert!(!upgraded_to(&out, client, 2), "{out:?}");
}

#[test]
fn the_shell_keeps_handles_only_for_generations_the_machine_tracks() {
    let mut w = serving();
    assert!(w.m.has_generation(1));
    assert!(!w.m.has_generation(2));
    w.feed(Input::Hangup);
    w.bring_up(2);
    w.exited(1, "exit status: 0");
    assert!(!w.m.has_generation(1));
    assert!(w.m.has_generation(2));
}

#[test]
fn a_child_s_channel_refused_for_a_wrong_pid_is_closed_once() {
    let mut w = serving();
    w.feed(Input::Hangup);
    w.spawned(2);
    let channel = w.peer_of(2);
    let out = w.feed(Input::Hello {
        peer: channel,
        pid: 1,
        role: Role::Generation,
        timeouts: defaults(),
        preconnected: Some(2),
    });
    assert!(error_to(&out, channel).is_some_and(|r| r.contains("not by the process")));
    assert!(out.contains(&Action::Close(channel)));
    // At its ready deadline it is killed; its channel was closed already.
    let out = w.tick_after(defaults().ready);
    assert_eq!(out, vec![Action::Kill(2)]);
}

#[test]
fn a_spawned_child_may_say_hello_through_the_endpoint_and_its_channel_goes() {
    let mut w = serving();
    w.feed(Input::Hangup);
    w.spawned(2);
    let (pid, channel) = (w.pid(2), w.peer_of(2));
    let peer = w.peer();
    let out = w.feed(Input::Hello {
        peer,
        pid,
        role: Role::Generation,
        timeouts: defaults(),
        preconnected: None,
    });
    assert_eq!(
        out,
        vec![
            Action::Close(channel),
            Action::SendListeners {
                peer,
                generation: 2
            }
        ]
    );
    let out = w.feed(Input::Ready { peer });
    assert!(is_active(w.phase(2)), "{out:?}");
}

#[test]
fn only_an_upgrade_s_report_tells_systemd_how_long_it_took() {
    let mut w = World::new(defaults());
    w.feed(Input::Start);
    w.bring_up(1);
    assert!(
        matches!(&w.notified[..], [Supervisor::Ready { status }] if !status.contains("last upgrade")),
        "{:?}",
        w.notified
    );
    w.notified.clear();
    w.feed(Input::Hangup);
    w.bring_up(2);
    assert!(
        matches!(&w.notified[..], [Supervisor::Reloading { .. }, Supervisor::Ready { status }]
            if status.contains("last upgrade: generation 2 ready in")),
        "{:?}",
        w.notified
    );
}

#[test]
fn a_stop_keeps_the_earlier_deadline_of_a_generation_already_draining() {
    let mut w = serving();
    w.feed(Input::Hangup);
    w.bring_up(2);
    // Generation 1 drains since the takeover: killed 35 s after it.
    let killed_at = w.now + 35 * SEC;
    w.advance(30 * SEC);
    w.feed(Input::Terminate { signal: "SIGTERM" });
    assert_eq!(w.m.next_deadline(), Some(killed_at));
    let out = w.tick_after(5 * SEC);
    assert!(out.contains(&Action::Kill(1)), "{out:?}");
}

#[test]
fn nothing_is_due_after_the_exit() {
    let mut w = World::new(defaults());
    w.m = Machine::new(defaults(), 10 * SEC);
    w.feed(Input::Start);
    w.bring_up(1);
    w.feed(Input::Terminate { signal: "SIGTERM" });
    // The only generation ends during the stop delay: the front exits at once.
    let out = w.exited(1, "exit status: 0");
    assert!(out.ends_with(&[Action::Exit(0)]), "{out:?}");
    assert_eq!(w.m.next_deadline(), None);
}

#[test]
fn a_control_client_saying_hello_again_changes_nothing() {
    let mut w = serving();
    let client = w.control_client();
    for role in [Role::Control, Role::Generation] {
        let out = w.feed(Input::Hello {
            peer: client,
            pid: 77,
            role,
            timeouts: defaults(),
            preconnected: None,
        });
        assert_eq!(out, vec![], "{role:?}");
    }
    assert!(!w.m.has_generation(2));
}

#[test]
fn every_generation_still_draining_is_introduced_to_the_newest() {
    let mut w = taken_over();
    assert_eq!(w.feed(Input::Hangup), vec![Action::Spawn(3)]);
    w.spawned(3);
    w.hello(3, with_probation());
    let (one, two, three) = (w.peer_of(1), w.peer_of(2), w.peer_of(3));
    let out = w.ready(3);
    // Generation 2 goes to 3, and 1, which may still hold connections, sends the rest to 3
    // as well (2 refuses them from now on).
    let introduced: Vec<PeerId> = out
        .iter()
        .filter_map(|a| match a {
            Action::Introduce { from, to } if *to == three => Some(*from),
            _ => None,
        })
        .collect();
    assert!(
        introduced.contains(&one) && introduced.contains(&two),
        "{out:?}"
    );
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::Introduce { to, .. } if *to != three))
    );
    // And 1 knows before 2 is told to step aside: 2 refuses 1's connections from then on, and
    // a refused connection with nowhere else to go would be told to close.
    let position = |wanted: &dyn Fn(&Action) -> bool| out.iter().position(wanted);
    let one_introduced = position(&|a| matches!(a, Action::Introduce { from, .. } if *from == one));
    let two_told = position(&|a| matches!(a, Action::Send { peer, .. } if *peer == two));
    assert!(
        one_introduced.is_some() && two_told.is_some() && one_introduced < two_told,
        "{out:?}"
    );
}

#[test]
fn the_shell_learns_which_generation_serves_and_its_peer() {
    // The shell starts what the serving generation runs: it asks the machine who that is.
    let w = World::new(defaults());
    assert_eq!((w.m.active_generation(), w.m.active_peer()), (None, None));
    let w = serving();
    assert_eq!(w.m.active_generation(), Some(1));
    assert_eq!(w.m.active_peer(), Some(w.peer_of(1)));
    let w = taken_over();
    assert_eq!(w.m.active_generation(), Some(2));
    assert_eq!(w.m.active_peer(), Some(w.peer_of(2)));
}

#[test]
fn a_quiet_service_re_executes_and_the_new_machine_serves_on() {
    let mut w = serving();
    // A crash and a respawn first: the failure count must cross the exec.
    w.advance(2 * SEC);
    let old = w.peer_of(1);
    w.feed(Input::PeerGone {
        peer: old,
        why: "end of stream".to_owned(),
    });
    w.exited(1, "exit status: 101");
    let out = w.tick_after(MAX_RESPAWN_DELAY);
    assert_eq!(out, vec![Action::Spawn(2)]);
    w.bring_up(2);
    w.advance(3 * SEC);
    let client = w.control_client();
    let out = w.feed(Input::ReExecRequested { peer: client });
    let [Action::ReExec(snapshot)] = out.as_slice() else {
        panic!("a quiet service re-executes: {out:?}");
    };
    assert_eq!(
        (
            snapshot.generation,
            snapshot.pid,
            snapshot.peer,
            snapshot.asked
        ),
        (2, w.pid(2), w.peer_of(2), Some(client))
    );
    assert!(snapshot.clients.is_empty() && !snapshot.upgrade_after);
    assert_eq!((snapshot.served, snapshot.failures), (3 * SEC, 1));
    assert!(snapshot.spawned && snapshot.ever_ready);
    assert_eq!(snapshot.next_generation, 3);

    // The new image: the client hears the generation that serves, and the rules go on.
    let (m, out) = Machine::resume(defaults(), Duration::ZERO, w.now, snapshot);
    assert_eq!(
        out,
        vec![
            Action::Notify(Supervisor::Status {
                status: format!(
                    "generation 2 (pid {}) serving; the front re-executed",
                    w.pid(2)
                )
            }),
            Action::Send {
                peer: client,
                message: Message::Upgraded { generation: 2 }
            },
            Action::Close(client),
        ]
    );
    w.m = m;
    assert!(is_active(w.phase(2)));
    assert_eq!(w.m.backoff.failures(), 1);
    assert_eq!(w.m.next_deadline(), None);
    assert_eq!(w.feed(Input::Hangup), vec![Action::Spawn(3)]);
    w.spawned(3);
    w.hello(3, defaults());
    let out = w.ready(3);
    assert!(
        out.contains(&Action::Send {
            peer: w.peer_of(2),
            message: Message::Superseded
        }),
        "the resumed generation is superseded as any other: {out:?}"
    );
}

#[test]
fn the_last_upgrade_s_outcome_crosses_a_re_exec() {
    let mut w = serving();
    assert_eq!(w.feed(Input::Hangup), vec![Action::Spawn(2)]);
    w.spawned(2);
    w.exited(2, "exit status: 1");
    assert!(
        matches!(w.notified.last(), Some(Supervisor::Ready { status }) if status.contains("last upgrade failed: generation 2")),
        "{:?}",
        w.notified
    );
    let client = w.control_client();
    let out = w.feed(Input::ReExecRequested { peer: client });
    let [Action::ReExec(snapshot)] = out.as_slice() else {
        panic!("a quiet service re-executes: {out:?}");
    };
    let outcome = snapshot
        .last_upgrade
        .clone()
        .expect("the outcome is carried");
    assert!(
        outcome.starts_with("last upgrade failed: generation 2"),
        "{outcome}"
    );

    // The new image says it again, and keeps it for its next re-exec.
    let (m, out) = Machine::resume(defaults(), Duration::ZERO, w.now, snapshot);
    assert!(
        matches!(out.first(), Some(Action::Notify(Supervisor::Status { status })) if status.ends_with(&format!("the front re-executed; {outcome}"))),
        "{out:?}"
    );
    w.m = m;
    let client = w.control_client();
    let out = w.feed(Input::ReExecRequested { peer: client });
    let [Action::ReExec(again)] = out.as_slice() else {
        panic!("the resumed service re-executes again: {out:?}");
    };
    assert_eq!(again.last_upgrade, Some(outcome));

    // A successful reload replaces it.
    let (m, _) = Machine::resume(defaults(), Duration::ZERO, w.now, again);
    w.m = m;
    assert_eq!(w.feed(Input::Hangup), vec![Action::Spawn(3)]);
    w.bring_up(3);
    let old = w.peer_of(1);
    w.feed(Input::SteppedAside { peer: old });
    w.exited(1, "exit status: 0");
    let client = w.control_client();
    let out = w.feed(Input::ReExecRequested { peer: client });
    let [Action::ReExec(after)] = out.as_slice() else {
        panic!(
            "a quiet service re-executes: {out:?}\n{:?}",
            w.m.quiet(w.now)
        );
    };
    assert!(
        after
            .last_upgrade
            .as_deref()
            .is_some_and(|o| o.starts_with("last upgrade: generation 3 ready in")),
        "{:?}",
        after.last_upgrade
    );
}

#[test]
fn a_re_exec_is_refused_while_anything_is_under_way() {
    let mut w = serving();
    assert_eq!(w.feed(Input::Hangup), vec![Action::Spawn(2)]);
    let client = w.control_client();
    let out = w.feed(Input::ReExecRequested { peer: client });
    let reason = error_to(&out, client).expect("an answer");
    assert!(reason.contains("upgrade is in progress"), "{reason}");
    assert!(out.contains(&Action::Close(client)));
    assert!(
        !out.iter().any(|a| matches!(a, Action::ReExec(_))),
        "{out:?}"
    );

    // Stopping: not a quiet point either (a client saying Hello then is turned away).
    let mut w = serving();
    w.feed(Input::Terminate { signal: "SIGTERM" });
    assert_eq!(w.m.quiet(w.now), Err("the service is stopping".to_owned()));

    // Only control clients ask.
    let mut w = serving();
    let generation = w.peer_of(1);
    assert_eq!(w.feed(Input::ReExecRequested { peer: generation }), vec![]);
}

#[test]
fn a_failed_re_exec_is_told_to_its_client() {
    let mut w = serving();
    let client = w.control_client();
    let out = w.feed(Input::ReExecRequested { peer: client });
    assert!(matches!(out.as_slice(), [Action::ReExec(_)]), "{out:?}");
    let out = w.feed(Input::ReExecFailed {
        why: "cannot run /gone: No such file".to_owned(),
        busy: false,
    });
    assert_eq!(
        out,
        vec![
            Action::Send {
                peer: client,
                message: Message::Error {
                    reason: "cannot run /gone: No such file".to_owned()
                }
            },
            Action::Close(client)
        ]
    );
    assert!(is_active(w.phase(1)), "the old image serves on");
}

#[test]
fn an_upgrade_to_a_build_of_the_next_protocol_re_executes_the_front_then_starts_it_again() {
    let mut w = serving();
    w.advance(20 * SEC);
    let client = w.control_client();
    assert_eq!(
        w.feed(Input::UpgradeRequested { peer: client }),
        vec![Action::Spawn(2)]
    );
    w.spawned(2);
    let channel = w.peer_of(2);
    // Its Hello is of the next version: unreadable; it exits, unable to join.
    assert_eq!(w.feed(Input::NewerBuild { peer: channel }), vec![]);
    w.feed(Input::PeerGone {
        peer: channel,
        why: "refused".to_owned(),
    });
    let out = w.exited(2, "exit status: 1");
    let snapshot = out
        .iter()
        .find_map(|a| match a {
            Action::ReExec(snapshot) => Some(snapshot.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the front re-executes at once: {out:?}"));
    assert!(
        error_to(&out, client).is_none(),
        "the client waits: {out:?}"
    );
    assert_eq!(
        (
            snapshot.generation,
            snapshot.asked,
            snapshot.clients.clone(),
            snapshot.upgrade_after
        ),
        (1, None, vec![client], true)
    );
    assert!(snapshot.reloading, "systemd still waits for READY=1");
    assert_eq!(snapshot.failures, 0, "not a failure");
    assert_eq!(snapshot.next_generation, 3);

    // The new image starts the upgrade again, and the client hears its outcome.
    let (m, out) = Machine::resume(defaults(), Duration::ZERO, w.now, &snapshot);
    assert!(
        matches!(&out[..], [Action::Notify(Supervisor::Status { status }), Action::Spawn(3)] if status.ends_with("serving; the front re-executed")),
        "{out:?}"
    );
    w.m = m;
    w.bring_up(3);
    assert!(is_active(w.phase(3)));
    let out = w.feed(Input::Tick);
    let _ = out;
    assert!(
        w.notified
            .iter()
            .any(|n| matches!(n, Supervisor::Ready { status } if status.contains("generation 3"))),
        "READY=1 follows: {:?}",
        w.notified
    );
}

#[test]
fn a_build_of_the_next_protocol_waits_for_a_quiet_point_and_a_failed_re_exec_fails_its_upgrade() {
    let mut w = serving();
    let client = w.control_client();
    w.feed(Input::UpgradeRequested { peer: client });
    w.spawned(2);
    w.feed(Input::NewerBuild { peer: w.peer_of(2) });
    // Killed at its deadline rather than exiting: the same, once reaped.
    let out = w.tick_after(2 * EXIT_GRACE.max(61 * SEC));
    assert!(out.contains(&Action::Kill(2)), "{out:?}");
    assert!(
        !out.iter().any(|a| matches!(a, Action::ReExec(_))),
        "not while it lives"
    );
    let out = w.exited(2, "signal: 9 (SIGKILL)");
    assert!(
        out.iter().any(|a| matches!(a, Action::ReExec(_))),
        "{out:?}"
    );
    // Meanwhile nothing else starts.
    let other = w.control_client();
    let refused = w.feed(Input::UpgradeRequested { peer: other });
    assert!(error_to(&refused, other).is_some(), "{refused:?}");
    // Busy: tried again at the next quiet point, the client still waiting.
    let out = w.feed(Input::ReExecFailed {
        why: "the service changed".to_owned(),
        busy: true,
    });
    assert!(
        !out.iter().any(|a| matches!(a, Action::ReExec(_))),
        "not before the next event: {out:?}"
    );
    let out = w.feed(Input::Tick);
    assert!(
        out.iter().any(|a| matches!(a, Action::ReExec(_))),
        "tried again: {out:?}"
    );
    // Failed for good: the client hears why, and the old generation serves on.
    let out = w.feed(Input::ReExecFailed {
        why: "cannot run /gone".to_owned(),
        busy: false,
    });
    let reason = error_to(&out, client).expect("the client hears why");
    assert!(reason.contains("cannot run /gone"), "{reason}");
    assert!(is_active(w.phase(1)));
    assert_eq!(
        w.feed(Input::Hangup),
        vec![Action::Spawn(3)],
        "upgrades work again"
    );
}
