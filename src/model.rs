//! Domain types shared by the ports, the observer, the planner and the report. No SDK type crosses here.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Operating system family as far as the Arc agent is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Any Linux distribution.
    Linux,
    /// Windows Server.
    Windows,
    /// Something else (macOS, 32-bit): the agent does not support it.
    Unknown,
}

impl Platform {
    /// Lowercase name as in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Linux => "linux",
            Platform::Windows => "windows",
            Platform::Unknown => "unknown",
        }
    }

    /// Derives the platform from EC2's `Platform`, `PlatformDetails` and `Architecture` fields.
    ///
    /// EC2 sends `Platform` as lowercase `windows` while the SDK's enum spells `Windows`, so the raw string
    /// is compared case-insensitively (aws/aws-sdk#797). `PlatformDetails` is richer when present.
    pub fn from_ec2(
        platform: Option<&str>,
        details: Option<&str>,
        architecture: Option<&str>,
    ) -> Platform {
        let arch = architecture.unwrap_or("x86_64").to_ascii_lowercase();
        let windows = platform.is_some_and(|p| p.eq_ignore_ascii_case("windows"))
            || details.is_some_and(|d| d.to_ascii_lowercase().starts_with("windows"));
        let mac = arch.ends_with("_mac")
            || details.is_some_and(|d| d.to_ascii_lowercase().contains("macos"));
        let supported_arch = matches!(arch.as_str(), "x86_64" | "arm64");
        if mac || !supported_arch {
            Platform::Unknown
        } else if windows {
            if arch == "x86_64" {
                Platform::Windows
            } else {
                Platform::Unknown
            }
        } else {
            Platform::Linux
        }
    }
}

/// EC2 instance lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    /// Launching.
    Pending,
    /// Running.
    Running,
    /// Stopping.
    Stopping,
    /// Stopped.
    Stopped,
    /// Being terminated.
    ShuttingDown,
    /// Gone.
    Terminated,
}

impl InstanceState {
    /// The EC2 name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
        }
    }

    /// Parses EC2's state name; unknown names count as pending.
    pub fn parse(s: &str) -> InstanceState {
        match s {
            "running" => InstanceState::Running,
            "stopping" => InstanceState::Stopping,
            "stopped" => InstanceState::Stopped,
            "shutting-down" => InstanceState::ShuttingDown,
            "terminated" => InstanceState::Terminated,
            _ => InstanceState::Pending,
        }
    }

    /// Terminated and terminating instances never appear in a report.
    pub fn is_gone(self) -> bool {
        matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }
}

impl Serialize for InstanceState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// SSM agent ping status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum PingStatus {
    /// Reachable now.
    Online,
    /// Was registered, lost contact.
    ConnectionLost,
    /// Deregistered or otherwise inactive.
    Inactive,
}

impl PingStatus {
    /// Parses SSM's spelling.
    pub fn parse(s: &str) -> Option<PingStatus> {
        match s {
            "Online" => Some(PingStatus::Online),
            "ConnectionLost" => Some(PingStatus::ConnectionLost),
            "Inactive" => Some(PingStatus::Inactive),
            _ => None,
        }
    }

    /// SSM's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PingStatus::Online => "Online",
            PingStatus::ConnectionLost => "ConnectionLost",
            PingStatus::Inactive => "Inactive",
        }
    }
}

/// SSM's status of a command or of one instance's invocation (`CommandStatus`,
/// `CommandInvocationStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandStatus {
    /// Not yet delivered.
    Pending,
    /// Running.
    InProgress,
    /// The system is retrying delivery.
    Delayed,
    /// Finished; the script exited 0.
    Success,
    /// Cancelled before it finished.
    Cancelled,
    /// Delivery or execution timed out.
    TimedOut,
    /// Finished with a failure (the script exited non-zero, or the command could not be delivered).
    Failed,
    /// Being cancelled.
    Cancelling,
    /// A status this version does not know; kept as SSM spelled it.
    Other(String),
}

