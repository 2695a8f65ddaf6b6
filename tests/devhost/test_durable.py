"""devhost's durable engine over real HTTP: a devhost subprocess running tests/devhost/apps/durable_app on Azurite.

Activities record each execution as a row in a counter table, so the tests count real
executions; orchestration state is read back through the management API and, where the
API hides it, straight from the engine's tables.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient

from devhost.config import host_keys
from devhost.durable.store import DurableStore
from devhost.services import Service, start_devhost

pytestmark = pytest.mark.integration

APP_DIR = Path(__file__).parent / "apps" / "durable_app"


def durable_env(azurite: Service) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {
        "AzureWebJobsStorage": azurite.extra["connection_string"],
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "DURABLE_TEST_HUB": f"DurTest{suffix}",
        "DURABLE_TEST_COUNTER_TABLE": f"durcount{suffix}",
    }


def executions(env: dict[str, str], tag: str) -> dict[str, int]:
    """How many times each item of a run executed (rows the activities wrote)."""
    table = TableServiceClient.from_connection_string(env["AzureWebJobsStorage"]).get_table_client(
        env["DURABLE_TEST_COUNTER_TABLE"]
    )
    counts: dict[str, int] = {}
    try:
        for row in table.query_entities(f"PartitionKey eq '{tag}'"):
            counts[row["Item"]] = counts.get(row["Item"], 0) + 1
    except ResourceNotFoundError:  # no activity has run yet
        pass
    return counts


def start(client: httpx.Client, name: str, payload: Any, instance_id: str | None = None) -> dict[str, str]:
    params = {"instance_id": instance_id} if instance_id else {}
    r = client.post(f"/api/start/{name}", json=payload, params=params)
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == r.json()["statusQueryGetUri"]
    return r.json()


def wait_done(client: httpx.Client, urls: dict[str, str], timeout: float = 30, **params: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(urls["statusQueryGetUri"], params=params)
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 202, r.text
        if time.monotonic() > deadline:
            raise AssertionError(f"not done after {timeout}s: {r.json()}")
        time.sleep(0.1)


def wait_for(client: httpx.Client, urls: dict[str, str], predicate: Any, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(urls["statusQueryGetUri"]).json()
        if predicate(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met: {body}")
        time.sleep(0.1)


SYSTEM_KEY = host_keys({}).durabletask


@pytest.fixture(scope="module")
def env(azurite: Service) -> dict[str, str]:
    return durable_env(azurite)


@pytest.fixture(scope="module")
def host(env: dict[str, str], artifacts_dir: Path) -> Iterator[Service]:
    log_path = artifacts_dir / "devhost-durable-app.log"
    log_path.unlink(missing_ok=True)
    svc = start_devhost(APP_DIR, env, log_path=log_path)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def client(host: Service) -> Iterator[httpx.Client]:
    # The webhooks need the extension's system key (as on Azure); the check-status URLs carry it as
    # `code=`, but a request with `params=` replaces the URL's query, so send it as a header too.
    with httpx.Client(base_url=host.url, timeout=30, headers={"x-functions-key": SYSTEM_KEY}) as c:
        yield c


@pytest.fixture(scope="module")
def store(env: dict[str, str]) -> DurableStore:
    return DurableStore(env["AzureWebJobsStorage"], env["DURABLE_TEST_HUB"])


def test_fan_out_fan_in_of_100_activities(client: httpx.Client, env: dict[str, str]) -> None:
    urls = start(client, "fan_out", {"tag": "fan", "n": 100})
    status = wait_done(client, urls, timeout=60)
    assert status["runtimeStatus"] == "Completed"
    assert status["output"] == sum(2 * i for i in range(100))
    assert status["customStatus"] == {"done": 100}
    assert executions(env, "fan") == {str(i): 1 for i in range(100)}


def test_activity_concurrency_stays_within_host_json(client: httpx.Client, env: dict[str, str]) -> None:
    """maxConcurrentActivityFunctions is 8 in the test app's host.json: 24 slow activities never run 9 at once."""
    urls = start(client, "fan_out", {"tag": "bound", "n": 24, "sleep": 0.4})
    assert wait_done(client, urls, timeout=60)["runtimeStatus"] == "Completed"
    table = TableServiceClient.from_connection_string(env["AzureWebJobsStorage"]).get_table_client(
        env["DURABLE_TEST_COUNTER_TABLE"]
    )
    running = [int(r["Running"]) for r in table.query_entities("PartitionKey eq 'bound'")]
    assert len(running) == 24
    assert 2 <= max(running) <= 8, running  # in parallel, but never past the bound


