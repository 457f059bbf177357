//! The configuration file: read once, validated completely into typed values before any AWS call.
//!
//! Every problem names the key it concerns (`aws.regions[1]`, `onboarding.proxy_url`) so that an operator
//! can fix the file without guessing. All problems in a file are reported together.

pub mod duration;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};
use url::Url;

use crate::config::duration::{format_duration, parse_duration};
use crate::model::TagSelector;

/// The name of the environment variable that holds the service principal's secret.
pub const CLIENT_SECRET_ENV: &str = "ARC_ONBOARD_CLIENT_SECRET";
/// The managed policy every SSM-managed instance role needs.
pub const SSM_POLICY_ARN: &str = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore";
/// Placeholder in `azure.resource_group` replaced by the AWS account id.
pub const ACCOUNT_PLACEHOLDER: &str = "{account_id}";
/// Tag keys the tool sets on Arc resources itself.
const RESERVED_AZURE_TAGS: [&str; 2] = ["AwsAccountId", "AwsRegion"];

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
    /// `[events]`: the SQS queue of event-driven onboarding (daemon only), when configured.
    pub events: Option<EventsConfig>,
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
    /// `[aws.accounts]`: which accounts are in scope (default: the caller's only).
    pub accounts: AccountsConfig,
}

/// Where the accounts in scope come from (`aws.accounts.source`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccountSource {
    /// Only the account of the credentials.
    #[default]
    Caller,
    /// Exactly `ids`.
    List,
    /// The organization's accounts (under `organizational_units` when given).
    Organization,
}

/// The `[aws.accounts]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountsConfig {
    /// Where the accounts come from.
    pub source: AccountSource,
    /// `source = "list"`: these accounts.
    pub ids: Vec<String>,
    /// `source = "organization"`: only accounts under these OUs, recursively.
    pub organizational_units: Vec<String>,
    /// Never these accounts.
    pub exclude: Vec<String>,
    /// The role assumed in every account other than the caller's.
    pub member_role: String,
    /// Passed to `sts:AssumeRole` when set.
    pub external_id: Option<String>,
    /// Accounts handled at once.
    pub max_concurrent_accounts: usize,
}

/// Default of `aws.accounts.member_role`.
pub const DEFAULT_MEMBER_ROLE: &str = "AzureArcOnboardingMember";

impl Default for AccountsConfig {
    fn default() -> Self {
        AccountsConfig {
            source: AccountSource::Caller,
            ids: Vec::new(),
            organizational_units: Vec::new(),
            exclude: Vec::new(),
            member_role: DEFAULT_MEMBER_ROLE.into(),
            external_id: None,
            max_concurrent_accounts: 16,
        }
    }
}

/// The `[events]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// The SQS queue EventBridge delivers instance events to.
    pub queue_url: String,
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
    /// Azure region of the Arc resources, e.g. `eastus`.
    pub location: String,
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

/// The `credential` values, in the order the README lists them.
const CREDENTIAL_KINDS: [&str; 6] = [
    "client-secret",
    "client-certificate",
    "workload-identity",
    "aws-federation",
    "managed-identity",
    "azure-cli",
];

