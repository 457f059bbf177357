//! The configuration file: read once, validated completely into typed values before any AWS call.
//!
//! Every problem names the key it concerns (`aws.regions[1]`, `onboarding.proxy_url`) so that an operator
//! can fix the file without guessing. All problems in a file are reported together.

pub mod accounts;
pub mod duration;
mod effective;
pub mod env;
pub mod events;
pub mod lifecycle;
pub mod locations;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Table;
use url::Url;

pub use crate::config::accounts::{AccountSource, AccountsConfig, Shard};
pub use crate::config::events::EventsConfig;
pub use crate::config::lifecycle::LifecycleConfig;
use crate::config::validate::Validator;
pub use crate::config::validate::{is_guid, is_loopback_host, is_region_name};
use crate::model::TagSelector;

/// The name of the environment variable that holds the service principal's secret.
pub const CLIENT_SECRET_ENV: &str = "ARC_ONBOARD_CLIENT_SECRET";
/// The environment variable that holds the onboarding identity's client secret (`[azure.onboarding]` with
/// `credential = "client-secret"`, the default there too).
pub const ONBOARDING_CLIENT_SECRET_ENV: &str = "ARC_ONBOARD_ONBOARDING_CLIENT_SECRET";
/// The managed policy every SSM-managed instance role needs.
pub const SSM_POLICY_ARN: &str = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore";
/// Placeholder in `azure.resource_group` replaced by the AWS account id.
pub const ACCOUNT_PLACEHOLDER: &str = "{account_id}";

/// One problem in the configuration: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted path of the key, e.g. `aws.tag_filter.key`.
    pub key: String,
    /// What is wrong, in words an operator can act on.
    pub problem: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}")]
    Read {
        /// The path as given.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path} is not valid TOML: {message}")]
    Syntax {
        /// The path as given.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file is TOML but some values are unusable.
    #[error("invalid configuration in {path}:\n{}", issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The path as given.
        path: PathBuf,
        /// Every problem found.
        issues: Vec<ConfigIssue>,
    },
}

impl ConfigError {
    /// The problems found, empty for read and syntax errors.
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Invalid { issues, .. } => issues,
            _ => &[],
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where to look for instances.
    pub aws: AwsConfig,
    /// How the SSM role is given to instances.
    pub iam: IamConfig,
    /// How and how often the agent is installed.
    pub onboarding: OnboardingConfig,
    /// Where machines are onboarded; optional for `plan`, required to install.
    pub azure: Option<AzureConfig>,
    /// Event-driven onboarding (`[events]`, daemon only).
    pub events: Option<EventsConfig>,
    /// `[lifecycle]`: deletion of terminated instances' machines, repair of broken agents.
    pub lifecycle: LifecycleConfig,
    /// Settings that are valid but have no effect (e.g. a proxy with public connectivity).
    pub warnings: Vec<ConfigIssue>,
}

/// Which regions to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionSelection {
    /// Every region `DescribeRegions` reports as enabled for the account, now and in future.
    AllEnabled,
    /// Exactly these regions.
    List(Vec<String>),
}

/// The `[aws]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    /// Regions to scan.
    pub regions: RegionSelection,
    /// Only instances carrying this tag, when set.
    pub tag_filter: Option<TagSelector>,
    /// `[aws.accounts]`: the accounts in scope (default: the caller's only).
    pub accounts: AccountsConfig,
}

/// The `[iam]` section: the connector's CloudFormation stack parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamConfig {
    /// `EC2SSMIAMRoleAutoAssignment`: give instances without a profile the SSM profile.
    pub auto_assignment: bool,
    /// `EC2SSMIAMRoleAutoAssignmentSchedule`: repeat the IAM pass in the daemon.
    pub schedule_enabled: bool,
    /// `EC2SSMIAMRoleAutoAssignmentScheduleInterval`.
    pub interval: Duration,
    /// `EC2SSMIAMRolePolicyUpdateAllowed`: attach the SSM policy to existing roles that lack it.
    pub policy_update_allowed: bool,
    /// Name of the SSM role the tool creates or uses.
    pub role_name: String,
    /// Name of the instance profile that wraps the SSM role.
    pub instance_profile_name: String,
}

/// How instances reach Azure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connectivity {
    /// Direct to the public endpoints.
    Public,
    /// Through this HTTP(S) proxy (no credentials: the agent cannot authenticate to proxies).
    Proxy(Url),
}

