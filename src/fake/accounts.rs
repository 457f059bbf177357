//! An organization of fake accounts behind the [`Accounts`] port: accounts placed under roots and OUs,
//! statuses, roles that cannot be assumed, a denied Organizations API, and a record of how many accounts
//! were entered at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::fake::FakeArm;
use crate::fake::FakeAws;
use crate::model::{ApiCounts, AwsError};
use crate::ports::accounts::{AccountClients, Accounts, Caller, KnownAccount, OrgAccount};
use crate::ports::ApiCounter;

#[derive(Debug, Default)]
struct Org {
    accounts: BTreeMap<String, (FakeAws, String)>,
    /// parent -> (accounts, child OUs)
    tree: BTreeMap<String, (Vec<String>, Vec<String>)>,
    denied_roles: BTreeSet<String>,
    organization_denied: bool,
    enter_delay: Duration,
}

/// A fake organization; the caller is `caller`'s account.
#[derive(Debug)]
pub struct FakeAccounts {
    caller: String,
    org: Mutex<Org>,
    /// Organizations and STS calls of this port itself.
    pub calls: ApiCounter,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl FakeAccounts {
    /// An empty organization whose management (caller) account is `caller`.
    pub fn new(caller: &str) -> FakeAccounts {
        FakeAccounts {
            caller: caller.to_string(),
            org: Mutex::new(Org::default()),
            calls: ApiCounter::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Org> {
        self.org.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or replaces) an ACTIVE account.
    pub fn add_account(&self, id: &str, aws: FakeAws) {
        self.lock()
            .accounts
            .insert(id.to_string(), (aws, "ACTIVE".to_string()));
    }

    /// The fake of one account.
    pub fn account(&self, id: &str) -> FakeAws {
        self.lock().accounts[id].0.clone()
    }

    /// Sets an account's status (`SUSPENDED`, ...).
    pub fn set_status(&self, id: &str, status: &str) {
        if let Some(a) = self.lock().accounts.get_mut(id) {
            a.1 = status.to_string();
        }
    }

    /// Places `accounts` and child `units` directly under `parent` (a root or OU id).
    pub fn place(&self, parent: &str, accounts: &[&str], units: &[&str]) {
        let mut org = self.lock();
        let entry = org.tree.entry(parent.to_string()).or_default();
        entry.0.extend(accounts.iter().map(|s| s.to_string()));
        entry.1.extend(units.iter().map(|s| s.to_string()));
    }

    /// `sts:AssumeRole` into `id` answers AccessDenied.
    pub fn deny_assume_role(&self, id: &str) {
        self.lock().denied_roles.insert(id.to_string());
    }

    /// Every Organizations call answers AccessDeniedException (not the management account).
    pub fn deny_organization(&self) {
        self.lock().organization_denied = true;
    }

    /// Entering an account takes this long (to observe concurrency).
    pub fn set_enter_delay(&self, d: Duration) {
        self.lock().enter_delay = d;
    }

    /// The most accounts that were being entered at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Makes successful installs in every account connect machines in `arm`, each in `aws_{account}`.
    pub fn link_arm(&self, arm: Arc<FakeArm>) {
        for (id, (aws, _)) in &self.lock().accounts {
            aws.link_arm(arm.clone(), &format!("aws_{id}"));
        }
    }

    /// Mutating calls made in all accounts so far (`sts:AssumeRole` changes nothing in an account).
    pub fn mutating_calls(&self) -> u64 {
        self.api_calls()
            .iter()
            .filter(|(op, _)| op.as_str() != "sts:AssumeRole")
            .filter(|(op, _)| {
                let action = op.split(':').nth(1).unwrap_or_default();
                !["Describe", "Get", "List"]
                    .iter()
                    .any(|p| action.starts_with(p))
            })
            .map(|(_, n)| *n)
            .sum()
    }

    fn organizations(&self, operation: &str) -> Result<(), AwsError> {
        self.calls.record(operation);
        if self.lock().organization_denied {
            return Err(AwsError::from_code(
                operation,
                "AccessDeniedException",
                "You don't have permissions to access this resource.",
            ));
        }
        Ok(())
    }

    fn listed(&self, ids: impl IntoIterator<Item = String>) -> Vec<OrgAccount> {
        let org = self.lock();
        ids.into_iter()
            .filter_map(|id| {
                org.accounts.get(&id).map(|(_, status)| OrgAccount {
                    id: id.clone(),
                    status: crate::ports::accounts::AccountStatus::parse(status),
                })
            })
            .collect()
    }
}

impl Accounts for FakeAccounts {
    type Ec2 = FakeAws;
    type Iam = FakeAws;
    type Ssm = FakeAws;

    async fn caller(&self) -> Result<Caller, AwsError> {
        self.calls.record("sts:GetCallerIdentity");
        Ok(Caller::from_arn(
            &self.caller,
            Some(&format!("arn:aws:iam::{}:user/admin", self.caller)),
        ))
    }

    async fn list_accounts(&self) -> Result<Vec<OrgAccount>, AwsError> {
        self.organizations("organizations:ListAccounts")?;
        let ids: Vec<String> = self.lock().accounts.keys().cloned().collect();
        Ok(self.listed(ids))
    }

    async fn child_units(&self, parent: &str) -> Result<Vec<String>, AwsError> {
        self.organizations("organizations:ListChildren")?;
        Ok(self
            .lock()
            .tree
            .get(parent)
            .map(|(_, units)| units.clone())
            .unwrap_or_default())
    }

    async fn accounts_for_parent(&self, parent: &str) -> Result<Vec<OrgAccount>, AwsError> {
        self.organizations("organizations:ListAccountsForParent")?;
        let ids = self
            .lock()
            .tree
            .get(parent)
            .map(|(accounts, _)| accounts.clone())
            .unwrap_or_default();
        Ok(self.listed(ids))
    }

    async fn enter(
        &self,
        caller: &Caller,
        account_id: &str,
    ) -> Result<AccountClients<FakeAws, FakeAws, FakeAws>, AwsError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let delay = self.lock().enter_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if account_id != caller.account_id {
            self.calls.record("sts:AssumeRole");
            if self.lock().denied_roles.contains(account_id) {
                return Err(AwsError::from_code(
                    "sts:AssumeRole",
                    "AccessDenied",
                    "not authorized to perform sts:AssumeRole",
                ));
            }
        }
        let aws = self
            .lock()
            .accounts
            .get(account_id)
            .map(|(aws, _)| aws.clone())
            .ok_or_else(|| {
                AwsError::from_code(
                    "sts:AssumeRole",
                    "AccessDenied",
                    "no such account in the fake organization",
                )
            })?;
        Ok(AccountClients {
            sts: KnownAccount(account_id.to_string()),
            counter: aws.calls.clone(),
            ec2: aws.clone(),
            iam: aws.clone(),
            ssm: aws,
        })
    }

    fn api_calls(&self) -> ApiCounts {
        let mut all = self.calls.snapshot();
        for (aws, _) in self.lock().accounts.values() {
            for (op, n) in aws.calls.snapshot() {
                *all.entry(op).or_default() += n;
            }
        }
        all
    }
}
