//! Executes the IAM part of a plan: the account-level `create-ssm-role`, role patches and profile fixes once
//! per role or profile, and instance profile associations per region under a rate bound. Per-instance
//! failures become data in the plan's rows; nothing here aborts the pass.
//!
//! # Guarantees
//! - Only the actions in the plan are executed; an instance with correct IAM is never named in a call.
//! - Each role is patched at most once per pass, each profile fixed at most once, however many instances
//!   share it.
//! - Associations never exceed the per-region token bucket (EC2 allows a burst of 100 and 5 a second).
//!
//! # Caveats
//! - An instance that gained a profile since it was observed (`IncorrectState`) is re-observed and left
//!   alone; the next pass evaluates it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::stream::{self, StreamExt};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, info_span, warn, Instrument};

use crate::config::SSM_POLICY_ARN;
use crate::model::{AwsError, AwsErrorKind, InstanceState, PingStatus};
use crate::ports::progress::ProgressPort;
use crate::ports::{Ec2, Iam, MutationToken, Ssm};
use crate::reconcile::observe::{profile_name_from_arn, REGION_CONCURRENCY};
use crate::reconcile::outcome::{AccountOutcome, InstanceOutcome};
use crate::reconcile::plan::{
    AccountPlan, Failure, FailureStep, InstanceAction, SsmRoleSteps, Status,
};

/// Bounds for the apply phase.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Associations in flight at once per region.
    pub association_concurrency: usize,
    /// Token bucket burst per account and region.
    pub association_burst: u32,
    /// Token bucket refill per second.
    pub association_rate: f64,
    /// How long a freshly created instance profile may be rejected by EC2 before the instance fails.
    pub propagation_timeout: Duration,
    /// How long to wait for instances to come Online in SSM after IAM changes (`--wait-for-ssm`).
    pub wait_for_ssm: Duration,
    /// How often to ask SSM while waiting.
    pub ssm_poll_interval: Duration,
    /// Where the wait for SSM registration is reported.
    pub progress: ProgressPort,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            association_concurrency: 10,
            association_burst: 80,
            association_rate: 5.0,
            propagation_timeout: Duration::from_secs(150),
            wait_for_ssm: Duration::from_secs(15 * 60),
            ssm_poll_interval: Duration::from_secs(15),
            progress: ProgressPort::default(),
        }
    }
}