/// The `[onboarding]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnboardingConfig {
    /// Whether the daemon repeats the onboarding pass.
    pub periodic_sync: bool,
    /// How often the daemon repeats it ("Recur every").
    pub sync_interval: Duration,
    /// Public endpoint or proxy.
    pub connectivity: Connectivity,
    /// Where Linux instances download the agent installer.
    pub installer_url_linux: Url,
    /// Where Windows instances download the agent installer.
    pub installer_url_windows: Url,
    /// The Linux installer's pinned SHA-256 (lowercase hex), checked on the instance before it runs.
    pub installer_sha256_linux: Option<String>,
    /// The Windows installer's pinned SHA-256 (lowercase hex), checked on the instance before it runs.
    pub installer_sha256_windows: Option<String>,
    /// Where Windows instances download the agent's MSI themselves (checked there for Microsoft's
    /// Authenticode signature, then handed to the installer as a local file).
    pub installer_msi_url_windows: Url,
    /// The MSI's pinned SHA-256 (lowercase hex), checked on the instance before it is installed.
    pub installer_sha256_windows_msi: Option<String>,
    /// `gateway_id`: the ARM id of the Arc gateway the agents connect through (`--gateway-id`).
    pub gateway_id: Option<String>,
    /// `private_link_scope`: the ARM id of the Arc private link scope (`--private-link-scope`).
    pub private_link_scope: Option<String>,
    /// `sql_server_license`: the `ArcSQLServerExtensionDeployment` tag every machine gets at connect.
    pub sql_server_license: SqlServerLicense,
    /// `automatic_upgrade`: connect with `--enable-automatic-upgrade` (public cloud only).
    pub automatic_upgrade: bool,
}

/// `[onboarding] sql_server_license`: what the Arc SQL Server extension may do on the machine, as the
/// `ArcSQLServerExtensionDeployment` tag says it at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlServerLicense {
    /// `Disabled`: the extension is not deployed automatically (the default: see the README).
    Disabled,
    /// `Paid`: deployed, the SQL Server license is a paid one (Software Assurance or subscription).
    Paid,
    /// `PAYG`: deployed, SQL Server is billed pay-as-you-go through Azure.
    Payg,
    /// `LicenseOnly`: deployed, the license is a perpetual one without Software Assurance.
    LicenseOnly,
}

impl SqlServerLicense {
    /// The tag `ArcSQLServerExtensionDeployment` the license is set with.
    pub const TAG: &'static str = "ArcSQLServerExtensionDeployment";

    /// Every value in the config file's spelling.
    pub const NAMES: [&'static str; 4] = ["disabled", "paid", "payg", "license-only"];

    /// The config file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SqlServerLicense::Disabled => "disabled",
            SqlServerLicense::Paid => "paid",
            SqlServerLicense::Payg => "payg",
            SqlServerLicense::LicenseOnly => "license-only",
        }
    }

    /// The value of the `ArcSQLServerExtensionDeployment` tag.
    pub fn tag_value(self) -> &'static str {
        match self {
            SqlServerLicense::Disabled => "Disabled",
            SqlServerLicense::Paid => "Paid",
            SqlServerLicense::Payg => "PAYG",
            SqlServerLicense::LicenseOnly => "LicenseOnly",
        }
    }

    /// Parses the config file's spelling.
    pub fn parse(s: &str) -> Option<SqlServerLicense> {
        [
            SqlServerLicense::Disabled,
            SqlServerLicense::Paid,
            SqlServerLicense::Payg,
            SqlServerLicense::LicenseOnly,
        ]
        .into_iter()
        .find(|l| l.as_str() == s)
    }
}

/// Azure clouds and their default endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AzureCloud {
    /// Public Azure.
    AzureCloud,
    /// Azure Government.
    AzureUsGovernment,
    /// Azure operated by 21Vianet.
    AzureChinaCloud,
}

impl AzureCloud {
    /// The name `azcmagent --cloud` and the config file use.
    pub fn as_str(self) -> &'static str {
        match self {
            AzureCloud::AzureCloud => "AzureCloud",
            AzureCloud::AzureUsGovernment => "AzureUSGovernment",
            AzureCloud::AzureChinaCloud => "AzureChinaCloud",
        }
    }

    fn default_authority(self) -> &'static str {
        match self {
            AzureCloud::AzureCloud => "https://login.microsoftonline.com",
            AzureCloud::AzureUsGovernment => "https://login.microsoftonline.us",
            AzureCloud::AzureChinaCloud => "https://login.chinacloudapi.cn",
        }
    }

    /// The agent installers Microsoft's onboarding scripts download for this cloud (Linux, Windows).
    /// Microsoft documents none for Azure operated by 21Vianet, so there the URLs must be configured.
    fn default_installers(self) -> Option<(&'static str, &'static str)> {
        match self {
            AzureCloud::AzureCloud => Some((
                "https://gbl.his.arc.azure.com/azcmagent-linux",
                "https://aka.ms/azcmagent-windows",
            )),
            AzureCloud::AzureUsGovernment => Some((
                "https://gbl.his.arc.azure.us/azcmagent-linux",
                "https://gbl.his.arc.azure.us/azcmagent-windows",
            )),
            AzureCloud::AzureChinaCloud => None,
        }
    }

    /// The agent MSI Microsoft's Windows installer downloads for this cloud (the path it uses on
    /// `gbl.his.arc.azure.com`; the Azure Government host is inferred from the installers' host there).
    /// None for Azure operated by 21Vianet, as for the installers.
    fn default_windows_msi(self) -> Option<&'static str> {
        match self {
            AzureCloud::AzureCloud => Some(
                "https://gbl.his.arc.azure.com/azcmagent/latest/AzureConnectedMachineAgent.msi",
            ),
            AzureCloud::AzureUsGovernment => {
                Some("https://gbl.his.arc.azure.us/azcmagent/latest/AzureConnectedMachineAgent.msi")
            }
            AzureCloud::AzureChinaCloud => None,
        }
    }

    fn default_resource_manager(self) -> &'static str {
        match self {
            AzureCloud::AzureCloud => "https://management.azure.com",
            AzureCloud::AzureUsGovernment => "https://management.usgovcloudapi.net",
            AzureCloud::AzureChinaCloud => "https://management.chinacloudapi.cn",
        }
    }
}

