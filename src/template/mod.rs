//! `arc-onboard template NAME`: deployable CloudFormation, IAM and Azure role documents built from the
//! configuration.
//!
//! Every document is built as a `serde_json::Value` and serialized once, so no configured name, queue URL
//! or command-line value can break out of the JSON it sits in. CloudFormation reads JSON templates as
//! well as YAML ones, so every template here is JSON.
//!
//! The permissions are those of `run` in one account (see [`run_statements`]); `scripts/iam/run-policy.json`
//! is the same set as a static example, and `tests/templates.rs` checks both against the calls the binary
//! makes against the emulator.

pub mod azure_role;
pub mod events;
pub mod member_role;
pub mod orchestrator_policy;

use serde_json::{json, Value};

use crate::config::{Config, IamConfig, SSM_POLICY_ARN};

/// The templates `arc-onboard template` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TemplateName {
    /// CloudFormation for the member-account role (a StackSet with service-managed permissions).
    MemberRole,
    /// The orchestrator's own IAM policy (JSON).
    OrchestratorPolicy,
    /// CloudFormation for the EventBridge rules and the SQS queue of event-driven onboarding.
    Events,
    /// The Azure custom role definition of the orchestrator (JSON), with exactly the ARM actions it uses.
    AzureRole,
}

/// AWS partitions, for ARNs outside CloudFormation (where `AWS::Partition` is not available).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Partition {
    /// Commercial regions.
    Aws,
    /// China regions.
    AwsCn,
    /// AWS GovCloud (US).
    AwsUsGov,
}

impl Partition {
    /// The partition's name as ARNs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Partition::Aws => "aws",
            Partition::AwsCn => "aws-cn",
            Partition::AwsUsGov => "aws-us-gov",
        }
    }

    /// The partition a region belongs to.
    pub fn of_region(region: &str) -> Partition {
        if region.starts_with("cn-") {
            Partition::AwsCn
        } else if region.starts_with("us-gov-") {
            Partition::AwsUsGov
        } else {
            Partition::Aws
        }
    }
}

/// Options of `template` beyond the configuration file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TemplateArgs {
    /// member-role: the orchestrator's AWS account (12 digits), trusted as a whole (its `root`); also the
    /// default of the template's `OrchestratorAccountId` parameter. events --forwarder: the account whose
    /// default event bus receives the events.
    #[arg(long, value_name = "ID", conflicts_with = "orchestrator_role_arn")]
    pub orchestrator_account: Option<String>,
    /// member-role: trust only this role (the orchestrator's own role) instead of a whole account.
    #[arg(long, value_name = "ARN")]
    pub orchestrator_role_arn: Option<String>,
    /// events: the AWS Organizations id (`o-...`) allowed to put events on the orchestrator's bus; the
    /// default of the template's `OrganizationId` parameter.
    #[arg(long, value_name = "ID")]
    pub organization_id: Option<String>,
    /// events: print the forwarding template instead (deploy it as a StackSet in the member accounts, and
    /// in the orchestrator account's other regions): rules that send both event kinds to the orchestrator's
    /// default event bus.
    #[arg(long)]
    pub forwarder: bool,
    /// orchestrator-policy: partition of the ARNs (default: that of the configured regions, else `aws`).
    #[arg(long, value_enum)]
    pub partition: Option<Partition>,
}

