//! Every deadline of the machine in one table, which both [`Machine::next_deadline`] and
//! [`Input::Tick`](super::Input::Tick) walk: a timer armed here is one the shell wakes up for,
//! and one that fires, so it cannot be armed in one place and forgotten in the other.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::{EXIT_GRACE, Gen, Machine, Phase, Timeouts, pid_note, report};

/// What a deadline is for. Timers due at the same tick fire in this order: the generations
/// are judged (a hang, a failed start) before a takeover is reported, so that a late tick
/// does not report a generation that it finds dead in the same breath.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// The stop delay is over: the stop proper begins.
    StopDelay,
    /// The end of generation `n`'s phase: its ready deadline, the grace for its exit status,
    /// its probation window, or the deadline by which it must have exited.
    Phase(Gen),
    /// Generation `n`, which took over from one on probation, is due a ping, or the ping it
    /// was sent is overdue.
    Liveness(Gen),
    /// Start a replacement: nothing serves after a failure.
    Respawn,
    /// Report the takeover even though a superseded generation has not confirmed yet.
    Handover,
}

#[derive(Debug, Default)]
pub(super) struct Timers(BTreeMap<Timer, Instant>);

impl Timers {
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        self.0.insert(timer, at);
    }

    pub(super) fn clear(&mut self, timer: Timer) {
        self.0.remove(&timer);
    }

    pub(super) fn clear_all(&mut self) {
        self.0.clear();
    }

    pub(super) fn get(&self, timer: Timer) -> Option<Instant> {
        self.0.get(&timer).copied()
    }

    pub(super) fn next(&self) -> Option<Instant> {
        self.0.values().min().copied()
    }

    /// The timers due at `now`, in a fixed order.
    fn due(&self, now: Instant) -> Vec<Timer> {
        self.0
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(timer, _)| *timer)
            .collect()
    }
}

impl Machine {
    /// Fires every timer due. Each is looked at again just before it fires: an earlier one
    /// may have moved or disarmed it (a stop disarms the respawn).
    pub(super) fn on_tick(&mut self, now: Instant) {
        for timer in self.timers.due(now) {
            if self.timers.get(timer).is_none_or(|at| at > now) {
                continue;
            }
            self.timers.clear(timer);
            match timer {
                Timer::StopDelay => self.stop(now, "ends its stop delay", false),
                Timer::Respawn => {
                    if let Err(why) = self.spawn(now, "respawn") {
                        tracing::warn!("respawn skipped: {why}");
                    }
                }
                Timer::Handover => self.report_takeover_anyway(),
                Timer::Phase(n) => self.phase_over(now, n),
                Timer::Liveness(n) => self.liveness_due(now, n),
            }
        }
    }

    /// Generation `n`'s phase reached its deadline.
    fn phase_over(&mut self, now: Instant, n: Gen) {
        let Some(g) = self.generations.get(&n) else {
            return;
        };
        match g.phase {
            Phase::Starting => {
                let why = match &g.lost {
                    Some(lost) => format!("{lost}, and it was still running {EXIT_GRACE:?} later"),
                    None => format!("not ready within {:?}", g.timeouts.ready),
                };
                self.fail_starting(now, n, &why);
            }
            Phase::Probation { .. } => self.window_over(now, n),
            Phase::Lost => {
                // Still running without its channel: it drains by itself (it lost the front);
                // keep it, with a kill deadline, until it exits, and replace it now.
                let why = g.lost.clone().unwrap_or_default();
                let pid = pid_note(g.pid);
                let g = g.clone();
                self.set_phase(
                    n,
                    Phase::Draining { since: now },
                    Some(drain_deadline(now, g.timeouts)),
                );
                report!(error, "active generation {n}{pid} lost: {why}");
                self.crashed(now, &g);
            }
            Phase::Draining { .. } => {
                tracing::warn!(
                    generation = n,
                    "generation {n}{} still running {:?} after it was told to stop: killing it",
                    pid_note(g.pid),
                    g.timeouts.drain.saturating_add(super::DRAIN_SLACK)
                );
                self.kill(n);
                if let super::Life::StopDelay { code } | super::Life::Stopping { code } =
                    &mut self.life
                {
                    *code = 1;
                }
            }
            Phase::Active | Phase::Killed => {}
        }
    }
}

/// When a generation told to stop now must have exited: its own drain deadline, plus a
/// moment for the process to end.
pub(super) fn drain_deadline(now: Instant, timeouts: Timeouts) -> Instant {
    crate::config::deadline_after(now, timeouts.drain.saturating_add(super::DRAIN_SLACK))
}
