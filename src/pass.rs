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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::SSM_POLICY_ARN;
    use crate::fake::FakeAws;
    use crate::model::{InstanceState, Platform};

    const READ_ONLY: &str = "arn:aws:iam::aws:policy/ReadOnlyAccess";

    fn config(iam: &str) -> Config {
        let text = format!("[aws]\nregions = [\"us-east-1\", \"eu-west-1\"]\n[iam]\n{iam}\n");
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    fn opts() -> ApplyOptions {
        ApplyOptions {
            wait_for_ssm: Duration::ZERO,
            propagation_timeout: Duration::from_secs(1),
            ..ApplyOptions::default()
        }
    }

    /// The fleet of the IAM issue: no profile, role lacking the policy, correct profile, profile without
    /// role, stopped instance; across two regions.
    fn fleet() -> FakeAws {
        let aws = FakeAws::new(&["us-east-1", "eu-west-1"]);
        aws.add_role("AppRole", &[SSM_POLICY_ARN], Some("AppProfile"));
        aws.add_role("LegacyRole", &[READ_ONLY], Some("LegacyProfile"));
        aws.add_empty_profile("EmptyProfile");
        let running = InstanceState::Running;
        aws.add_instance("us-east-1", "i-none", Platform::Linux, running, None, &[]);
        aws.add_instance(
            "us-east-1",
            "i-legacy1",
            Platform::Linux,
            running,
            Some("LegacyProfile"),
            &[],
        );
        aws.add_instance(
            "eu-west-1",
            "i-legacy2",
            Platform::Windows,
            running,
            Some("LegacyProfile"),
            &[],
        );
        aws.add_instance(
            "eu-west-1",
            "i-good",
            Platform::Linux,
            running,
            Some("AppProfile"),
            &[],
        );
        aws.add_instance(
            "eu-west-1",
            "i-empty",
            Platform::Linux,
            running,
            Some("EmptyProfile"),
            &[],
        );
        aws.add_instance(
            "eu-west-1",
            "i-stopped",
            Platform::Linux,
            InstanceState::Stopped,
            None,
            &[],
        );
        aws
    }

    async fn pass(aws: &FakeAws, config: &Config, token: Option<&MutationToken>) -> Report {
        let ports = AwsPorts {
            sts: aws,
            ec2: aws,
            iam: aws,
            ssm: aws,
            counter: &aws.calls,
        };
        run_pass(config, &ports, token, &opts())
            .await
            .unwrap()
            .report
    }

    fn mutating(aws: &FakeAws) -> u64 {
        aws.calls
            .snapshot()
            .iter()
            .filter(|(op, _)| {
                let action = op.split(':').nth(1).unwrap_or_default();
                !["Describe", "Get", "List"]
                    .iter()
                    .any(|p| action.starts_with(p))
            })
            .map(|(_, n)| *n)
            .sum()
    }

    fn status<'a>(r: &'a Report, id: &str) -> &'a str {
        r.instances
            .iter()
            .find(|i| i.instance_id == id)
            .unwrap()
            .status
            .as_str()
    }

    #[tokio::test]
    async fn plan_changes_nothing() {
        let aws = fleet();
        let report = pass(&aws, &config(""), None).await;
        assert_eq!(mutating(&aws), 0);
        assert_eq!(report.summary.by_status[&Status::Planned], 4 + 1);
        assert_eq!(aws.instance_profile("i-none"), None);
    }

    #[tokio::test]
    async fn iam_pass_converges_and_a_second_pass_changes_nothing() {
        let aws = fleet();
        let token = MutationToken::mint();
        let first = pass(&aws, &config(""), Some(&token)).await;
        // Every instance now has working IAM, each role was patched once.
        assert!(aws
            .instance_profile("i-none")
            .unwrap()
            .ends_with("/AzureArcForServerSSMInstanceProfile"));
        assert!(aws
            .instance_profile("i-stopped")
            .unwrap()
            .ends_with("/AzureArcForServerSSMInstanceProfile"));
        assert!(aws
            .role_policies("LegacyRole")
            .contains(&SSM_POLICY_ARN.to_string()));
        assert_eq!(
            aws.profile("EmptyProfile").unwrap().roles,
            ["AzureArcForServerSSM"]
        );
        assert_eq!(
            aws.calls.count("iam:AttachRolePolicy"),
            2,
            "LegacyRole once, the new SSM role once"
        );
        assert_eq!(aws.calls.count("iam:CreateRole"), 1);
        assert_eq!(aws.calls.count("ec2:AssociateIamInstanceProfile"), 2);
        assert_eq!(first.accounts[0].actions, ["create-ssm-role"]);
        assert_eq!(status(&first, "i-stopped"), "not-running");
        assert!(
            !first.instances.iter().any(|i| i.status == Status::Planned),
            "run never reports planned"
        );
        assert!(!first.has_failures());

        let before = mutating(&aws);
        let second = pass(&aws, &config(""), Some(&token)).await;
        assert_eq!(
            mutating(&aws),
            before,
            "second pass must not change anything"
        );
        assert!(second.accounts[0].actions.is_empty());
        for i in &second.instances {
            assert!(
                i.actions.iter().all(|a| !a.is_iam()),
                "{} still plans IAM",
                i.instance_id
            );
        }
    }

    #[tokio::test]
    async fn a_role_shared_by_many_instances_is_patched_once() {
        let aws = FakeAws::new(&["us-east-1"]);
        aws.add_role("LegacyRole", &[READ_ONLY], Some("LegacyProfile"));
        for n in 0..25 {
            let id = format!("i-{n:03}");
            aws.add_instance(
                "us-east-1",
                &id,
                Platform::Linux,
                InstanceState::Running,
                Some("LegacyProfile"),
                &[],
            );
        }
        let cfg = Config::parse("[aws]\nregions=[\"us-east-1\"]\n", Path::new("t")).unwrap();
        pass(&aws, &cfg, Some(&MutationToken::mint())).await;
        assert_eq!(aws.calls.count("iam:AttachRolePolicy"), 1);
        assert_eq!(
            aws.calls.count("iam:ListAttachedRolePolicies"),
            1,
            "role looked up once, not per instance"
        );
        assert_eq!(
            aws.calls.count("iam:GetInstanceProfile"),
            2,
            "LegacyProfile and the SSM profile"
        );
    }

    #[tokio::test]
    async fn forbidden_changes_are_not_made() {
        let aws = fleet();
        let token = MutationToken::mint();
        let report = pass(&aws, &config("policy_update_allowed = false"), Some(&token)).await;
        assert_eq!(status(&report, "i-legacy1"), "needs-manual-iam");
        assert_eq!(status(&report, "i-empty"), "needs-manual-iam");
        assert_eq!(aws.role_policies("LegacyRole"), [READ_ONLY]);
        assert!(aws.profile("EmptyProfile").unwrap().roles.is_empty());
        assert!(
            aws.instance_profile("i-none").is_some(),
            "assigning the SSM profile is still allowed"
        );

        let aws = fleet();
        let report = pass(&aws, &config("auto_assignment = false"), Some(&token)).await;
        assert_eq!(mutating(&aws), 0);
        for id in ["i-none", "i-legacy1", "i-empty"] {
            assert_eq!(status(&report, id), "needs-manual-iam", "{id}");
        }
    }

    #[tokio::test]
    async fn one_failure_does_not_stop_the_others() {
        let aws = fleet();
        aws.fail(
            "ec2:AssociateIamInstanceProfile",
            "i-none",
            "UnauthorizedOperation",
        );
        aws.fail("iam:AttachRolePolicy", "LegacyRole", "AccessDenied");
        let report = pass(&aws, &config(""), Some(&MutationToken::mint())).await;
        assert_eq!(status(&report, "i-none"), "failed");
        let none = report
            .instances
            .iter()
            .find(|i| i.instance_id == "i-none")
            .unwrap();
        assert!(
            none.detail.contains("UnauthorizedOperation"),
            "{}",
            none.detail
        );
        assert_eq!(status(&report, "i-legacy1"), "failed");
        assert_eq!(status(&report, "i-legacy2"), "failed");
        assert!(
            aws.instance_profile("i-stopped").is_some(),
            "other instances continue"
        );
        assert_eq!(
            aws.profile("EmptyProfile").unwrap().roles,
            ["AzureArcForServerSSM"]
        );
        assert!(report.has_failures());
    }

    #[tokio::test]
    async fn failing_role_creation_fails_only_the_instances_that_need_it() {
        let aws = fleet();
        aws.fail("iam:CreateRole", "AzureArcForServerSSM", "AccessDenied");
        let report = pass(&aws, &config(""), Some(&MutationToken::mint())).await;
        for id in ["i-none", "i-stopped", "i-empty"] {
            assert_eq!(status(&report, id), "failed", "{id}");
        }
        assert_eq!(status(&report, "i-legacy1"), "waiting-for-ssm");
        assert!(aws
            .role_policies("LegacyRole")
            .contains(&SSM_POLICY_ARN.to_string()));
        assert_eq!(aws.calls.count("ec2:AssociateIamInstanceProfile"), 0);
        assert!(report.accounts[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("AccessDenied"));
    }

    #[tokio::test]
    async fn an_instance_that_gained_a_profile_meanwhile_is_left_alone() {
        let aws = fleet();
        let cfg = config("");
        let token = MutationToken::mint();
        // Observe and plan, then someone else associates a profile before we apply.
        let obs = crate::observe::observe_account(
            "123456789012",
            &["us-east-1".to_string(), "eu-west-1".to_string()],
            &cfg,
            &aws,
            &aws,
            &aws,
        )
        .await;
        let mut plan = crate::plan::plan_account(&obs, &cfg);
        aws.associate_instance_profile(&token, "us-east-1", "i-none", "AppProfile")
            .await
            .unwrap();
        apply_iam(&token, &mut plan, &aws, &aws, &opts()).await;
        let row = plan
            .instances
            .iter()
            .find(|i| i.instance_id == "i-none")
            .unwrap();
        assert_eq!(row.status, Status::WaitingForSsm);
        assert!(row.detail.contains("AppProfile"), "{}", row.detail);
        assert!(
            aws.instance_profile("i-none")
                .unwrap()
                .ends_with("/AppProfile"),
            "not forced"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_bucket_holds_the_rate() {
        let bucket = crate::apply::TokenBucket::new(10, 5.0);
        let start = tokio::time::Instant::now();
        for _ in 0..60 {
            bucket.acquire().await;
        }
        let elapsed = start.elapsed();
        // 10 at once, then 50 at 5 a second.
        assert!(elapsed >= Duration::from_secs(10), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(11), "{elapsed:?}");
    }
}