/// The `[azure]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureConfig {
    /// Entra tenant (GUID).
    pub tenant_id: String,
    /// Subscription the machines go to (GUID).
    pub subscription_id: String,
    /// Azure location of the Arc machines: one for all, or `auto` (by AWS region).
    pub location: Location,
    /// `[azure.locations]`: AWS region -> Azure location; wins over `location`.
    pub locations: BTreeMap<String, String>,
    /// The location of resource groups arc-onboard creates (`resource_group_location`, else `location`).
    pub resource_group_location: String,
    /// Resource group name; may contain `{account_id}`.
    pub resource_group: String,
    /// Which Azure cloud.
    pub cloud: AzureCloud,
    /// Application (client) id (GUID): the service principal, or a user-assigned managed identity. `None`
    /// only with `credential = "managed-identity"` (the system-assigned identity) or `"azure-cli"`.
    pub client_id: Option<String>,
    /// How arc-onboard gets its Resource Manager token.
    pub credential: CredentialConfig,
    /// Keys whose value came from an environment variable (`azure.client_id` -> `AZURE_CLIENT_ID`).
    pub from_env: BTreeMap<&'static str, &'static str>,
    /// Entra authority host.
    pub authority_host: Url,
    /// Azure Resource Manager endpoint.
    pub resource_manager: Url,
    /// Extra tags for the Arc resources.
    pub tags: BTreeMap<String, String>,
    /// `[azure.onboarding]`: the identity whose tokens install scripts carry. `None`: scripts carry the
    /// orchestrator's own token (warned about; refused with `azure-cli`).
    pub onboarding: Option<OnboardingIdentity>,
}

/// `[azure.onboarding]`: a dedicated identity holding only the *Azure Connected Machine Onboarding* role.
/// Its tokens are the only ones that leave the orchestrator (inside install scripts); the orchestrator's
/// own tokens never do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnboardingIdentity {
    /// Entra tenant (GUID); defaults to `azure.tenant_id`.
    pub tenant_id: String,
    /// Application (client) id (GUID). `None` only with `credential = "managed-identity"` (system-assigned).
    pub client_id: Option<String>,
    /// How its tokens are obtained (never `azure-cli`: a person's token is what this identity replaces).
    pub credential: CredentialConfig,
}

/// `[azure] location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Every machine in this Azure location (short form, e.g. `eastus`).
    Fixed(String),
    /// `auto`: each machine in the location [`locations::TABLE`] maps its AWS region to.
    Auto,
}

/// `[azure] credential` and the key that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialConfig {
    /// The service principal's secret, from [`CLIENT_SECRET_ENV`] (the default).
    ClientSecret,
    /// A client assertion signed with the key of a PEM file that also holds the certificate.
    ClientCertificate {
        /// `azure.client_certificate_path`.
        path: PathBuf,
    },
    /// A Kubernetes service account token (projected volume) as client assertion.
    WorkloadIdentity {
        /// `azure.federated_token_file`, else `AZURE_FEDERATED_TOKEN_FILE`.
        token_file: PathBuf,
        /// Whether the path came from `AZURE_FEDERATED_TOKEN_FILE`.
        from_env: bool,
    },
    /// A JWT from `sts:GetWebIdentityToken` as client assertion.
    AwsFederation {
        /// `azure.aws_federation_audience`.
        audience: String,
    },
    /// The machine's managed identity (Azure VM IMDS or Azure Arc agent).
    ManagedIdentity,
    /// `az account get-access-token`.
    AzureCli,
}

