//! Stopping the service (SIGTERM to the front, a clean exit, giving up), and a generation
//! that was asked to stop from outside and wants a replacement first.

use tokio::time::Instant;

use super::timers::{Timer, drain_deadline};
use super::{Gen, Life, Machine, Message, PeerId, Phase, pid_note};
use crate::config::deadline_after;

impl Machine {
    /// SIGTERM and friends: with a stop delay, keep accepting that long first (generations are
    /// told `Stopping`, for their health checks); a signal during the delay ends it early.
    pub(super) fn on_terminate(&mut self, now: Instant, signal: &str) {
        if !self.running() || self.stop_delay.is_zero() {
            self.stop(now, &format!("got {signal}"), false);
            return;
        }
        let Life::Running { upgrade } =
            std::mem::replace(&mut self.life, Life::StopDelay { code: 0 })
        else {
            return;
        };
        self.timers.clear(Timer::Respawn);
        self.timers.clear(Timer::Handover);
        self.timers
            .set(Timer::StopDelay, deadline_after(now, self.stop_delay));
        tracing::info!(
            "front got {signal}: still accepting for the stop delay ({:?}), then stopping",
            self.stop_delay
        );
        self.notify_stopping(&format!("got {signal}; stop delay {:?}", self.stop_delay));
        self.turn_clients_away(upgrade.map(|u| u.clients).unwrap_or_default());
        if let Some(n) = self.starting() {
            self.fail_starting(now, n, "the service is stopping");
        }
        // Nothing is reinstated during a stop: the generation on probation goes now.
        if let Some(n) = self.on_probation() {
            self.release(now, n);
        }
        let peers: Vec<PeerId> = self.generations.values().filter_map(|g| g.peer).collect();
        for peer in peers {
            self.out.push(super::Action::Send {
                peer,
                message: Message::Stopping,
            });
        }
    }

    /// Stops the service: starting generations are killed, the others drain by their own
    /// deadlines; a second stop kills everything. The front exits once every process it
    /// spawned has been reaped, with status 1 if it `gave_up` or had to kill a generation.
    pub(super) fn stop(&mut self, now: Instant, why: &str, gave_up: bool) {
        let code = i32::from(gave_up);
        match std::mem::replace(&mut self.life, Life::Stopping { code }) {
            Life::Running { upgrade } => {
                self.notify_stopping(why);
                self.turn_clients_away(upgrade.map(|u| u.clients).unwrap_or_default());
            }
            // A generation killed during the delay still counts.
            Life::StopDelay { code: during } => {
                self.life = Life::Stopping {
                    code: code.max(during),
                };
            }
            Life::Stopping { .. } => {
                tracing::warn!("front {why} again: killing the remaining generations");
                self.life = Life::Stopping { code: 1 };
                let all: Vec<Gen> = self.generations.keys().copied().collect();
                for n in all {
                    self.kill(n);
                }
                return;
            }
            Life::Exited => {
                self.life = Life::Exited;
                return;
            }
        }
        for timer in [Timer::Respawn, Timer::StopDelay, Timer::Handover] {
            self.timers.clear(timer);
        }
        tracing::info!(
            "front {why}: stopping {} generation(s)",
            self.generations.len()
        );
        // Nothing will accept again: once the generations have closed their copies too, a late
        // client is refused at once instead of waiting in a queue nobody reads.
        self.out.push(super::Action::CloseListeners);
        let all: Vec<Gen> = self.generations.keys().copied().collect();
        for n in all {
            let Some(g) = self.generations.get(&n) else {
                continue;
            };
            match g.phase {
                Phase::Starting => self.fail_starting(now, n, "the service is stopping"),
                Phase::Active | Phase::Draining { .. } | Phase::Lost | Phase::Probation { .. } => {
                    let mut deadline = drain_deadline(now, g.timeouts);
                    let since = match g.phase {
                        Phase::Draining { since } => {
                            if let Some(earlier) = self.timers.get(Timer::Phase(n)) {
                                deadline = deadline.min(earlier);
                            }
                            since
                        }
                        _ => now,
                    };
                    let peer = g.peer;
                    self.set_phase(n, Phase::Draining { since }, Some(deadline));
                    if let Some(peer) = peer {
                        self.out.push(super::Action::Send {
                            peer,
                            message: Message::Shutdown,
                        });
                    }
                }
                Phase::Killed => {}
            }
        }
    }

    /// The control clients waiting for an upgrade hear that the service is stopping: not a
    /// failed build, nothing to roll back.
    fn turn_clients_away(&mut self, clients: Vec<PeerId>) {
        for client in clients {
            self.answer(
                client,
                Message::Busy {
                    reason: "the service is shutting down".to_owned(),
                },
            );
        }
    }

    /// A generation was sent SIGTERM or SIGINT by someone else than the front: start its
    /// replacement; it keeps serving until the replacement is ready, then drains as superseded.
    pub(super) fn on_stop_requested(&mut self, now: Instant, peer: PeerId) {
        if !self.running() {
            // It was told to stop (or will be) by the front itself.
            return;
        }
        let Some(n) = self.by_peer(peer) else {
            return;
        };
        let Some(g) = self.generations.get_mut(&n) else {
            return;
        };
        let pid = pid_note(g.pid);
        match g.phase {
            Phase::Active => {
                g.stop_requested = true;
                tracing::info!(
                    generation = n,
                    "generation {n}{pid} was asked to stop: starting its replacement; it serves until then"
                );
                match self.spawn(now, &format!("generation {n} was asked to stop")) {
                    Ok(new) => self.reloading(new, "the active generation was asked to stop"),
                    Err(why) => tracing::info!(
                        generation = n,
                        "no new replacement for generation {n}: {why}"
                    ),
                }
            }
            Phase::Starting => self.fail_starting(now, n, "it was asked to stop"),
            Phase::Probation { .. } => {
                tracing::info!(
                    generation = n,
                    "generation {n}{pid} was asked to stop during its probation: it drains now"
                );
                self.release(now, n);
            }
            Phase::Draining { .. } | Phase::Lost | Phase::Killed => {}
        }
    }
}
