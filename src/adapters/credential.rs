//! Azure credentials: how arc-onboard proves who it is to get an Azure Resource Manager access token.
//!
//! Six kinds, chosen by `[azure] credential` (see [`crate::config::CredentialConfig`]):
//! - `client-secret`: the service principal's secret from `ARC_ONBOARD_CLIENT_SECRET`;
//! - `client-certificate`: a `client_assertion` JWT signed (RS256) with the key of a PEM file, whose
//!   certificate Entra knows by its SHA-256 thumbprint (`x5t#S256`);
//! - `workload-identity`: the Kubernetes service account token of a projected volume, read anew for every
//!   token request (the kubelet rotates it), sent as `client_assertion`;
//! - `aws-federation`: a JWT from `sts:GetWebIdentityToken` (AWS IAM outbound identity federation), signed
//!   by AWS for this process's own AWS identity, sent as `client_assertion`;
//! - `managed-identity`: the token endpoint of an Azure VM (IMDS) or of an Azure Arc-enabled server (HIMDS,
//!   with its challenge file handshake);
//! - `azure-cli`: `az account get-access-token` of someone signed in by hand.
//!
//! Whatever the kind, what comes out is an ARM access token; secrets, keys and assertions never leave this
//! module except in the one request that needs them, and nothing here prints them.
//!
//! [`Credential::load`] checks every local proof (readable and valid certificate, readable token file, `az`
//! on `PATH`, a usable endpoint) so that a bad one stops a command before any AWS call.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Deserialize;
use url::Url;

use crate::adapters::aws::WebIdentityIssuer;
use crate::adapters::azure::{AzureError, Secret};
use crate::config::env::{
    EnvLookup, FEDERATED_TOKEN_FILE_ENV, HIMDS_TOKEN_DIR_ENV, IDENTITY_ENDPOINT_ENV,
    IMDS_ENDPOINT_ENV, POD_IDENTITY_HOST_ENV,
};
use crate::config::{
    AzureConfig, CredentialConfig, OnboardingIdentity, CLIENT_SECRET_ENV,
    ONBOARDING_CLIENT_SECRET_ENV,
};
use crate::ports::ApiCounter;

/// Where the Azure Arc agent (himds) writes its challenge files on Linux.
pub const HIMDS_TOKEN_DIR: &str = "/var/opt/azcmagent/tokens";

const IMDS_DEFAULT_HOST: &str = "http://169.254.169.254";
const MI_TOKEN_PATH: &str = "metadata/identity/oauth2/token";
const IMDS_API_VERSION: &str = "2018-02-01";
const ARC_API_VERSION: &str = "2020-06-01";
/// The Arc agent's endpoint when the agent is installed but the variables are not in this environment.
const ARC_DEFAULT_ENDPOINT: &str = "http://localhost:40342/metadata/identity/oauth2/token";
/// Installed by the Azure Connected Machine agent; its presence means "this is an Arc-enabled server".
const HIMDS_EXECUTABLE: &str = "/opt/azcmagent/bin/himds";
/// Largest challenge file the SDKs accept.
const MAX_CHALLENGE_FILE: u64 = 4096;
/// How long a signed certificate assertion is valid (as MSAL does).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);
/// `DurationSeconds` asked of `sts:GetWebIdentityToken`: used at once, so the shortest allowed.
pub const FEDERATION_TOKEN_SECONDS: i32 = 60;
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long `az account get-access-token` may take.
const AZ_TIMEOUT: Duration = Duration::from_secs(30);

/// A credential that cannot be used: the key (or environment variable) to fix and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct CredentialError {
    /// `azure.client_certificate_path`, `AZURE_FEDERATED_TOKEN_FILE`, ...
    pub key: String,
    /// What is wrong (never a secret).
    pub problem: String,
}

