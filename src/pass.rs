//! One pass of observe -> plan -> apply over one account, the same code for `plan`, `run` and (later) each
//! daemon tick. Without a mutation token the pass stops after planning.

use std::collections::BTreeMap;
use std::time::SystemTime;

use tracing::{info, info_span, warn, Instrument};

use crate::apply::{apply_iam, settle_after_iam, ApplyOptions};
use crate::azure::{Arm, AzureError};
use crate::config::Config;
use crate::model::AwsError;
use crate::observe::{observe_account, observe_arc, resolve_regions, ArcObservation};
use crate::onboard::{install_agents, InstallOptions};
use crate::plan::{plan_account, AccountPlan, InstanceAction, Status};
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
    /// `run` needs Azure and could not get a token; nothing was changed.
    #[error("cannot get an Azure Resource Manager token; nothing was changed")]
    Azure(#[source] AzureError),
    /// `run` needs the `[azure]` section and a credential.
    #[error("run needs the [azure] section and ARC_ONBOARD_CLIENT_SECRET; nothing was changed")]
    AzureMissing,
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
    /// Counts of the calls these ports (and the Azure port) made.
    pub counter: &'a ApiCounter,
}

/// Bounds of a pass.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    /// IAM and SSM registration.
    pub apply: ApplyOptions,
    /// Agent install and verification.
    pub install: InstallOptions,
}

/// What a pass produced.
pub struct PassOutcome {
    /// The report.
    pub report: Report,
    /// True when regions were configured but none could be observed.
    pub no_region_reachable: bool,
}

