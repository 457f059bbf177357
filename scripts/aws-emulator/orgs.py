"""Organizations and multi-account support for the emulator.

* ``account_of(access_key)``: the account a request acts in. moto keeps one backend per account and
  attributes a request to the account whose IAM backend holds its access key; keys returned by
  ``sts:AssumeRole`` are created in the role's account, so a session of
  ``arn:aws:iam::222222222222:role/X`` acts in 222222222222 for every later call. Unknown keys (the
  tests' dummy credentials) act in the default account 123456789012.
* ``build(spec)``: an organization created directly in moto's Organizations backend with the account
  ids and OU tree the test asks for (moto's ``CreateAccount`` invents random ids), never logged as AWS
  calls. Calls then go through moto: ``ListAccounts``, ``ListChildren``, ``ListAccountsForParent``...
* ``AssumeRoleGate``: moto never checks that a role exists or trusts the caller; the gate denies
  ``sts:AssumeRole`` into the accounts (or role ARNs) the test names, as AWS does for a role that is
  missing or does not trust the caller.
"""

from typing import Any

import moto.iam.models as moto_iam
from moto.core import DEFAULT_ACCOUNT_ID
from moto.iam.models import iam_backends
from moto.organizations.models import organizations_backends

import fleet

STATUSES = ("ACTIVE", "SUSPENDED", "PENDING_CLOSURE")


def account_of(access_key: str | None) -> str:
    """The account a request signed with ``access_key`` acts in: the account whose IAM backend holds
    the key (moto's own attribution), else the default account.

    moto's ``get_account_id_from`` does the same but touches every partition of every account, which
    creates each missing IAM backend and loads the ~1,300 AWS managed policies into it (seconds each):
    with a handful of accounts a request took over 30 s. Only backends that exist can hold a key, so
    this looks at those alone; it also replaces moto's function, which moto calls on every request.
    """
    if not access_key:
        return DEFAULT_ACCOUNT_ID
    for account_id, account in list(dict.items(iam_backends)):
        for backend in list(dict.values(account)):
            if access_key in backend.access_keys:
                return account_id
    return DEFAULT_ACCOUNT_ID


moto_iam.get_account_id_from = account_of


def _backend(account_id: str) -> Any:
    return organizations_backends[account_id]["aws"]


def build(spec: Any) -> dict[str, Any]:
    """Create an organization: ``{"management_account_id", "units": [{"name", "parent"}],
    "accounts": [{"id", "name", "unit", "status"}]}``. ``parent``/``unit`` name a unit created earlier
    in the list, or are left out (the root). Returns the root id, unit ids by name and the accounts."""
    if not isinstance(spec, dict):
        raise fleet.FleetError("organization must be a JSON object")
    management = spec.get("management_account_id", DEFAULT_ACCOUNT_ID)
    if not fleet.is_account_id(management):
        raise fleet.FleetError("management_account_id must be a 12-digit account id")
    backend = _backend(management)
    if backend.org is not None:
        raise fleet.FleetError(f"account {management} already has an organization", 409)
    backend.create_organization(region="us-east-1", FeatureSet="ALL")
    root_id = backend.ou[0].id
    units: dict[str, str] = {}
    for unit in spec.get("units", []):
        if not isinstance(unit, dict) or not unit.get("name"):
            raise fleet.FleetError("every unit needs a name")
        parent = unit.get("parent")
        if parent is not None and parent not in units:
            raise fleet.FleetError(f"unit {unit['name']}: parent {parent} is not defined before it")
        created = backend.create_organizational_unit(
            ParentId=units[parent] if parent else root_id, Name=unit["name"])
        units[unit["name"]] = created["OrganizationalUnit"]["Id"]
    accounts = [{"id": management, "name": "management", "unit": None, "status": "ACTIVE"}]
    for item in spec.get("accounts", []):
        if not isinstance(item, dict) or not fleet.is_account_id(item.get("id", "")):
            raise fleet.FleetError("every account needs a 12-digit id")
        status = item.get("status", "ACTIVE")
        if status not in STATUSES:
            raise fleet.FleetError(f"status must be one of {', '.join(STATUSES)}")
        unit = item.get("unit")
        if unit is not None and unit not in units:
            raise fleet.FleetError(f"account {item['id']}: unit {unit} is not defined")
        if item["id"] == management:
            raise fleet.FleetError("the management account is added by itself")
        name = item.get("name", f"account-{item['id']}")
        backend.create_account(AccountName=name, Email=f"{item['id']}@example.com")
        account = backend.accounts[-1]
        organizations_backends.master_accounts.pop(account.id, None)
        account.id = item["id"]
        organizations_backends.master_accounts[account.id] = (management, "aws")
        account.parent_id = units[unit] if unit else root_id
        account.status = account.state = status
        accounts.append({"id": account.id, "name": name, "unit": unit, "status": status})
    return {"root_id": root_id, "units": units, "accounts": accounts}


def member_denied(service: str, action: str, account: str) -> bool:
    """Whether AWS would refuse this Organizations call: only the management account may list the
    organization (moto lets members read their organization)."""
    if service != "organizations" or action == "DescribeOrganization":
        return False
    return (account in organizations_backends.master_accounts
            and _backend(account).org is None)


MEMBER_DENIED_MESSAGE = "You don't have permissions to access this resource."


class AssumeRoleGate:
    """Denies ``sts:AssumeRole`` into chosen accounts or roles (moto would allow any)."""

    def __init__(self) -> None:
        self.denied: set[str] = set()

    def replace(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("denied", []), list):
            raise fleet.FleetError('body must be {"denied": ["222222222222" | "arn:aws:iam::...:role/X"]}')
        for item in body.get("denied", []):
            if not isinstance(item, str) or not (fleet.is_account_id(item)
                                                 or item.startswith("arn:")):
                raise fleet.FleetError(f"{item!r} is neither an account id nor a role ARN")
        self.denied = set(body.get("denied", []))
        return self.view()

    def view(self) -> dict[str, Any]:
        return {"denied": sorted(self.denied)}

    def refuses(self, role_arn: str) -> bool:
        parts = role_arn.split(":")
        account = parts[4] if len(parts) > 4 else ""
        return role_arn in self.denied or account in self.denied

    @staticmethod
    def message(caller_account: str, role_arn: str) -> str:
        return (f"User: arn:aws:iam::{caller_account}:user/arc-onboard is not authorized to "
                f"perform: sts:AssumeRole on resource: {role_arn}")
