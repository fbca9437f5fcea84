//! Wall-clock time, injected so certificate validity can be tested without waiting.
//!
//! Scheduling uses `tokio::time`; validity (notBefore/notAfter, `exp`) uses a [`Clock`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> SystemTime;
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
