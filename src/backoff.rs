//! Exponential backoff of the wait (`--backoff COEF --backoff-cap D`, seed S0's
//! EXP_BACKOFF_COEF), pure. The pause before poll n is `--retry-interval` x COEF^n, at most
//! the cap; it only ever lengthens the pauses of a plain wait, so a waiter never sends more
//! than the queue's request budget (at most 40 requests a waiter-minute at the default
//! interval), and far fewer once it has backed off. The head of the queue still wakes right
//! when a takeover becomes possible; what it gives up is a quick notice of a release.

use std::time::Duration;

use crate::error::{Error, Result};

/// The largest coefficient: beyond it the second pause is already the cap.
pub const MAX_COEF: f64 = 10.0;

/// The default cap of `--backoff`.
pub const DEFAULT_CAP: Duration = Duration::from_secs(30);

/// How the pauses of a wait grow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Each pause is the last one times this (more than 1).
    pub coef: f64,
    /// No pause is longer than this (before the jitter of the queue's spacing).
    pub cap: Duration,
}

impl Backoff {
    /// Checks `--backoff COEF` and `--backoff-cap D` against `--retry-interval`.
    pub fn new(coef: f64, cap: Duration, interval: Duration) -> Result<Backoff> {
        if !(coef > 1.0 && coef <= MAX_COEF) {
            return Err(Error::Usage(format!(
                "--backoff {coef} is out of range: a coefficient above 1 and at most {MAX_COEF} (e.g. 1.5 or 2)"
            )));
        }
        if cap < interval {
            return Err(Error::Usage(format!(
                "--backoff-cap {} is shorter than --retry-interval {}: the cap bounds pauses that start at the interval",
                humantime::format_duration(cap),
                humantime::format_duration(interval)
            )));
        }
        Ok(Backoff { coef, cap })
    }

    /// The pause before poll `polls` (0 for the first), before the queue's spacing.
    pub fn base(&self, interval: Duration, polls: u32) -> Duration {
        // Stop multiplying once at the cap; powi of a large n would overflow to infinity.
        let factor = self.coef.powi(polls.min(64) as i32);
        let cap = self.cap.as_secs_f64();
        Duration::from_secs_f64((interval.as_secs_f64() * factor).min(cap)).max(interval)
    }
}

/// The pause base of poll `polls`: the interval, or what `backoff` makes of it.
pub fn pause_base(interval: Duration, backoff: Option<&Backoff>, polls: u32) -> Duration {
    backoff.map_or(interval, |b| b.base(interval, polls))
}

/// The longest pause base a wait may reach: what its queue entry's liveness window must
/// cover, so that other waiters never judge a backed-off waiter dead.
pub fn longest(interval: Duration, backoff: Option<&Backoff>) -> Duration {
    backoff.map_or(interval, |b| b.cap.max(interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_by_the_coefficient_up_to_the_cap_and_never_below_the_interval() {
        let b = Backoff::new(2.0, Duration::from_secs(30), Duration::from_secs(2)).unwrap();
        let bases: Vec<u64> = (0..7).map(|n| b.base(Duration::from_secs(2), n).as_secs()).collect();
        assert_eq!(bases, [2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b.base(Duration::from_secs(2), u32::MAX), Duration::from_secs(30));
        assert_eq!(pause_base(Duration::from_secs(2), None, 50), Duration::from_secs(2));
        assert_eq!(longest(Duration::from_secs(2), Some(&b)), Duration::from_secs(30));
    }

    #[test]
    fn a_coefficient_or_cap_that_cannot_back_off_is_a_usage_error() {
        let two = Duration::from_secs(2);
        for coef in [1.0, 0.5, -2.0, 11.0, f64::NAN] {
            assert!(Backoff::new(coef, Duration::from_secs(30), two).is_err(), "{coef}");
        }
        assert!(Backoff::new(2.0, Duration::from_secs(1), two).is_err());
    }
}
