//! The process-wide drain state of a generation: ready or not, draining since when, how many
//! connections are open, and the process's exit once drained.
//!
//! One process is one generation, so this state is process-wide: [`superseded`] and [`ready`]
//! are free functions that work from anywhere in the app. It imports nothing above it: the
//! listener registers its sockets here through [`Gate`], and the control channel calls in.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::addr::{Addr, ListenAddr};
use crate::config::{Config, deadline_after};
use crate::socket::Stream;

mod app;
mod signals;
mod spread;

pub use app::{drained, draining, is_draining, is_stopping, ready, stopping, superseded};

use spread::Spread;

/// What the drain state needs of a listener: closing its sockets the instant the generation
/// stops accepting, pausing and resuming it around a probation, and waking it when readiness
/// changes.
pub(crate) trait Gate: Send + Sync {
    /// Wakes the task waiting for a connection, if any.
    fn wake(&self);
    /// Closes this process's copies of the listening sockets.
    fn close(&self);
    /// Stops (`true`) or resumes (`false`) accepting, keeping the sockets open.
    fn pause(&self, paused: bool);
    /// Whether this listener accepts on an address that covers `local`.
    fn covers(&self, local: &ListenAddr) -> bool;
    /// Queues a connection handed over by a superseded generation, to be yielded by `accept`
    /// like a new one; false (and the stream dropped) if this listener accepts nothing now.
    fn adopt(&self, stream: Stream, peer: Addr, unread: Vec<u8>) -> bool;
}

/// Where a generation is between serving and exiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Serving,
    /// Superseded but on probation: not accepting, holding its sockets, and brought back if
    /// the generation that took over dies.
    Probation,
    /// Draining for good, since then.
    Draining(Instant),
}

pub(crate) fn process() -> &'static Process {
    static PROCESS: LazyLock<Process> = LazyLock::new(Process::new);
    &PROCESS
}

/// Process-wide generation state.
pub(crate) struct Process {
    generation: AtomicU64,
    joined: AtomicBool,
    /// Set once the app took responsibility for exiting, by asking for [`superseded`].
    handled: AtomicBool,
    signals: AtomicBool,
    ready: AtomicBool,
    ready_changed: Notify,
    stage: watch::Sender<Stage>,
    draining_now: AtomicBool,
    stopping_now: AtomicBool,
    /// Wakes [`risefront::stopping`](crate::stopping) futures; `stopping_now` is the cheap read.
    stopping_changed: watch::Sender<bool>,
    /// Joined to a front: a stop signal from outside asks the front for a replacement.
    has_front: AtomicBool,
    stop_request: Notify,
    live: AtomicUsize,
    idle_changed: Notify,
    idle_grace_ms: AtomicU64,
    drain_timeout_ms: AtomicU64,
    stop_delay_ms: AtomicU64,
    close_spread_ms: AtomicU64,
    /// Idle connections move to the generation that takes over (see `transfer`).
    handoff: AtomicBool,
    spread: Mutex<Spread>,
    slots: Mutex<Vec<Weak<dyn Gate>>>,
}

