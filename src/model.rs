//! Domain types shared by the ports, the observer, the planner and the report. No SDK type crosses here.

use std::collections::BTreeMap;

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
}