impl CredentialError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> CredentialError {
        CredentialError {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// A loaded credential, ready to request tokens.
pub struct Credential {
    kind: Kind,
}

enum Kind {
    /// The secret and the environment variable it came from.
    ClientSecret(Secret, &'static str),
    Certificate(Box<CertificateKey>),
    WorkloadIdentity {
        token_file: PathBuf,
        /// The key or variable that named the file, for messages.
        source: &'static str,
    },
    AwsFederation {
        audience: String,
        /// Set once the AWS SDK is configured ([`Credential::set_web_identity`]); unset where no AWS call
        /// may be made (`validate`).
        issuer: std::sync::OnceLock<WebIdentityIssuer>,
    },
    ManagedIdentity(ManagedIdentity),
    AzureCli {
        program: PathBuf,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({})", self.describe())
    }
}

/// The private key and certificate of the `client-certificate` credential.
struct CertificateKey {
    /// PKCS#1 RSA private key, for RS256.
    key: jsonwebtoken::EncodingKey,
    /// base64url SHA-256 of the certificate's DER: the `x5t#S256` header.
    x5t_s256: String,
    path: PathBuf,
    subject: String,
    not_after: SystemTime,
}

/// Where a managed identity token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagedIdentity {
    /// An Azure VM's Instance Metadata Service.
    Imds {
        /// The token URL (without query).
        endpoint: Url,
        /// Which variable set it, if any.
        source: Option<&'static str>,
    },
    /// An Azure Arc-enabled server's agent (himds): 401 with a challenge file, then Basic auth.
    Arc {
        /// The token URL (without query).
        endpoint: Url,
        /// Which variable set it, if any.
        source: Option<&'static str>,
        /// The directory the challenge file must be in.
        token_dir: PathBuf,
    },
}

/// What a token request needs besides the credential.
pub(crate) struct TokenContext<'a> {
    /// The HTTPS client for Entra (proxy-aware).
    pub http: &'a reqwest::Client,
    /// Entra authority host.
    pub authority: &'a Url,
    /// Tenant.
    pub tenant_id: &'a str,
    /// Application (client) id; `None` only for a system-assigned managed identity.
    pub client_id: Option<&'a str>,
    /// Resource Manager endpoint (the token's resource).
    pub resource: &'a Url,
    /// Where token requests are counted.
    pub counter: &'a ApiCounter,
}

impl Credential {
    /// Loads the credential `azure.credential` names and checks its local proof. `Ok(None)` only for
    /// `client-secret` without `ARC_ONBOARD_CLIENT_SECRET` (plan can run without Azure).
    pub fn load(
        azure: &AzureConfig,
        env: EnvLookup<'_>,
    ) -> Result<Option<Credential>, CredentialError> {
        if azure.credential == CredentialConfig::ClientSecret && env(CLIENT_SECRET_ENV).is_none() {
            return Ok(None);
        }
        Credential::load_kind(
            &azure.credential,
            azure.client_id.is_some(),
            CLIENT_SECRET_ENV,
            "azure",
            env,
        )
        .map(Some)
    }

    /// Loads the onboarding identity's credential (`[azure.onboarding]`) and checks its local proof. Its
    /// secret comes from [`ONBOARDING_CLIENT_SECRET_ENV`], which must be set when the section is.
    pub fn load_onboarding(
        onboarding: &OnboardingIdentity,
        env: EnvLookup<'_>,
    ) -> Result<Credential, CredentialError> {
        Credential::load_kind(
            &onboarding.credential,
            onboarding.client_id.is_some(),
            ONBOARDING_CLIENT_SECRET_ENV,
            "azure.onboarding",
            env,
        )
    }

    fn load_kind(
        credential: &CredentialConfig,
        has_client_id: bool,
        secret_env: &'static str,
        section: &str,
        env: EnvLookup<'_>,
    ) -> Result<Credential, CredentialError> {
        let kind = match credential {
            CredentialConfig::ClientSecret => match env(secret_env) {
                Some(secret) => Kind::ClientSecret(Secret::new(secret), secret_env),
                None => {
                    return Err(CredentialError::new(
                        secret_env,
                        format!("is not set: [{section}] uses credential = \"client-secret\", whose secret comes only from this environment variable"),
                    ))
                }
            },
            CredentialConfig::ClientCertificate { path } => {
                Kind::Certificate(Box::new(load_certificate(path, SystemTime::now())?))
            }
            CredentialConfig::WorkloadIdentity {
                token_file,
                from_env,
            } => {
                let source = if *from_env {
                    FEDERATED_TOKEN_FILE_ENV
                } else if section == "azure" {
                    "azure.federated_token_file"
                } else {
                    "azure.onboarding.federated_token_file"
                };
                read_token_file(token_file, source)?;
                Kind::WorkloadIdentity {
                    token_file: token_file.clone(),
                    source,
                }
            }
            CredentialConfig::AwsFederation { audience } => Kind::AwsFederation {
                audience: audience.clone(),
                issuer: std::sync::OnceLock::new(),
            },
            CredentialConfig::ManagedIdentity => {
                let mi = ManagedIdentity::detect(env, Path::new(HIMDS_EXECUTABLE).exists())?;
                if matches!(mi, ManagedIdentity::Arc { .. }) && has_client_id {
                    return Err(CredentialError::new(
                        format!("{section}.client_id"),
                        "Azure Arc-enabled servers have only a system-assigned identity; leave client_id out with credential = \"managed-identity\" there",
                    ));
                }
                Kind::ManagedIdentity(mi)
            }
            CredentialConfig::AzureCli => Kind::AzureCli {
                program: find_program("az", env).ok_or_else(|| {
                    CredentialError::new(
                        format!("{section}.credential"),
                        "\"azure-cli\" needs the Azure CLI: `az` is not on PATH",
                    )
                })?,
            },
        };
        Ok(Credential { kind })
    }

    /// Gives an `aws-federation` credential the STS client it asks for its assertions (the first one
    /// given stays).
    pub fn set_web_identity(&self, issuer: WebIdentityIssuer) {
        if let Kind::AwsFederation { issuer: slot, .. } = &self.kind {
            let _ = slot.set(issuer);
        }
    }

    /// Whether this credential needs an STS client ([`Credential::with_web_identity`]).
    pub fn needs_web_identity(&self) -> bool {
        matches!(self.kind, Kind::AwsFederation { .. })
    }

