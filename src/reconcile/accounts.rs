//! Every account in scope in one pass: which accounts (`[aws.accounts]`, `--shard`), entering each (the
//! caller's own credentials, or `sts:AssumeRole` on the member role), one [`run_pass`] per account with at
//! most `max_concurrent_accounts` at once, and one merged report.
//!
//! # Guarantees
//! - One account failing (its role cannot be assumed, its regions cannot be listed) is an `errors[]` entry
//!   naming it; the other accounts proceed.
//! - The organization's listing failing is an `errors[]` entry (`organizations:ListAccounts`, or the OU call
//!   that failed); the OUs that could be listed proceed.
//! - `exclude` always wins; the shard selection comes last.
//!
//! Generic over [`Accounts`], so the same code runs against the SDK ([`crate::adapters::organizations`])
//! and the in-memory fakes (benchmarks, tests).

use std::collections::{BTreeSet, VecDeque};
use std::time::SystemTime;

use futures::StreamExt;
use tracing::{info, info_span, warn, Instrument};

use crate::config::{AccountSource, AccountsConfig, Config, Shard};
pub use crate::ports::accounts::{
    AccountClients, Accounts, Caller, Entered, KnownAccount, OrgAccount,
};
use crate::ports::{Arm, Ec2, Iam, MutationToken, Ssm};
use crate::reconcile::pass::{
    require_azure, run_pass, AwsPorts, Durable, PassError, PassOptions, PassOutcome,
};
use crate::reconcile::report::{AccountReport, Mode, Report, ReportError};

impl<E: Ec2, I: Iam, S: Ssm> AccountClients<E, I, S> {
    /// The ports as [`run_pass`] takes them.
    pub fn ports(&self) -> AwsPorts<'_, KnownAccount, E, I, S> {
        AwsPorts {
            sts: &self.sts,
            ec2: &self.ec2,
            iam: &self.iam,
            ssm: &self.ssm,
            counter: &self.counter,
        }
    }
}

/// The accounts a pass covers, and what could not be listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InScope {
    /// Sorted, unique, excluded and sharded.
    pub accounts: Vec<String>,
    /// Listing failures (account = the caller's, region = null).
    pub errors: Vec<ReportError>,
}

/// Resolves `[aws.accounts]` into the accounts to handle: the source, only ACTIVE accounts, then
/// `exclude`, then the shard.
pub async fn accounts_in_scope<X: Accounts>(
    accounts: &X,
    cfg: &AccountsConfig,
    caller: &Caller,
    shard: Option<Shard>,
) -> InScope {
    let mut errors = Vec::new();
    let found: Vec<String> = match cfg.source {
        AccountSource::Caller => vec![caller.account_id.clone()],
        AccountSource::List => cfg.ids.clone(),
        AccountSource::Organization if cfg.organizational_units.is_empty() => {
            match accounts.list_accounts().await {
                Ok(list) => active_ids(list),
                Err(e) => {
                    warn!(code = %e.code, "cannot list the organization's accounts");
                    errors.push(ReportError::account(&caller.account_id, &e));
                    Vec::new()
                }
            }
        }
        AccountSource::Organization => {
            let mut ids = Vec::new();
            let mut queue: VecDeque<String> = cfg.organizational_units.iter().cloned().collect();
            let mut seen: BTreeSet<String> = queue.iter().cloned().collect();
            while let Some(parent) = queue.pop_front() {
                match accounts.accounts_for_parent(&parent).await {
                    Ok(list) => ids.extend(active_ids(list)),
                    Err(e) => {
                        warn!(parent = %parent, code = %e.code, "cannot list the accounts of an organizational unit");
                        errors.push(ReportError::account(&caller.account_id, &e));
                    }
                }
                match accounts.child_units(&parent).await {
                    Ok(children) => {
                        for child in children {
                            if seen.insert(child.clone()) {
                                queue.push_back(child);
                            }
                        }
                    }
                    Err(e) => {
                        warn!(parent = %parent, code = %e.code, "cannot list the organizational units under a parent");
                        errors.push(ReportError::account(&caller.account_id, &e));
                    }
                }
            }
            ids
        }
    };
    let selected: BTreeSet<String> = found
        .into_iter()
        .filter(|id| !cfg.exclude.contains(id))
        .filter(|id| shard.is_none_or(|s| s.selects(id)))
        .collect();
    InScope {
        accounts: selected.into_iter().collect(),
        errors,
    }
}

