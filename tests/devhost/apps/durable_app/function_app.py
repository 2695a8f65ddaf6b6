"""A small Durable Functions app for devhost's durable engine tests.

Activities record every execution as a row in a table (`DURABLE_TEST_COUNTER_TABLE`,
PartitionKey = the run's tag), so tests count real executions in Azurite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from datetime import timedelta

import azure.durable_functions as df
import azure.functions as func
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


_table: TableClient | None = None


def _counter() -> TableClient:
    global _table
    if _table is None:
        conn = os.environ["AzureWebJobsStorage"]  # noqa: SIM112 - the Functions setting's own name
        table = TableClient.from_connection_string(conn, os.environ["DURABLE_TEST_COUNTER_TABLE"])
        with contextlib.suppress(ResourceExistsError):
            table.create_table()
        _table = table
    return _table


_running = 0  # `record` activities executing in this process right now
_running_lock = threading.Lock()


def _record(tag: str, item: str, running: int = 0) -> None:
    """Record one execution of `item` in the run `tag` (with how many ran at once)."""
    _counter().create_entity(
        {"PartitionKey": tag, "RowKey": f"{item}~{uuid.uuid4().hex}", "Item": item, "Running": running}
    )


def _executions(tag: str, item: str) -> int:
    return sum(1 for r in _counter().query_entities(f"PartitionKey eq '{tag}'") if r["Item"] == item)


@app.route(route="start/{name}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    body = req.get_body()
    instance_id = await client.start_new(
        req.route_params["name"], req.params.get("instance_id"), req.get_json() if body else None
    )
    return client.create_check_status_response(req, instance_id)


@app.route(route="status/{instance_id}", methods=["GET"])
@app.durable_client_input(client_name="client")
async def status(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    st = await client.get_status(req.route_params["instance_id"], show_history=True)
    return func.HttpResponse(status_code=200, mimetype="application/json", body=json.dumps(st.to_json()))


@app.orchestration_trigger(context_name="context")
def fan_out(context: df.DurableOrchestrationContext):
    spec = context.get_input()
    tasks = [
        context.call_activity("record", {"tag": spec["tag"], "i": i, "sleep": spec.get("sleep", 0)})
        for i in range(spec["n"])
    ]
    results = yield context.task_all(tasks)
    context.set_custom_status({"done": len(results)})
    return sum(results)


@app.orchestration_trigger(context_name="context")
def flaky_run(context: df.DurableOrchestrationContext):
    spec = context.get_input()
    retry = df.RetryOptions(first_retry_interval_in_milliseconds=200, max_number_of_attempts=spec["attempts"])
    first = yield context.call_activity_with_retry("flaky", retry, {"tag": spec["tag"], "fail": spec["fail"]})
    second = yield context.call_activity("record", {"tag": spec["tag"], "i": 99, "sleep": 0})
    return [first, second]


@app.orchestration_trigger(context_name="context")
def flaky_fan(context: df.DurableOrchestrationContext):
    """Parallel retries: several failures and retry timers interleave with other results."""
    spec = context.get_input()
    retry = df.RetryOptions(first_retry_interval_in_milliseconds=100, max_number_of_attempts=3)
    tasks = [
        context.call_activity_with_retry("flaky", retry, {"tag": f"{spec['tag']}-{k}", "fail": 1}) for k in range(3)
    ]
    tasks.append(context.call_activity("record", {"tag": spec["tag"], "i": 7, "sleep": 0}))
    results = yield context.task_all(tasks)
    after = yield context.call_activity("record", {"tag": spec["tag"], "i": 8, "sleep": 0})
    return [*results, after]


@app.orchestration_trigger(context_name="context")
def big(context: df.DurableOrchestrationContext):
    """Payloads past Table Storage's 64 KiB property limit, in and out."""
    size = context.get_input()
    echoed = yield context.call_activity("echo", {"blob": "x" * size})
    return {"blob": echoed["blob"] + "y"}


@app.orchestration_trigger(context_name="context")
def big_retry(context: df.DurableOrchestrationContext):
    """A retried activity with a large input: the retry bookkeeping holds the input too."""
    size = context.get_input()
    retry = df.RetryOptions(first_retry_interval_in_milliseconds=100, max_number_of_attempts=2)
    echoed = yield context.call_activity_with_retry("echo", retry, {"blob": "r" * size})
    return len(echoed["blob"])


@app.orchestration_trigger(context_name="context")
def sleeper(context: df.DurableOrchestrationContext):
    seconds = context.get_input()
    started = context.current_utc_datetime
    yield context.create_timer(started + timedelta(seconds=seconds))
    return (context.current_utc_datetime - started).total_seconds()


@app.orchestration_trigger(context_name="context")
def approval(context: df.DurableOrchestrationContext):
    context.set_custom_status("waiting for approval")
    timeout = context.create_timer(context.current_utc_datetime + timedelta(seconds=60))
    event = context.wait_for_external_event("approve")
    winner = yield context.task_any([event, timeout])
    if winner == event:
        timeout.cancel()
        context.set_custom_status("approved")
        return {"approved_by": event.result["by"]}
    return "timed out"


