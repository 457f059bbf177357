//! Real AWS adapters over the official SDK: credential chain, profiles, `AWS_ENDPOINT_URL`, retry and
//! timeout configuration, and an interceptor that counts every HTTP attempt by operation.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ec2::operation::RequestId;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::model::{
    transition_time, AwsError, AwsErrorCause, AwsErrorKind, AwsErrorOrigin, CommandStatus,
    Ec2Instance, InstanceFate, InstanceProfile, InstanceState, PingStatus, Platform,
    ProfileAssociation, Role, SsmInstance, TagSelector,
};
use crate::ports::{
    ApiCounter, CommandRequest, CommandSummary, Ec2, Iam, Invocation, MutationToken, Ssm, Sts,
};

/// Tag key marking IAM resources arc-onboard created, so it can tell them from the customer's.
pub const MANAGED_TAG_KEY: &str = "arc-onboard:managed";
const MANAGED_TAG_VALUE: &str = "true";
/// Default attempts when neither `AWS_MAX_ATTEMPTS` nor `AWS_RETRY_MODE` is set.
pub(crate) const DEFAULT_MAX_ATTEMPTS: u32 = 5;
const EC2_TRUST_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

impl Intercept for ApiCounter {
    fn name(&self) -> &'static str {
        "ApiCounter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(meta) = cfg.load::<Metadata>() {
            self.record(&format!(
                "{}:{}",
                meta.service().to_ascii_lowercase(),
                meta.name()
            ));
        }
        Ok(())
    }

    /// An attempt that got no answer (connection refused, DNS, timeout) is logged, so that the SDK's
    /// retries are visible instead of a silence.
    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(Err(e)) = context.output_or_error() else {
            return Ok(());
        };
        if !(e.is_connector_error() || e.is_timeout_error()) {
            return Ok(());
        }
        let operation = cfg.load::<Metadata>().map_or_else(
            || "aws".to_string(),
            |m| format!("{}:{}", m.service().to_ascii_lowercase(), m.name()),
        );
        let attempt = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
        let endpoint = context
            .request()
            .map(|r| r.uri().to_string())
            .unwrap_or_default();
        tracing::warn!(
            %operation,
            attempt,
            %endpoint,
            "no answer from AWS: {}",
            root_cause(e)
        );
        Ok(())
    }
}

/// The innermost cause of an error (e.g. `Connection refused (os error 111)`): what a person can act on,
/// without the layers of the HTTP stack.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e.to_string();
    let mut next = e.source();
    while let Some(inner) = next {
        cause = inner.to_string();
        next = inner.source();
    }
    cause
}

/// Loads the shared SDK configuration from the standard chain (env, profiles, SSO, web identity, IMDS).
///
/// Retries: standard mode with [`DEFAULT_MAX_ATTEMPTS`] unless `AWS_RETRY_MODE` or `AWS_MAX_ATTEMPTS` is set,
/// in which case aws-config's own resolution applies. Timeouts bound every attempt and every operation.
pub async fn load_sdk_config() -> SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(30))
        .operation_attempt_timeout(Duration::from_secs(30))
        .operation_timeout(Duration::from_secs(120))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
    let env_sets_retry = std::env::var_os("AWS_MAX_ATTEMPTS").is_some()
        || std::env::var_os("AWS_RETRY_MODE").is_some();
    if !env_sets_retry {
        loader =
            loader.retry_config(RetryConfig::standard().with_max_attempts(DEFAULT_MAX_ATTEMPTS));
    }
    loader.load().await
}

/// Region for global services (IAM, STS, DescribeRegions): the SDK's region, else the first configured one.
pub fn home_region(sdk: &SdkConfig, first_configured: Option<&str>) -> String {
    sdk.region()
        .map(|r| r.to_string())
        .or_else(|| first_configured.map(str::to_string))
        .unwrap_or_else(|| "us-east-1".to_string())
}

/// Classifies an SDK error without flattening it to a string: the service's code (its
/// [`ProvideErrorMetadata`]), the request id (the error body's, else the response's header), missing or
/// expired credentials found by type in the error's chain, and the SDK error kept as the cause.
pub(crate) fn aws_error<E, R>(operation: &str, err: SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
    SdkError<E, R>: RequestId,
{
    let request_id = match &err {
        SdkError::ServiceError(service) => service.err().meta().request_id(),
        _ => None,
    }
    .or_else(|| err.request_id())
    .map(str::to_string);
    let mut out = classify(operation, &err);
    out.origin = Some(Box::new(AwsErrorOrigin {
        request_id,
        cause: AwsErrorCause(std::sync::Arc::new(err)),
    }));
    out
}

/// Whether `err` or an error in its chain is the SDK's credentials error (none found, expired, the
/// provider failed).
fn credentials_failed(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<CredentialsError>() {
            return true;
        }
        next = e.source();
    }
    false
}

