//! The accounts of the event path: which accounts an event may name (`[aws.accounts]` and `--shard`, the
//! same [`accounts_in_scope`] the passes use, refreshed on a clock), and the entered accounts' ports,
//! kept for the daemon's life.
//!
//! # Guarantees
//! - The accounts in scope are listed at start, again when the list is older than
//!   [`ScopeTimes::max_age`], and at most every [`ScopeTimes::min_age`] when an event names an account
//!   the list does not hold (a new account of the organization is served within a minute).
//! - A listing that failed (or failed in part) never shrinks the set: the accounts known before are
//!   kept, and an account the listing could not confirm is [`Judgement::Unconfirmed`] (its message is
//!   left on the queue) rather than out of scope.
//! - An account is entered once (one `sts:AssumeRole` for a member account); its clients are kept, and
//!   the SDK refreshes the assumed-role credentials in them. A role that cannot be assumed is not asked
//!   again for [`ScopeTimes::unreachable_retry`], so a burst of events costs one `sts:AssumeRole`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{AccountsConfig, Shard};
use crate::model::AwsError;
use crate::ports::accounts::{Accounts, Caller, Entered};
use crate::reconcile::accounts::accounts_in_scope;

/// How often the accounts in scope are listed again, and how long a failed entry is remembered.
#[derive(Debug, Clone, Copy)]
pub struct ScopeTimes {
    /// The list is refreshed at the next message once it is this old.
    pub max_age: Duration,
    /// An event naming an unknown account refreshes a list at least this old.
    pub min_age: Duration,
    /// An account whose role could not be assumed is not tried again for this long.
    pub unreachable_retry: Duration,
}

impl Default for ScopeTimes {
    fn default() -> Self {
        ScopeTimes {
            max_age: Duration::from_secs(10 * 60),
            min_age: Duration::from_secs(60),
            unreachable_retry: Duration::from_secs(60),
        }
    }
}

/// Where an event's account stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// This daemon handles it.
    Mine,
    /// In scope, but another `--shard` handles it: leave the message for that daemon.
    OtherShard,
    /// Not in scope (excluded, outside the source or the OUs, not ACTIVE).
    Out,
    /// Not in the list, and the last listing failed: it cannot be told now.
    Unconfirmed,
}

/// The accounts' listing as last taken.
#[derive(Debug, Default)]
struct Listed {
    /// In scope, before the shard selection.
    all: BTreeSet<String>,
    /// Whether the last listing answered in full.
    complete: bool,
    /// When it was taken (`None`: never).
    at: Option<Instant>,
}

