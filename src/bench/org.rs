//! The organization scale benchmark (issue 10): a fleet of many accounts and regions on throttled fakes,
//! its lower bounds (simulated time, API calls), and `run`/`plan` over it on tokio's paused clock.
//!
//! The fleet is an organization behind the accounts port ([`BenchOrg`]), and `run`/`plan` go through the
//! same multi-account orchestrator as the binary ([`run_accounts`]): the organization listed, members
//! entered with `sts:AssumeRole`, `max_concurrent_accounts` at once, one merged report.

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Arc;

use super::throttle::{Class, Limits, ThrottledAws};
use crate::config::{Config, SSM_POLICY_ARN};
use crate::fake::FakeArm;
use crate::fake::FakeAws;
use crate::model::AwsError;
use crate::model::{ApiCounts, InstanceState, Platform};
use crate::ports::{ApiCounter, MutationToken};
use crate::reconcile::accounts::{
    run_accounts, AccountClients, Accounts, Caller, KnownAccount, OrgAccount,
};
use crate::reconcile::pass::{PassError, PassOptions, PassOutcome};

/// SSM role and instance profile every account has (ready instances use them).
const SSM_ROLE: &str = "AzureArcForServerSSM";
const SSM_PROFILE: &str = "AzureArcForServerSSMInstanceProfile";

/// The regions of the benchmark.
pub const REGIONS: [&str; 16] = [
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ca-central-1",
    "sa-east-1",
];

/// The shape of the fleet.
#[derive(Debug, Clone, Copy)]
pub struct FleetSpec {
    /// Accounts.
    pub accounts: usize,
    /// Regions per account (the first `regions` of [`REGIONS`]).
    pub regions: usize,
    /// Instances in all.
    pub instances: usize,
    /// Of which without an instance profile.
    pub need_profile: usize,
    /// Of those, how many sit in the first account's first region.
    pub hot: usize,
    /// Accounts handled at once.
    pub max_concurrent_accounts: usize,
}

impl Default for FleetSpec {
    fn default() -> Self {
        FleetSpec {
            accounts: 100,
            regions: 16,
            instances: 20_000,
            need_profile: 10_000,
            hot: 2_000,
            max_concurrent_accounts: 16,
        }
    }
}

/// One account-region of the fleet.
#[derive(Debug, Clone)]
pub struct RegionLoad {
    /// Region.
    pub region: String,
    /// Instances with the working SSM profile (Online in SSM).
    pub ready: usize,
    /// Instances without a profile.
    pub bare: usize,
}

/// One account of the fleet.
#[derive(Debug, Clone)]
pub struct AccountLoad {
    /// 12-digit id.
    pub id: String,
    /// Its regions.
    pub regions: Vec<RegionLoad>,
}

/// Splits `total` over `slots` as evenly as possible.
fn spread(total: usize, slots: usize, n: usize) -> usize {
    total / slots + usize::from(n < total % slots)
}

/// The fleet: ready instances evenly over every account-region; the instances needing a profile `hot` in
/// the first account-region, the rest evenly over the others.
pub fn fleet(spec: &FleetSpec) -> Vec<AccountLoad> {
    let slots = spec.accounts * spec.regions;
    let ready = spec.instances - spec.need_profile;
    let cold = spec.need_profile - spec.hot;
    (0..spec.accounts)
        .map(|a| AccountLoad {
            id: format!("{:012}", 100_000_000_000u64 + a as u64),
            regions: (0..spec.regions)
                .map(|r| {
                    let slot = a * spec.regions + r;
                    RegionLoad {
                        region: REGIONS[r].to_string(),
                        ready: spread(ready, slots, slot),
                        bare: if slot == 0 {
                            spec.hot
                        } else {
                            spread(cold, slots - 1, slot - 1)
                        },
                    }
                })
                .collect(),
        })
        .collect()
}