    /// The kind's name as the config file spells it.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            Kind::ClientSecret(..) => "client-secret",
            Kind::Certificate(_) => "client-certificate",
            Kind::WorkloadIdentity { .. } => "workload-identity",
            Kind::AwsFederation { .. } => "aws-federation",
            Kind::ManagedIdentity(_) => "managed-identity",
            Kind::AzureCli { .. } => "azure-cli",
        }
    }

    /// Which credential is in use and where it comes from, never its content.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::ClientSecret(_, var) => {
                format!("client-secret: {var} is set (value redacted)")
            }
            Kind::Certificate(c) => format!(
                "client-certificate from {} (subject {}, x5t#S256 {}, valid until {})",
                c.path.display(),
                c.subject,
                c.x5t_s256,
                crate::model::timestamp(c.not_after)
            ),
            Kind::WorkloadIdentity { token_file, source } => format!(
                "workload-identity: federated token file {} (from {source}), read for every token request",
                token_file.display()
            ),
            Kind::AwsFederation { audience, .. } => format!(
                "aws-federation: sts:GetWebIdentityToken with this process's AWS credentials, audience {audience:?}"
            ),
            Kind::ManagedIdentity(ManagedIdentity::Imds { endpoint, source }) => format!(
                "managed-identity: Azure instance metadata endpoint {endpoint} ({})",
                source.map_or_else(|| "default".to_string(), |s| format!("from {s}"))
            ),
            Kind::ManagedIdentity(ManagedIdentity::Arc {
                endpoint,
                source,
                token_dir,
            }) => format!(
                "managed-identity: Azure Arc agent endpoint {endpoint} ({}), challenge files in {}",
                source.map_or_else(
                    || format!("the agent's default; {HIMDS_EXECUTABLE} exists"),
                    |s| format!("from {s}")
                ),
                token_dir.display()
            ),
            Kind::AzureCli { program } => format!(
                "azure-cli: `{} account get-access-token` of the signed-in user",
                program.display()
            ),
        }
    }

    /// A new Resource Manager access token and how long it is valid.
    pub(crate) async fn access_token(
        &self,
        ctx: &TokenContext<'_>,
    ) -> Result<(Secret, Duration), AzureError> {
        match &self.kind {
            Kind::ClientSecret(secret, _) => {
                entra_token(ctx, &[("client_secret", secret.expose())]).await
            }
            Kind::Certificate(cert) => {
                let assertion = cert.assertion(ctx)?;
                entra_assertion(ctx, &assertion).await
            }
            Kind::WorkloadIdentity { token_file, source } => {
                let assertion =
                    read_token_file(token_file, source).map_err(|e| AzureError::Credential {
                        code: "federated_token_file".into(),
                        message: e.to_string(),
                    })?;
                entra_assertion(ctx, &assertion).await
            }
            Kind::AwsFederation { audience, issuer } => {
                let Some(issuer) = issuer.get() else {
                    return Err(AzureError::Credential {
                        code: "no_sts_client".into(),
                        message: "aws-federation has no STS client here".into(),
                    });
                };
                ctx.counter.record("sts:GetWebIdentityToken");
                let assertion = issuer
                    .web_identity_token(audience, FEDERATION_TOKEN_SECONDS)
                    .await
                    .map_err(|e| AzureError::Credential {
                        code: e.code.clone(),
                        message: format!("{}: {}", e.operation, e.message),
                    })?;
                entra_assertion(ctx, &assertion).await
            }
            Kind::ManagedIdentity(mi) => mi.token(ctx).await,
            Kind::AzureCli { program } => az_token(program, ctx).await,
        }
    }
}

// ----- client-certificate ------------------------------------------------------------------

#[derive(serde::Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