impl AzureConfig {
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
        Config::parse_with_env(&text, path, &crate::adapters::credential::process_env)
    }

    /// Validates the TOML text without looking at the environment; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, path, &|_| None)
    }

    /// Validates the TOML text; `env` supplies the workload identity variables (see [`Config::load`]).
    pub fn parse_with_env(
        text: &str,
        path: &Path,
        env: crate::adapters::credential::EnvLookup<'_>,
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

    /// The effective configuration as TOML, defaults filled in. No secret ever appears: `credential` is a
    /// comment that says which credential is in use and where it comes from (see
    /// [`crate::adapters::credential::Credential::describe`]).
    pub fn to_effective_toml(&self, credential: &str) -> String {
        let mut root = Table::new();
        let mut aws = Table::new();
        match &self.aws.regions {
            RegionSelection::AllEnabled => {
                aws.insert("all_regions".into(), Value::Boolean(true));
            }
            RegionSelection::List(list) => {
                aws.insert("all_regions".into(), Value::Boolean(false));
                aws.insert(
                    "regions".into(),
                    Value::Array(list.iter().cloned().map(Value::String).collect()),
                );
            }
        }
        if let Some(tf) = &self.aws.tag_filter {
            let mut t = Table::new();
            t.insert("key".into(), Value::String(tf.key.clone()));
            if let Some(value) = &tf.value {
                t.insert("value".into(), Value::String(value.clone()));
            }
            aws.insert("tag_filter".into(), Value::Table(t));
        }
        root.insert("aws".into(), Value::Table(aws));

        let iam = &self.iam;
        let mut t = Table::new();
        t.insert(
            "auto_assignment".into(),
            Value::Boolean(iam.auto_assignment),
        );
        let schedule = if iam.schedule_enabled {
            "enable"
        } else {
            "disable"
        };
        t.insert(
            "auto_assignment_schedule".into(),
            Value::String(schedule.into()),
        );
        t.insert(
            "auto_assignment_interval".into(),
            Value::String(format_duration(iam.interval)),
        );
        t.insert(
            "policy_update_allowed".into(),
            Value::Boolean(iam.policy_update_allowed),
        );
        t.insert("role_name".into(), Value::String(iam.role_name.clone()));
        t.insert(
            "instance_profile_name".into(),
            Value::String(iam.instance_profile_name.clone()),
        );
        root.insert("iam".into(), Value::Table(t));

        let ob = &self.onboarding;
        let mut t = Table::new();
        t.insert("periodic_sync".into(), Value::Boolean(ob.periodic_sync));
        t.insert(
            "sync_interval".into(),
            Value::String(format_duration(ob.sync_interval)),
        );
        match &ob.connectivity {
            Connectivity::Public => {
                t.insert("connectivity".into(), Value::String("public".into()));
            }
            Connectivity::Proxy(url) => {
                t.insert("connectivity".into(), Value::String("proxy".into()));
                t.insert("proxy_url".into(), Value::String(url.to_string()));
            }
        }
        t.insert(
            "installer_url_linux".into(),
            Value::String(ob.installer_url_linux.to_string()),
        );
        t.insert(
            "installer_url_windows".into(),
            Value::String(ob.installer_url_windows.to_string()),
        );
        for (key, pin) in [
            ("installer_sha256_linux", &ob.installer_sha256_linux),
            ("installer_sha256_windows", &ob.installer_sha256_windows),
        ] {
            if let Some(pin) = pin {
                t.insert(key.into(), Value::String(pin.clone()));
            }
        }
        root.insert("onboarding".into(), Value::Table(t));

        if let Some(az) = &self.azure {
            let mut t = Table::new();
            t.insert("tenant_id".into(), Value::String(az.tenant_id.clone()));
            t.insert(
                "subscription_id".into(),
                Value::String(az.subscription_id.clone()),
            );
            t.insert("location".into(), Value::String(az.location.clone()));
            t.insert(
                "resource_group".into(),
                Value::String(az.resource_group.clone()),
            );
            t.insert("cloud".into(), Value::String(az.cloud.as_str().into()));
            if let Some(client_id) = &az.client_id {
                t.insert("client_id".into(), Value::String(client_id.clone()));
            }
            t.insert(
                "credential".into(),
                Value::String(az.credential.name().into()),
            );
            match &az.credential {
                CredentialConfig::ClientCertificate { path } => {
                    t.insert(
                        "client_certificate_path".into(),
                        Value::String(path.display().to_string()),
                    );
                }
                CredentialConfig::WorkloadIdentity { token_file, .. } => {
                    t.insert(
                        "federated_token_file".into(),
                        Value::String(token_file.display().to_string()),
                    );
                }
                CredentialConfig::AwsFederation { audience } => {
                    t.insert(
                        "aws_federation_audience".into(),
                        Value::String(audience.clone()),
                    );
                }
                _ => {}
            }
            t.insert(
                "authority_host".into(),
                Value::String(az.authority_host.to_string()),
            );
            t.insert(
                "resource_manager".into(),
                Value::String(az.resource_manager.to_string()),
            );
            if !az.tags.is_empty() {
                let tags = az
                    .tags
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                t.insert("tags".into(), Value::Table(tags));
            }
            root.insert("azure".into(), Value::Table(t));
        }
        let body = toml::to_string_pretty(&root).unwrap_or_default();
        let mut notes: String = self
            .warnings
            .iter()
            .map(|w| format!("# note: {w}\n"))
            .collect();
        if let Some(az) = &self.azure {
            for (key, var) in &az.from_env {
                notes.push_str(&format!("# note: {key} comes from {var}\n"));
            }
        }
        format!("# effective configuration\n# credential: {credential}\n{notes}{body}")
    }
}

/// Collects issues while building the typed config.
#[derive(Default)]
struct Validator<'e> {
    issues: Vec<ConfigIssue>,
    warnings: Vec<ConfigIssue>,
    /// The environment, for the workload identity variables.
    env: Option<crate::adapters::credential::EnvLookup<'e>>,
}

