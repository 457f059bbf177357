//! `template orchestrator-policy`: the IAM policy of the identity `run` and `daemon` run as.
//!
//! Its own account needs what a member role has ([`super::run_statements`]). Beyond that, by
//! `[aws.accounts].source`: `list` adds `sts:AssumeRole` on the member role (in any account, by name only);
//! `organization` also adds the Organizations listings. `[events]` adds reading and deleting messages of
//! that one queue; `credential = "aws-federation"` adds `sts:GetWebIdentityToken`. Without a configuration
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
            "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
            "Resource": queue.arn(args.partition)
        }));
    }
    let federated = config
        .and_then(|c| c.azure.as_ref())
        .is_some_and(|a| matches!(a.credential, CredentialConfig::AwsFederation { .. }));
    if federated {
        statements.push(json!({
            "Sid": "ArcOnboardAzureAssertionForAwsFederation",
            "Effect": "Allow",
            "Action": "sts:GetWebIdentityToken",
            "Resource": "*"
        }));
    }
    Ok(super::policy_document(statements))
}