impl CommandStatus {
    /// From SSM's spelling.
    pub fn parse(s: &str) -> CommandStatus {
        match s {
            "Pending" => CommandStatus::Pending,
            "InProgress" => CommandStatus::InProgress,
            "Delayed" => CommandStatus::Delayed,
            "Success" => CommandStatus::Success,
            "Cancelled" => CommandStatus::Cancelled,
            "TimedOut" => CommandStatus::TimedOut,
            "Failed" => CommandStatus::Failed,
            "Cancelling" => CommandStatus::Cancelling,
            other => CommandStatus::Other(other.to_string()),
        }
    }

    /// SSM's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            CommandStatus::Pending => "Pending",
            CommandStatus::InProgress => "InProgress",
            CommandStatus::Delayed => "Delayed",
            CommandStatus::Success => "Success",
            CommandStatus::Cancelled => "Cancelled",
            CommandStatus::TimedOut => "TimedOut",
            CommandStatus::Failed => "Failed",
            CommandStatus::Cancelling => "Cancelling",
            CommandStatus::Other(s) => s,
        }
    }

    /// Whether the command (or invocation) will change no more.
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            CommandStatus::Success
                | CommandStatus::Cancelled
                | CommandStatus::Failed
                | CommandStatus::TimedOut
        )
    }
}

/// The status of an Arc machine resource (`properties.status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArcStatus {
    /// The agent is connected and sending heartbeats.
    Connected,
    /// The agent stopped sending heartbeats.
    Disconnected,
    /// The agent reported an error.
    Error,
    /// The agent has been disconnected long enough for its identity to expire.
    Expired,
    /// A status this version does not know, or none (`Unknown`); kept as Azure spelled it.
    Other(String),
}

impl ArcStatus {
    /// From Azure's spelling (case-insensitive).
    pub fn parse(s: &str) -> ArcStatus {
        match s.to_ascii_lowercase().as_str() {
            "connected" => ArcStatus::Connected,
            "disconnected" => ArcStatus::Disconnected,
            "error" => ArcStatus::Error,
            "expired" => ArcStatus::Expired,
            _ => ArcStatus::Other(s.to_string()),
        }
    }

    /// Azure's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            ArcStatus::Connected => "Connected",
            ArcStatus::Disconnected => "Disconnected",
            ArcStatus::Error => "Error",
            ArcStatus::Expired => "Expired",
            ArcStatus::Other(s) => s,
        }
    }
}

/// The instance tag filter (`aws.tag_filter`), pushed to `DescribeInstances` by the EC2 port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSelector {
    /// Tag key.
    pub key: String,
    /// Tag value; `None` means any instance that has the key.
    pub value: Option<String>,
    /// `true`: key and value match exactly, as EC2's own filters do; `false` (the default, as the
    /// connector): the letters A-Z match either case, every other character exactly.
    pub case_sensitive: bool,
}

/// The most spellings of a key one `tag-key` filter lists (EC2 takes up to 200 values per filter).
const KEY_SPELLINGS: usize = 128;

impl TagSelector {
    /// Whether an instance with these tags passes the filter.
    pub fn matches<'a>(&self, tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
        let same = |a: &str, b: &str| {
            if self.case_sensitive {
                a == b
            } else {
                a.eq_ignore_ascii_case(b)
            }
        };
        tags.into_iter().any(|(k, v)| {
            same(k, &self.key) && self.value.as_deref().is_none_or(|want| same(v, want))
        })
    }

    /// The values of the server-side `tag-key` filter of a case-insensitive selector: every spelling of the
    /// key when there are at most 128 (keys with up to 7 letters), else one pattern with EC2's `?`
    /// wildcard for each letter. Either way a superset of the keys that match; [`TagSelector::matches`]
    /// then decides on the client. (`*` and `?`, which EC2 tag keys cannot hold, are escaped anyway.)
    pub fn key_filter_values(&self) -> Vec<String> {
        let escape = |c: char| match c {
            '*' | '?' | '\\' => format!("\\{c}"),
            c => c.to_string(),
        };
        let letters = self.key.chars().filter(char::is_ascii_alphabetic).count();
        if letters > 7 {
            return vec![self
                .key
                .chars()
                .map(|c| {
                    if c.is_ascii_alphabetic() {
                        "?".to_string()
                    } else {
                        escape(c)
                    }
                })
                .collect()];
        }
        let mut spellings = vec![String::new()];
        for c in self.key.chars() {
            if c.is_ascii_alphabetic() {
                spellings = spellings
                    .into_iter()
                    .flat_map(|s| {
                        [
                            format!("{s}{}", c.to_ascii_lowercase()),
                            format!("{s}{}", c.to_ascii_uppercase()),
                        ]
                    })
                    .collect();
            } else {
                let e = escape(c);
                spellings.iter_mut().for_each(|s| s.push_str(&e));
            }
        }
        debug_assert!(spellings.len() <= KEY_SPELLINGS);
        spellings
    }
}

