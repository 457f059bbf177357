//! Interrupting a pass (Ctrl-C during `run`): once asked, the pass starts no new change, its waits end at
//! once, and it reports what was done. Commands already sent are left to finish on the instances and show
//! as `in-progress` with their `command_id` (a later run sees them in SSM and does not send another).
//!
//! The request travels with the task (a tokio task-local set by [`scope`]): only a pass run inside it can
//! be interrupted, so the daemon and the tests' passes never see another's request.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

tokio::task_local! {
    /// `true` once an interruption was asked for.
    static STOP: watch::Receiver<bool>;
}

/// Runs `work` interruptible by `stop` (set it to `true` to interrupt).
pub async fn scope<F: Future>(stop: watch::Receiver<bool>, work: F) -> F::Output {
    STOP.scope(stop, work).await
}

/// Whether the current pass was asked to stop.
pub fn requested() -> bool {
    STOP.try_with(|s| *s.borrow()).unwrap_or(false)
}

/// Sleeps for `d`, or less when an interruption is asked for meanwhile.
pub async fn sleep(d: Duration) {
    let Ok(mut stop) = STOP.try_with(|s| s.clone()) else {
        return tokio::time::sleep(d).await;
    };
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = async {
            // A dropped sender can no longer interrupt: sleep on.
            if stop.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_ends_the_sleep_only_inside_its_scope() {
        assert!(!requested(), "outside any scope nothing is requested");
        let (tx, rx) = watch::channel(false);
        let started = tokio::time::Instant::now();
        let waited = scope(rx, async {
            assert!(!requested());
            let stopper = async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                tx.send(true).unwrap();
            };
            tokio::join!(sleep(Duration::from_secs(3600)), stopper);
            assert!(requested());
            tokio::time::Instant::now() - started
        })
        .await;
        assert_eq!(waited.as_secs(), 5);
        assert!(!requested(), "the request stays inside the scope");
        // Without a scope, a sleep is a sleep.
        let started = tokio::time::Instant::now();
        sleep(Duration::from_secs(7)).await;
        assert_eq!((tokio::time::Instant::now() - started).as_secs(), 7);
    }
}