impl CertificateKey {
    /// A fresh client assertion for the token endpoint of `ctx`.
    fn assertion(&self, ctx: &TokenContext<'_>) -> Result<Secret, AzureError> {
        let client_id = ctx.client_id.unwrap_or_default();
        let now = unix_now();
        let aud = token_url(ctx);
        let claims = AssertionClaims {
            aud: &aud,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME.as_secs(),
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.x5t_s256 = Some(self.x5t_s256.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(Secret::new)
            .map_err(|e| AzureError::Credential {
                code: "assertion_signing".into(),
                message: format!("cannot sign the client assertion: {e}"),
            })
    }
}

/// Reads a PEM file holding an RSA private key and its certificate (other certificates of a chain may
/// follow); checks that the certificate is valid at `now` and belongs to the key.
fn load_certificate(path: &Path, now: SystemTime) -> Result<CertificateKey, CredentialError> {
    use rustls_pki_types::pem::{PemObject, SectionKind};
    use x509_cert::der::Decode;

    const KEY: &str = "azure.client_certificate_path";
    let fail =
        |problem: String| CredentialError::new(KEY, format!("{}: {problem}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let mut keys: Vec<(SectionKind, Vec<u8>)> = Vec::new();
    let mut certs: Vec<Vec<u8>> = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
        let (kind, der) = section.map_err(|e| fail(format!("is not a valid PEM file: {e}")))?;
        match kind {
            SectionKind::Certificate => certs.push(der),
            SectionKind::RsaPrivateKey | SectionKind::PrivateKey | SectionKind::EcPrivateKey => {
                keys.push((kind, der))
            }
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    if keys.is_empty() {
        return Err(fail(if text.contains("ENCRYPTED PRIVATE KEY") {
            "holds an encrypted private key; arc-onboard needs it unencrypted (protect the file instead: mode 0600, owned by the service user)".into()
        } else {
            "holds no private key (expected a PEM \"PRIVATE KEY\" or \"RSA PRIVATE KEY\" section with the certificate)".into()
        }));
    }
    if keys.len() > 1 {
        return Err(fail("holds more than one private key".into()));
    }
    if certs.is_empty() {
        return Err(fail(
            "holds a private key but no certificate (append the PEM \"CERTIFICATE\" whose thumbprint is registered in Entra)"
                .into(),
        ));
    }
    let (kind, der) = keys.remove(0);
    let pkcs1 = match kind {
        SectionKind::RsaPrivateKey => der,
        SectionKind::PrivateKey => {
            let info = pkcs8::PrivateKeyInfoRef::from_der(&der)
                .map_err(|e| fail(format!("the private key is not valid PKCS#8: {e}")))?;
            if info.algorithm.oid != RSA_ENCRYPTION {
                return Err(fail(
                    "the private key is not an RSA key (Entra accepts RSA certificates for client assertions)".into(),
                ));
            }
            info.private_key.as_bytes().to_vec()
        }
        _ => return Err(fail(
            "the private key is an EC key; Entra accepts RSA certificates for client assertions"
                .into(),
        )),
    };
    let key = jsonwebtoken::EncodingKey::from_rsa_der(&pkcs1);
    let mut mismatched = Vec::new();
    for der in &certs {
        let cert = x509_cert::Certificate::from_der(der)
            .map_err(|e| fail(format!("holds a certificate that cannot be parsed: {e}")))?;
        let tbs = cert.tbs_certificate();
        let spki = tbs.subject_public_key_info();
        if spki.algorithm.oid != RSA_ENCRYPTION
            || !key_matches(&key, spki.subject_public_key.raw_bytes())
        {
            mismatched.push(tbs.subject().to_string());
            continue;
        }
        let validity = tbs.validity();
        let not_before = UNIX_EPOCH + validity.not_before.to_unix_duration();
        let not_after = UNIX_EPOCH + validity.not_after.to_unix_duration();
        if now > not_after {
            return Err(fail(format!(
                "the certificate (subject {}) expired on {}; renew it and register the new one in Entra",
                tbs.subject(),
                crate::model::timestamp(not_after)
            )));
        }
        if now < not_before {
            return Err(fail(format!(
                "the certificate (subject {}) is not valid before {}",
                tbs.subject(),
                crate::model::timestamp(not_before)
            )));
        }
        let digest = <sha2::Sha256 as sha2::Digest>::digest(der);
        return Ok(CertificateKey {
            key,
            x5t_s256: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest),
            path: path.to_path_buf(),
            subject: tbs.subject().to_string(),
            not_after,
        });
    }
    Err(fail(format!(
        "no certificate in the file belongs to its private key (found: {})",
        mismatched.join("; ")
    )))
}

/// rsaEncryption.
const RSA_ENCRYPTION: pkcs8::ObjectIdentifier =
    pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Whether `key` signs what the PKCS#1 public key `public` verifies (the key belongs to the certificate);
/// an unusable key counts as no match.
fn key_matches(key: &jsonwebtoken::EncodingKey, public: &[u8]) -> bool {
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    let Ok(token) = jsonwebtoken::encode(&header, &serde_json::json!({"probe": 1}), key) else {
        return false;
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_rsa_der(public),
        &validation,
    )
    .is_ok()
}

// ----- workload identity -------------------------------------------------------------------

/// The federated token file's content (trimmed), or why it cannot be used.
fn read_token_file(path: &Path, source: &str) -> Result<Secret, CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CredentialError::new(
            source,
            format!(
                "cannot read the federated token file {}: {e}",
                path.display()
            ),
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CredentialError::new(
            source,
            format!("the federated token file {} is empty", path.display()),
        ));
    }
    Ok(Secret::new(token))
}

// ----- Entra token endpoint ----------------------------------------------------------------

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default, deserialize_with = "number_or_string")]
    expires_in: Option<u64>,
    #[serde(default, deserialize_with = "number_or_string")]
    expires_on: Option<u64>,
}

#[derive(Deserialize, Default)]
struct TokenErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Entra and IMDS send numbers, IMDS and the Arc agent send them as strings.
fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(u64),
        Str(String),
    }
    Ok(match Option::<N>::deserialize(d)? {
        Some(N::Num(n)) => Some(n),
        Some(N::Str(s)) => s.trim().parse().ok(),
        None => None,
    })
}

fn token_url(ctx: &TokenContext<'_>) -> String {
    format!(
        "{}/{}/oauth2/v2.0/token",
        ctx.authority.as_str().trim_end_matches('/'),
        ctx.tenant_id
    )
}

fn scope(ctx: &TokenContext<'_>) -> String {
    format!("{}/.default", ctx.resource.as_str().trim_end_matches('/'))
}

async fn entra_assertion(
    ctx: &TokenContext<'_>,
    assertion: &Secret,
) -> Result<(Secret, Duration), AzureError> {
    entra_token(
        ctx,
        &[
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion.expose()),
        ],
    )
    .await
}

