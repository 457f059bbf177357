//! The clock port: where the core reads the time (report timestamps, the `since` of command listings).
//! The core is given a [`ClockPort`] in its options and never reads the wall clock itself; the default
//! is [`SystemClock`], and `crate::fake::FakeClock` is a settable one for tests.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// Tells the time.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The wall clock ([`SystemTime::now`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The clock a pass reads; the wall clock by default.
#[derive(Clone)]
pub struct ClockPort(pub Arc<dyn Clock>);

impl ClockPort {
    /// The current time by this clock.
    pub fn now(&self) -> SystemTime {
        self.0.now()
    }
}

impl Default for ClockPort {
    fn default() -> Self {
        ClockPort(Arc::new(SystemClock))
    }
}

impl fmt::Debug for ClockPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClockPort")
    }
}