impl Validator<'_> {
    fn issue(&mut self, key: impl Into<String>, problem: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.into(),
            problem: problem.into(),
        });
    }

    /// Reports keys of `table` (at `path`) that are not in `allowed`.
    fn unknown_keys(&mut self, table: &Table, path: &str, allowed: &[&str]) {
        for key in table.keys() {
            if allowed.contains(&key.as_str()) {
                continue;
            }
            let full = join(path, key);
            if key.contains("secret") || key.contains("password") {
                self.issue(
                    full,
                    format!("secrets are never read from the config file; set {CLIENT_SECRET_ENV} in the environment instead"),
                );
            } else {
                self.issue(
                    full,
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                );
            }
        }
    }

    fn section<'t>(&mut self, root: &'t Table, name: &str) -> Option<&'t Table> {
        match root.get(name) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(other) => {
                self.issue(name, format!("must be a table, found {}", other.type_str()));
                None
            }
        }
    }

    fn bool(&mut self, t: &Table, path: &str, key: &str, default: bool) -> bool {
        match t.get(key) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(other) => {
                self.issue(
                    join(path, key),
                    format!("must be true or false, found {}", describe(other)),
                );
                default
            }
        }
    }

    fn string<'t>(&mut self, t: &'t Table, path: &str, key: &str) -> Option<&'t str> {
        match t.get(key) {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => {
                self.issue(
                    join(path, key),
                    format!("must be a string, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn interval(&mut self, t: &Table, path: &str, key: &str, default: Duration) -> Duration {
        let Some(s) = self.string(t, path, key) else {
            return default;
        };
        match parse_duration(s) {
            Ok(d) if d < Duration::from_secs(1) => {
                self.issue(join(path, key), "must be at least 1 second");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.issue(join(path, key), e.to_string());
                default
            }
        }
    }

    fn url(&mut self, t: &Table, path: &str, key: &str, default: &str) -> Url {
        let fallback = Url::parse(default).expect("default URLs are valid");
        let Some(s) = self.string(t, path, key) else {
            return fallback;
        };
        match check_http_url(s) {
            Ok(u) => u,
            Err(problem) => {
                self.issue(join(path, key), problem);
                fallback
            }
        }
    }

    fn config(&mut self, root: &Table) -> Option<Config> {
        self.unknown_keys(root, "", &["aws", "iam", "onboarding", "azure", "events"]);
        let empty = Table::new();
        let aws = match self.section(root, "aws") {
            Some(t) => self.aws(t),
            None => {
                self.issue(
                    "aws",
                    "section is required (at least `regions` or `all_regions = true`)",
                );
                None
            }
        };
        let iam_table = self.section(root, "iam").unwrap_or(&empty);
        let iam = self.iam(iam_table);
        let onboarding_table = self.section(root, "onboarding").unwrap_or(&empty);
        let onboarding = self.onboarding(onboarding_table, cloud_of(root));
        let azure = match self.section(root, "azure") {
            Some(t) => Some(self.azure(t)?),
            None => None,
        };
        let events = self.section(root, "events").map(|t| self.events(t));
        Some(Config {
            aws: aws?,
            iam,
            onboarding: onboarding?,
            azure,
            events,
            warnings: std::mem::take(&mut self.warnings),
        })
    }

    fn aws(&mut self, t: &Table) -> Option<AwsConfig> {
        self.unknown_keys(
            t,
            "aws",
            &["all_regions", "regions", "tag_filter", "accounts"],
        );
        let all = self.bool(t, "aws", "all_regions", false);
        let regions = match t.get("regions") {
            None => None,
            Some(Value::Array(items)) => {
                let mut list: Vec<String> = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let key = format!("aws.regions[{i}]");
                    match item {
                        Value::String(r) if !is_region_name(r) => self.issue(
                            key,
                            format!(
                                "{r:?} is not an AWS region name (expected e.g. \"us-east-1\")"
                            ),
                        ),
                        Value::String(r) if list.contains(r) => {
                            self.issue(key, format!("{r:?} is listed twice"))
                        }
                        Value::String(r) => list.push(r.clone()),
                        other => {
                            self.issue(key, format!("must be a string, found {}", describe(other)))
                        }
                    }
                }
                Some((items.len(), list))
            }
            Some(other) => {
                self.issue(
                    "aws.regions",
                    format!("must be a list of region names, found {}", describe(other)),
                );
                return None;
            }
        };
        let regions = match (all, regions) {
            (true, None) => RegionSelection::AllEnabled,
            (true, Some((0, _))) => RegionSelection::AllEnabled,
            (true, Some(_)) => {
                self.issue(
                    "aws.regions",
                    "must be left out when all_regions = true (every enabled region is scanned)",
                );
                return None;
            }
            (false, None) | (false, Some((0, _))) => {
                self.issue(
                    "aws.regions",
                    "at least one region is required unless all_regions = true",
                );
                return None;
            }
            (false, Some((_, list))) => RegionSelection::List(list),
        };
        let tag_filter = match t.get("tag_filter") {
            None => None,
            Some(Value::Table(tf)) => self.tag_filter(tf),
            Some(other) => {
                self.issue(
                    "aws.tag_filter",
                    format!(
                        "must be a table like {{ key = \"arc\", value = \"onboard\" }}, found {}",
                        describe(other)
                    ),
                );
                None
            }
        };
        let accounts = match t.get("accounts") {
            None => AccountsConfig::default(),
            Some(Value::Table(a)) => self.accounts(a),
            Some(other) => {
                self.issue(
                    "aws.accounts",
                    format!("must be a table, found {}", other.type_str()),
                );
                AccountsConfig::default()
            }
        };
        Some(AwsConfig {
            regions,
            tag_filter,
            accounts,
        })
    }

    fn tag_filter(&mut self, t: &Table) -> Option<TagSelector> {
        self.unknown_keys(t, "aws.tag_filter", &["key", "value"]);
        let key = self.string(t, "aws.tag_filter", "key");
        let value = self.string(t, "aws.tag_filter", "value");
        let key = match key {
            None => {
                self.issue("aws.tag_filter.key", "is required when tag_filter is set");
                return None;
            }
            Some(k) if k.trim().is_empty() => {
                self.issue("aws.tag_filter.key", "must not be empty");
                return None;
            }
            Some(k) if k.chars().count() > 128 => {
                self.issue("aws.tag_filter.key", "is longer than EC2's 128 characters");
                return None;
            }
            Some(k) => k.to_string(),
        };
        if let Some(v) = value {
            if v.chars().count() > 256 {
                self.issue(
                    "aws.tag_filter.value",
                    "is longer than EC2's 256 characters",
                );
                return None;
            }
        }
        Some(TagSelector {
            key,
            value: value.map(str::to_string),
        })
    }

    fn iam(&mut self, t: &Table) -> IamConfig {
        self.unknown_keys(
            t,
            "iam",
            &[
                "auto_assignment",
                "auto_assignment_schedule",
                "auto_assignment_interval",
                "policy_update_allowed",
                "role_name",
                "instance_profile_name",
            ],
        );
        let auto_assignment = self.bool(t, "iam", "auto_assignment", true);
        let schedule_enabled = match self.string(t, "iam", "auto_assignment_schedule") {
            None => true,
            Some(s) if s.eq_ignore_ascii_case("enable") => true,
            Some(s) if s.eq_ignore_ascii_case("disable") => false,
            Some(s) => {
                self.issue(
                    "iam.auto_assignment_schedule",
                    format!("must be \"enable\" or \"disable\", found {s:?}"),
                );
                true
            }
        };
        let interval = self.interval(
            t,
            "iam",
            "auto_assignment_interval",
            Duration::from_secs(86_400),
        );
        let policy_update_allowed = self.bool(t, "iam", "policy_update_allowed", true);
        let role_name = self.iam_name(t, "role_name", "AzureArcForServerSSM", 64);
        let instance_profile_name = self.iam_name(
            t,
            "instance_profile_name",
            "AzureArcForServerSSMInstanceProfile",
            128,
        );
        IamConfig {
            auto_assignment,
            schedule_enabled,
            interval,
            policy_update_allowed,
            role_name,
            instance_profile_name,
        }
    }

    fn iam_name(&mut self, t: &Table, key: &str, default: &str, max: usize) -> String {
        match self.string(t, "iam", key) {
            None => default.to_string(),
            Some(name) if is_iam_name(name, max) => name.to_string(),
            Some(name) => {
                self.issue(
                    join("iam", key),
                    format!("{name:?} is not a valid IAM name (1-{max} characters of letters, digits and +=,.@_-)"),
                );
                default.to_string()
            }
        }
    }

    fn onboarding(&mut self, t: &Table, cloud: AzureCloud) -> Option<OnboardingConfig> {
        self.unknown_keys(
            t,
            "onboarding",
            &[
                "periodic_sync",
                "sync_interval",
                "connectivity",
                "proxy_url",
                "installer_url_linux",
                "installer_url_windows",
                "installer_sha256_linux",
                "installer_sha256_windows",
            ],
        );
        let periodic_sync = self.bool(t, "onboarding", "periodic_sync", true);
        let sync_interval =
            self.interval(t, "onboarding", "sync_interval", Duration::from_secs(3_600));
        let mode = self
            .string(t, "onboarding", "connectivity")
            .unwrap_or("public");
        let proxy = self.string(t, "onboarding", "proxy_url");
        let connectivity = match (mode, proxy) {
            ("public", None) => Some(Connectivity::Public),
            ("public", Some(p)) => {
                // The interface's own example sets both; accept it, check it, and say it is unused.
                if let Err(problem) = check_proxy_url(p) {
                    self.issue("onboarding.proxy_url", problem);
                }
                self.warnings.push(ConfigIssue {
                    key: "onboarding.proxy_url".into(),
                    problem: "is ignored because connectivity = \"public\"".into(),
                });
                Some(Connectivity::Public)
            }
            ("proxy", None) => {
                self.issue(
                    "onboarding.proxy_url",
                    "is required when connectivity = \"proxy\"",
                );
                None
            }
            ("proxy", Some(p)) => match check_proxy_url(p) {
                Ok(url) => Some(Connectivity::Proxy(url)),
                Err(problem) => {
                    self.issue("onboarding.proxy_url", problem);
                    None
                }
            },
            (other, _) => {
                self.issue(
                    "onboarding.connectivity",
                    format!("must be \"public\" or \"proxy\", found {other:?}"),
                );
                None
            }
        };
        let defaults = cloud.default_installers();
        let installer_url_linux =
            self.installer_url(t, "installer_url_linux", defaults.map(|d| d.0), cloud);
        let installer_url_windows =
            self.installer_url(t, "installer_url_windows", defaults.map(|d| d.1), cloud);
        let installer_sha256_linux = self.sha256(t, "installer_sha256_linux");
        let installer_sha256_windows = self.sha256(t, "installer_sha256_windows");
        Some(OnboardingConfig {
            periodic_sync,
            sync_interval,
            connectivity: connectivity?,
            installer_url_linux: installer_url_linux?,
            installer_url_windows: installer_url_windows?,
            installer_sha256_linux,
            installer_sha256_windows,
        })
    }

    /// An installer URL: `https://`, or `http://` on a loopback host; its default follows the cloud.
    fn installer_url(
        &mut self,
        t: &Table,
        key: &str,
        default: Option<&str>,
        cloud: AzureCloud,
    ) -> Option<Url> {
        let path = join("onboarding", key);
        let Some(s) = self.string(t, "onboarding", key) else {
            return match default {
                Some(d) => Some(Url::parse(d).expect("default URLs are valid")),
                None => {
                    self.issue(
                        path,
                        format!(
                            "is required with cloud = {:?}: Microsoft documents no default installer host for it; point it at the installer (or your mirror)",
                            cloud.as_str()
                        ),
                    );
                    None
                }
            };
        };
        match check_installer_url(s) {
            Ok(u) => Some(u),
            Err(problem) => {
                self.issue(path, problem);
                None
            }
        }
    }

    /// An optional SHA-256 pin: 64 hexadecimal digits, kept lowercase.
    fn sha256(&mut self, t: &Table, key: &str) -> Option<String> {
        let s = self.string(t, "onboarding", key)?;
        if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
            Some(s.to_ascii_lowercase())
        } else {
            self.issue(
                join("onboarding", key),
                format!("{s:?} is not a SHA-256 (64 hexadecimal digits)"),
            );
            None
        }
    }

    fn guid(&mut self, t: &Table, key: &str) -> Option<String> {
        match self.string(t, "azure", key) {
            None => {
                self.issue(join("azure", key), "is required in [azure]");
                None
            }
            Some(s) if is_guid(s) => Some(s.to_ascii_lowercase()),
            Some(s) => {
                self.issue(
                    join("azure", key),
                    format!("{s:?} is not a GUID (expected 00000000-0000-0000-0000-000000000000)"),
                );
                None
            }
        }
    }

    /// A GUID key; with `from_env_ok`, its environment variable (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`)
    /// when the key is absent.
    fn guid_or_env(
        &mut self,
        t: &Table,
        key: &'static str,
        from_env_ok: bool,
        from_env: &mut BTreeMap<&'static str, &'static str>,
    ) -> Option<String> {
        let var = match key {
            "tenant_id" => crate::adapters::credential::TENANT_ID_ENV,
            _ => crate::adapters::credential::CLIENT_ID_ENV,
        };
        if t.contains_key(key) || !from_env_ok {
            return self.guid(t, key);
        }
        match self.env.and_then(|env| env(var)) {
            Some(v) if is_guid(&v) => {
                from_env.insert(
                    if key == "tenant_id" {
                        "azure.tenant_id"
                    } else {
                        "azure.client_id"
                    },
                    var,
                );
                Some(v.to_ascii_lowercase())
            }
            Some(v) => {
                self.issue(
                    join("azure", key),
                    format!("{var} = {v:?} is not a GUID (expected 00000000-0000-0000-0000-000000000000)"),
                );
                None
            }
            None => {
                self.issue(
                    join("azure", key),
                    format!("is required in [azure] (or in {var}, as the workload identity webhook sets it)"),
                );
                None
            }
        }
    }

    /// `credential` and the keys that belong to it; a key of another credential is an error.
    fn credential(&mut self, t: &Table) -> Option<CredentialConfig> {
        let name = self
            .string(t, "azure", "credential")
            .unwrap_or("client-secret");
        let path = self.string(t, "azure", "client_certificate_path");
        let token_file = self.string(t, "azure", "federated_token_file");
        let audience = self.string(t, "azure", "aws_federation_audience");
        let belongs = [
            (
                "client_certificate_path",
                path.is_some(),
                "client-certificate",
            ),
            (
                "federated_token_file",
                token_file.is_some(),
                "workload-identity",
            ),
            (
                "aws_federation_audience",
                audience.is_some(),
                "aws-federation",
            ),
        ];
        if CREDENTIAL_KINDS.contains(&name) {
            for (key, present, owner) in belongs {
                if present && name != owner {
                    self.issue(
                        join("azure", key),
                        format!(
                            "is used only with credential = {owner:?} (credential is {name:?})"
                        ),
                    );
                }
            }
        }
        let nonempty = |v: &mut Self, key: &str, s: Option<&str>| match s {
            Some(s) if s.trim().is_empty() => {
                v.issue(join("azure", key), "must not be empty");
                None
            }
            other => other.map(str::to_string),
        };
        match name {
            "client-secret" => Some(CredentialConfig::ClientSecret),
            "client-certificate" => match nonempty(self, "client_certificate_path", path) {
                Some(p) => Some(CredentialConfig::ClientCertificate {
                    path: PathBuf::from(p),
                }),
                None => {
                    if path.is_none() {
                        self.issue(
                            "azure.client_certificate_path",
                            "is required with credential = \"client-certificate\" (a PEM file with the private key and the certificate)",
                        );
                    }
                    None
                }
            },
            "workload-identity" => {
                let configured = nonempty(self, "federated_token_file", token_file);
                let env = self
                    .env
                    .and_then(|env| env(crate::adapters::credential::FEDERATED_TOKEN_FILE_ENV));
                match (configured, env) {
                    (Some(p), _) => Some(CredentialConfig::WorkloadIdentity {
                        token_file: PathBuf::from(p),
                        from_env: false,
                    }),
                    (None, Some(p)) if token_file.is_none() => {
                        Some(CredentialConfig::WorkloadIdentity {
                            token_file: PathBuf::from(p),
                            from_env: true,
                        })
                    }
                    (None, _) => {
                        if token_file.is_none() {
                            self.issue(
                                "azure.federated_token_file",
                                format!("is required with credential = \"workload-identity\" when {} is not set", crate::adapters::credential::FEDERATED_TOKEN_FILE_ENV),
                            );
                        }
                        None
                    }
                }
            }
            "aws-federation" => {
                let audience = match audience {
                    None => {
                        Some(crate::adapters::credential::DEFAULT_FEDERATION_AUDIENCE.to_string())
                    }
                    Some(a) if a.trim().is_empty() || a.len() > 1000 => {
                        self.issue(
                            "azure.aws_federation_audience",
                            "must be 1-1000 characters (the audience of the federated credential in Entra)",
                        );
                        None
                    }
                    Some(a) => Some(a.to_string()),
                };
                audience.map(|audience| CredentialConfig::AwsFederation { audience })
            }
            "managed-identity" => Some(CredentialConfig::ManagedIdentity),
            "azure-cli" => Some(CredentialConfig::AzureCli),
            other => {
                self.issue(
                    "azure.credential",
                    format!(
                        "must be one of {}, found {other:?}",
                        CREDENTIAL_KINDS.join(", ")
                    ),
                );
                None
            }
        }
    }

    fn azure(&mut self, t: &Table) -> Option<AzureConfig> {
        self.unknown_keys(
            t,
            "azure",
            &[
                "tenant_id",
                "subscription_id",
                "location",
                "resource_group",
                "cloud",
                "client_id",
                "credential",
                "client_certificate_path",
                "federated_token_file",
                "aws_federation_audience",
                "authority_host",
                "resource_manager",
                "tags",
            ],
        );
        let credential = self.credential(t);
        let workload = matches!(credential, Some(CredentialConfig::WorkloadIdentity { .. }));
        let mut from_env = BTreeMap::new();
        let tenant_id = self.guid_or_env(t, "tenant_id", workload, &mut from_env);
        let subscription_id = self.guid(t, "subscription_id");
        // A managed identity may be the system-assigned one; the Azure CLI uses the signed-in user.
        let optional = matches!(
            credential,
            Some(CredentialConfig::ManagedIdentity | CredentialConfig::AzureCli)
        );
        let client_id = if t.contains_key("client_id") || !optional {
            self.guid_or_env(t, "client_id", workload, &mut from_env)
                .map(Some)
        } else {
            Some(None)
        };
        let location = match self.string(t, "azure", "location") {
            None => {
                self.issue("azure.location", "is required in [azure] (e.g. \"eastus\")");
                None
            }
            Some(l)
                if !l.is_empty()
                    && l.len() <= 40
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) =>
            {
                Some(l.to_string())
            }
            Some(l) => {
                self.issue(
                    "azure.location",
                    format!("{l:?} is not an Azure region name (use the short form, e.g. \"eastus\", \"westeurope\")"),
                );
                None
            }
        };
        let resource_group = self
            .string(t, "azure", "resource_group")
            .unwrap_or("aws_{account_id}")
            .to_string();
        if let Err(problem) = check_resource_group(&resource_group) {
            self.issue("azure.resource_group", problem);
        }
        let cloud = match self.string(t, "azure", "cloud").unwrap_or("AzureCloud") {
            "AzureCloud" => AzureCloud::AzureCloud,
            "AzureUSGovernment" => AzureCloud::AzureUsGovernment,
            "AzureChinaCloud" => AzureCloud::AzureChinaCloud,
            other => {
                self.issue(
                    "azure.cloud",
                    format!(
                        "must be AzureCloud, AzureUSGovernment or AzureChinaCloud, found {other:?}"
                    ),
                );
                AzureCloud::AzureCloud
            }
        };
        let authority_host = self.url(t, "azure", "authority_host", cloud.default_authority());
        let resource_manager = self.url(
            t,
            "azure",
            "resource_manager",
            cloud.default_resource_manager(),
        );
        let tags = match t.get("tags") {
            None => BTreeMap::new(),
            Some(Value::Table(tags)) => self.azure_tags(tags),
            Some(other) => {
                self.issue(
                    "azure.tags",
                    format!("must be a table of strings, found {}", describe(other)),
                );
                BTreeMap::new()
            }
        };
        Some(AzureConfig {
            tenant_id: tenant_id?,
            subscription_id: subscription_id?,
            location: location?,
            resource_group,
            cloud,
            client_id: client_id?,
            credential: credential?,
            from_env,
            authority_host,
            resource_manager,
            tags,
        })
    }

    fn azure_tags(&mut self, tags: &Table) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in tags {
            let key = format!("azure.tags.{k}");
            let Value::String(v) = v else {
                self.issue(key, format!("must be a string, found {}", describe(v)));
                continue;
            };
            if k.is_empty() || k.chars().count() > 512 {
                self.issue(key, "tag names must be 1-512 characters");
            } else if k
                .chars()
                .any(|c| "<>%&\\?/,='".contains(c) || c.is_control())
            {
                self.issue(
                    key,
                    "tag names may not contain < > % & \\ ? / , = ' or control characters (azcmagent --tags cannot carry , = and ')",
                );
            } else if RESERVED_AZURE_TAGS
                .iter()
                .any(|r| r.eq_ignore_ascii_case(k))
            {
                self.issue(key, "is set by arc-onboard itself; choose another name");
            } else if v.chars().count() > 256 {
                self.issue(key, "tag values must be at most 256 characters");
            } else if v.chars().any(|c| c == ',' || c == '\'' || c.is_control()) {
                self.issue(
                    key,
                    "tag values may not contain commas, single quotes or control characters (azcmagent --tags cannot carry them)",
                );
            } else {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }
}

