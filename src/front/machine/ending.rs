//! Generations ending: a process reaped, a control connection ended. A process's death shows
//! as both, in either order (the shell's `select!` delivers whichever it sees first), and the
//! outcome must not depend on which came first.

use tokio::time::Instant;

use super::timers::{Timer, drain_deadline};
use super::{EXIT_GRACE, Gen, Generation, Machine, PeerId, Phase, pid_note, report};
use crate::config::deadline_after;

impl Machine {
    pub(super) fn on_peer_gone(&mut self, now: Instant, peer: PeerId, why: &str) {
        self.peers.remove(&peer);
        if let Some(upgrade) = self.upgrade_mut() {
            upgrade.clients.retain(|p| *p != peer);
        }
        self.reexec_client_gone(peer);
        let why = format!("its control connection ended: {why}");
        // A spawned child's inherited channel, before its Hello: most likely it is exiting.
        if let Some((n, g)) = self
            .generations
            .iter_mut()
            .find(|(_, g)| g.channel == Some(peer))
        {
            let n = *n;
            g.channel = None;
            if g.phase == Phase::Starting {
                self.exit_grace(now, n, why);
            }
            return;
        }
        let Some(n) = self.by_peer(peer) else {
            return;
        };
        let Some(g) = self.generations.get_mut(&n) else {
            return;
        };
        g.peer = None;
        let g = g.clone();
        match g.phase {
            Phase::Starting if g.spawned => self.exit_grace(now, n, why),
            Phase::Starting => self.fail_starting(now, n, &why),
            Phase::Active if self.can_reinstate() => {
                self.reinstate(now, n, &g, "died", &why);
                self.kill(n);
            }
            Phase::Active if g.spawned => {
                self.set_lost(n, why);
                self.set_phase(n, Phase::Lost, Some(deadline_after(now, EXIT_GRACE)));
            }
            Phase::Active => {
                self.forget(n);
                report!(
                    error,
                    "active generation {n}{} lost: {why}",
                    pid_note(g.pid)
                );
                self.crashed(now, &g);
            }
            Phase::Draining { .. } | Phase::Probation { .. } if !g.spawned => {
                self.forget(n);
            }
            Phase::Probation { .. } => {
                // Out of touch, it cannot be reinstated: it drains by itself (it lost the
                // front) and is held to its drain deadline.
                self.set_lost(n, why);
                let deadline = drain_deadline(now, g.timeouts);
                self.set_phase(n, Phase::Draining { since: now }, Some(deadline));
            }
            Phase::Draining { .. } | Phase::Lost | Phase::Killed => {}
        }
    }

    fn set_lost(&mut self, n: Gen, why: String) {
        if let Some(g) = self.generations.get_mut(&n) {
            g.lost = Some(why);
        }
    }

    /// A spawned generation's channel ended before it was ready: wait briefly for its exit
    /// status, which says why.
    fn exit_grace(&mut self, now: Instant, n: Gen, why: String) {
        let grace = deadline_after(now, EXIT_GRACE);
        let deadline = self
            .timers
            .get(Timer::Phase(n))
            .map_or(grace, |d| d.min(grace));
        self.set_lost(n, why);
        self.set_phase(n, Phase::Starting, Some(deadline));
    }

    pub(super) fn on_exited(&mut self, now: Instant, n: Gen, status: &str, success: bool) {
        let Some(g) = self.forget(n) else {
            return;
        };
        let pid = pid_note(g.pid);
        match g.phase {
            Phase::Active | Phase::Lost => {
                self.active_ended(now, n, &g, status, success);
            }
            Phase::Starting if self.defer_to_reexec(n, g.newer) => {
                tracing::info!(
                    generation = n,
                    "generation {n}{pid} (a build of the next protocol) exited with {status}; the front re-executes into its build"
                );
            }
            Phase::Starting if self.ends_the_service(success) => {
                report!(
                    info,
                    "generation {n}{pid} exited with status 0 before it served: nothing to serve, the service ends"
                );
                self.upgrade_failed(
                    n,
                    "exited with status 0 before it was ready",
                    format!("generation {n} exited with status 0 before it was ready"),
                );
                self.stop(
                    now,
                    &format!("stops: generation {n} ended by itself"),
                    false,
                );
            }
            Phase::Starting => {
                let why = format!("it exited with {status}");
                self.log_failed_start(n, g.pid, &why);
                self.upgrade_failed(
                    n,
                    &format!("failed before it was ready ({why})"),
                    format!("generation {n} failed before it was ready: {why}"),
                );
                if self.running() {
                    self.failed(now, &why, false);
                }
            }
            Phase::Draining { .. } if g.lost.is_some() => tracing::warn!(
                generation = n,
                "generation {n}{pid} exited with {status} after losing its control connection"
            ),
            Phase::Draining { since } => tracing::info!(
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

    /// The active generation `n` exited (it was removed already). Whether its channel ended
    /// first (`Lost`) or not changes nothing.
    fn active_ended(&mut self, now: Instant, n: Gen, g: &Generation, status: &str, success: bool) {
        let pid = pid_note(g.pid);
        let served = g.served_ms(now);
        if self.can_reinstate() {
            self.reinstate(now, n, g, "died", &format!("it exited with {status}"));
        } else if !self.running() {
            tracing::info!(
                generation = n,
                "generation {n}{pid} stopped after serving {served} ms ({status})"
            );
        } else if self.ends_the_service(success) {
            report!(
                info,
                "generation {n}{pid} exited with status 0 by itself after serving {served} ms: the service ends"
            );
            self.stop(
                now,
                &format!("stops: generation {n} ended by itself"),
                false,
            );
        } else if success {
            // Its replacement is on its way (it was asked to stop, most likely twice): that
            // one takes over once ready, as it would have.
            tracing::info!(
                generation = n,
                "generation {n}{pid} exited with status 0 after serving {served} ms; its replacement takes over once ready"
            );
        } else {
            report!(
                error,
                "active generation {n}{pid} exited with {status} after serving {served} ms"
            );
            self.crashed(now, g);
        }
    }

    /// The active generation `g` is gone without being asked.
    pub(super) fn crashed(&mut self, now: Instant, g: &Generation) {
        if !self.running() {
            return;
        }
        self.failed(
            now,
            &format!(
                "the active generation ended after serving {} ms",
                g.served_ms(now)
            ),
            g.healthy(now),
        );
    }

    /// Counts one failure (a failed start, a crash, a failed takeover) and decides what
    /// follows: nothing while a generation serves or starts, else a respawn after a growing
    /// delay, or giving up. `healthy` when the generation that failed had served long enough
    /// to restart the count, which the one serving now also does.
    pub(super) fn failed(&mut self, now: Instant, why: &str, healthy: bool) {
        let serving_healthy = self
            .active()
            .and_then(|a| self.generations.get(&a))
            .is_some_and(|g| g.healthy(now));
        self.backoff.failed(healthy || serving_healthy);
        if !self.running() || self.serving_or_starting() {
            return;
        }
        let (failures, limit) = (self.backoff.failures(), self.backoff.limit());
        if self.backoff.exhausted() {
            report!(
                error,
                "{failures} consecutive failures with no generation serving (last: {why}); the front gives up"
            );
            self.stop(now, "gives up", true);
            return;
        }
        let delay = self.backoff.delay();
        report!(
            warn,
            {
                respawn_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                failures,
                limit
            },
            "no generation is serving; starting another in {} ms (failure {failures} of at most {limit})",
            delay.as_millis()
        );
        self.timers.set(Timer::Respawn, deadline_after(now, delay));
    }
}
