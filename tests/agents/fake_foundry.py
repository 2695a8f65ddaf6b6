"""A fake Azure AI Foundry project: only the service is fake; the real SDKs talk to it over HTTP.

* azure-core side — `AIProjectClient.agents.create_version` (2.x) and the classic
  `AgentsClient` assistants/threads/runs API (1.x) — is a local HTTP server.
* OpenAI side (2.x conversations and responses) is an `httpx2.MockTransport` handler,
  plugged in with ``get_openai_client(http_client=fake.openai_http_client())``.

The "model" is a script. For 2.x each `responses.create` consumes one `Step`: a
function of (fake, request body) returning output items, or an int HTTP status to fail
with. For 1.x each created run consumes one list of tool-call batches; the run is
``requires_action`` for each batch in turn, then ``completed``. Everything the SDKs send
is recorded, so tests can check what the tools answered.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline.policies import HeadersPolicy

Output = list[dict[str, Any]] | int
Step = Callable[["FakeFoundry", dict[str, Any]], Output]


class FakeCredential:
    """A TokenCredential that hands out a fixed token (nothing real to authenticate to)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-token", int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return AccessTokenInfo("fake-token", int(time.time()) + 3600)


# --- script helpers ------------------------------------------------------------------------
def call(name: str, **arguments: Any) -> Step:
    """The model calls one function."""
    return lambda fake, body: [fake.function_call_item(name, arguments)]


def calls(*pairs: tuple[str, dict[str, Any]]) -> Step:
    """The model calls several functions in one response (parallel tool calls)."""
    return lambda fake, body: [fake.function_call_item(name, args) for name, args in pairs]


def say(text: str) -> Step:
    """The model answers in words."""
    return lambda fake, body: [fake.message_item(text)]


def fail(status: int) -> Step:
    """The service fails this request (after having received it)."""
    return lambda fake, body: status