/// The client-credentials grant with the given client authentication fields.
async fn entra_token(
    ctx: &TokenContext<'_>,
    auth: &[(&str, &str)],
) -> Result<(Secret, Duration), AzureError> {
    let url = token_url(ctx);
    let scope = scope(ctx);
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", ctx.client_id.unwrap_or_default()),
        ("scope", scope.as_str()),
    ];
    form.extend_from_slice(auth);
    ctx.counter.record("azure:Token");
    let resp = ctx
        .http
        .post(&url)
        .form(&form)
        .send()
        .await
        .map_err(|e| transport("azure:Token", &url, e))?;
    token_response(resp).await
}

fn transport(operation: &'static str, url: &str, e: reqwest::Error) -> AzureError {
    AzureError::Transport {
        operation,
        url: url.split('?').next().unwrap_or(url).to_string(),
        message: e.without_url().to_string(),
    }
}

/// A token response of Entra or a managed identity endpoint: the token and its lifetime, or the error.
async fn token_response(resp: reqwest::Response) -> Result<(Secret, Duration), AzureError> {
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        let body: TokenErrorBody = resp.json().await.unwrap_or_default();
        return Err(AzureError::Token {
            status,
            code: body.error,
            description: body
                .error_description
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        });
    }
    let body: TokenResponse = resp.json().await.map_err(|e| AzureError::Token {
        status,
        code: "invalid_response".into(),
        description: e.without_url().to_string(),
    })?;
    let lifetime = match (body.expires_in, body.expires_on) {
        (Some(secs), _) => Duration::from_secs(secs),
        (None, Some(on)) => Duration::from_secs(on.saturating_sub(unix_now())),
        (None, None) => Duration::from_secs(3600),
    };
    Ok((Secret::new(body.access_token), lifetime))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

// ----- managed identity --------------------------------------------------------------------

impl ManagedIdentity {
    /// Arc when `IDENTITY_ENDPOINT` and `IMDS_ENDPOINT` are set (as the agent sets them) or the agent is
    /// installed; otherwise the Azure VM metadata endpoint, at `AZURE_POD_IDENTITY_AUTHORITY_HOST` when set.
    pub fn detect(
        env: EnvLookup<'_>,
        agent_installed: bool,
    ) -> Result<ManagedIdentity, CredentialError> {
        let parse = |key: &'static str, value: &str| {
            let url = Url::parse(value)
                .map_err(|e| CredentialError::new(key, format!("{value:?} is not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(CredentialError::new(
                    key,
                    format!("{value:?} must be an http(s) URL"),
                ));
            }
            Ok(url)
        };
        let token_dir =
            PathBuf::from(env(HIMDS_TOKEN_DIR_ENV).unwrap_or_else(|| HIMDS_TOKEN_DIR.to_string()));
        match (env(IDENTITY_ENDPOINT_ENV), env(IMDS_ENDPOINT_ENV)) {
            (Some(endpoint), Some(_)) => Ok(ManagedIdentity::Arc {
                endpoint: parse(IDENTITY_ENDPOINT_ENV, &endpoint)?,
                source: Some(IDENTITY_ENDPOINT_ENV),
                token_dir,
            }),
            _ if agent_installed => Ok(ManagedIdentity::Arc {
                endpoint: Url::parse(ARC_DEFAULT_ENDPOINT).expect("valid"),
                source: None,
                token_dir,
            }),
            _ => {
                let (host, source) = match env(POD_IDENTITY_HOST_ENV) {
                    Some(host) => (host, Some(POD_IDENTITY_HOST_ENV)),
                    None => (IMDS_DEFAULT_HOST.to_string(), None),
                };
                let base = parse(POD_IDENTITY_HOST_ENV, &host)?;
                let endpoint = format!("{}/{MI_TOKEN_PATH}", base.as_str().trim_end_matches('/'));
                Ok(ManagedIdentity::Imds {
                    endpoint: parse(POD_IDENTITY_HOST_ENV, &endpoint)?,
                    source,
                })
            }
        }
    }

    async fn token(&self, ctx: &TokenContext<'_>) -> Result<(Secret, Duration), AzureError> {
        const OP: &str = "azure:ManagedIdentityToken";
        // The endpoints are link-local or loopback: never through a proxy, and quick to answer.
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| AzureError::Credential {
                code: "http_client".into(),
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        let resource = ctx.resource.as_str().trim_end_matches('/');
        match self {
            ManagedIdentity::Imds { endpoint, .. } => {
                let mut url = endpoint.clone();
                url.query_pairs_mut()
                    .append_pair("api-version", IMDS_API_VERSION)
                    .append_pair("resource", resource);
                if let Some(id) = ctx.client_id {
                    url.query_pairs_mut().append_pair("client_id", id);
                }
                ctx.counter.record(OP);
                let resp = http
                    .get(url)
                    .header("Metadata", "true")
                    .send()
                    .await
                    .map_err(|e| transport(OP, endpoint.as_str(), e))?;
                endpoint_refusal(token_response(resp).await, endpoint)
            }
            ManagedIdentity::Arc {
                endpoint,
                token_dir,
                ..
            } => {
                let mut url = endpoint.clone();
                url.query_pairs_mut()
                    .append_pair("api-version", ARC_API_VERSION)
                    .append_pair("resource", resource);
                let request = || http.get(url.clone()).header("Metadata", "true");
                ctx.counter.record(OP);
                let first = request()
                    .send()
                    .await
                    .map_err(|e| transport(OP, endpoint.as_str(), e))?;
                if first.status().as_u16() != 401 {
                    return endpoint_refusal(token_response(first).await, endpoint);
                }
                let challenge = first
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let secret = read_challenge(&challenge, token_dir)?;
                ctx.counter.record(OP);
                let second = request()
                    .header(
                        reqwest::header::AUTHORIZATION,
                        format!("Basic {}", secret.expose()),
                    )
                    .send()
                    .await
                    .map_err(|e| transport(OP, endpoint.as_str(), e))?;
                endpoint_refusal(token_response(second).await, endpoint)
            }
        }
    }
}