def test_retries_with_transient_failures(client: httpx.Client, env: dict[str, str], store: DurableStore) -> None:
    urls = start(client, "flaky_run", {"tag": "retry-ok", "fail": 2, "attempts": 4})
    status = wait_done(client, urls, showHistory="true")
    assert status["output"] == ["ok on attempt 3", 198]
    assert executions(env, "retry-ok") == {"flaky": 3, "99": 1}
    assert [e["EventType"] for e in status["historyEvents"]] == [
        "ExecutionStarted",
        "TaskFailed",
        "TimerCreated",
        "TimerFired",
        "TaskFailed",
        "TimerCreated",
        "TimerFired",
        "TaskCompleted",
        "TaskCompleted",
        "ExecutionCompleted",
    ]
    failed = status["historyEvents"][1]
    assert failed["FunctionName"] == "flaky" and "transient failure on attempt 1" in failed["Reason"]
    # the full stored history, sequence numbers included (what the SDK replays)
    inst = store.get_instance(urls["id"])
    assert inst is not None
    full = [
        (r.event["EventType"], r.event["EventId"], r.event.get("TaskScheduledId", r.event.get("TimerId")))
        for r in store.load_history(inst.instance_id, inst.generation, inst.history_length)
        if r.event["EventType"] in (4, 5, 6, 10, 11)
    ]
    assert full == [
        (4, 0, None),
        (6, -1, 0),
        (10, 1, None),
        (11, -1, 1),
        (4, 2, None),
        (6, -1, 2),
        (10, 3, None),
        (11, -1, 3),
        (4, 4, None),
        (5, -1, 4),
        (4, 5, None),
        (5, -1, 5),
    ]


def test_retries_exhausted_fail_the_orchestration_after_the_extra_timer(
    client: httpx.Client, env: dict[str, str]
) -> None:
    urls = start(client, "flaky_run", {"tag": "retry-bad", "fail": 10, "attempts": 2})
    status = wait_done(client, urls, showHistory="true")
    assert status["runtimeStatus"] == "Failed"
    assert "transient failure on attempt 2" in status["output"]
    assert executions(env, "retry-bad") == {"flaky": 2}
    assert [e["EventType"] for e in status["historyEvents"]] == [
        "ExecutionStarted",
        "TaskFailed",
        "TimerCreated",
        "TimerFired",
        "TaskFailed",
        "TimerCreated",
        "TimerFired",
        "ExecutionFailed",
    ]
    assert (
        client.get(urls["statusQueryGetUri"], params={"returnInternalServerErrorOnFailure": "true"}).status_code == 500
    )


def test_parallel_retries_interleave_with_other_results(client: httpx.Client, env: dict[str, str]) -> None:
    urls = start(client, "flaky_fan", {"tag": "pfan"})
    status = wait_done(client, urls)
    assert status["output"] == ["ok on attempt 2"] * 3 + [14, 16]
    assert [executions(env, f"pfan-{k}") for k in range(3)] == [{"flaky": 2}] * 3
    assert executions(env, "pfan") == {"7": 1, "8": 1}


def test_work_after_a_whenany_of_new_tasks_waits_for_them_as_on_azure(client: httpx.Client, env: dict[str, str]) -> None:
    """The SDK yields `after` as soon as `slow` ends, but its second task_any reached the extension
    as WhenAny([third]) only: the extension's shim starts `after` once `third` is done."""
    tag = "stall-" + uuid.uuid4().hex[:6]
    status = wait_done(client, start(client, "stalled_any", tag), timeout=60)
    assert (status["runtimeStatus"], status["output"]) == ("Completed", "after")
    table = TableServiceClient.from_connection_string(env["AzureWebJobsStorage"]).get_table_client(
        env["DURABLE_TEST_COUNTER_TABLE"]
    )
    order = {r["Item"]: int(r["Running"]) for r in table.query_entities(f"PartitionKey eq '{tag}'")}
    assert order["slow:end"] < order["third:end"] < order["after:start"], order