/// Why a template could not be printed (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A command-line value is unusable.
    #[error("--{option}: {problem}")]
    Option {
        /// The option, without dashes.
        option: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A configured value cannot be turned into what the template needs.
    #[error("{key}: {problem}")]
    Config {
        /// The configuration key.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// Prints the template `name` as JSON text (with a final newline).
pub fn render(
    name: TemplateName,
    config: Option<&Config>,
    args: &TemplateArgs,
) -> Result<String, TemplateError> {
    check_args(args)?;
    let doc = match name {
        TemplateName::MemberRole => member_role::template(config, args),
        TemplateName::OrchestratorPolicy => orchestrator_policy::policy(config, args)?,
        TemplateName::Events => events::template(config, args)?,
        TemplateName::AzureRole => azure_role::role(config)?,
    };
    let mut text = serde_json::to_string_pretty(&doc).expect("a JSON value serializes");
    text.push('\n');
    Ok(text)
}

fn check_args(args: &TemplateArgs) -> Result<(), TemplateError> {
    if let Some(id) = &args.orchestrator_account {
        if !is_account_id(id) {
            return Err(TemplateError::Option {
                option: "orchestrator-account",
                problem: format!("{id:?} is not a 12-digit AWS account id"),
            });
        }
    }
    if let Some(arn) = &args.orchestrator_role_arn {
        if !is_role_arn(arn) {
            return Err(TemplateError::Option {
                option: "orchestrator-role-arn",
                problem: format!(
                    "{arn:?} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)"
                ),
            });
        }
    }
    if let Some(org) = &args.organization_id {
        if !is_organization_id(org) {
            return Err(TemplateError::Option {
                option: "organization-id",
                problem: format!("{org:?} is not an organization id (o- and 10 to 32 lowercase letters or digits)"),
            });
        }
    }
    Ok(())
}

/// Twelve ASCII digits.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `arn:PARTITION:iam::ACCOUNT:role/PATH/NAME` with IAM's name characters.
pub fn is_role_arn(s: &str) -> bool {
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let [arn, partition, "iam", "", account, resource] = parts.as_slice() else {
        return false;
    };
    *arn == "arn"
        && ["aws", "aws-cn", "aws-us-gov"].contains(partition)
        && is_account_id(account)
        && resource.strip_prefix("role/").is_some_and(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c))
        })
}