fn active_ids(list: Vec<OrgAccount>) -> Vec<String> {
    list.into_iter()
        .filter(OrgAccount::is_active)
        .map(|a| a.id)
        .collect()
}

/// What one account's pass produced.
enum AccountResult {
    /// The pass ran.
    Done(Box<PassOutcome>),
    /// The account could not be entered or observed at all.
    Failed(ReportError),
}

/// Runs [`run_pass`] for every account in scope, at most `max_concurrent_accounts` at once, and merges
/// the results into one report. `no_region_reachable` of the outcome is true when nothing at all could be
/// handled (every account failed or reached no region, or the organization could not be listed) while
/// something was in scope or failed.
#[allow(clippy::too_many_arguments)]
pub async fn run_accounts<X: Accounts, A: Arm>(
    config: &Config,
    accounts: &X,
    arm: Option<&A>,
    token: Option<&MutationToken>,
    opts: &PassOptions,
    durable: Option<&Durable<'_>>,
    shard: Option<Shard>,
    now: SystemTime,
) -> Result<PassOutcome, PassError> {
    let started = now;
    require_azure(config, arm, token).await?;
    let caller = accounts.caller().await.map_err(PassError::Account)?;
    let scope = accounts_in_scope(accounts, &config.aws.accounts, &caller, shard).await;
    info!(
        accounts = scope.accounts.len(),
        source = config.aws.accounts.source.as_str(),
        shard = %shard.map_or_else(|| "-".to_string(), |s| s.to_string()),
        "accounts in scope"
    );
    let limit = config.aws.accounts.max_concurrent_accounts.max(1);
    let caller_ref = &caller;
    let results: Vec<(String, AccountResult)> = futures::stream::iter(scope.accounts.iter())
        .map(|id| async move {
            let span = info_span!("account", account = %id);
            let result = async {
                let clients = match accounts.enter(caller_ref, id).await {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(operation = %e.operation, code = %e.code, "cannot enter the account");
                        return AccountResult::Failed(ReportError::account(id, &e));
                    }
                };
                match run_pass(config, &clients.ports(), arm, token, opts, durable, now).await {
                    Ok(outcome) => AccountResult::Done(Box::new(outcome)),
                    Err(e) => {
                        warn!(error = %crate::error::chain(&e), "the account's pass failed");
                        AccountResult::Failed(pass_error(id, &e))
                    }
                }
            }
            .instrument(span)
            .await;
            (id.clone(), result)
        })
        .buffer_unordered(limit)
        .collect()
        .await;

    let mut results = results;
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut reports = Vec::new();
    let mut unhandled = Vec::new();
    let mut errors = scope.errors;
    let mut handled_any = false;
    for (id, result) in results {
        match result {
            AccountResult::Done(outcome) => {
                handled_any |= !outcome.no_region_reachable;
                reports.push(outcome.report);
            }
            AccountResult::Failed(error) => {
                unhandled.push(AccountReport {
                    account_id: id,
                    actions: Vec::new(),
                    ssm_role_steps: None,
                    detail: Some(format!(
                        "not handled: {} {}: {}",
                        error.operation, error.code, error.message
                    )),
                    resource_group: None,
                    batches: Vec::new(),
                });
                errors.push(error);
            }
        }
    }
    let attempted = !scope.accounts.is_empty() || !errors.is_empty();
    let mode = if token.is_some() && arm.is_some() {
        Mode::Run
    } else {
        Mode::Plan
    };
    let report = Report::merge(
        mode,
        (started, opts.install.clock.now()),
        reports,
        unhandled,
        errors,
        accounts.api_calls(),
    );
    Ok(PassOutcome {
        report,
        no_region_reachable: attempted && !handled_any,
    })
}