def test_payloads_beyond_the_table_property_limit(client: httpx.Client, store: DurableStore) -> None:
    size = 1_300_000  # > 1 MiB entity limit as well
    urls = start(client, "big", size, instance_id="big-" + uuid.uuid4().hex[:6])
    status = wait_done(client, urls, timeout=60, showHistory="true", showHistoryOutput="true")
    assert status["runtimeStatus"] == "Completed"
    assert status["output"]["blob"] == "x" * size + "y"
    completed = next(e for e in status["historyEvents"] if e["EventType"] == "TaskCompleted")
    assert len(completed["Result"]["blob"]) == size


def test_durable_timer(client: httpx.Client) -> None:
    urls = start(client, "sleeper", 1)
    status = wait_done(client, urls, showHistory="true")
    assert status["runtimeStatus"] == "Completed" and status["output"] >= 1.0
    kinds = [e["EventType"] for e in status["historyEvents"]]
    assert kinds == ["ExecutionStarted", "TimerCreated", "TimerFired", "ExecutionCompleted"]


def test_external_event_and_custom_status(client: httpx.Client) -> None:
    urls = start(client, "approval", None)
    wait_for(client, urls, lambda s: s["customStatus"] == "waiting for approval" and s["runtimeStatus"] == "Running")
    r = client.post(urls["sendEventPostUri"].replace("{eventName}", "approve"), json={"by": "ops"})
    assert r.status_code == 202
    status = wait_done(client, urls)
    assert status["output"] == {"approved_by": "ops"}
    assert status["customStatus"] == "approved"
    gone = client.post(urls["sendEventPostUri"].replace("{eventName}", "approve"), json={})
    assert gone.status_code == 410


def test_a_cancelled_timer_that_fires_later_changes_nothing(client: httpx.Client) -> None:
    """Approval then work, as a billing run does: the timer the orchestrator cancelled still fires while
    the activity runs (a timer message cannot be withdrawn) and is ignored; the run completes once."""
    urls = start(client, "approval_then_work", None)
    wait_for(client, urls, lambda s: s["customStatus"] == "waiting for approval" and s["runtimeStatus"] == "Running")
    assert client.post(urls["sendEventPostUri"].replace("{eventName}", "approve"), json={"by": "ops"}).status_code == 202
    status = wait_done(client, urls, timeout=60, showHistory="true")
    assert status["runtimeStatus"] == "Completed", status
    assert status["output"] == {"approved_by": "ops", "value": 42}
    kinds = [e["EventType"] for e in status["historyEvents"]]
    assert kinds.count("ExecutionCompleted") == 1 and kinds.count("TaskCompleted") == 1


def test_sub_orchestrations(client: httpx.Client, env: dict[str, str], store: DurableStore) -> None:
    urls = start(client, "parent", {"tag": "subs"})
    status = wait_done(client, urls, showHistory="true")
    parent_id = urls["id"]
    assert status["output"] == [
        {"parent": parent_id, "sum": 42},
        {"parent": parent_id, "sum": 82},
        {"parent": parent_id, "sum": 122},
    ]
    done = [e for e in status["historyEvents"] if e["EventType"] == "SubOrchestrationInstanceCompleted"]
    assert sorted(e["InstanceId"] for e in done) == [f"{parent_id}:0", f"{parent_id}:1", f"{parent_id}:2"]
    child = client.get(urls["statusQueryGetUri"].replace(parent_id, f"{parent_id}:1")).json()
    assert child["runtimeStatus"] == "Completed" and child["name"] == "child"
    assert executions(env, "subs") == {str(i): 1 for i in (10, 11, 20, 21, 30, 31)}