fn classify<E, R>(operation: &str, err: &SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if !matches!(err, SdkError::ServiceError(_)) && credentials_failed(err) {
        return AwsError {
            operation: operation.to_string(),
            kind: AwsErrorKind::Credentials,
            code: "NoCredentials".to_string(),
            message: DisplayErrorContext(err).to_string(),
            origin: None,
        };
    }
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            AwsError::from_code(
                operation,
                e.code().unwrap_or("Unknown"),
                e.message().unwrap_or(""),
            )
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            let what = match err {
                SdkError::DispatchFailure(d) if d.is_timeout() => "timed out",
                SdkError::DispatchFailure(d) if d.is_io() => "no connection",
                SdkError::DispatchFailure(_) => "not sent",
                SdkError::TimeoutError(_) => "timed out",
                _ => "unreadable answer",
            };
            AwsError {
                operation: operation.to_string(),
                kind: AwsErrorKind::Transport,
                code: "Transport".to_string(),
                // One line a person can act on, not the HTTP stack's debug output.
                message: format!("{what}: {}", root_cause(err)),
                origin: None,
            }
        }
        _ => {
            let message = DisplayErrorContext(err).to_string();
            AwsError {
                operation: operation.to_string(),
                kind: AwsErrorKind::Other,
                code: "Client".to_string(),
                message,
                origin: None,
            }
        }
    }
}

/// The SDK's retry partition of one service in one region of one account.
///
/// The SDK keeps its retry token bucket (and the adaptive mode's rate limiter) in a process-wide map keyed
/// by partition name, and its default name is `{service}-{region}`: every account would then share one
/// bucket per region, and throttling in one account would drain the retry budget of all others. AWS
/// throttles per account and region, so the buckets are keyed the same way when the account is known.
pub fn retry_partition(
    service: &str,
    region: &str,
    account: Option<&str>,
) -> aws_sdk_ec2::config::retry::RetryPartition {
    let name = match account {
        Some(account) => format!("{service}-{region}-{account}"),
        None => format!("{service}-{region}"),
    };
    aws_sdk_ec2::config::retry::RetryPartition::new(name)
}

/// Per-region client cache: one client per region, built once.
struct RegionalClients<C> {
    sdk: SdkConfig,
    counter: ApiCounter,
    /// The account these clients act in, when known: their retry partitions are per account and region.
    account: Option<String>,
    build: fn(&SdkConfig, &str, ApiCounter, Option<&str>) -> C,
    clients: Mutex<HashMap<String, C>>,
}

impl<C: Clone> RegionalClients<C> {
    fn get(&self, region: &str) -> C {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                (self.build)(
                    &self.sdk,
                    region,
                    self.counter.clone(),
                    self.account.as_deref(),
                )
            })
            .clone()
    }
}

/// STS adapter.
pub struct SdkSts {
    client: aws_sdk_sts::Client,
}

impl SdkSts {
    /// Builds the adapter for the home region.
    pub fn new(sdk: &SdkConfig, region: &str, counter: ApiCounter) -> SdkSts {
        SdkSts::for_account(sdk, region, counter, None)
    }

    /// Builds the adapter for the home region of `account` (retry partition per account).
    pub fn for_account(
        sdk: &SdkConfig,
        region: &str,
        counter: ApiCounter,
        account: Option<&str>,
    ) -> SdkSts {
        let conf = aws_sdk_sts::config::Builder::from(sdk)
            .region(Region::new(region.to_string()))
            .retry_partition(retry_partition("sts", region, account))
            .interceptor(counter)
            .build();
        SdkSts {
            client: aws_sdk_sts::Client::from_conf(conf),
        }
    }
}

impl Sts for SdkSts {
    async fn account_id(&self) -> Result<String, AwsError> {
        let out = self
            .client
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| aws_error("sts:GetCallerIdentity", e))?;
        out.account().map(str::to_string).ok_or_else(|| AwsError {
            operation: "sts:GetCallerIdentity".into(),
            kind: AwsErrorKind::Other,
            code: "NoAccount".into(),
            message: "the response carried no account id".into(),
            origin: None,
        })
    }
}

/// The algorithm `sts:GetWebIdentityToken` signs with (the orchestrator policy pins it).
pub const FEDERATION_SIGNING_ALGORITHM: &str = "RS256";

/// Asks STS for a signed JWT that states this process's AWS identity (`sts:GetWebIdentityToken`, AWS IAM
/// outbound identity federation): the `aws-federation` credential's client assertion. Regional endpoint
/// only, as the API requires; the call is counted by the Azure side as `sts:GetWebIdentityToken`.
#[derive(Clone)]
pub struct WebIdentityIssuer {
    client: aws_sdk_sts::Client,
}

