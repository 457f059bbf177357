"""Direct access to moto's in-process EC2 and IAM backends.

Seeding, instance state changes and the "is this instance SSM-managed?" question are
answered here by reading and changing moto's models directly, so none of it shows up
in the emulator's call log.

moto 5.2.5 shapes relied on: ``ec2_backends[ACCOUNT][region]`` (one backend per region,
created on first access), ``iam_backends[ACCOUNT]["aws"]`` (one per partition),
``ec2_backend.iam_instance_profile_associations`` (instance id -> association, holding
the ``InstanceProfile`` object), ``InstanceProfile.roles`` and ``Role.managed_policies``
(policy ARN -> policy).

Import this module only after ``MOTO_IAM_LOAD_MANAGED_POLICIES=true`` is set (see
emulator.py): without it moto cannot attach AWS managed policies.
"""

import json
from typing import Any

from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.exceptions import ServiceException
from moto.ec2.models import ec2_backends
from moto.iam.models import iam_backends
from werkzeug.exceptions import HTTPException

ACCOUNT_ID = DEFAULT_ACCOUNT_ID
SSM_CORE_POLICY_ARN = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
PLATFORMS = ("linux", "windows")
STATES = ("running", "stopped", "terminated")

# AMIs from moto's default image list, present in every region.
_AMI_BY_PLATFORM = {"linux": "ami-760aaa0f", "windows": "ami-03cf127a"}
_EC2_TRUST_POLICY = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
})


class FleetError(Exception):
    """A seed or state request that cannot be applied (reported as HTTP 400/404/409)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _moto_message(exc: Exception) -> str:
    return getattr(exc, "message", None) or getattr(exc, "description", None) or str(exc)


def is_account_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 12 and value.isdigit()


def iam(account: str = ACCOUNT_ID) -> Any:
    return iam_backends[account]["aws"]


def ec2(region: str, account: str = ACCOUNT_ID) -> Any:
    return ec2_backends[account][region]


def known_accounts() -> list[str]:
    """Accounts whose EC2 backends exist already (only those can hold instances)."""
    return list(dict.keys(ec2_backends))


def known_regions(account: str = ACCOUNT_ID) -> list[str]:
    """Regions whose EC2 backend exists already in ``account`` (only those can hold instances)."""
    if account not in dict.keys(ec2_backends):
        return []
    return list(dict.keys(ec2_backends[account]))


def find_instance(instance_id: str, account: str = ACCOUNT_ID) -> tuple[str, Any] | None:
    """(region, moto Instance) for an instance id in any region of ``account``, or None."""
    for region in known_regions(account):
        for instance in ec2(region, account).all_instances():
            if instance.id == instance_id:
                return region, instance
    return None


def locate(instance_id: str) -> tuple[str, str, Any] | None:
    """(account, region, moto Instance) for an instance id in any account, or None."""
    for account in known_accounts():
        found = find_instance(instance_id, account)
        if found is not None:
            return account, found[0], found[1]
    return None


def platform_of(instance: Any) -> str:
    return "windows" if (instance.platform or "").lower() == "windows" else "linux"


def profile_exists(name: str, account: str = ACCOUNT_ID) -> bool:
    return any(p.name == name for p in iam(account).get_instance_profiles())


def ssm_roles_by_profile_arn(account: str = ACCOUNT_ID) -> dict[str, str]:
    """Instance profile ARN -> name of a role in it carrying AmazonSSMManagedInstanceCore."""
    backend = iam(account)
    live_roles = {id(role) for role in backend.roles.values()}
    result = {}
    for profile in backend.get_instance_profiles():
        for role in profile.roles:
            if id(role) in live_roles and SSM_CORE_POLICY_ARN in role.managed_policies:
                result[profile.arn] = role.name
                break
    return result


def ssm_role_of(region: str, instance: Any, roles_by_arn: dict[str, str],
                account: str = ACCOUNT_ID) -> str | None:
    """The SSM-capable role reachable through the instance's profile association, if any."""
    association = ec2(region, account).iam_instance_profile_associations.get(instance.id)
    if association is None:
        return None
    return roles_by_arn.get(association.iam_instance_profile.arn)


def has_profile(region: str, instance: Any, account: str = ACCOUNT_ID) -> bool:
    """Whether the instance has an instance profile association (whatever its role)."""
    return instance.id in ec2(region, account).iam_instance_profile_associations


def set_state(instance_id: str, state: str) -> dict[str, Any]:
    """Start, stop or terminate an instance, as its owner would in the console."""
    if state not in STATES:
        raise FleetError(f"state must be one of {', '.join(STATES)}")
    found = locate(instance_id)
    if found is None:
        raise FleetError(f"instance {instance_id} not found", 404)
    account, region, instance = found
    if instance.state == "terminated" and state != "terminated":
        raise FleetError(f"instance {instance_id} is terminated", 409)
    backend = ec2(region, account)
    {"running": backend.start_instances, "stopped": backend.stop_instances,
     "terminated": backend.terminate_instances}[state]([instance_id])
    return {"instance_id": instance_id, "region": region, "state": instance.state}


