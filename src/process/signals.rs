//! What a generation does when SIGTERM or SIGINT (Ctrl-C; on Windows also Ctrl-Break and the
//! console closing) reaches it from outside: a decision from what it is doing and how many such
//! signals it got before, then executed.
//!
//! A terminal's Ctrl-C signals the whole foreground process group, so the front and every
//! generation get the same keypress at once. The front then tells its generations to stop,
//! and a generation may hear that before its own signal arrives: that signal is the same
//! keypress, not a second one, and must not end a drain that is finishing requests. Only a
//! signal after one this process already got is a person pressing again, who wants it gone now.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Process, Stage};

/// What a generation does about one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reaction {
    /// Drain on: the first signal this process got came while it was draining already (the
    /// front told it to stop on the same keypress, or it was superseded).
    DrainOn,
    /// A signal again while draining: exit now, cutting what is in flight.
    ExitNow,
    /// On probation (superseded already): nothing to replace, drain now, and let the front know
    /// it can no longer count on this one.
    DrainFromProbation,
    /// A signal again while serving: stop now (the service stops with it).
    StopNow,
    /// The first signal, with a front: ask it for a replacement and serve until it takes over.
    AskFront,
    /// The first signal, standalone: the stop delay, if any, then draining.
    Stop,
}

/// The signal policy of one process: how many signals it got so far.
#[derive(Debug, Default)]
pub(super) struct Policy {
    got: u32,
}

impl Policy {
    /// The reaction to one more signal, in `stage`, with a front or not.
    pub(super) fn react(&mut self, stage: Stage, has_front: bool) -> Reaction {
        let first = self.got == 0;
        self.got = self.got.saturating_add(1);
        match stage {
            Stage::Draining(_) if first => Reaction::DrainOn,
            Stage::Draining(_) => Reaction::ExitNow,
            Stage::Probation => Reaction::DrainFromProbation,
            Stage::Serving if !first => Reaction::StopNow,
            Stage::Serving if has_front => Reaction::AskFront,
            Stage::Serving => Reaction::Stop,
        }
    }
}

impl Process {
    /// Listens for SIGTERM and SIGINT and reacts as [`Policy`] decides; once per process.
    pub(crate) fn install_signals(&'static self) {
        if self.signals.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut signals = match crate::signal::Terminate::new() {
            Ok(signals) => signals,
            Err(e) => {
                tracing::warn!("cannot listen for termination signals: {e}");
                return;
            }
        };
        tokio::spawn(async move {
            let mut policy = Policy::default();
            loop {
                let signal = signals.recv().await;
                let stage = *self.stage.borrow();
                let has_front = self.has_front.load(Ordering::Relaxed);
                self.react(policy.react(stage, has_front), signal);
            }
        });
    }

    fn react(&'static self, reaction: Reaction, signal: &str) {
        let generation = self.generation.load(Ordering::Relaxed);
        match reaction {
            Reaction::DrainOn => {
                tracing::info!(
                    generation,
                    "generation {generation} got {signal} while draining: draining on ({signal} again exits at once)"
                );
            }
            Reaction::ExitNow => {
                tracing::warn!("{signal} again while draining: exiting now");
                std::process::exit(130);
            }
            Reaction::DrainFromProbation => {
                self.stop_request.notify_one();
                self.start_draining(&format!("got {signal} during its probation"));
            }
            Reaction::StopNow => {
                self.set_stopping();
                self.start_draining(&format!("got {signal} again"));
            }
            Reaction::AskFront => {
                tracing::info!(
                    generation,
                    "generation {generation} got {signal}: asking the front to start its replacement; it serves until then ({signal} again stops it at once)"
                );
                self.stop_request.notify_one();
            }
            Reaction::Stop => {
                self.set_stopping();
                let delay = Duration::from_millis(self.stop_delay_ms.load(Ordering::Relaxed));
                if delay.is_zero() {
                    self.start_draining(&format!("got {signal}"));
                    return;
                }
                tracing::info!(
                    "got {signal}: still accepting for the stop delay ({delay:?}), then draining"
                );
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    self.start_draining("ended its stop delay");
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn draining() -> Stage {
        Stage::Draining(Instant::now())
    }

    #[test]
    fn the_keypress_that_reached_the_front_too_does_not_cut_the_drain() {
        // The front heard Ctrl-C first and told us to stop: our own copy of it drains on.
        for has_front in [true, false] {
            let mut policy = Policy::default();
            assert_eq!(policy.react(draining(), has_front), Reaction::DrainOn);
            // A person pressing again wants it gone.
            assert_eq!(policy.react(draining(), has_front), Reaction::ExitNow);
            assert_eq!(policy.react(draining(), has_front), Reaction::ExitNow);
        }
    }

    #[test]
    fn a_first_signal_while_serving_asks_the_front_or_stops() {
        let mut policy = Policy::default();
        assert_eq!(policy.react(Stage::Serving, true), Reaction::AskFront);
        // Then the front's stop arrives (draining): the second keypress exits.
        assert_eq!(policy.react(draining(), true), Reaction::ExitNow);

        let mut policy = Policy::default();
        assert_eq!(policy.react(Stage::Serving, true), Reaction::AskFront);
        assert_eq!(policy.react(Stage::Serving, true), Reaction::StopNow);

        let mut policy = Policy::default();
        assert_eq!(policy.react(Stage::Serving, false), Reaction::Stop);
        assert_eq!(policy.react(Stage::Serving, false), Reaction::StopNow);
    }

    #[test]
    fn on_probation_any_signal_drains_at_once() {
        for earlier in [0, 1, 5] {
            let mut policy = Policy { got: earlier };
            assert_eq!(
                policy.react(Stage::Probation, true),
                Reaction::DrainFromProbation
            );
        }
    }
}
