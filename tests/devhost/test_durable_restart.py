"""Killing devhost (SIGKILL) mid-run and starting it again on the same Azurite resumes the orchestration.

An activity whose result was recorded (in the instance's inbox or history) before the
crash must not run again; activities in flight at the crash run again (at-least-once).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from devhost.durable.store import DurableStore
from devhost.services import Service, start_devhost
from tests.devhost.test_durable import APP_DIR, SYSTEM_KEY, durable_env, executions, start, wait_done

SYSTEM_KEY_HEADER = {"x-functions-key": SYSTEM_KEY}

pytestmark = pytest.mark.integration


def completed_items(store: DurableStore, instance_id: str) -> set[str]:
    """Items whose activity result the engine had recorded: TaskCompleted in the inbox or the history."""
    inst = store.get_instance(instance_id)
    assert inst is not None
    rows = store.load_history(instance_id, inst.generation, inst.history_length)
    scheduled = {r.event["EventId"]: r.event["Input"] for r in rows if r.event["EventType"] == 4}
    done = {r.event["TaskScheduledId"] for r in rows if r.event["EventType"] == 5}
    done |= {i.event["TaskScheduledId"] for i in store.load_inbox(instance_id) if i.event["EventType"] == 5}
    return {str(json.loads(scheduled[d])["i"]) for d in done}


def test_sigkill_mid_run_resumes_without_rerunning_completed_activities(azurite: Service, artifacts_dir: Path) -> None:
    env = durable_env(azurite)
    log_path = artifacts_dir / "devhost-durable-restart.log"
    log_path.unlink(missing_ok=True)
    n = 24
    host = start_devhost(APP_DIR, env, log_path=log_path)
    try:
        with httpx.Client(base_url=host.url, timeout=30, headers=SYSTEM_KEY_HEADER) as client:
            urls = start(client, "fan_out", {"tag": "crash", "n": n, "sleep": 0.5})
        deadline = time.monotonic() + 30
        while sum(executions(env, "crash").values()) < 10:  # first wave of 8 done, second wave running
            assert time.monotonic() < deadline, "activities never started"
            time.sleep(0.05)
    finally:
        host.kill()

    store = DurableStore(env["AzureWebJobsStorage"], env["DURABLE_TEST_HUB"])
    recorded = completed_items(store, urls["id"])
    before = executions(env, "crash")
    in_flight = set(before) - recorded
    assert recorded, "no activity had completed before the kill"
    assert in_flight, "no activity was in flight at the kill"

    host = start_devhost(APP_DIR, env, log_path=log_path, port=host.port)  # the status URLs name the port
    try:
        with httpx.Client(base_url=host.url, timeout=30, headers=SYSTEM_KEY_HEADER) as client:
            status = wait_done(client, urls, timeout=60)
    finally:
        host.stop()
    assert status["runtimeStatus"] == "Completed"
    assert status["output"] == sum(2 * i for i in range(n))
    after = executions(env, "crash")
    assert set(after) == {str(i) for i in range(n)}
    assert {item: after[item] for item in recorded} == dict.fromkeys(recorded, 1)
    assert all(after[item] >= 1 for item in in_flight)
    assert f"fan_out ({urls['id']}) resumed from engine" in log_path.read_text()


def test_a_second_devhost_on_the_same_task_hub_leaves_live_work_alone(azurite: Service, artifacts_dir: Path) -> None:
    env = durable_env(azurite)
    for n in (1, 2):
        (artifacts_dir / f"devhost-durable-shared-{n}.log").unlink(missing_ok=True)
    first = start_devhost(APP_DIR, env, log_path=artifacts_dir / "devhost-durable-shared-1.log")
    second: Service | None = None
    try:
        with httpx.Client(base_url=first.url, timeout=30, headers=SYSTEM_KEY_HEADER) as client:
            urls = start(client, "fan_out", {"tag": "shared", "n": 8, "sleep": 3})
            deadline = time.monotonic() + 20
            while sum(executions(env, "shared").values()) < 8:
                assert time.monotonic() < deadline, "activities never started"
                time.sleep(0.05)
            second = start_devhost(APP_DIR, env, log_path=artifacts_dir / "devhost-durable-shared-2.log")
            status = wait_done(client, urls, timeout=30)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert status["output"] == sum(2 * i for i in range(8))
    assert executions(env, "shared") == {str(i): 1 for i in range(8)}
    assert "resumed from engine" not in (artifacts_dir / "devhost-durable-shared-2.log").read_text()
