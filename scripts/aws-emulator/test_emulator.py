"""End-to-end tests of the AWS emulator: boto3 against a real emulator subprocess.

One emulator serves the whole module. Tests isolate themselves by region (EC2 and SSM
state is per region) and the autouse fixture restores config, faults and outcomes.
Run: ``.venv/bin/python -m pytest scripts/aws-emulator -q``
"""

import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from client import EmulatorClient, EmulatorError

HERE = Path(__file__).resolve().parent
SSM_CORE = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
BASE_SEED = {
    "roles": [
        {"name": "AppRole", "policies": [SSM_CORE], "instance_profile": "AppProfile"},
        {"name": "LegacyAppRole", "policies": ["arn:aws:iam::aws:policy/ReadOnlyAccess"],
         "instance_profile": "LegacyAppProfile"},
    ],
    "instance_profiles": [{"name": "EmptyProfile"}],
}
DEFAULT_CONFIG = {"registration_delay_seconds": 0, "profile_propagation_seconds": 0,
                  "command_duration_seconds": 1.0, "invocation_visibility_delay_seconds": 0,
                  "key_exchange_duration_seconds": 0, "key_pool_size": 0,
                  "on_success_webhook": None, "execute_scripts": False, "sandbox_root": None}


@pytest.fixture(scope="module")
def endpoint():
    proc = subprocess.Popen([sys.executable, str(HERE / "emulator.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("LISTENING http://127.0.0.1:"), line
        url = line.split()[1]
        EmulatorClient(url).seed(BASE_SEED)
        yield url
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


@pytest.fixture
def emu(endpoint):
    client = EmulatorClient(endpoint)
    yield client
    client.config(**DEFAULT_CONFIG)
    client.faults([])
    client.outcomes({iid: None for iid in client.outcomes()})


@pytest.fixture
def aws(endpoint):
    def make(service, region="us-east-1", validate=True):
        config = Config(retries={"mode": "standard", "total_max_attempts": 1},
                        parameter_validation=validate)
        return boto3.client(service, region_name=region, endpoint_url=endpoint,
                            aws_access_key_id="AKIDTEST", aws_secret_access_key="secret",
                            config=config)
    return make


def seed_instances(emu, region, count=1, **fields):
    spec = {"instances": [{"region": region, "count": count, **fields}]}
    return [i["instance_id"] for i in emu.seed(spec)["instances"]]


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def wait_until(predicate, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_seed_sets_platform_state_tags_and_profile(emu, aws):
    emu.reset_calls()
    win = seed_instances(emu, "us-east-2", platform="windows", tags={"arc": "onboard"},
                         instance_profile="AppProfile")[0]
    lin = seed_instances(emu, "us-east-2", platform="linux", state="stopped")[0]
    ec2 = aws("ec2", "us-east-2")
    by_id = {i["InstanceId"]: i for r in ec2.describe_instances()["Reservations"]
             for i in r["Instances"]}
    assert by_id[win]["Platform"] == "windows"
    assert "Platform" not in by_id[lin]
    assert by_id[lin]["State"]["Name"] == "stopped"
    assert {"Key": "arc", "Value": "onboard"} in by_id[win]["Tags"]
    profile_arn = "arn:aws:iam::123456789012:instance-profile/AppProfile"
    assert by_id[win]["IamInstanceProfile"]["Arn"] == profile_arn
    associations = ec2.describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"]
    assert [(a["InstanceId"], a["IamInstanceProfile"]["Arn"]) for a in associations] == [
        (win, profile_arn)]
    assert emu.calls()["counts"] == {"ec2:DescribeInstances": 1,
                                     "ec2:DescribeIamInstanceProfileAssociations": 1}


def test_online_rule_with_registration_delay(emu, aws):
    region = "us-west-1"
    emu.config(registration_delay_seconds=1.0)
    target = seed_instances(emu, region)[0]
    legacy = seed_instances(emu, region, instance_profile="LegacyAppProfile")[0]
    empty = seed_instances(emu, region, instance_profile="EmptyProfile")[0]
    ssm, ec2 = aws("ssm", region), aws("ec2", region)

    def listed():
        return {i["InstanceId"]: i["PingStatus"]
                for i in ssm.describe_instance_information()["InstanceInformationList"]}

    assert listed() == {}
    association = ec2.associate_iam_instance_profile(
        InstanceId=target, IamInstanceProfile={"Name": "AppProfile"})
    assert listed() == {}  # registration delay not over yet
    time.sleep(1.1)
    assert listed() == {target: "Online"}
    info = ssm.describe_instance_information()["InstanceInformationList"][0]
    assert (info["IamRole"], info["PlatformType"], info["ResourceType"]) == (
        "AppRole", "Linux", "EC2Instance")
    assert legacy not in listed() and empty not in listed()

    ec2.disassociate_iam_instance_profile(
        AssociationId=association["IamInstanceProfileAssociation"]["AssociationId"])
    assert listed() == {target: "ConnectionLost"}
    ec2.associate_iam_instance_profile(InstanceId=target, IamInstanceProfile={"Name": "AppProfile"})
    assert listed() == {target: "ConnectionLost"}  # re-registering takes the delay again
    time.sleep(1.1)
    assert listed() == {target: "Online"}
    emu.set_state(target, "stopped")
    assert listed() == {}


def test_describe_instance_information_pages_and_validates(emu, aws):
    region = "ap-south-1"
    ids = seed_instances(emu, region, count=12, instance_profile="AppProfile")
    ssm = aws("ssm", region)
    seen, pages, token = [], [], None
    while True:
        kwargs = {"MaxResults": 5, **({"NextToken": token} if token else {})}
        page = ssm.describe_instance_information(**kwargs)
        pages.append(len(page["InstanceInformationList"]))
        seen += [i["InstanceId"] for i in page["InstanceInformationList"]]
        token = page.get("NextToken")
        if not token:
            break
    assert pages == [5, 5, 2]
    assert sorted(seen) == sorted(ids)
    filtered = ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": ids[:3]}, {"Key": "PingStatus",
                                                             "Values": ["Online"]}])
    assert {i["InstanceId"] for i in filtered["InstanceInformationList"]} == set(ids[:3])
    assert ssm.describe_instance_information(
        Filters=[{"Key": "PlatformTypes", "Values": ["Windows"]}])["InstanceInformationList"] == []
    unvalidated = aws("ssm", region, validate=False)
    for bad in (4, 51):
        with pytest.raises(ClientError) as excinfo:
            unvalidated.describe_instance_information(MaxResults=bad)
        assert error_code(excinfo) == "ValidationException"


def test_send_command_rejects_more_than_50_targets(emu, aws):
    ids = seed_instances(emu, "eu-west-2", count=51, instance_profile="AppProfile")
    with pytest.raises(ClientError) as excinfo:
        aws("ssm", "eu-west-2").send_command(DocumentName="AWS-RunShellScript", InstanceIds=ids,
                                             Parameters={"commands": ["true"]})
    assert error_code(excinfo) == "ValidationException"
    assert "50" in excinfo.value.response["Error"]["Message"]


def test_send_command_rejects_unmanaged_instance(emu, aws):
    region = "eu-west-3"
    managed = seed_instances(emu, region, instance_profile="AppProfile")[0]
    unmanaged = seed_instances(emu, region, instance_profile="LegacyAppProfile")[0]
    before = len(emu.commands()["commands"])
    with pytest.raises(ClientError) as excinfo:
        aws("ssm", region).send_command(DocumentName="AWS-RunShellScript",
                                        InstanceIds=[managed, unmanaged],
                                        Parameters={"commands": ["true"]})
    assert error_code(excinfo) == "InvalidInstanceId"
    assert len(emu.commands()["commands"]) == before  # whole call rejected


def test_send_command_rejects_platform_mismatch(emu, aws):
    region = "eu-central-1"
    linux = seed_instances(emu, region, instance_profile="AppProfile")[0]
    windows = seed_instances(emu, region, platform="windows", instance_profile="AppProfile")[0]
    ssm = aws("ssm", region)
    for document, target in (("AWS-RunPowerShellScript", linux), ("AWS-RunShellScript", windows)):
        with pytest.raises(ClientError) as excinfo:
            ssm.send_command(DocumentName=document, InstanceIds=[target],
                             Parameters={"commands": ["whoami"]})
        assert error_code(excinfo) == "UnsupportedPlatformType"
    sent = ssm.send_command(DocumentName="AWS-RunPowerShellScript", InstanceIds=[windows],
                            Parameters={"commands": ["whoami"]})
    assert sent["Command"]["Status"] == "Pending"


def test_send_command_targets_exactly_the_given_ids(emu, aws):
    region = "eu-north-1"
    a, b, c = seed_instances(emu, region, count=3, instance_profile="AppProfile")
    ssm = aws("ssm", region)
    sent = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[a, b],
                            Parameters={"commands": ["echo hi"], "executionTimeout": ["600"]},
                            Comment="arc", TimeoutSeconds=600, MaxErrors="100%")["Command"]
    assert sent["TargetCount"] == 2 and sorted(sent["InstanceIds"]) == sorted([a, b])
    command_id = sent["CommandId"]
    invocations = ssm.list_command_invocations(CommandId=command_id)["CommandInvocations"]
    assert sorted(i["InstanceId"] for i in invocations) == sorted([a, b])
    with pytest.raises(ClientError) as excinfo:
        ssm.get_command_invocation(CommandId=command_id, InstanceId=c)
    assert error_code(excinfo) == "InvocationDoesNotExist"
    recorded = next(x for x in emu.commands()["commands"] if x["command_id"] == command_id)
    assert recorded["instance_ids"] == [a, b]
    assert recorded["parameters"] == {"commands": ["echo hi"], "executionTimeout": ["600"]}
    assert (recorded["comment"], recorded["timeout_seconds"], recorded["max_errors"]) == (
        "arc", 600, "100%")


