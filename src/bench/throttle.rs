//! The fakes of [`crate::fake`] behind what AWS puts between a client and an account at scale: a per-call
//! latency, token buckets per account and region that answer over-budget calls with a throttling error
//! (as EC2 and SSM do), pages, and the SDK's standard retry of throttled calls. Everything waits on
//! tokio's clock, so a paused runtime simulates minutes in seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::fake::FakeArm;
use crate::fake::FakeAws;
use crate::model::{
    AwsError, Ec2Instance, InstanceFate, InstanceProfile, ProfileAssociation, Role, SsmInstance,
    TagSelector,
};
use crate::ports::{
    ApiCounter, CommandRequest, CommandSummary, Ec2, Iam, Invocation, MutationToken, Ssm, Sts,
};

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketSpec {
    /// Capacity (and the initial fill).
    pub burst: f64,
    /// Refill per second.
    pub rate: f64,
}

/// The simulated AWS limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Latency of every call (and of every page and retry).
    pub latency: Duration,
    /// `ec2:AssociateIamInstanceProfile`, per account and region (AWS: 100, then 5/s).
    pub associate: BucketSpec,
    /// EC2's non-mutating describes, per account and region (AWS: 100, then 20/s).
    pub ec2_describe: BucketSpec,
    /// Every SSM call, one bucket per account and region. AWS publishes no bucket for SSM; this one (40,
    /// then 10/s) is our choice, stated in the benchmark's output.
    pub ssm: BucketSpec,
    /// Attempts per call, as the SDK's standard retry mode makes them with the tool's setting
    /// (`adapters::aws::DEFAULT_MAX_ATTEMPTS`, 5), with full-jitter exponential backoff from 1 s,
    /// capped at 20 s.
    pub max_attempts: u32,
    /// `DescribeInstances` page size (`MaxResults` 1000).
    pub describe_page: usize,
    /// `DescribeInstanceInformation` ids per call (`MaxResults` 50).
    pub ssm_page: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            latency: Duration::from_millis(20),
            associate: BucketSpec {
                burst: 100.0,
                rate: 5.0,
            },
            ec2_describe: BucketSpec {
                burst: 100.0,
                rate: 20.0,
            },
            ssm: BucketSpec {
                burst: 40.0,
                rate: 10.0,
            },
            max_attempts: crate::adapters::aws::DEFAULT_MAX_ATTEMPTS,
            describe_page: 1000,
            ssm_page: 50,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Class {
    Associate,
    Ec2Describe,
    Ssm,
    /// IAM and STS: latency only.
    Unlimited,
}

/// One account of the simulation: the stateful fake behind latency, buckets and retries.
#[derive(Debug)]
pub struct Throttled {
    /// The account's state (its own call counter counts port calls).
    pub inner: FakeAws,
    /// Azure (shared by every account; this one's machines are in `aws_{account}`).
    pub arm: Arc<FakeArm>,
    account: String,
    limits: Limits,
    buckets: Mutex<HashMap<(Class, String), (f64, Instant)>>,
    /// Every request that reached AWS, retries and extra pages included, by `service:Operation`.
    pub wire: ApiCounter,
    /// Requests answered with a throttling error.
    pub throttled: ApiCounter,
    rng: Mutex<u64>,
}

/// One simulated account: cloning shares it (the accounts port hands out its EC2, IAM and SSM).
#[derive(Debug, Clone)]
pub struct ThrottledAws(Arc<Throttled>);

impl std::ops::Deref for ThrottledAws {
    type Target = Throttled;
    fn deref(&self) -> &Throttled {
        &self.0
    }
}

impl ThrottledAws {
    /// Wraps `inner` as account `account`; its installs connect machines in `arm`, group `aws_{account}`.
    pub fn new(account: &str, inner: FakeAws, limits: Limits, arm: Arc<FakeArm>) -> ThrottledAws {
        inner.link_arm(arm.clone(), &format!("aws_{account}"));
        let seed = account.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        ThrottledAws(Arc::new(Throttled {
            inner,
            arm,
            account: account.into(),
            limits,
            buckets: Mutex::new(HashMap::new()),
            wire: ApiCounter::default(),
            throttled: ApiCounter::default(),
            rng: Mutex::new(seed | 1),
        }))
    }

    /// The account id this fake answers `sts:GetCallerIdentity` with.
    pub fn account(&self) -> &str {
        &self.account
    }

