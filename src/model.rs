//! Domain types shared by the ports, the observer, the planner and the report. No SDK type crosses here.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

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
    /// Tag key (exact, case-sensitive as EC2 matches it).
    pub key: String,
    /// Tag value; `None` means any instance that has the key.
    pub value: Option<String>,
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
}

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
}

/// An Arc machine resource as far as the tool cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArcMachine {
    /// Resource name (the instance id).
    pub name: String,
    /// Agent status as Azure reports it.
    pub status: ArcStatus,
    /// `code: message` of each error detail.
    pub errors: Vec<String>,
    /// `properties.lastStatusChange`: since when the machine has had its status.
    pub last_status_change: Option<std::time::SystemTime>,
    /// `properties.detectedProperties["AWS-instanceId"]`: the EC2 instance whose agent reports as this
    /// machine. Another instance's id than the machine's name means that instance is a clone.
    pub detected_instance_id: Option<String>,
}

/// Counts of API calls by `service:Operation`, as the report shows them.
pub type ApiCounts = BTreeMap<String, u64>;

#[cfg(test)]
mod tests {
    use super::*;

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
}
