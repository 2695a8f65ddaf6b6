"""A fake Azure AI Foundry project: only the service is fake; the real SDKs talk to it over HTTP.

* azure-core side — `AIProjectClient.agents.create_version` (2.x) and the classic
  `AgentsClient` assistants/threads/runs API (1.x) — is a local HTTP server.
* OpenAI side (2.x conversations and responses) is an `httpx2.MockTransport` handler,
  plugged in with ``get_openai_client(http_client=fake.openai_http_client())``.

The "model" is a script. For 2.x each accepted `responses.create` consumes one `Step`: a
function of (fake, request body) returning output items, or an int HTTP status to fail
with. For 1.x each created run consumes one list of tool-call batches; the run is
``requires_action`` for each batch in turn, then ``completed``. Everything the SDKs send
is recorded, so tests can check what the tools answered.

It is as strict as the real service where a lenient fake would hide a broken conversation
(repo rule 7: no more lenient than Azure). Each rule, and where it comes from:

- **Every function call needs its output before anything else** (Responses API). A request
  chained to a response (``previous_response_id``) or to a conversation whose last response
  has function calls must carry a ``function_call_output`` for each of them, else 400
  "No tool output found for function call <id>." — the error Foundry gives for a
  conversation left with an unanswered call (MicrosoftLearning/mslearn-ai-agents#114,
  microsoft/agent-framework#5041) and OpenAI for a chain (openai/openai-agents-python#673,
  #1061). An output for a call that is not pending is 400 "No tool call found for function
  call output with call_id <id>." (agentscope-ai/AgentTeams#299).
- **A failed request stores nothing.** A 4xx/5xx answer has no response object, so nothing
  chains from it and its outputs are not added to the conversation: the calls stay pending.
- **tool_choice "none"** answers without function calls (OpenAI API reference, `tool_choice`:
  "none means the model will not call any tool").
- **Classic active-run rules.** While a run is queued, in progress, requires action or
  cancelling, adding a message is 400 "Can't add messages to <thread> while a run <run> is
  active." (openai/openai-python#1023; a failed run that was never cancelled locks the
  thread: nasa-petal/bidara-deep-chat#57), and creating a run is 400 "Thread <thread> already
  has an active run <run>." (TripSit/TripBot#939). Cancelling ends it.
- **submit_tool_outputs needs every call id, once, in one request** ("All outputs must be
  submitted in a single request", OpenAI runs API reference; Azure's `SubmitToolOutputsAction`
  lists "the tool calls that must be resolved for the agent thread run to continue").
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline.policies import HeadersPolicy

Output = list[dict[str, Any]] | int
Step = Callable[["FakeFoundry", dict[str, Any]], Output]
ACTIVE_RUN_STATES = ("queued", "in_progress", "requires_action", "cancelling")


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
    """The service fails this request (after having received it): nothing is stored."""
    return lambda fake, body: status


@dataclass
class _State:
    """What a response or conversation is waiting for: its unanswered function calls (and a conversation's items)."""

    pending: list[str] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)


def _error(status: int, message: str, param: str | None = "input") -> httpx2.Response:
    return httpx2.Response(status, json={"error": {"message": message, "type": "invalid_request_error",
                                                   "param": param, "code": None}})