/// A token bucket on tokio's clock (so paused-time tests see it).
pub struct TokenBucket {
    burst: f64,
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate` per second.
    pub fn new(burst: u32, rate: f64) -> TokenBucket {
        TokenBucket {
            burst: f64::from(burst.max(1)),
            rate: rate.max(0.001),
            state: Mutex::new((f64::from(burst.max(1)), Instant::now())),
        }
    }

    /// Takes one token, waiting for the refill when the bucket is empty.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().await;
                let now = Instant::now();
                let refilled = state.0 + now.duration_since(state.1).as_secs_f64() * self.rate;
                *state = (refilled.min(self.burst), now);
                if state.0 >= 1.0 {
                    state.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - state.0) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

fn is_propagation_error(e: &AwsError) -> bool {
    e.kind == AwsErrorKind::InvalidParameter
        && e.message.to_ascii_lowercase().contains("instance profile")
}

fn fail(row: &mut InstanceOutcome, action: &str, e: &AwsError) {
    row.fail(Failure::new(
        FailureStep::Iam,
        e.code.clone(),
        format!("{action}: {}", e.message),
    ));
}

/// Runs `create-ssm-role`. Returns a description of what was done, or the error that stopped it.
async fn create_ssm_role(
    token: &MutationToken,
    iam: &impl Iam,
    plan: &AccountPlan,
    steps: &SsmRoleSteps,
) -> Result<String, AwsError> {
    let mut done = Vec::new();
    let tolerate_exists = |r: Result<(), AwsError>| match r {
        Err(e) if e.code == "EntityAlreadyExists" => Ok(()),
        other => other,
    };
    if steps.create_role {
        tolerate_exists(iam.create_role(token, &plan.role_name).await.map(|_| ()))?;
        done.push(format!("created role {}", plan.role_name));
    }
    if steps.attach_policy {
        iam.attach_role_policy(token, &plan.role_name, SSM_POLICY_ARN)
            .await?;
        done.push("attached AmazonSSMManagedInstanceCore".to_string());
    }
    if steps.create_profile {
        tolerate_exists(
            iam.create_instance_profile(token, &plan.profile_name)
                .await
                .map(|_| ()),
        )?;
        done.push(format!("created instance profile {}", plan.profile_name));
    }
    if steps.add_role_to_profile {
        iam.add_role_to_instance_profile(token, &plan.profile_name, &plan.role_name)
            .await?;
        done.push("added the role to the profile".to_string());
    }
    Ok(done.join(", "))
}

/// Executes the IAM actions of `plan`, moving each instance's outcome on. Returns the account-level
/// outcome for the report (`None` when there was no account action).
pub async fn apply_iam(
    token: &MutationToken,
    plan: &AccountPlan,
    out: &mut AccountOutcome,
    ec2: &impl Ec2,
    iam: &impl Iam,
    opts: &ApplyOptions,
) -> Option<String> {
    let mut account_detail = None;
    if let Some(steps) = plan.create_ssm_role.clone() {
        match create_ssm_role(token, iam, plan, &steps).await {
            Ok(done) => {
                info!(account = %plan.account_id, %done, "SSM role ready");
                account_detail = Some(format!("create-ssm-role done: {done}"));
            }
            Err(e) => {
                warn!(account = %plan.account_id, error = %e, "create-ssm-role failed");
                account_detail = Some(format!("create-ssm-role failed: {}: {}", e.code, e.message));
                for (row, o) in plan.instances.iter().zip(&mut out.instances) {
                    if row.needs_ssm_role {
                        fail(o, "create-ssm-role", &e);
                    }
                }
            }
        }
    }

    // Role patches and profile fixes: once per role / profile.
    let mut roles: BTreeSet<String> = BTreeSet::new();
    let mut profiles: BTreeSet<(String, String)> = BTreeSet::new();
    let live = |n: &usize| out.instances[*n].status != Status::Failed;
    for row in (0..plan.instances.len())
        .filter(live)
        .map(|n| &plan.instances[n])
    {
        for action in &row.actions {
            match action {
                InstanceAction::AttachRolePolicy { role } => {
                    roles.insert(role.clone());
                }
                InstanceAction::AddRoleToInstanceProfile { profile, role } => {
                    profiles.insert((profile.clone(), role.clone()));
                }
                _ => {}
            }
        }
    }
    let mut role_results: BTreeMap<String, Result<(), AwsError>> = BTreeMap::new();
    for role in roles {
        let r = iam.attach_role_policy(token, &role, SSM_POLICY_ARN).await;
        role_results.insert(role, r);
    }
    let mut profile_results: BTreeMap<String, Result<(), AwsError>> = BTreeMap::new();
    for (profile, role) in profiles {
        let r = iam
            .add_role_to_instance_profile(token, &profile, &role)
            .await;
        profile_results.insert(profile, r);
    }
    for (row, o) in plan.instances.iter().zip(&mut out.instances) {
        if o.status == Status::Failed {
            continue;
        }
        let mut failure = None;
        for action in &row.actions {
            let result = match action {
                InstanceAction::AttachRolePolicy { role } => role_results.get(role),
                InstanceAction::AddRoleToInstanceProfile { profile, .. } => {
                    profile_results.get(profile)
                }
                _ => None,
            };
            if let Some(Err(e)) = result {
                failure = Some((action.as_str(), e.clone()));
            }
        }
        if let Some((action, e)) = failure {
            fail(o, action, &e);
        }
    }

    // Associations, per region in parallel, each region under its own bucket.
    let mut by_region: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (n, row) in plan.instances.iter().enumerate() {
        let associates = row
            .actions
            .iter()
            .any(|a| matches!(a, InstanceAction::AssociateInstanceProfile { .. }));
        if associates && out.instances[n].status != Status::Failed {
            by_region.entry(row.region.clone()).or_default().push(n);
        }
    }
    let account = plan.account_id.clone();
    let profile = plan.profile_name.clone();
    let jobs: Vec<(String, Vec<(usize, String)>)> = by_region
        .into_iter()
        .map(|(region, rows)| {
            let ids = rows
                .into_iter()
                .map(|n| (n, plan.instances[n].instance_id.clone()))
                .collect();
            (region, ids)
        })
        .collect();
    let outcomes: Vec<(String, Vec<AssociationResult>)> = stream::iter(jobs)
        .map(|(region, ids)| {
            let span = info_span!("associate", account = %account, region = %region);
            let profile = profile.clone();
            async move {
                let results = associate_region(token, ec2, &region, &profile, ids, opts).await;
                (region, results)
            }
            .instrument(span)
        })
        .buffer_unordered(REGION_CONCURRENCY)
        .collect()
        .await;
    for (region, results) in outcomes {
        let mut raced = Vec::new();
        for (n, result) in results {
            match result {
                Ok(association) => {
                    info!(instance.id = %plan.instances[n].instance_id, %region, association = %association, "profile associated");
                }
                Err(e) if e.kind == AwsErrorKind::IncorrectState => raced.push(n),
                Err(e) => fail(&mut out.instances[n], "associate-instance-profile", &e),
            }
        }
        if !raced.is_empty() {
            reobserve_raced(plan, out, ec2, &region, &raced).await;
        }
    }
    account_detail
}

/// Row index and the association id, or why it failed.
type AssociationResult = (usize, Result<String, AwsError>);

/// Associations for one region: bounded concurrency, token bucket, retry while a new profile propagates.
async fn associate_region(
    token: &MutationToken,
    ec2: &impl Ec2,
    region: &str,
    profile: &str,
    ids: Vec<(usize, String)>,
    opts: &ApplyOptions,
) -> Vec<AssociationResult> {
    let bucket = TokenBucket::new(opts.association_burst, opts.association_rate);
    let bucket = &bucket;
    stream::iter(ids)
        .map(|(n, id)| async move {
            let attempt = || async {
                bucket.acquire().await;
                ec2.associate_instance_profile(token, region, &id, profile).await
            };
            let backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(15))
                .with_total_delay(Some(opts.propagation_timeout))
                .without_max_times()
                .with_jitter();
            let result = attempt
                .retry(backoff)
                .sleep(tokio::time::sleep)
                .when(is_propagation_error)
                .notify(|e, wait| {
                    info!(instance.id = %id, error = %e, ?wait, "instance profile not usable yet; waiting for IAM propagation")
                })
                .await;
            (n, result)
        })
        .buffer_unordered(opts.association_concurrency.max(1))
        .collect()
        .await
}

/// Instances whose association raced with someone else: look again, report what they have now.
async fn reobserve_raced(
    plan: &AccountPlan,
    out: &mut AccountOutcome,
    ec2: &impl Ec2,
    region: &str,
    rows: &[usize],
) {
    let ids: Vec<String> = rows
        .iter()
        .map(|n| plan.instances[*n].instance_id.clone())
        .collect();
    let current = ec2.profile_associations(region, &ids).await;
    for n in rows {
        let id = &plan.instances[*n].instance_id;
        let row = &mut out.instances[*n];
        match &current {
            Ok(list) => {
                let now = list.iter().find(|a| a.instance_id == *id);
                let name = now.map_or("an unknown profile", |a| {
                    profile_name_from_arn(&a.profile_arn)
                });
                row.instance_profile = now.map(|a| a.profile_arn.clone());
                row.status = Status::WaitingForSsm;
                row.detail = format!(
                    "gained instance profile {name} since it was observed; left alone, the next pass evaluates it"
                );
            }
            Err(e) => fail(row, "re-observing the profile association", e),
        }
    }
}

/// After IAM: waits (bounded by `wait_for_ssm`) for the instances that should get the agent to be Online in
/// SSM, and sets the statuses `run` reports for those that are not.
///
/// Returns the indexes of rows that are Online and ready for the agent install.
pub async fn settle_after_iam(
    plan: &AccountPlan,
    out: &mut AccountOutcome,
    ssm: &impl Ssm,
    opts: &ApplyOptions,
) -> Vec<usize> {
    for (row, o) in plan.instances.iter().zip(&mut out.instances) {
        if o.status == Status::NotRunning && row.actions.iter().any(InstanceAction::is_iam) {
            let done: Vec<&str> = row.actions.iter().map(InstanceAction::as_str).collect();
            o.detail = format!(
                "IAM prepared ({}); instance is {}; the agent is installed once it runs",
                done.join(", "),
                row.state.as_str()
            );
        }
    }
    let candidates: Vec<usize> = plan
        .instances
        .iter()
        .enumerate()
        .filter(|(n, r)| {
            out.instances[*n].pending()
                && r.state == InstanceState::Running
                && r.runs_agent_script()
        })
        .map(|(n, _)| n)
        .collect();
    // Instances whose IAM changed in this pass or that were not Online are looked at again.
    let targets: Vec<(String, String)> = candidates
        .iter()
        .map(|n| &plan.instances[*n])
        .filter(|r| {
            r.ssm_ping != Some(PingStatus::Online) || r.actions.iter().any(InstanceAction::is_iam)
        })
        .map(|r| (r.region.clone(), r.instance_id.clone()))
        .collect();
    if !targets.is_empty() {
        let progress = opts
            .progress
            .begin("waiting for SSM registration", Some(opts.wait_for_ssm));
        let latest: std::sync::Mutex<HashMap<String, PingStatus>> =
            std::sync::Mutex::new(HashMap::new());
        let poll = || async {
            let pings = fetch_pings(ssm, &targets).await;
            let all_online = targets
                .iter()
                .all(|(_, id)| pings.get(id) == Some(&PingStatus::Online));
            let online = pings.values().filter(|p| **p == PingStatus::Online).count();
            *latest.lock().unwrap_or_else(|e| e.into_inner()) = pings;
            if all_online {
                Ok(())
            } else {
                Err(online)
            }
        };
        // Ask again soon at first (registration often takes seconds), then every `ssm_poll_interval`,
        // for at most `wait_for_ssm` in total (0: ask once).
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(2).min(opts.ssm_poll_interval))
            .with_max_delay(opts.ssm_poll_interval)
            .with_total_delay(Some(opts.wait_for_ssm))
            .without_max_times();
        let _ = poll
            .retry(backoff)
            .sleep(crate::reconcile::interrupt::sleep)
            .when(|_| !crate::reconcile::interrupt::requested())
            .notify(|online, wait| {
                progress.update(&format!(
                    "{online} of {} instances Online in SSM; asking again in {}s",
                    targets.len(),
                    wait.as_secs()
                ))
            })
            .await;
        let latest = latest.into_inner().unwrap_or_else(|e| e.into_inner());
        for n in &candidates {
            let id = &plan.instances[*n].instance_id;
            if targets.iter().any(|(_, t)| t == id) {
                out.instances[*n].ssm_ping = latest.get(id).copied();
            }
        }
    }
    let mut ready = Vec::new();
    for n in candidates {
        let planned = &plan.instances[n];
        let row = &mut out.instances[n];
        if row.ssm_ping == Some(PingStatus::Online) {
            ready.push(n);
        } else {
            row.status = Status::WaitingForSsm;
            let ping = row.ssm_ping.map_or("not registered", PingStatus::as_str);
            let iam = if planned.actions.iter().any(InstanceAction::is_iam) {
                "IAM prepared"
            } else {
                "IAM in place"
            };
            row.detail =
                format!("{iam}; SSM: {ping}; a later pass installs the agent once it is Online");
        }
    }
    ready
}

/// Current ping status of `targets` (region, instance id); unreachable regions count as not Online.
async fn fetch_pings(ssm: &impl Ssm, targets: &[(String, String)]) -> HashMap<String, PingStatus> {
    let mut by_region: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (region, id) in targets {
        by_region.entry(region).or_default().push(id.clone());
    }
    let mut pings = HashMap::new();
    for (region, ids) in by_region {
        match ssm.describe_instance_information(region, &ids).await {
            Ok(list) => pings.extend(list.into_iter().map(|s| (s.instance_id, s.ping))),
            Err(e) => warn!(%region, error = %e, "cannot refresh SSM state"),
        }
    }
    pings
}