/// The configuration every account is run with (all regions listed, no tag filter, a fake Azure).
pub fn config(spec: &FleetSpec) -> Config {
    let regions: Vec<String> = REGIONS[..spec.regions]
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect();
    Config::parse(
        &format!(
            "[aws]\nregions = [{}]\n[aws.accounts]\nsource = \"organization\"\nmax_concurrent_accounts = {}\n[azure]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\nsubscription_id = \"00000000-0000-0000-0000-000000000002\"\nclient_id = \"00000000-0000-0000-0000-000000000003\"\nlocation = \"eastus\"\n",
            regions.join(", "),
            spec.max_concurrent_accounts
        ),
        std::path::Path::new("bench-org"),
    )
    .expect("the benchmark's configuration is valid")
}

/// The simulated accounts.
pub fn world(fleet: &[AccountLoad], limits: Limits) -> Vec<ThrottledAws> {
    let arm = Arc::new(FakeArm::default());
    fleet
        .iter()
        .map(|a| {
            let regions: Vec<&str> = a.regions.iter().map(|r| r.region.as_str()).collect();
            let fake = FakeAws::new(&regions);
            fake.add_role(SSM_ROLE, &[SSM_POLICY_ARN], Some(SSM_PROFILE));
            for r in &a.regions {
                for n in 0..r.ready + r.bare {
                    fake.add_instance(
                        &r.region,
                        &format!(
                            "i-{}{:03}{n:05}",
                            &a.id[6..],
                            REGIONS.iter().position(|x| *x == r.region).unwrap_or(99)
                        ),
                        Platform::Linux,
                        InstanceState::Running,
                        (n < r.ready).then_some(SSM_PROFILE),
                        &[],
                    );
                }
            }
            ThrottledAws::new(&a.id, fake, limits, arm.clone())
        })
        .collect()
}

/// `run` or `plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Observe only.
    Plan,
    /// Apply IAM, install, verify.
    Run,
}

/// Lower bounds of one mode over the fleet.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Slowest account-region's throttle budget: its associations beyond the burst at the refill rate.
    pub throttle: Duration,
    /// Calls that must follow one another: the prefix (caller, listing), then the accounts' chains spread over
    /// `max_concurrent_accounts` slots (never less than the longest chain).
    pub critical_path: Duration,
    /// Minimum AWS calls by operation.
    pub calls: BTreeMap<String, u64>,
}

impl Bounds {
    /// The simulated-time bound: the larger of the two.
    pub fn time(&self) -> Duration {
        self.throttle.max(self.critical_path)
    }

    /// Minimum AWS calls in all.
    pub fn total_calls(&self) -> u64 {
        self.calls.values().sum()
    }
}

