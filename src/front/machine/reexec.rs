//! The front re-executing itself into another build, keeping its pid, its sockets and its
//! serving generation: the decision of when (only at a quiet point), what the new image must
//! know (a [`Snapshot`]), and how the new image's machine resumes from it.
//!
//! A quiet point is a service with one generation, serving and in touch, and nothing under
//! way: no upgrade, probation, drain, respawn or stop. Then the whole of the machine's state
//! is that one generation and a few counters, which cross `exec` as text, and no deadline is
//! running that the new image would have to take over. Anything else is answered `Busy`: the
//! client asks again once the upgrade in flight settled.

use std::time::Duration;

use tokio::time::Instant;

use super::{Action, Gen, Generation, Life, Machine, Message, Peer, PeerId, Phase, Role, Timeouts};

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
    /// The control client that asked, answered by the new image.
    pub(crate) client: PeerId,
}

impl Machine {
    /// Whether the front can re-execute at `now`, and what its new image would resume from if
    /// `client` asked; otherwise why not, in words for the client.
    pub(crate) fn quiet(&self, now: Instant, client: PeerId) -> Result<Snapshot, String> {
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
            client,
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
        match self.quiet(now, peer) {
            Ok(snapshot) => {
                tracing::info!(
                    pid = client.pid,
                    "the front re-executes, as pid {} asked; generation {} serves on",
                    client.pid,
                    snapshot.generation
                );
                self.out.push(Action::ReExec(snapshot));
            }
            Err(reason) => {
                tracing::warn!(pid = client.pid, "front re-exec refused: {reason}");
                self.answer(peer, Message::Busy { reason });
            }
        }
    }

    /// The re-exec did not happen (the old image goes on): the client hears why.
    pub(super) fn on_reexec_failed(&mut self, peer: PeerId, why: String, busy: bool) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        let message = if busy {
            Message::Busy { reason: why }
        } else {
            Message::Error { reason: why }
        };
        self.answer(peer, message);
    }

    /// The machine of a front's new image, from what its old image left at a quiet point, at
    /// time `now`; and its first actions: the answer to the client that asked. (Unix only, and
    /// the tests: a Windows front never re-executes.)
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
        machine.out.push(Action::Send {
            peer: snapshot.client,
            message: Message::Upgraded {
                generation: snapshot.generation,
            },
        });
        machine.out.push(Action::Close(snapshot.client));
        machine.debug_check();
        let actions = std::mem::take(&mut machine.out);
        (machine, actions)
    }
}