def test_terminate(client: httpx.Client) -> None:
    urls = start(client, "forever", None)
    wait_for(client, urls, lambda s: s["runtimeStatus"] == "Running")
    r = client.post(urls["terminatePostUri"].replace("{text}", "operator%20said%20stop"))
    assert r.status_code == 202
    status = wait_done(client, urls, showHistory="true")
    assert status["runtimeStatus"] == "Terminated"
    assert status["output"] == "operator said stop"
    assert status["historyEvents"][-1]["EventType"] == "ExecutionTerminated"
    assert client.post(urls["terminatePostUri"].replace("{text}", "again")).status_code == 410


def test_check_status_urls_round_trip_and_purge(client: httpx.Client, store: DurableStore) -> None:
    urls = start(client, "counter", 0)
    for key in ("statusQueryGetUri", "sendEventPostUri", "terminatePostUri", "purgeHistoryDeleteUri"):
        assert urls[key].startswith(client.base_url.join("/runtime/webhooks/durabletask/instances/").__str__())
        assert f"code={SYSTEM_KEY}" in urls[key]  # as on Azure: whoever holds these URLs holds the system key
    unkeyed = httpx.get(urls["statusQueryGetUri"].split("?")[0], timeout=10)
    assert unkeyed.status_code == 401 and unkeyed.json()["error"]["code"] == "system_key_required"
    status = wait_done(client, urls)  # continue-as-new three times, then one activity
    assert status == {**status, "runtimeStatus": "Completed", "output": {"n": 3, "doubled": 6}, "input": 3}
    r = client.delete(urls["purgeHistoryDeleteUri"])
    assert (r.status_code, r.json()) == (200, {"instancesDeleted": 1})
    assert client.get(urls["statusQueryGetUri"]).status_code == 404
    assert store.get_instance(urls["id"]) is None
    assert client.delete(urls["purgeHistoryDeleteUri"]).status_code == 404


def test_sdk_client_reads_status_with_history(client: httpx.Client) -> None:
    urls = start(client, "broken", None)
    wait_done(client, urls)
    seen = client.get(f"/api/status/{urls['id']}").json()  # DurableOrchestrationClient.get_status in the app
    assert seen["runtimeStatus"] == "Failed"
    assert seen["output"] == "Orchestrator function 'broken' failed: orchestrator gave up"


def test_start_with_a_running_instance_id_is_refused(client: httpx.Client) -> None:
    instance_id = "fixed-" + uuid.uuid4().hex[:6]
    urls = start(client, "forever", None, instance_id=instance_id)
    assert urls["id"] == instance_id
    wait_for(client, urls, lambda s: s["runtimeStatus"] == "Running")
    base = urls["statusQueryGetUri"].split("/instances/")[0]
    r = client.post(f"{base}/orchestrators/forever/{instance_id}")
    assert r.status_code == 409 and "Running" in r.json()["ExceptionMessage"]
    assert client.post(f"{base}/orchestrators/nope").status_code == 400
    listed, token, pages = [], None, 0  # pages in instance-id order, as the Azure Storage provider answers
    while True:
        headers = {"x-ms-continuation-token": token} if token else {}
        r = client.get(f"{base}/instances", params={"runtimeStatus": "Running,Pending", "top": "2"}, headers=headers)
        listed += [i["instanceId"] for i in r.json()]
        pages += 1
        token = r.headers.get("x-ms-continuation-token")
        if not token:
            break
    assert instance_id in listed and listed == sorted(set(listed)) and pages == (len(listed) + 1) // 2
    client.post(urls["terminatePostUri"].replace("{text}", "done"))
    wait_done(client, urls)
    again = client.post(f"{base}/orchestrators/forever/{instance_id}")  # a finished id may be reused
    assert again.status_code == 202
    client.post(urls["terminatePostUri"].replace("{text}", "done"))


def test_activities_go_through_the_worker_converters(client: httpx.Client) -> None:
    """A custom class crosses the activity boundary both ways; an async activity's failure reaches the orchestrator
    as the extension words it ("Activity function '<name>' failed: <Type>: <message>")."""
    status = wait_done(client, start(client, "money", 21))
    assert status["runtimeStatus"] == "Completed", status
    out = status["output"]
    assert out["cents"] == 42 and out["type"] == "Money"
    assert out["failure"].startswith("Activity function 'boom' failed: RuntimeError: card network down")
