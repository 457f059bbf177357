//! Azure: the few Resource Manager calls the tool needs and the access token they carry, behind a port,
//! with a REST adapter over reqwest (rustls). The stateful fake is the test kit's `fake::FakeArm`.
//! Where the token comes from is the adapter's [`Credential`] (see [`crate::adapters::credential`]).
//!
//! Secrets are held in [`Secret`], whose `Debug` and `Display` never show them. Tokens are held the same way.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use url::Url;

use crate::adapters::credential::{Credential, TokenContext};
use crate::config::AzureConfig;
use crate::model::ArcStatus;
pub use crate::model::{ArcMachine, AzureError, GraphMachine, Secret};
pub use crate::ports::Arm;
use crate::ports::{ApiCounter, MutationToken};

mod graph;
pub use graph::{kql_string, machines_query};

/// `api-version` for resource groups.
const RG_API: &str = "2021-04-01";
/// `api-version` for Arc machines.
const MACHINES_API: &str = "2024-07-10";
/// A cached token is renewed when it has less than this left.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// What a script token needs beyond its scripts' delivery and execution timeouts (clock skew, send time).
const SCRIPT_TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// The HTTPS client for Azure could not be built: this machine's TLS setup is unusable (for instance, no CA
/// certificate could be loaded, or `SSL_CERT_FILE` names a missing file).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTPS client for Azure (check the CA certificates: SSL_CERT_FILE, SSL_CERT_DIR)")]
pub struct ClientError(#[source] reqwest::Error);

/// The REST adapter.
pub struct RestArm {
    http: reqwest::Client,
    authority: Url,
    resource_manager: Url,
    subscription_id: String,
    /// The orchestrator's identity: every Resource Manager call, and install scripts' tokens when no
    /// onboarding identity is configured.
    identity: Identity,
    /// `[azure.onboarding]`: the only identity whose tokens go into install scripts, when configured.
    onboarding: Option<Identity>,
    counter: ApiCounter,
    /// Resource Graph's refusal, once seen: later queries fail with it at once (warned once).
    graph_denied: Mutex<Option<AzureError>>,
}

/// One Entra identity: who it is, how it proves it, and its cached token.
struct Identity {
    tenant_id: String,
    client_id: Option<String>,
    credential: Arc<Credential>,
    /// The last token and when it expires.
    cached: Mutex<Option<(Secret, Instant)>>,
}

impl Identity {
    /// The same identity with an empty token cache.
    fn fresh(&self) -> Identity {
        Identity {
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            credential: self.credential.clone(),
            cached: Mutex::new(None),
        }
    }
}

#[derive(Deserialize, Default)]
struct ArmErrorBody {
    #[serde(default)]
    error: ArmErrorDetail,
}

#[derive(Deserialize, Default)]
struct ArmErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct MachineBody {
    name: String,
    #[serde(default)]
    properties: MachineProperties,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MachineProperties {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error_details: Vec<ArmErrorDetail>,
    #[serde(default)]
    agent_version: Option<String>,
    #[serde(default)]
    last_status_change: Option<String>,
    #[serde(default)]
    detected_properties: std::collections::HashMap<String, serde_json::Value>,
}

/// ARM's timestamps: RFC 3339 with up to 7 fractional digits, `Z` or `+00:00`.
fn arm_time(s: &str) -> Option<std::time::SystemTime> {
    let utc = s
        .strip_suffix("+00:00")
        .map_or_else(|| s.to_string(), |t| format!("{t}Z"));
    humantime::parse_rfc3339_weak(utc.trim_end_matches('Z')).ok()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MachineList {
    #[serde(default)]
    value: Vec<MachineBody>,
    next_link: Option<String>,
}

impl From<MachineBody> for ArcMachine {
    fn from(m: MachineBody) -> ArcMachine {
        ArcMachine {
            name: m.name,
            status: ArcStatus::parse(m.properties.status.as_deref().unwrap_or("Unknown")),
            errors: m
                .properties
                .error_details
                .into_iter()
                .map(|e| format!("{}: {}", e.code, e.message))
                .collect(),
            agent_version: m.properties.agent_version.filter(|v| !v.is_empty()),
            tags: m.tags.unwrap_or_default(),
            last_status_change: m
                .properties
                .last_status_change
                .as_deref()
                .and_then(arm_time),
            detected_instance_id: m
                .properties
                .detected_properties
                .get("AWS-instanceId")
                .and_then(|v| v.as_str())
                .filter(|id| !id.is_empty())
                .map(str::to_string),
        }
    }
}

/// Joins a base URL and a path without losing the base's own path.
fn join(base: &Url, path: &str) -> String {
    format!(
        "{}/{}",
        base.as_str().trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

impl RestArm {
    /// Builds the adapter with a loaded credential. Fails when the machine's TLS setup does not let an
    /// HTTPS client be built.
    pub fn new(
        config: &AzureConfig,
        credential: Credential,
        counter: ApiCounter,
    ) -> Result<RestArm, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("arc-onboard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError)?;
        Ok(RestArm {
            http,
            authority: config.authority_host.clone(),
            resource_manager: config.resource_manager.clone(),
            subscription_id: config.subscription_id.clone(),
            identity: Identity {
                tenant_id: config.tenant_id.clone(),
                client_id: config.client_id.clone(),
                credential: Arc::new(credential),
                cached: Mutex::new(None),
            },
            onboarding: None,
            counter,
            graph_denied: Mutex::new(None),
        })
    }

    /// The credential the orchestrator's tokens come from.
    pub fn credential(&self) -> &Credential {
        &self.identity.credential
    }

    /// Install scripts' tokens come only from `onboarding` (`[azure.onboarding]`), never from the
    /// orchestrator's credential.
    pub fn with_onboarding_identity(
        mut self,
        onboarding: &crate::config::OnboardingIdentity,
        credential: Credential,
    ) -> RestArm {
        self.onboarding = Some(Identity {
            tenant_id: onboarding.tenant_id.clone(),
            client_id: onboarding.client_id.clone(),
            credential: Arc::new(credential),
            cached: Mutex::new(None),
        });
        self
    }

    /// The onboarding identity's credential, when one is configured.
    pub fn onboarding_credential(&self) -> Option<&Credential> {
        self.onboarding.as_ref().map(|i| &*i.credential)
    }

    /// The same HTTPS client and credential with its own call counter and an empty token cache: one per
    /// daemon pass, so that each pass counts its own calls and asks for a fresh token.
    pub fn for_pass(&self, counter: ApiCounter) -> RestArm {
        RestArm {
            http: self.http.clone(),
            authority: self.authority.clone(),
            resource_manager: self.resource_manager.clone(),
            subscription_id: self.subscription_id.clone(),
            identity: self.identity.fresh(),
            onboarding: self.onboarding.as_ref().map(Identity::fresh),
            counter,
            graph_denied: Mutex::new(None),
        }
    }

    fn rg_url(&self, rg: &str) -> String {
        join(
            &self.resource_manager,
            &format!(
                "subscriptions/{}/resourcegroups/{}",
                self.subscription_id,
                urlencode(rg)
            ),
        )
    }

    fn machines_url(&self, rg: &str) -> String {
        join(
            &self.resource_manager,
            &format!(
                "subscriptions/{}/resourceGroups/{}/providers/Microsoft.HybridCompute/machines",
                self.subscription_id,
                urlencode(rg)
            ),
        )
    }

    /// One machine's URL, with its `api-version`.
    fn machine_url(&self, rg: &str, name: &str) -> String {
        format!(
            "{}/{}?api-version={MACHINES_API}",
            self.machines_url(rg),
            urlencode(name)
        )
    }

    async fn send(
        &self,
        operation: &'static str,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, AzureError> {
        self.counter.record(operation);
        req.send().await.map_err(|e| AzureError::Transport {
            operation,
            url: url.split('?').next().unwrap_or(url).to_string(),
            message: e.without_url().to_string(),
        })
    }

    async fn arm_error(operation: &'static str, resp: reqwest::Response) -> AzureError {
        let status = resp.status().as_u16();
        let body: ArmErrorBody = resp.json().await.unwrap_or_default();
        AzureError::Arm {
            operation,
            status,
            code: body.error.code,
            message: body.error.message,
        }
    }

    /// A successful answer's JSON body; one that does not parse is `InvalidResponse`.
    async fn parse<T: serde::de::DeserializeOwned>(
        operation: &'static str,
        resp: reqwest::Response,
    ) -> Result<T, AzureError> {
        resp.json().await.map_err(|e| AzureError::Arm {
            operation,
            status: 200,
            code: "InvalidResponse".into(),
            message: e.without_url().to_string(),
        })
    }

    async fn authed(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, AzureError> {
        let token = self.token().await?;
        Ok(self.http.request(method, url).bearer_auth(token.expose()))
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl RestArm {
    /// `identity`'s cached token when it stays valid for `at_least`, else a new one; with its remaining
    /// validity.
    async fn token_valid_for(
        &self,
        identity: &Identity,
        at_least: Duration,
    ) -> Result<(Secret, Duration), AzureError> {
        if let Some((token, until)) = identity
            .cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let left = until.saturating_duration_since(Instant::now());
            if left > at_least {
                return Ok((token.clone(), left));
            }
        }
        let ctx = TokenContext {
            http: &self.http,
            authority: &self.authority,
            tenant_id: &identity.tenant_id,
            client_id: identity.client_id.as_deref(),
            resource: &self.resource_manager,
            counter: &self.counter,
        };
        let (token, lifetime) = identity.credential.access_token(&ctx).await?;
        *identity.cached.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((token.clone(), Instant::now() + lifetime));
        Ok((token, lifetime))
    }
}

impl Arm for RestArm {
    async fn token(&self) -> Result<Secret, AzureError> {
        Ok(self.token_valid_for(&self.identity, TOKEN_MARGIN).await?.0)
    }

    async fn script_token(&self, at_least: Duration) -> Result<(Secret, Duration), AzureError> {
        let identity = self.onboarding.as_ref().unwrap_or(&self.identity);
        self.token_valid_for(identity, at_least + SCRIPT_TOKEN_MARGIN)
            .await
    }

    async fn resource_group_exists(&self, rg: &str) -> Result<bool, AzureError> {
        let op = "arm:GetResourceGroup";
        let url = format!("{}?api-version={RG_API}", self.rg_url(rg));
        let req = self.authed(reqwest::Method::GET, &url).await?;
        let resp = self.send(op, req, &url).await?;
        match resp.status().as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            _ => Err(Self::arm_error(op, resp).await),
        }
    }

    async fn create_resource_group(
        &self,
        _token: &MutationToken,
        rg: &str,
        location: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), AzureError> {
        let op = "arm:PutResourceGroup";
        let url = format!("{}?api-version={RG_API}", self.rg_url(rg));
        let req = self
            .authed(reqwest::Method::PUT, &url)
            .await?
            .json(&json!({"location": location, "tags": tags}));
        let resp = self.send(op, req, &url).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::arm_error(op, resp).await)
        }
    }

    async fn list_machines(&self, rg: &str) -> Result<Vec<ArcMachine>, AzureError> {
        let op = "arm:ListMachines";
        let mut url = format!("{}?api-version={MACHINES_API}", self.machines_url(rg));
        let mut out = Vec::new();
        loop {
            let req = self.authed(reqwest::Method::GET, &url).await?;
            let resp = self.send(op, req, &url).await?;
            if resp.status().as_u16() == 404 {
                return Ok(Vec::new());
            }
            if !resp.status().is_success() {
                return Err(Self::arm_error(op, resp).await);
            }
            let page: MachineList = Self::parse(op, resp).await?;
            out.extend(page.value.into_iter().map(ArcMachine::from));
            match page.next_link {
                Some(next) if !next.is_empty() => url = next,
                _ => return Ok(out),
            }
        }
    }

    async fn delete_machine(
        &self,
        _token: &MutationToken,
        rg: &str,
        name: &str,
    ) -> Result<(), AzureError> {
        let op = "arm:DeleteMachine";
        let url = self.machine_url(rg, name);
        let req = self.authed(reqwest::Method::DELETE, &url).await?;
        let resp = self.send(op, req, &url).await?;
        match resp.status().as_u16() {
            // 200 deleted, 204 there was nothing to delete, 404 (the group or the machine) likewise.
            200..=299 | 404 => Ok(()),
            _ => Err(Self::arm_error(op, resp).await),
        }
    }

    async fn get_machine(&self, rg: &str, name: &str) -> Result<Option<ArcMachine>, AzureError> {
        let op = "arm:GetMachine";
        let url = self.machine_url(rg, name);
        let req = self.authed(reqwest::Method::GET, &url).await?;
        let resp = self.send(op, req, &url).await?;
        match resp.status().as_u16() {
            200..=299 => {
                let m: MachineBody = Self::parse(op, resp).await?;
                Ok(Some(m.into()))
            }
            404 => Ok(None),
            _ => Err(Self::arm_error(op, resp).await),
        }
    }

    async fn find_machines(
        &self,
        instance_ids: &[String],
    ) -> Result<Vec<GraphMachine>, AzureError> {
        self.graph_machines(instance_ids).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "<redacted>");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn urls_keep_the_base_path_and_encode_names() {
        let base = Url::parse("http://127.0.0.1:9/arm/").unwrap();
        assert_eq!(
            join(&base, "/subscriptions/x"),
            "http://127.0.0.1:9/arm/subscriptions/x"
        );
        assert_eq!(urlencode("rg (prod)"), "rg%20%28prod%29");
    }

    #[test]
    fn a_machine_carries_its_last_status_change_and_the_instance_its_agent_reports() {
        let body: MachineBody = serde_json::from_value(serde_json::json!({
            "name": "i-0origin",
            "properties": {
                "status": "Expired",
                "lastStatusChange": "2026-01-02T03:04:05.1234567Z",
                "detectedProperties": {"cloudprovider": "AWS", "AWS-instanceId": "i-0clone"}
            }
        }))
        .unwrap();
        let m = ArcMachine::from(body);
        assert_eq!(m.status, ArcStatus::Expired);
        assert_eq!(m.detected_instance_id.as_deref(), Some("i-0clone"));
        let at = humantime::format_rfc3339_seconds(m.last_status_change.unwrap()).to_string();
        assert_eq!(at, "2026-01-02T03:04:05Z");
        assert_eq!(
            arm_time("2026-01-02T03:04:05+00:00"),
            arm_time("2026-01-02T03:04:05Z")
        );
        assert!(arm_time("2026-01-02T03:04:05Z").is_some());
        assert_eq!(arm_time("yesterday"), None);
        let bare: MachineBody =
            serde_json::from_value(serde_json::json!({"name": "i-1", "properties": {}})).unwrap();
        let bare = ArcMachine::from(bare);
        assert_eq!(
            (bare.last_status_change, bare.detected_instance_id),
            (None, None)
        );
    }
}
