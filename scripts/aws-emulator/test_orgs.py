"""Multi-account behaviour of the emulator: Organizations through the middleware, assumed-role sessions
acting in the role's account, per-account EC2/IAM/SSM state, and the AssumeRole gate.

Run: ``.venv/bin/python -m pytest scripts/aws-emulator -q``
"""

import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from client import EmulatorClient

HERE = Path(__file__).resolve().parent
SSM_CORE = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
MGMT, MEMBER_A, MEMBER_B, DENIED = "123456789012", "222222222222", "333333333333", "444444444444"


@pytest.fixture(scope="module")
def endpoint():
    proc = subprocess.Popen([sys.executable, str(HERE / "emulator.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("LISTENING http://127.0.0.1:"), line
        url = line.split()[1]
        emu = EmulatorClient(url)
        emu.organization({
            "management_account_id": MGMT,
            "units": [{"name": "prod"}, {"name": "prod-eu", "parent": "prod"}, {"name": "dev"}],
            "accounts": [{"id": MEMBER_A, "unit": "prod"}, {"id": MEMBER_B, "unit": "prod-eu"},
                         {"id": DENIED, "unit": "dev"},
                         {"id": "555555555555", "unit": "dev", "status": "SUSPENDED"}],
        })
        yield url
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def client(endpoint, service, region="us-east-1", creds=None):
    creds = creds or {"aws_access_key_id": "AKIDTEST", "aws_secret_access_key": "secret"}
    return boto3.client(service, region_name=region, endpoint_url=endpoint,
                        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
                        **creds)


def assume(endpoint, account, role="AzureArcOnboardingMember"):
    out = client(endpoint, "sts").assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/{role}", RoleSessionName="test")
    c = out["Credentials"]
    return {"aws_access_key_id": c["AccessKeyId"], "aws_secret_access_key": c["SecretAccessKey"],
            "aws_session_token": c["SessionToken"]}


def test_organizations_is_served_with_the_seeded_ids_and_tree(endpoint):
    org = client(endpoint, "organizations")
    accounts = {a["Id"]: a["Status"] for a in org.list_accounts()["Accounts"]}
    assert accounts == {MGMT: "ACTIVE", MEMBER_A: "ACTIVE", MEMBER_B: "ACTIVE", DENIED: "ACTIVE",
                        "555555555555": "SUSPENDED"}
    root = org.list_roots()["Roots"][0]["Id"]
    units = org.list_children(ParentId=root, ChildType="ORGANIZATIONAL_UNIT")["Children"]
    assert len(units) == 2
    names = {org.describe_organizational_unit(OrganizationalUnitId=u["Id"])
             ["OrganizationalUnit"]["Name"]: u["Id"] for u in units}
    prod = names["prod"]
    assert [a["Id"] for a in org.list_accounts_for_parent(ParentId=prod)["Accounts"]] == [MEMBER_A]
    child = org.list_children(ParentId=prod, ChildType="ORGANIZATIONAL_UNIT")["Children"][0]["Id"]
    assert [a["Id"] for a in org.list_accounts_for_parent(ParentId=child)["Accounts"]] == [MEMBER_B]
    calls = EmulatorClient(endpoint).calls()["calls"]
    assert any(c["operation"] == "organizations:ListAccounts" for c in calls)


def test_a_member_account_cannot_list_the_organization(endpoint):
    org = client(endpoint, "organizations", creds=assume(endpoint, MEMBER_A))
    with pytest.raises(ClientError) as excinfo:
        org.list_accounts()
    assert excinfo.value.response["Error"]["Code"] == "AccessDeniedException"


def test_assumed_role_sessions_act_in_the_roles_account(endpoint):
    emu = EmulatorClient(endpoint)
    created = emu.seed({"account_id": MEMBER_A, "instances": [{"region": "eu-west-2"}]})
    iid = created["instances"][0]["instance_id"]
    assert created["instances"][0]["account_id"] == MEMBER_A
    sts = client(endpoint, "sts", creds=assume(endpoint, MEMBER_A))
    assert sts.get_caller_identity()["Account"] == MEMBER_A
    member = client(endpoint, "ec2", "eu-west-2", creds=assume(endpoint, MEMBER_A))
    seen = [i["InstanceId"] for r in member.describe_instances()["Reservations"]
            for i in r["Instances"]]
    assert seen == [iid]
    caller = client(endpoint, "ec2", "eu-west-2")
    assert caller.describe_instances()["Reservations"] == [], "not in the default account"
    calls = [c for c in emu.calls()["calls"] if c["operation"] == "ec2:DescribeInstances"]
    assert [c["account_id"] for c in calls[-2:]] == [MEMBER_A, MGMT]


def test_ssm_state_is_per_account(endpoint):
    emu = EmulatorClient(endpoint)
    seed = {"account_id": MEMBER_B,
            "roles": [{"name": "AppRole", "policies": [SSM_CORE], "instance_profile": "AppProfile"}],
            "instances": [{"region": "ap-south-1", "instance_profile": "AppProfile"}]}
    iid = emu.seed(seed)["instances"][0]["instance_id"]
    member = assume(endpoint, MEMBER_B)
    ssm_b = client(endpoint, "ssm", "ap-south-1", creds=member)
    listed = [i["InstanceId"] for i in ssm_b.describe_instance_information()
              ["InstanceInformationList"]]
    assert listed == [iid]
    ssm_default = client(endpoint, "ssm", "ap-south-1")
    assert ssm_default.describe_instance_information()["InstanceInformationList"] == []
    command = ssm_b.send_command(InstanceIds=[iid], DocumentName="AWS-RunShellScript",
                                 Parameters={"commands": ["true"]})["Command"]["CommandId"]
    assert [c["CommandId"] for c in ssm_b.list_commands()["Commands"]] == [command]
    assert ssm_default.list_commands()["Commands"] == [], "commands are per account"
    with pytest.raises(ClientError) as excinfo:
        ssm_default.send_command(InstanceIds=[iid], DocumentName="AWS-RunShellScript",
                                 Parameters={"commands": ["true"]})
    assert excinfo.value.response["Error"]["Code"] == "InvalidInstanceId"
    view = [c for c in emu._call("GET", "commands")["commands"] if c["command_id"] == command]
    assert view[0]["account_id"] == MEMBER_B


def test_the_default_account_keeps_its_behaviour(endpoint):
    emu = EmulatorClient(endpoint)
    seed = {"roles": [{"name": "AppRole", "policies": [SSM_CORE], "instance_profile": "AppProfile"}],
            "instances": [{"region": "ca-central-1", "instance_profile": "AppProfile"}]}
    iid = emu.seed(seed)["instances"][0]["instance_id"]
    ssm = client(endpoint, "ssm", "ca-central-1")
    assert [i["InstanceId"] for i in ssm.describe_instance_information()
            ["InstanceInformationList"]] == [iid]


def test_assume_role_can_be_denied_per_account(endpoint):
    emu = EmulatorClient(endpoint)
    emu.deny_assume_role([DENIED])
    try:
        with pytest.raises(ClientError) as excinfo:
            assume(endpoint, DENIED)
        assert excinfo.value.response["Error"]["Code"] == "AccessDenied"
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assume(endpoint, MEMBER_A)  # others still work
    finally:
        emu.deny_assume_role([])
    assume(endpoint, DENIED)


def test_faults_can_target_one_account(endpoint):
    emu = EmulatorClient(endpoint)
    emu.faults([{"operation": "ec2:DescribeRegions", "account": MEMBER_A,
                 "code": "UnauthorizedOperation"}])
    try:
        with pytest.raises(ClientError):
            client(endpoint, "ec2", creds=assume(endpoint, MEMBER_A)).describe_regions()
        client(endpoint, "ec2").describe_regions()
    finally:
        emu.faults([])


def test_bad_organization_specs_are_refused(endpoint):
    emu = EmulatorClient(endpoint)
    for spec in ({"management_account_id": "12"},
                 {"management_account_id": "999999999999", "accounts": [{"id": "x"}]},
                 {"management_account_id": "999999999998", "accounts": [{"id": "111111111111",
                                                                         "unit": "nope"}]}):
        with pytest.raises(Exception) as excinfo:
            emu.organization(spec)
        assert "400" in str(excinfo.value)
    time.sleep(0)
