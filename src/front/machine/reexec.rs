//! The front re-executing itself into another build, keeping its pid, its sockets and its
//! serving generation: the decision of when (only at a quiet point), what the new image must
//! know (a [`Snapshot`]), and how the new image's machine resumes from it.
//!
//! A quiet point is a service with one generation, serving and in touch, and nothing under
//! way: no upgrade, probation, drain, respawn or stop. Then the whole of the machine's state
//! is that one generation and a few counters, which cross `exec` as text, and no deadline is
//! running that the new image would have to take over.
//!
//! Two things ask for it. A control client (`ReExec`): at a quiet point it happens, otherwise
//! the client hears `Busy` and asks again. And an upgrade whose new build speaks the next
//! protocol version, which this front cannot read: that build is let go without counting as a
//! failure, the front re-executes into it at the next quiet point (the old generation having
//! stepped back in, that is at once), and the new image starts the upgrade again, answering
//! the clients that asked for it and systemd (whose `RELOADING=1` it owes a `READY=1`).

use std::time::Duration;

use tokio::time::Instant;

use super::timers::Timer;
use super::{
    Action, Gen, Generation, Life, Machine, Message, Peer, PeerId, Phase, Role, Timeouts, pid_note,
};
use crate::notice::report;
use crate::systemd::Supervisor;

/// What the front's new image must know to go on where the old one stopped, besides the
/// sockets (the shell's part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// The serving generation.
    pub(crate) generation: Gen,
    pub(crate) pid: u32,
    /// Its control connection (its descriptor crosses `exec` with it).
    pub(crate) peer: PeerId,
    /// A process of ours (its exit is reported), not one started by hand.
    pub(crate) spawned: bool,
    pub(crate) timeouts: Timeouts,
    /// How long it has served since it first became ready: the health rule's clock.
    pub(crate) served: Duration,
    /// `Probation` and `Superseded` it was told (and answered: equal at a quiet point).
    pub(crate) told_aside: u32,
    /// The respawn policy's count of consecutive failures, and whether the service served.
    pub(crate) failures: u32,
    pub(crate) ever_ready: bool,
    pub(crate) next_generation: Gen,
    /// The control client that asked for the re-exec, answered `Upgraded` by the new image.
    pub(crate) asked: Option<PeerId>,
    /// Control clients waiting for the outcome of the upgrade the new image starts again.
    pub(crate) clients: Vec<PeerId>,
    /// That upgrade owes systemd a `READY=1` (it heard `RELOADING=1`).
    pub(crate) reloading: bool,
    /// The new image starts the upgrade again: the re-exec was for a build of the next
    /// protocol.
    pub(crate) upgrade_after: bool,
    /// How the last upgrade systemd heard of ended (its status line's words).
    pub(crate) last_upgrade: Option<String>,
}

/// Who waits on a re-exec: until it is done (then the new image answers them), or it failed.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    asked: Option<PeerId>,
    clients: Vec<PeerId>,
    reloading: bool,
    /// The re-exec is for a build of the next protocol: an upgrade follows.
    upgrade_after: bool,
}

impl Machine {
    /// Whether the front can re-execute at `now`, and what its new image would resume from;
    /// otherwise why not, in words for a client.
    pub(crate) fn quiet(&self, now: Instant) -> Result<Snapshot, String> {
        if !self.running() {
            return Err("the service is stopping".to_owned());
        }
        if self.upgrade().is_some() {
            return Err("an upgrade is in progress; try again once it is done".to_owned());
        }
        let mut generations = self.generations.iter();
        let (Some((&n, g)), None) = (generations.next(), generations.next()) else {
            return Err(format!(
                "{} generations are running (one serving, the others starting or draining); try again once only one is",
                self.generations.len()
            ));
        };
        let Some(peer) = g.peer.filter(|_| g.phase == Phase::Active) else {
            return Err(format!(
                "generation {n} is not serving in touch with the front; try again once it is"
            ));
        };
        let pid = g
            .pid
            .ok_or_else(|| format!("generation {n}'s pid is unknown"))?;
        if g.ping.is_some() || g.stepped_aside != g.told_aside || self.timers.next().is_some() {
            return Err("a check of the serving generation is under way; try again".to_owned());
        }
        Ok(Snapshot {
            generation: n,
            pid,
            peer,
            spawned: g.spawned,
            timeouts: g.timeouts,
            served: g
                .ready_at
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
            told_aside: g.told_aside,
            failures: self.backoff.failures(),
            ever_ready: self.backoff.ever_ready(),
            next_generation: self.next_generation,
            asked: None,
            clients: Vec::new(),
            reloading: false,
            upgrade_after: false,
            last_upgrade: self.last_upgrade.clone(),
        })
    }

