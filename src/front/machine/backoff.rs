//! When to start a replacement after a failure, and when to stop trying.
//!
//! A failure is a generation that failed to start, or that died (or hung) sooner than
//! [`STABLE_AFTER`] after it became ready: a failed upgrade counts as one too, so a build
//! that keeps dying is noticed. The count restarts whenever a generation has served for
//! [`STABLE_AFTER`]: the one that just ended, or the one serving while an upgrade failed. A
//! generation's time serving counts from its first ready and is not reset by a probation and
//! a reinstatement, so failed upgrades never count against respawning a generation that has
//! served.

use std::time::Duration;

/// Consecutive failures after which a front whose service never became ready gives up.
pub(crate) const MAX_INITIAL_ATTEMPTS: u32 = 3;
/// Consecutive failures (failed starts, crashes soon after ready) after which the front gives
/// up even though the service served before: at the longest delay this is about a minute of
/// trying, after which a supervisor's restart policy is the better judge.
pub(crate) const MAX_CONSECUTIVE_FAILURES: u32 = 10;
/// A generation that served this long is healthy: the count of consecutive failures restarts.
/// A crash sooner after ready counts as a failed start.
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Shortest and longest wait before starting a replacement after a failure.
pub(crate) const MIN_RESPAWN_DELAY: Duration = Duration::from_millis(200);
pub(crate) const MAX_RESPAWN_DELAY: Duration = Duration::from_secs(10);

/// The count of consecutive failures, and whether the service ever served.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    failures: u32,
    ever_ready: bool,
}

impl Backoff {
    /// A generation became ready: from now on the longer bound applies.
    pub(super) fn served(&mut self) {
        self.ever_ready = true;
    }

    /// Counts one failure; `healthy` when a generation served long enough to restart the
    /// count first.
    pub(super) fn failed(&mut self, healthy: bool) {
        if healthy {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
    }

    pub(super) fn failures(&self) -> u32 {
        self.failures
    }

    pub(super) fn ever_ready(&self) -> bool {
        self.ever_ready
    }

    /// The count as a front's previous image left it (see `reexec`; Unix only, and tests).
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(super) fn resume(&mut self, failures: u32, ever_ready: bool) {
        self.failures = failures;
        self.ever_ready = ever_ready;
    }

    /// How many consecutive failures make the front give up.
    pub(super) fn limit(&self) -> u32 {
        if self.ever_ready {
            MAX_CONSECUTIVE_FAILURES
        } else {
            MAX_INITIAL_ATTEMPTS
        }
    }

    pub(super) fn exhausted(&self) -> bool {
        self.failures >= self.limit()
    }

    /// How long to wait before the next replacement.
    pub(super) fn delay(&self) -> Duration {
        respawn_delay(self.failures)
    }
}

/// Wait before the `failures`-th consecutive respawn: 200 ms, doubling, at most 10 s.
pub(crate) fn respawn_delay(failures: u32) -> Duration {
    MIN_RESPAWN_DELAY
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_RESPAWN_DELAY)
}