/// One instance as `DescribeInstances` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Instance {
    /// `i-...`.
    pub instance_id: String,
    /// Value of the `Name` tag.
    pub name: Option<String>,
    /// Derived platform.
    pub platform: Platform,
    /// Lifecycle state.
    pub state: InstanceState,
    /// ARN of the attached instance profile (compare by ARN: the `Id` is not stable across emulators).
    pub profile_arn: Option<String>,
    /// `PlatformDetails` when it names SQL Server (a license-included AMI, e.g. "Windows with SQL Server
    /// Standard"): AWS bills that SQL Server license with the instance.
    pub sql_server_included: Option<String>,
}

/// `PlatformDetails` when it names a license-included SQL Server, as [`Ec2Instance::sql_server_included`].
pub fn sql_server_included(platform_details: Option<&str>) -> Option<String> {
    platform_details
        .filter(|d| d.to_ascii_lowercase().contains("sql server"))
        .map(str::to_string)
}

/// An instance as `DescribeInstances` reports it whatever its state, terminated included: what deciding
/// the fate of its Arc machine needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceFate {
    /// `i-...`.
    pub instance_id: String,
    /// Lifecycle state.
    pub state: InstanceState,
    /// When it entered that state, read from `StateTransitionReason` (`User initiated (2026-12-06
    /// 04:45:03 GMT)`) when it holds a time.
    pub changed_at: Option<std::time::SystemTime>,
}

/// The time in an EC2 `StateTransitionReason` (`... (YYYY-MM-DD HH:MM:SS GMT)`, moto says `UTC`).
pub fn transition_time(reason: &str) -> Option<std::time::SystemTime> {
    let open = reason.rfind('(')?;
    let inner = reason[open + 1..].trim_end().strip_suffix(')')?;
    let stamp = inner
        .trim()
        .trim_end_matches("GMT")
        .trim_end_matches("UTC")
        .trim();
    let (date, time) = stamp.split_once(' ')?;
    humantime::parse_rfc3339(&format!("{date}T{time}Z")).ok()
}

/// An instance profile association (`DescribeIamInstanceProfileAssociations`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileAssociation {
    /// `iip-assoc-...`.
    pub association_id: String,
    /// The instance.
    pub instance_id: String,
    /// The profile ARN.
    pub profile_arn: String,
    /// `associating | associated | disassociating | disassociated`.
    pub state: String,
}

/// An IAM instance profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceProfile {
    /// Profile name.
    pub name: String,
    /// Profile ARN.
    pub arn: String,
    /// Names of the roles in it (IAM allows at most one).
    pub roles: Vec<String>,
    /// Whether arc-onboard created it (tag `arc-onboard:managed`).
    pub managed_by_us: bool,
}

/// An IAM role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Role name.
    pub name: String,
    /// Role ARN.
    pub arn: String,
    /// Whether arc-onboard created it (tag `arc-onboard:managed`).
    pub managed_by_us: bool,
}

/// An instance as SSM knows it (`DescribeInstanceInformation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsmInstance {
    /// `i-...`.
    pub instance_id: String,
    /// Ping status.
    pub ping: PingStatus,
    /// `Linux | Windows | MacOS`.
    pub platform_type: Option<String>,
    /// SSM agent version.
    pub agent_version: Option<String>,
}

/// An AWS error, classified so callers can decide without parsing strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed: {code}: {message}")]
pub struct AwsError {
    /// `service:Operation` that failed.
    pub operation: String,
    /// What kind of failure.
    pub kind: AwsErrorKind,
    /// AWS error code, e.g. `UnauthorizedOperation`.
    pub code: String,
    /// AWS error message.
    pub message: String,
    /// Where the error came from, when the SDK gave it (boxed: errors travel in `Result`s and stay small).
    pub origin: Option<Box<AwsErrorOrigin>>,
}