/// `o-` and 10 to 32 lowercase letters or digits.
pub fn is_organization_id(s: &str) -> bool {
    s.strip_prefix("o-").is_some_and(|rest| {
        (10..=32).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// How ARNs are written: inside a CloudFormation template (partition and account from pseudo parameters,
/// so one template serves every account of a StackSet) or in a plain policy document.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arns {
    /// `Fn::Join` with `AWS::Partition` and `AWS::AccountId`.
    Cfn,
    /// Literal partition, any account.
    Plain(Partition),
}

impl Arns {
    /// `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`; `account` is this account (`*` outside
    /// CloudFormation) when `this_account`, else empty (AWS managed policies, SSM documents).
    pub(crate) fn arn(
        self,
        service: &str,
        region: &str,
        this_account: bool,
        resource: &str,
    ) -> Value {
        match self {
            Arns::Plain(p) => {
                let account = if this_account { "*" } else { "" };
                Value::String(format!(
                    "arn:{}:{service}:{region}:{account}:{resource}",
                    p.as_str()
                ))
            }
            Arns::Cfn => {
                let mut parts = vec![json!("arn:"), json!({"Ref": "AWS::Partition"})];
                if this_account {
                    parts.push(json!(format!(":{service}:{region}:")));
                    parts.push(json!({"Ref": "AWS::AccountId"}));
                    parts.push(json!(format!(":{resource}")));
                } else {
                    parts.push(json!(format!(":{service}:{region}::{resource}")));
                }
                json!({"Fn::Join": ["", parts]})
            }
        }
    }
}

/// The statements of everything `run` (and the daemon's passes) do in one account: observe, give
/// instances the SSM role, run the install through the stock SSM documents and track it. Resources are
/// scoped where IAM allows: the SSM role and instance profile of `[iam]`, the SSM policy, the stock
/// documents. The describes and SSM's command tracking take no resource-level permissions.
pub(crate) fn run_statements(iam: &IamConfig, arns: Arns) -> Vec<Value> {
    let ssm_policy = match arns {
        // AWS managed policies live in the account named `aws`.
        Arns::Cfn => json!({"Fn::Join": ["", [
            "arn:", {"Ref": "AWS::Partition"}, ":iam::aws:policy/AmazonSSMManagedInstanceCore"
        ]]}),
        Arns::Plain(p) => {
            json!(SSM_POLICY_ARN.replacen("arn:aws:", &format!("arn:{}:", p.as_str()), 1))
        }
    };
    let ssm_role = arns.arn("iam", "", true, &format!("role/{}", iam.role_name));
    let ssm_profile = arns.arn(
        "iam",
        "",
        true,
        &format!("instance-profile/{}", iam.instance_profile_name),
    );
    vec![
        json!({
            "Sid": "ArcOnboardObserve",
            "Effect": "Allow",
            "Action": [
                "sts:GetCallerIdentity",
                "ec2:DescribeRegions",
                "ec2:DescribeInstances",
                "ec2:DescribeIamInstanceProfileAssociations",
                "ssm:DescribeInstanceInformation",
                "ssm:ListCommands",
                "ssm:ListCommandInvocations",
                "ssm:GetCommandInvocation",
                "ssm:GetServiceSetting"
            ],
            "Resource": "*"
        }),
        json!({
            "Sid": "ArcOnboardReadRolesAndProfiles",
            "Effect": "Allow",
            "Action": ["iam:GetInstanceProfile", "iam:GetRole", "iam:ListAttachedRolePolicies"],
            "Resource": [
                arns.arn("iam", "", true, "role/*"),
                arns.arn("iam", "", true, "instance-profile/*")
            ]
        }),
        json!({
            "Sid": "ArcOnboardAssociateSsmProfile",
            "Effect": "Allow",
            "Action": "ec2:AssociateIamInstanceProfile",
            "Resource": arns.arn("ec2", "*", true, "instance/*")
        }),
        json!({
            "Sid": "ArcOnboardPassOnlyTheSsmRole",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": ssm_role.clone(),
            "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
        }),
        json!({
            "Sid": "ArcOnboardCreateSsmRoleAndProfile",
            "Effect": "Allow",
            "Action": ["iam:CreateRole", "iam:TagRole", "iam:CreateInstanceProfile", "iam:TagInstanceProfile"],
            "Resource": [ssm_role, ssm_profile]
        }),
        json!({
            "Sid": "ArcOnboardAddSsmRoleToProfiles",
            "Effect": "Allow",
            "Action": "iam:AddRoleToInstanceProfile",
            "Resource": arns.arn("iam", "", true, "instance-profile/*")
        }),
        json!({
            "Sid": "ArcOnboardAttachOnlyTheSsmPolicy",
            "Effect": "Allow",
            "Action": "iam:AttachRolePolicy",
            "Resource": arns.arn("iam", "", true, "role/*"),
            "Condition": {"ArnEquals": {"iam:PolicyARN": ssm_policy}}
        }),
        json!({
            "Sid": "ArcOnboardRunOnlyTheStockScriptDocuments",
            "Effect": "Allow",
            "Action": "ssm:SendCommand",
            "Resource": [
                arns.arn("ssm", "*", false, "document/AWS-RunShellScript"),
                arns.arn("ssm", "*", false, "document/AWS-RunPowerShellScript"),
                arns.arn("ec2", "*", true, "instance/*")
            ]
        }),
        json!({
            "Sid": "ArcOnboardCancelItsCommands",
            "Effect": "Allow",
            "Action": "ssm:CancelCommand",
            "Resource": "*"
        }),
    ]
}

/// An IAM policy document.
pub(crate) fn policy_document(statements: Vec<Value>) -> Value {
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// Where an SQS queue URL points: its region (when the host says it), account and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRef {
    /// Region, when the host names one (an emulator's URL does not).
    pub region: Option<String>,
    /// The owning account.
    pub account: String,
    /// The queue's name.
    pub name: String,
}

impl QueueRef {
    /// Reads `https://sqs.REGION.amazonaws.com/ACCOUNT/NAME` and the other shapes SQS hands out
    /// (`REGION.queue.amazonaws.com`, `queue.amazonaws.com`, `.amazonaws.com.cn`, `sqs.REGION.api.aws`), and
    /// any host with the same path (emulators).
    pub fn parse(url: &str) -> Result<QueueRef, String> {
        let u = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
        let segments: Vec<String> = u
            .path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).map(percent_decode).collect())
            .unwrap_or_default();
        let [account, name] = segments.as_slice() else {
            return Err(format!(
                "{url:?} does not end in /ACCOUNT/QUEUE_NAME as SQS queue URLs do"
            ));
        };
        if !is_account_id(account) {
            return Err(format!(
                "{account:?} in {url:?} is not a 12-digit account id"
            ));
        }
        let labels: Vec<&str> = host.split('.').collect();
        let region = match labels.as_slice() {
            ["sqs", region, ..] if region.contains('-') => Some(region.to_string()),
            [region, "queue", "amazonaws", ..] => Some(region.to_string()),
            ["queue", "amazonaws", "com"] => Some("us-east-1".to_string()),
            _ => None,
        };
        Ok(QueueRef {
            region,
            account: account.clone(),
            name: name.clone(),
        })
    }

    /// The queue's ARN (`*` for an unknown region).
    pub fn arn(&self, partition: Option<Partition>) -> String {
        let region = self.region.as_deref().unwrap_or("*");
        let partition = partition.unwrap_or_else(|| Partition::of_region(region));
        format!(
            "arn:{}:sqs:{region}:{}:{}",
            partition.as_str(),
            self.account,
            self.name
        )
    }
}