/// The lower bounds of `mode` (see the benchmark's output for the reasoning of each line).
pub fn bounds(mode: Mode, spec: &FleetSpec, fleet: &[AccountLoad], limits: &Limits) -> Bounds {
    let mut calls: BTreeMap<String, u64> = BTreeMap::new();
    let mut add = |op: &str, n: usize| *calls.entry(op.to_string()).or_default() += n as u64;
    let mut throttle = Duration::ZERO;
    let mut longest_chain = 0usize;
    let mut chains = 0usize;
    // Who the credentials are, the organization's accounts (pages of 20), a session in every member.
    add("sts:GetCallerIdentity", 1);
    add(
        "organizations:ListAccounts",
        fleet.len().div_ceil(20).max(1),
    );
    add("sts:AssumeRole", fleet.len().saturating_sub(1));
    for a in fleet {
        // The SSM profile and its role's policies (one profile for all).
        add("iam:GetInstanceProfile", 1);
        add("iam:ListAttachedRolePolicies", 1);
        let mut chain = 0;
        for r in &a.regions {
            let n = r.ready + r.bare;
            // The fleet is listed without a tag filter. (With one, the pages are those of the instances
            // carrying the key: in any spelling when `case_sensitive = false`, whatever the value.)
            let describe_pages = n.div_ceil(limits.describe_page).max(1);
            add("ec2:DescribeInstances", describe_pages);
            // Default Host Management Configuration is read where some instance has no profile (at the
            // same time as the associations: not on the chain).
            if r.bare > 0 {
                add("ssm:GetServiceSetting", 1);
            }
            // The instances' profile field lags an association in progress: the associations are read
            // once per region (one page of 1,000 covers every region of this fleet but the hot one).
            add("ec2:DescribeIamInstanceProfileAssociations", describe_pages);
            // Installs of other runs still in flight (one listing per region).
            add("ssm:ListCommands", 1);
            // Only instances with a profile can be registered with SSM.
            add(
                "ssm:DescribeInstanceInformation",
                r.ready.div_ceil(limits.ssm_page),
            );
            // AssumeRole, describe pages, the associations, then the profile and its role.
            let mut region_chain = 1 + 2 * describe_pages + 2;
            if mode == Mode::Run {
                add("ec2:AssociateIamInstanceProfile", r.bare);
                add(
                    "ssm:DescribeInstanceInformation",
                    r.bare.div_ceil(limits.ssm_page),
                );
                // One command text serves up to 50 instances (a tool could hold the ready ones back
                // until the others are Online, so both share batches); each batch is two commands, a
                // key exchange and then the install with the token sealed to its keys.
                let batches = (r.ready + r.bare).div_ceil(50);
                add("ssm:SendCommand", 2 * batches);
                add("ssm:ListCommandInvocations", 2 * batches);
                if batches > 0 {
                    add("ssm:ListCommands", 2);
                }
                // Associate, see it Online, send the key exchange, its status, its invocations, send
                // the install, its status, its invocations.
                region_chain += 8;
                let over = (r.bare as f64 - limits.associate.burst).max(0.0);
                throttle = throttle.max(Duration::from_secs_f64(over / limits.associate.rate));
            }
            chain = chain.max(region_chain);
        }
        longest_chain = longest_chain.max(chain);
        chains += chain;
    }
    // With at most `max_concurrent_accounts` accounts in flight, the accounts' chains take at least their
    // sum spread over that many slots, and never less than the longest one.
    let slots = spec.max_concurrent_accounts.max(1);
    let accounts_time = longest_chain.max(chains.div_ceil(slots));
    // GetCallerIdentity and the listing's pages come before any account.
    let before = 1 + fleet.len().div_ceil(20).max(1);
    Bounds {
        throttle,
        critical_path: limits.latency * (before + accounts_time) as u32,
        calls,
    }
}

/// What one mode measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Simulated time from the first call to the last pass's end.
    pub simulated: Duration,
    /// AWS requests by operation (retries and pages included).
    pub calls: ApiCounts,
    /// Of which answered with a throttling error.
    pub throttled: ApiCounts,
    /// Azure calls by operation.
    pub azure: ApiCounts,
    /// Instances by report status.
    pub by_status: BTreeMap<String, u64>,
    /// Accounts that could not be handled (an account-level error in the report).
    pub failed_accounts: usize,
}

/// The fleet as an organization behind the accounts port: the first account is the caller (the
/// management account); every call takes the simulated latency; Organizations pages hold 20 accounts.
pub struct BenchOrg<'a> {
    accounts: &'a [ThrottledAws],
    /// Organizations and STS calls of the port itself.
    pub calls: ApiCounter,
    latency: Duration,
}

impl<'a> BenchOrg<'a> {
    /// The organization of `accounts`.
    pub fn new(accounts: &'a [ThrottledAws], limits: &Limits) -> BenchOrg<'a> {
        BenchOrg {
            accounts,
            calls: ApiCounter::default(),
            latency: limits.latency,
        }
    }

    async fn call(&self, op: &str) {
        self.calls.record(op);
        tokio::time::sleep(self.latency).await;
    }
}

impl Accounts for BenchOrg<'_> {
    type Ec2 = ThrottledAws;
    type Iam = ThrottledAws;
    type Ssm = ThrottledAws;

    async fn caller(&self) -> Result<Caller, AwsError> {
        self.call("sts:GetCallerIdentity").await;
        let id = self
            .accounts
            .first()
            .map_or("000000000000", |a| a.account());
        Ok(Caller::from_arn(id, None))
    }