class FakeFoundry:
    """One fake project endpoint; use as a context manager."""

    def __init__(self) -> None:
        self.script: deque[Step] = deque()
        self.classic_runs: deque[list[list[tuple[str, dict[str, Any]]]]] = deque()
        self.responses_requests: list[dict[str, Any]] = []
        self.rejected: list[str] = []  # messages of requests refused by the rules above
        self.tool_outputs: list[dict[str, Any]] = []  # accepted function_call_output items / classic tool_outputs
        self.agent_versions: list[dict[str, Any]] = []
        self.classic_agents: list[dict[str, Any]] = []
        self.calls: dict[str, dict[str, Any]] = {}  # call_id -> function_call item, every call ever made
        self.core_requests: list[tuple[str, str]] = []  # (method, path) of every azure-core request
        self.core_failures = 0  # answer this many azure-core requests with 503 first
        self.core_fail_on: list[tuple[str, str, int]] = []  # (method, path regex, status): fail the next match
        self._ids: Iterator[int] = itertools.count(1)
        self._responses: dict[str, _State] = {}
        self._conversations: dict[str, _State] = {}
        self._runs: dict[str, dict[str, Any]] = {}
        self._active: dict[str, str] = {}  # thread id -> its active run id
        self._versions: dict[str, int] = {}  # agent name -> versions created
        self._lock = threading.RLock()
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
        self.calls[call_id] = item
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
        """Decoded outputs the service accepted for calls of tool `name`, in order."""
        return [json.loads(o["output"]) for o in self.tool_outputs if o["name"] == name]

    def last_output(self, name: str) -> dict[str, Any]:
        return self.outputs_for(name)[-1]

    def pending_calls(self, *, response_id: str | None = None, conversation_id: str | None = None) -> list[str]:
        """The call ids a response or conversation still waits for (empty: it can take a new turn)."""
        state = self._responses.get(response_id or "") or self._conversations.get(conversation_id or "")
        return list(state.pending) if state else []

    # --- OpenAI (httpx2 transport) -------------------------------------------------------------
    def _openai(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        body = json.loads(request.content or b"{}")
        if path.endswith("/openai/v1/conversations"):
            conversation_id = self.new_id("conv")
            self._conversations[conversation_id] = _State()
            return httpx2.Response(200, json={"id": conversation_id, "object": "conversation",
                                              "created_at": int(time.time()), "metadata": {}})
        if m := re.search(r"/openai/v1/conversations/([^/]+)/items$", path):
            return self._conversation_items(m.group(1), request.method, body)
        if not path.endswith("/openai/v1/responses"):
            return httpx2.Response(404, json={"error": {"message": f"fake has no {path}"}})
        with self._lock:
            self.responses_requests.append(body)
            refused = self._check_chain(body)
            if refused is not None:
                self.rejected.append(json.loads(refused.content)["error"]["message"])
                return refused
            if not self.script:
                return _error(400, "fake model script exhausted", None)
            stored = len(self.tool_outputs)
            self._accept(body)  # the model sees the outputs (a step may read them with last_output)
            output = self.script.popleft()(self, body)
            if isinstance(output, int):  # failed after receiving: nothing is stored
                del self.tool_outputs[stored:]
                return httpx2.Response(output, json={"error": {"message": "fake failure", "type": "server_error"}})
            if body.get("tool_choice") == "none":
                output = [i for i in output if i["type"] != "function_call"] or [self.message_item("(no tools)")]
            response_id = self.new_id("resp")
            new_state = _State([i["call_id"] for i in output if i["type"] == "function_call"])
            self._responses[response_id] = new_state
            if body.get("conversation"):
                conversation = self._conversations[_conversation_id(body)]
                inputs = body.get("input")
                given = inputs if isinstance(inputs, list) else [
                    {"type": "message", "role": "user", "status": "completed",
                     "content": [{"type": "input_text", "text": inputs}]}]
                conversation.items.extend([*given, *output])
                conversation.pending = list(new_state.pending)
        return httpx2.Response(200, json={
            "id": response_id, "object": "response", "created_at": int(time.time()), "status": "completed",
            "model": "gpt-4o", "parallel_tool_calls": True, "tool_choice": body.get("tool_choice", "auto"),
            "tools": [], "output": output, "previous_response_id": body.get("previous_response_id"),
        })

    def _check_chain(self, body: dict[str, Any]) -> httpx2.Response | None:
        """The rules of the module docstring for one `responses.create` (None: accepted)."""
        previous, conversation = body.get("previous_response_id"), body.get("conversation")
        if previous and conversation:
            return _error(400, "previous_response_id and conversation cannot be used together.", "conversation")
        if previous and previous not in self._responses:
            return _error(400, f"Previous response with id '{previous}' not found.", "previous_response_id")
        if conversation and _conversation_id(body) not in self._conversations:
            return _error(404, f"Conversation with id '{_conversation_id(body)}' not found.", "conversation")
        state = self._responses.get(previous) or self._conversations.get(_conversation_id(body)) or _State()
        inputs = body.get("input")
        answered = [i["call_id"] for i in (inputs if isinstance(inputs, list) else [])
                    if isinstance(i, dict) and i.get("type") == "function_call_output"]
        for call_id in answered:
            if call_id not in state.pending:
                return _error(400, f"No tool call found for function call output with call_id {call_id}.")
        for call_id in state.pending:
            if call_id not in answered:
                return _error(400, f"No tool output found for function call {call_id}.")
        return None

    def _conversation_items(self, conversation_id: str, method: str, body: dict[str, Any]) -> httpx2.Response:
        """List a conversation's items, or add items to it (outputs only for calls it waits on)."""
        with self._lock:
            conversation = self._conversations.get(conversation_id)
            if conversation is None:
                return _error(404, f"Conversation with id '{conversation_id}' not found.", "conversation_id")
            if method == "POST":
                items = body.get("items") or []
                for item in items:
                    if item.get("type") == "function_call_output" and item.get("call_id") not in conversation.pending:
                        return _error(400, f"No tool call found for function call output with call_id {item.get('call_id')}.")
                for item in items:
                    if item.get("type") == "function_call_output":
                        conversation.pending.remove(item["call_id"])
                        self.tool_outputs.append({**item, "name": self.calls[item["call_id"]]["name"]})
                conversation.items.extend(items)
                data = [{"id": self.new_id("item"), **i} for i in items]
            else:
                data = [{"id": i.get("id") or self.new_id("item"), **i} for i in conversation.items]
        return httpx2.Response(200, json={"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                                          "last_id": data[-1]["id"] if data else None, "has_more": False})

    def _accept(self, body: dict[str, Any]) -> None:
        inputs = body.get("input")
        for item in inputs if isinstance(inputs, list) else []:
            if isinstance(item, dict) and item.get("type") == "function_call_output":
                self.tool_outputs.append({**item, "name": self.calls[item["call_id"]]["name"]})

    # --- azure-core (local HTTP server) ----------------------------------------------------------
    def handle_core(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        path, _, query = path.partition("?")
        path = path.removeprefix("/api/projects/fake-project")
        after = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("after")
        self.core_requests.append((method, path))
        if self.core_failures > 0:
            self.core_failures -= 1
            return 503, {"error": {"code": "unavailable", "message": "fake failure"}}
        for i, (m, pattern, status) in enumerate(self.core_fail_on):
            if m == method and re.fullmatch(pattern, path):
                del self.core_fail_on[i]
                return status, {"error": {"code": "unavailable", "message": "fake failure"}}
        now = int(time.time())
        if m := re.fullmatch(r"/agents/([^/]+)/versions", path):
            self.agent_versions.append(body)
            self._versions[m.group(1)] = self._versions.get(m.group(1), 0) + 1
            version = str(self._versions[m.group(1)])
            return 200, {"object": "agent.version", "id": f"{m.group(1)}:{version}", "name": m.group(1),
                         "version": version, "created_at": now, "definition": body["definition"]}
        if m := re.fullmatch(r"/agents/([^/]+)/versions/([^/]+)", path):
            return (200, {"object": "agent.version.deleted", "name": m.group(1), "version": m.group(2),
                          "deleted": True}) if method == "DELETE" else (404, _not_found(method, path))
        if path == "/assistants" and method == "POST":
            self.classic_agents.append(body)
            return 200, {"id": self.new_id("asst"), "object": "assistant", "created_at": now, "name": body.get("name"),
                         "description": None, "model": body.get("model"), "instructions": body.get("instructions"),
                         "tools": body.get("tools", []), "tool_resources": {}, "temperature": 1, "top_p": 1,
                         "metadata": {}}
        if path == "/threads" and method == "POST":
            return 200, {"id": self.new_id("thread"), "object": "thread", "created_at": now, "tool_resources": {},
                         "metadata": {}}
        if (m := re.fullmatch(r"/threads/([^/]+)/messages", path)) and method == "POST":
            thread_id = m.group(1)
            if thread_id in self._active:
                return self._refuse(f"Can't add messages to {thread_id} while a run {self._active[thread_id]} is active.")
            return 200, {"id": self.new_id("msg"), "object": "thread.message", "created_at": now,
                         "thread_id": thread_id, "status": "completed", "role": body.get("role", "user"),
                         "content": [{"type": "text", "text": {"value": str(body.get("content")), "annotations": []}}],
                         "attachments": [], "metadata": {}, "assistant_id": None, "run_id": None}
        if m := re.fullmatch(r"/threads/([^/]+)/runs", path):
            return self._create_run(m.group(1), body) if method == "POST" else self._list_runs(m.group(1), after)
        if (m := re.fullmatch(r"/threads/[^/]+/runs/([^/]+)", path)) and method == "GET":
            return 200, self._poll(self._runs[m.group(1)])
        if (m := re.fullmatch(r"/threads/[^/]+/runs/([^/]+)/cancel", path)) and method == "POST":
            run = self._runs[m.group(1)]
            if run["status"] in ACTIVE_RUN_STATES:
                run["status"], run["pending"] = "cancelled", None
                self._active.pop(run["thread_id"], None)
            return 200, self._run_json(run)
        if (m := re.fullmatch(r"/threads/[^/]+/runs/([^/]+)/submit_tool_outputs", path)) and method == "POST":
            return self._submit(self._runs[m.group(1)], body)
        return 404, _not_found(method, path)

    def _refuse(self, message: str) -> tuple[int, dict[str, Any]]:
        self.rejected.append(message)
        return 400, {"error": {"code": "invalid_request_error", "message": message}}

    def _create_run(self, thread_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if thread_id in self._active:
            return self._refuse(f"Thread {thread_id} already has an active run {self._active[thread_id]}.")
        run = {"id": self.new_id("run"), "thread_id": thread_id, "assistant_id": body.get("assistant_id"),
               "batches": deque(self.classic_runs.popleft() if self.classic_runs else []), "pending": None,
               "status": "queued"}
        self._runs[run["id"]] = run
        self._active[thread_id] = run["id"]
        return 200, self._run_json(run)

    def _list_runs(self, thread_id: str, after: str | None) -> tuple[int, dict[str, Any]]:
        """Newest first; one page, then an empty one (the SDK's pager follows `last_id` until a page is empty)."""
        runs = [self._run_json(r) for r in reversed(self._runs.values()) if r["thread_id"] == thread_id]
        if after is not None:
            ids = [r["id"] for r in runs]
            runs = runs[ids.index(after) + 1 :] if after in ids else []
        return 200, {"object": "list", "data": runs, "first_id": runs[0]["id"] if runs else None,
                     "last_id": runs[-1]["id"] if runs else None, "has_more": False}

    def _poll(self, run: dict[str, Any]) -> dict[str, Any]:
        if run["status"] in ("queued", "in_progress"):
            if run["batches"]:
                run["pending"] = [{"id": self.new_id("call"), "type": "function",
                                   "function": {"name": name, "arguments": json.dumps(args)}}
                                  for name, args in run["batches"].popleft()]
                run["status"] = "requires_action"
            else:
                run["status"] = "completed"
                self._active.pop(run["thread_id"], None)
        return self._run_json(run)

    def _submit(self, run: dict[str, Any], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if run["status"] != "requires_action":
            return self._refuse(f"Runs in status {run['status']} do not accept tool outputs.")
        expected = sorted(c["id"] for c in run["pending"])
        given = [o.get("tool_call_id") for o in body.get("tool_outputs", [])]
        if sorted(given) != expected:
            return self._refuse(f"Expected tool outputs for call_ids {expected}, got {sorted(map(str, given))}.")
        names = {c["id"]: c["function"]["name"] for c in run["pending"]}
        for out in body["tool_outputs"]:
            self.tool_outputs.append({"call_id": out["tool_call_id"], "output": out["output"],
                                      "name": names[out["tool_call_id"]]})
        run["pending"], run["status"] = None, "queued"
        return 200, self._run_json(run)

    def _run_json(self, run: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": run["id"], "object": "thread.run", "thread_id": run["thread_id"],
            "assistant_id": run["assistant_id"], "status": run["status"], "created_at": int(time.time()),
            "expires_at": None, "started_at": None, "completed_at": None, "cancelled_at": None, "failed_at": None,
            "last_error": None, "model": "gpt-4o", "instructions": "", "tools": [], "incomplete_details": None,
            "usage": None, "metadata": {}, "parallel_tool_calls": True, "tool_resources": {},
            "max_prompt_tokens": None, "max_completion_tokens": None, "truncation_strategy": None,
            "tool_choice": "auto", "response_format": "auto", "temperature": 1, "top_p": 1,
        }
        if run["status"] == "requires_action":
            body["required_action"] = {"type": "submit_tool_outputs",
                                       "submit_tool_outputs": {"tool_calls": run["pending"]}}
        return body


def _conversation_id(body: dict[str, Any]) -> str:
    conversation = body.get("conversation")
    return str(conversation.get("id") if isinstance(conversation, dict) else conversation or "")


def _not_found(method: str, path: str) -> dict[str, Any]:
    return {"error": {"code": "not_found", "message": f"fake has no {method} {path}"}}


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

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    return Handler