// Plain reading of `[aws.accounts]` and `[events]`: types and known keys only. The organization and
// event work validate them further (id syntax, URL shape); `template` only needs to read them.
impl Validator<'_> {
    fn accounts(&mut self, t: &Table) -> AccountsConfig {
        const PATH: &str = "aws.accounts";
        self.unknown_keys(
            t,
            PATH,
            &[
                "source",
                "ids",
                "organizational_units",
                "exclude",
                "member_role",
                "external_id",
                "max_concurrent_accounts",
            ],
        );
        let defaults = AccountsConfig::default();
        let source = match self.string(t, PATH, "source") {
            None | Some("caller") => AccountSource::Caller,
            Some("list") => AccountSource::List,
            Some("organization") => AccountSource::Organization,
            Some(other) => {
                self.issue(
                    join(PATH, "source"),
                    format!("must be \"caller\", \"list\" or \"organization\", found {other:?}"),
                );
                AccountSource::Caller
            }
        };
        let max_concurrent_accounts = match t.get("max_concurrent_accounts") {
            None => defaults.max_concurrent_accounts,
            Some(Value::Integer(n)) if (1..=256).contains(n) => *n as usize,
            Some(other) => {
                self.issue(
                    join(PATH, "max_concurrent_accounts"),
                    format!("must be a number from 1 to 256, found {}", describe(other)),
                );
                defaults.max_concurrent_accounts
            }
        };
        AccountsConfig {
            source,
            ids: self.strings(t, PATH, "ids"),
            organizational_units: self.strings(t, PATH, "organizational_units"),
            exclude: self.strings(t, PATH, "exclude"),
            member_role: self
                .string(t, PATH, "member_role")
                .map_or(defaults.member_role, str::to_string),
            external_id: self.string(t, PATH, "external_id").map(str::to_string),
            max_concurrent_accounts,
        }
    }

    /// A list of strings at `path.key` (empty when absent).
    fn strings(&mut self, t: &Table, path: &str, key: &str) -> Vec<String> {
        match t.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| match item {
                    Value::String(s) => Some(s.clone()),
                    other => {
                        self.issue(
                            format!("{}[{i}]", join(path, key)),
                            format!("must be a string, found {}", describe(other)),
                        );
                        None
                    }
                })
                .collect(),
            Some(other) => {
                self.issue(
                    join(path, key),
                    format!("must be a list of strings, found {}", describe(other)),
                );
                Vec::new()
            }
        }
    }

    fn events(&mut self, t: &Table) -> EventsConfig {
        self.unknown_keys(t, "events", &["queue_url"]);
        let queue_url = match self.string(t, "events", "queue_url") {
            Some(u) => u.to_string(),
            None => {
                self.issue("events.queue_url", "is required when [events] is present");
                String::new()
            }
        };
        EventsConfig { queue_url }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {s:?}"),
        other => format!("{} {}", other.type_str(), other),
    }
}

