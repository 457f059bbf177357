//! Wiring: the real adapters a command runs on (AWS SDK, member accounts, the Azure credential and adapter).

use super::CliError;
use crate::adapters::aws;
use crate::adapters::azure::RestArm;
use crate::adapters::credential::Credential;
use crate::adapters::organizations::SdkAccounts;
use crate::config::env::process_env;
use crate::config::{AzureConfig, Config, CredentialConfig, RegionSelection};
use crate::ports::ApiCounter;

/// The AWS side of a pass: the accounts port built from the shared SDK configuration with a fresh call
/// counter (it hands out each account's EC2, IAM and SSM adapters).
pub(super) struct Adapters {
    pub(super) counter: ApiCounter,
    pub(super) accounts: SdkAccounts,
    pub(super) arm: Option<RestArm>,
}

/// `RoleSessionName` of the member accounts' sessions: names the command and this run.
pub(super) fn session_name(mode: &str) -> String {
    let run = uuid::Uuid::new_v4().simple().to_string();
    format!("arc-onboard-{mode}-{}", &run[..12])
}

/// The Azure credential, when the configuration has `[azure]` (and, for `client-secret`, the secret is
/// set), with its local proof checked: a bad one stops the command before any AWS call.
pub(super) fn load_credential(config: &Config) -> Result<Option<Credential>, CliError> {
    match &config.azure {
        None => Ok(None),
        Some(azure) => Credential::load(azure, &process_env).map_err(CliError::Credential),
    }
}

/// The Azure adapter over `credential`; built once per command, before the AWS SDK is configured, so that
/// an unusable TLS setup stops the command before any AWS call. With `scripts` (the command may send install
/// scripts: `run`, `daemon`), the onboarding identity's credential is loaded and checked too, and its
/// absence is checked by [`check_script_identity`].
pub(super) fn azure_adapter(
    config: &Config,
    credential: Option<Credential>,
    scripts: bool,
) -> Result<Option<RestArm>, CliError> {
    let (Some(azure), Some(credential)) = (&config.azure, credential) else {
        return Ok(None);
    };
    tracing::debug!(credential = %credential.describe(), "Azure credential");
    let mut arm = RestArm::new(azure, credential, ApiCounter::default())?;
    if scripts {
        check_script_identity(azure)?;
        if let Some(onboarding) = &azure.onboarding {
            let credential = Credential::load_onboarding(onboarding, &process_env)
                .map_err(CliError::Credential)?;
            tracing::debug!(credential = %credential.describe(), "onboarding identity");
            arm = arm.with_onboarding_identity(onboarding, credential);
        }
    }
    Ok(Some(arm))
}

/// Whose token install scripts would carry. Without `[azure.onboarding]` it is the orchestrator's own:
/// warned about once (it can usually do more than onboard machines), and refused outright when that is a
/// person's (`azure-cli`).
pub(super) fn check_script_identity(azure: &AzureConfig) -> Result<(), CliError> {
    if azure.onboarding.is_some() {
        return Ok(());
    }
    if azure.credential == CredentialConfig::AzureCli {
        return Err(CliError::PersonalTokenForScripts);
    }
    tracing::warn!(
        credential = azure.credential.name(),
        "no [azure.onboarding] identity: install scripts will carry the orchestrator's own Azure token, which can do more than onboard machines; add an onboarding identity with only the \"Azure Connected Machine Onboarding\" role (README: Credentials on instances)"
    );
    Ok(())
}

/// An `aws-federation` credential gets its STS client (home region) once the SDK is configured.
pub(super) fn attach_web_identity(arm: Option<&RestArm>, sdk: &aws_config::SdkConfig, home: &str) {
    let Some(arm) = arm else { return };
    for credential in std::iter::once(arm.credential()).chain(arm.onboarding_credential()) {
        if credential.needs_web_identity() {
            credential.set_web_identity(aws::WebIdentityIssuer::new(sdk, home));
        }
    }
}

