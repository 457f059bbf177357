//! Ctrl-C during `run`: the first SIGINT interrupts the pass (no new change starts, waits end, the partial
//! report is printed, exit code 130); a second one quits at once.

use std::future::Future;

use tokio::sync::watch;

use super::{exit, CliError};
use crate::output::stdout::eprint_line;

/// Runs `work` (a mutating pass and its report) so that SIGINT interrupts it cleanly; see
/// [`crate::reconcile::interrupt`].
pub(super) async fn interruptible_run<F, Fut>(work: F) -> Result<u8, CliError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<u8, CliError>>,
{
    let (stop, stopped) = watch::channel(false);
    let asked = stopped.clone();
    let signals = async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return std::future::pending().await;
        }
        eprint_line("interrupted: no new change is started and waits end now; the report of what was done follows (Ctrl-C again quits at once)");
        let _ = stop.send(true);
        if tokio::signal::ctrl_c().await.is_ok() {
            eprint_line("interrupted again: quitting without the report");
            std::process::exit(i32::from(exit::INTERRUPTED));
        }
        std::future::pending::<()>().await
    };
    let result = tokio::select! {
        result = crate::reconcile::interrupt::scope(stopped, work()) => result,
        () = signals => unreachable!("the signal watcher never ends"),
    };
    match result {
        Ok(_) if *asked.borrow() => Ok(exit::INTERRUPTED),
        other => other,
    }
}
