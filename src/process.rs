//! The process-wide drain state of a generation: ready or not, draining since when, how many
//! connections are open, and the process's exit once drained.
//!
//! One process is one generation, so this state is process-wide: [`superseded`] and [`ready`]
//! are free functions that work from anywhere in the app. It imports nothing above it: the
//! listener registers its sockets here through [`Gate`], and the control channel calls in.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::config::{Config, deadline_after};

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

/// Resolves when this generation should stop serving: a newer generation has taken over, the
/// front is shutting the service down, or the process got SIGTERM/SIGINT (Ctrl-C).
///
/// The listener stops accepting at that moment, but this future resolves only after the idle
/// grace (500 ms by default, see [`Builder::idle_grace`](crate::Builder::idle_grace)) or as
/// soon as the generation has no connection left, whichever comes first. That delay is what
/// keeps requests from failing: hyper cancels connections it has accepted but not yet read
/// from, and closes idle keep-alive connections that clients may be sending on right now, the
/// instant graceful shutdown starts.
///
/// With a probation window (see [`Builder::probation`](crate::Builder::probation)) it resolves
/// only once the window has passed without the new generation dying: until then this
/// generation may be reinstated, and its server must still be running.
///
/// Passing it to a server's graceful shutdown also tells risefront that the app ends the
/// process itself; without it, a superseded generation exits on its own once its last
/// connection closes. Either way it exits at the drain deadline.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let app = axum::Router::new()
///     .route("/", axum::routing::get(|| async { "hello" }))
///     .layer(risefront::DrainLayer::new());
/// axum::serve(risefront::bind(["127.0.0.1:8080"]).await?, app)
///     .with_graceful_shutdown(risefront::superseded())
///     .await
/// # }
/// ```
pub fn superseded() -> impl Future<Output = ()> + Send + 'static {
    let process = process();
    process.take_responsibility();
    async move {
        process.install_signals();
        let since = process.draining_since().await;
        let grace = process.idle_grace();
        tokio::select! {
            _ = tokio::time::sleep_until(deadline_after(since, grace)) => {}
            _ = process.idle() => {}
        }
    }
}

