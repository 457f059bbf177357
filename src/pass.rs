//! One pass of observe -> plan -> apply over one account, the same code for `plan`, `run` and (later) each
//! daemon tick. Without a mutation token the pass stops after planning.

use std::time::SystemTime;

use tracing::{info, info_span, Instrument};

use crate::apply::{apply_iam, settle_after_iam, ApplyOptions};
use crate::config::Config;
use crate::model::AwsError;
use crate::observe::{observe_account, resolve_regions};
use crate::plan::{plan_account, AccountPlan, Status};
use crate::ports::{ApiCounter, Ec2, Iam, MutationToken, Ssm, Sts};
use crate::report::{Mode, Report};

/// A failure before any instance could be handled.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// STS did not answer: usually no or expired credentials.
    #[error("cannot identify the AWS account (check credentials, AWS_PROFILE and AWS_REGION)")]
    Account(#[source] AwsError),
    /// `all_regions = true` and `DescribeRegions` failed.
    #[error("cannot list the regions enabled for the account")]
    Regions(#[source] AwsError),
}

/// The AWS ports of one account.
pub struct AwsPorts<'a, T, E, I, S> {
    /// STS.
    pub sts: &'a T,
    /// EC2.
    pub ec2: &'a E,
    /// IAM.
    pub iam: &'a I,
    /// SSM.
    pub ssm: &'a S,
    /// Counts of the calls these ports made.
    pub counter: &'a ApiCounter,
}

/// What a pass produced.
pub struct PassOutcome {
    /// The report.
    pub report: Report,
    /// True when regions were configured but none could be observed.
    pub no_region_reachable: bool,
}

/// Runs one pass. With `token`, the plan's IAM actions are executed; without, nothing is changed.
pub async fn run_pass<T: Sts, E: Ec2, I: Iam, S: Ssm>(
    config: &Config,
    ports: &AwsPorts<'_, T, E, I, S>,
    token: Option<&MutationToken>,
    opts: &ApplyOptions,
) -> Result<PassOutcome, PassError> {
    let started = SystemTime::now();
    let account = ports.sts.account_id().await.map_err(PassError::Account)?;
    let regions = resolve_regions(ports.ec2, &config.aws.regions)
        .await
        .map_err(PassError::Regions)?;
    let span =
        info_span!("pass", account = %account, mode = if token.is_some() { "run" } else { "plan" });
    async {
        info!(regions = regions.len(), "observing");
        let obs =
            observe_account(&account, &regions, config, ports.ec2, ports.iam, ports.ssm).await;
        let no_region_reachable =
            !obs.regions.is_empty() && obs.regions.iter().all(|r| r.error.is_some());
        let mut plan = plan_account(&obs, config);
        info!(instances = plan.instances.len(), "planned");
        let (mode, detail) = match token {
            None => (Mode::Plan, None),
            Some(token) => {
                let detail = apply_iam(token, &mut plan, ports.ec2, ports.iam, opts).await;
                let ready = settle_after_iam(&mut plan, ports.ssm, opts).await;
                mark_install_unavailable(&mut plan, &ready);
                (Mode::Run, detail)
            }
        };
        let report = Report::new(
            mode,
            started,
            vec![(plan, detail)],
            ports.counter.snapshot(),
        );
        Ok(PassOutcome {
            report,
            no_region_reachable,
        })
    }
    .instrument(span)
    .await
}

/// Rows Online in SSM and ready for the agent: the install step is not part of this build yet, so they
/// are reported as waiting, with the reason.
fn mark_install_unavailable(plan: &mut AccountPlan, ready: &[usize]) {
    for n in ready {
        let row = &mut plan.instances[*n];
        row.status = Status::WaitingForSsm;
        row.detail =
            "Online in SSM; the agent install step is not available in this version".into();
    }
}
