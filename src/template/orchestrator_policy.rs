//! `template orchestrator-policy`: the IAM policy of the identity `run` and `daemon` run as.
//!
//! Its own account needs what a member role has ([`super::run_statements`]). Beyond that, by
//! `[aws.accounts].source`: `list` adds `sts:AssumeRole` on the member role (in any account, by name only);
//! `organization` also adds the Organizations listings. `[events]` adds reading and deleting messages of
//! that one queue; `credential = "aws-federation"` (of `[azure]` or `[azure.onboarding]`) adds
//! `sts:GetWebIdentityToken`, only for its audiences, RS256 and the lifetime the tool asks for. Without a configuration
//! file the policy is that of an organization-wide orchestrator with the default names.

use serde_json::{json, Value};

use super::{member_role::default_iam, partition_of, run_statements, Arns, QueueRef};
use super::{TemplateArgs, TemplateError};
use crate::config::{AccountSource, AccountsConfig, Config, CredentialConfig};

/// The orchestrator's policy document.
pub fn policy(config: Option<&Config>, args: &TemplateArgs) -> Result<Value, TemplateError> {
    let partition = partition_of(config, args);
    let iam = config.map_or_else(default_iam, |c| c.iam.clone());
    let accounts = match config {
        Some(c) => c.aws.accounts.clone(),
        None => AccountsConfig {
            source: AccountSource::Organization,
            ..AccountsConfig::default()
        },
    };
    let mut statements = run_statements(&iam, Arns::Plain(partition));
    if accounts.source == AccountSource::Organization {
        statements.push(json!({
            "Sid": "ArcOnboardListOrganizationAccounts",
            "Effect": "Allow",
            "Action": [
                "organizations:ListAccounts",
                "organizations:ListChildren",
                "organizations:ListAccountsForParent"
            ],
            "Resource": "*"
        }));
    }
    if accounts.source != AccountSource::Caller {
        statements.push(json!({
            "Sid": "ArcOnboardAssumeOnlyTheMemberRole",
            "Effect": "Allow",
            "Action": "sts:AssumeRole",
            "Resource": format!("arn:{}:iam::*:role/{}", partition.as_str(), accounts.member_role)
        }));
    }
    if let Some(events) = config.and_then(|c| c.events.as_ref()) {
        let queue =
            QueueRef::parse(&events.queue_url).map_err(|problem| TemplateError::Config {
                key: "events.queue_url",
                problem,
            })?;
        statements.push(json!({
            "Sid": "ArcOnboardReadInstanceEvents",
            "Effect": "Allow",
            "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage"],
            "Resource": queue.arn(args.partition)
        }));
    }
    let audiences = federation_audiences(config);
    if !audiences.is_empty() {
        statements.push(json!({
            "Sid": "ArcOnboardAzureAssertionForAwsFederation",
            "Effect": "Allow",
            "Action": "sts:GetWebIdentityToken",
            "Resource": "*",
            "Condition": federation_conditions(&audiences)
        }));
    }
    Ok(super::policy_document(statements))
}

/// The audiences `sts:GetWebIdentityToken` is asked for: the orchestrator's and the onboarding identity's
/// `aws_federation_audience`, where those use `credential = "aws-federation"`.
fn federation_audiences(config: Option<&Config>) -> Vec<String> {
    let Some(azure) = config.and_then(|c| c.azure.as_ref()) else {
        return Vec::new();
    };
    let mut out: Vec<String> = std::iter::once(&azure.credential)
        .chain(azure.onboarding.as_ref().map(|o| &o.credential))
        .filter_map(|c| match c {
            CredentialConfig::AwsFederation { audience } => Some(audience.clone()),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What the tool asks of `sts:GetWebIdentityToken`, and nothing else: these audiences, the signing
/// algorithm it uses, and at most the lifetime it asks for.
pub(crate) fn federation_conditions(audiences: &[String]) -> Value {
    json!({
        "ForAllValues:StringEquals": {"sts:IdentityTokenAudience": audiences},
        "Null": {"sts:IdentityTokenAudience": "false"},
        "StringEquals": {"sts:SigningAlgorithm": crate::adapters::aws::FEDERATION_SIGNING_ALGORITHM},
        "NumericLessThanEquals": {"sts:DurationSeconds": crate::adapters::credential::FEDERATION_TOKEN_SECONDS}
    })
}
