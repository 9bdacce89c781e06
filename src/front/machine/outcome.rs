//! What the outside hears of an upgrade: the control clients that asked for it (exactly one
//! answer each), and systemd (`RELOADING=1`, then `READY=1` with the outcome, `STOPPING=1`).

use super::starting::new_upgrade;
use super::timers::Timer;
use super::{
    Action, Gen, Life, Machine, Message, STEP_ASIDE_TIMEOUT, Takeover, Upgrade, pid_note, report,
};
use crate::systemd::Supervisor;

impl Machine {
    /// A generation is being started: what was pending is reported first, as it stands.
    pub(super) fn begin_upgrade(&mut self, n: Gen) {
        let Life::Running { upgrade } = &mut self.life else {
            return;
        };
        if let Some(previous) = upgrade.replace(new_upgrade(n)) {
            match previous.takeover {
                // Its generation did serve: reported as it stands.
                Some(_) => self.complete_upgrade(previous),
                // Not ready yet, which no new start leaves behind; said so rather than kept.
                None => {
                    let reason = format!("generation {} did not take over", previous.generation);
                    for client in previous.clients {
                        self.answer(
                            client,
                            Message::Error {
                                reason: reason.clone(),
                            },
                        );
                    }
                }
            }
        }
    }

    /// The upgrade to `n` is one systemd hears of: `RELOADING=1` now, `READY=1` once it has an
    /// outcome.
    pub(super) fn reloading(&mut self, n: Gen, how: &str) {
        let Some(upgrade) = self.upgrade_mut().filter(|u| u.generation == n) else {
            return;
        };
        upgrade.reloading = true;
        self.out.push(Action::Notify(Supervisor::Reloading {
            status: format!("upgrading: generation {n} starting ({how})"),
        }));
    }

    /// The upgrade to `n` failed: systemd hears the service serves on (`READY=1`), and the
    /// clients that asked hear `reason`.
    pub(super) fn upgrade_failed(&mut self, n: Gen, why: &str, reason: String) {
        let Life::Running { upgrade } = &mut self.life else {
            return;
        };
        let Some(failed) = upgrade.take_if(|u| u.generation == n) else {
            return;
        };
        self.timers.clear(Timer::Handover);
        if failed.reloading {
            let serving = self
                .active()
                .map(|a| {
                    let pid = self.generations.get(&a).and_then(|g| g.pid);
                    format!("generation {a}{} serving", pid_note(pid))
                })
                .unwrap_or_else(|| "no generation serving".to_owned());
            let outcome = format!("last upgrade failed: generation {n} {why}");
            self.out.push(Action::Notify(Supervisor::Ready {
                status: format!("{serving}; {outcome}"),
            }));
            self.last_upgrade = Some(outcome);
        }
        for client in failed.clients {
            self.answer_failed(client, n, reason.clone());
        }
    }

    /// Reports the pending takeover once nothing is left to wait for: every superseded
    /// generation stepped aside, exited, lost its channel or was brought back. If the new
    /// generation stopped serving meanwhile, the upgrade failed.
    pub(super) fn settle_upgrade(&mut self) {
        let Some((n, takeover)) = self.taken_over() else {
            return;
        };
        if self.active() != Some(n) {
            let why = "stopped serving right after it took over";
            self.upgrade_failed(n, why, format!("generation {n} {why}"));
            return;
        }
        let late = self.still_accepting(takeover).next().is_some();
        if !late
            && let Life::Running { upgrade } = &mut self.life
            && let Some(done) = upgrade.take()
        {
            self.complete_upgrade(done);
        }
    }

    /// [`Timer::Handover`]: the superseded generations had their time to confirm.
    pub(super) fn report_takeover_anyway(&mut self) {
        let Some((n, takeover)) = self.taken_over() else {
            return;
        };
        if self.active() != Some(n) {
            // Dead or hung since it took over: the report is a failure, which follows.
            return;
        }
        let late: Vec<String> = self
            .still_accepting(takeover)
            .map(|n| n.to_string())
            .collect();
        let (who, they) = match late.len() {
            1 => ("generation", "it"),
            _ => ("generations", "they"),
        };
        report!(
            warn,
            "{who} {} did not confirm within {STEP_ASIDE_TIMEOUT:?} that {they} stopped accepting: reporting generation {n} serving anyway; until then, {they} may still take some new connections",
            late.join(", ")
        );
        if let Life::Running { upgrade } = &mut self.life
            && let Some(done) = upgrade.take()
        {
            self.complete_upgrade(done);
        }
    }

    /// The pending upgrade's generation and its takeover, once it took over.
    fn taken_over(&self) -> Option<(Gen, &Takeover)> {
        let upgrade = self.upgrade()?;
        Some((upgrade.generation, upgrade.takeover.as_ref()?))
    }

    /// The generations `takeover` superseded that have not confirmed they stopped accepting.
    fn still_accepting<'a>(&'a self, takeover: &'a Takeover) -> impl Iterator<Item = Gen> + 'a {
        takeover.superseded.iter().copied().filter(|old| {
            self.generations
                .get(old)
                .is_some_and(|g| g.owes_step_aside())
        })
    }

    /// Reports a takeover: `Upgraded` to the control clients that asked for it, `READY=1` to
    /// systemd.
    fn complete_upgrade(&mut self, done: Upgrade) {
        self.timers.clear(Timer::Handover);
        let n = done.generation;
        for client in done.clients {
            self.answer(client, Message::Upgraded { generation: n });
        }
        let pid = self.generations.get(&n).and_then(|g| g.pid);
        let (outcome, superseded) = match &done.takeover {
            Some(t) if done.reloading => {
                let outcome = format!(
                    "last upgrade: generation {n} ready in {} ms",
                    t.took.as_millis()
                );
                let said = format!("; {outcome}");
                self.last_upgrade = Some(outcome);
                (said, t.superseded.len())
            }
            Some(t) => (String::new(), t.superseded.len()),
            None => (String::new(), 0),
        };
        let status = format!(
            "generation {n}{} serving; {superseded} draining{outcome}",
            pid_note(pid),
        );
        self.out.push(Action::Notify(Supervisor::Ready { status }));
    }

    /// `STOPPING=1`, once.
    pub(super) fn notify_stopping(&mut self, why: &str) {
        self.out.push(Action::Notify(Supervisor::Stopping {
            status: format!("stopping ({why})"),
        }));
    }
}