impl WebIdentityIssuer {
    /// An issuer in `region` (the home region).
    pub fn new(sdk: &SdkConfig, region: &str) -> WebIdentityIssuer {
        let conf = aws_sdk_sts::config::Builder::from(sdk)
            .region(Region::new(region.to_string()))
            .build();
        WebIdentityIssuer {
            client: aws_sdk_sts::Client::from_conf(conf),
        }
    }

    /// A JWT for `audience`, RS256-signed, valid for `duration_seconds` (60..=3600).
    pub async fn web_identity_token(
        &self,
        audience: &str,
        duration_seconds: i32,
    ) -> Result<crate::adapters::azure::Secret, AwsError> {
        const OP: &str = "sts:GetWebIdentityToken";
        let out = self
            .client
            .get_web_identity_token()
            .audience(audience)
            .signing_algorithm(FEDERATION_SIGNING_ALGORITHM)
            .duration_seconds(duration_seconds)
            .send()
            .await
            .map_err(|e| aws_error(OP, e))?;
        out.web_identity_token
            .filter(|t| !t.is_empty())
            .map(crate::adapters::azure::Secret::new)
            .ok_or_else(|| AwsError {
                operation: OP.into(),
                kind: AwsErrorKind::Other,
                code: "NoToken".into(),
                message: "the response carried no web identity token".into(),
                origin: None,
            })
    }
}

/// EC2 adapter.
pub struct SdkEc2 {
    home_region: String,
    clients: RegionalClients<aws_sdk_ec2::Client>,
}

impl SdkEc2 {
    /// Builds the adapter; `home_region` serves `DescribeRegions`.
    pub fn new(sdk: &SdkConfig, home_region: &str, counter: ApiCounter) -> SdkEc2 {
        SdkEc2::for_account(sdk, home_region, counter, None)
    }

    /// Builds the adapter for `account`: one client, and one retry partition, per account and region.
    pub fn for_account(
        sdk: &SdkConfig,
        home_region: &str,
        counter: ApiCounter,
        account: Option<&str>,
    ) -> SdkEc2 {
        fn build(
            sdk: &SdkConfig,
            region: &str,
            counter: ApiCounter,
            account: Option<&str>,
        ) -> aws_sdk_ec2::Client {
            let conf = aws_sdk_ec2::config::Builder::from(sdk)
                .region(Region::new(region.to_string()))
                .retry_partition(retry_partition("ec2", region, account))
                .interceptor(counter)
                .build();
            aws_sdk_ec2::Client::from_conf(conf)
        }
        SdkEc2 {
            home_region: home_region.to_string(),
            clients: RegionalClients {
                sdk: sdk.clone(),
                counter,
                account: account.map(str::to_string),
                build,
                clients: Mutex::new(HashMap::new()),
            },
        }
    }

    /// `DescribeInstances` in `region`, all pages: every instance, or only `ids` (an `instance-id` filter).
    async fn describe(
        &self,
        region: &str,
        tag: Option<&TagSelector>,
        ids: Option<&[String]>,
    ) -> Result<Vec<Ec2Instance>, AwsError> {
        use aws_sdk_ec2::types::Filter;
        let mut req = self
            .clients
            .get(region)
            .describe_instances()
            .max_results(1000)
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .set_values(Some(
                        ["pending", "running", "stopping", "stopped"]
                            .map(String::from)
                            .to_vec(),
                    ))
                    .build(),
            );
        if let Some(tag) = tag {
            // EC2 compares filter names and values case-sensitively: a case-insensitive selector is sent
            // as a `tag-key` filter that lets every spelling of the key through, and decided below.
            let filter = match &tag.value {
                _ if !tag.case_sensitive => Filter::builder()
                    .name("tag-key")
                    .set_values(Some(tag.key_filter_values())),
                Some(value) => Filter::builder()
                    .name(format!("tag:{}", tag.key))
                    .values(value),
                None => Filter::builder().name("tag-key").values(&tag.key),
            };
            req = req.filters(filter.build());
        }
        if let Some(ids) = ids {
            req = req.filters(
                Filter::builder()
                    .name("instance-id")
                    .set_values(Some(ids.to_vec()))
                    .build(),
            );
        }
        let mut pages = req.into_paginator().send();
        let mut instances = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error("ec2:DescribeInstances", e))?;
            for reservation in page.reservations() {
                for i in reservation.instances() {
                    let state = InstanceState::parse(
                        i.state()
                            .and_then(|s| s.name())
                            .map_or("pending", |n| n.as_str()),
                    );
                    let Some(id) = i.instance_id() else { continue };
                    if state.is_gone() {
                        continue;
                    }
                    let tags = i
                        .tags()
                        .iter()
                        .map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default()));
                    if tag.is_some_and(|t| !t.matches(tags)) {
                        continue;
                    }
                    instances.push(Ec2Instance {
                        instance_id: id.to_string(),
                        name: i
                            .tags()
                            .iter()
                            .find(|t| t.key() == Some("Name"))
                            .and_then(|t| t.value())
                            .map(str::to_string),
                        platform: Platform::from_ec2(
                            i.platform().map(|p| p.as_str()),
                            i.platform_details(),
                            i.architecture().map(|a| a.as_str()),
                        ),
                        state,
                        profile_arn: i
                            .iam_instance_profile()
                            .and_then(|p| p.arn())
                            .map(str::to_string),
                        sql_server_included: crate::model::sql_server_included(
                            i.platform_details(),
                        ),
                    });
                }
            }
        }
        Ok(instances)
    }
}

