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
        self.inner.send_command(token, region, request).await
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
    use crate::model::{InstanceState, Platform};

    fn account(limits: Limits) -> ThrottledAws {
        let fake = FakeAws::new(&["us-east-1"]);
        fake.add_role(
            "AzureArcForServerSSM",
            &[crate::config::SSM_POLICY_ARN],
            Some("AzureArcForServerSSMInstanceProfile"),
        );
        for n in 0..300 {
            fake.add_instance(
                "us-east-1",
                &format!("i-{n:05}"),
                Platform::Linux,
                InstanceState::Running,
                None,
                &[],
            );
        }
        ThrottledAws::new("111111111111", fake, limits, Arc::new(FakeArm::default()))
    }

    #[tokio::test(start_paused = true)]
    async fn over_budget_associations_are_throttled_and_the_bucket_refills() {
        let aws = account(Limits {
            max_attempts: 1,
            ..Limits::default()
        });
        let token = MutationToken::mint();
        let start = Instant::now();
        let mut ok = 0;
        let mut throttled = 0;
        for n in 0..120 {
            match aws
                .associate_instance_profile(
                    &token,
                    "us-east-1",
                    &format!("i-{n:05}"),
                    "AzureArcForServerSSMInstanceProfile",
                )
                .await
            {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert_eq!(e.kind, crate::model::AwsErrorKind::Throttled);
                    assert_eq!(e.code, "RequestLimitExceeded");
                    throttled += 1;
                }
            }
        }
        // 120 calls of 20 ms take 2.4 s: the burst of 100 passes, and the refill of 5/s once the bucket
        // is below its burst (from the first call on: 2.38 s, 11 tokens).
        assert_eq!(start.elapsed(), Duration::from_millis(2400));
        assert_eq!(ok, 111);
        assert_eq!(throttled, 9);
        assert_eq!(aws.wire.count("ec2:AssociateIamInstanceProfile"), 120);
        // Another region has its own bucket.
        assert!(aws.take(Class::Associate, "eu-west-1"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_sdk_retry_waits_out_short_throttling_and_pages_cost_calls() {
        let aws = account(Limits {
            ssm: BucketSpec {
                burst: 1.0,
                rate: 2.0,
            },
            describe_page: 100,
            ..Limits::default()
        });
        let all = aws.describe_instances("us-east-1", None).await.unwrap();
        assert_eq!(all.len(), 300);
        assert_eq!(aws.wire.count("ec2:DescribeInstances"), 3);
        let ids: Vec<String> = all.iter().map(|i| i.instance_id.clone()).collect();
        // 300 ids = 6 calls against a bucket of 1 refilled at 2/s: the retries' backoff waits it out.
        let op = "ssm:DescribeInstanceInformation";
        let start = Instant::now();
        aws.describe_instance_information("us-east-1", &ids)
            .await
            .unwrap();
        let throttled = aws.throttled.count(op);
        assert!(throttled > 0);
        assert_eq!(aws.wire.count(op), 6 + throttled);
        assert!(
            start.elapsed() >= Duration::from_millis(2500),
            "{:?}",
            start.elapsed()
        );
        // Throttled on every attempt: the SDK gives up after its attempts and the error says so.
        let starved = account(Limits {
            ssm: BucketSpec {
                burst: 1.0,
                rate: 0.001,
            },
            ..Limits::default()
        });
        let e = starved
            .describe_instance_information("us-east-1", &ids)
            .await
            .unwrap_err();
        assert_eq!(e.code, "ThrottlingException");
        // Six queries run at once: one gets the token, each other gives up after its attempts.
        let attempts = u64::from(Limits::default().max_attempts);
        let wire = starved.wire.count(op);
        assert!((1 + attempts..=1 + 5 * attempts).contains(&wire), "{wire}");
    }
}
