//! `template azure-role`: the Azure custom role of the orchestrator (the identity of `[azure]`), with
//! exactly the Resource Manager actions `plan`, `run` and the daemon use, as `az role definition create
//! --role-definition` reads it.
//!
//! The orchestrator's calls and their actions (see [`crate::adapters::azure`]):
//! - `GET .../resourcegroups/{rg}`: `Microsoft.Resources/subscriptions/resourceGroups/read`;
//! - `PUT .../resourcegroups/{rg}` (`create-resource-group`): `.../resourceGroups/write`;
//! - `GET .../machines`, `GET .../machines/{name}`: `Microsoft.HybridCompute/machines/read`;
//! - `DELETE .../machines/{name}` (`delete-arc-machine`): `Microsoft.HybridCompute/machines/delete`;
//! - `POST /providers/Microsoft.ResourceGraph/resources` (duplicates found in Azure):
//!   `Microsoft.ResourceGraph/resources/read` (it also needs read on the machines it may find elsewhere:
//!   grant Reader where Defender's or other tools' machines live, or accept the warning);
//! - the install scripts connect with a token of this identity, and `azcmagent connect` creates the
//!   machine with it: `Microsoft.HybridCompute/machines/write`. An onboarding identity that holds only
//!   the built-in "Azure Connected Machine Onboarding" role takes that part over where one is configured.

use serde_json::{json, Value};

use super::TemplateError;
use crate::config::Config;

/// The Resource Manager actions of the orchestrator's own calls.
pub const ORCHESTRATOR_ACTIONS: [&str; 5] = [
    "Microsoft.ResourceGraph/resources/read",
    "Microsoft.Resources/subscriptions/resourceGroups/read",
    "Microsoft.Resources/subscriptions/resourceGroups/write",
    "Microsoft.HybridCompute/machines/read",
    "Microsoft.HybridCompute/machines/delete",
];

/// What `azcmagent connect` does with the token the install scripts carry.
pub const CONNECT_ACTION: &str = "Microsoft.HybridCompute/machines/write";

/// The role definition. Needs `[azure]` (its subscription is the assignable scope: the resource groups
/// are per account, `{account_id}`, and `create-resource-group` needs the subscription).
pub fn role(config: Option<&Config>) -> Result<Value, TemplateError> {
    let Some(azure) = config.and_then(|c| c.azure.as_ref()) else {
        return Err(TemplateError::Config {
            key: "azure",
            problem:
                "azure-role needs the [azure] section (its subscription_id is the role's scope)"
                    .into(),
        });
    };
    let mut actions: Vec<&str> = ORCHESTRATOR_ACTIONS.to_vec();
    // Without `[azure.onboarding]` the install scripts carry this identity's token, which creates the
    // machines; with it, the onboarding identity (Azure Connected Machine Onboarding) does that.
    if azure.onboarding.is_none() {
        actions.push(CONNECT_ACTION);
    }
    actions.sort_unstable();
    Ok(json!({
        "Name": "arc-onboard orchestrator",
        "IsCustom": true,
        "Description": format!(
            "What arc-onboard's orchestrator does in Azure: reads and creates the resource groups of the \
             AWS accounts ({}), reads Arc machines, connects machines through the install scripts' token, \
             and deletes the Arc machines (tagged ManagedBy=arc-onboard) of terminated EC2 instances.",
            azure.resource_group
        ),
        "Actions": actions,
        "NotActions": [],
        "DataActions": [],
        "NotDataActions": [],
        "AssignableScopes": [format!("/subscriptions/{}", azure.subscription_id)],
    }))
}