/// `xx-name-N` with lowercase words: a syntax check only; whether the region exists is AWS's answer.
pub fn is_region_name(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts
            .last()
            .is_some_and(|p| (1..=2).contains(&p.len()) && p.chars().all(|c| c.is_ascii_digit()))
}

fn is_iam_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
}

/// `8-4-4-4-12` hexadecimal digits.
pub fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Azure's rules for resource group names, applied after `{account_id}` is filled in.
fn check_resource_group(template: &str) -> Result<(), String> {
    let name = template.replace(ACCOUNT_PLACEHOLDER, "123456789012");
    if name.contains('{') || name.contains('}') {
        return Err(format!(
            "{template:?} has an unknown placeholder (only {ACCOUNT_PLACEHOLDER} is replaced)"
        ));
    }
    if name.is_empty() || name.chars().count() > 90 {
        return Err(format!(
            "{template:?} must be 1-90 characters once {ACCOUNT_PLACEHOLDER} is filled in"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || "_-.()".contains(*c)))
    {
        return Err(format!(
            "{template:?} contains {bad:?}; Azure allows letters, digits and _ - . ( ) in resource group names"
        ));
    }
    if name.ends_with('.') {
        return Err(format!("{template:?} must not end with a period"));
    }
    Ok(())
}

/// An `http(s)://host[:port]` URL without credentials, query or fragment.
fn check_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{s:?} must use http or https, not {}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (user:password@)".to_string());
    }
    if url.fragment().is_some() {
        return Err(format!("{s:?} must not have a #fragment"));
    }
    Ok(url)
}

