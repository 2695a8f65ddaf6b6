"""A fault-injecting HTTP proxy for end-to-end tests: faults at the transport, real code everywhere.

Put it in front of localstripe (`STRIPE_API_BASE`) to make Stripe answer 500 *after* it
created the object, or in front of the app's proxy route (`SPENDGATE_PROXY_URL`) to make
the activity see a failure after the proxy succeeded, or a 409 `idempotency_key_in_use`.
A `rule(request, attempt)` decides per request; `attempt` counts requests for the same
billing item (1 for the first). An optional `respond(request, status, body)` may rewrite
the upstream's answer to a forwarded request (to give localstripe's answers the shape real
Stripe gives; each use cites the Stripe documentation it follows).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import httpx

from devhost.services import free_port

PASS = "pass"
FAIL_AFTER = "fail_after"  # forward, then answer 500 instead of the real answer
IN_USE_BEFORE = "in_use_before"  # answer 409 idempotency_key_in_use without forwarding
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


@dataclass(frozen=True)
class Seen:
    """One request as the rule sees it."""

    method: str
    path: str
    idempotency_key: str | None
    form: dict[str, str]
    stripe_version: str | None = None

    @property
    def item_index(self) -> int | None:
        index = self.form.get("metadata[item_index]")
        return int(index) if index is not None else None

    @property
    def item_key(self) -> str | None:
        """Which billing item this is (from the charge's metadata), else its Idempotency-Key."""
        run, index = self.form.get("metadata[orchestration_id]"), self.form.get("metadata[item_index]")
        return f"{run}-{index}" if run and index else self.idempotency_key


Rule = Callable[[Seen, int], str]
Respond = Callable[[Seen, int, bytes], tuple[int, bytes] | None]


class FaultProxy:
    """A threaded forwarding proxy on 127.0.0.1 applying `rule` to every request."""

    def __init__(self, target: str, rule: Rule, respond: Respond | None = None) -> None:
        self.target = target.rstrip("/")
        self.rule = rule
        self.respond = respond
        self.attempts: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=60)
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()

    def _decide(self, seen: Seen) -> str:
        with self._lock:
            attempt = 1
            if seen.item_key:
                self.attempts[seen.item_key] += 1
                attempt = self.attempts[seen.item_key]
            action = self.rule(seen, attempt)
            if action != PASS:
                self.injected[action] += 1
            return action

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                form = {}
                if "form-urlencoded" in (self.headers.get("Content-Type") or ""):
                    form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                seen = Seen(self.command, self.path.split("?")[0], self.headers.get("Idempotency-Key"), form,
                            self.headers.get("Stripe-Version"))
                action = proxy._decide(seen)
                if action == IN_USE_BEFORE:
                    self._answer(
                        409,
                        {"Stripe-Should-Retry": "true"},
                        {
                            "error": {
                                "type": "invalid_request_error",
                                "code": "idempotency_key_in_use",
                                "message": "injected: a request with this key is in flight",
                            }
                        },
                    )
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                upstream = proxy._http.request(self.command, proxy.target + self.path, headers=headers, content=body)
                if action == FAIL_AFTER:
                    self._answer(500, {}, {"error": {"type": "api_error", "message": "injected after forwarding"}})
                    return
                out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
                status, content = upstream.status_code, upstream.content
                rewritten = proxy.respond(seen, status, content) if proxy.respond else None
                if rewritten is not None:
                    status, content = rewritten
                    out_headers["Content-Type"] = "application/json"
                    with proxy._lock:
                        proxy.injected["rewritten"] += 1
                self._raw(status, out_headers, content)

            def _answer(self, status: int, headers: dict[str, str], body: dict[str, object]) -> None:
                self._raw(status, {**headers, "Content-Type": "application/json"}, json.dumps(body).encode())

            def _raw(self, status: int, headers: dict[str, str], content: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_DELETE = _any

        return Handler
