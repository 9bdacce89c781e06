//! Starting a generation and its takeover: spawns, upgrade requests, Hello, Ready, and a
//! start that fails (a rollback while another generation serves).

use tokio::time::Instant;

use super::timers::{Timer, drain_deadline};
use super::{
    Action, Gen, Generation, Machine, Message, Peer, PeerId, Phase, Role, STEP_ASIDE_TIMEOUT,
    Takeover, Timeouts, Upgrade, pid_note, report,
};
use crate::config::deadline_after;

impl Machine {
    /// Starts a new generation, unless the service is stopping or one is starting already.
    pub(super) fn spawn(&mut self, now: Instant, reason: &str) -> Result<Gen, String> {
        if !self.running() {
            return Err("the service is shutting down".to_owned());
        }
        if self.active().is_none() {
            self.abandon_reexec("the serving generation ended first");
        }
        if self.pending_reexec.is_some() || self.reexec_in_flight.is_some() {
            return Err(
                "the front is about to re-execute into a newer build, whose upgrade follows; try again once it is done"
                    .to_owned(),
            );
        }
        if let Some(n) = self.starting() {
            let pid = self.generations.get(&n).and_then(|g| g.pid);
            return Err(format!(
                "an upgrade is already in progress: generation {n}{} is starting; try again once it is ready or has failed",
                pid_note(pid)
            ));
        }
        self.timers.clear(Timer::Respawn);
        let n = self.next_generation;
        self.next_generation += 1;
        let mut g = Generation::new(now, self.defaults, true);
        g.reason = reason.to_owned();
        self.generations.insert(n, g);
        self.set_phase(
            n,
            Phase::Starting,
            Some(deadline_after(now, self.defaults.ready)),
        );
        self.begin_upgrade(n);
        self.out.push(Action::Spawn(n));
        Ok(n)
    }

    pub(super) fn on_upgrade(&mut self, now: Instant, peer: PeerId) {
        let Some(client) = self.peers.get(&peer).copied() else {
            return;
        };
        // One request per client; the peer task never relays a second one.
        if client.role != Role::Control || self.upgrade().is_some_and(|u| u.clients.contains(&peer))
        {
            return;
        }
        match self.spawn(now, &format!("upgrade requested by pid {}", client.pid)) {
            Ok(n) => {
                if let Some(upgrade) = self.upgrade_mut() {
                    upgrade.clients.push(peer);
                }
                self.reloading(n, "requested");
            }
            Err(reason) => {
                tracing::warn!(pid = client.pid, "upgrade refused: {reason}");
                // Not a failure of any build: the client may ask again later.
                self.answer(peer, Message::Busy { reason });
            }
        }
    }

    pub(super) fn on_spawned(&mut self, n: Gen, pid: u32, channel: PeerId) {
        let Some(g) = self.generations.get_mut(&n) else {
            // Forgotten already: nothing will talk on its channel.
            self.out.push(Action::Close(channel));
            return;
        };
        g.pid = Some(pid);
        if g.phase == Phase::Killed {
            // Killed before the shell could name its process: kill it by name now.
            self.out.push(Action::Kill(n));
            self.out.push(Action::Close(channel));
            return;
        }
        g.channel = Some(channel);
        tracing::info!(
            generation = n,
            pid,
            "generation {n} (pid {pid}) starting ({})",
            g.reason
        );
    }

    pub(super) fn on_spawn_failed(&mut self, now: Instant, n: Gen, why: &str) {
        let Some(g) = self.forget(n) else {
            return;
        };
        if g.phase == Phase::Killed {
            return;
        }
        report!(error, "cannot start generation {n}: {why}");
        self.upgrade_failed(
            n,
            &format!("could not be started: {why}"),
            format!("generation {n} could not be started: {why}"),
        );
        self.failed(now, why, false);
    }

