//! One port per external system (AWS services and Azure Resource Manager), speaking domain types. Real
//! adapters live in [`crate::adapters`]; stateful fakes in the test kit, `crate::fake`.
//! Every method that changes something takes a [`MutationToken`]. [`memory`]: the daemon's durable memory; [`clock`]: the time the core reads.

pub mod memory;

pub use memory::Memory;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod accounts;
pub mod clock;
pub mod progress;

use crate::model::{
    ApiCounts, ArcMachine, AwsError, AzureError, CommandStatus, Ec2Instance, GraphMachine,
    InstanceFate, InstanceProfile, ProfileAssociation, Role, Secret, SsmInstance, TagSelector,
};

/// Proof that the caller may change AWS or Azure.
///
/// Only the `run` and `daemon` commands mint one ([`MutationToken::mint`] is crate-private and called from
/// [`crate::cli`] only), so `plan` and `validate` cannot reach a mutating port method by construction.
#[derive(Debug)]
pub struct MutationToken {
    _private: (),
}

impl MutationToken {
    /// Mints the token. Call sites: `run` and `daemon` in [`crate::cli`], and tests.
    pub(crate) fn mint() -> MutationToken {
        MutationToken { _private: () }
    }
}

/// The account behind the credentials.
pub trait Sts: Send + Sync {
    /// `sts:GetCallerIdentity`: the 12-digit account id.
    fn account_id(&self) -> impl Future<Output = Result<String, AwsError>> + Send;
}

/// EC2, per region.
pub trait Ec2: Send + Sync {
    /// `ec2:DescribeRegions`: regions enabled for the account.
    fn enabled_regions(&self) -> impl Future<Output = Result<Vec<String>, AwsError>> + Send;

    /// `ec2:DescribeInstances`, all pages, tag filter applied by the server, terminated instances dropped.
    fn describe_instances(
        &self,
        region: &str,
        tag: Option<&TagSelector>,
    ) -> impl Future<Output = Result<Vec<Ec2Instance>, AwsError>> + Send;

    /// `ec2:DescribeInstances` of just these instances (an `instance-id` filter, so unknown ids are simply
    /// absent), all pages, the tag filter applied by the server, terminated instances dropped.
    fn describe_instances_by_id(
        &self,
        region: &str,
        instance_ids: &[String],
        tag: Option<&TagSelector>,
    ) -> impl Future<Output = Result<Vec<Ec2Instance>, AwsError>> + Send;