impl Ec2 for SdkEc2 {
    async fn enabled_regions(&self) -> Result<Vec<String>, AwsError> {
        let out = self
            .clients
            .get(&self.home_region)
            .describe_regions()
            .send()
            .await
            .map_err(|e| aws_error("ec2:DescribeRegions", e))?;
        let mut regions: Vec<String> = out
            .regions()
            .iter()
            .filter(|r| r.opt_in_status().is_none_or(|s| s != "not-opted-in"))
            .filter_map(|r| r.region_name().map(str::to_string))
            .collect();
        regions.sort();
        Ok(regions)
    }

    async fn describe_instances(
        &self,
        region: &str,
        tag: Option<&TagSelector>,
    ) -> Result<Vec<Ec2Instance>, AwsError> {
        self.describe(region, tag, None).await
    }

    async fn describe_instances_by_id(
        &self,
        region: &str,
        instance_ids: &[String],
        tag: Option<&TagSelector>,
    ) -> Result<Vec<Ec2Instance>, AwsError> {
        let mut out = Vec::new();
        // EC2 takes at most 200 values per filter.
        for chunk in instance_ids.chunks(200) {
            out.extend(self.describe(region, tag, Some(chunk)).await?);
        }
        Ok(out)
    }

    async fn instance_fates(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<Vec<InstanceFate>, AwsError> {
        use aws_sdk_ec2::types::Filter;
        let mut out = Vec::new();
        // EC2 takes at most 200 values per filter; a filter (not `InstanceIds`) makes unknown ids absent
        // instead of failing the call.
        for chunk in instance_ids.chunks(200) {
            let mut pages = self
                .clients
                .get(region)
                .describe_instances()
                .filters(
                    Filter::builder()
                        .name("instance-id")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                )
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| aws_error("ec2:DescribeInstances", e))?;
                for i in page.reservations().iter().flat_map(|r| r.instances()) {
                    let Some(id) = i.instance_id() else { continue };
                    out.push(InstanceFate {
                        instance_id: id.to_string(),
                        state: InstanceState::parse(
                            i.state()
                                .and_then(|s| s.name())
                                .map_or("pending", |n| n.as_str()),
                        ),
                        changed_at: i.state_transition_reason().and_then(transition_time),
                    });
                }
            }
        }
        Ok(out)
    }

    async fn profile_associations(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<Vec<ProfileAssociation>, AwsError> {
        let mut req = self
            .clients
            .get(region)
            .describe_iam_instance_profile_associations();
        if instance_ids.is_empty() {
            req = req.max_results(1000);
        } else {
            req = req.filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("instance-id")
                    .set_values(Some(instance_ids.to_vec()))
                    .build(),
            );
        }
        let mut pages = req.into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| aws_error("ec2:DescribeIamInstanceProfileAssociations", e))?;
            for a in page.iam_instance_profile_associations() {
                let state = a.state().map_or("associated", |s| s.as_str());
                if !matches!(state, "associated" | "associating") {
                    continue;
                }
                if let (Some(id), Some(instance), Some(arn)) = (
                    a.association_id(),
                    a.instance_id(),
                    a.iam_instance_profile().and_then(|p| p.arn()),
                ) {
                    out.push(ProfileAssociation {
                        association_id: id.to_string(),
                        instance_id: instance.to_string(),
                        profile_arn: arn.to_string(),
                        state: state.to_string(),
                    });
                }
            }
        }
        Ok(out)
    }

    async fn associate_instance_profile(
        &self,
        _token: &MutationToken,
        region: &str,
        instance_id: &str,
        profile_name: &str,
    ) -> Result<String, AwsError> {
        let spec = aws_sdk_ec2::types::IamInstanceProfileSpecification::builder()
            .name(profile_name)
            .build();
        let out = self
            .clients
            .get(region)
            .associate_iam_instance_profile()
            .instance_id(instance_id)
            .iam_instance_profile(spec)
            .send()
            .await
            .map_err(|e| aws_error("ec2:AssociateIamInstanceProfile", e))?;
        Ok(out
            .iam_instance_profile_association()
            .and_then(|a| a.association_id())
            .unwrap_or_default()
            .to_string())
    }
}

/// IAM adapter.
pub struct SdkIam {
    client: aws_sdk_iam::Client,
}

