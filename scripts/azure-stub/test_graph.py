"""Tests of the stub's Azure Resource Graph: the KQL subset arc-onboard sends, paging, denial, and
the control endpoints that seed machines elsewhere (another group, another subscription, Defender).

Run: ``.venv/bin/python -m pytest scripts/azure-stub -q``
"""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import graph  # noqa: E402
from test_stub import SUB, endpoint, stub  # noqa: E402,F401  (fixtures)

GRAPH = "/providers/Microsoft.ResourceGraph/resources"
GRAPH_API = "api-version=2022-10-01"
OTHER_SUB = "11111111-2222-3333-4444-555555555555"


def machines_query(ids):
    """The query arc-onboard sends (src/adapters/azure/graph.rs), with KQL's quoting."""
    def lit(v):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'").replace('"', '\\"') + "'"
    names = ", ".join(lit(i) for i in ids)
    return ("resources | where type =~ 'microsoft.hybridcompute/machines' "
            f"| where name in~ ({names}) or tostring(tags.InstanceId) in~ ({names}) "
            "| project id, name, resourceGroup, subscriptionId, "
            "instanceId = tostring(tags.InstanceId), status = tostring(properties.status)")


def ask(stub, token, query, **options):
    return stub.arm("POST", GRAPH, token, GRAPH_API, body={"query": query, "options": options})


def test_defender_machine_is_found_by_name_and_tag_in_another_subscription(stub):
    token = stub.token()
    seeded = stub.control("POST", "machines/defender", {
        "instance_id": "i-0aaa", "account_id": "123456789012", "subscription_id": OTHER_SUB})
    assert seeded["tags"] == {"InstanceId": "i-0aaa", "AccountId": "123456789012",
                              "Cloud": "AWS", "MDFCSecurityConnector": "aws-connector"}
    # Tagged only: a machine under another name that carries the instance id in its tag.
    stub.control("POST", "machines/elsewhere", {"resource_group": "other-rg", "name": "web-01",
                                                "tags": {"InstanceId": "I-0BBB"}})
    stub.control("POST", "machines", {"resource_group": "unrelated", "name": "i-0zzz",
                                      "location": "eastus"})
    status, _, body = ask(stub, token, machines_query(["i-0AAA", "i-0bbb", "i-0ccc"]))
    assert status == 200, body
    rows = {r["name"]: r for r in body["data"]}
    assert set(rows) == {"i-0aaa", "web-01"}, body
    assert rows["i-0aaa"]["subscriptionId"] == OTHER_SUB
    assert rows["i-0aaa"]["resourceGroup"] == "defender-aws-connector"
    assert rows["i-0aaa"]["id"] == (f"/subscriptions/{OTHER_SUB}/resourceGroups/"
                                    "defender-aws-connector/providers/"
                                    "Microsoft.HybridCompute/machines/i-0aaa")
    assert rows["i-0aaa"]["status"] == "Connected"
    assert rows["web-01"]["subscriptionId"] == SUB and rows["web-01"]["instanceId"] == "I-0BBB"
    assert set(rows["web-01"]) == {"id", "name", "resourceGroup", "subscriptionId", "instanceId",
                                   "status"}
    assert body["totalRecords"] == 2 and "$skipToken" not in body
    # Our subscription's machine is also served by ARM itself; the foreign one is not.
    assert stub.machine("other-rg", "web-01", token)[0] == 200


def test_pages_follow_skip_tokens_at_the_configured_size(stub):
    token = stub.token()
    ids = [f"i-{n:04x}" for n in range(7)]
    for i in ids:
        stub.control("POST", "machines/defender", {"instance_id": i, "account_id": "1"})
    stub.control("POST", "config", {"graph_page_size": 3})
    seen, skip, pages = [], None, 0
    while True:
        options = {"$top": 1000, **({"$skipToken": skip} if skip else {})}
        status, _, body = ask(stub, token, machines_query(ids), **options)
        assert status == 200, body
        pages += 1
        assert body["count"] == len(body["data"]) <= 3 and body["totalRecords"] == 7
        seen += [r["name"] for r in body["data"]]
        skip = body.get("$skipToken")
        if not skip:
            break
    assert pages == 3 and sorted(seen) == ids
    status, _, body = ask(stub, token, machines_query(ids), **{"$skipToken": "forged"})
    assert status == 400 and body["error"]["code"] == "BadRequest"


def test_denied_answers_403_authorization_failed(stub):
    token = stub.token()
    stub.control("POST", "config", {"graph_denied": True})
    status, _, body = ask(stub, token, machines_query(["i-1"]))
    assert status == 403 and body["error"]["code"] == "AuthorizationFailed"
    assert ask(stub, None, machines_query(["i-1"]))[0] == 401


def test_a_hostile_value_is_one_literal_not_query_text(stub):
    token = stub.token()
    stub.control("POST", "machines/defender", {"instance_id": "i-0aaa", "account_id": "1"})
    hostile = "x') or name != ('"
    status, _, body = ask(stub, token, machines_query([hostile]))
    assert status == 200 and body["data"] == [], body
    strings = [t for t in graph.tokenize(machines_query([hostile])) if t[0] == "str"]
    assert strings == [("str", "microsoft.hybridcompute/machines"), ("str", hostile),
                       ("str", hostile)]


@pytest.mark.parametrize("query", [
    "resources | where name in~ ('a'",
    "resources | where name in~ ('a') | summarize count()",
    "securityresources | where name =~ 'a'",
    "resources | where name in~ ('a\\q')",
    "",
])
def test_queries_outside_the_subset_are_invalid(stub, query):
    status, _, body = ask(stub, stub.token(), query)
    assert status == 400 and body["error"]["code"] in ("InvalidQuery", "BadRequest"), body


def test_kql_literals_unescape_as_kql_does():
    assert graph.tokenize(r"'a\'b\\c\"d'") == [("str", "a'b\\c\"d")]
    rows = [{"name": "I-1", "tags": {"InstanceId": "i-2"}}, {"name": "x", "tags": {}}]
    assert graph.evaluate("resources | where name in~ ('i-1')", rows) == [rows[0]]
    assert graph.evaluate("resources | where name in ('i-1')", rows) == []
    assert graph.evaluate("resources | where tostring(tags.InstanceId) =~ 'I-2' "
                          "| project n = tostring(name)", rows) == [{"n": "I-1"}]


def test_seeding_elsewhere_checks_its_fields(stub):
    for body in ({"resource_group": "rg"}, {"name": "i-1"},
                 {"resource_group": "rg", "name": "bad name", "subscription_id": OTHER_SUB},
                 {"resource_group": "rg", "name": "i-1", "colour": "red"}):
        status = stub_status(stub, "machines/elsewhere", body)
        assert status == 400, body
    assert stub_status(stub, "machines/defender", {"instance_id": "i-1"}) == 400


def stub_status(stub, path, body):
    from test_stub import http
    return http("POST", f"{stub.url}/_stub/{path}", body)[0]