    /// A control client asks the front to re-execute: [`Action::ReExec`] at a quiet point,
    /// else `Busy` with why.
    pub(super) fn on_reexec_requested(&mut self, now: Instant, peer: PeerId) {
        let Some(client) = self.peers.get(&peer).copied() else {
            return;
        };
        if client.role != Role::Control {
            return;
        }
        let quiet = match self.pending_reexec {
            Some(_) => Err("the front is about to re-execute into a newer build".to_owned()),
            None => self.quiet(now),
        };
        match quiet {
            Ok(mut snapshot) => {
                tracing::info!(
                    pid = client.pid,
                    "the front re-executes, as pid {} asked; generation {} serves on",
                    client.pid,
                    snapshot.generation
                );
                snapshot.asked = Some(peer);
                self.reexec_in_flight = Some(Waiting {
                    asked: Some(peer),
                    ..Waiting::default()
                });
                self.out.push(Action::ReExec(snapshot));
            }
            Err(reason) => {
                tracing::warn!(pid = client.pid, "front re-exec refused: {reason}");
                self.answer(peer, Message::Busy { reason });
            }
        }
    }

    /// The spawned generation on `channel` speaks the next protocol version: its Hello could
    /// not be read. It will exit (it cannot join this front); the front re-executes into it.
    pub(super) fn on_newer_build(&mut self, channel: PeerId) {
        let Some((n, g)) = self
            .generations
            .iter_mut()
            .find(|(_, g)| g.channel == Some(channel) || g.peer == Some(channel))
        else {
            return;
        };
        if g.phase == Phase::Starting && g.spawned {
            g.newer = true;
            tracing::info!(
                generation = *n,
                "generation {n} speaks the next control protocol version: the front re-executes into its build once it is quiet, then starts it again"
            );
        }
    }

    /// A newer build that was starting ended: instead of failing its upgrade (and counting a
    /// failure), the upgrade waits for the re-exec. Only while another generation serves,
    /// which the re-exec keeps; otherwise it fails as any start does (`false`).
    pub(super) fn defer_to_reexec(&mut self, n: Gen, newer: bool) -> bool {
        if !newer || !self.running() || self.active().is_none() {
            return false;
        }
        let Life::Running { upgrade } = &mut self.life else {
            return false;
        };
        let Some(upgrade) = upgrade.take_if(|u| u.generation == n) else {
            return false;
        };
        self.timers.clear(Timer::Handover);
        let waiting = self.pending_reexec.get_or_insert_with(Waiting::default);
        waiting.clients.extend(upgrade.clients);
        waiting.reloading |= upgrade.reloading;
        waiting.upgrade_after = true;
        true
    }

    /// A control client waiting on a re-exec left: nobody is to answer it.
    pub(super) fn reexec_client_gone(&mut self, peer: PeerId) {
        for waiting in [&mut self.pending_reexec, &mut self.reexec_in_flight]
            .into_iter()
            .flatten()
        {
            waiting.clients.retain(|p| *p != peer);
            waiting.asked = waiting.asked.filter(|p| *p != peer);
        }
    }

    /// Gives up the re-exec a newer build waits on: the upgrade failed, and its clients and
    /// systemd hear `why`. Nothing serves to carry across any more, and a respawn must not wait.
    pub(super) fn abandon_reexec(&mut self, why: &str) {
        let Some(waiting) = self.pending_reexec.take() else {
            return;
        };
        report!(
            warn,
            "the front no longer re-executes into the newer build: {why}"
        );
        self.fail_waiting(waiting, why);
    }

    /// The upgrade a re-exec was for failed: systemd (if it heard `RELOADING=1`) and the
    /// clients still waiting hear `why`.
    fn fail_waiting(&mut self, waiting: Waiting, why: &str) {
        if waiting.reloading {
            let outcome = format!("last upgrade failed: {why}");
            self.out.push(Action::Notify(Supervisor::Ready {
                status: outcome.clone(),
            }));
            self.last_upgrade = Some(outcome);
        }
        for client in waiting.clients {
            if self.peers.contains_key(&client) {
                self.answer(
                    client,
                    Message::Error {
                        reason: format!("the upgrade failed: {why}"),
                    },
                );
            }
        }
    }