impl Adapters {
    /// Adapters for one pass: `arm` is the command's Azure adapter, re-used with this pass's counter.
    pub(super) fn new(
        sdk: &aws_config::SdkConfig,
        home: &str,
        config: &Config,
        session: &str,
        arm: Option<&RestArm>,
    ) -> Adapters {
        let counter = ApiCounter::default();
        let accounts = SdkAccounts::new(sdk, home, &config.aws.accounts, session, counter.clone());
        Adapters::for_pass(&accounts, arm, counter)
    }

    /// Adapters for a daemon pass: the entered accounts' credentials are kept from pass to pass.
    pub(super) fn for_pass(
        accounts: &SdkAccounts,
        arm: Option<&RestArm>,
        counter: ApiCounter,
    ) -> Adapters {
        Adapters {
            accounts: accounts.for_pass(counter.clone()),
            arm: arm.map(|a| a.for_pass(counter.clone())),
            counter,
        }
    }
}

pub(super) fn home_region(sdk: &aws_config::SdkConfig, config: &Config) -> String {
    let first = match &config.aws.regions {
        RegionSelection::List(list) => list.first().map(String::as_str),
        RegionSelection::AllEnabled => None,
    };
    aws::home_region(sdk, first)
}

/// The endpoint the SDK calls for `service` (`sts`, `ec2`, ...) in `region`, and where it came from:
/// `AWS_ENDPOINT_URL_<SERVICE>`, `AWS_ENDPOINT_URL`, the profile's `endpoint_url`, or the SDK's default.
pub(super) fn endpoint_of(
    sdk: &aws_config::SdkConfig,
    service: &str,
    region: &str,
) -> (String, String) {
    endpoint_from(
        &|k| std::env::var(k).ok().filter(|v| !v.is_empty()),
        sdk.endpoint_url(),
        service,
        region,
    )
}

fn endpoint_from(
    env: &dyn Fn(&str) -> Option<String>,
    configured: Option<&str>,
    service: &str,
    region: &str,
) -> (String, String) {
    let specific = format!("AWS_ENDPOINT_URL_{}", service.to_ascii_uppercase());
    for var in [specific.as_str(), "AWS_ENDPOINT_URL"] {
        if let Some(url) = env(var) {
            return (url, format!("from env {var}"));
        }
    }
    if let Some(url) = configured {
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        return (
            url.to_string(),
            format!("from endpoint_url of AWS profile {profile}"),
        );
    }
    let host = match service {
        "iam" | "organizations" => format!("https://{service}.amazonaws.com"),
        _ => format!("https://{service}.{region}.amazonaws.com"),
    };
    (host, format!("the SDK's default for region {region}"))
}

#[cfg(test)]
mod tests {
    use super::endpoint_from;

    #[test]
    fn the_endpoint_says_where_it_came_from() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let e = env(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:9")]);
        assert_eq!(
            endpoint_from(&e, Some("http://127.0.0.1:9"), "sts", "us-east-1"),
            (
                "http://127.0.0.1:9".into(),
                "from env AWS_ENDPOINT_URL".into()
            )
        );
        let e = env(&[
            ("AWS_ENDPOINT_URL", "http://a"),
            ("AWS_ENDPOINT_URL_STS", "http://b"),
        ]);
        assert_eq!(
            endpoint_from(&e, None, "sts", "x").1,
            "from env AWS_ENDPOINT_URL_STS"
        );
        let e = env(&[("AWS_PROFILE", "lab")]);
        assert_eq!(
            endpoint_from(&e, Some("http://p"), "sts", "x").1,
            "from endpoint_url of AWS profile lab"
        );
        let e = env(&[]);
        assert_eq!(
            endpoint_from(&e, None, "sts", "eu-west-1"),
            (
                "https://sts.eu-west-1.amazonaws.com".into(),
                "the SDK's default for region eu-west-1".into()
            )
        );
    }
}