/// A managed identity endpoint's refusal says so (not "Entra"), with the endpoint.
fn endpoint_refusal(
    result: Result<(Secret, Duration), AzureError>,
    endpoint: &Url,
) -> Result<(Secret, Duration), AzureError> {
    result.map_err(|e| match e {
        AzureError::Token {
            status,
            code,
            description,
        } => AzureError::Credential {
            code: if code.is_empty() {
                "managed_identity".into()
            } else {
                code
            },
            message: format!(
                "the managed identity endpoint {endpoint} answered HTTP {status}: {description}"
            ),
        },
        other => other,
    })
}

/// The content of the challenge file a `WWW-Authenticate: Basic realm=<path>` header names, after the
/// checks the Azure SDKs make: the file is directly in `token_dir`, ends in `.key`, and is at most 4096
/// bytes.
fn read_challenge(header: &str, token_dir: &Path) -> Result<Secret, AzureError> {
    let fail = |message: String| AzureError::Credential {
        code: "arc_challenge".into(),
        message,
    };
    let Some((_, realm)) = header.split_once('=') else {
        return Err(fail(format!(
            "the Azure Arc agent answered 401 without a challenge file (WWW-Authenticate: {header:?})"
        )));
    };
    let path = Path::new(realm.trim().trim_matches('"'));
    if path.parent() != Some(token_dir) {
        return Err(fail(format!(
            "the Azure Arc agent's challenge file {} is not in {}; refusing to read it",
            path.display(),
            token_dir.display()
        )));
    }
    if path.extension().and_then(|e| e.to_str()) != Some("key") {
        return Err(fail(format!(
            "the Azure Arc agent's challenge file {} does not end in .key; refusing to read it",
            path.display()
        )));
    }
    let size = std::fs::metadata(path)
        .map_err(|e| {
            fail(format!(
                "cannot read the challenge file {}: {e}",
                path.display()
            ))
        })?
        .len();
    if size > MAX_CHALLENGE_FILE {
        return Err(fail(format!(
            "the challenge file {} is larger than {MAX_CHALLENGE_FILE} bytes",
            path.display()
        )));
    }
    std::fs::read_to_string(path)
        .map(|s| Secret::new(s.trim()))
        .map_err(|e| {
            fail(format!(
                "cannot read the challenge file {} (it needs root or the himds group): {e}",
                path.display()
            ))
        })
}

// ----- Azure CLI ---------------------------------------------------------------------------

/// `program` found in one of the directories of `PATH`.
fn find_program(program: &str, env: EnvLookup<'_>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = env("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AzToken {
    access_token: String,
    /// Unix time, Azure CLI 2.54 and later.
    #[serde(default, rename = "expires_on", deserialize_with = "number_or_string")]
    expires_on: Option<u64>,
}