    async fn list_accounts(&self) -> Result<Vec<OrgAccount>, AwsError> {
        for _ in 0..self.accounts.len().div_ceil(20).max(1) {
            self.call("organizations:ListAccounts").await;
        }
        Ok(self
            .accounts
            .iter()
            .map(|a| OrgAccount {
                id: a.account().to_string(),
                status: crate::ports::accounts::AccountStatus::Active,
            })
            .collect())
    }

    async fn child_units(&self, _parent: &str) -> Result<Vec<String>, AwsError> {
        self.call("organizations:ListChildren").await;
        Ok(Vec::new())
    }

    async fn accounts_for_parent(&self, _parent: &str) -> Result<Vec<OrgAccount>, AwsError> {
        self.call("organizations:ListAccountsForParent").await;
        Ok(Vec::new())
    }

    async fn enter(
        &self,
        caller: &Caller,
        account_id: &str,
    ) -> Result<AccountClients<ThrottledAws, ThrottledAws, ThrottledAws>, AwsError> {
        let aws = self
            .accounts
            .iter()
            .find(|a| a.account() == account_id)
            .ok_or_else(|| {
                AwsError::from_code("sts:AssumeRole", "AccessDenied", "no such account")
            })?;
        if account_id != caller.account_id {
            aws.request(Class::Unlimited, "global", "sts:AssumeRole")
                .await?;
        }
        Ok(AccountClients {
            sts: KnownAccount(account_id.to_string()),
            ec2: aws.clone(),
            iam: aws.clone(),
            ssm: aws.clone(),
            counter: ApiCounter::default(),
        })
    }

    fn api_calls(&self) -> ApiCounts {
        let mut all = self.calls.snapshot();
        for a in self.accounts {
            merge(&mut all, &a.wire.snapshot());
        }
        all
    }
}

/// `run` (with `token`) or `plan` over the organization, through the binary's orchestrator.
pub async fn orchestrate(
    config: &Config,
    org: &BenchOrg<'_>,
    token: Option<&MutationToken>,
    opts: &PassOptions,
) -> Result<PassOutcome, PassError> {
    let arm = org.accounts.first().map(|a| a.arm.clone());
    run_accounts(
        config,
        org,
        arm.as_deref(),
        token,
        opts,
        None,
        None,
        std::time::SystemTime::now(),
    )
    .await
}