impl AwsError {
    /// The id AWS gave the failed request, when it answered.
    pub fn request_id(&self) -> Option<&str> {
        self.origin.as_ref()?.request_id.as_deref()
    }
}

/// The SDK's side of an [`AwsError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsErrorOrigin {
    /// The id AWS gave the failed request (from the error body or the `x-amzn-RequestId` header), for
    /// CloudTrail and AWS support; none when no answer came.
    pub request_id: Option<String>,
    /// The SDK's error itself, for a caller that inspects it (downcast). Not the [`AwsError`]'s
    /// `Error::source`: its message already says what this says, and a message never repeats its source.
    pub cause: AwsErrorCause,
}

/// The SDK error behind an [`AwsError`], shared so the error stays `Clone`.
#[derive(Clone)]
pub struct AwsErrorCause(pub std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl fmt::Debug for AwsErrorCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AwsErrorCause({})", self.0)
    }
}

/// Errors compare by what they say (operation, kind, code, message, request id), not by the SDK value
/// behind them.
impl PartialEq for AwsErrorCause {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for AwsErrorCause {}

/// Classes of AWS failure the tool reacts to differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AwsErrorKind {
    /// Throttling that outlasted the SDK's retries.
    Throttled,
    /// Access denied / unauthorized.
    AccessDenied,
    /// The entity does not exist.
    NotFound,
    /// A parameter was rejected (e.g. a profile that has not propagated yet).
    InvalidParameter,
    /// The resource is in the wrong state (e.g. already associated).
    IncorrectState,
    /// No credentials, expired credentials.
    Credentials,
    /// Network, timeout, or no answer.
    Transport,
    /// Anything else.
    Other,
}

impl AwsError {
    /// Builds an error from an AWS error code, classifying it.
    pub fn from_code(operation: impl Into<String>, code: &str, message: &str) -> AwsError {
        let kind = classify_code(code);
        AwsError {
            operation: operation.into(),
            kind,
            code: code.to_string(),
            message: message.to_string(),
            origin: None,
        }
    }
}

/// Maps AWS error codes to kinds.
pub fn classify_code(code: &str) -> AwsErrorKind {
    match code {
        "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "SlowDown" => AwsErrorKind::Throttled,
        "AccessDenied"
        | "AccessDeniedException"
        | "UnauthorizedOperation"
        | "UnauthorizedAccess"
        | "AuthFailure" => AwsErrorKind::AccessDenied,
        "NoSuchEntity"
        | "InvalidInstanceID.NotFound"
        | "InvalidInstanceID.Malformed"
        | "InvocationDoesNotExist"
        | "InvalidCommandId"
        | "InvalidAssociationID.NotFound" => AwsErrorKind::NotFound,
        "InvalidParameterValue"
        | "ValidationError"
        | "ValidationException"
        | "InvalidParameter" => AwsErrorKind::InvalidParameter,
        "IncorrectState" | "IncorrectInstanceState" => AwsErrorKind::IncorrectState,
        "ExpiredToken"
        | "ExpiredTokenException"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "SignatureDoesNotMatch"
        | "MissingAuthenticationToken" => AwsErrorKind::Credentials,
        _ => AwsErrorKind::Other,
    }
}

/// A string that must never be printed: secrets and tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why an Azure call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AzureError {
    /// Entra refused or failed the token request.
    #[error("Entra token request failed: HTTP {status}: {code}: {description}")]
    Token {
        /// HTTP status.
        status: u16,
        /// OAuth error code, e.g. `invalid_client`.
        code: String,
        /// Entra's description (never contains the secret).
        description: String,
    },
    /// Resource Manager answered with an error.
    #[error("{operation} failed: HTTP {status}: {code}: {message}")]
    Arm {
        /// `arm:GetMachine` etc.
        operation: &'static str,
        /// HTTP status.
        status: u16,
        /// ARM error code.
        code: String,
        /// ARM message.
        message: String,
    },
    /// The credential could not produce its proof (token file, challenge file, STS, `az`).
    #[error("the Azure credential failed: {code}: {message}")]
    Credential {
        /// What failed: `federated_token_file`, an STS error code, `azure_cli`, ...
        code: String,
        /// Why (never a secret).
        message: String,
    },
    /// No answer.
    #[error("{operation} failed: cannot reach {url}: {message}")]
    Transport {
        /// The call.
        operation: &'static str,
        /// Where (without query).
        url: String,
        /// The client's message.
        message: String,
    },
}