/// A pass that could not start in an account, as an `errors[]` entry.
fn pass_error(account_id: &str, e: &PassError) -> ReportError {
    match e {
        PassError::Account(e) | PassError::Regions(e) => ReportError::account(account_id, e),
        other => ReportError {
            account_id: account_id.to_string(),
            region: None,
            operation: "azure:token".into(),
            code: match other {
                PassError::Azure(e) => e.code(),
                _ => "azure-missing".into(),
            },
            message: crate::error::chain(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::SSM_POLICY_ARN;
    use crate::fake::accounts::FakeAccounts;
    use crate::fake::FakeArm;
    use crate::fake::FakeAws;
    use crate::model::{InstanceState, Platform};
    use crate::reconcile::apply::ApplyOptions;
    use crate::reconcile::onboard::InstallOptions;
    use crate::reconcile::plan::Status;

    const MGMT: &str = "100000000000";
    const A: &str = "200000000001";
    const B: &str = "200000000002";
    const C: &str = "200000000003";
    const D: &str = "200000000004";
    const AZURE: &str = "[azure]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\nsubscription_id = \"00000000-0000-0000-0000-000000000002\"\nclient_id = \"00000000-0000-0000-0000-000000000003\"\nlocation = \"eastus\"\n";

    fn config(accounts: &str) -> Config {
        let text = format!(
            "[aws]\nregions = [\"us-east-1\", \"eu-west-1\"]\n[aws.accounts]\n{accounts}\n{AZURE}"
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    /// An organization: root r-root0 holds MGMT and OU ou-root-aaaaaaaa (holding A and child OU
    /// ou-root-bbbbbbbb with B and suspended D); C sits in ou-root-cccccccc directly under the root.
    fn org() -> FakeAccounts {
        let org = FakeAccounts::new(MGMT);
        for id in [MGMT, A, B, C, D] {
            let aws = FakeAws::new(&["us-east-1", "eu-west-1"]).with_account(id);
            aws.add_role("AppRole", &[SSM_POLICY_ARN], Some("AppProfile"));
            aws.add_instance(
                "us-east-1",
                &format!("i-{id}"),
                Platform::Linux,
                InstanceState::Running,
                Some("AppProfile"),
                &[],
            );
            org.add_account(id, aws);
        }
        org.set_status(D, "SUSPENDED");
        org.place(
            "r-root0",
            &[MGMT],
            &["ou-root-aaaaaaaa", "ou-root-cccccccc"],
        );
        org.place("ou-root-aaaaaaaa", &[A], &["ou-root-bbbbbbbb"]);
        org.place("ou-root-bbbbbbbb", &[B, D], &[]);
        org.place("ou-root-cccccccc", &[C], &[]);
        org
    }

    async fn scope(org: &FakeAccounts, accounts: &str, shard: Option<Shard>) -> InScope {
        let cfg = config(accounts);
        let caller = org.caller().await.unwrap();
        accounts_in_scope(org, &cfg.aws.accounts, &caller, shard).await
    }

    #[tokio::test]
    async fn the_caller_source_is_only_the_callers_account() {
        let s = scope(&org(), "source = \"caller\"", None).await;
        assert_eq!(s.accounts, [MGMT]);
    }

    #[tokio::test]
    async fn an_organization_is_every_active_account_and_exclude_wins() {
        let org = org();
        let s = scope(&org, "source = \"organization\"", None).await;
        assert_eq!(s.accounts, [MGMT, A, B, C], "D is suspended");
        let s = scope(
            &org,
            &format!("source = \"organization\"\nexclude = [\"{B}\"]"),
            None,
        )
        .await;
        assert_eq!(s.accounts, [MGMT, A, C]);
        let s = scope(
            &org,
            &format!("source = \"list\"\nids = [\"{A}\", \"{C}\"]\nexclude = [\"{C}\"]"),
            None,
        )
        .await;
        assert_eq!(s.accounts, [A]);
    }

    #[tokio::test]
    async fn organizational_units_are_followed_recursively() {
        let org = org();
        let s = scope(
            &org,
            "source = \"organization\"\norganizational_units = [\"ou-root-aaaaaaaa\"]",
            None,
        )
        .await;
        assert_eq!(
            s.accounts,
            [A, B],
            "A directly, B through the child OU; not C"
        );
        assert!(s.errors.is_empty());
        let s = scope(
            &org,
            "source = \"organization\"\norganizational_units = [\"r-root0\"]",
            None,
        )
        .await;
        assert_eq!(s.accounts, [MGMT, A, B, C]);
    }

    #[tokio::test]
    async fn a_shard_takes_the_ids_whose_remainder_is_its_index() {
        let org = org();
        let all = [MGMT, A, B, C];
        let mut union = Vec::new();
        for index in 0..3 {
            let shard = Shard { index, count: 3 };
            let s = scope(&org, "source = \"organization\"", Some(shard)).await;
            for id in &s.accounts {
                assert_eq!(id.parse::<u64>().unwrap() % 3, index, "{id}");
            }
            union.extend(s.accounts);
        }
        union.sort();
        assert_eq!(union, all, "the shards together cover every account once");
    }

    #[tokio::test]
    async fn a_denied_organization_listing_is_an_error_naming_the_call() {
        let org = org();
        org.deny_organization();
        let s = scope(&org, "source = \"organization\"", None).await;
        assert!(s.accounts.is_empty());
        assert_eq!(s.errors.len(), 1);
        assert_eq!(s.errors[0].operation, "organizations:ListAccounts");
        assert_eq!(s.errors[0].code, "AccessDeniedException");
        assert_eq!(s.errors[0].account_id, MGMT);
        assert_eq!(s.errors[0].region, None);
    }

    fn opts() -> PassOptions {
        PassOptions {
            apply: ApplyOptions {
                wait_for_ssm: Duration::ZERO,
                propagation_timeout: Duration::from_secs(1),
                ..ApplyOptions::default()
            },
            install: InstallOptions {
                verify_timeout: Duration::from_secs(2),
                ..InstallOptions::default()
            },
            ..PassOptions::default()
        }
    }

    async fn pass(org: &FakeAccounts, cfg: &Config, mutate: bool) -> PassOutcome {
        let arm = Arc::new(FakeArm::default());
        org.link_arm(arm.clone());
        let token = MutationToken::mint();
        let token = mutate.then_some(&token);
        run_accounts(
            cfg,
            org,
            Some(arm.as_ref()),
            token,
            &opts(),
            None,
            None,
            SystemTime::now(),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_denied_role_is_an_error_and_the_other_accounts_are_onboarded() {
        let org = org();
        org.deny_assume_role(B);
        let cfg = config("source = \"organization\"");
        let out = pass(&org, &cfg, true).await;
        let r = &out.report;
        assert!(!out.no_region_reachable);
        let ids: Vec<&str> = r.accounts.iter().map(|a| a.account_id.as_str()).collect();
        assert_eq!(ids, [MGMT, A, B, C], "every account in scope is listed");
        assert_eq!(r.errors.len(), 1, "{}", r.to_json());
        let e = &r.errors[0];
        assert_eq!(
            (
                e.account_id.as_str(),
                e.region.as_deref(),
                e.operation.as_str(),
                e.code.as_str()
            ),
            (B, None, "sts:AssumeRole", "AccessDenied")
        );
        for id in [MGMT, A, C] {
            let row = r
                .instances
                .iter()
                .find(|i| i.instance_id == format!("i-{id}"))
                .unwrap();
            assert_eq!(row.account_id, id);
            assert_eq!(row.status, Status::Onboarded, "{}", r.to_json());
        }
        assert!(!r.instances.iter().any(|i| i.account_id == B));
        assert!(r.has_failures(), "exit 1");
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["errors"][0]["region"], serde_json::Value::Null);
    }

    #[tokio::test]
    async fn a_region_error_in_one_account_leaves_the_rest() {
        let org = org();
        org.account(A).fail(
            "ec2:DescribeInstances",
            "eu-west-1",
            "UnauthorizedOperation",
        );
        let cfg = config("source = \"organization\"");
        let out = pass(&org, &cfg, false).await;
        let r = &out.report;
        assert_eq!(r.errors.len(), 1, "{}", r.to_json());
        assert_eq!(r.errors[0].account_id, A);
        assert_eq!(r.errors[0].region.as_deref(), Some("eu-west-1"));
        assert_eq!(r.instances.len(), 4);
        assert!(r
            .instances
            .iter()
            .all(|i| i.status == Status::AlreadyOnboarded || i.status == Status::Planned));
    }

    #[tokio::test]
    async fn nothing_handled_when_the_organization_cannot_be_listed() {
        let org = org();
        org.deny_organization();
        let cfg = config("source = \"organization\"");
        let out = pass(&org, &cfg, false).await;
        assert!(out.no_region_reachable, "exit 2: nothing could be handled");
        assert_eq!(out.report.errors.len(), 1);
    }

    #[tokio::test]
    async fn accounts_run_concurrently_up_to_the_limit() {
        let org = org();
        org.set_enter_delay(Duration::from_millis(100));
        let cfg = config("source = \"organization\"\nmax_concurrent_accounts = 2");
        let out = pass(&org, &cfg, false).await;
        assert_eq!(out.report.accounts.len(), 4);
        assert_eq!(org.max_in_flight(), 2, "two at once, never more");
        let cfg = config("source = \"organization\"\nmax_concurrent_accounts = 1");
        let org = self::org();
        org.set_enter_delay(Duration::from_millis(10));
        pass(&org, &cfg, false).await;
        assert_eq!(org.max_in_flight(), 1);
    }

    #[tokio::test]
    async fn each_account_gets_its_own_resource_group_and_a_second_run_changes_nothing() {
        let org = org();
        // A lacks the SSM role: it is created in A only.
        let bare = FakeAws::new(&["us-east-1"]).with_account(A);
        bare.add_instance(
            "us-east-1",
            "i-bare",
            Platform::Linux,
            InstanceState::Running,
            None,
            &[],
        );
        org.add_account(A, bare);
        let cfg = config(&format!("source = \"list\"\nids = [\"{MGMT}\", \"{A}\"]"));
        let arm = Arc::new(FakeArm::default());
        org.link_arm(arm.clone());
        let token = MutationToken::mint();
        let o = opts();
        let first = run_accounts(
            &cfg,
            &org,
            Some(arm.as_ref()),
            Some(&token),
            &o,
            None,
            None,
            SystemTime::now(),
        )
        .await
        .unwrap();
        let a = first
            .report
            .accounts
            .iter()
            .find(|a| a.account_id == A)
            .unwrap();
        assert!(
            a.actions.contains(&"create-ssm-role"),
            "{}",
            first.report.to_json()
        );
        let m = first
            .report
            .accounts
            .iter()
            .find(|a| a.account_id == MGMT)
            .unwrap();
        assert!(
            !m.actions.contains(&"create-ssm-role"),
            "{}",
            first.report.to_json()
        );
        assert!(arm.has_group(&format!("aws_{MGMT}")));
        assert!(arm.has_group(&format!("aws_{A}")));
        let before = org.mutating_calls();
        let calls_before = org.api_calls();
        let second = run_accounts(
            &cfg,
            &org,
            Some(arm.as_ref()),
            Some(&token),
            &o,
            None,
            None,
            SystemTime::now(),
        )
        .await
        .unwrap();
        assert_eq!(
            org.mutating_calls(),
            before,
            "{calls_before:?} -> {:?}",
            org.api_calls()
        );
        assert!(second
            .report
            .instances
            .iter()
            .all(|i| i.status == Status::AlreadyOnboarded || i.status == Status::WaitingForSsm));
    }
}
