//! The validator: walks the TOML table once, builds the typed config and collects every problem with its key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};
use url::Url;

use super::{
    events, locations, AccountsConfig, AwsConfig, AzureCloud, AzureConfig, Config, ConfigIssue,
    Connectivity, CredentialConfig, EventsConfig, IamConfig, Location, OnboardingConfig,
    OnboardingIdentity, RegionSelection, SqlServerLicense, ACCOUNT_PLACEHOLDER, CLIENT_SECRET_ENV,
    ONBOARDING_CLIENT_SECRET_ENV,
};
use crate::config::duration::parse_duration;
use crate::model::TagSelector;

/// Tag keys the tool sets on Arc resources itself: the ownership tags and the SQL Server licence tag.
const RESERVED_AZURE_TAGS: [&str; 5] = {
    let k = crate::model::ownership::KEYS;
    [k[0], k[1], k[2], k[3], SqlServerLicense::TAG]
};

/// The `credential` values, in the order the README lists them.
const CREDENTIAL_KINDS: [&str; 6] = [
    "client-secret",
    "client-certificate",
    "workload-identity",
    "aws-federation",
    "managed-identity",
    "azure-cli",
];

/// The known key closest to a misspelt `key`, when one is close enough to be what was meant: a few edits
/// away for its length, or the same words in another order or case.
pub(super) fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let norm = |k: &str| k.to_ascii_lowercase().replace('-', "_");
    let key_n = norm(key);
    known
        .iter()
        .map(|k| {
            let distance = strsim::damerau_levenshtein(&key_n, &norm(k));
            let allowed = (k.len().max(key.len()) / 3).clamp(1, 4);
            (distance, allowed, *k)
        })
        .filter(|(d, allowed, _)| d <= allowed)
        .min_by_key(|(d, _, _)| *d)
        .map(|(_, _, k)| k)
}

/// Collects issues while building the typed config.
#[derive(Default)]
pub(super) struct Validator<'e> {
    pub(super) issues: Vec<ConfigIssue>,
    pub(super) warnings: Vec<ConfigIssue>,
    /// The environment, for the workload identity variables.
    pub(super) env: Option<crate::config::env::EnvLookup<'e>>,
}