/// Runs one pass. With `token`, the plan is executed (IAM, then agent install and verification); without,
/// nothing is changed. `arm` is `None` when no Azure credential is available.
pub async fn run_pass<T: Sts, E: Ec2, I: Iam, S: Ssm, A: Arm>(
    config: &Config,
    ports: &AwsPorts<'_, T, E, I, S>,
    arm: Option<&A>,
    token: Option<&MutationToken>,
    opts: &PassOptions,
) -> Result<PassOutcome, PassError> {
    let started = SystemTime::now();
    if token.is_some() {
        // Fail fast, before any AWS call, when onboarding cannot be completed.
        let (Some(arm), Some(_)) = (arm, &config.azure) else {
            return Err(PassError::AzureMissing);
        };
        arm.token().await.map_err(PassError::Azure)?;
    }
    let account = ports.sts.account_id().await.map_err(PassError::Account)?;
    let regions = resolve_regions(ports.ec2, &config.aws.regions)
        .await
        .map_err(PassError::Regions)?;
    let span =
        info_span!("pass", account = %account, mode = if token.is_some() { "run" } else { "plan" });
    async {
        info!(regions = regions.len(), "observing");
        let arc = match (&config.azure, arm) {
            (None, _) => ArcObservation::NotConfigured,
            (Some(_), None) => ArcObservation::Unavailable(format!(
                "{} is not set",
                crate::config::CLIENT_SECRET_ENV
            )),
            (Some(az), Some(arm)) => observe_arc(arm, &az.resource_group_for(&account)).await,
        };
        let aws = (ports.ec2, ports.iam, ports.ssm);
        let obs = observe_account(
            &account,
            &regions,
            config,
            aws,
            opts.install.in_flight_window(),
            arc,
        )
        .await;
        let no_region_reachable =
            !obs.regions.is_empty() && obs.regions.iter().all(|r| r.error.is_some());
        let mut plan = plan_account(&obs, config);
        info!(instances = plan.instances.len(), "planned");
        let (mode, detail) = match (token, arm, &config.azure) {
            (Some(token), Some(arm), Some(azure)) => {
                let mut notes = Vec::new();
                if plan.create_resource_group {
                    notes.push(create_resource_group(token, &mut plan, arm, azure).await);
                }
                if let Some(d) =
                    apply_iam(token, &mut plan, ports.ec2, ports.iam, &opts.apply).await
                {
                    notes.push(d);
                }
                let ready = settle_after_iam(&mut plan, ports.ssm, &opts.apply).await;
                let cfgs = (azure, &config.onboarding);
                install_agents(
                    token,
                    &mut plan,
                    &ready,
                    ports.ssm,
                    arm,
                    cfgs,
                    &opts.install,
                )
                .await;
                (Mode::Run, (!notes.is_empty()).then(|| notes.join("; ")))
            }
            _ => (Mode::Plan, None),
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

/// `create-resource-group`; on failure every instance waiting for the agent fails with the reason.
async fn create_resource_group(
    token: &MutationToken,
    plan: &mut AccountPlan,
    arm: &impl Arm,
    azure: &crate::config::AzureConfig,
) -> String {
    let rg = azure.resource_group_for(&plan.account_id);
    let tags = BTreeMap::from([
        ("AwsAccountId".to_string(), plan.account_id.clone()),
        ("CreatedBy".to_string(), "arc-onboard".to_string()),
    ]);
    match arm
        .create_resource_group(token, &rg, &azure.location, &tags)
        .await
    {
        Ok(()) => {
            info!(resource_group = %rg, "resource group created");
            format!("create-resource-group done: {rg} in {}", azure.location)
        }
        Err(e) => {
            warn!(resource_group = %rg, error = %e, "create-resource-group failed");
            for row in &mut plan.instances {
                if row.actions.contains(&InstanceAction::InstallAgent)
                    && row.status == Status::Planned
                {
                    row.actions.retain(|a| *a != InstanceAction::InstallAgent);
                    row.status = Status::Failed;
                    row.detail = format!("create-resource-group {rg} failed: {e}");
                }
            }
            format!("create-resource-group failed: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::azure::FakeArm;
    use crate::config::SSM_POLICY_ARN;
    use crate::fake::FakeAws;
    use crate::model::{InstanceState, Platform};
    use crate::onboard::InstallOptions;

    const READ_ONLY: &str = "arn:aws:iam::aws:policy/ReadOnlyAccess";

    fn config(iam: &str) -> Config {
        let text =
            format!("[aws]\nregions = [\"us-east-1\", \"eu-west-1\"]\n[iam]\n{iam}\n{AZURE}");
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    fn opts() -> ApplyOptions {
        ApplyOptions {
            wait_for_ssm: Duration::ZERO,
            propagation_timeout: Duration::from_secs(1),
            ..ApplyOptions::default()
        }
    }

    const AZURE: &str = "[azure]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\nsubscription_id = \"00000000-0000-0000-0000-000000000002\"\nclient_id = \"00000000-0000-0000-0000-000000000003\"\nlocation = \"eastus\"\n";

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
        let arm = std::sync::Arc::new(FakeArm::default());
        aws.link_arm(arm.clone(), "aws_123456789012");
        pass_with(aws, &arm, config, token).await.unwrap()
    }

    async fn pass_with(
        aws: &FakeAws,
        arm: &FakeArm,
        config: &Config,
        token: Option<&MutationToken>,
    ) -> Result<Report, PassError> {
        let ports = AwsPorts {
            sts: aws,
            ec2: aws,
            iam: aws,
            ssm: aws,
            counter: &aws.calls,
        };
        let opts = PassOptions {
            apply: opts(),
            install: InstallOptions {
                verify_timeout: Duration::from_secs(2),
                ..InstallOptions::default()
            },
        };
        run_pass(config, &ports, Some(arm), token, &opts)
            .await
            .map(|o| o.report)
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
        let arm = std::sync::Arc::new(FakeArm::default());
        aws.link_arm(arm.clone(), "aws_123456789012");
        let token = MutationToken::mint();
        let first = pass_with(&aws, &arm, &config(""), Some(&token))
            .await
            .unwrap();
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
        assert_eq!(
            first.accounts[0].actions,
            ["create-ssm-role", "create-resource-group"],
            "{}",
            first.to_json()
        );
        assert!(arm.has_group("aws_123456789012"));
        assert_eq!(status(&first, "i-stopped"), "not-running");
        for id in ["i-none", "i-legacy1", "i-legacy2", "i-good", "i-empty"] {
            assert_eq!(status(&first, id), "onboarded", "{id}");
        }
        assert_eq!(
            aws.calls.count("ssm:SendCommand"),
            3,
            "one per region and platform"
        );
        assert!(
            !first.instances.iter().any(|i| i.status == Status::Planned),
            "run never reports planned"
        );
        assert!(!first.has_failures());

        let before = mutating(&aws);
        let second = pass_with(&aws, &arm, &config(""), Some(&token))
            .await
            .unwrap();
        assert_eq!(
            mutating(&aws),
            before,
            "second pass must not change anything"
        );
        assert!(second.accounts[0].actions.is_empty());
        assert_eq!(status(&second, "i-none"), "already-onboarded");
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
        let cfg = Config::parse(
            &format!("[aws]\nregions=[\"us-east-1\"]\n{AZURE}"),
            Path::new("t"),
        )
        .unwrap();
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
        assert_eq!(
            mutating(&aws),
            aws.calls.count("ssm:SendCommand"),
            "no IAM change; only installs on instances already Online"
        );
        assert_eq!(status(&report, "i-good"), "onboarded");
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
        assert_eq!(
            status(&report, "i-legacy1"),
            "onboarded",
            "its own role was patched"
        );
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
            (&aws, &aws, &aws),
            Duration::from_secs(60),
            crate::observe::ArcObservation::NotConfigured,
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

    #[tokio::test]
    async fn install_failures_are_per_instance_with_the_agent_reason() {
        let aws = fleet();
        aws.script_outcome("i-good", "Failed", "Failed", 41, "connecting...\nARC_ONBOARD_RESULT {\"outcome\":\"failed\",\"exit_code\":41,\"step\":\"connect\",\"message\":\"azcmagent connect failed\"}");
        let report = pass(&aws, &config(""), Some(&MutationToken::mint())).await;
        let good = report
            .instances
            .iter()
            .find(|i| i.instance_id == "i-good")
            .unwrap();
        assert_eq!(good.status, Status::Failed);
        assert!(good.detail.contains("exit code 41"), "{}", good.detail);
        assert!(
            good.detail.contains("connecting..."),
            "output tail: {}",
            good.detail
        );
        assert_eq!(status(&report, "i-none"), "onboarded");
        assert!(report.has_failures());
    }

    #[tokio::test]
    async fn batches_hold_at_most_fifty_instances() {
        let aws = FakeAws::new(&["us-east-1"]);
        aws.add_role("AppRole", &[SSM_POLICY_ARN], Some("AppProfile"));
        for n in 0..130 {
            let id = format!("i-{n:04}");
            aws.add_instance(
                "us-east-1",
                &id,
                Platform::Linux,
                InstanceState::Running,
                Some("AppProfile"),
                &[],
            );
        }
        let cfg = Config::parse(
            &format!("[aws]\nregions=[\"us-east-1\"]\n{AZURE}"),
            Path::new("t"),
        )
        .unwrap();
        let report = pass(&aws, &cfg, Some(&MutationToken::mint())).await;
        let sizes: Vec<usize> = aws
            .commands()
            .iter()
            .map(|c| c.request.instance_ids.len())
            .collect();
        assert_eq!(sizes, [50, 50, 30]);
        assert_eq!(report.summary.by_status[&Status::Onboarded], 130);
    }

    #[tokio::test]
    async fn a_refused_azure_token_stops_run_before_any_aws_call() {
        let aws = fleet();
        let arm = FakeArm::default();
        arm.fail_token(crate::azure::AzureError::Token {
            status: 401,
            code: "invalid_client".into(),
            description: "AADSTS7000215: Invalid client secret provided.".into(),
        });
        let err = pass_with(&aws, &arm, &config(""), Some(&MutationToken::mint()))
            .await
            .unwrap_err();
        assert!(matches!(err, PassError::Azure(_)), "{err}");
        assert!(
            aws.calls.snapshot().is_empty(),
            "{:?}",
            aws.calls.snapshot()
        );
        // plan still works and says what it could not check.
        let report = pass_with(&aws, &arm, &config(""), None).await.unwrap();
        let none = report
            .instances
            .iter()
            .find(|i| i.instance_id == "i-none")
            .unwrap();
        assert!(none.detail.contains("Azure not checked"), "{}", none.detail);
    }
}
