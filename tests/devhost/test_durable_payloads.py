"""Large payloads in devhost's durable engine: blobs as in the extension's Azure Storage provider.

Table Storage caps a string property at 64 KiB (UTF-16, Azurite enforces it); the provider keeps
larger inputs, results and history properties as gzip blobs in `{taskhub}-largemessages`
(devhost/durable/payloads.py). An episode that cannot be committed at all fails its instance
visibly instead of leaving it Running forever.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from devhost.durable.payloads import container_name
from devhost.durable.store import DurableStore
from devhost.services import Service, free_port, start_devhost
from tests.devhost.test_durable import APP_DIR, SYSTEM_KEY, durable_env, start, wait_done

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(azurite: Service) -> dict[str, str]:
    return durable_env(azurite)


@pytest.fixture(scope="module")
def client(env: dict[str, str], artifacts_dir: Path) -> Iterator[httpx.Client]:
    svc = start_devhost(APP_DIR, env, log_path=artifacts_dir / "devhost-durable-payloads.log")
    with httpx.Client(base_url=svc.url, timeout=30, headers={"x-functions-key": SYSTEM_KEY}) as c:
        yield c
    svc.stop()


def blobs_of(env: dict[str, str], instance_id: str) -> list[str]:
    service = BlobServiceClient.from_connection_string(env["AzureWebJobsStorage"])
    container = service.get_container_client(container_name(env["DURABLE_TEST_HUB"]))
    return [b.name for b in container.list_blobs(name_starts_with=f"{instance_id}/")]


def test_a_1_mb_activity_result_goes_to_blobs_and_back(client: httpx.Client, env: dict[str, str]) -> None:
    size = 1_048_576
    urls = start(client, "big", size, instance_id="big-" + uuid.uuid4().hex[:6])
    status = wait_done(client, urls, timeout=60, showHistory="true", showHistoryOutput="true")
    assert status["runtimeStatus"] == "Completed"
    assert status["output"]["blob"] == "x" * size + "y"
    completed = next(e for e in status["historyEvents"] if e["EventType"] == "TaskCompleted")
    assert len(completed["Result"]["blob"]) == size
    # the rows hold blob names, the blobs hold the payloads (scheduled input, result, output)
    names = blobs_of(env, urls["id"])
    assert len(names) >= 3 and all(n.endswith(".json.gz") for n in names), names
    history = TableServiceClient.from_connection_string(env["AzureWebJobsStorage"]).get_table_client(
        f"{env['DURABLE_TEST_HUB']}History"
    )
    rows = list(history.query_entities(f"PartitionKey eq '{urls['id']}'"))
    assert any("EventBlobName" in r for r in rows)
    assert all(len(str(v)) <= 30_720 for r in rows for v in r.values())  # nothing near 64 KiB inline
    # purge removes the blobs with the rows
    assert client.delete(urls["purgeHistoryDeleteUri"]).status_code == 200
    assert blobs_of(env, urls["id"]) == []


def test_a_retried_activity_with_a_large_input_runs(client: httpx.Client, env: dict[str, str]) -> None:
    """The 400-customer hang of issue 14: the retry bookkeeping of a 100 KB input no longer fits a property."""
    status = wait_done(client, start(client, "big_retry", 100_000), timeout=60)
    assert (status["runtimeStatus"], status["output"]) == ("Completed", 100_000)


def test_an_episode_that_cannot_commit_fails_the_instance_visibly(
    azurite: Service, artifacts_dir: Path
) -> None:
    """Blob storage unreachable: the large activity input cannot be stored, the episode keeps failing,
    and the instance ends Failed with the reason (not Running forever)."""
    env = durable_env(azurite)
    dead = free_port()
    env["AzureWebJobsStorage"] = re.sub(
        r"BlobEndpoint=http://127\.0\.0\.1:\d+/", f"BlobEndpoint=http://127.0.0.1:{dead}/", env["AzureWebJobsStorage"]
    )
    assert f":{dead}/" in env["AzureWebJobsStorage"]
    svc = start_devhost(APP_DIR, env, log_path=artifacts_dir / "devhost-durable-deadblob.log")
    try:
        with httpx.Client(base_url=svc.url, timeout=30, headers={"x-functions-key": SYSTEM_KEY}) as client:
            urls = start(client, "big", 100_000)
            status = wait_done(client, urls, timeout=120)
    finally:
        svc.stop()
    assert status["runtimeStatus"] == "Failed"
    assert "could not run or commit an episode" in status["output"]
    assert "after 6 attempts" in status["output"]
    store = DurableStore(env["AzureWebJobsStorage"], env["DURABLE_TEST_HUB"])
    inst = store.get_instance(urls["id"])
    assert inst is not None and inst.status == "Failed"