def test_scripted_failed_outcome_is_visible(emu, aws):
    region = "ap-northeast-1"
    ok, bad = seed_instances(emu, region, count=2, instance_profile="AppProfile")
    emu.outcomes({bad: {"status": "Failed", "exit_code": 41, "stdout": "connecting",
                        "stderr": "bad credentials", "duration_seconds": 1.0}})
    emu.config(command_duration_seconds=1.0)
    ssm = aws("ssm", region)
    command_id = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[ok, bad],
                                  Parameters={"commands": ["azcmagent connect"]},
                                  MaxErrors="100%")["Command"]["CommandId"]
    first = ssm.get_command_invocation(CommandId=command_id, InstanceId=bad)
    assert (first["Status"], first["ResponseCode"]) == ("InProgress", -1)

    def finished():
        answer = ssm.get_command_invocation(CommandId=command_id, InstanceId=bad)
        return answer if answer["Status"] != "InProgress" else None

    result = wait_until(finished)
    assert (result["Status"], result["StatusDetails"], result["ResponseCode"]) == (
        "Failed", "Failed", 41)
    assert (result["StandardOutputContent"], result["StandardErrorContent"]) == (
        "connecting", "bad credentials")
    listed = ssm.list_command_invocations(CommandId=command_id, Details=True)["CommandInvocations"]
    plugin = next(i for i in listed if i["InstanceId"] == bad)["CommandPlugins"][0]
    assert (plugin["Status"], plugin["ResponseCode"]) == ("Failed", 41)
    assert "bad credentials" in plugin["Output"]
    summary = ssm.list_commands(CommandId=command_id)["Commands"][0]
    assert (summary["Status"], summary["ErrorCount"], summary["CompletedCount"]) == ("Failed", 1, 2)