impl SdkIam {
    /// Builds the adapter (IAM is global; `region` only picks the partition's endpoint).
    pub fn new(sdk: &SdkConfig, region: &str, counter: ApiCounter) -> SdkIam {
        SdkIam::for_account(sdk, region, counter, None)
    }

    /// Builds the adapter for `account` (retry partition per account).
    pub fn for_account(
        sdk: &SdkConfig,
        region: &str,
        counter: ApiCounter,
        account: Option<&str>,
    ) -> SdkIam {
        let conf = aws_sdk_iam::config::Builder::from(sdk)
            .region(Region::new(region.to_string()))
            .retry_partition(retry_partition("iam", "global", account))
            .interceptor(counter)
            .build();
        SdkIam {
            client: aws_sdk_iam::Client::from_conf(conf),
        }
    }

    fn managed_tag() -> aws_sdk_iam::types::Tag {
        aws_sdk_iam::types::Tag::builder()
            .key(MANAGED_TAG_KEY)
            .value(MANAGED_TAG_VALUE)
            .build()
            .expect("key and value are set")
    }
}

fn is_managed(tags: &[aws_sdk_iam::types::Tag]) -> bool {
    tags.iter()
        .any(|t| t.key() == MANAGED_TAG_KEY && t.value() == MANAGED_TAG_VALUE)
}

fn profile_from_sdk(p: &aws_sdk_iam::types::InstanceProfile) -> InstanceProfile {
    InstanceProfile {
        name: p.instance_profile_name().to_string(),
        arn: p.arn().to_string(),
        roles: p
            .roles()
            .iter()
            .map(|r| r.role_name().to_string())
            .collect(),
        managed_by_us: is_managed(p.tags()),
    }
}

fn not_found_is_none<T>(result: Result<T, AwsError>) -> Result<Option<T>, AwsError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind == AwsErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Iam for SdkIam {
    async fn get_instance_profile(&self, name: &str) -> Result<Option<InstanceProfile>, AwsError> {
        let result = self
            .client
            .get_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
            .map_err(|e| aws_error("iam:GetInstanceProfile", e));
        Ok(not_found_is_none(result)?.and_then(|out| out.instance_profile().map(profile_from_sdk)))
    }

    async fn get_role(&self, name: &str) -> Result<Option<Role>, AwsError> {
        let result = self
            .client
            .get_role()
            .role_name(name)
            .send()
            .await
            .map_err(|e| aws_error("iam:GetRole", e));
        Ok(not_found_is_none(result)?.and_then(|out| {
            out.role().map(|r| Role {
                name: r.role_name().to_string(),
                arn: r.arn().to_string(),
                managed_by_us: is_managed(r.tags()),
            })
        }))
    }

    async fn attached_policies(&self, role: &str) -> Result<Vec<String>, AwsError> {
        let mut pages = self
            .client
            .list_attached_role_policies()
            .role_name(role)
            .max_items(1000)
            .into_paginator()
            .send();
        let mut arns = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error("iam:ListAttachedRolePolicies", e))?;
            arns.extend(
                page.attached_policies()
                    .iter()
                    .filter_map(|p| p.policy_arn().map(str::to_string)),
            );
        }
        Ok(arns)
    }

    async fn create_role(&self, _token: &MutationToken, name: &str) -> Result<Role, AwsError> {
        let out = self
            .client
            .create_role()
            .role_name(name)
            .assume_role_policy_document(EC2_TRUST_POLICY)
            .description("SSM instance role for Azure Arc onboarding; created by arc-onboard")
            .tags(Self::managed_tag())
            .send()
            .await
            .map_err(|e| aws_error("iam:CreateRole", e))?;
        let role = out.role();
        Ok(Role {
            name: name.to_string(),
            arn: role.map(|r| r.arn().to_string()).unwrap_or_default(),
            managed_by_us: true,
        })
    }

    async fn attach_role_policy(
        &self,
        _token: &MutationToken,
        role: &str,
        policy_arn: &str,
    ) -> Result<(), AwsError> {
        self.client
            .attach_role_policy()
            .role_name(role)
            .policy_arn(policy_arn)
            .send()
            .await
            .map_err(|e| aws_error("iam:AttachRolePolicy", e))?;
        Ok(())
    }

    async fn create_instance_profile(
        &self,
        _token: &MutationToken,
        name: &str,
    ) -> Result<InstanceProfile, AwsError> {
        let out = self
            .client
            .create_instance_profile()
            .instance_profile_name(name)
            .tags(Self::managed_tag())
            .send()
            .await
            .map_err(|e| aws_error("iam:CreateInstanceProfile", e))?;
        Ok(out
            .instance_profile()
            .map(profile_from_sdk)
            .unwrap_or(InstanceProfile {
                name: name.to_string(),
                arn: String::new(),
                roles: Vec::new(),
                managed_by_us: true,
            }))
    }

    async fn add_role_to_instance_profile(
        &self,
        _token: &MutationToken,
        profile: &str,
        role: &str,
    ) -> Result<(), AwsError> {
        self.client
            .add_role_to_instance_profile()
            .instance_profile_name(profile)
            .role_name(role)
            .send()
            .await
            .map_err(|e| aws_error("iam:AddRoleToInstanceProfile", e))?;
        Ok(())
    }
}

