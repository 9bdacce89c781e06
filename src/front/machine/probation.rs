//! Probation: a superseded generation kept, not accepting, for a window after a takeover, and
//! brought back if the generation that took over dies, or hangs.
//!
//! A build that hangs after taking over (stopped, a deadlocked runtime) keeps the traffic and
//! answers nothing, which is worse than dying: so during its predecessor's probation the
//! front pings it every [`PING_INTERVAL`], and one that leaves a ping unanswered for
//! [`PING_TIMEOUT`] is treated as dead: the predecessor is reinstated, then the hung one is
//! killed. The predecessor is released only once the window is over and the successor has
//! answered a ping sent from then on, so a hang just before the window's end is caught too.

use std::time::Duration;

use tokio::time::Instant;

use super::timers::{Timer, drain_deadline};
use super::{Action, Gen, Generation, Machine, Message, PeerId, Phase, pid_note, report};
use crate::config::deadline_after;
use crate::systemd::Supervisor;

/// How often the generation that took over from one on probation is asked whether it is
/// alive. It answers from its control task, which runs whenever its runtime does: a few
/// bytes each way, during the probation window only.
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(1);
/// How long a ping may go unanswered before the generation counts as hung. A generation's
/// control task answers within milliseconds even under load (see the CHANGELOG for the
/// measurement); this leaves a margin of orders of magnitude for a loaded machine.
pub(crate) const PING_TIMEOUT: Duration = Duration::from_secs(3);

impl Machine {
    /// The generation whose liveness is watched: the active one, while its predecessor is on
    /// probation and the service runs.
    pub(super) fn watched(&self) -> Option<Gen> {
        if !self.running() {
            return None;
        }
        self.on_probation().and(self.active())
    }

    /// Starts watching `n`, which just took over from a generation now on probation.
    pub(super) fn watch(&mut self, now: Instant, n: Gen) {
        if let Some(g) = self.generations.get_mut(&n) {
            g.ping = None;
        }
        self.timers
            .set(Timer::Liveness(n), deadline_after(now, PING_INTERVAL));
    }

    /// Stops watching whoever is no longer watched (the probation ended one way or another).
    pub(super) fn keep_watch(&mut self) {
        let watched = self.watched();
        for (n, g) in &mut self.generations {
            if Some(*n) != watched {
                g.ping = None;
                self.timers.clear(Timer::Liveness(*n));
            }
        }
    }

    /// [`Timer::Liveness`]: time to ping `n`, or its ping is overdue.
    pub(super) fn liveness_due(&mut self, now: Instant, n: Gen) {
        if self.watched() != Some(n) {
            return;
        }
        let Some(g) = self.generations.get_mut(&n) else {
            return;
        };
        if g.ping.is_some() {
            self.hung(now, n);
            return;
        }
        self.ping(now, n);
    }

    fn ping(&mut self, now: Instant, n: Gen) {
        let Some(g) = self.generations.get_mut(&n) else {
            return;
        };
        let Some(peer) = g.peer else {
            return;
        };
        g.ping = Some(now);
        self.out.push(Action::Send {
            peer,
            message: Message::Ping,
        });
        self.timers
            .set(Timer::Liveness(n), deadline_after(now, PING_TIMEOUT));
    }

    pub(super) fn on_pong(&mut self, now: Instant, peer: PeerId) {
        let Some(n) = self.by_peer(peer) else {
            return;
        };
        if self.watched() != Some(n) {
            return;
        }
        let Some(g) = self.generations.get_mut(&n) else {
            return;
        };
        let Some(sent) = g.ping.take() else {
            // Nothing asked: an answer is not banked for a later ping.
            return;
        };
        tracing::debug!(
            generation = n,
            pong_us =
                u64::try_from(now.saturating_duration_since(sent).as_micros()).unwrap_or(u64::MAX),
            "generation {n} answered a ping"
        );
        let over = self
            .on_probation()
            .and_then(|old| match self.generations.get(&old)?.phase {
                Phase::Probation { ends, .. } if ends <= now => Some((old, ends)),
                _ => None,
            });
        match over {
            // Alive after the window: the predecessor is not needed any more.
            Some((old, ends)) if sent >= ends => self.end_probation(now, old),
            // Alive, but as of before the window's end: once more.
            Some((old, _)) => self.window_over(now, old),
            None => self
                .timers
                .set(Timer::Liveness(n), deadline_after(now, PING_INTERVAL)),
        }
    }

