//! Wall-clock time, injected so certificate validity can be tested without waiting.
//!
//! Scheduling uses `tokio::time`; validity (notBefore/notAfter, `exp`) uses a [`Clock`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> SystemTime;

    /// Whether this clock moves with `tokio::time` (which tests may pause and let auto-advance
    /// whenever the runtime looks idle): waits on other threads must then be visible to tokio.
    fn follows_tokio_time(&self) -> bool {
        false
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A wall clock that follows `tokio::time`, so paused-time tests move both together.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base: SystemTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Starts at `base` now.
    pub fn starting_at(base: SystemTime) -> Self {
        Self {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.base + self.start.elapsed()
    }

    fn follows_tokio_time(&self) -> bool {
        true
    }
}

/// A clock moved by hand.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<SystemTime>>);

impl ManualClock {
    /// Starts at `t`.
    pub fn new(t: SystemTime) -> Self {
        Self(Arc::new(Mutex::new(t)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        if let Ok(mut t) = self.0.lock() {
            *t += d;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.0.lock().map(|t| *t).unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// Sleeps until `at`, or forever when there is nothing to wait for (a `select!` arm with no timer).
pub(crate) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Retry delays: exponential from `first` to `cap`, each drawn from the upper half of its step so
/// many retriers do not synchronise. `failures` counts from 1.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) first: Duration,
    pub(crate) cap: Duration,
}

impl Backoff {
    /// The delay before the retry after `failures` consecutive failures.
    pub(crate) fn delay(self, failures: u32) -> Duration {
        let step = self
            .first
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(self.cap);
        step.mul_f64(0.5 + 0.5 * fastrand::f64())
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter() {
        let b = Backoff {
            first: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        };
        for (failures, step) in [(1, 1), (2, 2), (3, 4), (5, 16), (6, 30), (40, 30)] {
            for _ in 0..50 {
                let d = b.delay(failures);
                let step = Duration::from_secs(step);
                assert!(d >= step / 2 && d <= step, "{failures}: {d:?}");
            }
        }
        assert!(
            b.delay(0) <= Duration::from_secs(1),
            "0 failures: the first step"
        );
    }
}
