//! The progress port: where the core reports its long waits (SSM registration, install commands,
//! verification in Azure). The core is given a [`ProgressPort`] in its options and never writes to stderr
//! itself; `output::progress` is the adapter that shows waits on a terminal or in the logs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Reports waits.
pub trait Progress: Send + Sync {
    /// A wait called `label` begins; it ends after `bound` at the latest when there is one. Dropping the
    /// returned [`Wait`] ends it.
    fn begin(&self, label: &'static str, bound: Option<Duration>) -> Box<dyn Wait>;
}

/// One wait being reported.
pub trait Wait: Send + Sync {
    /// Shows the current state of the wait.
    fn update(&self, message: &str);
}

/// Reports nothing (tests, benchmarks, and any caller that wires no reporter).
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _label: &'static str, _bound: Option<Duration>) -> Box<dyn Wait> {
        Box::new(Silent)
    }
}

impl Wait for Silent {
    fn update(&self, _message: &str) {}
}

/// The reporter the core's options carry: shared, cheap to clone, [`Silent`] by default.
#[derive(Clone)]
pub struct ProgressPort(pub Arc<dyn Progress>);

impl ProgressPort {
    /// A wait called `label` begins (see [`Progress::begin`]).
    pub fn begin(&self, label: &'static str, bound: Option<Duration>) -> Box<dyn Wait> {
        self.0.begin(label, bound)
    }
}

impl Default for ProgressPort {
    fn default() -> Self {
        ProgressPort(Arc::new(Silent))
    }
}

impl fmt::Debug for ProgressPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProgressPort")
    }
}