    /// Asks for the re-exec a newer build is waiting on, once the service is quiet; answers its
    /// clients if the service stops first, or gives it up if nothing serves.
    pub(super) fn reexec_when_quiet(&mut self, now: Instant) {
        if self.pending_reexec.is_none() || self.reexec_in_flight.is_some() {
            return;
        }
        if self.running() && self.active().is_none() {
            self.abandon_reexec("the serving generation ended first");
            return;
        }
        if !self.running() {
            if let Some(waiting) = self.pending_reexec.take() {
                for client in waiting.clients {
                    self.answer(
                        client,
                        Message::Busy {
                            reason: "the service is stopping".to_owned(),
                        },
                    );
                }
            }
            return;
        }
        let Ok(mut snapshot) = self.quiet(now) else {
            return;
        };
        let Some(waiting) = self.pending_reexec.take() else {
            return;
        };
        snapshot.clients.clone_from(&waiting.clients);
        snapshot.reloading = waiting.reloading;
        snapshot.upgrade_after = waiting.upgrade_after;
        self.reexec_in_flight = Some(waiting);
        self.out.push(Action::ReExec(snapshot));
    }

    /// The re-exec [`Action::ReExec`] asked for did not happen; the old image goes on. `busy`:
    /// something happened meanwhile, and a re-exec for a newer build is tried again at the
    /// next quiet point (a client that asked hears `Busy`); else everyone waiting hears why.
    pub(super) fn on_reexec_failed(&mut self, why: String, busy: bool) {
        let Some(waiting) = self.reexec_in_flight.take() else {
            return;
        };
        if let Some(asked) = waiting.asked.filter(|p| self.peers.contains_key(p)) {
            let message = if busy {
                Message::Busy {
                    reason: why.clone(),
                }
            } else {
                Message::Error {
                    reason: why.clone(),
                }
            };
            self.answer(asked, message);
        }
        if !waiting.upgrade_after {
            return;
        }
        if busy {
            self.pending_reexec = Some(Waiting {
                asked: None,
                ..waiting
            });
            return;
        }
        report!(
            error,
            "the front could not re-execute into the newer build ({why}); the upgrade failed and the serving generation serves on"
        );
        self.fail_waiting(
            waiting,
            &format!("the front could not re-execute into the new build ({why})"),
        );
    }

    /// The machine of a front's new image, from what its old image left at a quiet point, at
    /// time `now`; and its first actions: the answer to the client that asked, or the upgrade
    /// started again. (Unix only, and the tests: a Windows front never re-executes.)
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn resume(
        defaults: Timeouts,
        stop_delay: Duration,
        now: Instant,
        snapshot: &Snapshot,
    ) -> (Machine, Vec<Action>) {
        let mut machine = Machine::new(defaults, stop_delay);
        machine.life = Life::Running { upgrade: None };
        machine.next_generation = snapshot.next_generation.max(snapshot.generation + 1);
        machine
            .backoff
            .resume(snapshot.failures, snapshot.ever_ready);
        let mut g = Generation::new(now, snapshot.timeouts, snapshot.spawned);
        g.phase = Phase::Active;
        g.pid = Some(snapshot.pid);
        g.peer = Some(snapshot.peer);
        g.ready_at = Some(now.checked_sub(snapshot.served).unwrap_or(now));
        g.told_aside = snapshot.told_aside;
        g.stepped_aside = snapshot.told_aside;
        g.reason = "resumed".to_owned();
        machine.generations.insert(snapshot.generation, g);
        machine.peers.insert(
            snapshot.peer,
            Peer {
                role: Role::Generation,
                pid: snapshot.pid,
            },
        );
        for client in snapshot.clients.iter().chain(&snapshot.asked) {
            machine.peers.insert(
                *client,
                Peer {
                    role: Role::Control,
                    pid: 0,
                },
            );
        }
        // systemd's status line named the build the old image ran; the shell names the new one.
        machine.last_upgrade.clone_from(&snapshot.last_upgrade);
        let outcome = snapshot
            .last_upgrade
            .as_ref()
            .map(|o| format!("; {o}"))
            .unwrap_or_default();
        machine.out.push(Action::Notify(Supervisor::Status {
            status: format!(
                "generation {}{} serving; the front re-executed{outcome}",
                snapshot.generation,
                pid_note(Some(snapshot.pid))
            ),
        }));
        if let Some(asked) = snapshot.asked {
            machine.answer(
                asked,
                Message::Upgraded {
                    generation: snapshot.generation,
                },
            );
        }
        if snapshot.upgrade_after {
            match machine.spawn(now, "started again by the front re-executed into its build") {
                Ok(_) => {
                    if let Some(upgrade) = machine.upgrade_mut() {
                        upgrade.clients.clone_from(&snapshot.clients);
                        upgrade.reloading = snapshot.reloading;
                    }
                }
                Err(reason) => {
                    for client in &snapshot.clients {
                        machine.answer(
                            *client,
                            Message::Error {
                                reason: reason.clone(),
                            },
                        );
                    }
                }
            }
        }
        machine.debug_check();
        let actions = std::mem::take(&mut machine.out);
        (machine, actions)
    }
}