impl CredentialConfig {
    /// The name the config file uses.
    pub fn name(&self) -> &'static str {
        match self {
            CredentialConfig::ClientSecret => "client-secret",
            CredentialConfig::ClientCertificate { .. } => "client-certificate",
            CredentialConfig::WorkloadIdentity { .. } => "workload-identity",
            CredentialConfig::AwsFederation { .. } => "aws-federation",
            CredentialConfig::ManagedIdentity => "managed-identity",
            CredentialConfig::AzureCli => "azure-cli",
        }
    }
}

impl AzureConfig {
    /// The Azure location of machines in an AWS region: `[azure.locations]`, else the fixed `location`,
    /// else (`auto`) the region's row of [`locations::TABLE`]; `None` for an unknown region with `auto`.
    pub fn location_for(&self, aws_region: &str) -> Option<String> {
        if let Some(l) = self.locations.get(aws_region) {
            return Some(l.clone());
        }
        match &self.location {
            Location::Fixed(l) => Some(l.clone()),
            Location::Auto => locations::auto_location(aws_region).map(str::to_string),
        }
    }

    /// The resource group for one AWS account.
    pub fn resource_group_for(&self, account_id: &str) -> String {
        self.resource_group.replace(ACCOUNT_PLACEHOLDER, account_id)
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    ///
    /// With `credential = "workload-identity"`, `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID` and
    /// `AZURE_TENANT_ID` stand in for the keys the file leaves out, as the workload identity webhook sets them.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse_with_env(&text, path, &crate::config::env::process_env)
    }

    /// Validates the TOML text without looking at the environment; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, path, &|_| None)
    }

    /// Validates the TOML text; `env` supplies the workload identity variables (see [`Config::load`]).
    pub fn parse_with_env(
        text: &str,
        path: &Path,
        env: crate::config::env::EnvLookup<'_>,
    ) -> Result<Config, ConfigError> {
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: path.to_path_buf(),
                message: e.to_string().trim_end().to_string(),
            })?;
        let mut v = Validator {
            env: Some(env),
            ..Validator::default()
        };
        let config = v.config(&table);
        match config {
            Some(config) if v.issues.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                issues: v.issues,
            }),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(super) const FULL: &str = r#"
[aws]
regions = ["us-east-1", "eu-west-1"]
tag_filter = { key = "arc", value = "onboard" }

[iam]
auto_assignment = true
auto_assignment_schedule = "enable"
auto_assignment_interval = "1 day"
policy_update_allowed = true
role_name = "AzureArcForServerSSM"
instance_profile_name = "AzureArcForServerSSMInstanceProfile"

[onboarding]
periodic_sync = true
sync_interval = "1 hour"
connectivity = "proxy"
proxy_url = "http://10.0.0.5:3128"

[azure]
tenant_id = "00000000-0000-0000-0000-000000000001"
subscription_id = "00000000-0000-0000-0000-000000000002"
location = "eastus"
cloud = "AzureCloud"
client_id = "00000000-0000-0000-0000-000000000003"
tags = { CostCenter = "42" }
"#;

    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn the_interface_example_parses_with_defaults() {
        let c = parse(FULL).unwrap();
        assert_eq!(
            c.aws.regions,
            RegionSelection::List(vec!["us-east-1".into(), "eu-west-1".into()])
        );
        assert_eq!(c.iam.interval, Duration::from_secs(86_400));
        assert_eq!(c.onboarding.sync_interval, Duration::from_secs(3_600));
        assert!(matches!(c.onboarding.connectivity, Connectivity::Proxy(_)));
        let az = c.azure.unwrap();
        assert_eq!(az.resource_group_for("123456789012"), "aws_123456789012");
        assert_eq!(
            az.resource_manager.as_str(),
            "https://management.azure.com/"
        );
        assert_eq!(az.tags.get("CostCenter").map(String::as_str), Some("42"));
    }

    #[test]
    fn minimal_config_takes_connector_defaults() {
        let c = parse("[aws]\nall_regions = true\n").unwrap();
        assert_eq!(c.aws.regions, RegionSelection::AllEnabled);
        assert!(c.iam.auto_assignment && c.iam.schedule_enabled && c.iam.policy_update_allowed);
        assert_eq!(c.iam.role_name, "AzureArcForServerSSM");
        assert_eq!(c.onboarding.connectivity, Connectivity::Public);
        assert!(c.azure.is_none());
    }

    #[test]
    fn sovereign_cloud_defaults_follow_cloud() {
        let text = FULL.replace("cloud = \"AzureCloud\"", "cloud = \"AzureUSGovernment\"");
        let az = parse(&text).unwrap().azure.unwrap();
        assert_eq!(
            az.authority_host.as_str(),
            "https://login.microsoftonline.us/"
        );
        assert_eq!(
            az.resource_manager.as_str(),
            "https://management.usgovcloudapi.net/"
        );
    }
}
