//! Stateful in-memory fakes of the AWS ports, for pass tests: mutations show up in the next observation,
//! errors can be injected per operation and instance, role, profile or region, and every call is counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::config::SSM_POLICY_ARN;
use crate::model::{
    AwsError, CommandStatus, Ec2Instance, InstanceFate, InstanceProfile, InstanceState, PingStatus,
    Platform, ProfileAssociation, Role, SsmInstance, TagSelector,
};
use std::sync::Arc;

pub mod accounts;
mod arm;
pub mod memory;

pub use memory::FakeMemory;

use crate::ports::{
    ApiCounter, CommandRequest, CommandSummary, Ec2, Iam, Invocation, MutationToken, Ssm, Sts,
};
pub use arm::FakeArm;

/// A clock that stands still until set or advanced (the core reads time only through
/// [`crate::ports::clock::ClockPort`]).
#[derive(Debug)]
pub struct FakeClock(Mutex<std::time::SystemTime>);

impl FakeClock {
    /// A clock showing `at`.
    pub fn at(at: std::time::SystemTime) -> Arc<FakeClock> {
        Arc::new(FakeClock(Mutex::new(at)))
    }

    /// Shows `at` from now on.
    pub fn set(&self, at: std::time::SystemTime) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    /// Moves the clock on by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += by;
    }

    /// The port showing this clock.
    pub fn port(self: &Arc<Self>) -> crate::ports::clock::ClockPort {
        crate::ports::clock::ClockPort(self.clone())
    }
}

impl crate::ports::clock::Clock for FakeClock {
    fn now(&self) -> std::time::SystemTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The account id the fake reports.
pub const FAKE_ACCOUNT: &str = "123456789012";

/// One fake instance.
#[derive(Debug, Clone)]
pub struct FakeInstance {
    /// What EC2 reports.
    pub ec2: Ec2Instance,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct State {
    regions: Vec<String>,
    instances: BTreeMap<String, Vec<FakeInstance>>,
    profiles: BTreeMap<String, InstanceProfile>,
    roles: BTreeMap<String, (Role, Vec<String>)>,
    failures: HashMap<(String, String), AwsError>,
    next_association: u64,
    commands: Vec<FakeCommand>,
    outcomes: HashMap<String, Invocation>,
    hidden_invocation_lists: u32,
    arm: Option<(Arc<FakeArm>, String)>,
    /// The account id `sts:GetCallerIdentity` answers (default [`FAKE_ACCOUNT`]).
    account_id: Option<String>,
    /// Regions where Default Host Management Configuration is on, with its role.
    dhmc: BTreeMap<String, String>,
    /// The `since` of every `ssm:ListCommands` asked, in order: (region, since).
    listed_since: Vec<(String, std::time::SystemTime)>,
}

/// A command the fake accepted.
#[derive(Debug, Clone)]
pub struct FakeCommand {
    /// Region.
    pub region: String,
    /// Id.
    pub command_id: String,
    /// The request as sent.
    pub request: CommandRequest,
}

impl FakeCommand {
    /// Whether this is a batch's key exchange (the first of its two commands).
    pub fn is_key_exchange(&self) -> bool {
        script_value(&self.request.script, "ARC_MODE").as_deref() == Some("key-exchange")
    }

    /// The value the command's script assigns to `name` (`ARC_INSTALLER_URL`, ...), when it holds no quote.
    pub fn script_value(&self, name: &str) -> Option<String> {
        script_value(&self.request.script, name)
    }
}

/// The value a rendered script assigns to `name` (`NAME='v'` or `$NAME = 'v'`; the values the fake reads
/// hold no quote).
fn script_value(script: &str, name: &str) -> Option<String> {
    script.lines().find_map(|l| {
        let rest = l
            .strip_prefix(name)
            .or_else(|| l.strip_prefix('$')?.strip_prefix(name))?;
        let rest = rest.trim_start().strip_prefix('=')?.trim_start();
        Some(rest.strip_prefix('\'')?.strip_suffix('\'')?.to_owned())
    })
}

/// The one key pair every fake instance answers a key exchange with (making one per instance would slow
/// the benchmarks down for nothing a fake can show).
fn fake_public_key() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair as _;
        use base64::Engine;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("an RSA key pair");
        let der = pair.public_key().as_der().expect("its public key");
        base64::engine::general_purpose::STANDARD.encode(der.as_ref())
    })
}