fn merge(into: &mut ApiCounts, from: &ApiCounts) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Runs `mode` over a fresh world of `fleet` and measures it. Call on a paused tokio clock.
pub async fn measure(
    mode: Mode,
    spec: &FleetSpec,
    fleet: &[AccountLoad],
    limits: Limits,
) -> Measured {
    let config = config(spec);
    let accounts = world(fleet, limits);
    let token = MutationToken::mint();
    let opts = PassOptions::default();
    let start = tokio::time::Instant::now();
    let org = BenchOrg::new(&accounts, &limits);
    let outcome = orchestrate(&config, &org, (mode == Mode::Run).then_some(&token), &opts).await;
    let simulated = start.elapsed();
    let mut m = Measured {
        simulated,
        calls: org.calls.snapshot(),
        throttled: ApiCounts::new(),
        azure: ApiCounts::new(),
        by_status: BTreeMap::new(),
        failed_accounts: 0,
    };
    for aws in &accounts {
        merge(&mut m.calls, &aws.wire.snapshot());
        merge(&mut m.throttled, &aws.throttled.snapshot());
    }
    if let Some(a) = accounts.first() {
        merge(&mut m.azure, &a.arm.calls.snapshot());
    }
    match outcome {
        Ok(o) => {
            for row in &o.report.instances {
                *m.by_status.entry(row.status.to_string()).or_default() += 1;
            }
            m.failed_accounts = o
                .report
                .errors
                .iter()
                .filter(|e| e.region.is_none())
                .count();
        }
        Err(e) => {
            tracing::warn!(error = %crate::error::chain(&e), "the pass failed");
            m.failed_accounts = accounts.len();
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simulated-time goal of `run`: 1.15 times the larger of the bound and the tool's own association
    /// pacing in the hot region (`ApplyOptions`: a burst of 80 where AWS allows 100, leaving room for
    /// other clients of the account).
    fn run_time_goal(bound: &Bounds, hot: usize) -> f64 {
        let apply = crate::reconcile::apply::ApplyOptions::default();
        let paced =
            (hot as f64 - f64::from(apply.association_burst)).max(0.0) / apply.association_rate;
        1.15 * bound.time().as_secs_f64().max(paced)
    }

    /// Runs `run` then `plan` over `spec`'s organization through the orchestrator (`run_accounts`, the
    /// code under test) and holds it to the benchmark's goals: every instance onboarded (planned),
    /// associations paced below AWS's bucket (none throttled, none sent twice), simulated time within
    /// 1.15 and calls within 1.2 times their bounds. `throttle_s` is the hot region's throttle budget.
    async fn meets_the_goals(spec: FleetSpec, throttle_s: u64) {
        let f = fleet(&spec);
        let limits = Limits::default();
        let all = spec.instances as u64;
        let op = "ec2:AssociateIamInstanceProfile";
        let run = measure(Mode::Run, &spec, &f, limits).await;
        assert_eq!(run.failed_accounts, 0);
        assert_eq!(
            run.by_status.get("onboarded"),
            Some(&all),
            "{:?}",
            run.by_status
        );
        assert_eq!(run.throttled.get(op), None, "{:?}", run.throttled);
        assert_eq!(run.calls[op], spec.need_profile as u64);
        let bound = bounds(Mode::Run, &spec, &f, &limits);
        assert_eq!(bound.time(), Duration::from_secs(throttle_s));
        assert!(
            run.simulated.as_secs_f64() <= run_time_goal(&bound, spec.hot),
            "{:?} against {:?}",
            run.simulated,
            bound.time()
        );
        within_calls(&run, &bound);
        let plan = measure(Mode::Plan, &spec, &f, limits).await;
        assert_eq!(
            plan.by_status.get("planned"),
            Some(&all),
            "{:?}",
            plan.by_status
        );
        assert!(!plan.calls.contains_key(op));
        let plan_bound = bounds(Mode::Plan, &spec, &f, &limits);
        assert!(
            plan.simulated.as_secs_f64() <= 1.15 * plan_bound.time().as_secs_f64(),
            "{:?} against {:?}",
            plan.simulated,
            plan_bound.time()
        );
        // DHMC's reads included: once per account-region with bare instances.
        within_calls(&plan, &plan_bound);
        assert_eq!(
            plan.calls["ssm:GetServiceSetting"],
            plan_bound.calls["ssm:GetServiceSetting"]
        );
    }

    /// AWS calls within 1.2 times their lower bound.
    fn within_calls(m: &Measured, bound: &Bounds) {
        let made: u64 = m.calls.values().sum();
        assert!(
            made * 10 <= bound.total_calls() * 12,
            "{made} calls, bound {}: {:?}",
            bound.total_calls(),
            m.calls
        );
    }

    /// The shape scaled down: many accounts and regions, one hot account-region beyond the
    /// association burst, fewer accounts at once than there are accounts. A pass that serialised accounts
    /// or regions, outran AWS's association bucket, associated an instance twice, re-listed what it had,
    /// or lost an instance fails here.
    #[tokio::test(start_paused = true)]
    async fn the_orchestrator_meets_the_benchmarks_goals_on_a_scaled_down_organization() {
        let spec = FleetSpec {
            accounts: 12,
            regions: 4,
            instances: 2_400,
            need_profile: 1_200,
            hot: 400,
            max_concurrent_accounts: 4,
        };
        // (400 - 100) / 5 = 60 s of throttle budget in the hot region.
        meets_the_goals(spec, 60).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_fleet_is_onboarded_within_its_bounds_on_the_paused_clock() {
        let spec = FleetSpec {
            accounts: 4,
            regions: 2,
            instances: 400,
            need_profile: 300,
            hot: 200,
            max_concurrent_accounts: 2,
        };
        // (200 - 100) / 5 = 20 s.
        meets_the_goals(spec, 20).await;
    }
}