impl Process {
    fn new() -> Self {
        Process {
            generation: AtomicU64::new(0),
            joined: AtomicBool::new(false),
            handled: AtomicBool::new(false),
            signals: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            ready_changed: Notify::new(),
            stage: watch::Sender::new(Stage::Serving),
            draining_now: AtomicBool::new(false),
            stopping_now: AtomicBool::new(false),
            stopping_changed: watch::Sender::new(false),
            has_front: AtomicBool::new(false),
            stop_request: Notify::new(),
            live: AtomicUsize::new(0),
            idle_changed: Notify::new(),
            idle_grace_ms: AtomicU64::new(500),
            drain_timeout_ms: AtomicU64::new(30_000),
            stop_delay_ms: AtomicU64::new(0),
            close_spread_ms: AtomicU64::new(0),
            handoff: AtomicBool::new(false),
            spread: Mutex::new(Spread::default()),
            slots: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn configure(&self, config: &Config, generation: u64) {
        self.generation.store(generation, Ordering::Relaxed);
        self.idle_grace_ms
            .store(millis(config.idle_grace), Ordering::Relaxed);
        self.drain_timeout_ms
            .store(millis(config.drain_timeout), Ordering::Relaxed);
        self.stop_delay_ms
            .store(millis(config.stop_delay), Ordering::Relaxed);
        self.close_spread_ms
            .store(millis(config.close_spread), Ordering::Relaxed);
        self.handoff.store(config.handoff, Ordering::Relaxed);
    }

    /// Whether this generation moves its idle connections to its successor and takes those
    /// of its predecessors ([`Builder::connection_handoff`](crate::Builder::connection_handoff)).
    pub(crate) fn handoff_enabled(&self) -> bool {
        self.handoff.load(Ordering::Relaxed)
    }

    /// The generation number the front gave this process (0 standalone).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Whether the response being written now should carry `Connection: close`: never while
    /// serving; while draining, as many as the spread allows by now (all once it is over).
    pub(crate) fn close_now(&self) -> bool {
        if !self.draining_now.load(Ordering::Relaxed) {
            return false;
        }
        let window = Duration::from_millis(self.close_spread_ms.load(Ordering::Relaxed));
        self.spread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .grant(window)
    }

    /// Starts (or, `None`, forgets) the close spread, counting the connections open now.
    fn spread_from(&self, since: Option<Instant>) {
        let total = self.live.load(Ordering::Relaxed);
        *self.spread.lock().unwrap_or_else(|e| e.into_inner()) = Spread::new(since, total);
    }

    /// This process is a generation of a front, which decides how it stops.
    pub(crate) fn joined_front(&self) {
        self.has_front.store(true, Ordering::Relaxed);
    }

    /// The service is stopping (the health flag of [`is_stopping`]).
    pub(crate) fn set_stopping(&self) {
        self.stopping_now.store(true, Ordering::Relaxed);
        self.stopping_changed.send_replace(true);
    }

    /// Resolves once the service is stopping (at once if it already is).
    pub(crate) async fn stopping(&self) {
        let mut rx = self.stopping_changed.subscribe();
        if rx.wait_for(|stopping| *stopping).await.is_err() {
            // The sender lives in a static and is never dropped.
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once a stop signal from outside asks for this generation to be replaced.
    pub(crate) async fn stop_requested(&self) {
        self.stop_request.notified().await;
    }

    /// The app (or [`GracefulServer`](crate::GracefulServer)) ends the process itself once
    /// drained; risefront then only enforces the drain deadline.
    pub(crate) fn take_responsibility(&self) {
        self.handled.store(true, Ordering::Relaxed);
    }

    pub(crate) fn idle_grace(&self) -> Duration {
        Duration::from_millis(self.idle_grace_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn register(&self, gate: Weak<dyn Gate>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|s| s.strong_count() > 0);
        let stage = *self.stage.borrow();
        if let Some(new) = gate.upgrade() {
            match stage {
                Stage::Serving => {}
                Stage::Probation => new.pause(true),
                Stage::Draining(_) => new.close(),
            }
        }
        slots.push(gate);
    }

    /// Takes a connection a superseded generation handed over, for the listener whose address
    /// covers it; false if no listener here serves that address or this generation is not
    /// serving (the sender then keeps it).
    pub(crate) fn adopt(&self, stream: Stream, peer: Addr, unread: Vec<u8>) -> bool {
        if !self.handoff_enabled() {
            return false;
        }
        let Ok(local) = stream.local_addr() else {
            return false;
        };
        let slot = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .iter()
                .filter_map(Weak::upgrade)
                .find(|slot| slot.covers(&local))
        };
        slot.is_some_and(|slot| slot.adopt(stream, peer, unread))
    }

    pub(crate) fn connection_opened(&self) {
        self.live.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn connection_closed(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_changed.notify_waiters();
        }
    }

    /// Resolves when no connection is open.
    async fn idle(&self) {
        wait_until(&self.idle_changed, || {
            self.live.load(Ordering::Acquire) == 0
        })
        .await;
    }

    pub(crate) fn mark_ready(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            self.ready_changed.notify_waiters();
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            for slot in slots.iter().filter_map(Weak::upgrade) {
                slot.wake();
            }
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) async fn wait_ready(&self) {
        wait_until(&self.ready_changed, || self.is_ready()).await;
    }

    /// When this generation started draining for good (not counting a probation).
    async fn draining_since(&self) -> Instant {
        let mut rx = self.stage.subscribe();
        let stage = rx
            .wait_for(|stage| matches!(stage, Stage::Draining(_)))
            .await
            .map(|stage| *stage);
        match stage {
            Ok(Stage::Draining(since)) => since,
            Ok(_) => Instant::now(),
            // The sender lives in a static and is never dropped.
            Err(_) => std::future::pending().await,
        }
    }

    /// A newer generation took over, but may die soon: stop accepting and tell clients to
    /// leave (as when draining), keep the sockets, and wait for `reinstate` or
    /// `start_draining`.
    pub(crate) fn start_probation(&self) {
        let paused = self.stage.send_if_modified(|stage| match stage {
            Stage::Serving => {
                *stage = Stage::Probation;
                true
            }
            _ => false,
        });
        if !paused {
            return;
        }
        self.spread_from(Some(Instant::now()));
        self.draining_now.store(true, Ordering::Relaxed);
        self.pause_slots(true);
        let generation = self.generation.load(Ordering::Relaxed);
        tracing::info!(
            generation,
            connections = self.live.load(Ordering::Relaxed),
            "generation {generation} was superseded and is on probation: stopped accepting, ready to take over again if the new generation dies"
        );
    }

    /// The generation that took over died during our probation: accept again.
    pub(crate) fn reinstate(&self) {
        let resumed = self.stage.send_if_modified(|stage| match stage {
            Stage::Probation => {
                *stage = Stage::Serving;
                true
            }
            _ => false,
        });
        if !resumed {
            return;
        }
        self.draining_now.store(false, Ordering::Relaxed);
        self.spread_from(None);
        self.pause_slots(false);
        let generation = self.generation.load(Ordering::Relaxed);
        tracing::warn!(
            generation,
            "generation {generation} was reinstated: the generation that took over died; accepting again"
        );
    }

    fn pause_slots(&self, paused: bool) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots.iter().filter_map(Weak::upgrade) {
            slot.pause(paused);
        }
    }

    /// Follows the generation through probation, reinstatement and draining.
    pub(crate) fn stages(&self) -> watch::Receiver<Stage> {
        self.stage.subscribe()
    }

    /// Stops accepting and starts draining; later calls do nothing.
    pub(crate) fn start_draining(&'static self, why: &str) {
        let now = Instant::now();
        let mut was_serving = false;
        let started = self.stage.send_if_modified(|stage| match stage {
            Stage::Draining(_) => false,
            Stage::Serving | Stage::Probation => {
                was_serving = *stage == Stage::Serving;
                *stage = Stage::Draining(now);
                true
            }
        });
        if !started {
            return;
        }
        if was_serving {
            // After a probation the spread began at the takeover and goes on.
            self.spread_from(Some(now));
        }
        self.draining_now.store(true, Ordering::Relaxed);
        let slots = std::mem::take(&mut *self.slots.lock().unwrap_or_else(|e| e.into_inner()));
        for slot in slots.iter().filter_map(Weak::upgrade) {
            slot.close();
        }
        let generation = self.generation.load(Ordering::Relaxed);
        tracing::info!(
            generation,
            connections = self.live.load(Ordering::Relaxed),
            "generation {generation} {why}: stopped accepting, draining"
        );
        tokio::spawn(self.drain(now));
    }

    /// Ends the process once drained when nobody else will (a plain `axum::serve` without
    /// graceful shutdown never returns), and in every case at the drain deadline.
    async fn drain(&'static self, since: Instant) {
        let generation = self.generation.load(Ordering::Relaxed);
        let deadline = deadline_after(since, self.drain_timeout());
        if tokio::time::timeout_at(deadline, self.idle()).await.is_ok() {
            tracing::info!(
                generation,
                "generation {generation} drained in {} ms",
                since.elapsed().as_millis()
            );
            if !self.handled.load(Ordering::Relaxed) {
                std::process::exit(0);
            }
            tokio::time::sleep_until(deadline_after(deadline, APP_EXIT_SLACK)).await;
            tracing::warn!(
                generation,
                "generation {generation} drained but the app did not exit by the drain deadline; exiting"
            );
        } else {
            if self.handled.load(Ordering::Relaxed) {
                // Give the app's own deadline handling (GracefulServer's summary) a moment.
                tokio::time::sleep(APP_EXIT_SLACK).await;
            }
            tracing::warn!(
                generation,
                open = self.live.load(Ordering::Relaxed),
                "generation {generation} still had connections at the drain deadline ({:?}); closing them and exiting",
                self.drain_timeout()
            );
        }
        std::process::exit(0);
    }
}

/// Waits until `done()` holds, re-checking whenever `changed` is notified. Registering before
/// checking means a notification between the check and the wait is not lost.
async fn wait_until(changed: &Notify, done: impl Fn() -> bool) {
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if done() {
            return;
        }
        notified.await;
    }
}

/// How long past the drain deadline an app that handles its own shutdown may take to exit.
const APP_EXIT_SLACK: Duration = Duration::from_secs(1);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Refuses a second `bind` in one process: a process is one generation of one service.
pub(crate) fn claim() -> io::Result<()> {
    if process().joined.swap(true, Ordering::AcqRel) {
        return Err(crate::error::BindError::AlreadyBound.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serving_or_reinstated_generation_never_closes() {
        let p = Process::new();
        assert!(!p.close_now());
        p.close_spread_ms.store(250, Ordering::Relaxed);
        p.live.store(100, Ordering::Relaxed);
        p.draining_now.store(true, Ordering::Relaxed);
        p.spread_from(Some(Instant::now() - Duration::from_millis(100)));
        assert!(p.close_now());
        p.draining_now.store(false, Ordering::Relaxed);
        p.spread_from(None);
        assert!((0..100).all(|_| !p.close_now()));
    }
}