def test_invocation_does_not_exist_during_visibility_delay(emu, aws):
    region = "ap-northeast-2"
    target = seed_instances(emu, region, instance_profile="AppProfile")[0]
    emu.config(invocation_visibility_delay_seconds=1.0, command_duration_seconds=0)
    ssm = aws("ssm", region)
    command_id = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[target],
                                  Parameters={"commands": ["true"]})["Command"]["CommandId"]
    with pytest.raises(ClientError) as excinfo:
        ssm.get_command_invocation(CommandId=command_id, InstanceId=target)
    assert error_code(excinfo) == "InvocationDoesNotExist"
    assert ssm.list_command_invocations(CommandId=command_id)["CommandInvocations"] == []
    time.sleep(1.1)
    assert ssm.get_command_invocation(CommandId=command_id, InstanceId=target)["Status"] == "Success"


def test_cancel_command_cancels_running_invocations(emu, aws):
    region = "ca-central-1"
    target = seed_instances(emu, region, instance_profile="AppProfile")[0]
    emu.config(command_duration_seconds=30)
    ssm = aws("ssm", region)
    command_id = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[target],
                                  Parameters={"commands": ["sleep 30"]})["Command"]["CommandId"]
    ssm.cancel_command(CommandId=command_id)
    assert ssm.get_command_invocation(CommandId=command_id, InstanceId=target)["Status"] == "Cancelled"
    with pytest.raises(ClientError) as excinfo:
        ssm.cancel_command(CommandId="00000000-0000-0000-0000-000000000000")
    assert error_code(excinfo) == "InvalidCommandId"


def test_faults_are_parsed_by_boto3_and_have_no_side_effect(emu, aws):
    region = "sa-east-1"
    target = seed_instances(emu, region)[0]
    emu.faults([
        {"operation": "ssm:*", "code": "ThrottlingException", "rate": 1.0, "max": 1},
        {"operation": "ec2:AssociateIamInstanceProfile", "region": region,
         "code": "RequestLimitExceeded", "rate": 1.0, "max": 1},
        {"operation": "iam:GetInstanceProfile", "code": "AccessDenied",
         "message": "not allowed", "rate": 1.0},
    ], seed=7)
    with pytest.raises(ClientError) as excinfo:
        aws("ssm", region).describe_instance_information()
    assert error_code(excinfo) == "ThrottlingException"
    aws("ssm", region).describe_instance_information()  # max 1: fired once only

    ec2 = aws("ec2", region)
    with pytest.raises(ClientError) as excinfo:
        ec2.associate_iam_instance_profile(InstanceId=target,
                                           IamInstanceProfile={"Name": "AppProfile"})
    assert error_code(excinfo) == "RequestLimitExceeded"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert ec2.describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"] == []

    with pytest.raises(ClientError) as excinfo:
        aws("iam").get_instance_profile(InstanceProfileName="AppProfile")
    assert error_code(excinfo) == "AccessDenied"
    assert excinfo.value.response["Error"]["Message"] == "not allowed"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    fired = [f["fired"] for f in emu.faults()["faults"]]
    assert fired == [1, 1, 1]


def test_fault_rate_is_deterministic_for_a_seed(emu, aws):
    sts = aws("sts")

    def pattern():
        emu.faults([{"operation": "sts:GetCallerIdentity", "code": "Throttling", "rate": 0.5}],
                   seed=42)
        outcome = []
        for _ in range(12):
            try:
                sts.get_caller_identity()
                outcome.append("ok")
            except ClientError as exc:
                outcome.append(exc.response["Error"]["Code"])
        return outcome

    first = pattern()
    assert first == pattern()
    assert set(first) == {"ok", "Throttling"}


def test_call_log_records_aws_calls_only(emu, aws):
    region = "ap-southeast-1"
    target = seed_instances(emu, region)[0]
    emu.reset_calls()
    emu.faults([{"operation": "ec2:DescribeRegions", "code": "UnauthorizedOperation"}])
    ec2 = aws("ec2", region)
    ec2.describe_instances(InstanceIds=[target])
    ec2.describe_instances(Filters=[{"Name": "tag:arc", "Values": ["onboard"]}])
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_regions()
    assert error_code(excinfo) == "UnauthorizedOperation"
    aws("iam").list_attached_role_policies(RoleName="AppRole")
    emu.config()  # control requests are not logged
    log = emu.calls()
    assert log["counts"] == {"ec2:DescribeInstances": 2, "ec2:DescribeRegions": 1,
                             "iam:ListAttachedRolePolicies": 1}
    first, second, faulted, iam_call = log["calls"]
    assert [c["seq"] for c in log["calls"]] == sorted(c["seq"] for c in log["calls"])
    assert first["params"]["InstanceId.1"] == target
    assert second["params"]["Filter.1.Name"] == "tag:arc"
    assert (first["region"], first["service"], first["mutating"], first["status"]) == (
        region, "ec2", False, 200)
    assert (faulted["fault"], faulted["status"]) == ("UnauthorizedOperation", 403)
    assert (iam_call["service"], iam_call["params"]["RoleName"]) == ("iam", "AppRole")
    emu.reset_calls()
    assert emu.calls() == {"calls": [], "counts": {}}


def test_second_association_gives_incorrect_state(emu, aws):
    target = seed_instances(emu, "ap-southeast-2", instance_profile="AppProfile")[0]
    with pytest.raises(ClientError) as excinfo:
        aws("ec2", "ap-southeast-2").associate_iam_instance_profile(
            InstanceId=target, IamInstanceProfile={"Name": "AppProfile"})
    assert error_code(excinfo) == "IncorrectState"