class FakeFoundry:
    """One fake project endpoint; use as a context manager."""

    def __init__(self) -> None:
        self.script: deque[Step] = deque()
        self.classic_runs: deque[list[list[tuple[str, dict[str, Any]]]]] = deque()
        self.responses_requests: list[dict[str, Any]] = []
        self.tool_outputs: list[dict[str, Any]] = []  # function_call_output items / classic tool_outputs
        self.agent_versions: list[dict[str, Any]] = []
        self.classic_agents: list[dict[str, Any]] = []
        self.pending_calls: dict[str, dict[str, Any]] = {}  # call_id -> function_call item
        self.core_requests: list[tuple[str, str]] = []  # (method, path) of every azure-core request
        self.core_failures = 0  # answer this many azure-core requests with 503 first
        self._ids: Iterator[int] = itertools.count(1)
        self._runs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}/api/projects/fake-project"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeFoundry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what the SDK clients need ------------------------------------------------------------
    @property
    def azure_core_kwargs(self) -> dict[str, Any]:
        """Client kwargs for plain http: the bearer policy refuses http://, a header policy does not."""
        return {"authentication_policy": HeadersPolicy({"Authorization": "Bearer fake-token"})}

    def openai_http_client(self) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.MockTransport(self._openai))

    # --- items ------------------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}"

    def function_call_item(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        call_id = self.new_id("call")
        item = {
            "type": "function_call",
            "id": self.new_id("fc"),
            "call_id": call_id,
            "name": name,
            "arguments": json.dumps(arguments),
            "status": "completed",
        }
        self.pending_calls[call_id] = item
        return item

    def message_item(self, text: str) -> dict[str, Any]:
        return {
            "type": "message",
            "id": self.new_id("msg"),
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }

    def outputs_for(self, name: str) -> list[dict[str, Any]]:
        """Decoded outputs the client posted for calls of tool `name`, in order."""
        return [json.loads(o["output"]) for o in self.tool_outputs if o["name"] == name]

    def last_output(self, name: str) -> dict[str, Any]:
        return self.outputs_for(name)[-1]

    # --- OpenAI (httpx2 transport) -------------------------------------------------------------
    def _openai(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        body = json.loads(request.content or b"{}")
        if path.endswith("/openai/v1/conversations"):
            return httpx2.Response(
                200,
                json={
                    "id": self.new_id("conv"),
                    "object": "conversation",
                    "created_at": int(time.time()),
                    "metadata": {},
                },
            )
        if not path.endswith("/openai/v1/responses"):
            return httpx2.Response(404, json={"error": {"message": f"fake has no {path}"}})
        with self._lock:
            self.responses_requests.append(body)
            inputs = body.get("input")
            for item in inputs if isinstance(inputs, list) else []:
                if item.get("type") == "function_call_output":
                    call = self.pending_calls.pop(item["call_id"], None)
                    if call is None:  # the real service rejects an output for an unknown call
                        return httpx2.Response(400, json={"error": {"message": f"no call {item['call_id']}"}})
                    self.tool_outputs.append({**item, "name": call["name"]})
            if not self.script:
                return httpx2.Response(400, json={"error": {"message": "fake model script exhausted"}})
            output = self.script.popleft()(self, body)
        if isinstance(output, int):
            return httpx2.Response(output, json={"error": {"message": "fake failure", "type": "server_error"}})
        return httpx2.Response(
            200,
            json={
                "id": self.new_id("resp"),
                "object": "response",
                "created_at": int(time.time()),
                "status": "completed",
                "model": "gpt-4o",
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
                "output": output,
            },
        )

    # --- azure-core (local HTTP server) ----------------------------------------------------------
    def handle_core(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        path = path.split("?", 1)[0].removeprefix("/api/projects/fake-project")
        self.core_requests.append((method, path))
        if self.core_failures > 0:
            self.core_failures -= 1
            return 503, {"error": {"code": "unavailable", "message": "fake failure"}}
        now = int(time.time())
        if m := re.fullmatch(r"/agents/([^/]+)/versions", path):
            self.agent_versions.append(body)
            version = str(sum(1 for _ in self.agent_versions))
            return 200, {
                "object": "agent.version",
                "id": f"{m.group(1)}:{version}",
                "name": m.group(1),
                "version": version,
                "created_at": now,
                "definition": body["definition"],
            }
        if path == "/assistants" and method == "POST":
            self.classic_agents.append(body)
            return 200, {
                "id": self.new_id("asst"),
                "object": "assistant",
                "created_at": now,
                "name": body.get("name"),
                "description": None,
                "model": body.get("model"),
                "instructions": body.get("instructions"),
                "tools": body.get("tools", []),
                "tool_resources": {},
                "temperature": 1,
                "top_p": 1,
                "metadata": {},
            }
        if path == "/threads" and method == "POST":
            return 200, {
                "id": self.new_id("thread"),
                "object": "thread",
                "created_at": now,
                "tool_resources": {},
                "metadata": {},
            }
        if (m := re.fullmatch(r"/threads/([^/]+)/messages", path)) and method == "POST":
            return 200, {
                "id": self.new_id("msg"),
                "object": "thread.message",
                "created_at": now,
                "thread_id": m.group(1),
                "status": "completed",
                "role": body.get("role", "user"),
                "content": [{"type": "text", "text": {"value": str(body.get("content")), "annotations": []}}],
                "attachments": [],
                "metadata": {},
                "assistant_id": None,
                "run_id": None,
            }
        if (m := re.fullmatch(r"/threads/([^/]+)/runs", path)) and method == "POST":
            run = {
                "id": self.new_id("run"),
                "thread_id": m.group(1),
                "assistant_id": body.get("assistant_id"),
                "batches": deque(self.classic_runs.popleft() if self.classic_runs else []),
                "pending": None,
            }
            self._runs[run["id"]] = run
            return 200, self._run_json(run, "queued")
        if (m := re.fullmatch(r"/threads/[^/]+/runs/([^/]+)", path)) and method == "GET":
            run = self._runs[m.group(1)]
            if run["pending"] is None and run["batches"]:
                batch = run["batches"].popleft()
                run["pending"] = [
                    {
                        "id": self.new_id("call"),
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(args)},
                    }
                    for name, args in batch
                ]
            if run["pending"] is not None:
                return 200, self._run_json(run, "requires_action")
            return 200, self._run_json(run, "completed")
        if (m := re.fullmatch(r"/threads/[^/]+/runs/([^/]+)/submit_tool_outputs", path)) and method == "POST":
            run = self._runs[m.group(1)]
            names = {c["id"]: c["function"]["name"] for c in run["pending"] or []}
            for out in body.get("tool_outputs", []):
                self.tool_outputs.append(
                    {
                        "call_id": out["tool_call_id"],
                        "output": out["output"],
                        "name": names.get(out["tool_call_id"], "?"),
                    }
                )
            run["pending"] = None
            return 200, self._run_json(run, "queued")
        return 404, {"error": {"code": "not_found", "message": f"fake has no {method} {path}"}}

    def _run_json(self, run: dict[str, Any], status: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": run["id"],
            "object": "thread.run",
            "thread_id": run["thread_id"],
            "assistant_id": run["assistant_id"],
            "status": status,
            "created_at": int(time.time()),
            "expires_at": None,
            "started_at": None,
            "completed_at": None,
            "cancelled_at": None,
            "failed_at": None,
            "last_error": None,
            "model": "gpt-4o",
            "instructions": "",
            "tools": [],
            "incomplete_details": None,
            "usage": None,
            "metadata": {},
            "parallel_tool_calls": True,
            "tool_resources": {},
            "max_prompt_tokens": None,
            "max_completion_tokens": None,
            "truncation_strategy": None,
            "tool_choice": "auto",
            "response_format": "auto",
            "temperature": 1,
            "top_p": 1,
        }
        if status == "requires_action":
            body["required_action"] = {
                "type": "submit_tool_outputs",
                "submit_tool_outputs": {"tool_calls": run["pending"]},
            }
        return body


def _handler_for(fake: FakeFoundry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            with fake._lock:
                status, payload = fake.handle_core(method, self.path, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    return Handler
