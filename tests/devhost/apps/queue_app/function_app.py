"""devhost's queue test app: a queue trigger with a queue output, fed by an HTTP function.

Queue names come from app settings (`%WORK_QUEUE%`, `%RESULT_QUEUE%`) so every test run
uses its own queues. A message whose body starts with "fail" always raises; each attempt
is appended to the file named by ATTEMPT_LOG so tests can count them.
"""

from __future__ import annotations

import json
import os
import typing

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.queue_trigger(arg_name="msg", queue_name="%WORK_QUEUE%", connection="AzureWebJobsStorage")
@app.queue_output(arg_name="results", queue_name="%RESULT_QUEUE%", connection="AzureWebJobsStorage")
def work(msg: func.QueueMessage, results: func.Out[str]) -> None:
    body = msg.get_body()
    with open(os.environ["ATTEMPT_LOG"], "a", encoding="utf-8") as log:
        log.write(
            json.dumps({"id": msg.id, "body": body.decode("utf-8", "replace"), "dequeue_count": msg.dequeue_count})
            + "\n"
        )
    if body.startswith(b"fail"):
        raise ValueError("this message always fails")
    results.set(
        json.dumps(
            {
                "id": msg.id,
                "upper": body.decode("utf-8").upper(),
                "dequeue_count": msg.dequeue_count,
                "has_times": msg.insertion_time is not None and msg.expiration_time is not None,
                "has_pop_receipt": bool(msg.pop_receipt),
            }
        )
    )


@app.route(route="enqueue", methods=["POST"])
@app.queue_output(arg_name="work_items", queue_name="%WORK_QUEUE%", connection="AzureWebJobsStorage")
def enqueue(req: func.HttpRequest, work_items: func.Out[typing.List[str]]) -> func.HttpResponse:  # noqa: UP006
    # typing.List, not list: the worker refuses `Out[list[str]]` as a non-type annotation.
    """Queues one work item per line of the body (a list value sends several messages)."""
    lines = [line for line in req.get_body().decode("utf-8").splitlines() if line]
    work_items.set(lines)
    return func.HttpResponse(json.dumps({"queued": len(lines)}), status_code=202, mimetype="application/json")
