//! Progress of long waits on stderr: a live line when nothing else writes there, a log line every so often
//! otherwise.
//!
//! The live line and the logs share stderr. Logs at `info` and more verbose come during every wait (an
//! association, a failed install, ...), so a live line would be cut by them and left half drawn; with those
//! logs on, waits report through the logs instead ([`choose`]). With only warnings and errors on, the live
//! line is kept and the rare log line is written through [`LogWriter`], which clears the live line first;
//! the next update draws it again below.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::info;
use tracing_subscriber::filter::LevelFilter;

/// Without the live line, a wait logs at most this often.
const LOG_EVERY: Duration = Duration::from_secs(30);
/// Carriage return and "erase line": puts the cursor at the start of a blank line.
const CLEAR_LINE: &[u8] = b"\r\x1b[2K";

/// Whether waits draw the live line ([`set_mode`]); off until the binary decides.
static LIVE: AtomicBool = AtomicBool::new(false);
/// Whether a live line is on screen now; stderr writes take this lock to stay whole.
static LINE_SHOWN: Mutex<bool> = Mutex::new(false);

/// How waits show their progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One line redrawn in place on the terminal, erased when the wait ends.
    LiveLine,
    /// An `info` log line at most every 30 seconds.
    LogLines,
}

/// How waits show progress, given where stderr goes and what the logs let through.
///
/// - `stderr_is_terminal`: a live line redrawn with `\r` means nothing in a file or a pipe.
/// - `text_logs`: JSON logs are for machines; a live line among them would break their parsing.
/// - `max_log_level`: the most verbose level the log filter lets through, for any target (`None`:
///   unknown). Logs at `info` or more verbose come during every wait and would cut a live line, so
///   progress goes through them; with warnings and errors only, the live line is kept.
pub fn choose(
    stderr_is_terminal: bool,
    text_logs: bool,
    max_log_level: Option<LevelFilter>,
) -> Mode {
    let chatty_logs = max_log_level.is_none_or(|level| level >= LevelFilter::INFO);
    if stderr_is_terminal && text_logs && !chatty_logs {
        Mode::LiveLine
    } else {
        Mode::LogLines
    }
}

/// Sets how waits show progress from now on (the binary calls this once, with [`choose`]'s answer).
pub fn set_mode(mode: Mode) {
    LIVE.store(mode == Mode::LiveLine, Ordering::Relaxed);
}

/// The writer of log lines: stderr, with a live line on screen erased first (see [`LogWriter`]). Pass
/// it to `tracing_subscriber`'s `with_writer`.
pub fn log_writer() -> LogWriter<'static, std::io::Stderr> {
    LogWriter {
        inner: std::io::stderr(),
        line_shown: &LINE_SHOWN,
    }
}

/// A writer that erases the live line, when one is shown, before passing on the first bytes written.
pub struct LogWriter<'a, W> {
    /// Where the log lines go.
    inner: W,
    /// Whether a live line is on screen.
    line_shown: &'a Mutex<bool>,
}

impl<W: Write> Write for LogWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut shown = self
            .line_shown
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *shown {
            self.inner.write_all(CLEAR_LINE)?;
            *shown = false;
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One wait's progress.
pub struct Progress {
    label: &'static str,
    live: bool,
    last_log: Mutex<Option<Instant>>,
    /// When the wait began, for the elapsed time.
    started: Instant,
    /// How long the wait may last at most, when bounded.
    bound: Option<Duration>,
}

impl Progress {
    /// Starts reporting a wait called `label`.
    pub fn new(label: &'static str) -> Progress {
        Progress {
            label,
            live: LIVE.load(Ordering::Relaxed) && std::io::stderr().is_terminal(),
            last_log: Mutex::new(None),
            started: Instant::now(),
            bound: None,
        }
    }

    /// The wait ends after `bound` at the latest: every update says how much of it has passed.
    pub fn bounded(mut self, bound: Duration) -> Progress {
        self.bound = Some(bound);
        self
    }

    /// `[1m05s/15m00s] label: message`: the time first (elapsed, and the bound when there is one), so that
    /// a line cut to a narrow terminal keeps it.
    fn line(&self, message: &str, elapsed: Duration) -> String {
        let elapsed = short_duration(elapsed);
        match self.bound {
            Some(bound) => format!(
                "[{elapsed}/{}] {}: {message}",
                short_duration(bound),
                self.label
            ),
            None => format!("[{elapsed}] {}: {message}", self.label),
        }
    }

    /// Shows the current state of the wait.
    pub fn update(&self, message: &str) {
        let line = self.line(message, self.started.elapsed());
        if self.live {
            // One terminal line, never wrapped: a wrapped line could not be erased by the next redraw.
            let width = terminal_size::terminal_size_of(std::io::stderr())
                .map_or(80, |(w, _)| usize::from(w.0));
            let line = crate::output::table::truncate(&line, width.saturating_sub(1));
            let mut shown = LINE_SHOWN.lock().unwrap_or_else(PoisonError::into_inner);
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(CLEAR_LINE);
            let _ = write!(err, "{line}");
            let _ = err.flush();
            *shown = true;
            return;
        }
        let mut last = self.last_log.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            let elapsed_s = self.started.elapsed().as_secs();
            match self.bound {
                Some(bound) => info!(
                    wait = self.label,
                    elapsed_s,
                    bound_s = bound.as_secs(),
                    "{line}"
                ),
                None => info!(wait = self.label, elapsed_s, "{line}"),
            }
        }
    }
}