    pub(super) fn on_hello(
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
        if !self.running() {
            let reason = "the service is shutting down".to_owned();
            // To a control client this is "not now", as its documentation promises, not a
            // failed upgrade that a deploy script would roll back.
            let message = match role {
                Role::Control => Message::Busy { reason },
                Role::Generation => Message::Error { reason },
            };
            self.answer(peer, message);
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
        let starting = self
            .starting()
            .and_then(|n| self.generations.get(&n).map(|g| (n, g)));
        let number = match (preconnected, starting) {
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
            (None, None) if self.pending_reexec.is_some() || self.reexec_in_flight.is_some() => {
                self.refuse(
                    peer,
                    "the front is about to re-execute into a newer build, whose upgrade follows; start this build again once it is done".to_owned(),
                );
                return;
            }
            // A new build started by hand: the seed's upgrade workflow.
            (None, None) => {
                let n = self.next_generation;
                self.next_generation += 1;
                let mut g = Generation::new(now, timeouts, false);
                g.pid = Some(pid);
                self.generations.insert(n, g);
                self.set_phase(n, Phase::Starting, Some(now));
                tracing::info!(
                    generation = n,
                    pid,
                    "generation {n} (pid {pid}) starting (started by hand)"
                );
                self.begin_upgrade(n);
                self.reloading(n, "started by hand");
                n
            }
        };
        let Some(g) = self.generations.get_mut(&number) else {
            return;
        };
        // From now on the new build's own deadlines count, not the front's.
        g.timeouts = timeouts;
        g.peer = Some(peer);
        // A child that came through the endpoint leaves its inherited channel unused.
        let unused = g.channel.take().filter(|channel| *channel != peer);
        let deadline = deadline_after(g.started, timeouts.ready);
        self.set_phase(number, Phase::Starting, Some(deadline));
        self.peers.insert(peer, Peer { role, pid });
        if let Some(unused) = unused {
            self.close_peer(unused);
        }
        self.out.push(Action::SendListeners {
            peer,
            generation: number,
        });
    }

    pub(super) fn on_ready(&mut self, now: Instant, peer: PeerId) {
        let Some(n) = self.by_peer(peer) else {
            return;
        };
        let Some(g) = self.generations.get(&n) else {
            return;
        };
        if g.phase != Phase::Starting {
            return;
        }
        let took = now.saturating_duration_since(g.started);
        // One generation to fall back on at most: the one that served last.
        if let Some(previous) = self.on_probation() {
            self.release(now, previous);
        }
        let mut superseded = Vec::new();
        let mut probation = false;
        let olds: Vec<Gen> = self
            .generations
            .iter()
            .filter(|(_, g)| matches!(g.phase, Phase::Active | Phase::Lost))
            .map(|(n, _)| *n)
            .collect();
        // Older generations still draining have connections left to move too: from now on
        // they go to the newest generation. Introduced before the generation they went to
        // steps aside and starts refusing them, so that a refused connection already has
        // somewhere else to go and no response in between tells its client to leave.
        for (old, g) in &self.generations {
            if let Some(p) = g.peer
                && *old != n
                && !olds.contains(old)
                && matches!(g.phase, Phase::Probation { .. } | Phase::Draining { .. })
            {
                self.out.push(Action::Introduce { from: p, to: peer });
            }
        }
        for old in olds {
            let Some(g) = self.generations.get_mut(&old) else {
                continue;
            };
            // A generation asked to stop wants to go, not to be kept as a fallback; one whose
            // channel ended cannot be told anything and drains by itself.
            let (phase, deadline, message) =
                if g.phase == Phase::Lost || g.timeouts.probation.is_zero() || g.stop_requested {
                    (
                        Phase::Draining { since: now },
                        drain_deadline(now, g.timeouts),
                        Message::Superseded,
                    )
                } else {
                    probation = true;
                    let ends = deadline_after(now, g.timeouts.probation);
                    (
                        Phase::Probation { since: now, ends },
                        ends,
                        Message::Probation,
                    )
                };
            if let Some(p) = g.peer {
                g.told_aside = g.told_aside.saturating_add(1);
                // Introduced first: by the time it steps aside it knows where its connections
                // go, so no response in between tells a client to leave.
                self.out.push(Action::Introduce { from: p, to: peer });
                self.out.push(Action::Send { peer: p, message });
            }
            self.set_phase(old, phase, Some(deadline));
            superseded.push(old);
        }
        self.set_phase(n, Phase::Active, None);
        if let Some(g) = self.generations.get_mut(&n) {
            g.ready_at.get_or_insert(now);
        }
        if probation {
            self.watch(now, n);
        }
        self.backoff.served();
        self.timers.clear(Timer::Respawn);
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
        if self.upgrade().is_none_or(|u| u.generation != n) {
            // Every start begins an upgrade; this only keeps the report going if not.
            self.begin_upgrade(n);
        }
        if let Some(upgrade) = self.upgrade_mut() {
            upgrade.takeover = Some(Takeover { superseded, took });
        }
        self.timers
            .set(Timer::Handover, deadline_after(now, STEP_ASIDE_TIMEOUT));
    }

    pub(super) fn on_stepped_aside(&mut self, peer: PeerId) {
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

    /// A starting generation failed (deadline, lost connection, stop): kill it, roll back.
    pub(super) fn fail_starting(&mut self, now: Instant, n: Gen, why: &str) {
        let pid = self.generations.get(&n).and_then(|g| g.pid);
        let newer = self.generations.get(&n).is_some_and(|g| g.newer);
        self.kill(n);
        if self.defer_to_reexec(n, newer) {
            return;
        }
        self.log_failed_start(n, pid, why);
        self.upgrade_failed(
            n,
            &format!("failed before it was ready ({why})"),
            format!("generation {n} failed before it was ready: {why}"),
        );
        if self.running() {
            self.failed(now, why, false);
        }
    }

    pub(super) fn log_failed_start(&self, n: Gen, pid: Option<u32>, why: &str) {
        let pid = pid_note(pid);
        let active = self.active().filter(|_| self.running());
        match active {
            Some(active)
                if self
                    .generations
                    .get(&active)
                    .is_some_and(|g| g.stop_requested) =>
            {
                report!(
                    warn,
                    "rollback: generation {n}{pid} failed before it was ready ({why}); generation {active} was asked to stop but keeps serving until a replacement is ready (signal it again to stop it anyway)"
                )
            }
            Some(active) => report!(
                warn,
                "rollback: generation {n}{pid} failed before it was ready ({why}); generation {active} keeps serving"
            ),
            None => report!(
                warn,
                "generation {n}{pid} failed before it was ready ({why})"
            ),
        }
    }

    /// Turns a peer away, saying why.
    pub(super) fn refuse(&mut self, peer: PeerId, reason: String) {
        self.answer(peer, Message::Error { reason });
    }
}

/// The upgrade a generation's start begins.
pub(super) fn new_upgrade(generation: Gen) -> Upgrade {
    Upgrade {
        generation,
        reloading: false,
        clients: Vec::new(),
        takeover: None,
    }
}