/// The cloud named in `[azure]`, for the defaults that follow it (an invalid value is reported by the
/// `[azure]` validation; the public cloud stands in for it here).
fn cloud_of(root: &Table) -> AzureCloud {
    match root
        .get("azure")
        .and_then(|a| a.get("cloud"))
        .and_then(Value::as_str)
    {
        Some("AzureUSGovernment") => AzureCloud::AzureUsGovernment,
        Some("AzureChinaCloud") => AzureCloud::AzureChinaCloud,
        _ => AzureCloud::AzureCloud,
    }
}

/// Whether a URL's host is a loopback host: `localhost`, 127.0.0.0/8 or `[::1]`.
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// An installer URL: `https://` (plain `http://` only on a loopback host, for tests and demos), without
/// credentials or fragment.
fn check_installer_url(s: &str) -> Result<Url, String> {
    let url = check_http_url(s)?;
    if url.scheme() == "http" && !is_loopback_host(&url) {
        return Err(format!(
            "{s:?} must use https (plain http is accepted only on loopback hosts, for tests)"
        ));
    }
    Ok(url)
}

/// `http(s)://host:port` exactly: the agent cannot authenticate to a proxy, so credentials are refused.
fn check_proxy_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{s:?} must be http://host:port or https://host:port"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not carry credentials: the Connected Machine agent does not support proxy authentication"
                .to_string(),
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    let authority = s
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("");
    let after_host = authority.rsplit(']').next().unwrap_or(authority);
    let explicit_port = after_host
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    if !explicit_port {
        return Err(format!("{s:?} needs an explicit port (http://host:port)"));
    }
    if !(url.path().is_empty() || url.path() == "/")
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(format!("{s:?} must be only scheme, host and port"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
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

    fn parse(text: &str) -> Result<Config, ConfigError> {
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

    #[test]
    fn all_problems_are_reported_with_their_keys() {
        let text = r#"
[aws]
regions = ["us-east-1", "mars-1"]
colour = "blue"
[iam]
auto_assignment_interval = "soon"
"#;
        let err = parse(text).unwrap_err();
        let keys: Vec<&str> = err.issues().iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "aws.colour",
                "aws.regions[1]",
                "iam.auto_assignment_interval"
            ]
        );
    }

    #[test]
    fn secrets_in_the_file_are_refused_with_a_pointer_to_the_env_var() {
        let text = format!("{FULL}client_secret = \"hunter2\"\n");
        let err = parse(&text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("azure.client_secret"), "{msg}");
        assert!(msg.contains(CLIENT_SECRET_ENV), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn the_interface_example_with_proxy_url_and_public_connectivity_is_accepted_with_a_note() {
        let text = "[aws]\nregions = [\"us-east-1\"]\n[onboarding]\nconnectivity = \"public\"\nproxy_url = \"http://10.0.0.5:3128\"\n";
        let c = parse(text).unwrap();
        assert_eq!(c.onboarding.connectivity, Connectivity::Public);
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.warnings[0].key, "onboarding.proxy_url");
        assert!(c
            .to_effective_toml("client-secret")
            .contains("# note: onboarding.proxy_url: is ignored"));
        // It is still checked.
        let bad = text.replace("http://10.0.0.5:3128", "http://user:pw@10.0.0.5:3128");
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn region_names() {
        for ok in [
            "us-east-1",
            "eu-west-1",
            "us-gov-west-1",
            "ap-southeast-3",
            "cn-north-1",
            "il-central-1",
        ] {
            assert!(is_region_name(ok), "{ok}");
        }
        for bad in [
            "us-east",
            "useast1",
            "US-EAST-1",
            "us-east-100",
            "u-east-1",
            "us--1",
            "us-east-1a",
        ] {
            assert!(!is_region_name(bad), "{bad}");
        }
    }

    #[test]
    fn proxy_urls() {
        assert!(check_proxy_url("http://10.0.0.5:3128").is_ok());
        assert!(check_proxy_url("https://proxy.corp:443").is_ok());
        assert!(check_proxy_url("http://[::1]:8080").is_ok());
        assert!(check_proxy_url("http://proxy.corp")
            .unwrap_err()
            .contains("port"));
        assert!(check_proxy_url("http://u:p@proxy:3128")
            .unwrap_err()
            .contains("credentials"));
        assert!(check_proxy_url("socks5://proxy:1080").is_err());
        assert!(check_proxy_url("http://proxy:3128/path").is_err());
    }

    #[test]
    fn resource_group_rules() {
        assert!(check_resource_group("aws_{account_id}").is_ok());
        assert!(check_resource_group("rg-(prod).arc").is_ok());
        assert!(check_resource_group("bad name").is_err());
        assert!(check_resource_group("ends.").is_err());
        assert!(check_resource_group("{region}").is_err());
        assert!(check_resource_group(&"x".repeat(91)).is_err());
    }

    #[test]
    fn credential_kinds_take_their_keys_and_only_theirs() {
        let with = |lines: &str| parse(&format!("{FULL}{lines}"));
        assert_eq!(
            with("").unwrap().azure.unwrap().credential,
            CredentialConfig::ClientSecret
        );
        assert_eq!(
            with(
                "credential = \"client-certificate\"\nclient_certificate_path = \"/etc/sp.pem\"\n"
            )
            .unwrap()
            .azure
            .unwrap()
            .credential,
            CredentialConfig::ClientCertificate {
                path: PathBuf::from("/etc/sp.pem")
            }
        );
        assert_eq!(
            with("credential = \"aws-federation\"\n")
                .unwrap()
                .azure
                .unwrap()
                .credential,
            CredentialConfig::AwsFederation {
                audience: "api://AzureADTokenExchange".into()
            }
        );
        let err =
            with("credential = \"managed-identity\"\nfederated_token_file = \"/t\"\n").unwrap_err();
        assert_eq!(err.issues()[0].key, "azure.federated_token_file");
        let err = with("credential = \"workload-identity\"\n").unwrap_err();
        assert!(
            err.to_string().contains("AZURE_FEDERATED_TOKEN_FILE"),
            "{err}"
        );
        // The system-assigned managed identity and the Azure CLI need no client id.
        let no_client = FULL.replace("client_id = \"00000000-0000-0000-0000-000000000003\"\n", "");
        for kind in ["managed-identity", "azure-cli"] {
            let az = parse(&format!("{no_client}credential = \"{kind}\"\n"))
                .unwrap()
                .azure
                .unwrap();
            assert_eq!(az.client_id, None, "{kind}");
        }
        assert!(
            parse(&no_client).is_err(),
            "client-secret needs the client id"
        );
    }

    #[test]
    fn workload_identity_takes_what_the_webhook_injects_and_says_so() {
        let text = FULL
            .replace("client_id = \"00000000-0000-0000-0000-000000000003\"\n", "")
            .replace("tenant_id = \"00000000-0000-0000-0000-000000000001\"\n", "")
            + "credential = \"workload-identity\"\n";
        let env = |name: &str| match name {
            "AZURE_FEDERATED_TOKEN_FILE" => {
                Some("/var/run/secrets/azure/tokens/azure-identity-token".to_string())
            }
            "AZURE_CLIENT_ID" => Some("00000000-0000-0000-0000-0000000000AA".to_string()),
            "AZURE_TENANT_ID" => Some("00000000-0000-0000-0000-0000000000BB".to_string()),
            _ => None,
        };
        let az = Config::parse_with_env(&text, Path::new("t.toml"), &env)
            .unwrap()
            .azure
            .unwrap();
        assert_eq!(
            az.client_id.as_deref(),
            Some("00000000-0000-0000-0000-0000000000aa")
        );
        assert_eq!(az.tenant_id, "00000000-0000-0000-0000-0000000000bb");
        assert_eq!(
            az.credential,
            CredentialConfig::WorkloadIdentity {
                token_file: PathBuf::from("/var/run/secrets/azure/tokens/azure-identity-token"),
                from_env: true
            }
        );
        assert_eq!(az.from_env.get("azure.client_id"), Some(&"AZURE_CLIENT_ID"));
        // Other kinds never read those variables.
        let other = text.replace("workload-identity", "aws-federation");
        let err = Config::parse_with_env(&other, Path::new("t.toml"), &env).unwrap_err();
        let keys: Vec<&str> = err.issues().iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["azure.tenant_id", "azure.client_id"]);
    }

    #[test]
    fn effective_config_round_trips_and_hides_the_secret() {
        let c = parse(FULL).unwrap();
        let text =
            c.to_effective_toml("client-secret: ARC_ONBOARD_CLIENT_SECRET is set (value redacted)");
        assert!(text.contains("# credential: client-secret"));
        let again = parse(&text).unwrap();
        assert_eq!(again, c);
    }
}