/// The progress port on stderr: each wait is a [`Progress`] (a live line on a terminal, log lines
/// otherwise, as [`set_mode`] chose).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl crate::ports::progress::Progress for Stderr {
    fn begin(
        &self,
        label: &'static str,
        bound: Option<Duration>,
    ) -> Box<dyn crate::ports::progress::Wait> {
        let wait = Progress::new(label);
        Box::new(match bound {
            Some(bound) => wait.bounded(bound),
            None => wait,
        })
    }
}

impl crate::ports::progress::Wait for Progress {
    fn update(&self, message: &str) {
        Progress::update(self, message)
    }
}

/// A duration as a wait shows it: `45s`, `3m05s`, `1h02m`, `2d03h`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.live {
            let mut shown = LINE_SHOWN.lock().unwrap_or_else(PoisonError::into_inner);
            if *shown {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(CLEAR_LINE);
                let _ = err.flush();
                *shown = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_line_only_on_a_terminal_with_quiet_text_logs() {
        use LevelFilter as L;
        let cases = [
            // (terminal, text logs, max level) -> mode
            ((true, true, Some(L::WARN)), Mode::LiveLine), // -q on a terminal
            ((true, true, Some(L::ERROR)), Mode::LiveLine), // -qq
            ((true, true, Some(L::OFF)), Mode::LiveLine),
            ((true, true, Some(L::INFO)), Mode::LogLines), // default: info logs would cut the line
            ((true, true, Some(L::DEBUG)), Mode::LogLines), // -v
            ((true, true, Some(L::TRACE)), Mode::LogLines),
            ((true, true, None), Mode::LogLines), // filter of unknown verbosity
            ((true, false, Some(L::WARN)), Mode::LogLines), // JSON logs
            ((false, true, Some(L::WARN)), Mode::LogLines), // a file or a pipe
            ((false, true, Some(L::INFO)), Mode::LogLines),
        ];
        for ((terminal, text, level), want) in cases {
            assert_eq!(
                choose(terminal, text, level),
                want,
                "terminal={terminal} text={text} level={level:?}"
            );
        }
    }

    #[test]
    fn updates_say_the_elapsed_time_and_the_bound() {
        let p = Progress::new("waiting for SSM registration").bounded(Duration::from_secs(900));
        assert_eq!(
            p.line("2 of 5 instances Online in SSM", Duration::from_secs(65)),
            "[1m05s/15m00s] waiting for SSM registration: 2 of 5 instances Online in SSM"
        );
        let p = Progress::new("install commands");
        assert_eq!(
            p.line("0 of 1 commands finished", Duration::from_secs(3)),
            "[3s] install commands: 0 of 1 commands finished"
        );
        assert_eq!(short_duration(Duration::from_secs(3 * 3600 + 120)), "3h02m");
        assert_eq!(
            short_duration(Duration::from_secs(2 * 86400 + 3600)),
            "2d01h"
        );
    }

    #[test]
    fn a_log_line_erases_the_live_line_once() {
        let shown = Mutex::new(true);
        let mut out = Vec::new();
        let mut writer = LogWriter {
            inner: &mut out,
            line_shown: &shown,
        };
        writer.write_all(b"WARN first\n").unwrap();
        writer.write_all(b"WARN second\n").unwrap();
        assert_eq!(out, b"\r\x1b[2KWARN first\nWARN second\n");
        assert!(!*shown.lock().unwrap(), "the line is marked gone");

        let shown = Mutex::new(false);
        let mut out = Vec::new();
        LogWriter {
            inner: &mut out,
            line_shown: &shown,
        }
        .write_all(b"INFO plain\n")
        .unwrap();
        assert_eq!(out, b"INFO plain\n", "nothing to erase without a live line");
    }
}
