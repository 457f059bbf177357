//! Observation: gathers the state of one AWS account through the ports, regions in parallel under a bound,
//! IAM lookups once per distinct profile and role.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt};
use tracing::{debug, info_span, warn, Instrument};

use crate::config::{Config, RegionSelection};
use crate::model::{ArcMachine, AzureError};
use crate::model::{
    AwsError, Ec2Instance, GraphMachine, InstanceProfile, InstanceState, Role, SsmInstance,
    TagSelector,
};
use crate::ports::GRAPH_BATCH;
use crate::ports::{Arm, Ec2, Iam, Ssm};
use crate::reconcile::lifecycle::observe_gone;

/// Every install command's `Comment` starts with this, so in-flight installs of earlier runs can be found.
pub const COMMENT_PREFIX: &str = "arc-onboard";

/// How many regions of one account are observed (and associated) at once: AWS's buckets are per region, so
/// regions do not slow each other; 16 covers the regions most accounts enable in one wave (with 8, a
/// 16-region `plan` took two waves: twice its critical path in the organization benchmark).
pub const REGION_CONCURRENCY: usize = 16;
/// How many IAM lookups run at once (IAM's read quota is account-wide).
const IAM_CONCURRENCY: usize = 8;

/// Result of looking something up that may legitimately not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// It exists.
    Found(T),
    /// It does not exist.
    Missing,
    /// The lookup failed.
    Failed(AwsError),
}

impl<T> Lookup<T> {
    fn from_result(r: Result<Option<T>, AwsError>) -> Lookup<T> {
        match r {
            Ok(Some(v)) => Lookup::Found(v),
            Ok(None) => Lookup::Missing,
            Err(e) => Lookup::Failed(e),
        }
    }

    /// The value when found.
    pub fn found(&self) -> Option<&T> {
        match self {
            Lookup::Found(v) => Some(v),
            _ => None,
        }
    }
}

/// What one pass saw of one account.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountObservation {
    /// 12-digit account id.
    pub account_id: String,
    /// Per region, in the order configured (or sorted for all regions).
    pub regions: Vec<RegionObservation>,
    /// Instance profiles by name: every profile an instance uses, plus the configured SSM profile.
    pub profiles: BTreeMap<String, Lookup<InstanceProfile>>,
    /// Attached policy ARNs by role name: every role in those profiles, plus the SSM role.
    pub role_policies: BTreeMap<String, Lookup<Vec<String>>>,
    /// The configured SSM role.
    pub ssm_role: Lookup<Role>,
    /// What Azure says about the account's Arc machines.
    pub arc: ArcObservation,
    /// Arc machines Azure Resource Graph shows for these instances outside our resource group, by
    /// instance id (see [`observe_elsewhere`]); empty when not asked or not permitted.
    pub elsewhere: HashMap<String, GraphMachine>,
    /// Our Arc machines whose instance is gone, in the regions observed (see
    /// [`crate::reconcile::lifecycle`]).
    pub gone: crate::reconcile::lifecycle::GoneObservation,
}

/// What Azure said about one account's resource group and Arc machines.
#[derive(Debug, Clone, PartialEq)]
pub enum ArcObservation {
    /// No `[azure]` section: Azure is not consulted.
    NotConfigured,
    /// Azure could not be asked (no secret, token refused, ARM error); `plan` says so per instance.
    Unavailable(ArcUnavailable),
    /// Azure answered.
    Checked {
        /// The resource group for this account.
        resource_group: String,
        /// Whether it exists.
        group_exists: bool,
        /// Arc machines in it, by resource name.
        machines: HashMap<String, ArcMachine>,
    },
}

/// Why Azure could not be asked; its `Display` is the text `plan` shows (`Azure not checked: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArcUnavailable {
    /// No Azure credential: the client secret's environment variable is not set.
    #[error("{} is not set", crate::config::CLIENT_SECRET_ENV)]
    NoCredential,
    /// Entra or Resource Manager refused or failed (the ARM code and message are kept).
    #[error(transparent)]
    Azure(#[from] AzureError),
}

/// Asks Azure about the account's resource group and its machines (two calls, whatever the fleet size).
pub async fn observe_arc(arm: &impl Arm, resource_group: &str) -> ArcObservation {
    let group_exists = match arm.resource_group_exists(resource_group).await {
        Ok(exists) => exists,
        Err(e) => return ArcObservation::Unavailable(e.into()),
    };
    let machines = if group_exists {
        match arm.list_machines(resource_group).await {
            Ok(list) => list.into_iter().map(|m| (m.name.clone(), m)).collect(),
            Err(e) => return ArcObservation::Unavailable(e.into()),
        }
    } else {
        HashMap::new()
    };
    ArcObservation::Checked {
        resource_group: resource_group.to_string(),
        group_exists,
        machines,
    }
}

