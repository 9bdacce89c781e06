//! The machine driven directly: one test per rule, then random event sequences checked against
//! the invariants after every step. Time is a fake clock: an `Instant` moved by hand.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

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
        self.feed(Input::Spawned { generation, pid })
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

fn is_active(phase: Option<Phase>) -> bool {
    matches!(phase, Some(Phase::Active { .. }))
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
        } if *peer == to => Some(reason.clone()),
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
    assert!(matches!(w.phase(1), Some(Phase::Starting { .. })));
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
    assert_eq!(
        w.ready(2),
        vec![Action::Send {
            peer: old,
            message: Message::Superseded
        }]
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
    assert!(matches!(w.phase(2), Some(Phase::Starting { .. })));
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
    assert_eq!(w.tick_after(86_400 * SEC), vec![]);
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
        assert_eq!(w.exited(n, "exit status: 3"), vec![]);
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
    assert!(matches!(w.phase(1), Some(Phase::Lost { .. })));
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
    assert_eq!(
        w.ready(2),
        vec![Action::Send {
            peer: old,
            message: Message::Superseded
        }]
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
    assert_eq!(
        w.exited(1, "exit status: 0"),
        vec![Action::CloseListeners, Action::Exit(0)]
    );
}

#[test]
fn an_upgrade_exiting_0_before_ready_is_a_rollback() {
    let mut w = serving();
    w.feed(Input::Hangup);
    w.spawned(2);
    assert_eq!(w.exited(2, "exit status: 0"), vec![]);
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

// ---- Random event sequences ----

/// One abstract event; indices pick among whatever exists at that moment.
#[derive(Debug, Clone)]
enum Op {
    Hangup,
    Upgrade,
    /// A spawned generation that is starting says Hello, with a probation window or not.
    Hello(usize, bool),
    /// A build started by hand connects, with these ready, drain and probation timeouts
    /// (seconds).
    HandStarted(u64, u64, u64),
    Ready(usize),
    PeerGone(usize),
    /// A live spawned process exits on its own.
    Crash(usize),
    /// A killed process is reaped.
    Reap(usize),
    Terminate,
    Advance(u64),
    Tick,
    /// The next spawn fails.
    FailNextSpawn,
    /// A generation was sent SIGTERM from outside.
    StopRequested(usize),
    /// A live spawned process exits with status 0 on its own.
    CleanExit(usize),
    /// A peer says it stepped aside (whether or not it was told to).
    SteppedAside(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Hangup),
        1 => Just(Op::Upgrade),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(i, p)| Op::Hello(i, p)),
        1 => (0u64..120, 0u64..120, 0u64..20).prop_map(|(r, d, p)| Op::HandStarted(r, d, p)),
        4 => any::<usize>().prop_map(Op::Ready),
        1 => any::<usize>().prop_map(Op::PeerGone),
        2 => any::<usize>().prop_map(Op::Crash),
        3 => any::<usize>().prop_map(Op::Reap),
        1 => Just(Op::Terminate),
        4 => (0u64..40_000).prop_map(Op::Advance),
        3 => Just(Op::Tick),
        1 => Just(Op::FailNextSpawn),
        1 => any::<usize>().prop_map(Op::StopRequested),
        1 => any::<usize>().prop_map(Op::CleanExit),
        3 => any::<usize>().prop_map(Op::SteppedAside),
    ]
}

/// The world outside the machine, as the random driver models it.
struct Model {
    w: World,
    /// Spawned processes not reported exited: (pid, peer).
    live: BTreeMap<Gen, (u32, PeerId)>,
    /// Processes the machine asked to kill; they exit when the driver reaps them.
    killed: BTreeSet<Gen>,
    /// Peers the machine has not closed, with the generation they speak for (if any).
    open_peers: BTreeMap<PeerId, Option<Gen>>,
    fail_next_spawn: bool,
    exited: Option<i32>,
    /// When the last respawn (a spawn caused by a tick) happened.
    last_respawn: Option<Instant>,
    /// Respawns since a generation last became ready.
    respawns_without_ready: u32,
    listeners_closed: bool,
    /// RELOADING=1 sent, READY=1 not yet.
    reloading: bool,
    stop_notified: bool,
    /// The last generation brought back from probation.
    reinstated: Option<Gen>,
    /// Serving generations told to stop accepting (`Probation`, or `Superseded` while
    /// active): when, on which peer, and the how-manieth such message to that peer it was.
    told_aside: BTreeMap<Gen, (Instant, PeerId, u32)>,
    /// `Probation` and `Superseded` messages sent to each peer, and `SteppedAside` answers
    /// counted against them (each answers the oldest unanswered; none is banked).
    tells: BTreeMap<PeerId, u32>,
    answers: BTreeMap<PeerId, u32>,
}