/// `%XX` decoding of one path segment (queue names never need it, but a URL may carry it).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(bytes[i + 1]) * 16 + hex(bytes[i + 2]));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The partition for documents outside CloudFormation: the option, else that of the configured regions.
fn partition_of(config: Option<&Config>, args: &TemplateArgs) -> Partition {
    if let Some(p) = args.partition {
        return p;
    }
    match config.map(|c| &c.aws.regions) {
        Some(crate::config::RegionSelection::List(list)) => list
            .first()
            .map_or(Partition::Aws, |r| Partition::of_region(r)),
        _ => Partition::Aws,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls_of_every_shape_give_their_arn() {
        let q = QueueRef::parse("https://sqs.eu-west-1.amazonaws.com/123456789012/arc").unwrap();
        assert_eq!(q.arn(None), "arn:aws:sqs:eu-west-1:123456789012:arc");
        let q = QueueRef::parse("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q").unwrap();
        assert_eq!(q.arn(None), "arn:aws-cn:sqs:cn-north-1:123456789012:q");
        let q = QueueRef::parse("https://us-west-2.queue.amazonaws.com/123456789012/q").unwrap();
        assert_eq!(q.arn(None), "arn:aws:sqs:us-west-2:123456789012:q");
        let q = QueueRef::parse("https://queue.amazonaws.com/123456789012/q").unwrap();
        assert_eq!(q.region.as_deref(), Some("us-east-1"));
        let q = QueueRef::parse("http://127.0.0.1:4566/123456789012/q").unwrap();
        assert_eq!(q.arn(None), "arn:aws:sqs:*:123456789012:q");
        let q = QueueRef::parse("https://sqs.us-east-1.amazonaws.com/123456789012/a%22b").unwrap();
        assert_eq!(q.name, "a\"b");
        for bad in [
            "not a url",
            "https://sqs.us-east-1.amazonaws.com/queue",
            "https://sqs.us-east-1.amazonaws.com/12345/q",
            "https://sqs.us-east-1.amazonaws.com/123456789012/q/extra",
        ] {
            assert!(QueueRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn option_values_are_checked() {
        assert!(is_role_arn(
            "arn:aws:iam::123456789012:role/ops/Orchestrator"
        ));
        assert!(!is_role_arn("arn:aws:iam::123456789012:user/x"));
        assert!(!is_role_arn("arn:aws:iam::12345:role/x"));
        assert!(!is_role_arn("arn:aws:iam::123456789012:role/a\"b"));
        assert!(is_organization_id("o-abcdef1234"));
        assert!(!is_organization_id("o-ABCDEF1234"));
        assert!(!is_organization_id("r-abcd"));
    }
}
