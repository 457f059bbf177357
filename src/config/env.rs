//! The environment variables the configuration and the credentials read, and how they are read: a lookup
//! passed in (the process environment, or a map in tests), empty values as unset.

/// Where the Kubernetes workload identity webhook puts the token file's path.
pub const FEDERATED_TOKEN_FILE_ENV: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// The client id the workload identity webhook injects (used when `azure.client_id` is absent).
pub const CLIENT_ID_ENV: &str = "AZURE_CLIENT_ID";
/// The tenant id the workload identity webhook injects (used when `azure.tenant_id` is absent).
pub const TENANT_ID_ENV: &str = "AZURE_TENANT_ID";
/// The Azure Arc agent's managed identity endpoint (set system-wide by the agent).
pub const IDENTITY_ENDPOINT_ENV: &str = "IDENTITY_ENDPOINT";
/// Set by the Azure Arc agent beside [`IDENTITY_ENDPOINT_ENV`]; both together mean "Arc", as in the SDKs.
pub const IMDS_ENDPOINT_ENV: &str = "IMDS_ENDPOINT";
/// Overrides the host of the Azure VM metadata endpoint, as in the Azure SDKs (pod identity, tests).
pub const POD_IDENTITY_HOST_ENV: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
/// Overrides the directory the Arc agent's challenge files must be in (tests; default
/// `adapters::credential::HIMDS_TOKEN_DIR`).
pub const HIMDS_TOKEN_DIR_ENV: &str = "ARC_ONBOARD_HIMDS_TOKEN_DIR";
/// The audience Entra's federated credentials expect by convention.
pub const DEFAULT_FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Reads an environment variable; empty counts as unset.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, empty values as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