def test_fresh_or_unknown_profile_gives_invalid_parameter_value(emu, aws):
    region = "us-west-2"
    target = seed_instances(emu, region)[0]
    emu.config(profile_propagation_seconds=1.0)
    iam, ec2 = aws("iam"), aws("ec2", region)
    with pytest.raises(ClientError) as excinfo:
        ec2.associate_iam_instance_profile(InstanceId=target,
                                           IamInstanceProfile={"Name": "NoSuchProfile"})
    assert error_code(excinfo) == "InvalidParameterValue"
    iam.create_instance_profile(InstanceProfileName="FreshProfile")
    iam.add_role_to_instance_profile(InstanceProfileName="FreshProfile", RoleName="AppRole")
    with pytest.raises(ClientError) as excinfo:
        ec2.associate_iam_instance_profile(InstanceId=target,
                                           IamInstanceProfile={"Name": "FreshProfile"})
    assert error_code(excinfo) == "InvalidParameterValue"
    assert excinfo.value.response["Error"]["Message"] == (
        "Value (FreshProfile) for parameter iamInstanceProfile.name is invalid. "
        "Invalid IAM Instance Profile name")
    time.sleep(1.1)
    associated = ec2.associate_iam_instance_profile(
        InstanceId=target, IamInstanceProfile={"Name": "FreshProfile"})
    assert associated["IamInstanceProfileAssociation"]["InstanceId"] == target


class _Recorder(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def webhook_target(emu, handler, **config):
    """A local server with ``handler`` as the emulator's success webhook, with ``config`` set."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        emu.config(on_success_webhook=f"http://127.0.0.1:{server.server_port}/done", **config)
        yield
    finally:
        server.shutdown()
        server.server_close()


class _SlowConnect(BaseHTTPRequestHandler):
    """A webhook target that takes a second to answer, as a slow Azure would."""
    answered: list = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(1.0)
        self.answered.append(time.time())
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_an_install_shows_its_success_only_once_the_connect_webhook_returned(emu, aws):
    region = "eu-west-1"
    (iid,) = seed_instances(emu, region, count=1, instance_profile="AppProfile")
    _SlowConnect.answered = []
    with webhook_target(emu, _SlowConnect, command_duration_seconds=0.2):
        ssm = aws("ssm", region)
        cid = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[iid],
                               Parameters={"commands": ["echo hi"]})["Command"]["CommandId"]
        time.sleep(0.6)
        # The duration has passed, but the agent's connect (the webhook) has not returned yet.
        assert ssm.get_command_invocation(CommandId=cid, InstanceId=iid)["Status"] == "InProgress"
        wait_until(lambda: ssm.get_command_invocation(CommandId=cid, InstanceId=iid)["Status"]
                   == "Success")
        # Seen succeeded only after the webhook had answered.
        assert len(_SlowConnect.answered) == 1


def test_webhook_fires_once_per_invocation_that_connected(emu, aws):
    region = "eu-west-1"
    good, bad = seed_instances(emu, region, count=2, instance_profile="AppProfile")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        emu.config(on_success_webhook=f"http://127.0.0.1:{server.server_port}/done",
                   command_duration_seconds=0.2)
        elsewhere = seed_instances(emu, region, count=1, instance_profile="AppProfile")[0]
        emu.outcomes({bad: {"status": "Failed", "exit_code": 1},
                      elsewhere: {"status": "Success", "stdout": (
                          'ARC_ONBOARD_RESULT {"outcome":"connected-elsewhere","exit_code":0,'
                          '"step":"check","code":"connected-elsewhere","message":"m",'
                          '"resource_id":"/subscriptions/x"}')}})
        command_id = aws("ssm", region).send_command(
            DocumentName="AWS-RunShellScript", InstanceIds=[good, bad, elsewhere],
            Parameters={"commands": ["install", "connect"]})["Command"]["CommandId"]
        wait_until(lambda: _Recorder.received)
        time.sleep(0.3)  # a second (wrong) post would arrive by now
        assert _Recorder.received == [{"instance_id": good, "region": region,
                                       "account_id": "123456789012", "command_id": command_id,
                                       "commands": ["install", "connect"]}]
    finally:
        server.shutdown()
        server.server_close()


class _AgentConnectRecorder(BaseHTTPRequestHandler):
    """Plays the Azure stub's agent connect: records headers and form, answers ok."""
    received: list = []

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        self.received.append({"authorization": self.headers.get("Authorization"),
                              "content_type": self.headers.get("Content-Type"),
                              "form": self.rfile.read(length).decode()})
        body = b'{"ok": true, "error": null, "message": null}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Flaky(BaseHTTPRequestHandler):
    """A webhook receiver whose first connection is reset and whose second attempt gets a 503."""
    attempts = 0
    delivered: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).attempts += 1
        if self.attempts == 1:  # an RST, as a full listen backlog gave: "Connection reset by peer"
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        self.send_response(503 if self.attempts == 2 else 204)
        self.end_headers()
        if self.attempts > 2:
            self.delivered.append(json.loads(body))

    def log_message(self, *args):
        pass


def _finished(ssm, command_id, instance_id):
    def done():
        try:
            answer = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        except ClientError:
            return None
        return answer if answer["Status"] not in ("Pending", "InProgress") else None
    return wait_until(done, timeout=30)


