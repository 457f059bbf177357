//! Leases per (account, region): who may plan and change an account's instances in a region right now.
//! A scheduled pass holds its account's regions exclusively while it observes, plans and executes; event
//! installs share the lease of their account and region (they never take the same instance twice: the
//! event path tracks what it installs). Unrelated accounts and regions never wait for each other.
//!
//! # Guarantees
//! - An instance is never planned by a pass and by another pass or an event install at once.
//! - No deadlock: an exclusive lease takes its regions in one order (sorted), a shared one takes one.
//! - Fair: a waiting pass stops new event installs in its account and region from jumping ahead of it,
//!   and a waiting event install is not starved by one pass after another (tokio's `RwLock` is FIFO).
//!
//! # Caveats
//! - One small entry per (account, region) ever leased stays for the daemon's life: bounded by the
//!   accounts and regions in scope.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// (account, region).
type Key = (String, String);

/// The leases of one daemon.
#[derive(Debug, Default)]
pub struct Leases {
    /// One lock per (account, region), created on first use.
    locks: Mutex<HashMap<Key, Arc<RwLock<()>>>>,
}

/// A held lease; dropping it releases it.
#[derive(Debug)]
pub struct Lease {
    _exclusive: Vec<OwnedRwLockWriteGuard<()>>,
    _shared: Option<OwnedRwLockReadGuard<()>>,
}

impl Leases {
    /// No lease held.
    pub fn new() -> Leases {
        Leases::default()
    }

    fn lock_of(&self, account: &str, region: &str) -> Arc<RwLock<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks
            .entry((account.to_string(), region.to_string()))
            .or_default()
            .clone()
    }

    /// The exclusive lease of `account` in each of `regions` (a pass): waits for every holder there.
    pub async fn exclusive(&self, account: &str, regions: &[String]) -> Lease {
        let mut guards = Vec::new();
        for region in regions.iter().collect::<BTreeSet<_>>() {
            guards.push(self.lock_of(account, region).write_owned().await);
        }
        Lease {
            _exclusive: guards,
            _shared: None,
        }
    }

    /// A shared lease of `account` in `region` (an event install): waits only for a pass there.
    pub async fn shared(&self, account: &str, region: &str) -> Lease {
        Lease {
            _exclusive: Vec::new(),
            _shared: Some(self.lock_of(account, region).read_owned().await),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn regions(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    /// Whether `f` completes within a second of (paused) time.
    async fn completes<F: std::future::Future>(f: F) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_secs(1), f).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_excludes_its_account_and_regions_only() {
        let leases = Leases::new();
        let pass = leases
            .exclusive("A", &regions(&["us-east-1", "eu-west-1"]))
            .await;
        assert!(completes(leases.shared("A", "us-east-1")).await.is_none());
        assert!(completes(leases.shared("A", "eu-west-1")).await.is_none());
        assert!(completes(leases.exclusive("A", &regions(&["eu-west-1"])))
            .await
            .is_none());
        // Another region of the account, and any region of another account, go at once.
        assert!(completes(leases.shared("A", "ap-south-1")).await.is_some());
        assert!(completes(leases.exclusive("B", &regions(&["us-east-1"])))
            .await
            .is_some());
        drop(pass);
        assert!(completes(leases.shared("A", "us-east-1")).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn event_installs_share_and_hold_off_a_pass_until_they_end() {
        let leases = Leases::new();
        let one = leases.shared("A", "us-east-1").await;
        let two = completes(leases.shared("A", "us-east-1"))
            .await
            .expect("shared");
        assert!(completes(leases.exclusive("A", &regions(&["us-east-1"])))
            .await
            .is_none());
        drop(one);
        assert!(completes(leases.exclusive("A", &regions(&["us-east-1"])))
            .await
            .is_none());
        drop(two);
        assert!(completes(leases.exclusive("A", &regions(&["us-east-1"])))
            .await
            .is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_pass_goes_before_later_event_installs() {
        let leases = Arc::new(Leases::new());
        let install = leases.shared("A", "r").await;
        let waiting = {
            let leases = leases.clone();
            tokio::spawn(async move {
                let _pass = leases.exclusive("A", &regions(&["r"])).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        // A later event install queues behind the waiting pass, not beside the first install.
        assert!(completes(leases.shared("A", "r")).await.is_none());
        drop(install);
        waiting.await.unwrap();
        assert!(completes(leases.shared("A", "r")).await.is_some());
    }
}