impl Validator<'_> {
    pub(super) fn issue(&mut self, key: impl Into<String>, problem: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.into(),
            problem: problem.into(),
        });
    }

    /// Reports keys of `table` (at `path`) that are not in `allowed`.
    pub(super) fn unknown_keys(&mut self, table: &Table, path: &str, allowed: &[&str]) {
        for key in table.keys() {
            if allowed.contains(&key.as_str()) {
                continue;
            }
            let full = join(path, key);
            if key.contains("secret") || key.contains("password") {
                let var = if path == "azure.onboarding" {
                    ONBOARDING_CLIENT_SECRET_ENV
                } else {
                    CLIENT_SECRET_ENV
                };
                self.issue(
                    full,
                    format!("secrets are never read from the config file; set {var} in the environment instead"),
                );
            } else {
                let hint = closest(key, allowed)
                    .map(|k| format!("did you mean `{k}`? "))
                    .unwrap_or_default();
                self.issue(
                    full,
                    format!(
                        "unknown key; {hint}(expected one of: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    pub(super) fn section<'t>(&mut self, root: &'t Table, name: &str) -> Option<&'t Table> {
        match root.get(name) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(other) => {
                self.issue(name, format!("must be a table, found {}", other.type_str()));
                None
            }
        }
    }

    pub(super) fn bool(&mut self, t: &Table, path: &str, key: &str, default: bool) -> bool {
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

    pub(super) fn string<'t>(&mut self, t: &'t Table, path: &str, key: &str) -> Option<&'t str> {
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

    pub(super) fn interval(
        &mut self,
        t: &Table,
        path: &str,
        key: &str,
        default: Duration,
    ) -> Duration {
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

    pub(super) fn url(&mut self, t: &Table, path: &str, key: &str, default: &str) -> Url {
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

    pub(super) fn config(&mut self, root: &Table) -> Option<Config> {
        self.unknown_keys(
            root,
            "",
            &["aws", "iam", "onboarding", "lifecycle", "azure", "events"],
        );
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
        let events = match self.section(root, "events") {
            Some(t) => self.events(t),
            None => None,
        };
        if let (Some(aws), Some(azure)) = (&aws, &azure) {
            self.every_region_placed(aws, azure);
        }
        let lifecycle_table = self.section(root, "lifecycle").unwrap_or(&empty);
        let lifecycle = self.lifecycle(lifecycle_table);
        Some(Config {
            aws: aws?,
            iam,
            onboarding: onboarding?,
            azure,
            events,
            lifecycle,
            warnings: std::mem::take(&mut self.warnings),
        })
    }

    /// `[events]`: `queue_url` is required and must have an SQS queue URL's shape.
    pub(super) fn events(&mut self, t: &Table) -> Option<EventsConfig> {
        self.unknown_keys(t, "events", &["queue_url"]);
        let Some(url) = self.string(t, "events", "queue_url") else {
            if !t.contains_key("queue_url") {
                self.issue(
                    "events.queue_url",
                    "is required in [events] (the SQS queue EventBridge delivers to)",
                );
            }
            return None;
        };
        match events::check_queue_url(url) {
            Ok(_) => Some(EventsConfig {
                queue_url: url.to_string(),
            }),
            Err(problem) => {
                self.issue("events.queue_url", problem);
                None
            }
        }
    }

    pub(super) fn aws(&mut self, t: &Table) -> Option<AwsConfig> {
        self.unknown_keys(
            t,
            "aws",
            &["all_regions", "regions", "tag_filter", "accounts"],
        );
        let accounts = match t.get("accounts") {
            None => AccountsConfig::default(),
            Some(Value::Table(a)) => self.accounts(a),
            Some(other) => {
                self.issue(
                    "aws.accounts",
                    format!(
                        "must be a table ([aws.accounts]), found {}",
                        describe(other)
                    ),
                );
                AccountsConfig::default()
            }
        };
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
        Some(AwsConfig {
            regions,
            tag_filter,
            accounts,
        })
    }

    pub(super) fn tag_filter(&mut self, t: &Table) -> Option<TagSelector> {
        self.unknown_keys(t, "aws.tag_filter", &["key", "value", "case_sensitive"]);
        let case_sensitive = self.bool(t, "aws.tag_filter", "case_sensitive", false);
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
            case_sensitive,
        })
    }

    pub(super) fn iam(&mut self, t: &Table) -> IamConfig {
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

    pub(super) fn iam_name(&mut self, t: &Table, key: &str, default: &str, max: usize) -> String {
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

    pub(super) fn onboarding(&mut self, t: &Table, cloud: AzureCloud) -> Option<OnboardingConfig> {
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
                "installer_msi_url_windows",
                "installer_sha256_windows_msi",
                "gateway_id",
                "private_link_scope",
                "sql_server_license",
                "automatic_upgrade",
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
        let installer_msi_url_windows = self.installer_url(
            t,
            "installer_msi_url_windows",
            cloud.default_windows_msi(),
            cloud,
        );
        let installer_sha256_windows_msi = self.sha256(t, "installer_sha256_windows_msi");
        let (gateway_id, private_link_scope) = self.network_paths(t, cloud);
        let sql_server_license = match self.string(t, "onboarding", "sql_server_license") {
            None => SqlServerLicense::Disabled,
            Some(s) => SqlServerLicense::parse(s).unwrap_or_else(|| {
                self.issue(
                    "onboarding.sql_server_license",
                    format!(
                        "must be one of {}, found {s:?}",
                        SqlServerLicense::NAMES.join(", ")
                    ),
                );
                SqlServerLicense::Disabled
            }),
        };
        let automatic_upgrade = self.bool(t, "onboarding", "automatic_upgrade", false);
        if automatic_upgrade && cloud != AzureCloud::AzureCloud {
            self.issue(
                "onboarding.automatic_upgrade",
                format!(
                    "automatic agent upgrade is available only in the Azure public cloud (cloud = \"AzureCloud\"), not {:?}",
                    cloud.as_str()
                ),
            );
        }
        Some(OnboardingConfig {
            periodic_sync,
            sync_interval,
            connectivity: connectivity?,
            installer_url_linux: installer_url_linux?,
            installer_url_windows: installer_url_windows?,
            installer_sha256_linux,
            installer_sha256_windows,
            installer_msi_url_windows: installer_msi_url_windows?,
            installer_sha256_windows_msi,
            gateway_id,
            private_link_scope,
            sql_server_license,
            automatic_upgrade,
        })
    }

    /// `gateway_id` and `private_link_scope`: ARM ids of their resource type. An Arc gateway serves the
    /// public cloud's public endpoint (directly or through `proxy_url`), so it combines with neither
    /// another cloud nor Private Link.
    pub(super) fn network_paths(
        &mut self,
        t: &Table,
        cloud: AzureCloud,
    ) -> (Option<String>, Option<String>) {
        let gateway = self.arm_id(t, "gateway_id", "gateways");
        let scope = self.arm_id(t, "private_link_scope", "privateLinkScopes");
        if gateway.is_some() && cloud != AzureCloud::AzureCloud {
            self.issue(
                "onboarding.gateway_id",
                format!(
                    "an Arc gateway is available only in the Azure public cloud (cloud = \"AzureCloud\"), not {:?}",
                    cloud.as_str()
                ),
            );
        }
        if gateway.is_some() && scope.is_some() {
            self.issue(
                "onboarding.gateway_id",
                "cannot be combined with private_link_scope: an Arc gateway carries traffic to Azure's public endpoints, Private Link carries it over private endpoints; choose one",
            );
        }
        (gateway, scope)
    }

    /// An optional key holding the ARM id of a `Microsoft.HybridCompute/{kind}/{name}` resource.
    pub(super) fn arm_id(&mut self, t: &Table, key: &str, kind: &str) -> Option<String> {
        let s = self.string(t, "onboarding", key)?;
        match check_hybrid_compute_id(s, kind) {
            Ok(()) => Some(s.to_string()),
            Err(problem) => {
                self.issue(join("onboarding", key), problem);
                None
            }
        }
    }

    /// `[azure.locations]` keys are AWS regions arc-onboard knows, or regions `aws.regions` lists (a region
    /// newer than the table); with explicit regions, each must have an Azure location: `[azure.locations]`,
    /// a fixed `location`, or (with `auto`) a row of the table. With `all_regions`, a region the table does
    /// not know is caught by the planner.
    pub(super) fn every_region_placed(&mut self, aws: &AwsConfig, azure: &AzureConfig) {
        let listed: &[String] = match &aws.regions {
            RegionSelection::List(regions) => regions,
            RegionSelection::AllEnabled => &[],
        };
        for region in azure.locations.keys() {
            if !locations::is_known_aws_region(region) && !listed.contains(region) {
                self.issue(
                    format!("azure.locations.{region}"),
                    format!("{region:?} is neither an AWS region arc-onboard knows (the README lists them) nor one aws.regions lists; check the spelling"),
                );
            }
        }
        for region in listed {
            if azure.location_for(region).is_none() {
                self.issue(
                    "azure.locations",
                    format!(
                        "has no entry for {region:?} (in aws.regions), and location = \"auto\" does not know that AWS region; add \"{region}\" = \"<azure location>\""
                    ),
                );
            }
        }
    }

    /// `[azure.locations]`: AWS region names to Azure location names (whether a region is known is checked
    /// against `aws.regions` in [`Validator::every_region_placed`]).
    pub(super) fn azure_locations(&mut self, t: &Table) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (region, v) in t {
            let key = format!("azure.locations.{region}");
            if !is_region_name(region) {
                self.issue(
                    key,
                    format!("{region:?} is not an AWS region name (e.g. \"eu-west-1\")"),
                );
                continue;
            }
            match v {
                Value::String(l) if locations::is_location_name(l) => {
                    out.insert(region.clone(), l.clone());
                }
                Value::String(l) => self.issue(
                    key,
                    format!("{l:?} is not an Azure location name (use the short form, e.g. \"northeurope\")"),
                ),
                other => self.issue(key, format!("must be a string, found {}", describe(other))),
            }
        }
        out
    }

    /// An installer URL: `https://`, or `http://` on a loopback host; its default follows the cloud.
    pub(super) fn installer_url(
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
    pub(super) fn sha256(&mut self, t: &Table, key: &str) -> Option<String> {
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

    pub(super) fn guid(&mut self, t: &Table, key: &str) -> Option<String> {
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
    pub(super) fn guid_or_env(
        &mut self,
        t: &Table,
        key: &'static str,
        from_env_ok: bool,
        from_env: &mut BTreeMap<&'static str, &'static str>,
    ) -> Option<String> {
        let var = match key {
            "tenant_id" => crate::config::env::TENANT_ID_ENV,
            _ => crate::config::env::CLIENT_ID_ENV,
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
    pub(super) fn credential(&mut self, t: &Table, section: &str) -> Option<CredentialConfig> {
        let name = self
            .string(t, section, "credential")
            .unwrap_or("client-secret");
        let path = self.string(t, section, "client_certificate_path");
        let token_file = self.string(t, section, "federated_token_file");
        let audience = self.string(t, section, "aws_federation_audience");
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
                        join(section, key),
                        format!(
                            "is used only with credential = {owner:?} (credential is {name:?})"
                        ),
                    );
                }
            }
        }
        let nonempty = |v: &mut Self, key: &str, s: Option<&str>| match s {
            Some(s) if s.trim().is_empty() => {
                v.issue(join(section, key), "must not be empty");
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
                            join(section, "client_certificate_path"),
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
                    .and_then(|env| env(crate::config::env::FEDERATED_TOKEN_FILE_ENV));
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
                                join(section, "federated_token_file"),
                                format!("is required with credential = \"workload-identity\" when {} is not set", crate::config::env::FEDERATED_TOKEN_FILE_ENV),
                            );
                        }
                        None
                    }
                }
            }
            "aws-federation" => {
                let audience = match audience {
                    None => Some(crate::config::env::DEFAULT_FEDERATION_AUDIENCE.to_string()),
                    Some(a) if a.trim().is_empty() || a.len() > 1000 => {
                        self.issue(
                            join(section, "aws_federation_audience"),
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
                    join(section, "credential"),
                    format!(
                        "must be one of {}, found {other:?}",
                        CREDENTIAL_KINDS.join(", ")
                    ),
                );
                None
            }
        }
    }

    pub(super) fn azure(&mut self, t: &Table) -> Option<AzureConfig> {
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
                "onboarding",
                "locations",
                "resource_group_location",
            ],
        );
        let credential = self.credential(t, "azure");
        let workload = matches!(credential, Some(CredentialConfig::WorkloadIdentity { .. }));
        let mut from_env = BTreeMap::new();
        let tenant_id = self.guid_or_env(t, "tenant_id", workload, &mut from_env);
        let subscription_id = self.guid(t, "subscription_id");
        let onboarding = self.onboarding_identity(t, tenant_id.as_deref());
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
                self.issue(
                    "azure.location",
                    "is required in [azure] (e.g. \"eastus\", or \"auto\")",
                );
                None
            }
            Some("auto") => Some(Location::Auto),
            Some(l) if locations::is_location_name(l) => Some(Location::Fixed(l.to_string())),
            Some(l) => {
                self.issue(
                    "azure.location",
                    format!("{l:?} is not an Azure region name (use the short form, e.g. \"eastus\", \"westeurope\", or \"auto\")"),
                );
                None
            }
        };
        let locations = match t.get("locations") {
            None => BTreeMap::new(),
            Some(Value::Table(l)) => self.azure_locations(l),
            Some(other) => {
                self.issue(
                    "azure.locations",
                    format!(
                        "must be a table ([azure.locations]) of AWS region = Azure location, found {}",
                        describe(other)
                    ),
                );
                BTreeMap::new()
            }
        };
        let resource_group_location = match (
            self.string(t, "azure", "resource_group_location"),
            &location,
        ) {
            (Some(l), _) if locations::is_location_name(l) => Some(l.to_string()),
            (Some(l), _) => {
                self.issue(
                    "azure.resource_group_location",
                    format!(
                        "{l:?} is not an Azure region name (use the short form, e.g. \"eastus\")"
                    ),
                );
                None
            }
            (None, Some(Location::Fixed(l))) => Some(l.clone()),
            (None, Some(Location::Auto)) => {
                if !t.contains_key("resource_group_location") {
                    self.issue(
                        "azure.resource_group_location",
                        "is required with location = \"auto\": the resource group holds machines of several locations, so name the one it is created in (e.g. \"eastus\")",
                    );
                }
                None
            }
            (None, None) => None,
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
            locations,
            resource_group_location: resource_group_location?,
            resource_group,
            cloud,
            client_id: client_id?,
            credential: credential?,
            from_env,
            authority_host,
            resource_manager,
            tags,
            onboarding: onboarding?,
        })
    }

    /// `[azure.onboarding]`: the onboarding identity, with the credential keys of `[azure]` (its secret from
    /// [`ONBOARDING_CLIENT_SECRET_ENV`]); `tenant_id` defaults to `azure.tenant_id`. `Some(None)`: absent.
    pub(super) fn onboarding_identity(
        &mut self,
        azure: &Table,
        azure_tenant: Option<&str>,
    ) -> Option<Option<OnboardingIdentity>> {
        const SECTION: &str = "azure.onboarding";
        let t = match azure.get("onboarding") {
            None => return Some(None),
            Some(Value::Table(t)) => t,
            Some(other) => {
                self.issue(
                    SECTION,
                    format!("must be a table, found {}", describe(other)),
                );
                return None;
            }
        };
        self.unknown_keys(
            t,
            SECTION,
            &[
                "tenant_id",
                "client_id",
                "credential",
                "client_certificate_path",
                "federated_token_file",
                "aws_federation_audience",
            ],
        );
        let credential = self.credential(t, SECTION);
        if credential == Some(CredentialConfig::AzureCli) {
            self.issue(
                join(SECTION, "credential"),
                "cannot be \"azure-cli\": the onboarding identity replaces a person's token; use a service principal (client-secret, client-certificate, workload-identity, aws-federation) or a managed identity",
            );
            return None;
        }
        let guid = |v: &mut Self, key: &str| -> Option<Option<String>> {
            match v.string(t, SECTION, key) {
                None => Some(None),
                Some(s) if is_guid(s) => Some(Some(s.to_ascii_lowercase())),
                Some(s) => {
                    v.issue(
                        join(SECTION, key),
                        format!(
                            "{s:?} is not a GUID (expected 00000000-0000-0000-0000-000000000000)"
                        ),
                    );
                    None
                }
            }
        };
        let tenant_id = guid(self, "tenant_id");
        let client_id = guid(self, "client_id");
        let client_id = match (client_id, &credential) {
            (Some(None), Some(c)) if *c != CredentialConfig::ManagedIdentity => {
                self.issue(
                    join(SECTION, "client_id"),
                    "is required in [azure.onboarding] (the onboarding identity's application id)",
                );
                None
            }
            (other, _) => other,
        };
        let tenant_id = tenant_id?.or_else(|| azure_tenant.map(str::to_string))?;
        Some(Some(OnboardingIdentity {
            tenant_id,
            client_id: client_id?,
            credential: credential?,
        }))
    }

    pub(super) fn azure_tags(&mut self, tags: &Table) -> BTreeMap<String, String> {
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

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn describe(v: &Value) -> String {
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

/// `/subscriptions/{guid}/resourceGroups/{group}/providers/Microsoft.HybridCompute/{kind}/{name}`, segment
/// names compared case-insensitively as ARM does; the group and name in Azure's characters.
fn check_hybrid_compute_id(s: &str, kind: &str) -> Result<(), String> {
    let expected = format!(
        "an ARM id like /subscriptions/<guid>/resourceGroups/<group>/providers/Microsoft.HybridCompute/{kind}/<name>"
    );
    let parts: Vec<&str> = s.split('/').collect();
    let shape = parts.len() == 9
        && parts[0].is_empty()
        && parts[1].eq_ignore_ascii_case("subscriptions")
        && parts[3].eq_ignore_ascii_case("resourceGroups")
        && parts[5].eq_ignore_ascii_case("providers")
        && parts[6].eq_ignore_ascii_case("Microsoft.HybridCompute")
        && parts[7].eq_ignore_ascii_case(kind);
    if !shape {
        return Err(format!(
            "{:?} is not {expected}",
            s.chars().take(300).collect::<String>()
        ));
    }
    if !is_guid(parts[2]) {
        return Err(format!("{:?}: the subscription is not a GUID", parts[2]));
    }
    if check_resource_group(parts[4]).is_err() || parts[4].contains('{') {
        return Err(format!(
            "{:?}: not a resource group name (letters, digits and _ - . ( ), up to 90)",
            parts[4]
        ));
    }
    let name = parts[8];
    let name_ok = !name.is_empty()
        && name.len() <= 90
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.ends_with('.');
    if !name_ok {
        return Err(format!(
            "{name:?}: not a resource name (letters, digits and - _ ., up to 90)"
        ));
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
    use std::path::Path;

    use super::*;
    use crate::config::tests::{parse, FULL};

    #[test]
    fn the_onboarding_identity_takes_the_credential_keys_of_azure_and_the_tenant_by_default() {
        let c = parse(&format!(
            "{FULL}\n[azure.onboarding]\nclient_id = \"00000000-0000-0000-0000-00000000000A\"\ncredential = \"client-certificate\"\nclient_certificate_path = \"/etc/arc/onboarding.pem\"\n"
        ))
        .unwrap();
        let onboarding = c.azure.unwrap().onboarding.unwrap();
        assert_eq!(
            onboarding,
            OnboardingIdentity {
                tenant_id: "00000000-0000-0000-0000-000000000001".into(),
                client_id: Some("00000000-0000-0000-0000-00000000000a".into()),
                credential: CredentialConfig::ClientCertificate {
                    path: "/etc/arc/onboarding.pem".into()
                },
            }
        );
        assert_eq!(parse(FULL).unwrap().azure.unwrap().onboarding, None);
        // A system-assigned managed identity needs no client id; anything else does.
        let mi = parse(&format!(
            "{FULL}\n[azure.onboarding]\ncredential = \"managed-identity\"\ntenant_id = \"00000000-0000-0000-0000-000000000009\"\n"
        ))
        .unwrap();
        let mi = mi.azure.unwrap().onboarding.unwrap();
        assert_eq!(
            (mi.client_id, mi.tenant_id.as_str()),
            (None, "00000000-0000-0000-0000-000000000009")
        );
        let err = parse(&format!(
            "{FULL}\n[azure.onboarding]\nfederated_token_file = \"/t\"\n"
        ))
        .unwrap_err();
        let keys: Vec<&str> = err.issues().iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "azure.onboarding.federated_token_file",
                "azure.onboarding.client_id"
            ],
            "{err}"
        );
    }

    #[test]
    fn a_misspelt_key_gets_the_closest_known_one() {
        let text =
            "[aws]\nregion = [\"us-east-1\"]\n[iam]\nrole_nmae = \"R\"\n[onboarding]\nzzz = 1\n";
        let err = parse(text).unwrap_err();
        let problem = |key: &str| {
            err.issues()
                .iter()
                .find(|i| i.key == key)
                .map(|i| i.problem.clone())
                .unwrap_or_else(|| panic!("{key} not reported: {err}"))
        };
        assert!(
            problem("aws.region").contains("did you mean `regions`?"),
            "{err}"
        );
        assert!(
            problem("iam.role_nmae").contains("did you mean `role_name`?"),
            "{err}"
        );
        assert!(!problem("onboarding.zzz").contains("did you mean"), "{err}");
        assert_eq!(
            closest("Tag-Filter", &["tag_filter", "regions"]),
            Some("tag_filter")
        );
        assert_eq!(closest("colour", &["regions", "all_regions"]), None);
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

    const GW: &str = "/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/net/providers/Microsoft.HybridCompute/gateways/gw1";
    const PLS: &str = "/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/net/providers/Microsoft.HybridCompute/privateLinkScopes/pls1";

    #[test]
    fn arm_ids_must_name_a_resource_of_their_type() {
        assert!(check_hybrid_compute_id(GW, "gateways").is_ok());
        assert!(check_hybrid_compute_id(PLS, "privateLinkScopes").is_ok());
        // ARM compares segment names case-insensitively.
        assert!(check_hybrid_compute_id(&GW.to_lowercase(), "gateways").is_ok());
        for bad in [
            "gw1",
            PLS,
            "/subscriptions/not-a-guid/resourceGroups/net/providers/Microsoft.HybridCompute/gateways/gw1",
            "/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/net/providers/Microsoft.Network/gateways/gw1",
            "/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/bad name/providers/Microsoft.HybridCompute/gateways/gw1",
            "/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/net/providers/Microsoft.HybridCompute/gateways/gw1/extra",
            "/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/net/providers/Microsoft.HybridCompute/gateways/g'w",
            "/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/net/providers/Microsoft.HybridCompute/gateways/$(id)",
            "/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/net/providers/Microsoft.HybridCompute/gateways/",
            "",
        ] {
            assert!(check_hybrid_compute_id(bad, "gateways").is_err(), "{bad}");
        }
    }

    #[test]
    fn the_connect_options_take_their_defaults_and_their_constraints() {
        let c = parse(FULL).unwrap();
        assert_eq!(c.onboarding.gateway_id, None);
        assert_eq!(c.onboarding.private_link_scope, None);
        assert_eq!(c.onboarding.sql_server_license, SqlServerLicense::Disabled);
        assert!(!c.onboarding.automatic_upgrade);
        let with = |lines: &str, cloud: &str| {
            parse(
                &FULL
                    .replace("[azure]", &format!("{lines}\n[azure]"))
                    .replace("cloud = \"AzureCloud\"", &format!("cloud = \"{cloud}\"")),
            )
        };
        let ok = with(
            &format!("gateway_id = \"{GW}\"\nautomatic_upgrade = true\nsql_server_license = \"license-only\""),
            "AzureCloud",
        )
        .unwrap();
        assert_eq!(ok.onboarding.gateway_id.as_deref(), Some(GW));
        assert!(ok.onboarding.automatic_upgrade);
        assert_eq!(ok.onboarding.sql_server_license.tag_value(), "LicenseOnly");
        // Private Link works with any cloud and with a proxy.
        let pls = with(
            &format!("private_link_scope = \"{PLS}\""),
            "AzureUSGovernment",
        )
        .unwrap();
        assert_eq!(pls.onboarding.private_link_scope.as_deref(), Some(PLS));
        let keys = |r: Result<Config, crate::config::ConfigError>| -> Vec<String> {
            r.unwrap_err()
                .issues()
                .iter()
                .map(|i| i.key.clone())
                .collect()
        };
        assert_eq!(
            keys(with(&format!("gateway_id = \"{GW}\""), "AzureUSGovernment")),
            ["onboarding.gateway_id"]
        );
        assert_eq!(
            keys(with("automatic_upgrade = true", "AzureUSGovernment")),
            ["onboarding.automatic_upgrade"]
        );
        assert_eq!(
            keys(with(
                &format!("gateway_id = \"{GW}\"\nprivate_link_scope = \"{PLS}\""),
                "AzureCloud"
            )),
            ["onboarding.gateway_id"]
        );
        assert_eq!(
            keys(with("sql_server_license = \"Disabled\"", "AzureCloud")),
            ["onboarding.sql_server_license"]
        );
        // The SQL Server tag is the tool's own.
        let tagged = FULL.replace(
            "tags = { CostCenter = \"42\" }",
            "tags = { ArcSQLServerExtensionDeployment = \"PAYG\" }",
        );
        assert_eq!(
            keys(parse(&tagged)),
            ["azure.tags.ArcSQLServerExtensionDeployment"]
        );
    }

    #[test]
    fn locations_come_from_the_override_then_the_fixed_location_then_the_table() {
        let fixed = parse(&format!(
            "{FULL}[azure.locations]\n\"eu-west-1\" = \"northeurope\"\n"
        ))
        .unwrap()
        .azure
        .unwrap();
        assert_eq!(
            fixed.location_for("eu-west-1").as_deref(),
            Some("northeurope")
        );
        assert_eq!(fixed.location_for("us-east-1").as_deref(), Some("eastus"));
        assert_eq!(fixed.location_for("ap-south-1").as_deref(), Some("eastus"));
        assert_eq!(fixed.resource_group_location, "eastus");

        let auto_text = FULL.replace(
            "location = \"eastus\"",
            "location = \"auto\"\nresource_group_location = \"westeurope\"",
        );
        let auto = parse(&format!(
            "{auto_text}[azure.locations]\n\"eu-west-1\" = \"northeurope\"\n"
        ))
        .unwrap()
        .azure
        .unwrap();
        assert_eq!(auto.location, Location::Auto);
        assert_eq!(
            auto.location_for("eu-west-1").as_deref(),
            Some("northeurope")
        );
        assert_eq!(auto.location_for("us-east-1").as_deref(), Some("eastus"));
        assert_eq!(
            auto.location_for("ap-south-1").as_deref(),
            Some("southeastasia")
        );
        assert_eq!(auto.location_for("xx-east-1"), None);
        assert_eq!(auto.resource_group_location, "westeurope");

        let err = parse(&FULL.replace("location = \"eastus\"", "location = \"auto\"")).unwrap_err();
        assert_eq!(err.issues()[0].key, "azure.resource_group_location");
        let err = parse(&format!(
            "{auto_text}[azure.locations]\n\"eu-west-9\" = \"northeurope\"\n\"us-east-1\" = \"East US\"\n"
        ))
        .unwrap_err();
        let keys: Vec<&str> = err.issues().iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            ["azure.locations.us-east-1", "azure.locations.eu-west-9"]
        );
    }
}