def test_execute_scripts_runs_linux_commands_in_a_sandbox_that_persists(emu, aws, endpoint,
                                                                         tmp_path):
    region = "ap-south-1"
    [linux] = seed_instances(emu, region, instance_profile="AppProfile")
    [windows] = seed_instances(emu, region, platform="windows", instance_profile="AppProfile")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AgentConnectRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ssm = aws("ssm", region)
    try:
        emu.config(execute_scripts=True, sandbox_root=str(tmp_path),
                   on_success_webhook=f"http://127.0.0.1:{server.server_port}/_stub/agent/connect")
        # IMDSv2 answers this instance's id, only with its session token; the installer is served;
        # the fake agent it installs connects with the --config file's token in a header.
        first = "\n".join([
            "#!/bin/bash",
            "t=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "
            "\"$ARC_ONBOARD_IMDS/latest/api/token\")",
            'echo "id=$(curl -sf -H "X-aws-ec2-metadata-token: $t" '
            '"$ARC_ONBOARD_IMDS/latest/meta-data/instance-id")"',
            "echo \"bad=$(curl -s -o /dev/null -w '%{http_code}' -H 'X-aws-ec2-metadata-token: x' "
            "\"$ARC_ONBOARD_IMDS/latest/meta-data/instance-id\")\"",
            f"curl -sf -o \"$TMPDIR/installer.sh\" {endpoint}/_agent/azcmagent-linux",
            'mkdir -p "$TMPDIR/work" && bash "$TMPDIR/installer.sh" --tempdir "$TMPDIR/work" '
            '&& rm -rf "$TMPDIR/work" "$TMPDIR/installer.sh"',
            "echo before=$(azcmagent show -j | grep -o '\"status\": \"[A-Za-z]*\"')",
            "printf '%s' '{\"access-token\": \"tok-123\"}' >\"$HOME/c.json\"",
            "azcmagent connect --subscription-id s --resource-group 'r g' --location eastus "
            "--tenant-id t --cloud AzureCloud --tags 'a=b' --resource-name n1 --config \"$HOME/c.json\"",
            'echo "connect=$?"; rm -f "$HOME/c.json"',
            "echo after=$(azcmagent show -j | grep -o '\"status\": \"[A-Za-z]*\"')",
            "echo kept >\"$HOME/marker\"",
        ])
        command_id = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[linux],
                                      Parameters={"commands": first.split("\n")}
                                      )["Command"]["CommandId"]
        answer = _finished(ssm, command_id, linux)
        out = answer["StandardOutputContent"]
        assert answer["Status"] == "Success", answer
        assert f"id={linux}" in out and "bad=401" in out, out
        assert 'before="status": "Disconnected"' in out and "connect=0" in out, out
        assert 'after="status": "Connected"' in out, out
        [call] = _AgentConnectRecorder.received
        assert call["authorization"] == "Bearer tok-123"
        assert call["content_type"] == "application/x-www-form-urlencoded"
        assert "resource-group=r+g" in call["form"] and f"instance-id={linux}" in call["form"]
        assert "tok-123" not in call["form"]
        # The sandbox persists: the next command finds the file; a failing script is Failed.
        command_id = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[linux],
                                      Parameters={"commands": ['cat "$HOME/marker"', "exit 3"]}
                                      )["Command"]["CommandId"]
        answer = _finished(ssm, command_id, linux)
        assert (answer["Status"], answer["ResponseCode"]) == ("Failed", 3), answer
        assert answer["StandardOutputContent"] == "kept\n"
        sandboxes = emu.sandboxes()
        box = Path(sandboxes["instances"][linux])
        assert box.parent == tmp_path and (box / "root/marker").read_text() == "kept\n"
        kept = list(box.glob(f"var/lib/amazon/ssm/{linux}/document/orchestration/"
                             f"{command_id}/awsrunShellScript/0.awsrunShellScript/stdout"))
        assert [p.read_text() for p in kept] == ["kept\n"]
        # Windows stays simulated.
        command_id = ssm.send_command(DocumentName="AWS-RunPowerShellScript",
                                      InstanceIds=[windows],
                                      Parameters={"commands": ["exit 7"]})["Command"]["CommandId"]
        answer = _finished(ssm, command_id, windows)
        assert answer["Status"] == "Success" and "ARC_ONBOARD_RESULT" in answer[
            "StandardOutputContent"]
        assert windows not in sandboxes["instances"]
    finally:
        server.shutdown()
        server.server_close()


def test_a_webhook_that_fails_twice_then_succeeds_is_delivered_once(emu, aws):
    region = "ca-central-1"
    [target] = seed_instances(emu, region, instance_profile="AppProfile")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        emu.config(on_success_webhook=f"http://127.0.0.1:{server.server_port}/done",
                   command_duration_seconds=0.1)
        aws("ssm", region).send_command(DocumentName="AWS-RunShellScript", InstanceIds=[target],
                                        Parameters={"commands": ["install"]})
        wait_until(lambda: _Flaky.delivered)
        time.sleep(1.0)  # a retry after the success would arrive by now
        assert [d["instance_id"] for d in _Flaky.delivered] == [target]
        assert _Flaky.attempts == 3
    finally:
        server.shutdown()
        server.server_close()


def test_execute_scripts_config_is_checked(emu):
    with pytest.raises(EmulatorError):
        emu.config(execute_scripts="yes")
    with pytest.raises(EmulatorError):
        emu.config(sandbox_root="relative/dir")


def test_a_webhook_that_keeps_failing_is_tried_a_bounded_number_of_times_and_logged(capsys):
    import ssm_sim
    waits = []
    # Port 1 on loopback refuses every connection.
    delivered = ssm_sim.deliver_webhook("http://127.0.0.1:1/done", b"{}", "i-0refused",
                                        sleep=waits.append)
    assert delivered is False
    assert waits == [0.2, 0.4, 0.8, 1.6]
    log = capsys.readouterr().err
    assert log.count("success webhook http://127.0.0.1:1/done failed for i-0refused") == 5
    assert "attempt 5 of 5, giving up" in log


def test_a_burst_of_a_thousand_connections_is_all_served():
    from burst import burst
    assert burst(HERE / "emulator.py", "/_emulator/health", 1000) == {"HTTP/1.1 200 OK": 1000}


def _seal(config: bytes, keys: dict, encode) -> tuple[str, str]:
    """Seals ``config`` as arc-onboard does (see src/install/seal.rs): ARC_SEALED_CONFIG and
    ARC_SEALED_KEYS for instance id -> public key."""
    import hashlib
    import os

    from cryptography.hazmat.primitives import hashes, padding as sym_padding
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    passphrase, salt = os.urandom(32).hex().encode(), os.urandom(8)
    key = hashlib.sha256(passphrase + salt).digest()
    iv = hashlib.sha256(key + passphrase + salt).digest()[:16]
    padder = sym_padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = encryptor.update(padder.update(config) + padder.finalize()) + encryptor.finalize()
    sealed = b"Salted__" + salt + body
    payload = passphrase + hashlib.sha256(sealed).hexdigest().encode()
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    wrapped = " ".join(f"{iid}:{encode(k.encrypt(payload, oaep))}" for iid, k in keys.items())
    return encode(sealed), wrapped