/// The accounts of the event path.
pub struct EventAccounts<'a, X: Accounts> {
    accounts: &'a X,
    cfg: &'a AccountsConfig,
    caller: Caller,
    shard: Option<Shard>,
    times: ScopeTimes,
    listed: tokio::sync::Mutex<Listed>,
    entered: Mutex<HashMap<String, Arc<Entered<X>>>>,
    unreachable: Mutex<HashMap<String, (Instant, AwsError)>>,
    /// One lock per account being entered: concurrent callers wait for the one entry in progress.
    entering: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<'a, X: Accounts> EventAccounts<'a, X> {
    /// Nothing listed yet: the first [`EventAccounts::refresh`] lists.
    pub fn new(
        accounts: &'a X,
        cfg: &'a AccountsConfig,
        caller: Caller,
        shard: Option<Shard>,
        times: ScopeTimes,
    ) -> Self {
        EventAccounts {
            accounts,
            cfg,
            caller,
            shard,
            times,
            listed: tokio::sync::Mutex::new(Listed::default()),
            entered: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
            entering: Mutex::new(HashMap::new()),
        }
    }

    /// The accounts port (for its call counts).
    pub fn port(&self) -> &X {
        self.accounts
    }

    /// Lists the accounts in scope again when the list is stale: older than `max_age`, or older than
    /// `min_age` while `unknown` names an account the list does not hold.
    pub async fn refresh(&self, unknown: &[&str]) {
        let mut listed = self.listed.lock().await;
        let age = listed.at.map(|t| Instant::now().duration_since(t));
        let stale = match age {
            None => true,
            Some(age) if age >= self.times.max_age => true,
            Some(age) => {
                age >= self.times.min_age && unknown.iter().any(|a| !listed.all.contains(*a))
            }
        };
        if !stale {
            return;
        }
        // Listed without the shard, so that another shard's accounts are told from those out of scope.
        let scope = accounts_in_scope(self.accounts, self.cfg, &self.caller, None).await;
        let fresh: BTreeSet<String> = scope.accounts.into_iter().collect();
        let complete = scope.errors.is_empty();
        if complete {
            listed.all = fresh;
        } else {
            for e in &scope.errors {
                warn!(operation = %e.operation, code = %e.code, "event path: the accounts in scope could not all be listed; the accounts known before are kept");
            }
            listed.all.extend(fresh);
        }
        listed.complete = complete;
        listed.at = Some(Instant::now());
        let mine = listed
            .all
            .iter()
            .filter(|a| self.shard.is_none_or(|s| s.selects(a)))
            .count();
        info!(
            accounts = listed.all.len(),
            this_shard = mine,
            complete,
            "event path: accounts in scope listed"
        );
    }

    /// Where `account` stands, by the last listing.
    pub async fn judge(&self, account: &str) -> Judgement {
        let listed = self.listed.lock().await;
        if listed.all.contains(account) {
            if self.shard.is_none_or(|s| s.selects(account)) {
                Judgement::Mine
            } else {
                Judgement::OtherShard
            }
        } else if listed.complete {
            Judgement::Out
        } else {
            Judgement::Unconfirmed
        }
    }

    /// The ports of `account`: kept from an earlier entry, or entered now (`sts:AssumeRole` for a member
    /// account). A role refused within the last `unreachable_retry` answers its error again without a
    /// call. Single-flight: callers that come while the account is being entered wait for that entry
    /// and share its answer; the role is assumed once.
    pub async fn enter(&self, account: &str) -> Result<Arc<Entered<X>>, AwsError> {
        if let Some(clients) = self.lock_entered().get(account) {
            return Ok(clients.clone());
        }
        let flight = self
            .entering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(account.to_string())
            .or_default()
            .clone();
        let _one = flight.lock().await;
        // The entry this caller waited for (if any) has answered: reuse its clients, or its refusal.
        if let Some(clients) = self.lock_entered().get(account) {
            return Ok(clients.clone());
        }
        if let Some((at, e)) = self.lock_unreachable().get(account) {
            if Instant::now().duration_since(*at) < self.times.unreachable_retry {
                return Err(e.clone());
            }
        }
        match self.accounts.enter(&self.caller, account).await {
            Ok(clients) => {
                self.lock_unreachable().remove(account);
                let clients = Arc::new(clients);
                Ok(self
                    .lock_entered()
                    .entry(account.to_string())
                    .or_insert(clients)
                    .clone())
            }
            Err(e) => {
                warn!(%account, operation = %e.operation, code = %e.code, "event path: cannot enter the account");
                self.lock_unreachable()
                    .insert(account.to_string(), (Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// The ports of an account entered already (the watcher and the installer work on accounts the
    /// intake entered).
    pub fn entered(&self, account: &str) -> Option<Arc<Entered<X>>> {
        self.lock_entered().get(account).cloned()
    }

    fn lock_entered(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entered<X>>>> {
        self.entered.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_unreachable(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, AwsError)>> {
        self.unreachable.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether a failure to enter an account says the role will not be assumed until someone changes it
/// (access denied, no such role): the message is then deleted as `account-unreachable`, and the
/// scheduled passes report the account in `errors[]`. Any other failure (throttling, network, expired
/// caller credentials) leaves the message for redelivery.
pub fn is_unreachable(e: &AwsError) -> bool {
    use crate::model::AwsErrorKind::{AccessDenied, NotFound};
    matches!(e.kind, AccessDenied | NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccountSource, Config};
    use crate::fake::accounts::FakeAccounts;
    use crate::fake::FakeAws;

    const MGMT: &str = "100000000000";
    const A: &str = "200000000001";
    const B: &str = "200000000002";
    const C: &str = "200000000003";

    fn config(accounts: &str) -> Config {
        let text = format!("[aws]\nregions = [\"us-east-1\"]\n[aws.accounts]\n{accounts}\n");
        Config::parse(&text, std::path::Path::new("t.toml")).unwrap()
    }

    fn org() -> FakeAccounts {
        let org = FakeAccounts::new(MGMT);
        for id in [MGMT, A, B] {
            org.add_account(id, FakeAws::new(&["us-east-1"]).with_account(id));
        }
        org
    }

    async fn accounts<'a>(
        org: &'a FakeAccounts,
        config: &'a Config,
        shard: Option<Shard>,
    ) -> EventAccounts<'a, FakeAccounts> {
        let caller = org.caller().await.unwrap();
        EventAccounts::new(
            org,
            &config.aws.accounts,
            caller,
            shard,
            ScopeTimes::default(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn excluded_accounts_are_out_and_other_shards_are_told_apart() {
        let org = org();
        let config = config("source = \"organization\"\nexclude = [\"200000000002\"]");
        assert_eq!(config.aws.accounts.source, AccountSource::Organization);
        // 200000000001 % 2 == 1: shard 1/2 holds A, shard 0/2 holds MGMT.
        let ev = accounts(&org, &config, Some(Shard { index: 0, count: 2 })).await;
        ev.refresh(&[]).await;
        assert_eq!(ev.judge(MGMT).await, Judgement::Mine);
        assert_eq!(ev.judge(A).await, Judgement::OtherShard);
        assert_eq!(ev.judge(B).await, Judgement::Out);
        assert_eq!(ev.judge(C).await, Judgement::Out);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_account_is_listed_at_most_once_a_minute_and_the_list_at_most_ten_minutes_old() {
        let org = org();
        let config = config("source = \"organization\"");
        let ev = accounts(&org, &config, None).await;
        ev.refresh(&[]).await;
        let listings = || org.calls.snapshot()["organizations:ListAccounts"];
        assert_eq!(listings(), 1);
        org.add_account(C, FakeAws::new(&["us-east-1"]).with_account(C));
        // Known accounts never list again before max_age; an unknown one waits for min_age.
        ev.refresh(&[A]).await;
        ev.refresh(&[C]).await;
        assert_eq!((listings(), ev.judge(C).await), (1, Judgement::Out));
        tokio::time::advance(Duration::from_secs(61)).await;
        ev.refresh(&[A]).await;
        assert_eq!(listings(), 1);
        ev.refresh(&[C]).await;
        assert_eq!((listings(), ev.judge(C).await), (2, Judgement::Mine));
        ev.refresh(&[C]).await;
        assert_eq!(listings(), 2);
        tokio::time::advance(Duration::from_secs(600)).await;
        ev.refresh(&[]).await;
        assert_eq!(listings(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_listing_keeps_the_known_accounts_and_leaves_new_ones_unconfirmed() {
        let org = org();
        let config = config("source = \"organization\"");
        let ev = accounts(&org, &config, None).await;
        ev.refresh(&[]).await;
        org.deny_organization();
        tokio::time::advance(Duration::from_secs(601)).await;
        ev.refresh(&[]).await;
        assert_eq!(ev.judge(A).await, Judgement::Mine);
        assert_eq!(ev.judge(C).await, Judgement::Unconfirmed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_account_is_entered_once_and_a_refused_role_is_asked_again_only_after_a_minute() {
        let org = org();
        org.deny_assume_role(B);
        let config = config("source = \"organization\"");
        let ev = accounts(&org, &config, None).await;
        let assumed = || org.calls.snapshot().get("sts:AssumeRole").copied();
        ev.enter(A).await.unwrap();
        ev.enter(A).await.unwrap();
        assert_eq!(assumed(), Some(1));
        assert!(ev.entered(A).is_some());
        let Err(e) = ev.enter(B).await else {
            panic!("the refused role was entered")
        };
        assert!(is_unreachable(&e), "{e:?}");
        assert!(ev.enter(B).await.is_err());
        assert_eq!(assumed(), Some(2));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(ev.enter(B).await.is_err());
        assert_eq!(assumed(), Some(3));
        assert!(ev.entered(B).is_none());
        // The caller's own account needs no role.
        ev.enter(MGMT).await.unwrap();
        assert_eq!(assumed(), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_entries_of_one_account_assume_its_role_once() {
        let org = org();
        org.set_enter_delay(Duration::from_secs(2));
        org.deny_assume_role(B);
        let config = config("source = \"organization\"");
        let ev = accounts(&org, &config, None).await;
        let assumed = || {
            org.calls
                .snapshot()
                .get("sts:AssumeRole")
                .copied()
                .unwrap_or(0)
        };
        let (one, two, three) = tokio::join!(ev.enter(A), ev.enter(A), ev.enter(A));
        assert_eq!(assumed(), 1, "one entry, shared by the three callers");
        let (one, two, three) = (one.unwrap(), two.unwrap(), three.unwrap());
        assert!(Arc::ptr_eq(&one, &two) && Arc::ptr_eq(&two, &three));
        // A refusal is shared the same way.
        let (x, y) = tokio::join!(ev.enter(B), ev.enter(B));
        assert!(x.is_err() && y.is_err());
        assert_eq!(assumed(), 2);
        // Different accounts are entered side by side.
        org.set_enter_delay(Duration::from_secs(2));
        let start = Instant::now();
        let (m, c) = tokio::join!(ev.enter(MGMT), ev.enter(C));
        assert!(m.is_ok() && c.is_err());
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "not one after the other"
        );
    }
}