    fn spec(&self, class: Class) -> Option<BucketSpec> {
        match class {
            Class::Associate => Some(self.limits.associate),
            Class::Ec2Describe => Some(self.limits.ec2_describe),
            Class::Ssm => Some(self.limits.ssm),
            Class::Unlimited => None,
        }
    }

    /// Takes a token from the bucket of (`class`, `region`); `false` when it is empty.
    fn take(&self, class: Class, region: &str) -> bool {
        let Some(spec) = self.spec(class) else {
            return true;
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = buckets
            .entry((class, region.to_string()))
            .or_insert((spec.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * spec.rate).min(spec.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A uniform number in [0, 1).
    fn random(&self) -> f64 {
        let mut s = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One request as the SDK makes it: latency, the bucket, and on throttling the standard retry's
    /// backoff, up to `max_attempts`; the last throttling error is returned as the SDK returns it.
    pub(crate) async fn request(
        &self,
        class: Class,
        region: &str,
        op: &str,
    ) -> Result<(), AwsError> {
        let mut attempt = 1;
        loop {
            self.wire.record(op);
            tokio::time::sleep(self.limits.latency).await;
            if self.take(class, region) {
                return Ok(());
            }
            self.throttled.record(op);
            if attempt >= self.limits.max_attempts {
                let code = if op.starts_with("ec2:") {
                    "RequestLimitExceeded"
                } else {
                    "ThrottlingException"
                };
                return Err(AwsError::from_code(op, code, "Rate exceeded"));
            }
            let cap = (2f64.powi(attempt as i32 - 1)).min(20.0);
            tokio::time::sleep(Duration::from_secs_f64(self.random() * cap)).await;
            attempt += 1;
        }
    }

    /// `pages` requests one after another (a paginated call following `NextToken`).
    async fn pages(
        &self,
        class: Class,
        region: &str,
        op: &str,
        pages: usize,
    ) -> Result<(), AwsError> {
        for _ in 0..pages {
            self.request(class, region, op).await?;
        }
        Ok(())
    }
}

/// `request` with only the script lines the fake reads (`ARC_MODE`, `ARC_KEY_ID`, and the instance ids of
/// `ARC_SEALED_KEYS`). The fake keeps every command it is sent; with whole scripts, at 20,000 instances
/// those copies were 93 MiB of the benchmark's 146 MiB heap peak (heaptrack), and the benchmark is there
/// to measure the tool's memory, not the fake's. (SSM keeps the scripts on AWS's side, not in our process.)
fn as_the_fake_reads_it(request: &CommandRequest) -> CommandRequest {
    let mut script = String::new();
    for line in request.script.lines() {
        let name = line.trim_start_matches('$');
        if name.starts_with("ARC_MODE") || name.starts_with("ARC_KEY_ID") {
            script.push_str(line);
            script.push('\n');
        } else if let Some((head, value)) = name
            .starts_with("ARC_SEALED_KEYS")
            .then(|| line.split_once('\''))
            .flatten()
        {
            let ids: Vec<&str> = value
                .trim_end_matches('\'')
                .split(' ')
                .map(|entry| entry.split(':').next().unwrap_or_default())
                .collect();
            script.push_str(&format!("{head}'{}'\n", ids.join(" ")));
        }
    }
    CommandRequest {
        document: request.document,
        instance_ids: request.instance_ids.clone(),
        script,
        execution_timeout: request.execution_timeout,
        delivery_timeout: request.delivery_timeout,
        comment: request.comment.clone(),
    }
}

fn pages(items: usize, page: usize) -> usize {
    items.div_ceil(page.max(1)).max(1)
}

impl Sts for ThrottledAws {
    async fn account_id(&self) -> Result<String, AwsError> {
        self.request(Class::Unlimited, "global", "sts:GetCallerIdentity")
            .await?;
        self.inner.account_id().await?;
        Ok(self.account.clone())
    }
}

impl Ec2 for ThrottledAws {
    async fn enabled_regions(&self) -> Result<Vec<String>, AwsError> {
        self.request(Class::Ec2Describe, "global", "ec2:DescribeRegions")
            .await?;
        self.inner.enabled_regions().await
    }

    async fn describe_instances(
        &self,
        region: &str,
        tag: Option<&TagSelector>,
    ) -> Result<Vec<Ec2Instance>, AwsError> {
        let op = "ec2:DescribeInstances";
        self.request(Class::Ec2Describe, region, op).await?;
        let all = self.inner.describe_instances(region, tag).await?;
        self.pages(
            Class::Ec2Describe,
            region,
            op,
            pages(all.len(), self.limits.describe_page) - 1,
        )
        .await?;
        Ok(all)
    }

    async fn describe_instances_by_id(
        &self,
        region: &str,
        instance_ids: &[String],
        tag: Option<&TagSelector>,
    ) -> Result<Vec<Ec2Instance>, AwsError> {
        let op = "ec2:DescribeInstances";
        self.request(Class::Ec2Describe, region, op).await?;
        self.inner
            .describe_instances_by_id(region, instance_ids, tag)
            .await
    }

    async fn instance_fates(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<Vec<InstanceFate>, AwsError> {
        let op = "ec2:DescribeInstances";
        self.request(Class::Ec2Describe, region, op).await?;
        self.inner.instance_fates(region, instance_ids).await
    }

    async fn profile_associations(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<Vec<ProfileAssociation>, AwsError> {
        let op = "ec2:DescribeIamInstanceProfileAssociations";
        self.request(Class::Ec2Describe, region, op).await?;
        let all = self
            .inner
            .profile_associations(region, instance_ids)
            .await?;
        self.pages(
            Class::Ec2Describe,
            region,
            op,
            pages(all.len(), self.limits.describe_page) - 1,
        )
        .await?;
        Ok(all)
    }

    async fn associate_instance_profile(
        &self,
        token: &MutationToken,
        region: &str,
        instance_id: &str,
        profile_name: &str,
    ) -> Result<String, AwsError> {
        self.request(Class::Associate, region, "ec2:AssociateIamInstanceProfile")
            .await?;
        self.inner
            .associate_instance_profile(token, region, instance_id, profile_name)
            .await
    }
}

impl Iam for ThrottledAws {
    async fn get_instance_profile(&self, name: &str) -> Result<Option<InstanceProfile>, AwsError> {
        self.request(Class::Unlimited, "global", "iam:GetInstanceProfile")
            .await?;
        self.inner.get_instance_profile(name).await
    }

    async fn get_role(&self, name: &str) -> Result<Option<Role>, AwsError> {
        self.request(Class::Unlimited, "global", "iam:GetRole")
            .await?;
        self.inner.get_role(name).await
    }

    async fn attached_policies(&self, role: &str) -> Result<Vec<String>, AwsError> {
        self.request(Class::Unlimited, "global", "iam:ListAttachedRolePolicies")
            .await?;
        self.inner.attached_policies(role).await
    }

    async fn create_role(&self, token: &MutationToken, name: &str) -> Result<Role, AwsError> {
        self.request(Class::Unlimited, "global", "iam:CreateRole")
            .await?;
        self.inner.create_role(token, name).await
    }

    async fn attach_role_policy(
        &self,
        token: &MutationToken,
        role: &str,
        policy_arn: &str,
    ) -> Result<(), AwsError> {
        self.request(Class::Unlimited, "global", "iam:AttachRolePolicy")
            .await?;
        self.inner.attach_role_policy(token, role, policy_arn).await
    }

    async fn create_instance_profile(
        &self,
        token: &MutationToken,
        name: &str,
    ) -> Result<InstanceProfile, AwsError> {
        self.request(Class::Unlimited, "global", "iam:CreateInstanceProfile")
            .await?;
        self.inner.create_instance_profile(token, name).await
    }

    async fn add_role_to_instance_profile(
        &self,
        token: &MutationToken,
        profile: &str,
        role: &str,
    ) -> Result<(), AwsError> {
        self.request(Class::Unlimited, "global", "iam:AddRoleToInstanceProfile")
            .await?;
        self.inner
            .add_role_to_instance_profile(token, profile, role)
            .await
    }
}

impl Ssm for ThrottledAws {
    async fn describe_instance_information(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<Vec<SsmInstance>, AwsError> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        let op = "ssm:DescribeInstanceInformation";
        // As the adapter does: one query per page of ids, a few at once.
        let calls = instance_ids
            .len()
            .div_ceil(self.limits.ssm_page.max(1))
            .max(1);
        stream::iter(0..calls)
            .map(|_| self.request(Class::Ssm, region, op))
            .buffer_unordered(crate::adapters::aws::SSM_QUERIES_AT_ONCE)
            .try_collect::<Vec<()>>()
            .await?;
        self.inner
            .describe_instance_information(region, instance_ids)
            .await
    }

    async fn send_command(
        &self,
        token: &MutationToken,
        region: &str,
        request: &CommandRequest,
    ) -> Result<String, AwsError> {
        self.request(Class::Ssm, region, "ssm:SendCommand").await?;
        self.inner
            .send_command(token, region, &as_the_fake_reads_it(request))
            .await
    }

    async fn command_status(
        &self,
        region: &str,
        command_id: &str,
    ) -> Result<Option<CommandSummary>, AwsError> {
        self.request(Class::Ssm, region, "ssm:ListCommands").await?;
        self.inner.command_status(region, command_id).await
    }

    async fn recent_commands(
        &self,
        region: &str,
        since: std::time::SystemTime,
        comment_prefix: &str,
    ) -> Result<Vec<CommandSummary>, AwsError> {
        self.request(Class::Ssm, region, "ssm:ListCommands").await?;
        self.inner
            .recent_commands(region, since, comment_prefix)
            .await
    }

    async fn command_invocations(
        &self,
        region: &str,
        command_id: &str,
    ) -> Result<Vec<Invocation>, AwsError> {
        self.request(Class::Ssm, region, "ssm:ListCommandInvocations")
            .await?;
        self.inner.command_invocations(region, command_id).await
    }

    async fn invocation_detail(
        &self,
        region: &str,
        command_id: &str,
        instance_id: &str,
    ) -> Result<Option<Invocation>, AwsError> {
        self.request(Class::Ssm, region, "ssm:GetCommandInvocation")
            .await?;
        self.inner
            .invocation_detail(region, command_id, instance_id)
            .await
    }

    async fn default_host_management_role(&self, region: &str) -> Result<Option<String>, AwsError> {
        self.request(Class::Ssm, region, "ssm:GetServiceSetting")
            .await?;
        self.inner.default_host_management_role(region).await
    }

    async fn cancel_command(
        &self,
        token: &MutationToken,
        region: &str,
        command_id: &str,
    ) -> Result<(), AwsError> {
        self.request(Class::Ssm, region, "ssm:CancelCommand")
            .await?;
        self.inner.cancel_command(token, region, command_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::org::{fleet, measure, FleetSpec, Mode};

    /// One account, one region, `bare` instances without a profile and `ready` with one.
    fn one_region(bare: usize, ready: usize) -> FleetSpec {
        FleetSpec {
            accounts: 1,
            regions: 1,
            instances: bare + ready,
            need_profile: bare,
            hot: bare,
            max_concurrent_accounts: 1,
        }
    }

    /// The tool's own association pacing (`reconcile::apply`) against AWS's bucket (100, then 5/s) with
    /// no SDK retry to hide a throttled call: 300 associations in one region all pass at the first
    /// attempt, and take the refill's time, not less.
    #[tokio::test(start_paused = true)]
    async fn the_tools_association_pacing_is_never_throttled_by_aws() {
        let spec = one_region(300, 0);
        let limits = Limits {
            max_attempts: 1,
            ..Limits::default()
        };
        let run = measure(Mode::Run, &spec, &fleet(&spec), limits).await;
        let op = "ec2:AssociateIamInstanceProfile";
        assert_eq!(run.throttled.get(op), None, "{:?}", run.throttled);
        assert_eq!(run.calls[op], 300);
        assert_eq!(
            run.by_status.get("onboarded"),
            Some(&300),
            "{:?}",
            run.by_status
        );
        // (300 - 100) / 5 = 40 s is the least AWS allows.
        assert!(
            run.simulated >= Duration::from_secs(40),
            "{:?}",
            run.simulated
        );
    }

    /// SSM throttled past the SDK's attempts in one account: the pass still ends with every instance in
    /// the report, none counted as onboarded, instead of aborting or hanging.
    #[tokio::test(start_paused = true)]
    async fn ssm_throttled_past_the_sdks_attempts_leaves_instances_reported_not_onboarded() {
        let spec = one_region(0, 120);
        let limits = Limits {
            ssm: BucketSpec {
                burst: 1.0,
                rate: 0.001,
            },
            ..Limits::default()
        };
        let run = measure(Mode::Run, &spec, &fleet(&spec), limits).await;
        assert_eq!(
            run.failed_accounts, 0,
            "one region's SSM is not the account"
        );
        assert_eq!(
            run.by_status.values().sum::<u64>(),
            120,
            "{:?}",
            run.by_status
        );
        assert_eq!(run.by_status.get("onboarded"), None, "{:?}", run.by_status);
        assert!(
            run.throttled.keys().all(|op| op.starts_with("ssm:")),
            "{:?}",
            run.throttled
        );
        assert!(
            run.calls.get("ssm:SendCommand").is_none_or(|n| *n <= 1),
            "{:?}",
            run.calls
        );
    }
}