def _public_key(stdout: str):
    """The public key of an ARC_ONBOARD_KEY line (SPKI on Linux, modulus/exponent on Windows)."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    line = json.loads(stdout.rsplit("ARC_ONBOARD_KEY ", 1)[1])
    if "public_key" in line:
        return line, serialization.load_der_public_key(base64.b64decode(line["public_key"]))
    numbers = rsa.RSAPublicNumbers(int(line["exponent"], 16), int(line["modulus"], 16))
    return line, numbers.public_key()


@pytest.mark.parametrize("platform,document,form,encode", [
    ("linux", "AWS-RunShellScript", "{}='{}'", lambda b: __import__("base64").b64encode(b).decode()),
    ("windows", "AWS-RunPowerShellScript", "${} = '{}'", bytes.hex),
])
def test_key_exchange_then_sealed_install_hands_the_opened_token_to_the_webhook(
        emu, aws, platform, document, form, encode):
    region = "ap-south-1"
    extra = {"platform": "windows"} if platform == "windows" else {}
    a, b = seed_instances(emu, region, count=2, instance_profile="AppProfile", **extra)
    _Recorder.received = []
    with webhook_target(emu, _Recorder, command_duration_seconds=0.2):
        ssm = aws("ssm", region)
        key_id = "11111111-2222-4333-8444-555555555555"
        exchange = [form.format("ARC_MODE", "key-exchange"), form.format("ARC_KEY_ID", key_id)]
        xid = ssm.send_command(DocumentName=document, InstanceIds=[a, b],
                               Parameters={"commands": exchange})["Command"]["CommandId"]
        keys = {}
        for iid in (a, b):
            out = ssm.get_command_invocation(CommandId=xid, InstanceId=iid)
            assert out["Status"] == "Success"
            line, keys[iid] = _public_key(out["StandardOutputContent"])
            assert (line["instance_id"], line["key_id"]) == (iid, key_id)
            assert ("modulus" in line) == (platform == "windows")
        token = "arm-token-" + platform
        sealed, wrapped = _seal(json.dumps({"access-token": token}).encode(), {a: keys[a]}, encode)
        install = [form.format("ARC_MODE", "install"), form.format("ARC_KEY_ID", key_id),
                   form.format("ARC_SEALED_CONFIG", sealed), form.format("ARC_SEALED_KEYS", wrapped)]
        iid_cmd = ssm.send_command(DocumentName=document, InstanceIds=[a, b],
                                   Parameters={"commands": install})["Command"]["CommandId"]
        wait_until(lambda: _Recorder.received)
        time.sleep(0.3)
        # Only the instance the token was sealed for connects; the other fails as the script would.
        assert [(r["instance_id"], r["access_token"]) for r in _Recorder.received] == [(a, token)]
        wait_until(lambda: ssm.get_command_invocation(CommandId=iid_cmd, InstanceId=b)["Status"]
                   == "Failed")
        failed = ssm.get_command_invocation(CommandId=iid_cmd, InstanceId=b)
        assert '"code":"sealed-token"' in failed["StandardOutputContent"]
        # The key is gone after the install: the same install again cannot open the token.
        _Recorder.received = []
        again = ssm.send_command(DocumentName=document, InstanceIds=[a],
                                 Parameters={"commands": install})["Command"]["CommandId"]
        wait_until(lambda: ssm.get_command_invocation(CommandId=again, InstanceId=a)["Status"]
                   == "Failed")
        assert "private key" in ssm.get_command_invocation(
            CommandId=again, InstanceId=a)["StandardOutputContent"]
        assert _Recorder.received == []
        # No command parameter holds the token.
        assert token not in json.dumps(emu.commands())


def test_key_exchanges_take_fresh_keys_from_the_pool_and_never_one_twice(emu, aws):
    region = "ap-south-1"
    a, b = seed_instances(emu, region, count=2, instance_profile="AppProfile")
    emu.config(key_pool_size=3)
    wait_until(lambda: emu._call("GET", "key-pool")["ready"] == 3, timeout=30)
    ssm = aws("ssm", region)
    exchange = ["ARC_MODE='key-exchange'", "ARC_KEY_ID='k1'"]
    first = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[a, b],
                             Parameters={"commands": exchange})["Command"]["CommandId"]
    # Two keys were taken from it.
    assert emu._call("GET", "key-pool") == {"ready": 1, "target": 3}
    again = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[a],
                             Parameters={"commands": exchange})["Command"]["CommandId"]
    keys = [_public_key(ssm.get_command_invocation(CommandId=c, InstanceId=i)
                        ["StandardOutputContent"])[0]["public_key"]
            for c, i in ((first, a), (first, b), (again, a))]
    assert len(set(keys)) == 3
    # The pool is empty now: the next exchange makes its own key, still a fresh one.
    assert emu._call("GET", "key-pool")["ready"] == 0
    last = ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[b],
                            Parameters={"commands": exchange})["Command"]["CommandId"]
    output = ssm.get_command_invocation(CommandId=last, InstanceId=b)["StandardOutputContent"]
    assert _public_key(output)[0]["public_key"] not in keys
    emu.config(key_pool_size=0)


# ----- outbound identity federation (sts:GetWebIdentityToken) ---------------------------------

def test_get_web_identity_token_needs_federation_enabled_and_signs_for_the_caller(emu, aws, endpoint):
    import urllib.request

    import jwt
    sts, iam = aws("sts", "eu-west-1"), aws("iam")
    emu._call("POST", "federation", {"enabled": False})
    request = {"Audience": ["api://AzureADTokenExchange"], "SigningAlgorithm": "RS256",
               "DurationSeconds": 60}
    with pytest.raises(ClientError) as excinfo:
        sts.get_web_identity_token(**request)
    assert error_code(excinfo) == "OutboundWebIdentityFederationDisabledException"
    issuer = iam.enable_outbound_web_identity_federation()["IssuerIdentifier"]
    assert issuer == f"{endpoint}/oidc"
    assert iam.get_outbound_web_identity_federation_info()["IssuerIdentifier"] == issuer

    out = sts.get_web_identity_token(**request)
    config = json.load(urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration"))
    assert config["issuer"] == issuer
    jwks = json.load(urllib.request.urlopen(config["jwks_uri"]))
    header = jwt.get_unverified_header(out["WebIdentityToken"])
    key = next(jwt.PyJWK(k).key for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(out["WebIdentityToken"], key, algorithms=["RS256"],
                        audience="api://AzureADTokenExchange", issuer=issuer)
    assert claims["sub"] == "arn:aws:sts::123456789012:user/moto"  # moto's default caller
    assert claims["exp"] - claims["iat"] == 60
    assert claims["https://sts.amazonaws.com/"]["source_region"] == "eu-west-1"

    # An assumed-role session is its role.
    role = emu._call("POST", "assume-role",
                     {"role_arn": "arn:aws:iam::123456789012:role/Orchestrator"})
    as_role = boto3.client("sts", region_name="us-east-1", endpoint_url=endpoint,
                           aws_access_key_id=role["access_key_id"],
                           aws_secret_access_key=role["secret_access_key"],
                           aws_session_token=role["session_token"])
    token = as_role.get_web_identity_token(**request)["WebIdentityToken"]
    assert jwt.decode(token, key, algorithms=["RS256"], audience="api://AzureADTokenExchange")[
        "sub"] == "arn:aws:iam::123456789012:role/Orchestrator"

    for bad, code in [({"DurationSeconds": 30}, "ValidationError"),
                      ({"SigningAlgorithm": "HS256"}, "ValidationError")]:
        with pytest.raises(ClientError) as excinfo:
            aws("sts", "eu-west-1", validate=False).get_web_identity_token(**{**request, **bad})
        assert error_code(excinfo) == code
    # Faults apply as to any operation, and every call is logged as non-mutating.
    emu.faults([{"operation": "sts:GetWebIdentityToken", "code": "AccessDenied", "max": 1}])
    with pytest.raises(ClientError) as excinfo:
        sts.get_web_identity_token(**request)
    assert error_code(excinfo) == "AccessDenied"
    calls = [c for c in emu.calls()["calls"] if c["operation"] == "sts:GetWebIdentityToken"]
    assert calls and not any(c["mutating"] for c in calls)
    assert calls[-1]["fault"] == "AccessDenied"
    emu._call("POST", "federation", {"enabled": False})


# ----- SQS and EventBridge-shaped events -------------------------------------------------------------

def test_sqs_is_served_logged_and_long_polls_without_blocking_other_calls(emu, aws):
    sqs = aws("sqs", "me-south-1")
    url = sqs.create_queue(QueueName="plain")["QueueUrl"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/123456789012/plain")
    emu.reset_calls()
    started = time.time()
    done = {}

    def poll():
        done["messages"] = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=3,
                                               MaxNumberOfMessages=10).get("Messages", [])
        done["at"] = time.time()

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.3)
    # Other requests are served while the long poll waits.
    aws("ec2", "me-south-1").describe_instances()
    assert time.time() - started < 2.0
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    thread.join(timeout=10)
    assert [m["Body"] for m in done["messages"]] == ["hello"]
    assert done["at"] - started < 2.5, "the long poll returned once the message arrived"
    operations = [c["operation"] for c in emu.calls()["calls"]]
    assert "sqs:ReceiveMessage" in operations and "sqs:SendMessage" in operations
    receive = next(c for c in emu.calls()["calls"] if c["operation"] == "sqs:ReceiveMessage")
    assert receive["region"] == "me-south-1" and receive["mutating"] is False


def test_launch_and_tag_changes_put_eventbridge_events_on_the_queue(emu, aws):
    sqs = aws("sqs", "af-south-1")
    configured = emu.events(create_queue="arc-events", region="af-south-1")
    url = configured["queue_url"]
    assert url.endswith("/123456789012/arc-events")
    launched = emu.launch(region="af-south-1", count=2, tags={"arc": "onboard"},
                          instance_profile="AppProfile", events=["pending", "running"])
    ids = [i["instance_id"] for i in launched["instances"]]
    assert launched["events"] == 4
    described = aws("ec2", "af-south-1").describe_instances(InstanceIds=ids)
    states = {i["State"]["Name"] for r in described["Reservations"] for i in r["Instances"]}
    assert states == {"running"}
    bodies = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        if not got.get("Messages"):
            break
        bodies += [json.loads(m["Body"]) for m in got["Messages"]]
    assert len(bodies) == 4
    for event in bodies:
        assert event["detail-type"] == "EC2 Instance State-change Notification"
        assert event["source"] == "aws.ec2" and event["account"] == "123456789012"
        assert event["region"] == "af-south-1"
        assert event["detail"]["instance-id"] in ids
        assert event["resources"] == [
            f"arn:aws:ec2:af-south-1:123456789012:instance/{event['detail']['instance-id']}"]
    assert sorted(e["detail"]["state"] for e in bodies) == ["pending", "pending", "running", "running"]

    tagged = emu.set_tags(ids[0], {"team": "web"}, remove=["arc"])
    assert tagged["tags"] == {"team": "web"}
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    event = json.loads(got[0]["Body"])
    assert event["detail-type"] == "Tag Change on Resource" and event["source"] == "aws.tag"
    assert event["detail"]["service"] == "ec2" and event["detail"]["resource-type"] == "instance"
    assert event["detail"]["changed-tag-keys"] == ["arc", "team"]
    assert event["detail"]["tags"] == {"team": "web"}
    emu.events(queue_url=None)


def test_terminating_an_instance_puts_its_state_change_events_on_the_queue(emu, aws):
    sqs = aws("sqs", "af-south-1")
    url = emu.events(create_queue="arc-state-events", region="af-south-1")["queue_url"]
    launched = emu.launch(region="af-south-1", tags={"arc": "onboard"}, events=[])
    assert launched["events"] == 0
    iid = launched["instances"][0]["instance_id"]
    result = emu.set_state(iid, "terminated")
    assert result["state"] == "terminated" and result["events"] == 2
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    events = [json.loads(m["Body"]) for m in got]
    assert sorted(e["detail"]["state"] for e in events) == ["shutting-down", "terminated"]
    assert {e["detail"]["instance-id"] for e in events} == {iid}
    assert {e["detail-type"] for e in events} == {"EC2 Instance State-change Notification"}
    # EC2 keeps the terminated instance (with the time in StateTransitionReason) for a while.
    [instance] = [i for r in aws("ec2", "af-south-1").describe_instances(InstanceIds=[iid])[
        "Reservations"] for i in r["Instances"]]
    assert instance["State"]["Name"] == "terminated"
    assert instance["StateTransitionReason"].startswith("User initiated (")
    emu.events(queue_url=None)
    assert emu.set_state(launched["instances"][0]["instance_id"], "terminated")["events"] == 0


def test_a_launch_in_a_member_account_puts_its_event_with_that_account(emu, aws):
    sqs = aws("sqs", "af-south-1")
    url = emu.events(create_queue="arc-member-events", region="af-south-1")["queue_url"]
    launched = emu.launch(region="af-south-1", account_id="222222222222", tags={"arc": "onboard"})
    instance = launched["instances"][0]
    assert instance["account_id"] == "222222222222"
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    event = json.loads(got[0]["Body"])
    assert event["account"] == "222222222222"
    assert event["resources"] == [
        f"arn:aws:ec2:af-south-1:222222222222:instance/{instance['instance_id']}"]
    # Launched in the member's EC2, not in the emulator's own account.
    mine = aws("ec2", "af-south-1").describe_instances()["Reservations"]
    assert instance["instance_id"] not in {i["InstanceId"] for r in mine for i in r["Instances"]}
    emu.set_tags(instance["instance_id"], {"team": "web"})
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    tagged = json.loads(got[0]["Body"])
    assert tagged["detail-type"] == "Tag Change on Resource" and tagged["account"] == "222222222222"
    assert tagged["detail"]["tags"] == {"arc": "onboard", "team": "web"}
    with pytest.raises(EmulatorError):
        emu.launch(region="af-south-1", account_id="12345")
    emu.events(queue_url=None)


def test_launched_instances_register_after_the_delay_and_raw_messages_can_be_sent(emu, aws):
    emu.config(registration_delay_seconds=1.0)
    emu.events(create_queue="arc-raw", region="ap-east-1")
    ids = [i["instance_id"] for i in emu.launch(region="ap-east-1", instance_profile="AppProfile",
                                                  tags={"arc": "onboard"})["instances"]]
    ssm = aws("ssm", "ap-east-1")
    assert ssm.describe_instance_information()["InstanceInformationList"] == []
    online = wait_until(lambda: ssm.describe_instance_information()["InstanceInformationList"], 4)
    assert [i["InstanceId"] for i in online] == ids
    assert emu.send_event("not json")["sent"] == 1
    assert emu.events()["sent"] == 2
    assert emu.events()["messages"] == 2, "nothing received them"


def test_a_deleted_queue_answers_as_sqs_does(emu, aws):
    sqs = aws("sqs", "eu-south-1")
    url = emu.events(create_queue="doomed", region="eu-south-1")["queue_url"]
    emu.delete_queue()
    with pytest.raises(ClientError) as excinfo:
        sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
    assert error_code(excinfo) in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
    emu.faults([{"operation": "sqs:ReceiveMessage", "code": "AccessDenied", "status": 403}])
    with pytest.raises(ClientError) as excinfo:
        sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
    assert error_code(excinfo) == "AccessDenied"
    emu.events(queue_url=None)


def test_dhmc_registers_instances_without_a_profile_and_is_read_by_get_service_setting(emu, aws):
    region = "ap-south-1"
    emu.config(registration_delay_seconds=0)
    bare = seed_instances(emu, region)[0]
    empty = seed_instances(emu, region, instance_profile="EmptyProfile")[0]
    ssm = aws("ssm", region)
    setting = "/ssm/managed-instance/default-ec2-instance-management-role"

    def listed():
        # Only this test's instances: the module's emulator holds other tests' too.
        found = ssm.describe_instance_information(
            Filters=[{"Key": "InstanceIds", "Values": [bare, empty]}])
        return {i["InstanceId"]: (i["PingStatus"], i["IamRole"])
                for i in found["InstanceInformationList"]}

    assert ssm.get_service_setting(SettingId=setting)["ServiceSetting"]["SettingValue"] == "$None"
    assert listed() == {}
    role = "service-role/AWSSystemsManagerDefaultEC2InstanceManagementRole"
    ssm.update_service_setting(SettingId=setting, SettingValue=role)
    assert ssm.get_service_setting(SettingId=setting)["ServiceSetting"]["SettingValue"] == role
    # DHMC serves instances without a profile only; the profile's own (empty) role still decides.
    assert listed() == {bare: ("Online", role)}
    assert empty not in listed()
    # Other regions keep their own setting, and the control API switches it like UpdateServiceSetting.
    assert aws("ssm", "us-east-1").get_service_setting(SettingId=setting)[
        "ServiceSetting"]["SettingValue"] == "$None"
    emu._call("POST", "service-settings", {"region": region, "setting_id": setting,
                                           "value": None})
    assert listed() == {bare: ("ConnectionLost", role)}  # as an agent losing its credentials
    answer = emu._call("POST", "service-settings", {"region": region, "value": role})
    assert answer["ServiceSetting"]["SettingValue"] == role
    assert listed() == {bare: ("Online", role)}
    emu._call("POST", "service-settings", {"region": region, "value": None})
