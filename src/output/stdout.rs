//! Results on stdout: a reader that stopped reading (`arc-onboard plan | head`) ends the program quietly,
//! as SIGPIPE ends a C program, instead of a panic.
//!
//! Rust ignores SIGPIPE so that a write to a closed pipe returns `BrokenPipe`, and `print!` panics on it.
//! Every result the binary prints goes through [`print`], which turns `BrokenPipe` into the default death
//! by SIGPIPE (shells show exit status 141); sockets keep their `EPIPE` errors, since the signal stays
//! ignored until that moment.

use std::io::Write;

/// Exit status a shell shows for a process ended by SIGPIPE (128 + 13); used where the signal cannot be
/// raised.
pub const SIGPIPE_EXIT: i32 = 141;

/// Writes `text` to stdout and flushes it. A closed stdout ends the program as SIGPIPE would; another
/// write error is returned.
pub fn print(text: &str) -> std::io::Result<()> {
    write_or_quit(&mut std::io::stdout().lock(), text.as_bytes())
}

/// Writes `bytes` to `out` and flushes; `BrokenPipe` ends the program as SIGPIPE would.
fn write_or_quit(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => die_of_sigpipe(),
        other => other,
    }
}

/// Ends the process as the default SIGPIPE action does: no message, status "killed by SIGPIPE".
pub fn die_of_sigpipe() -> ! {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default action and raising it; nothing else runs in between that
    // depends on the disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(SIGPIPE_EXIT)
}

/// A line on stderr that never panics (a closed stderr loses it).
pub fn eprint_line(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_write_errors_are_returned() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "disk full",
                ))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let e = write_or_quit(&mut Full, b"x").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
        let mut ok = Vec::new();
        write_or_quit(&mut ok, b"report\n").unwrap();
        assert_eq!(ok, b"report\n");
    }
}