/// SSM adapter.
pub struct SdkSsm {
    clients: RegionalClients<aws_sdk_ssm::Client>,
}

impl SdkSsm {
    /// Builds the adapter.
    pub fn new(sdk: &SdkConfig, counter: ApiCounter) -> SdkSsm {
        SdkSsm::for_account(sdk, counter, None)
    }

    /// Builds the adapter for `account`: one client, and one retry partition, per account and region.
    pub fn for_account(sdk: &SdkConfig, counter: ApiCounter, account: Option<&str>) -> SdkSsm {
        fn build(
            sdk: &SdkConfig,
            region: &str,
            counter: ApiCounter,
            account: Option<&str>,
        ) -> aws_sdk_ssm::Client {
            let conf = aws_sdk_ssm::config::Builder::from(sdk)
                .region(Region::new(region.to_string()))
                .retry_partition(retry_partition("ssm", region, account))
                .interceptor(counter)
                .build();
            aws_sdk_ssm::Client::from_conf(conf)
        }
        SdkSsm {
            clients: RegionalClients {
                sdk: sdk.clone(),
                counter,
                account: account.map(str::to_string),
                build,
                clients: Mutex::new(HashMap::new()),
            },
        }
    }
}

/// `DescribeInstanceInformation` accepts at most 50 results a page; ids go 50 to a call.
const SSM_PAGE: usize = 50;
/// Filtered `DescribeInstanceInformation` queries of one call that run at once (SSM's read bucket allows
/// a burst well above this).
pub(crate) const SSM_QUERIES_AT_ONCE: usize = 8;

