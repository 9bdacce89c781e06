//! The close spread: a draining generation's `Connection: close` answers, spread evenly over a
//! window (HAProxy's `close-spread-time`), so that its keep-alive clients do not all reconnect
//! to the new generation in the same millisecond.

use std::time::Duration;

use tokio::time::Instant;

/// The closes granted so far in one drain.
#[derive(Debug, Default)]
pub(super) struct Spread {
    /// When the generation stopped accepting (none while serving).
    since: Option<Instant>,
    /// Connections open then: each is to be closed once.
    total: usize,
    /// `Connection: close` answers given so far.
    closed: usize,
}

impl Spread {
    /// A spread that began at `since` (none: serving, nothing to close) with `total`
    /// connections open.
    pub(super) fn new(since: Option<Instant>, total: usize) -> Self {
        Spread {
            since,
            total,
            closed: 0,
        }
    }

    /// Whether the response being written now may close its connection, `window` being the
    /// whole spread. The first answer may close at once; then evenly, by the time elapsed; all
    /// once the window is over (or without one).
    pub(super) fn grant(&mut self, window: Duration) -> bool {
        let Some(since) = self.since else {
            return true;
        };
        let elapsed = since.elapsed();
        if window.is_zero() || elapsed >= window {
            return true;
        }
        let allowed = u128::try_from(self.total)
            .unwrap_or(u128::MAX)
            .saturating_mul(elapsed.as_nanos())
            / window.as_nanos().max(1)
            + 1;
        if u128::try_from(self.closed).unwrap_or(u128::MAX) < allowed {
            self.closed += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begun(total: usize, ago: Duration) -> Spread {
        Spread::new(Some(Instant::now() - ago), total)
    }

    #[test]
    fn closes_are_spread_evenly_over_the_window() {
        // Halfway through the window about half of the connections may be closed, however
        // many responses ask: the rest stay alive until their share of the window comes.
        let window = Duration::from_secs(10);
        let mut spread = begun(100, Duration::from_secs(5));
        let granted = (0..1000).filter(|_| spread.grant(window)).count();
        assert!((50..=53).contains(&granted), "{granted} closes granted");
        // At the very start only the first response closes.
        let mut spread = begun(100, Duration::ZERO);
        assert!(spread.grant(window));
        assert!(!spread.grant(window));
    }

    #[test]
    fn after_the_window_or_without_one_every_response_closes() {
        let mut spread = begun(100, Duration::from_millis(300));
        assert!((0..1000).all(|_| spread.grant(Duration::from_millis(250))));
        let mut spread = begun(100, Duration::ZERO);
        assert!((0..1000).all(|_| spread.grant(Duration::ZERO)));
    }
}