/// Resolves the moment this generation stops accepting: a newer generation took over, or the
/// service is stopping. For handlers of long-lived connections (WebSocket, server-sent events,
/// long streams) to tell their clients to reconnect now, while the new generation serves.
///
/// Unlike [`superseded`], which is the server's graceful-shutdown signal and fires only after
/// the idle grace, this fires at once and has no effect on how the process exits; it is cheap
/// to call once per connection. It also fires when the generation goes on probation: its
/// clients should move to the new generation, and if this one is reinstated, a later call
/// waits for the next takeover.
///
/// # Example
///
/// ```no_run
/// use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
///
/// async fn echo(mut socket: WebSocket) {
///     let takeover = risefront::draining();
///     tokio::pin!(takeover);
///     loop {
///         tokio::select! {
///             message = socket.recv() => match message {
///                 Some(Ok(Message::Text(text))) => {
///                     if socket.send(Message::Text(text)).await.is_err() {
///                         return;
///                     }
///                 }
///                 Some(Ok(_)) => {}
///                 _ => return,
///             },
///             () = &mut takeover => {
///                 // 1012 Service Restart: reconnect, the new generation is serving.
///                 let close = CloseFrame { code: close_code::RESTART, reason: "upgrade".into() };
///                 let _ = socket.send(Message::Close(Some(close))).await;
///                 return;
///             }
///         }
///     }
/// }
/// ```
pub fn draining() -> impl Future<Output = ()> + Send + 'static {
    let process = process();
    async move {
        let mut rx = process.stage.subscribe();
        if rx.wait_for(|stage| *stage != Stage::Serving).await.is_err() {
            // The sender lives in a static and is never dropped.
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves once this generation is draining and has no connection left, upgraded ones
/// (WebSocket) included: what a `main` that served with `axum::serve` waits for before it
/// returns, so that connections handed over to handlers are not cut when the process ends.
/// Whatever is still open at the drain deadline is closed then, and the log says so.
pub fn drained() -> impl Future<Output = ()> + Send + 'static {
    let process = process();
    async move {
        process.draining_since().await;
        process.idle().await;
    }
}

/// Whether this generation has stopped accepting because it was superseded or told to stop.
/// It turns false again if the generation is reinstated after a failed takeover (see
/// [`Builder::probation`](crate::Builder::probation)).
pub fn is_draining() -> bool {
    // Read on every response by the drain layer: an atomic, not the watch channel's lock.
    process().draining_now.load(Ordering::Relaxed)
}

/// Whether the service is stopping: it was told to stop (SIGTERM or SIGINT to the front, or
/// to a standalone process) and is in its stop delay or draining.
///
/// Unlike [`is_draining`], it stays false when this generation is merely replaced by a newer
/// one (the service goes on), so it is the flag for a health check that load balancers
/// watch: answer 503 while it is true and they stop sending traffic before the listener
/// closes. See [`Builder::stop_delay`](crate::Builder::stop_delay).
///
/// # Example
///
/// ```no_run
/// use axum::{http::StatusCode, routing::get};
///
/// let health = get(|| async {
///     if risefront::is_stopping() {
///         (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
///     } else {
///         (StatusCode::OK, "ok\n")
///     }
/// });
/// let app: axum::Router = axum::Router::new().route("/healthz", health);
/// ```
pub fn is_stopping() -> bool {
    process().stopping_now.load(Ordering::Relaxed)
}

/// Tells the front this generation is ready to take over; see [`RiseFrontListener::ready`](crate::RiseFrontListener::ready).
pub fn ready() {
    process().mark_ready();
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
    /// Joined to a front: a stop signal from outside asks the front for a replacement.
    has_front: AtomicBool,
    stop_request: Notify,
    live: AtomicUsize,
    idle_changed: Notify,
    idle_grace_ms: AtomicU64,
    drain_timeout_ms: AtomicU64,
    stop_delay_ms: AtomicU64,
    close_spread_ms: AtomicU64,
    spread: Mutex<Spread>,
    slots: Mutex<Vec<Weak<dyn Gate>>>,
}

/// The closes of a draining generation's keep-alive connections, spread evenly over the close
/// spread window (HAProxy's `close-spread-time`): at 1,000 connections, closing all on their
/// next response makes all of them reconnect to the new generation in the same millisecond.
#[derive(Debug, Default)]
struct Spread {
    /// When the generation stopped accepting (none while serving).
    since: Option<Instant>,
    /// Connections open then: each is to be closed once.
    total: usize,
    /// `Connection: close` answers given so far.
    closed: usize,
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
            has_front: AtomicBool::new(false),
            stop_request: Notify::new(),
            live: AtomicUsize::new(0),
            idle_changed: Notify::new(),
            idle_grace_ms: AtomicU64::new(500),
            drain_timeout_ms: AtomicU64::new(30_000),
            stop_delay_ms: AtomicU64::new(0),
            close_spread_ms: AtomicU64::new(0),
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
    }

    /// Whether the response being written now should carry `Connection: close`: never while
    /// serving; while draining, as many as the spread allows by now (all once it is over).
    pub(crate) fn close_now(&self) -> bool {
        if !self.draining_now.load(Ordering::Relaxed) {
            return false;
        }
        let window = Duration::from_millis(self.close_spread_ms.load(Ordering::Relaxed));
        let mut spread = self.spread.lock().unwrap_or_else(|e| e.into_inner());
        let Some(since) = spread.since else {
            return true;
        };
        let elapsed = since.elapsed();
        if window.is_zero() || elapsed >= window {
            return true;
        }
        // The first answer may close at once; then evenly, by the time elapsed.
        let allowed = u128::try_from(spread.total)
            .unwrap_or(u128::MAX)
            .saturating_mul(elapsed.as_nanos())
            / window.as_nanos().max(1)
            + 1;
        if u128::try_from(spread.closed).unwrap_or(u128::MAX) < allowed {
            spread.closed += 1;
            true
        } else {
            false
        }
    }

    /// Starts (or, `None`, forgets) the close spread, counting the connections open now.
    fn spread_from(&self, since: Option<Instant>) {
        let mut spread = self.spread.lock().unwrap_or_else(|e| e.into_inner());
        *spread = Spread {
            since,
            total: self.live.load(Ordering::Relaxed),
            closed: 0,
        };
    }

    /// This process is a generation of a front, which decides how it stops.
    pub(crate) fn joined_front(&self) {
        self.has_front.store(true, Ordering::Relaxed);
    }

    /// The service is stopping (the health flag of [`is_stopping`]).
    pub(crate) fn set_stopping(&self) {
        self.stopping_now.store(true, Ordering::Relaxed);
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

    /// Whether the generation is on probation (superseded, maybe brought back).
    pub(crate) fn on_probation(&self) -> bool {
        *self.stage.borrow() == Stage::Probation
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

    /// SIGTERM or SIGINT. In a generation of a front, the first one asks the front for a
    /// replacement (the generation serves until it takes over); standalone, it starts the stop
    /// delay, if any, then draining. One more starts draining at once, and one while draining
    /// ends the process, as people pressing Ctrl-C again expect.
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
            let mut asked = false;
            loop {
                let signal = signals.recv().await;
                let generation = self.generation.load(Ordering::Relaxed);
                if matches!(*self.stage.borrow(), Stage::Draining(_)) {
                    tracing::warn!("second {signal} while draining: exiting now");
                    std::process::exit(130);
                }
                if self.on_probation() {
                    // Superseded already: nothing to replace, and no reason to wait out the
                    // window. The front hears it, so it no longer counts on us.
                    self.stop_request.notify_one();
                    self.start_draining(&format!("got {signal} during its probation"));
                    continue;
                }
                if std::mem::replace(&mut asked, true) {
                    self.set_stopping();
                    self.start_draining(&format!("got {signal} again"));
                    continue;
                }
                if self.has_front.load(Ordering::Relaxed) {
                    tracing::info!(
                        generation,
                        "generation {generation} got {signal}: asking the front to start its replacement; it serves until then ({signal} again stops it at once)"
                    );
                    self.stop_request.notify_one();
                    continue;
                }
                self.set_stopping();
                let delay = Duration::from_millis(self.stop_delay_ms.load(Ordering::Relaxed));
                if delay.is_zero() {
                    self.start_draining(&format!("got {signal}"));
                    continue;
                }
                tracing::info!(
                    "got {signal}: still accepting for the stop delay ({delay:?}), then draining"
                );
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    self.start_draining("ended its stop delay");
                });
            }
        });
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
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "risefront: bind was already called in this process; pass every address to one bind call",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A draining process-state of its own (not the global one) with `live` connections.
    fn draining(live: usize, window_ms: u64, elapsed: Duration) -> Process {
        let p = Process::new();
        p.close_spread_ms.store(window_ms, Ordering::Relaxed);
        p.live.store(live, Ordering::Relaxed);
        p.draining_now.store(true, Ordering::Relaxed);
        p.spread_from(Some(Instant::now() - elapsed));
        p
    }

    #[test]
    fn closes_are_spread_evenly_over_the_window() {
        // Halfway through the window about half of the connections may be closed, however
        // many responses ask: the rest stay alive until their share of the window comes.
        let p = draining(100, 10_000, Duration::from_secs(5));
        let granted = (0..1000).filter(|_| p.close_now()).count();
        assert!((50..=53).contains(&granted), "{granted} closes granted");
        // At the very start only the first response closes.
        let p = draining(100, 10_000, Duration::ZERO);
        assert!(p.close_now());
        assert!(!p.close_now());
    }

    #[test]
    fn after_the_window_or_without_one_every_response_closes() {
        let p = draining(100, 250, Duration::from_millis(300));
        assert!((0..1000).all(|_| p.close_now()));
        let p = draining(100, 0, Duration::ZERO);
        assert!((0..1000).all(|_| p.close_now()));
    }

    #[test]
    fn a_serving_or_reinstated_generation_never_closes() {
        let p = Process::new();
        assert!(!p.close_now());
        let p = draining(100, 250, Duration::from_millis(100));
        p.draining_now.store(false, Ordering::Relaxed);
        p.spread_from(None);
        assert!((0..100).all(|_| !p.close_now()));
    }
}