    /// The probation window of `old` is over: it is released once its successor proves alive
    /// from then on, by answering a ping sent after the window's end (the one it owes, if
    /// sent before, does not count). Until then it is held, for [`PING_TIMEOUT`] at most.
    pub(super) fn window_over(&mut self, now: Instant, old: Gen) {
        let Some(successor) = self.watched() else {
            self.end_probation(now, old);
            return;
        };
        if self
            .generations
            .get(&successor)
            .is_some_and(|g| g.ping.is_none())
        {
            self.ping(now, successor);
        }
        let Some(answer_by) = self.timers.get(Timer::Liveness(successor)) else {
            self.end_probation(now, old);
            return;
        };
        if answer_by <= now {
            // Overdue already: its own timer fires in this same tick.
            self.hung(now, successor);
            return;
        }
        if let Some(g) = self.generations.get(&old)
            && let phase @ Phase::Probation { .. } = g.phase
        {
            self.set_phase(old, phase, Some(answer_by));
        }
    }

    fn end_probation(&mut self, now: Instant, old: Gen) {
        if let Some(g) = self.generations.get(&old)
            && let Phase::Probation { since, .. } = g.phase
        {
            tracing::info!(
                generation = old,
                "generation {old}{} ends its probation after {} ms: the new generation held, it drains now",
                pid_note(g.pid),
                now.saturating_duration_since(since).as_millis()
            );
        }
        self.release(now, old);
    }

    /// The generation on probation will not be needed: it drains and exits as superseded.
    pub(super) fn release(&mut self, now: Instant, n: Gen) {
        let Some(g) = self.generations.get_mut(&n) else {
            return;
        };
        if !matches!(g.phase, Phase::Probation { .. }) {
            return;
        }
        if let Some(peer) = g.peer {
            g.told_aside = g.told_aside.saturating_add(1);
            self.out.push(Action::Send {
                peer,
                message: Message::Superseded,
            });
        }
        let deadline = drain_deadline(now, g.timeouts);
        self.set_phase(n, Phase::Draining { since: now }, Some(deadline));
    }

    /// `n`, watched, left a ping unanswered for [`PING_TIMEOUT`]: as good as dead. The
    /// predecessor accepts again first, then `n` is killed.
    fn hung(&mut self, now: Instant, n: Gen) {
        let Some(g) = self.generations.get(&n).cloned() else {
            return;
        };
        let unanswered = g
            .ping
            .map_or(PING_TIMEOUT, |sent| now.saturating_duration_since(sent));
        self.reinstate(
            now,
            n,
            &g,
            "hung",
            &format!(
                "it left a ping unanswered for {} ms",
                unanswered.as_millis()
            ),
        );
        self.kill(n);
    }

    /// The active generation `dead` died or hung while its predecessor was on probation: the
    /// predecessor accepts again at once, and the failed build is not started again until
    /// someone asks for an upgrade.
    pub(super) fn reinstate(
        &mut self,
        now: Instant,
        dead: Gen,
        g: &Generation,
        what: &str,
        how: &str,
    ) {
        let Some(back) = self.on_probation() else {
            return;
        };
        let Some(b) = self.generations.get(&back) else {
            return;
        };
        let (peer, pid) = (b.peer, b.pid);
        self.set_phase(back, Phase::Active, None);
        if let Some(peer) = peer {
            self.out.push(Action::Send {
                peer,
                message: Message::Reinstated,
            });
        }
        let lived = g.served_ms(now);
        report!(
            error,
            "generation {dead}{} {what} {lived} ms after taking over ({how}); generation {back}{} reinstated and accepting again; the failed build is not restarted (upgrade again once it is fixed)",
            pid_note(g.pid),
            pid_note(pid)
        );
        let outcome = format!(
            "last upgrade undone: generation {dead} {what} {lived} ms after taking over, generation {back} reinstated"
        );
        self.out.push(Action::Notify(Supervisor::Status {
            status: format!(
                "generation {back}{} serving again (reinstated): generation {dead} {what} {lived} ms after taking over",
                pid_note(pid)
            ),
        }));
        self.last_upgrade = Some(outcome);
        // A failed start like any other, so a build that keeps dying is noticed; the
        // reinstated generation's time serving counts from its first ready, so one that
        // served for long restarts the count, and with it serving nothing is respawned.
        self.failed(
            now,
            &format!("generation {dead} {what} {lived} ms after taking over"),
            g.healthy(now),
        );
    }
}