def _validate_seed(spec: Any) -> None:
    if not isinstance(spec, dict):
        raise FleetError("seed must be a JSON object")
    if not is_account_id(spec.get("account_id", ACCOUNT_ID)):
        raise FleetError("account_id must be a 12-digit account id")
    for key in ("roles", "instance_profiles", "instances"):
        if not isinstance(spec.get(key, []), list):
            raise FleetError(f"{key} must be a list")
    for role in spec.get("roles", []):
        if not isinstance(role, dict) or not role.get("name"):
            raise FleetError("every role needs a name")
        if not isinstance(role.get("policies", []), list):
            raise FleetError(f"role {role['name']}: policies must be a list of ARNs")
    for profile in spec.get("instance_profiles", []):
        if not isinstance(profile, dict) or not profile.get("name"):
            raise FleetError("every instance profile needs a name")
    for item in spec.get("instances", []):
        if not isinstance(item, dict):
            raise FleetError("every instance entry must be an object")
        if item.get("platform", "linux") not in PLATFORMS:
            raise FleetError(f"platform must be one of {', '.join(PLATFORMS)}")
        if item.get("state", "running") not in STATES:
            raise FleetError(f"state must be one of {', '.join(STATES)}")
        count = item.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise FleetError("count must be a positive integer")
        if not isinstance(item.get("tags", {}), dict):
            raise FleetError("tags must be an object")
        if item.get("region", "us-east-1") not in ec2_backends[ACCOUNT_ID]:
            raise FleetError(f"unknown region {item.get('region')}")


def _ensure_profile(name: str, role_name: str | None, account: str = ACCOUNT_ID) -> None:
    backend = iam(account)
    profile = backend.instance_profiles.get(name)
    if profile is None:
        backend.create_instance_profile(name, "/", [role_name] if role_name else [])
    elif role_name and not profile.roles:
        backend.add_role_to_instance_profile(name, role_name)


def _seed_role(role: dict[str, Any], account: str = ACCOUNT_ID) -> None:
    backend = iam(account)
    name = role["name"]
    if not any(r.name == name for r in backend.get_roles()):
        backend.create_role(name, _EC2_TRUST_POLICY, "/", None, "", [], None)
    existing = backend.get_role(name).managed_policies
    for arn in role.get("policies", []):
        if arn not in existing:
            backend.attach_role_policy(arn, name)
    if role.get("instance_profile"):
        _ensure_profile(role["instance_profile"], name, account)


def _seed_instances(item: dict[str, Any], account: str = ACCOUNT_ID) -> list[dict[str, Any]]:
    region = item.get("region", "us-east-1")
    platform = item.get("platform", "linux")
    state = item.get("state", "running")
    tags = {str(k): str(v) for k, v in item.get("tags", {}).items()}
    profile = item.get("instance_profile")
    if profile and not profile_exists(profile, account):
        raise FleetError(f"instance profile {profile} does not exist (seed it first)")
    backend = ec2(region, account)
    reservation = backend.run_instances(
        _AMI_BY_PLATFORM[platform], item.get("count", 1), None, [],
        instance_type="t3.micro", is_instance_type_default=False, region_name=region,
        tags={"instance": tags},
    )
    created = []
    for instance in reservation.instances:
        # Set explicitly: DescribeInstances must say <platform>windows</platform>.
        instance.platform = "windows" if platform == "windows" else None
        if profile:
            backend.associate_iam_instance_profile(instance.id, iam_instance_profile_name=profile)
        if state == "stopped":
            backend.stop_instances([instance.id])
        elif state == "terminated":
            backend.terminate_instances([instance.id])
        created.append({"instance_id": instance.id, "account_id": account, "region": region,
                        "platform": platform,
                        "state": state, "tags": tags, "instance_profile": profile})
    return created


def seed(spec: Any) -> dict[str, Any]:
    """Apply a seed: roles, then bare instance profiles, then instances (see README), in
    ``account_id`` (default 123456789012)."""
    _validate_seed(spec)
    account = spec.get("account_id", ACCOUNT_ID)
    try:
        for role in spec.get("roles", []):
            _seed_role(role, account)
        for profile in spec.get("instance_profiles", []):
            _ensure_profile(profile["name"], None, account)
        instances = []
        for item in spec.get("instances", []):
            instances.extend(_seed_instances(item, account))
    except (ServiceException, HTTPException) as exc:
        raise FleetError(_moto_message(exc)) from exc
    return {"instances": instances}