impl AzureError {
    /// The error's code: Entra's OAuth error, ARM's error code, or `transport`.
    pub fn code(&self) -> String {
        match self {
            AzureError::Token { code, .. }
            | AzureError::Arm { code, .. }
            | AzureError::Credential { code, .. } => code.clone(),
            AzureError::Transport { .. } => "transport".into(),
        }
    }

    /// Whether Resource Manager refused the call for lack of permission (HTTP 403, or
    /// `AuthorizationFailed` whatever the status).
    pub fn is_denied(&self) -> bool {
        matches!(self, AzureError::Arm { status: 403, .. })
            || matches!(self, AzureError::Arm { code, .. } if code == "AuthorizationFailed")
    }
}

/// An Arc machine resource as far as the tool cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArcMachine {
    /// Resource name (the instance id).
    pub name: String,
    /// Agent status as Azure reports it.
    pub status: ArcStatus,
    /// `code: message` of each error detail.
    pub errors: Vec<String>,
    /// `properties.agentVersion`, when Azure reports one.
    pub agent_version: Option<String>,
    /// The resource's tags (ownership is read from them: [`ownership`]).
    pub tags: BTreeMap<String, String>,
    /// `properties.lastStatusChange`: when the status last changed, when Azure says.
    pub last_status_change: Option<std::time::SystemTime>,
    /// `properties.detectedProperties["AWS-instanceId"]`: the EC2 instance whose agent reports as this
    /// machine. Another instance's id than the machine's name means that instance is a clone.
    pub detected_instance_id: Option<String>,
}

/// An Arc machine Azure Resource Graph found for one of our instances, anywhere the identity can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphMachine {
    /// The ARM resource id.
    pub id: String,
    /// Resource name.
    pub name: String,
    /// Its subscription.
    pub subscription_id: String,
    /// Its resource group.
    pub resource_group: String,
    /// Its `InstanceId` tag (Defender for Cloud's machines carry one), when present.
    pub instance_id_tag: Option<String>,
    /// `properties.status`, when present.
    pub status: Option<String>,
}

impl ArcMachine {
    /// The EC2 instance this machine belongs to when it carries arc-onboard's ownership tags (see
    /// [`ownership`]); `None` for any machine arc-onboard did not connect, whatever its name.
    pub fn owner(&self) -> Option<ownership::Owner> {
        ownership::owner_of(&self.tags)
    }
}

impl Default for ArcStatus {
    fn default() -> Self {
        ArcStatus::Other("Unknown".into())
    }
}

/// The ownership tags every machine arc-onboard connects carries, and how they are read back. A machine
/// without all of them is never deleted or changed by arc-onboard.
///
/// `ManagedBy`, `AwsAccountId` and `AwsRegion` are rendered into the install script (one text per
/// account, region and platform); `AwsInstanceId` is added by the script on the instance itself, from the
/// instance id it reads through IMDSv2.
pub mod ownership {
    use std::collections::BTreeMap;

    /// Says arc-onboard connected the machine; its value is [`MANAGED_BY_VALUE`].
    pub const MANAGED_BY: &str = "ManagedBy";
    /// The value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "arc-onboard";
    /// The AWS account id of the instance.
    pub const ACCOUNT: &str = "AwsAccountId";
    /// The AWS region of the instance.
    pub const REGION: &str = "AwsRegion";
    /// The EC2 instance id (set on the instance by the install script).
    pub const INSTANCE: &str = "AwsInstanceId";
    /// Every ownership tag key; the configuration may not set them (`azure.tags`).
    pub const KEYS: [&str; 4] = [MANAGED_BY, ACCOUNT, REGION, INSTANCE];

