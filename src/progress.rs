//! Progress of long waits on stderr: a live line on a terminal, a log line every so often otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::info;

static LIVE_ALLOWED: AtomicBool = AtomicBool::new(true);
/// Without a terminal, a wait logs at most this often.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Turns the live line off (JSON logs, `-q`); waits then only log.
pub fn disable_live() {
    LIVE_ALLOWED.store(false, Ordering::Relaxed);
}

/// One wait's progress.
pub struct Progress {
    label: &'static str,
    live: bool,
    last_log: Mutex<Option<Instant>>,
}

impl Progress {
    /// Starts reporting a wait called `label`.
    pub fn new(label: &'static str) -> Progress {
        Progress {
            label,
            live: LIVE_ALLOWED.load(Ordering::Relaxed) && std::io::stderr().is_terminal(),
            last_log: Mutex::new(None),
        }
    }

    /// Shows the current state of the wait.
    pub fn update(&self, message: &str) {
        if self.live {
            eprint!("\r\x1b[2K{}: {message}", self.label);
            return;
        }
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            info!(wait = self.label, "{message}");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.live {
            eprint!("\r\x1b[2K");
        }
    }
}