impl Ssm for SdkSsm {
    async fn describe_instance_information(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<Vec<SsmInstance>, AwsError> {
        use aws_sdk_ssm::types::InstanceInformationStringFilter;
        use futures::stream::{self, StreamExt, TryStreamExt};
        let client = self.clients.get(region);
        // One filtered query per 50 ids; the queries do not depend on each other, so a few run at once.
        let chunk = |chunk: Vec<String>| {
            let client = client.clone();
            async move {
                let filter = InstanceInformationStringFilter::builder()
                    .key("InstanceIds")
                    .set_values(Some(chunk))
                    .build()
                    .map_err(|e| AwsError {
                        operation: "ssm:DescribeInstanceInformation".into(),
                        kind: AwsErrorKind::Other,
                        code: "Client".into(),
                        message: e.to_string(),
                        origin: None,
                    })?;
                let mut pages = client
                    .describe_instance_information()
                    .filters(filter)
                    .max_results(SSM_PAGE as i32)
                    .into_paginator()
                    .send();
                let mut out = Vec::new();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| aws_error("ssm:DescribeInstanceInformation", e))?;
                    for info in page.instance_information_list() {
                        let (Some(id), Some(ping)) = (
                            info.instance_id(),
                            info.ping_status()
                                .and_then(|p| PingStatus::parse(p.as_str())),
                        ) else {
                            continue;
                        };
                        out.push(SsmInstance {
                            instance_id: id.to_string(),
                            ping,
                            platform_type: info.platform_type().map(|p| p.as_str().to_string()),
                            agent_version: info.agent_version().map(str::to_string),
                        });
                    }
                }
                Ok::<_, AwsError>(out)
            }
        };
        let chunks: Vec<Vec<String>> = instance_ids
            .chunks(SSM_PAGE)
            .map(<[String]>::to_vec)
            .collect();
        let found: Vec<Vec<SsmInstance>> = stream::iter(chunks)
            .map(chunk)
            .buffered(SSM_QUERIES_AT_ONCE)
            .try_collect()
            .await?;
        let out: Vec<SsmInstance> = found.into_iter().flatten().collect();
        Ok(out)
    }

    async fn send_command(
        &self,
        _token: &MutationToken,
        region: &str,
        request: &CommandRequest,
    ) -> Result<String, AwsError> {
        let op = "ssm:SendCommand";
        let out = self
            .clients
            .get(region)
            .send_command()
            .document_name(request.document)
            .set_instance_ids(Some(request.instance_ids.clone()))
            .parameters("commands", vec![request.script.clone()])
            .parameters(
                "executionTimeout",
                vec![request.execution_timeout.as_secs().to_string()],
            )
            .timeout_seconds(request.delivery_timeout.as_secs().clamp(30, 2_592_000) as i32)
            .max_errors("100%")
            .max_concurrency("50")
            .comment(&request.comment)
            .send()
            .await
            .map_err(|e| aws_error(op, e))?;
        out.command()
            .and_then(|c| c.command_id())
            .map(str::to_string)
            .ok_or_else(|| {
                AwsError::from_code(op, "NoCommandId", "SendCommand returned no command id")
            })
    }

    async fn command_status(
        &self,
        region: &str,
        command_id: &str,
    ) -> Result<Option<CommandSummary>, AwsError> {
        let op = "ssm:ListCommands";
        let result = self
            .clients
            .get(region)
            .list_commands()
            .command_id(command_id)
            .send()
            .await
            .map_err(|e| aws_error(op, e));
        Ok(not_found_is_none(result)?.and_then(|out| out.commands().first().map(command_summary)))
    }

    async fn recent_commands(
        &self,
        region: &str,
        since: std::time::SystemTime,
        comment_prefix: &str,
    ) -> Result<Vec<CommandSummary>, AwsError> {
        use aws_sdk_ssm::types::{CommandFilter, CommandFilterKey};
        let op = "ssm:ListCommands";
        let since = aws_smithy_types::DateTime::from(since)
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .map_err(|e| AwsError::from_code(op, "Client", &e.to_string()))?;
        let filter = CommandFilter::builder()
            .key(CommandFilterKey::InvokedAfter)
            .value(since)
            .build()
            .map_err(|e| AwsError::from_code(op, "Client", &e.to_string()))?;
        let mut pages = self
            .clients
            .get(region)
            .list_commands()
            .filters(filter)
            .max_results(50)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(op, e))?;
            out.extend(
                page.commands()
                    .iter()
                    .filter(|c| c.comment().is_some_and(|x| x.starts_with(comment_prefix)))
                    .map(command_summary),
            );
        }
        Ok(out)
    }

    async fn command_invocations(
        &self,
        region: &str,
        command_id: &str,
    ) -> Result<Vec<Invocation>, AwsError> {
        let op = "ssm:ListCommandInvocations";
        let mut pages = self
            .clients
            .get(region)
            .list_command_invocations()
            .command_id(command_id)
            .details(true)
            .max_results(50)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(op, e))?;
            for inv in page.command_invocations() {
                let Some(id) = inv.instance_id() else {
                    continue;
                };
                let plugin = inv.command_plugins().first();
                out.push(Invocation {
                    instance_id: id.to_string(),
                    status: CommandStatus::parse(inv.status().map_or("Pending", |s| s.as_str())),
                    status_details: inv.status_details().unwrap_or_default().to_string(),
                    response_code: plugin.map_or(-1, |p| p.response_code()),
                    output: plugin
                        .and_then(|p| p.output())
                        .unwrap_or_default()
                        .to_string(),
                });
            }
        }
        Ok(out)
    }

    async fn invocation_detail(
        &self,
        region: &str,
        command_id: &str,
        instance_id: &str,
    ) -> Result<Option<Invocation>, AwsError> {
        let op = "ssm:GetCommandInvocation";
        let result = self
            .clients
            .get(region)
            .get_command_invocation()
            .command_id(command_id)
            .instance_id(instance_id)
            .send()
            .await
            .map_err(|e| aws_error(op, e));
        let Some(out) = not_found_is_none(result)? else {
            return Ok(None);
        };
        let mut output = out
            .standard_output_content()
            .unwrap_or_default()
            .to_string();
        if let Some(err) = out.standard_error_content().filter(|e| !e.is_empty()) {
            output.push_str("\n----- stderr -----\n");
            output.push_str(err);
        }
        Ok(Some(Invocation {
            instance_id: instance_id.to_string(),
            status: CommandStatus::parse(out.status().map_or("Pending", |s| s.as_str())),
            status_details: out.status_details().unwrap_or_default().to_string(),
            response_code: out.response_code(),
            output,
        }))
    }

    async fn default_host_management_role(&self, region: &str) -> Result<Option<String>, AwsError> {
        let op = "ssm:GetServiceSetting";
        match self
            .clients
            .get(region)
            .get_service_setting()
            .setting_id(crate::ports::DHMC_SETTING)
            .send()
            .await
        {
            Ok(out) => Ok(crate::ports::dhmc_role(
                out.service_setting().and_then(|s| s.setting_value()),
            )),
            Err(e) => {
                let e = aws_error(op, e);
                if e.code == "ServiceSettingNotFound" {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn cancel_command(
        &self,
        _token: &MutationToken,
        region: &str,
        command_id: &str,
    ) -> Result<(), AwsError> {
        self.clients
            .get(region)
            .cancel_command()
            .command_id(command_id)
            .send()
            .await
            .map_err(|e| aws_error("ssm:CancelCommand", e))?;
        Ok(())
    }
}

fn command_summary(c: &aws_sdk_ssm::types::Command) -> CommandSummary {
    CommandSummary {
        command_id: c.command_id().unwrap_or_default().to_string(),
        status: CommandStatus::parse(c.status().map_or("Pending", |s| s.as_str())),
        instance_ids: c.instance_ids().to_vec(),
        comment: c.comment().unwrap_or_default().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sdk_error_keeps_its_code_request_id_and_cause_and_credentials_are_found_by_type() {
        use aws_smithy_runtime_api::client::result::ConnectorError;
        use aws_smithy_runtime_api::http::{Response, StatusCode};
        use aws_smithy_types::body::SdkBody;
        use aws_smithy_types::error::ErrorMetadata;

        let response = || {
            let mut r = Response::new(StatusCode::try_from(403).unwrap(), SdkBody::empty());
            r.headers_mut().insert("x-amzn-requestid", "req-header-1");
            r
        };
        // EC2 puts the request id in the error body; it wins over the header.
        let meta = ErrorMetadata::builder()
            .code("UnauthorizedOperation")
            .message("You are not authorized")
            .custom("aws_request_id", "req-body-1")
            .build();
        let e = aws_error(
            "ec2:DescribeInstances",
            SdkError::service_error(meta, response()),
        );
        assert_eq!(
            (e.kind, e.code.as_str(), e.message.as_str(), e.request_id()),
            (
                AwsErrorKind::AccessDenied,
                "UnauthorizedOperation",
                "You are not authorized",
                Some("req-body-1")
            )
        );
        let cause = &e.origin.as_ref().expect("the SDK error is kept").cause;
        assert!(cause
            .0
            .downcast_ref::<SdkError<ErrorMetadata, Response>>()
            .is_some());
        // What the error says is unchanged: the request id and the SDK error are fields, not text.
        assert_eq!(
            e.to_string(),
            "ec2:DescribeInstances failed: UnauthorizedOperation: You are not authorized"
        );
        assert!(std::error::Error::source(&e).is_none());

        // Without one in the body, the response header's.
        let meta = ErrorMetadata::builder().code("Throttling").build();
        let e = aws_error(
            "ssm:ListCommands",
            SdkError::service_error(meta, response()),
        );
        assert_eq!(e.kind, AwsErrorKind::Throttled);
        assert_eq!(e.request_id(), Some("req-header-1"));

        // No credentials: found by type in the chain, whatever the words say.
        let err: SdkError<ErrorMetadata, Response> =
            SdkError::dispatch_failure(ConnectorError::other(
                Box::new(CredentialsError::not_loaded("nothing in the chain")),
                None,
            ));
        let e = aws_error("sts:GetCallerIdentity", err);
        assert_eq!(
            (e.kind, e.code.as_str(), e.request_id()),
            (AwsErrorKind::Credentials, "NoCredentials", None)
        );
        // A connection failure whose text mentions credentials is still a transport failure.
        let err: SdkError<ErrorMetadata, Response> = SdkError::dispatch_failure(
            ConnectorError::io("credentials endpoint: connection refused".into()),
        );
        let e = aws_error("sts:GetCallerIdentity", err);
        assert_eq!(
            (e.kind, e.code.as_str()),
            (AwsErrorKind::Transport, "Transport")
        );
    }

    fn sdk() -> SdkConfig {
        SdkConfig::builder()
            .region(Region::new("us-east-1"))
            .behavior_version(BehaviorVersion::latest())
            .build()
    }

    #[test]
    fn clients_of_different_accounts_never_share_a_retry_partition() {
        // The SDK keys its retry token buckets by partition name, process-wide: equal names share one.
        let sdk = sdk();
        let counter = ApiCounter::default();
        let partition = |account: Option<&str>, region: &str| {
            let ec2 = SdkEc2::for_account(&sdk, "us-east-1", counter.clone(), account);
            let ssm = SdkSsm::for_account(&sdk, counter.clone(), account);
            let e = ec2.clients.get(region).config().retry_partition().cloned();
            let s = ssm.clients.get(region).config().retry_partition().cloned();
            (e.unwrap().to_string(), s.unwrap().to_string())
        };
        let a = partition(Some("111111111111"), "eu-west-1");
        assert_eq!(
            a,
            (
                "ec2-eu-west-1-111111111111".to_string(),
                "ssm-eu-west-1-111111111111".to_string()
            )
        );
        assert_ne!(a, partition(Some("222222222222"), "eu-west-1"));
        assert_ne!(a, partition(Some("111111111111"), "us-east-1"));
        assert_eq!(partition(None, "eu-west-1").0, "ec2-eu-west-1");
        let iam = SdkIam::for_account(&sdk, "us-east-1", counter.clone(), Some("111111111111"));
        assert_eq!(
            iam.client.config().retry_partition().unwrap().to_string(),
            "iam-global-111111111111"
        );
    }
}