    /// The instance an owned machine belongs to.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Owner {
        /// 12-digit account id.
        pub account_id: String,
        /// Region.
        pub region: String,
        /// `i-...`.
        pub instance_id: String,
    }

    /// Reads the ownership tags (keys case-insensitively, as Azure treats tag names); `None` unless all
    /// four are present and `ManagedBy` is `arc-onboard`.
    pub fn owner_of(tags: &BTreeMap<String, String>) -> Option<Owner> {
        let get = |key: &str| {
            tags.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.trim())
                .filter(|v| !v.is_empty())
        };
        if !get(MANAGED_BY)?.eq_ignore_ascii_case(MANAGED_BY_VALUE) {
            return None;
        }
        Some(Owner {
            account_id: get(ACCOUNT)?.to_string(),
            region: get(REGION)?.to_string(),
            instance_id: get(INSTANCE)?.to_string(),
        })
    }
}

/// Counts of API calls by `service:Operation`, as the report shows them.
pub type ApiCounts = BTreeMap<String, u64>;

/// RFC 3339 timestamp with second precision.
pub fn timestamp(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

// The report's vocabulary: statuses and failures (the planner's rows, the state file's records).

/// Instance status vocabulary of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Plan only: there are actions to take.
    Planned,
    /// The agent was installed and connected in this run.
    Onboarded,
    /// Azure already shows the machine connected.
    AlreadyOnboarded,
    /// IAM is in place; the instance is not Online in SSM yet.
    WaitingForSsm,
    /// The configuration forbids the IAM change this instance needs.
    NeedsManualIam,
    /// Stopped or stopping (IAM actions still apply).
    NotRunning,
    /// The agent does not support this platform.
    Unsupported,
    /// An install command from an earlier run is still running; it is not sent again.
    InProgress,
    /// Something failed; `failure` says in which step and why.
    Failed,
    /// The agent is connected to another Arc resource (another subscription, group or name); left alone.
    ConnectedElsewhere,
    /// The instance is gone (terminated, terminating, or unknown to EC2) and its Arc machine is ours;
    /// `delete-arc-machine` when due.
    Terminated,
    /// Run: the gone instance's Arc machine was deleted.
    Offboarded,
    /// Plan only: the agent would be installed, but Azure was not asked (no `[azure]`, no credential) or
    /// could not be read, so whether the machine is already connected is unknown.
    Unverified,
    /// `run --plan`: not applied, because the saved plan does not hold it or its world changed since.
    Skipped,
}

impl Status {
    /// Report spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Planned => "planned",
            Status::Onboarded => "onboarded",
            Status::AlreadyOnboarded => "already-onboarded",
            Status::WaitingForSsm => "waiting-for-ssm",
            Status::NeedsManualIam => "needs-manual-iam",
            Status::NotRunning => "not-running",
            Status::Unsupported => "unsupported",
            Status::InProgress => "in-progress",
            Status::Failed => "failed",
            Status::ConnectedElsewhere => "connected-elsewhere",
            Status::Terminated => "terminated",
            Status::Offboarded => "offboarded",
            Status::Unverified => "unverified",
            Status::Skipped => "skipped",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;

    /// The report spelling back (the state file keeps it): `as_str`'s inverse.
    fn from_str(s: &str) -> Result<Status, String> {
        ALL_STATUSES
            .iter()
            .copied()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown instance status {s:?}"))
    }
}

/// Every status, in the report's order.
pub const ALL_STATUSES: [Status; 14] = [
    Status::Planned,
    Status::Onboarded,
    Status::AlreadyOnboarded,
    Status::WaitingForSsm,
    Status::NeedsManualIam,
    Status::NotRunning,
    Status::Unsupported,
    Status::InProgress,
    Status::Failed,
    Status::ConnectedElsewhere,
    Status::Terminated,
    Status::Offboarded,
    Status::Unverified,
    Status::Skipped,
];

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The step of onboarding a failure belongs to (the report's `failure.step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureStep {
    /// IAM: reading or changing instance profiles, roles and policies.
    Iam,
    /// SSM: reading registration, sending or tracking the install command.
    Ssm,
    /// Downloading (and checking) the agent installer on the instance.
    Download,
    /// Running the installer, and the platform prerequisites it needs.
    Install,
    /// Setting or clearing the agent's `proxy.url`.
    ProxyConfig,
    /// Connecting the agent (and what it needs: token, resource group, instance id, agent state).
    Connect,
    /// Checking in Azure that the machine shows `Connected`.
    Verify,
    /// Deleting the Arc machine of an instance that is gone.
    Offboard,
}