/// How many Resource Graph queries of one account run at once.
const GRAPH_CONCURRENCY: usize = 4;

/// Asks Azure Resource Graph for Arc machines of the observed instances (by name or `InstanceId` tag)
/// outside `resource_group` of `subscription_id`: one query per [`GRAPH_BATCH`] instance ids. Asked only
/// when Azure answered for the account (`obs.arc` is checked). A failed query (a refusal is warned once by
/// the adapter) leaves its instances as they would be without it.
pub async fn observe_elsewhere(
    arm: &impl Arm,
    subscription_id: &str,
    resource_group: &str,
    obs: &AccountObservation,
) -> HashMap<String, GraphMachine> {
    if !matches!(obs.arc, ArcObservation::Checked { .. }) {
        return HashMap::new();
    }
    let ids: Vec<String> = obs
        .regions
        .iter()
        .flat_map(|r| &r.instances)
        .map(|i| i.ec2.instance_id.clone())
        .collect();
    let answers: Vec<(Vec<String>, Result<Vec<GraphMachine>, _>)> =
        stream::iter(ids.chunks(GRAPH_BATCH).map(<[String]>::to_vec))
            .map(|chunk| async move {
                let found = arm.find_machines(&chunk).await;
                (chunk, found)
            })
            .buffer_unordered(GRAPH_CONCURRENCY)
            .collect()
            .await;
    let mut elsewhere = HashMap::new();
    for (chunk, found) in answers {
        let machines = match found {
            Ok(m) => m,
            Err(e) if e.is_denied() => continue,
            Err(e) => {
                warn!(error = %e, "cannot ask Azure Resource Graph; duplicates elsewhere are not detected for these instances");
                continue;
            }
        };
        let mut machines: Vec<GraphMachine> = machines
            .into_iter()
            .filter(|m| {
                !(m.subscription_id.eq_ignore_ascii_case(subscription_id)
                    && m.resource_group.eq_ignore_ascii_case(resource_group))
            })
            .collect();
        machines.sort_by(|a, b| a.id.cmp(&b.id));
        for m in machines {
            let instance = chunk.iter().find(|id| {
                id.eq_ignore_ascii_case(&m.name)
                    || m.instance_id_tag
                        .as_deref()
                        .is_some_and(|t| id.eq_ignore_ascii_case(t))
            });
            if let Some(id) = instance {
                elsewhere.entry(id.clone()).or_insert(m);
            }
        }
    }
    elsewhere
}

/// What one pass saw of one region.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionObservation {
    /// Region name.
    pub region: String,
    /// Instances that passed the filters, terminated ones dropped.
    pub instances: Vec<ObservedInstance>,
    /// Set when the region's instances could not be listed at all.
    pub error: Option<AwsError>,
    /// Set when SSM could not be asked; instances are listed but their SSM state is unknown.
    pub ssm_error: Option<AwsError>,
    /// Instances with an arc-onboard install command still running, and that command's id.
    pub in_flight: HashMap<String, String>,
    /// The role SSM's Default Host Management Configuration gives the region's instances, when it is on
    /// (read only when some instance has no profile; `None` also when it could not be read).
    pub dhmc_role: Option<String>,
}

/// One instance with what SSM knows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedInstance {
    /// From EC2.
    pub ec2: Ec2Instance,
    /// From SSM, when registered.
    pub ssm: Option<SsmInstance>,
}

/// The name of an instance profile from its ARN (`arn:aws:iam::1:instance-profile/path/name`).
pub fn profile_name_from_arn(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// Resolves the regions to scan: the configured list, or every region enabled for the account.
pub async fn resolve_regions(
    ec2: &impl Ec2,
    selection: &RegionSelection,
) -> Result<Vec<String>, AwsError> {
    match selection {
        RegionSelection::List(list) => Ok(list.clone()),
        RegionSelection::AllEnabled => ec2.enabled_regions().await,
    }
}

/// How far back observation looks for install commands that may still run: those sent at or after
/// `since` (computed from the pass's clock, never from the wall clock here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlightWindow {
    /// The earliest time an install command that may still run was sent.
    pub since: SystemTime,
}