/// What an instance answers a command: a key exchange prints its key line; an install (`ARC_MODE='install'`)
/// whose sealed token has no key for the instance fails as the script would; otherwise the scripted
/// outcome, or success.
fn invocation(s: &State, c: &FakeCommand, id: &str) -> Invocation {
    let ok = |output: String| Invocation {
        instance_id: id.to_owned(),
        status: CommandStatus::Success,
        status_details: "Success".into(),
        response_code: 0,
        output,
    };
    if c.is_key_exchange() {
        let key_id = script_value(&c.request.script, "ARC_KEY_ID").unwrap_or_default();
        return ok(format!(
            "{} {{\"instance_id\":\"{id}\",\"key_id\":\"{key_id}\",\"public_key\":\"{}\"}}",
            crate::install::seal::KEY_MARKER,
            fake_public_key()
        ));
    }
    let install = script_value(&c.request.script, "ARC_MODE").as_deref() == Some("install");
    let sealed_for = script_value(&c.request.script, "ARC_SEALED_KEYS").unwrap_or_default();
    if install
        && !sealed_for
            .split(' ')
            .any(|e| e.split(':').next() == Some(id))
    {
        return Invocation {
            status: CommandStatus::Failed,
            status_details: "Failed".into(),
            response_code: 5,
            ..ok(r#"ARC_ONBOARD_RESULT {"outcome":"failed","exit_code":5,"step":"connect","code":"sealed-token","message":"this command carries no sealed token for this instance"}"#.into())
        };
    }
    s.outcomes.get(id).cloned().unwrap_or_else(|| {
        ok(r#"ARC_ONBOARD_RESULT {"outcome":"connected","exit_code":0,"step":"connect","message":"connected"}"#.into())
    })
}

/// A command's status as `ListCommands` reports it: a key exchange succeeds; for an install, a scripted
/// `InProgress` outcome keeps it running for ever, any other scripted outcome but `Success` fails it, and
/// it succeeds otherwise.
fn summary(s: &State, c: &FakeCommand) -> CommandSummary {
    let outcome = |id: &String| {
        if c.is_key_exchange() {
            None
        } else {
            s.outcomes.get(id).map(|o| &o.status)
        }
    };
    let ids = &c.request.instance_ids;
    let status = if ids
        .iter()
        .any(|id| outcome(id) == Some(&CommandStatus::InProgress))
    {
        CommandStatus::InProgress
    } else if ids
        .iter()
        .any(|id| outcome(id).is_some_and(|o| *o != CommandStatus::Success))
    {
        CommandStatus::Failed
    } else {
        CommandStatus::Success
    };
    CommandSummary {
        command_id: c.command_id.clone(),
        status,
        instance_ids: c.request.instance_ids.clone(),
        comment: c.request.comment.clone(),
    }
}

/// A fake AWS account implementing every AWS port. Clones share the account (state and call counts).
#[derive(Debug, Default, Clone)]
pub struct FakeAws {
    state: Arc<Mutex<State>>,
    /// Every call, by `service:Operation`.
    pub calls: ApiCounter,
}

fn profile_arn(name: &str) -> String {
    format!("arn:aws:iam::{FAKE_ACCOUNT}:instance-profile/{name}")
}

impl FakeAws {
    /// An account with these enabled regions.
    pub fn new(regions: &[&str]) -> FakeAws {
        let fake = FakeAws::default();
        fake.lock().regions = regions.iter().map(|r| r.to_string()).collect();
        fake
    }

    /// The same fake answering as account `id` (for organizations of fakes, [`accounts::FakeAccounts`]).
    pub fn with_account(self, id: &str) -> FakeAws {
        self.lock().account_id = Some(id.to_string());
        self
    }

    /// The `since` of every `ssm:ListCommands` asked so far, in order: (region, since).
    pub fn listed_since(&self) -> Vec<(String, std::time::SystemTime)> {
        self.lock().listed_since.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Scripts the result of the next install on `instance_id` (default: success, agent connected).
    pub fn script_outcome(
        &self,
        instance_id: &str,
        status: &str,
        details: &str,
        code: i32,
        output: &str,
    ) {
        self.lock().outcomes.insert(
            instance_id.into(),
            Invocation {
                instance_id: instance_id.into(),
                status: CommandStatus::parse(status),
                status_details: details.into(),
                response_code: code,
                output: output.into(),
            },
        );
    }

    /// This account as every AWS port of a pass.
    pub fn ports(&self) -> crate::reconcile::pass::AwsPorts<'_, Self, Self, Self, Self> {
        crate::reconcile::pass::AwsPorts {
            sts: self,
            ec2: self,
            iam: self,
            ssm: self,
            counter: &self.calls,
        }
    }

    /// Makes successful installs connect the machine in `arm`, in resource group `rg`.
    pub fn link_arm(&self, arm: Arc<FakeArm>, rg: &str) {
        self.lock().arm = Some((arm, rg.into()));
    }

    /// The next `n` invocation listings come back empty, as SSM's do right after a command ends.
    pub fn hide_invocations(&self, n: u32) {
        self.lock().hidden_invocation_lists = n;
    }

    /// Every install command accepted so far (the second command of each batch).
    pub fn commands(&self) -> Vec<FakeCommand> {
        let s = self.lock();
        s.commands
            .iter()
            .filter(|c| !c.is_key_exchange())
            .cloned()
            .collect()
    }

    /// Every key exchange accepted so far (the first command of each batch).
    pub fn key_exchanges(&self) -> Vec<FakeCommand> {
        let s = self.lock();
        s.commands
            .iter()
            .filter(|c| c.is_key_exchange())
            .cloned()
            .collect()
    }

    /// Adds a role with these attached policies, optionally wrapped in a profile of the given name.
    pub fn add_role(&self, name: &str, policies: &[&str], profile: Option<&str>) {
        let mut s = self.lock();
        let role = Role {
            name: name.into(),
            arn: format!("arn:aws:iam::{FAKE_ACCOUNT}:role/{name}"),
            managed_by_us: false,
        };
        s.roles.insert(
            name.into(),
            (role, policies.iter().map(|p| p.to_string()).collect()),
        );
        if let Some(p) = profile {
            s.profiles.insert(
                p.into(),
                InstanceProfile {
                    name: p.into(),
                    arn: profile_arn(p),
                    roles: vec![name.into()],
                    managed_by_us: false,
                },
            );
        }
    }

    /// Adds a profile that holds no role.
    pub fn add_empty_profile(&self, name: &str) {
        self.lock().profiles.insert(
            name.into(),
            InstanceProfile {
                name: name.into(),
                arn: profile_arn(name),
                roles: vec![],
                managed_by_us: false,
            },
        );
    }

    /// Adds an instance.
    pub fn add_instance(
        &self,
        region: &str,
        id: &str,
        platform: Platform,
        state: InstanceState,
        profile: Option<&str>,
        tags: &[(&str, &str)],
    ) {
        let tags: BTreeMap<String, String> = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.lock()
            .instances
            .entry(region.into())
            .or_default()
            .push(FakeInstance {
                ec2: Ec2Instance {
                    instance_id: id.into(),
                    name: tags.get("Name").cloned(),
                    platform,
                    state,
                    profile_arn: profile.map(profile_arn),
                    sql_server_included: None,
                },
                tags,
            });
    }

    /// Changes an instance's EC2 state; a terminated instance is no longer listed.
    pub fn set_state(&self, id: &str, state: InstanceState) {
        if let Some(i) = self
            .lock()
            .instances
            .values_mut()
            .flatten()
            .find(|i| i.ec2.instance_id == id)
        {
            i.ec2.state = state;
        }
    }

    /// Replaces an instance's tags.
    pub fn set_tags(&self, id: &str, tags: &[(&str, &str)]) {
        if let Some(i) = self
            .lock()
            .instances
            .values_mut()
            .flatten()
            .find(|i| i.ec2.instance_id == id)
        {
            i.tags = tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            i.ec2.name = i.tags.get("Name").cloned();
        }
    }

    /// Makes `operation` fail with `code` whenever it concerns `key` (instance id, role, profile or region).
    pub fn fail(&self, operation: &str, key: &str, code: &str) {
        let e = AwsError::from_code(operation, code, "injected by the fake");
        self.lock()
            .failures
            .insert((operation.into(), key.into()), e);
    }

    fn check(&self, operation: &str, keys: &[&str]) -> Result<(), AwsError> {
        self.calls.record(operation);
        let s = self.lock();
        for k in keys {
            if let Some(e) = s.failures.get(&(operation.to_string(), k.to_string())) {
                return Err(e.clone());
            }
        }
        Ok(())
    }

    /// The profile ARN an instance has now.
    pub fn instance_profile(&self, id: &str) -> Option<String> {
        self.lock()
            .instances
            .values()
            .flatten()
            .find(|i| i.ec2.instance_id == id)
            .and_then(|i| i.ec2.profile_arn.clone())
    }

    /// Policies attached to a role now.
    pub fn role_policies(&self, role: &str) -> Vec<String> {
        self.lock()
            .roles
            .get(role)
            .map(|r| r.1.clone())
            .unwrap_or_default()
    }

    /// A profile as it is now.
    pub fn profile(&self, name: &str) -> Option<InstanceProfile> {
        self.lock().profiles.get(name).cloned()
    }

    /// Turns Default Host Management Configuration on in `region` with `role`: instances there without a
    /// profile register with SSM.
    pub fn enable_dhmc(&self, region: &str, role: &str) {
        self.lock().dhmc.insert(region.into(), role.into());
    }

    fn online(s: &State, i: &FakeInstance) -> bool {
        if i.ec2.state != InstanceState::Running {
            return false;
        }
        let Some(arn) = &i.ec2.profile_arn else {
            return s.instances.iter().any(|(region, list)| {
                s.dhmc.contains_key(region)
                    && list.iter().any(|x| x.ec2.instance_id == i.ec2.instance_id)
            });
        };
        let name = arn.rsplit('/').next().unwrap_or_default();
        s.profiles.get(name).is_some_and(|p| {
            p.roles.iter().any(|r| {
                s.roles
                    .get(r)
                    .is_some_and(|(_, pol)| pol.iter().any(|p| p == SSM_POLICY_ARN))
            })
        })
    }
}

impl Sts for FakeAws {
    async fn account_id(&self) -> Result<String, AwsError> {
        self.check("sts:GetCallerIdentity", &[])?;
        Ok(self
            .lock()
            .account_id
            .clone()
            .unwrap_or_else(|| FAKE_ACCOUNT.into()))
    }
}

impl Ec2 for FakeAws {
    async fn enabled_regions(&self) -> Result<Vec<String>, AwsError> {
        self.check("ec2:DescribeRegions", &[])?;
        Ok(self.lock().regions.clone())
    }

    async fn describe_instances(
        &self,
        region: &str,
        tag: Option<&TagSelector>,
    ) -> Result<Vec<Ec2Instance>, AwsError> {
        self.check("ec2:DescribeInstances", &[region])?;
        let s = self.lock();
        Ok(s.instances
            .get(region)
            .into_iter()
            .flatten()
            .filter(|i| !i.ec2.state.is_gone())
            .filter(|i| {
                tag.is_none_or(|t| t.matches(i.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
            })
            .map(|i| i.ec2.clone())
            .collect())
    }

    async fn describe_instances_by_id(
        &self,
        region: &str,
        instance_ids: &[String],
        tag: Option<&TagSelector>,
    ) -> Result<Vec<Ec2Instance>, AwsError> {
        let all = self.describe_instances(region, tag).await?;
        Ok(all
            .into_iter()
            .filter(|i| instance_ids.contains(&i.instance_id))
            .collect())
    }

    async fn instance_fates(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<Vec<InstanceFate>, AwsError> {
        self.check("ec2:DescribeInstances", &[region])?;
        let s = self.lock();
        Ok(s.instances
            .get(region)
            .into_iter()
            .flatten()
            .filter(|i| instance_ids.contains(&i.ec2.instance_id))
            .map(|i| InstanceFate {
                instance_id: i.ec2.instance_id.clone(),
                state: i.ec2.state,
                changed_at: None,
            })
            .collect())
    }

    async fn profile_associations(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<Vec<ProfileAssociation>, AwsError> {
        self.check("ec2:DescribeIamInstanceProfileAssociations", &[region])?;
        let s = self.lock();
        Ok(s.instances
            .get(region)
            .into_iter()
            .flatten()
            .filter(|i| instance_ids.is_empty() || instance_ids.contains(&i.ec2.instance_id))
            .filter_map(|i| {
                i.ec2.profile_arn.as_ref().map(|arn| ProfileAssociation {
                    association_id: format!("iip-assoc-{}", i.ec2.instance_id),
                    instance_id: i.ec2.instance_id.clone(),
                    profile_arn: arn.clone(),
                    state: "associated".into(),
                })
            })
            .collect())
    }

    async fn associate_instance_profile(
        &self,
        _token: &MutationToken,
        region: &str,
        instance_id: &str,
        profile_name: &str,
    ) -> Result<String, AwsError> {
        let op = "ec2:AssociateIamInstanceProfile";
        self.check(op, &[instance_id, region])?;
        let mut s = self.lock();
        if !s.profiles.contains_key(profile_name) {
            return Err(AwsError::from_code(
                op,
                "InvalidParameterValue",
                "Invalid IAM Instance Profile name",
            ));
        }
        s.next_association += 1;
        let assoc = format!("iip-assoc-{}", s.next_association);
        let inst = s
            .instances
            .get_mut(region)
            .and_then(|list| list.iter_mut().find(|i| i.ec2.instance_id == instance_id))
            .ok_or_else(|| {
                AwsError::from_code(op, "InvalidInstanceID.NotFound", "no such instance")
            })?;
        if inst.ec2.profile_arn.is_some() {
            return Err(AwsError::from_code(
                op,
                "IncorrectState",
                "There is an existing association",
            ));
        }
        inst.ec2.profile_arn = Some(profile_arn(profile_name));
        Ok(assoc)
    }
}

impl Iam for FakeAws {
    async fn get_instance_profile(&self, name: &str) -> Result<Option<InstanceProfile>, AwsError> {
        self.check("iam:GetInstanceProfile", &[name])?;
        Ok(self.lock().profiles.get(name).cloned())
    }

    async fn get_role(&self, name: &str) -> Result<Option<Role>, AwsError> {
        self.check("iam:GetRole", &[name])?;
        Ok(self.lock().roles.get(name).map(|r| r.0.clone()))
    }

    async fn attached_policies(&self, role: &str) -> Result<Vec<String>, AwsError> {
        let op = "iam:ListAttachedRolePolicies";
        self.check(op, &[role])?;
        self.lock()
            .roles
            .get(role)
            .map(|r| r.1.clone())
            .ok_or_else(|| AwsError::from_code(op, "NoSuchEntity", "no such role"))
    }

    async fn create_role(&self, _token: &MutationToken, name: &str) -> Result<Role, AwsError> {
        let op = "iam:CreateRole";
        self.check(op, &[name])?;
        let mut s = self.lock();
        if s.roles.contains_key(name) {
            return Err(AwsError::from_code(
                op,
                "EntityAlreadyExists",
                "role exists",
            ));
        }
        let role = Role {
            name: name.into(),
            arn: format!("arn:aws:iam::{FAKE_ACCOUNT}:role/{name}"),
            managed_by_us: true,
        };
        s.roles.insert(name.into(), (role.clone(), vec![]));
        Ok(role)
    }

    async fn attach_role_policy(
        &self,
        _token: &MutationToken,
        role: &str,
        policy_arn: &str,
    ) -> Result<(), AwsError> {
        let op = "iam:AttachRolePolicy";
        self.check(op, &[role])?;
        let mut s = self.lock();
        let r = s
            .roles
            .get_mut(role)
            .ok_or_else(|| AwsError::from_code(op, "NoSuchEntity", "no such role"))?;
        if !r.1.iter().any(|p| p == policy_arn) {
            r.1.push(policy_arn.into());
        }
        Ok(())
    }

    async fn create_instance_profile(
        &self,
        _token: &MutationToken,
        name: &str,
    ) -> Result<InstanceProfile, AwsError> {
        let op = "iam:CreateInstanceProfile";
        self.check(op, &[name])?;
        let mut s = self.lock();
        if s.profiles.contains_key(name) {
            return Err(AwsError::from_code(
                op,
                "EntityAlreadyExists",
                "profile exists",
            ));
        }
        let p = InstanceProfile {
            name: name.into(),
            arn: profile_arn(name),
            roles: vec![],
            managed_by_us: true,
        };
        s.profiles.insert(name.into(), p.clone());
        Ok(p)
    }

    async fn add_role_to_instance_profile(
        &self,
        _token: &MutationToken,
        profile: &str,
        role: &str,
    ) -> Result<(), AwsError> {
        let op = "iam:AddRoleToInstanceProfile";
        self.check(op, &[profile, role])?;
        let mut s = self.lock();
        let p = s
            .profiles
            .get_mut(profile)
            .ok_or_else(|| AwsError::from_code(op, "NoSuchEntity", "no such profile"))?;
        if !p.roles.is_empty() {
            return Err(AwsError::from_code(
                op,
                "LimitExceeded",
                "Cannot exceed quota for InstanceSessionsPerInstanceProfile: 1",
            ));
        }
        p.roles.push(role.into());
        Ok(())
    }
}

impl Ssm for FakeAws {
    async fn describe_instance_information(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<Vec<SsmInstance>, AwsError> {
        let s = self.lock();
        for _ in instance_ids.chunks(50) {
            self.calls.record("ssm:DescribeInstanceInformation");
        }
        if let Some(e) = s.failures.get(&(
            "ssm:DescribeInstanceInformation".to_string(),
            region.to_string(),
        )) {
            return Err(e.clone());
        }
        Ok(s.instances
            .get(region)
            .into_iter()
            .flatten()
            .filter(|i| instance_ids.contains(&i.ec2.instance_id) && FakeAws::online(&s, i))
            .map(|i| SsmInstance {
                instance_id: i.ec2.instance_id.clone(),
                ping: PingStatus::Online,
                platform_type: Some(
                    if i.ec2.platform == Platform::Windows {
                        "Windows"
                    } else {
                        "Linux"
                    }
                    .into(),
                ),
                agent_version: Some("3.3.0.0".into()),
            })
            .collect())
    }

    async fn send_command(
        &self,
        _token: &MutationToken,
        region: &str,
        request: &CommandRequest,
    ) -> Result<String, AwsError> {
        let op = "ssm:SendCommand";
        self.check(op, &[region])?;
        if request.instance_ids.is_empty() || request.instance_ids.len() > 50 {
            return Err(AwsError::from_code(
                op,
                "ValidationException",
                "InstanceIds must hold 1 to 50 ids",
            ));
        }
        let mut s = self.lock();
        for id in &request.instance_ids {
            let managed = s
                .instances
                .get(region)
                .into_iter()
                .flatten()
                .any(|i| i.ec2.instance_id == *id && FakeAws::online(&s, i));
            if !managed {
                return Err(AwsError::from_code(
                    op,
                    "InvalidInstanceId",
                    "Instances not in a valid state for account",
                ));
            }
        }
        let command_id = format!("cmd-{}", s.commands.len() + 1);
        let command = FakeCommand {
            region: region.into(),
            command_id: command_id.clone(),
            request: request.clone(),
        };
        let install = !command.is_key_exchange();
        s.commands.push(command);
        if let (true, Some((arm, rg))) = (install, s.arm.clone()) {
            for id in &request.instance_ids {
                // The agent connects only when the script did (not when it found another resource).
                let ok = s.outcomes.get(id).is_none_or(|o| {
                    o.status == CommandStatus::Success
                        && !o.output.contains("\"outcome\":\"connected-elsewhere\"")
                });
                if ok {
                    arm.put_machine(&rg, id, "Connected");
                }
            }
        }
        Ok(command_id)
    }

    async fn command_status(
        &self,
        region: &str,
        command_id: &str,
    ) -> Result<Option<CommandSummary>, AwsError> {
        self.check("ssm:ListCommands", &[region])?;
        let s = self.lock();
        Ok(s.commands
            .iter()
            .find(|c| c.command_id == command_id)
            .map(|c| summary(&s, c)))
    }

    async fn default_host_management_role(&self, region: &str) -> Result<Option<String>, AwsError> {
        self.check("ssm:GetServiceSetting", &[region])?;
        Ok(self.lock().dhmc.get(region).cloned())
    }

    async fn recent_commands(
        &self,
        region: &str,
        since: std::time::SystemTime,
        comment_prefix: &str,
    ) -> Result<Vec<CommandSummary>, AwsError> {
        self.check("ssm:ListCommands", &[region])?;
        // Every command of the fake is recent; it lists those whose comment starts with the prefix.
        let mut s = self.lock();
        s.listed_since.push((region.to_string(), since));
        Ok(s.commands
            .iter()
            .filter(|c| c.region == region && c.request.comment.starts_with(comment_prefix))
            .map(|c| summary(&s, c))
            .collect())
    }

    async fn command_invocations(
        &self,
        region: &str,
        command_id: &str,
    ) -> Result<Vec<Invocation>, AwsError> {
        self.check("ssm:ListCommandInvocations", &[region])?;
        let mut s = self.lock();
        if s.hidden_invocation_lists > 0 {
            s.hidden_invocation_lists -= 1;
            return Ok(Vec::new());
        }
        let Some(c) = s.commands.iter().find(|c| c.command_id == command_id) else {
            return Ok(Vec::new());
        };
        Ok(c.request
            .instance_ids
            .iter()
            .map(|id| invocation(&s, c, id))
            .collect())
    }

    async fn invocation_detail(
        &self,
        region: &str,
        command_id: &str,
        instance_id: &str,
    ) -> Result<Option<Invocation>, AwsError> {
        self.check("ssm:GetCommandInvocation", &[region])?;
        let all = self.command_invocations(region, command_id).await?;
        Ok(all.into_iter().find(|i| i.instance_id == instance_id))
    }

    async fn cancel_command(
        &self,
        _token: &MutationToken,
        region: &str,
        _command_id: &str,
    ) -> Result<(), AwsError> {
        self.check("ssm:CancelCommand", &[region])
    }
}

/// A stateful fake SQS queue: messages sent to it are received (each delivery with a fresh receipt handle)
/// and stay invisible until deleted or until [`FakeQueue::expire_visibility`] makes the undeleted ones
/// visible again (as a visibility timeout running out would). The queue can be "deleted" so every call
/// fails.
#[derive(Debug, Default)]
pub struct FakeQueue {
    state: Mutex<QueueState>,
    /// Every call, by `sqs:Operation`.
    pub calls: ApiCounter,
}

#[derive(Debug, Default)]
struct QueueState {
    /// (message id, body, receipt handle of the latest delivery) in send order.
    messages: Vec<(String, String, Option<String>)>,
    next: u64,
    deleted: bool,
}

impl FakeQueue {
    /// Adds a message; returns its id.
    pub fn send(&self, body: &str) -> String {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.next += 1;
        let id = format!("msg-{}", s.next);
        s.messages.push((id.clone(), body.to_string(), None));
        id
    }

    /// Messages not deleted yet.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .messages
            .len()
    }

    /// Whether every message was deleted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes every received and undeleted message visible again.
    pub fn expire_visibility(&self) {
        for m in &mut self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .messages
        {
            m.2 = None;
        }
    }

    /// Deletes the queue: from now on every call fails with `QueueDoesNotExist`.
    pub fn delete_queue(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).deleted = true;
    }
}

impl crate::ports::Queue for FakeQueue {
    async fn receive(
        &self,
        wait: std::time::Duration,
        max: i32,
    ) -> Result<Vec<crate::ports::QueueMessage>, AwsError> {
        self.calls.record("sqs:ReceiveMessage");
        let out: Vec<crate::ports::QueueMessage> = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.deleted {
                return Err(AwsError::from_code(
                    "sqs:ReceiveMessage",
                    "AWS.SimpleQueueService.NonExistentQueue",
                    "The specified queue does not exist.",
                ));
            }
            s.next += 1;
            let delivery = s.next;
            s.messages
                .iter_mut()
                .filter(|(_, _, handle)| handle.is_none())
                .take(max.clamp(1, 10) as usize)
                .map(|(id, body, handle)| {
                    let h = format!("rh-{id}-{delivery}");
                    *handle = Some(h.clone());
                    crate::ports::QueueMessage {
                        message_id: id.clone(),
                        receipt_handle: h,
                        body: body.clone(),
                    }
                })
                .collect()
        };
        if out.is_empty() {
            // Long polling: an empty queue answers after the wait.
            tokio::time::sleep(wait).await;
        }
        Ok(out)
    }

    async fn delete(
        &self,
        _token: &MutationToken,
        receipt_handles: &[String],
    ) -> Result<Vec<String>, AwsError> {
        for _ in receipt_handles.chunks(10) {
            self.calls.record("sqs:DeleteMessageBatch");
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.deleted {
            return Err(AwsError::from_code(
                "sqs:DeleteMessageBatch",
                "AWS.SimpleQueueService.NonExistentQueue",
                "The specified queue does not exist.",
            ));
        }
        s.messages
            .retain(|(_, _, h)| h.as_ref().is_none_or(|h| !receipt_handles.contains(h)));
        Ok(Vec::new())
    }
}