impl FailureStep {
    /// Report spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureStep::Iam => "iam",
            FailureStep::Ssm => "ssm",
            FailureStep::Download => "download",
            FailureStep::Install => "install",
            FailureStep::ProxyConfig => "proxy-config",
            FailureStep::Connect => "connect",
            FailureStep::Verify => "verify",
            FailureStep::Offboard => "offboard",
        }
    }
}

/// Why an instance failed: the report's `failure` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The step that failed.
    pub step: FailureStep,
    /// A short machine-readable code: an AWS or ARM error code, an `AZCMnnnn` code, or one of ours
    /// (`checksum-mismatch`, `agent-disconnected`, `undeliverable`, ...).
    pub code: String,
    /// The exit code the step's command produced on the instance, when it produced one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// In words.
    pub reason: String,
}

impl Failure {
    /// A failure without an exit code.
    pub fn new(step: FailureStep, code: impl Into<String>, reason: impl Into<String>) -> Failure {
        Failure {
            step,
            code: code.into(),
            exit_code: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed ({}", self.step.as_str(), self.code)?;
        if let Some(code) = self.exit_code {
            write!(f, ", exit code {code}")?;
        }
        write!(f, "): {}", self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(key: &str, value: Option<&str>, case_sensitive: bool) -> TagSelector {
        TagSelector {
            key: key.into(),
            value: value.map(str::to_string),
            case_sensitive,
        }
    }

    #[test]
    fn tag_matching_ignores_the_case_of_letters_unless_told_not_to() {
        let loose = selector("Arc", Some("Onboard"), false);
        assert!(loose.matches([("ARC", "onboard")]));
        assert!(loose.matches([("Name", "x"), ("arc", "ONBOARD")]));
        assert!(!loose.matches([("arc", "onboarded")]));
        assert!(!loose.matches([("ar", "onboard")]));
        assert!(!loose.matches([("Name", "arc")]));
        let strict = selector("Arc", Some("Onboard"), true);
        assert!(strict.matches([("Arc", "Onboard")]));
        assert!(!strict.matches([("arc", "Onboard")]));
        assert!(!strict.matches([("Arc", "onboard")]));
        assert!(selector("arc", None, false).matches([("ARC", "")]));
        // Only A-Z fold: other characters must be exactly the same.
        assert!(!selector("é", None, false).matches([("É", "")]));
    }

    #[test]
    fn the_server_side_key_filter_lets_every_matching_spelling_through() {
        let s = selector("a-b:1", None, false);
        let values = s.key_filter_values();
        assert_eq!(values, ["a-b:1", "a-B:1", "A-b:1", "A-B:1"]);
        assert_eq!(
            selector("onboard", None, false).key_filter_values().len(),
            128
        );
        // Longer keys: one pattern with a wildcard for each letter.
        assert_eq!(
            selector("Arc.Onboard/x", None, false).key_filter_values(),
            ["???.???????/?"]
        );
        assert_eq!(
            selector("a*b?", None, false).key_filter_values()[0],
            "a\\*b\\?"
        );
    }

    #[test]
    fn license_included_sql_server_is_read_from_platform_details() {
        for (details, expected) in [
            (Some("Windows with SQL Server Standard"), true),
            (Some("Linux with SQL Server Enterprise"), true),
            (Some("Windows BYOL"), false),
            (Some("Windows"), false),
            (None, false),
        ] {
            assert_eq!(
                sql_server_included(details).is_some(),
                expected,
                "{details:?}"
            );
        }
    }

    #[test]
    fn platform_detection_follows_ec2_fields() {
        let cases = [
            (None, None, Some("x86_64"), Platform::Linux),
            (None, Some("Linux/UNIX"), Some("arm64"), Platform::Linux),
            (Some("windows"), None, Some("x86_64"), Platform::Windows),
            (Some("Windows"), None, None, Platform::Windows),
            (
                None,
                Some("Windows BYOL"),
                Some("x86_64"),
                Platform::Windows,
            ),
            (
                None,
                Some("Red Hat Enterprise Linux"),
                Some("x86_64"),
                Platform::Linux,
            ),
            (None, None, Some("i386"), Platform::Unknown),
            (None, None, Some("x86_64_mac"), Platform::Unknown),
            (None, Some("macOS"), Some("arm64_mac"), Platform::Unknown),
            (Some("windows"), None, Some("arm64"), Platform::Unknown),
        ];
        for (platform, details, arch, want) in cases {
            assert_eq!(
                Platform::from_ec2(platform, details, arch),
                want,
                "{platform:?} {details:?} {arch:?}"
            );
        }
    }

    #[test]
    fn error_codes_are_classified() {
        assert_eq!(
            classify_code("RequestLimitExceeded"),
            AwsErrorKind::Throttled
        );
        assert_eq!(
            classify_code("UnauthorizedOperation"),
            AwsErrorKind::AccessDenied
        );
        assert_eq!(
            classify_code("InvalidParameterValue"),
            AwsErrorKind::InvalidParameter
        );
        assert_eq!(
            classify_code("IncorrectState"),
            AwsErrorKind::IncorrectState
        );
        assert_eq!(classify_code("NoSuchEntity"), AwsErrorKind::NotFound);
        assert_eq!(classify_code("Whatever"), AwsErrorKind::Other);
    }

    #[test]
    fn ssm_and_arc_statuses_round_trip_and_keep_unknown_spellings() {
        for s in [
            "Pending",
            "InProgress",
            "Delayed",
            "Success",
            "Cancelled",
            "TimedOut",
            "Failed",
            "Cancelling",
            "Rebooting",
        ] {
            assert_eq!(CommandStatus::parse(s).as_str(), s);
        }
        assert!(CommandStatus::parse("TimedOut").is_done());
        assert!(!CommandStatus::parse("Cancelling").is_done());
        assert!(!CommandStatus::parse("Rebooting").is_done());
        assert_eq!(ArcStatus::parse("connected"), ArcStatus::Connected);
        assert_eq!(ArcStatus::parse("Expired"), ArcStatus::Expired);
        assert_eq!(
            ArcStatus::parse("AwaitingConnection"),
            ArcStatus::Other("AwaitingConnection".into())
        );
        assert_eq!(
            ArcStatus::parse("AwaitingConnection").as_str(),
            "AwaitingConnection"
        );
    }

    #[test]
    fn transition_times_are_read_from_ec2s_reason() {
        let t = transition_time("User initiated (2026-12-06 04:45:03 GMT)").unwrap();
        assert_eq!(
            humantime::format_rfc3339_seconds(t).to_string(),
            "2026-12-06T04:45:03Z"
        );
        assert!(transition_time("User initiated (2026-12-06 04:45:03 UTC)").is_some());
        assert_eq!(transition_time(""), None);
        assert_eq!(transition_time("Server.SpotInstanceTermination"), None);
    }

    #[test]
    fn a_machine_is_ours_only_with_every_ownership_tag() {
        let tags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let full = [
            ("ManagedBy", "arc-onboard"),
            ("AwsAccountId", "123456789012"),
            ("AwsRegion", "us-east-1"),
            ("AwsInstanceId", "i-0abc"),
        ];
        assert_eq!(
            ownership::owner_of(&tags(&full)),
            Some(ownership::Owner {
                account_id: "123456789012".into(),
                region: "us-east-1".into(),
                instance_id: "i-0abc".into(),
            })
        );
        // Azure tag names are case-insensitive.
        let lower: Vec<(String, &str)> = full
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), *v))
            .collect();
        let lower: Vec<(&str, &str)> = lower.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert!(ownership::owner_of(&tags(&lower)).is_some());
        for missing in 0..full.len() {
            let mut partial = full.to_vec();
            partial.remove(missing);
            assert_eq!(ownership::owner_of(&tags(&partial)), None, "{partial:?}");
        }
        let mut other = full.to_vec();
        other[0] = ("ManagedBy", "defender");
        assert_eq!(ownership::owner_of(&tags(&other)), None);
    }
}