impl Model {
    fn new(stop_delay: Duration) -> Self {
        let timeouts = Timeouts {
            ready: 5 * SEC,
            drain: 10 * SEC,
            probation: 4 * SEC,
        };
        let mut w = World::new(timeouts);
        w.m = Machine::new(timeouts, stop_delay);
        let mut model = Model {
            w,
            live: BTreeMap::new(),
            killed: BTreeSet::new(),
            open_peers: BTreeMap::new(),
            fail_next_spawn: false,
            exited: None,
            last_respawn: None,
            respawns_without_ready: 0,
            listeners_closed: false,
            reloading: false,
            stop_notified: false,
            reinstated: None,
            told_aside: BTreeMap::new(),
            tells: BTreeMap::new(),
            answers: BTreeMap::new(),
        };
        model.input(Input::Start);
        model
    }

    fn pick<T: Copy>(items: impl Iterator<Item = T>, index: usize) -> Option<T> {
        let items: Vec<T> = items.collect();
        (!items.is_empty()).then(|| items[index % items.len()])
    }

    /// Feeds one input and performs the actions the way the shell does, checking each.
    fn input(&mut self, input: Input) {
        let is_tick = input == Input::Tick;
        let upgrade_from = match input {
            Input::UpgradeRequested { peer } => Some(peer),
            _ => None,
        };
        let was_starting = self.w.m.starting().is_some();
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
            Input::Ready { peer } => self.w.m.by_peer(peer),
            _ => None,
        };
        let before_exit = self.exited.is_some();
        let mut queue = vec![input];
        while let Some(input) = queue.pop() {
            let before = self.w.m.phases();
            let out = self.w.m.handle(self.w.now, input);
            assert!(
                !before_exit || out.is_empty(),
                "actions after Exit: {out:?}"
            );
            if let Some(client) = upgrade_from
                && was_starting
            {
                let reason = error_to(&out, client);
                assert!(
                    reason.is_some_and(|r| !r.is_empty()),
                    "an upgrade while one starts must be refused with a reason: {out:?}"
                );
            }
            for action in out {
                match action {
                    Action::Spawn(n) => {
                        if is_tick {
                            assert!(
                                self.w.m.active().is_none(),
                                "respawned while generation {:?} serves (reinstated: {:?})",
                                self.w.m.active(),
                                self.reinstated
                            );
                            if let Some(last) = self.last_respawn {
                                assert!(
                                    self.w.now - last >= MIN_RESPAWN_DELAY,
                                    "respawned {:?} after the previous respawn",
                                    self.w.now - last
                                );
                            }
                            self.last_respawn = Some(self.w.now);
                            self.respawns_without_ready += 1;
                            assert!(
                                self.respawns_without_ready <= MAX_CONSECUTIVE_FAILURES + 1,
                                "respawning without end"
                            );
                        }
                        if std::mem::take(&mut self.fail_next_spawn) {
                            queue.push(Input::SpawnFailed {
                                generation: n,
                                why: "injected".to_owned(),
                            });
                        } else {
                            let pid = self.w.next_pid;
                            self.w.next_pid += 1;
                            let peer = self.w.peer();
                            self.w.spawned.insert(n, (pid, peer));
                            self.live.insert(n, (pid, peer));
                            self.open_peers.insert(peer, Some(n));
                            queue.push(Input::Spawned { generation: n, pid });
                        }
                    }
                    Action::CloseListeners => self.listeners_closed = true,
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
                    Action::SendListeners { .. } if self.listeners_closed => {
                        panic!("listening sockets handed over after they were closed");
                    }
                    Action::Send {
                        peer,
                        message: Message::Reinstated,
                    } => {
                        let n = self
                            .w
                            .m
                            .by_peer(peer)
                            .expect("Reinstated goes to a generation's channel");
                        assert!(
                            matches!(before.get(&n), Some(Phase::Probation { .. })),
                            "generation {n} reinstated from {:?}, not from probation",
                            before.get(&n)
                        );
                        assert!(
                            is_active(self.w.m.phases().get(&n).copied()),
                            "the reinstated generation {n} is the one serving: {:?}",
                            self.w.m.phases()
                        );
                        self.reinstated = Some(n);
                    }
                    Action::Send {
                        peer,
                        message: Message::Probation | Message::Superseded,
                    } => {
                        assert!(
                            self.open_peers.contains_key(&peer),
                            "{action:?} to a closed peer"
                        );
                        let tells = self.tells.entry(peer).or_default();
                        *tells += 1;
                        let nth = *tells;
                        if let Some(n) = self.w.m.by_peer(peer)
                            && is_active(before.get(&n).copied())
                        {
                            self.told_aside.insert(n, (self.w.now, peer, nth));
                        }
                    }
                    Action::Send {
                        peer,
                        message: Message::Upgraded { generation },
                    } => {
                        assert!(
                            self.open_peers.contains_key(&peer),
                            "{action:?} to a closed peer"
                        );
                        // Reported only once every generation it superseded stepped aside, is
                        // out of touch or gone, or the timeout passed.
                        for (old, (since, old_peer, nth)) in &self.told_aside {
                            let answered = self.answers.get(old_peer).copied().unwrap_or(0);
                            let still_there = answered < *nth
                                && self.open_peers.contains_key(old_peer)
                                && matches!(
                                    self.w.m.phases().get(old),
                                    Some(Phase::Probation { .. } | Phase::Draining { .. })
                                );
                            assert!(
                                !still_there
                                    || may_begin_upgrade
                                    || getting_ready.is_some_and(|n| n != generation)
                                    || self.w.now - *since >= STEP_ASIDE_TIMEOUT,
                                "generation {generation} reported upgraded while generation {old} has not stepped aside ({:?} after it was told)",
                                self.w.now - *since
                            );
                        }
                    }
                    Action::SendListeners { peer, .. } | Action::Send { peer, .. } => {
                        assert!(
                            self.open_peers.contains_key(&peer),
                            "{action:?} to a peer that is not open"
                        );
                    }
                    Action::Close(peer) => {
                        self.open_peers.remove(&peer);
                    }
                    Action::Kill(n) => {
                        if self.live.contains_key(&n) {
                            self.killed.insert(n);
                        }
                    }
                    Action::Exit(code) => {
                        assert!(
                            self.live.is_empty(),
                            "exited with children unreaped: {:?}",
                            self.live
                        );
                        self.exited = Some(code);
                    }
                }
            }
        }
        self.check();
    }

    fn check(&self) {
        let phases = self.w.m.phases();
        let active = phases.values().filter(|p| is_active(Some(**p))).count();
        let starting = phases
            .values()
            .filter(|p| matches!(p, Phase::Starting { .. }))
            .count();
        assert!(active <= 1, "{active} active generations: {phases:?}");
        let on_probation = phases
            .values()
            .filter(|p| matches!(p, Phase::Probation { .. }))
            .count();
        assert!(
            on_probation <= 1,
            "{on_probation} generations on probation: {phases:?}"
        );
        // A generation on probation always has a successor serving: when that one dies, it
        // is brought back (or, once the service stops, drains).
        assert!(
            on_probation == 0 || active == 1,
            "a generation on probation with none serving: {phases:?}"
        );
        assert!(starting <= 1, "{starting} starting generations: {phases:?}");
        let next = self.w.m.next_deadline();
        for (n, phase) in &phases {
            if let Phase::Starting { deadline }
            | Phase::Draining { deadline, .. }
            | Phase::Lost { deadline, .. }
            | Phase::Probation {
                until: deadline, ..
            } = phase
            {
                assert!(
                    next.is_some_and(|next| next <= *deadline),
                    "generation {n} waits with no deadline: {phase:?}, next {next:?}"
                );
            }
        }
        // A pending report is bounded by a deadline.
        if let Some(h) = &self.w.m.handover {
            assert!(
                next.is_some_and(|next| next <= h.deadline),
                "the report of generation {} waits with no deadline",
                h.generation
            );
        }
        // Every spawned process that was not reaped is still tracked.
        for n in self.live.keys() {
            assert!(
                phases.contains_key(n) || self.exited.is_some(),
                "generation {n} is alive but forgotten: {phases:?}"
            );
        }
    }

    fn step(&mut self, op: Op) {
        if self.exited.is_some() {
            return;
        }
        match op {
            Op::Hangup => self.input(Input::Hangup),
            Op::Upgrade => {
                let peer = self.w.peer();
                self.open_peers.insert(peer, None);
                self.input(Input::Hello {
                    peer,
                    pid: 1,
                    role: Role::Control,
                    timeouts: defaults(),
                    preconnected: None,
                });
                if self.open_peers.contains_key(&peer) {
                    self.input(Input::UpgradeRequested { peer });
                }
            }
            Op::Hello(i, probation) => {
                let open = &self.open_peers;
                let talking = self
                    .live
                    .iter()
                    .filter(|(_, (_, peer))| open.contains_key(peer));
                if let Some((n, (pid, peer))) = Self::pick(talking, i) {
                    let (n, pid, peer) = (*n, *pid, *peer);
                    self.input(Input::Hello {
                        peer,
                        pid,
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
            Op::HandStarted(ready, drain, probation) => {
                let peer = self.w.peer();
                let pid = self.w.next_pid;
                self.w.next_pid += 1;
                self.open_peers.insert(peer, None);
                self.input(Input::Hello {
                    peer,
                    pid,
                    role: Role::Generation,
                    timeouts: Timeouts {
                        ready: SEC * u32::try_from(ready).unwrap(),
                        drain: SEC * u32::try_from(drain).unwrap(),
                        probation: SEC * u32::try_from(probation).unwrap(),
                    },
                    preconnected: None,
                });
            }
            Op::Ready(i) => {
                if let Some(peer) = Self::pick(self.open_peers.keys().copied(), i) {
                    let before = self.w.m.active();
                    self.input(Input::Ready { peer });
                    if self.w.m.active() != before {
                        self.respawns_without_ready = 0;
                    }
                }
            }
            Op::PeerGone(i) => {
                if let Some(peer) = Self::pick(self.open_peers.keys().copied(), i) {
                    self.open_peers.remove(&peer);
                    self.input(Input::PeerGone {
                        peer,
                        why: "gone".to_owned(),
                    });
                }
            }
            Op::Crash(i) => {
                if let Some(n) = Self::pick(self.live.keys().copied(), i) {
                    self.reap(n, "exit status: 101");
                }
            }
            Op::Reap(i) => {
                if let Some(n) = Self::pick(self.killed.iter().copied(), i) {
                    self.reap(n, "signal: 9 (SIGKILL)");
                }
            }
            Op::Terminate => self.input(Input::Terminate { signal: "SIGTERM" }),
            Op::Advance(ms) => self.w.advance(Duration::from_millis(ms)),
            Op::Tick => {
                if let Some(deadline) = self.w.m.next_deadline() {
                    if deadline > self.w.now {
                        self.w.now = deadline;
                    }
                    self.input(Input::Tick);
                }
            }
            Op::FailNextSpawn => self.fail_next_spawn = true,
            Op::CleanExit(i) => {
                if let Some(n) = Self::pick(self.live.keys().copied(), i) {
                    self.reap(n, "exit status: 0");
                }
            }
            Op::StopRequested(i) => {
                if let Some(peer) = Self::pick(self.open_peers.keys().copied(), i) {
                    self.input(Input::StopRequested { peer });
                }
            }
            Op::SteppedAside(i) => {
                if let Some(peer) = Self::pick(self.open_peers.keys().copied(), i) {
                    let tells = self.tells.get(&peer).copied().unwrap_or(0);
                    let answers = self.answers.entry(peer).or_default();
                    *answers = (*answers + 1).min(tells);
                    self.input(Input::SteppedAside { peer });
                }
            }
        }
    }

    fn reap(&mut self, n: Gen, status: &str) {
        if let Some((_, peer)) = self.live.remove(&n) {
            self.killed.remove(&n);
            // The process's channel ends with it.
            if self.open_peers.remove(&peer).is_some() {
                self.input(Input::PeerGone {
                    peer,
                    why: "end of stream".to_owned(),
                });
            }
            if self.exited.is_none() {
                self.input(Input::Exited {
                    generation: n,
                    status: status.to_owned(),
                    success: status.ends_with(": 0"),
                });
            }
        }
    }

    /// After any history, a stop ends in Exit once the processes go when told or killed.
    fn stops(&mut self) {
        self.step(Op::Terminate);
        for _ in 0..100 {
            if self.exited.is_some() {
                return;
            }
            // Processes told to stop (or killed) exit; time passes to every deadline.
            let killed: Vec<Gen> = self.killed.iter().copied().collect();
            for n in killed {
                self.reap(n, "signal: 9 (SIGKILL)");
            }
            self.step(Op::Tick);
            if self.exited.is_none() && self.w.m.next_deadline().is_none() && self.killed.is_empty()
            {
                let live: Vec<Gen> = self.live.keys().copied().collect();
                for n in live {
                    self.reap(n, "exit status: 0");
                }
            }
        }
        panic!(
            "the front never exited after a stop: {:?}",
            self.w.m.phases()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4096,
        max_shrink_iters: 10_000,
        ..ProptestConfig::default()
    })]

    /// Any order of events keeps the invariants, and a stop always ends in an exit that
    /// leaves no spawned process behind.
    #[test]
    fn any_event_order_keeps_the_invariants(
        ops in proptest::collection::vec(op(), 0..60),
        stop_delay_ms in prop_oneof![Just(0u64), 0u64..5_000],
    ) {
        let mut model = Model::new(Duration::from_millis(stop_delay_ms));
        for op in ops {
            model.step(op);
        }
        model.stops();
    }
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
        matches!(&w.notified[..], [Supervisor::Status { status }] if status.contains("generation 1") && status.contains("reinstated")),
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
    let one = w.peer_of(1);
    assert_eq!(w.m.next_deadline(), Some(w.now + 10 * SEC));
    let out = w.tick_after(10 * SEC);
    assert_eq!(
        out,
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