async fn az_token(
    program: &Path,
    ctx: &TokenContext<'_>,
) -> Result<(Secret, Duration), AzureError> {
    let fail = |message: String| AzureError::Credential {
        code: "azure_cli".into(),
        message,
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args([
        "account",
        "get-access-token",
        "--output",
        "json",
        "--resource",
    ])
    .arg(ctx.resource.as_str().trim_end_matches('/'))
    .args(["--tenant", ctx.tenant_id])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    ctx.counter.record("azure:CliToken");
    let output = tokio::task::spawn_blocking(move || run_bounded(cmd, AZ_TIMEOUT))
        .await
        .map_err(|e| fail(format!("az did not finish: {e}")))?
        .map_err(|e| fail(format!("cannot run {}: {e}", "az")))?;
    let Some(output) = output else {
        return Err(fail(format!(
            "`az account get-access-token` did not answer within {}s",
            AZ_TIMEOUT.as_secs()
        )));
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no message");
        return Err(fail(format!(
            "`az account get-access-token` failed ({}): {first} (sign in with `az login`)",
            output.status
        )));
    }
    let token: AzToken = serde_json::from_slice(&output.stdout).map_err(|e| {
        fail(format!(
            "`az account get-access-token` printed no token: {e}"
        ))
    })?;
    let Some(on) = token.expires_on else {
        return Err(fail(
            "`az account get-access-token` gave no expires_on (Azure CLI 2.54 or later needed)"
                .into(),
        ));
    };
    Ok((
        Secret::new(token.access_token),
        Duration::from_secs(on.saturating_sub(unix_now())),
    ))
}

/// Runs `cmd` to completion, killing it after `limit` (`Ok(None)`).
fn run_bounded(
    mut cmd: std::process::Command,
    limit: Duration,
) -> std::io::Result<Option<std::process::Output>> {
    use std::io::Read;
    let mut child = cmd.spawn()?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Some(std::process::Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/credentials")
            .join(name)
    }

    /// SHA-256 thumbprint of the fixtures' certificate (CN=arc-onboard-fixture).
    const FIXTURE_X5T_S256: &str = "nar7d6dmCumwu2djJSddOouxHfEFgfWy5skcfYPtHDk";

    fn load(name: &str) -> Result<CertificateKey, CredentialError> {
        load_certificate(&fixture(name), SystemTime::now())
    }

    #[test]
    fn pkcs8_and_pkcs1_keys_load_with_the_certificate_s_sha256_thumbprint_in_any_order() {
        for name in ["valid-pkcs8.pem", "valid-pkcs1-cert-first.pem"] {
            let c = load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.x5t_s256, FIXTURE_X5T_S256, "{name}");
            assert_eq!(c.subject, "CN=arc-onboard-fixture");
        }
    }

    #[test]
    fn unusable_certificate_files_name_the_key_and_the_reason() {
        for (name, reason) in [
            (
                "mismatched.pem",
                "no certificate in the file belongs to its private key",
            ),
            ("not-yet-valid.pem", "is not valid before 2090-01-01"),
            ("ec-key.pem", "not an RSA key"),
            ("encrypted.pem", "encrypted private key"),
            ("README.md", "holds no private key"),
            ("absent.pem", "cannot read it"),
        ] {
            let err = load(name).err().unwrap_or_else(|| panic!("{name} loaded"));
            assert_eq!(err.key, "azure.client_certificate_path");
            assert!(err.problem.contains(reason), "{name}: {err}");
            assert!(!err.problem.contains("PRIVATE KEY-----"), "{name}: {err}");
        }
        let later = UNIX_EPOCH + Duration::from_secs(4_200_000_000); // 2103
        let err = load_certificate(&fixture("valid-pkcs8.pem"), later)
            .err()
            .unwrap();
        assert!(err.problem.contains("expired on 2099-01-01"), "{err}");
    }

    #[test]
    fn the_assertion_is_rs256_with_the_thumbprint_and_entras_claims() {
        let c = load("valid-pkcs8.pem").unwrap();
        let http = reqwest::Client::new();
        let authority = Url::parse("https://login.example/").unwrap();
        let resource = Url::parse("https://management.example").unwrap();
        let counter = ApiCounter::default();
        let ctx = TokenContext {
            http: &http,
            authority: &authority,
            tenant_id: "t-1",
            client_id: Some("c-1"),
            resource: &resource,
            counter: &counter,
        };
        let jwt = c.assertion(&ctx).unwrap();
        let header = jsonwebtoken::decode_header(jwt.expose()).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        assert_eq!(header.x5t_s256.as_deref(), Some(FIXTURE_X5T_S256));
        let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode(jwt.expose())
            .unwrap()
            .claims;
        assert_eq!(claims["aud"], "https://login.example/t-1/oauth2/v2.0/token");
        assert_eq!(claims["iss"], "c-1");
        assert_eq!(claims["sub"], "c-1");
        let (nbf, exp) = (
            claims["nbf"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert!(exp > nbf && exp - nbf <= 600, "short-lived: {nbf}..{exp}");
        assert_ne!(c.assertion(&ctx).unwrap(), jwt, "a new jti each time");
        assert!(!format!(
            "{:?}",
            Credential {
                kind: Kind::Certificate(Box::new(c))
            }
        )
        .contains("KEY"));
    }

    #[test]
    fn managed_identity_is_arc_where_the_agent_says_so_else_imds() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let arc = env(&[
            (
                "IDENTITY_ENDPOINT",
                "http://localhost:40342/metadata/identity/oauth2/token",
            ),
            ("IMDS_ENDPOINT", "http://localhost:40342"),
        ]);
        assert!(matches!(
            ManagedIdentity::detect(&arc, false).unwrap(),
            ManagedIdentity::Arc { source: Some("IDENTITY_ENDPOINT"), ref token_dir, .. } if token_dir == Path::new(HIMDS_TOKEN_DIR)
        ));
        // IDENTITY_ENDPOINT alone is App Service's, not Arc's; without the agent it is IMDS.
        let only = env(&[("IDENTITY_ENDPOINT", "http://x/")]);
        let imds = ManagedIdentity::detect(&only, false).unwrap();
        assert_eq!(
            imds,
            ManagedIdentity::Imds {
                endpoint: Url::parse("http://169.254.169.254/metadata/identity/oauth2/token")
                    .unwrap(),
                source: None
            }
        );
        assert!(matches!(
            ManagedIdentity::detect(&only, true).unwrap(),
            ManagedIdentity::Arc { source: None, .. }
        ));
        let pod = env(&[("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9/")]);
        assert!(matches!(
            ManagedIdentity::detect(&pod, false).unwrap(),
            ManagedIdentity::Imds { ref endpoint, source: Some(_) } if endpoint.as_str() == "http://127.0.0.1:9/metadata/identity/oauth2/token"
        ));
        let bad = env(&[("AZURE_POD_IDENTITY_AUTHORITY_HOST", "ftp://x")]);
        assert_eq!(
            ManagedIdentity::detect(&bad, false).unwrap_err().key,
            "AZURE_POD_IDENTITY_AUTHORITY_HOST"
        );
    }

    #[test]
    fn a_challenge_file_is_read_only_from_the_agents_directory_as_a_small_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("a.key");
        std::fs::write(&good, "s3cret\n").unwrap();
        let header = format!("Basic realm={}", good.display());
        assert_eq!(
            read_challenge(&header, dir.path()).unwrap().expose(),
            "s3cret"
        );

        let other = tempfile::tempdir().unwrap();
        let outside = other.path().join("a.key");
        std::fs::write(&outside, "x").unwrap();
        let nested = dir.path().join("sub");
        std::fs::create_dir(&nested).unwrap();
        std::fs::write(nested.join("a.key"), "x").unwrap();
        let not_key = dir.path().join("a.txt");
        std::fs::write(&not_key, "x").unwrap();
        let big = dir.path().join("big.key");
        std::fs::write(&big, "x".repeat(5000)).unwrap();
        let traversal = format!("{}/../{}", dir.path().display(), outside.display());
        for (path, reason) in [
            (outside.display().to_string(), "is not in"),
            (nested.join("a.key").display().to_string(), "is not in"),
            (traversal, "is not in"),
            (not_key.display().to_string(), "does not end in .key"),
            (big.display().to_string(), "larger than 4096"),
        ] {
            let err = read_challenge(&format!("Basic realm={path}"), dir.path()).unwrap_err();
            assert!(err.to_string().contains(reason), "{path}: {err}");
        }
        assert!(read_challenge("Basic", dir.path()).is_err());
    }

    #[test]
    fn token_lifetimes_come_as_numbers_or_strings() {
        let entra: TokenResponse =
            serde_json::from_str(r#"{"access_token": "a", "expires_in": 3599}"#).unwrap();
        assert_eq!(entra.expires_in, Some(3599));
        let imds: TokenResponse = serde_json::from_str(
            r#"{"access_token": "a", "expires_in": "86399", "expires_on": "1795924045"}"#,
        )
        .unwrap();
        assert_eq!(
            (imds.expires_in, imds.expires_on),
            (Some(86399), Some(1795924045))
        );
        let az: AzToken = serde_json::from_str(
            r#"{"accessToken": "a", "expiresOn": "2026-01-01 10:00:00.000000", "expires_on": 1795924045}"#,
        )
        .unwrap();
        assert_eq!(az.expires_on, Some(1795924045));
    }

    #[test]
    fn a_hanging_az_is_killed_at_its_limit() {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "sleep 5"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let started = std::time::Instant::now();
        assert!(run_bounded(cmd, Duration::from_millis(200))
            .unwrap()
            .is_none());
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}

#[cfg(test)]
mod token_file_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-connection-at-a-time token endpoint on 127.0.0.1 that answers every request with a token
    /// and hands each request's form body to the test.
    async fn token_endpoint() -> (Url, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&raw).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            let _ = tx.send(body.to_string());
                            break;
                        }
                    }
                }
                let answer = r#"{"access_token": "at", "expires_in": 3600}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            }
        });
        (url, rx)
    }

    fn assertion_of(form: &str) -> String {
        url::form_urlencoded::parse(form.as_bytes())
            .find(|(k, _)| k == "client_assertion")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn the_federated_token_file_is_read_for_every_token_request() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("azure-identity-token");
        std::fs::write(&file, "first-token\n").unwrap();
        let credential = Credential {
            kind: Kind::WorkloadIdentity {
                token_file: file.clone(),
                source: "azure.federated_token_file",
            },
        };
        let (authority, mut forms) = token_endpoint().await;
        let http = reqwest::Client::new();
        let resource = Url::parse("https://management.azure.com/").unwrap();
        let counter = ApiCounter::default();
        let ctx = TokenContext {
            http: &http,
            authority: &authority,
            tenant_id: "t",
            client_id: Some("c"),
            resource: &resource,
            counter: &counter,
        };
        let (token, lifetime) = credential.access_token(&ctx).await.unwrap();
        assert_eq!(
            (token.expose(), lifetime),
            ("at", Duration::from_secs(3600))
        );
        let form = forms.recv().await.unwrap();
        assert_eq!(assertion_of(&form), "first-token");
        assert!(form.contains("client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"));
        assert!(!form.contains("client_secret"));

        // The kubelet rotated it.
        std::fs::write(&file, "second-token").unwrap();
        credential.access_token(&ctx).await.unwrap();
        assert_eq!(assertion_of(&forms.recv().await.unwrap()), "second-token");

        // Gone: the request fails with the file named, and nothing is sent.
        std::fs::remove_file(&file).unwrap();
        let err = credential.access_token(&ctx).await.unwrap_err();
        assert!(err.to_string().contains("azure-identity-token"), "{err}");
        assert!(forms.try_recv().is_err());
    }
}