@app.orchestration_trigger(context_name="context")
def approval_then_work(context: df.DurableOrchestrationContext):
    """The billing run's approval wait: the timer is cancelled, then fires while the run still works."""
    context.set_custom_status("waiting for approval")
    timeout = context.create_timer(context.current_utc_datetime + timedelta(seconds=4))
    event = context.wait_for_external_event("approve")
    winner = yield context.task_any([event, timeout])
    if winner != event:
        return "timed out"
    timeout.cancel()
    context.set_custom_status("working")
    value = yield context.call_activity("record", {"tag": f"late-{context.instance_id}", "i": 21, "sleep": 6})
    return {"approved_by": event.result["by"], "value": value}


@app.orchestration_trigger(context_name="context")
def parent(context: df.DurableOrchestrationContext):
    spec = context.get_input()
    children = [context.call_sub_orchestrator("child", {"tag": spec["tag"], "base": b}) for b in (10, 20)]
    retry = df.RetryOptions(first_retry_interval_in_milliseconds=100, max_number_of_attempts=2)
    children.append(context.call_sub_orchestrator_with_retry("child", retry, {"tag": spec["tag"], "base": 30}))
    results = yield context.task_all(children)
    return results


@app.orchestration_trigger(context_name="context")
def child(context: df.DurableOrchestrationContext):
    spec = context.get_input()
    first = yield context.call_activity("record", {"tag": spec["tag"], "i": spec["base"], "sleep": 0})
    second = yield context.call_activity("record", {"tag": spec["tag"], "i": spec["base"] + 1, "sleep": 0})
    return {"parent": context.parent_instance_id, "sum": first + second}


@app.orchestration_trigger(context_name="context")
def forever(context: df.DurableOrchestrationContext):
    yield context.wait_for_external_event("never")
    return "unreachable"


@app.orchestration_trigger(context_name="context")
def counter(context: df.DurableOrchestrationContext):
    n = context.get_input()
    if n < 3:
        context.continue_as_new(n + 1)
        return None
    value = yield context.call_activity("record", {"tag": f"counter-{context.instance_id}", "i": n, "sleep": 0})
    return {"n": n, "doubled": value}


@app.orchestration_trigger(context_name="context")
def broken(context: df.DurableOrchestrationContext):
    yield context.call_activity("record", {"tag": "broken", "i": 0, "sleep": 0})
    raise ValueError("orchestrator gave up")


@app.orchestration_trigger(context_name="context")
def stalled_any(context: df.DurableOrchestrationContext):
    """task_any over a task started earlier: the SDK emits WhenAny([third]) only (see test_durable_shim.py)."""
    tag = context.get_input()
    fast = context.call_activity("step", {"tag": tag, "i": "fast", "sleep": 0})
    slow = context.call_activity("step", {"tag": tag, "i": "slow", "sleep": 1})
    yield context.task_any([fast, slow])
    third = context.call_activity("step", {"tag": tag, "i": "third", "sleep": 3})
    yield context.task_any([slow, third])
    after = yield context.call_activity("step", {"tag": tag, "i": "after", "sleep": 0})
    return after


_steps = 0  # start/end marks of `step` activities in this process, in order


@app.activity_trigger(input_name="item")
def step(item: dict) -> str:
    """Record `<i>:start` and `<i>:end` with a process-wide order number (one devhost process)."""
    global _steps
    with _running_lock:
        _steps += 1
        _record(item["tag"], f"{item['i']}:start", _steps)
    time.sleep(item["sleep"])
    with _running_lock:
        _steps += 1
        _record(item["tag"], f"{item['i']}:end", _steps)
    return str(item["i"])


@app.activity_trigger(input_name="item")
def record(item: dict) -> int:
    global _running
    with _running_lock:
        _running += 1
        running = _running
    try:
        _record(item["tag"], str(item["i"]), running)
        if item.get("sleep"):
            time.sleep(item["sleep"])
        return int(item["i"]) * 2
    finally:
        with _running_lock:
            _running -= 1


@app.activity_trigger(input_name="payload")
def echo(payload: dict) -> dict:
    return payload


@app.activity_trigger(input_name="item")
async def flaky(item: dict) -> str:
    await asyncio.sleep(0)
    _record(item["tag"], "flaky")
    attempt = _executions(item["tag"], "flaky")
    if attempt <= item["fail"]:
        raise RuntimeError(f"transient failure on attempt {attempt}")
    return f"ok on attempt {attempt}"


class Money:
    """A custom class crossing the activity boundary (the worker's `__class__`/`__data__` envelope)."""

    def __init__(self, cents: int) -> None:
        self.cents = cents

    @staticmethod
    def to_json(obj: Money) -> dict:
        return {"cents": obj.cents}

    @staticmethod
    def from_json(data: dict) -> Money:
        return Money(data["cents"])


@app.orchestration_trigger(context_name="context")
def money(context: df.DurableOrchestrationContext):
    doubled = yield context.call_activity("double_money", Money(context.get_input()))
    try:
        yield context.call_activity("boom", None)
    except Exception as exc:  # the activity's failure, as the extension reports it
        return {"cents": doubled.cents, "type": type(doubled).__name__, "failure": str(exc)}
    return "unreachable"


@app.activity_trigger(input_name="money")
def double_money(money: Money) -> Money:
    if not isinstance(money, Money):
        raise TypeError(f"expected Money, got {type(money).__name__}")
    return Money(money.cents * 2)


@app.activity_trigger(input_name="nothing")
async def boom(nothing: str) -> str:
    await asyncio.sleep(0)
    raise RuntimeError("card network down")