impl InFlightWindow {
    /// The `span` before `now` (the epoch when `span` reaches before it).
    pub fn ending_at(now: SystemTime, span: Duration) -> InFlightWindow {
        InFlightWindow {
            since: now.checked_sub(span).unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }
}

/// Observes one account's AWS side. `in_flight_window`: how far back to look for install commands that may
/// still run (the longest an install can take); `arc` is what Azure said, observed separately.
pub async fn observe_account(
    account_id: &str,
    regions: &[String],
    config: &Config,
    (ec2, iam, ssm): (&impl Ec2, &impl Iam, &impl Ssm),
    in_flight_window: InFlightWindow,
    arc: ArcObservation,
) -> AccountObservation {
    let tag = config.aws.tag_filter.clone();
    let mut by_region: HashMap<String, RegionObservation> = stream::iter(regions.iter().cloned())
        .map(|region| {
            let span = info_span!("observe_region", account = %account_id, region = %region);
            observe_region(region, tag.clone(), ec2, ssm, in_flight_window).instrument(span)
        })
        .buffer_unordered(REGION_CONCURRENCY)
        .map(|r| (r.region.clone(), r))
        .collect()
        .await;
    let regions: Vec<RegionObservation> =
        regions.iter().filter_map(|r| by_region.remove(r)).collect();
    let gone = observe_gone(account_id, &regions, &arc, ec2, None).await;
    let mut obs = with_iam(account_id, regions, config, iam, arc).await;
    obs.gone = gone;
    obs
}

/// Observes just these instances of one region (the event path): `DescribeInstances` by id with the tag
/// filter, then the same profile, SSM, in-flight and IAM lookups as [`observe_account`]. An id the tag
/// filter excludes, or that does not exist, is simply absent.
pub async fn observe_instances(
    account_id: &str,
    region: &str,
    instance_ids: &[String],
    config: &Config,
    (ec2, iam, ssm): (&impl Ec2, &impl Iam, &impl Ssm),
    in_flight_window: InFlightWindow,
    arc: ArcObservation,
) -> AccountObservation {
    let tag = config.aws.tag_filter.as_ref();
    let span = info_span!("observe_instances", account = %account_id, region = %region);
    let observed = async {
        match ec2
            .describe_instances_by_id(region, instance_ids, tag)
            .await
        {
            Ok(list) => {
                let ids: Vec<String> = list.iter().map(|i| i.instance_id.clone()).collect();
                complete_region(region.to_string(), list, ec2, ssm, in_flight_window, &ids).await
            }
            Err(error) => {
                warn!(error = %error, "cannot describe the instances");
                RegionObservation {
                    region: region.to_string(),
                    instances: Vec::new(),
                    error: Some(error),
                    ssm_error: None,
                    in_flight: HashMap::new(),
                    dhmc_role: None,
                }
            }
        }
    }
    .instrument(span)
    .await;
    let regions = vec![observed];
    let gone = observe_gone(account_id, &regions, &arc, ec2, Some(instance_ids)).await;
    let mut obs = with_iam(account_id, regions, config, iam, arc).await;
    obs.gone = gone;
    obs
}

/// The account's observation from its regions': adds the IAM lookups those regions' instances need.
async fn with_iam(
    account_id: &str,
    regions: Vec<RegionObservation>,
    config: &Config,
    iam: &impl Iam,
    arc: ArcObservation,
) -> AccountObservation {
    let (profiles, role_policies, ssm_role) = observe_iam(&regions, config, iam).await;
    AccountObservation {
        account_id: account_id.to_string(),
        regions,
        profiles,
        role_policies,
        ssm_role,
        arc,
        elsewhere: HashMap::new(),
        gone: Default::default(),
    }
}

/// Profile, role and policy lookups for every profile the observed instances use plus the SSM role's.
async fn observe_iam(
    regions: &[RegionObservation],
    config: &Config,
    iam: &impl Iam,
) -> (
    BTreeMap<String, Lookup<InstanceProfile>>,
    BTreeMap<String, Lookup<Vec<String>>>,
    Lookup<Role>,
) {
    let mut profile_names: BTreeSet<String> = regions
        .iter()
        .flat_map(|r| &r.instances)
        .filter_map(|i| i.ec2.profile_arn.as_deref())
        .map(|arn| profile_name_from_arn(arn).to_string())
        .collect();
    profile_names.insert(config.iam.instance_profile_name.clone());
    let profiles = stream::iter(profile_names)
        .map(|name| async move {
            let lookup = Lookup::from_result(iam.get_instance_profile(&name).await);
            (name, lookup)
        })
        .buffer_unordered(IAM_CONCURRENCY)
        .collect::<BTreeMap<String, Lookup<InstanceProfile>>>();
    // The SSM role's lookup does not wait for the profiles'.
    let ssm_role = async { Lookup::from_result(iam.get_role(&config.iam.role_name).await) };
    let (profiles, ssm_role) = tokio::join!(profiles, ssm_role);
    let mut role_names: BTreeSet<String> = profiles
        .values()
        .filter_map(Lookup::found)
        .flat_map(|p| p.roles.iter().cloned())
        .collect();
    if ssm_role.found().is_some() {
        role_names.insert(config.iam.role_name.clone());
    }
    let role_policies: BTreeMap<String, Lookup<Vec<String>>> = stream::iter(role_names)
        .map(|name| async move {
            let lookup = match iam.attached_policies(&name).await {
                Ok(p) => Lookup::Found(p),
                Err(e) => Lookup::Failed(e),
            };
            (name, lookup)
        })
        .buffer_unordered(IAM_CONCURRENCY)
        .collect()
        .await;

    (profiles, role_policies, ssm_role)
}

async fn observe_region(
    region: String,
    tag: Option<TagSelector>,
    ec2: &impl Ec2,
    ssm: &impl Ssm,
    in_flight_window: InFlightWindow,
) -> RegionObservation {
    let instances = match ec2.describe_instances(&region, tag.as_ref()).await {
        Ok(list) => list,
        Err(error) => {
            warn!(error = %error, "cannot list instances");
            return RegionObservation {
                region,
                instances: Vec::new(),
                error: Some(error),
                ssm_error: None,
                in_flight: HashMap::new(),
                dhmc_role: None,
            };
        }
    };
    complete_region(region, instances, ec2, ssm, in_flight_window, &[]).await
}

/// Completes a region's observation from its listed instances: profile associations (of `association_ids`,
/// or all when empty), SSM registration of the running ones, and install commands still in flight.
async fn complete_region(
    region: String,
    mut instances: Vec<Ec2Instance>,
    ec2: &impl Ec2,
    ssm: &impl Ssm,
    in_flight_window: InFlightWindow,
    association_ids: &[String],
) -> RegionObservation {
    instances.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let running: Vec<String> = instances
        .iter()
        .filter(|i| i.state == InstanceState::Running)
        .map(|i| i.instance_id.clone())
        .collect();
    // The three lookups depend only on the listing: ask them at once.
    let any = !instances.is_empty();
    let associations = async {
        if any {
            Some(ec2.profile_associations(&region, association_ids).await)
        } else {
            None
        }
    };
    let registrations = async {
        if running.is_empty() {
            None
        } else {
            Some(ssm.describe_instance_information(&region, &running).await)
        }
    };
    let recent = async {
        if running.is_empty() {
            return None;
        }
        let since = in_flight_window.since;
        Some(ssm.recent_commands(&region, since, COMMENT_PREFIX).await)
    };
    // Default Host Management Configuration matters only to instances without a profile.
    let bare = instances.iter().any(|i| i.profile_arn.is_none());
    let dhmc = async {
        if !bare {
            return None;
        }
        match ssm.default_host_management_role(&region).await {
            Ok(role) => role,
            Err(error) => {
                warn!(error = %error, "cannot read SSM's Default Host Management Configuration; instances without a profile get one as usual");
                None
            }
        }
    };
    let (associations, registrations, recent, dhmc_role) =
        tokio::join!(associations, registrations, recent, dhmc);
    match associations {
        // Associations are authoritative for profiles still being associated; the instance field can lag.
        Some(Ok(associations)) => {
            let by_instance: HashMap<&str, &str> = associations
                .iter()
                .map(|a| (a.instance_id.as_str(), a.profile_arn.as_str()))
                .collect();
            for i in &mut instances {
                if let Some(arn) = by_instance.get(i.instance_id.as_str()) {
                    i.profile_arn = Some((*arn).to_string());
                }
            }
        }
        Some(Err(error)) => {
            warn!(error = %error, "cannot list profile associations; using the instances' own profile field")
        }
        None => {}
    }
    let (mut ssm_by_id, ssm_error): (HashMap<String, SsmInstance>, _) = match registrations {
        None => (HashMap::new(), None),
        Some(Ok(list)) => (
            list.into_iter()
                .map(|s| (s.instance_id.clone(), s))
                .collect(),
            None,
        ),
        Some(Err(error)) => {
            warn!(error = %error, "cannot read SSM instance information");
            (HashMap::new(), Some(error))
        }
    };
    let in_flight: HashMap<String, String> = match recent {
        None => HashMap::new(),
        Some(Ok(commands)) => commands
            .into_iter()
            .filter(|c| !c.is_done())
            .flat_map(|c| {
                c.instance_ids
                    .into_iter()
                    .map(move |i| (i, c.command_id.clone()))
            })
            .collect(),
        Some(Err(error)) => {
            warn!(error = %error, "cannot list recent commands; installs in flight from earlier runs are not detected");
            HashMap::new()
        }
    };
    debug!(
        instances = instances.len(),
        managed = ssm_by_id.len(),
        "region observed"
    );
    RegionObservation {
        region,
        instances: instances
            .into_iter()
            .map(|ec2| ObservedInstance {
                ssm: ssm_by_id.remove(&ec2.instance_id),
                ec2,
            })
            .collect(),
        error: None,
        ssm_error,
        in_flight,
        dhmc_role,
    }
}