    /// `ec2:DescribeInstances` of just these instances in any state, terminated included, without the tag
    /// filter (an `instance-id` filter: an id EC2 no longer knows is simply absent): whether the instance
    /// of an Arc machine is gone.
    fn instance_fates(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> impl Future<Output = Result<Vec<InstanceFate>, AwsError>> + Send;

    /// `ec2:DescribeIamInstanceProfileAssociations`, all pages, only live associations; limited to
    /// `instance_ids` unless empty.
    fn profile_associations(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> impl Future<Output = Result<Vec<ProfileAssociation>, AwsError>> + Send;

    /// `ec2:AssociateIamInstanceProfile`; returns the association id.
    fn associate_instance_profile(
        &self,
        token: &MutationToken,
        region: &str,
        instance_id: &str,
        profile_name: &str,
    ) -> impl Future<Output = Result<String, AwsError>> + Send;
}

/// IAM (global per account).
pub trait Iam: Send + Sync {
    /// `iam:GetInstanceProfile`; `None` when it does not exist.
    fn get_instance_profile(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<InstanceProfile>, AwsError>> + Send;

    /// `iam:GetRole`; `None` when it does not exist.
    fn get_role(&self, name: &str) -> impl Future<Output = Result<Option<Role>, AwsError>> + Send;

    /// `iam:ListAttachedRolePolicies`, all pages: policy ARNs.
    fn attached_policies(
        &self,
        role: &str,
    ) -> impl Future<Output = Result<Vec<String>, AwsError>> + Send;

    /// `iam:CreateRole` with the EC2 trust policy, tagged as ours.
    fn create_role(
        &self,
        token: &MutationToken,
        name: &str,
    ) -> impl Future<Output = Result<Role, AwsError>> + Send;

    /// `iam:AttachRolePolicy`.
    fn attach_role_policy(
        &self,
        token: &MutationToken,
        role: &str,
        policy_arn: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;

    /// `iam:CreateInstanceProfile`, tagged as ours.
    fn create_instance_profile(
        &self,
        token: &MutationToken,
        name: &str,
    ) -> impl Future<Output = Result<InstanceProfile, AwsError>> + Send;

    /// `iam:AddRoleToInstanceProfile`.
    fn add_role_to_instance_profile(
        &self,
        token: &MutationToken,
        profile: &str,
        role: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// SSM, per region.
pub trait Ssm: Send + Sync {
    /// `ssm:DescribeInstanceInformation` for these instance ids (batched by the adapter).
    fn describe_instance_information(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> impl Future<Output = Result<Vec<SsmInstance>, AwsError>> + Send;

    /// `ssm:SendCommand` to at most 50 instances; returns the command id.
    fn send_command(
        &self,
        token: &MutationToken,
        region: &str,
        request: &CommandRequest,
    ) -> impl Future<Output = Result<String, AwsError>> + Send;

    /// `ssm:ListCommands` for one command id; `None` when SSM does not know it (yet).
    fn command_status(
        &self,
        region: &str,
        command_id: &str,
    ) -> impl Future<Output = Result<Option<CommandSummary>, AwsError>> + Send;

    /// `ssm:ListCommands` of commands requested after `since` whose comment starts with `comment_prefix`.
    fn recent_commands(
        &self,
        region: &str,
        since: std::time::SystemTime,
        comment_prefix: &str,
    ) -> impl Future<Output = Result<Vec<CommandSummary>, AwsError>> + Send;

    /// `ssm:ListCommandInvocations` with details, all pages.
    fn command_invocations(
        &self,
        region: &str,
        command_id: &str,
    ) -> impl Future<Output = Result<Vec<Invocation>, AwsError>> + Send;

    /// `ssm:GetCommandInvocation`: the fuller output of one instance; `None` for `InvocationDoesNotExist`.
    fn invocation_detail(
        &self,
        region: &str,
        command_id: &str,
        instance_id: &str,
    ) -> impl Future<Output = Result<Option<Invocation>, AwsError>> + Send;

    /// `ssm:GetServiceSetting` of [`DHMC_SETTING`]: the role Default Host Management Configuration gives
    /// the region's instances, `None` when DHMC is off (`$None`, or the setting not found).
    fn default_host_management_role(
        &self,
        region: &str,
    ) -> impl Future<Output = Result<Option<String>, AwsError>> + Send;

    /// `ssm:CancelCommand`.
    fn cancel_command(
        &self,
        token: &MutationToken,
        region: &str,
        command_id: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// The SQS queue of event-driven onboarding (one queue, in its own region).
pub trait Queue: Send + Sync {
    /// `sqs:ReceiveMessage`: waits up to `wait` (long polling, at most 20 s) for up to `max` (1..=10)
    /// messages.
    fn receive(
        &self,
        wait: std::time::Duration,
        max: i32,
    ) -> impl Future<Output = Result<Vec<QueueMessage>, AwsError>> + Send;

    /// `sqs:DeleteMessageBatch` (10 to a call): deletes these messages by receipt handle. Returns the
    /// receipt handles SQS did not delete.
    fn delete(
        &self,
        token: &MutationToken,
        receipt_handles: &[String],
    ) -> impl Future<Output = Result<Vec<String>, AwsError>> + Send;
}

/// One message received from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// SQS's message id (the same on every redelivery).
    pub message_id: String,
    /// What deletes this delivery of it.
    pub receipt_handle: String,
    /// The body: for an EventBridge target, the event JSON.
    pub body: String,
}

/// The SSM service setting of Default Host Management Configuration (per account and region).
pub const DHMC_SETTING: &str = "/ssm/managed-instance/default-ec2-instance-management-role";

/// Reads a [`DHMC_SETTING`] value: the role it names, `None` for `$None` or empty (DHMC off).
pub fn dhmc_role(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "$None")
        .map(str::to_string)
}

/// SSM documents the tool sends.
pub const LINUX_DOCUMENT: &str = "AWS-RunShellScript";
/// SSM documents the tool sends.
pub const WINDOWS_DOCUMENT: &str = "AWS-RunPowerShellScript";

/// A Run Command request. Its `Debug` leaves the script out: the script carries the Azure access token.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandRequest {
    /// `AWS-RunShellScript` or `AWS-RunPowerShellScript`.
    pub document: &'static str,
    /// At most 50.
    pub instance_ids: Vec<String>,
    /// The script, as the document's `commands` parameter.
    pub script: String,
    /// The document's `executionTimeout`.
    pub execution_timeout: std::time::Duration,
    /// `TimeoutSeconds`: how long SSM tries to deliver.
    pub delivery_timeout: std::time::Duration,
    /// `Comment` (at most 100 characters) identifying the run.
    pub comment: String,
}

impl std::fmt::Debug for CommandRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandRequest")
            .field("document", &self.document)
            .field("instance_ids", &self.instance_ids)
            .field("script", &"[redacted]")
            .field("execution_timeout", &self.execution_timeout)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("comment", &self.comment)
            .finish()
    }
}

/// Command-level state (`ListCommands`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSummary {
    /// Command id.
    pub command_id: String,
    /// Command-level status.
    pub status: CommandStatus,
    /// Target instance ids.
    pub instance_ids: Vec<String>,
    /// Comment.
    pub comment: String,
}

impl CommandSummary {
    /// Whether the command will change no more.
    pub fn is_done(&self) -> bool {
        self.status.is_done()
    }
}

/// One instance's result of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Instance.
    pub instance_id: String,
    /// Invocation status.
    pub status: CommandStatus,
    /// Free text: `Undeliverable`, `Execution Timed Out`, ...
    pub status_details: String,
    /// The script's exit code (-1 when it did not run).
    pub response_code: i32,
    /// Output (plugin output, or stdout then stderr).
    pub output: String,
}

impl Invocation {
    /// Whether the invocation will change no more.
    pub fn is_done(&self) -> bool {
        self.status.is_done()
    }
}

/// Azure Resource Manager for one subscription.
pub trait Arm: Send + Sync {
    /// A Resource Manager access token (cached until close to expiry).
    fn token(&self) -> impl Future<Output = Result<Secret, AzureError>> + Send;

    /// A token for install scripts, from the onboarding identity (`[azure.onboarding]`) when one is
    /// configured (the orchestrator's own token then never leaves the process): valid for at least
    /// `at_least` from now when Entra issues tokens that
    /// long (a cached token is reused only then, otherwise a new one is requested), and how long the
    /// returned token is valid.
    fn script_token(
        &self,
        at_least: Duration,
    ) -> impl Future<Output = Result<(Secret, Duration), AzureError>> + Send;

    /// Whether the resource group exists.
    fn resource_group_exists(
        &self,
        rg: &str,
    ) -> impl Future<Output = Result<bool, AzureError>> + Send;

    /// Creates the resource group (idempotent).
    fn create_resource_group(
        &self,
        token: &MutationToken,
        rg: &str,
        location: &str,
        tags: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), AzureError>> + Send;

    /// Every Arc machine in the group (empty when the group does not exist).
    fn list_machines(
        &self,
        rg: &str,
    ) -> impl Future<Output = Result<Vec<ArcMachine>, AzureError>> + Send;

    /// Deletes an Arc machine (`DELETE .../machines/{name}`); a machine that is already gone counts as
    /// deleted.
    fn delete_machine(
        &self,
        token: &MutationToken,
        rg: &str,
        name: &str,
    ) -> impl Future<Output = Result<(), AzureError>> + Send;

    /// One Arc machine, `None` when absent.
    fn get_machine(
        &self,
        rg: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ArcMachine>, AzureError>> + Send;

    /// Azure Resource Graph (read-only, one query, all its pages): the Arc machines in every subscription
    /// the identity can read whose name or `InstanceId` tag is one of `instance_ids` (at most
    /// [`GRAPH_BATCH`]), wherever they are, our resource group included.
    fn find_machines(
        &self,
        instance_ids: &[String],
    ) -> impl Future<Output = Result<Vec<GraphMachine>, AzureError>> + Send;
}

/// The most instance ids one Resource Graph query names.
pub const GRAPH_BATCH: usize = 1000;

/// Counts API calls by `service:Operation`. Real adapters count every HTTP attempt (retries included) with
/// an SDK interceptor; fakes count every call. Cloning shares the counts.
#[derive(Debug, Clone, Default)]
pub struct ApiCounter(Arc<Mutex<BTreeMap<String, u64>>>);

impl ApiCounter {
    /// Adds one call of `operation` (`ec2:DescribeInstances`).
    pub fn record(&self, operation: &str) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(operation.to_string()).or_default() += 1;
    }

    /// The counts so far.
    pub fn snapshot(&self) -> ApiCounts {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Calls of one operation so far.
    pub fn count(&self, operation: &str) -> u64 {
        self.snapshot().get(operation).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_request_shows_no_script_and_no_token() {
        let token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.secret-part";
        let request = CommandRequest {
            document: LINUX_DOCUMENT,
            instance_ids: vec!["i-0abc".into()],
            script: format!("set -eu\nazcmagent connect --access-token '{token}'\n"),
            execution_timeout: std::time::Duration::from_secs(1800),
            delivery_timeout: std::time::Duration::from_secs(600),
            comment: "arc-onboard run 1234".into(),
        };
        let shown = format!("{request:?}");
        assert!(!shown.contains(token), "{shown}");
        assert!(!shown.contains("azcmagent connect"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(
            shown.contains("i-0abc") && shown.contains("arc-onboard run 1234"),
            "{shown}"
        );
    }
}
