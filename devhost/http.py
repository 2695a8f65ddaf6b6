"""devhost's HTTP server: HTTP-triggered functions and the durable webhooks.

A `ThreadingHTTPServer` gives every connection its own daemon thread; the function itself
runs in the worker library (`devhost.worker`: sync functions on its thread pool, async
ones on its event loop). Per request: route match (404), method (405), auth level
(401 unless `anonymous`; a key in `x-functions-key` or `?code=`, checked with Azure's
rules in `devhost.config.HostKeys`: `admin` needs the master key), then the function,
with at most `perInstanceConcurrency` HTTP functions running at once (Flex Consumption's
per-instance HTTP concurrency; later requests wait). The host's own answers are small
JSON errors; an unhandled exception in a function is a 500 whose traceback goes to the
devhost log only. Requests under `/runtime/webhooks/durabletask/` go to the durable
engine and need the extension's system key or the master key, as on Azure; the durable
client binding's `rpcBaseUrl` points at a second listener on 127.0.0.1 only, as the
extension's local RPC endpoint does, which needs no key. A route that starts with `admin`
or `runtime` is refused at start ("The specified route conflicts with one or more built
in routes.", azure-functions-host `ScriptHost.ValidateFunction` and its tests). Neither
keys nor `code` nor bodies are ever logged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from devhost import protocol
from devhost.config import HostKeys
from devhost.invoke import FunctionFailed, HttpRequestData, Invoker, log_invocation, sent_summary
from devhost.loader import FunctionIndex, FunctionInfo
from devhost.routes import RouteTemplate, split_path

log = logging.getLogger("devhost")

DURABLE_WEBHOOK_PREFIX = "/runtime/webhooks/durabletask"
DURABLE_RPC_PREFIX = "/durabletask"
# The Functions host keeps these for itself (`/admin/...` host API, `/runtime/webhooks/...`): a function whose
# route, before the prefix is added, starts with one is refused ("The specified route conflicts with one or more
# built in routes."; ScriptHost.ValidateHttpFunction in Azure/azure-functions-host, src/WebJobs.Script/Host/
# ScriptHost.cs, a plain lowercase StartsWith). Azure puts that function in error; devhost refuses to start.
RESERVED_ROUTE_PREFIXES = ("admin", "runtime")
ALL_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"})


class DurableWebhooks(Protocol):
    """The part of the durable engine the HTTP server talks to."""

    def handle_http(
        self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]: ...


@dataclass(frozen=True)
class HttpRoute:
    """An HTTP-triggered function with its parsed route."""

    function: FunctionInfo
    template: RouteTemplate
    methods: frozenset[str]
    auth_level: str


class RouteConflict(ValueError):
    """A function's route collides with the host's built-in routes; the host refuses it."""


def build_routes(index: FunctionIndex, route_prefix: str) -> list[HttpRoute]:
    """The app's HTTP routes, most specific first (ASP.NET precedence, then template text).

    Each route is `<route_prefix>/<route>`, or the route alone when the prefix is empty, exactly as
    the host builds it (`WebJobsRouteBuilder.BuildRouteTemplate` in Azure/azure-webjobs-sdk-extensions);
    a function without a route is routed at its name.
    """
    routes = []
    for fn in index.of_trigger("httpTrigger"):
        route = str(fn.trigger.get("route") or fn.name).strip("/")
        if route.lower().startswith(RESERVED_ROUTE_PREFIXES):
            raise RouteConflict(
                f"function {fn.name}: route '{route}': The specified route conflicts with one or more built in routes."
            )
        full = f"{route_prefix}/{route}" if route_prefix else route
        methods = fn.trigger.get("methods")
        routes.append(
            HttpRoute(
                fn,
                RouteTemplate.parse(full),
                frozenset(str(m).upper() for m in methods) if methods else ALL_METHODS,
                str(fn.trigger.get("authLevel") or "function").lower(),
            )
        )
    routes.sort(key=lambda r: (r.template.precedence, r.template.template.lower()))
    return routes


def error_body(status: int, code: str, message: str) -> bytes:
    """The host's own JSON error (Stripe-shaped like the app's, so clients parse one shape)."""
    kind = "api_error" if status >= 500 else "invalid_request_error"
    return json.dumps({"error": {"type": kind, "code": code, "message": message}}).encode()


def response_parts(data: protocol.TypedData | None) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body of an HTTP function's `$return`, as the worker encoded it.

    `azure-functions`' HttpResponseConverter sends a `func.HttpResponse` as `http` (status,
    headers with the content type filled in, body bytes, cookies) and a `str` as `string`,
    which the host answers as a 200 text body.
    """
    kind = data.WhichOneof("data") if data is not None else None
    if kind == "string":
        return 200, [("Content-Type", "text/plain; charset=utf-8")], str(data.string).encode("utf-8")
    if kind != "http":
        raise TypeError(f"an HTTP function's $return arrived as {kind!r}, not an HTTP response")
    http = data.http
    headers = [(k, v) for k, v in http.headers.items()]
    for cookie in http.cookies or []:
        headers.append(("Set-Cookie", f"{cookie.name}={cookie.value}"))
    body = http.body
    payload = b"" if body is None else (body.bytes or (body.string or "").encode("utf-8"))
    return int(http.status_code or 200), headers, payload


class HttpHost:
    """Routes requests to functions and the durable webhooks; owns the server."""

    def __init__(
        self,
        index: FunctionIndex,
        invoker: Invoker,
        *,
        route_prefix: str,
        keys: HostKeys,
        engine: DurableWebhooks | None = None,
        port: int = 7071,
        host: str = "127.0.0.1",
        http_concurrency: int = 1,
    ) -> None:
        self.routes = build_routes(index, route_prefix)
        self.invoker = invoker
        self.keys = keys
        self.engine = engine
        self._http_slots = threading.BoundedSemaphore(http_concurrency)
        self.server = _Server((host, port), _Handler)
        self.server.app = self
        self.port = int(self.server.server_address[1])
        self._thread: threading.Thread | None = None
        self.in_flight = 0
        self._count_lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, name="devhost-http", daemon=True)
        self._thread.start()

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish (up to `grace` seconds)."""
        self.server.stopping = True
        self.server.shutdown()
        self.server.server_close()
        deadline = time.monotonic() + grace
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)

    # --- dispatch --------------------------------------------------------------------
    def dispatch(
        self, method: str, target: str, headers: dict[str, str], body: bytes, host_header: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        with self._count_lock:
            self.in_flight += 1
        try:
            return self._dispatch(method, target, headers, body, host_header)
        finally:
            with self._count_lock:
                self.in_flight -= 1

    def _dispatch(
        self, method: str, target: str, headers: dict[str, str], body: bytes, host_header: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        url = urlsplit(target)
        query = _query_dict(url.query)
        if url.path.lower().startswith(DURABLE_WEBHOOK_PREFIX + "/") or url.path.lower() == DURABLE_WEBHOOK_PREFIX:
            if not self.keys.allows("system", _given_key(headers, query)):
                log.info("durable webhook %s: 401 no valid system key", method)
                return _json(401, "system_key_required", "the durable webhooks need the durabletask system key")
            return self._durable(method, url.path[len(DURABLE_WEBHOOK_PREFIX) :].lstrip("/"), query, headers, body)
        segments = split_path(url.path)
        matched = [(r, params) for r in self.routes if (params := r.template.match(segments)) is not None]
        if not matched:
            if not segments:
                return 200, [("Content-Type", "application/json")], b'{"status":"devhost is running"}'
            return _json(404, "not_found", f"no function is routed at {url.path}")
        allowed = [(r, p) for r, p in matched if method in r.methods]
        if not allowed:
            methods = sorted(set().union(*(r.methods for r, _ in matched)))
            status, hdrs, payload = _json(405, "method_not_allowed", f"{method} is not allowed on {url.path}")
            return status, [*hdrs, ("Allow", ", ".join(methods))], payload
        route, route_params = allowed[0]
        if not self.keys.allows(route.auth_level, _given_key(headers, query)):
            which = "master key" if route.auth_level == "admin" else "function key"
            log_invocation(route.function.name, "http", f"401 no valid {which}", 0.0, detail=f"{method} {url.path}")
            return _json(401, f"{which.replace(' ', '_')}_required", f"send the {which} in x-functions-key or ?code=")
        request = HttpRequestData(
            method=method,
            url=f"http://{host_header}{target}",
            headers=headers,
            query=query,
            route_params=route_params,
            body=body,
        )
        return self._invoke(route, request)

    def _invoke(self, route: HttpRoute, request: HttpRequestData) -> tuple[int, list[tuple[str, str]], bytes]:
        fn = route.function
        started = time.perf_counter()
        try:
            with self._http_slots:  # per-instance HTTP concurrency: later requests wait for a slot
                invocation = self.invoker.invoke(fn, request.typed_data())
            status, headers, payload = response_parts(invocation.result.return_value)
        except FunctionFailed as exc:
            log.error("function %s failed: %s\n%s", fn.name, exc.message, exc.stack_trace)
            log_invocation(fn.name, "http", "500 error", _ms(started), detail=f"{request.method} {_path(request)}")
            return _json(500, "function_error", "the function failed; see the devhost log")
        except Exception:
            log.exception("function %s could not be invoked", fn.name)
            log_invocation(fn.name, "http", "500 error", _ms(started), detail=f"{request.method} {_path(request)}")
            return _json(500, "function_error", "the function failed; see the devhost log")
        log_invocation(
            fn.name,
            "http",
            str(status),
            _ms(started),
            instance_id=_instance_id(fn, headers, payload),
            detail=f"{request.method} {_path(request)} {sent_summary(invocation.sent)}".rstrip(),
        )
        return status, headers, payload

    def _durable(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        if self.engine is None:
            return _json(404, "not_found", "this app has no durable functions")
        try:
            status, hdrs, payload = self.engine.handle_http(method, path, query, headers, body)
        except Exception:
            log.exception("durable webhook %s %s failed", method, path)
            return _json(500, "durable_error", "the durable engine failed; see the devhost log")
        log.debug("durable webhook %s %s -> %s", method, path, status)
        return status, list(hdrs.items()), payload


def _given_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    return headers.get("x-functions-key") or query.get("code") or ""


class DurableRpcHost:
    """The durable client's RPC endpoint: 127.0.0.1 only, no key (the extension's local listener does the same)."""

    def __init__(self, engine: DurableWebhooks) -> None:
        self.engine = engine
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.app = self  # type: ignore[assignment]
        self.port = int(self.server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}{DURABLE_RPC_PREFIX}/"
        self._thread = threading.Thread(target=self.server.serve_forever, name="devhost-durable-rpc", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.stopping = True
        self.server.shutdown()
        self.server.server_close()

    def dispatch(
        self, method: str, target: str, headers: dict[str, str], body: bytes, host_header: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        url = urlsplit(target)
        if not url.path.startswith(DURABLE_RPC_PREFIX + "/"):
            return _json(404, "not_found", "only the durable RPC API is served here")
        status, hdrs, payload = self.engine.handle_http(
            method, url.path[len(DURABLE_RPC_PREFIX) :].lstrip("/"), _query_dict(url.query), headers, body
        )
        return status, list(hdrs.items()), payload


def _json(status: int, code: str, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "application/json")], error_body(status, code, message)


def _query_dict(query: str) -> dict[str, str]:
    """Query parameters; a repeated name keeps all values comma-joined, as the host does."""
    out: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        out[k] = f"{out[k]},{v}" if k in out else v
    return out


def _path(request: HttpRequestData) -> str:
    return urlsplit(request.url).path  # never the query: it may hold ?code=


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _instance_id(fn: FunctionInfo, headers: list[tuple[str, str]], payload: bytes) -> str | None:
    """The orchestration instance a durable client function started (from its check-status body)."""
    if not any(b.get("type") == "durableClient" for b in fn.bindings) or not payload.startswith(b"{"):
        return None
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    return str(body["id"]) if isinstance(body, dict) and isinstance(body.get("id"), str) else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # bursts of 64+ connections must not overflow the listen backlog
    app: HttpHost | DurableRpcHost
    stopping = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body go out in separate sends; with Nagle on, a keep-alive client
    # waits ~40 ms (delayed ACK) for the body of every response.
    disable_nagle_algorithm = True
    server: _Server
    server_version = "devhost"
    timeout = 300  # idle keep-alive connections end eventually instead of pinning a thread forever

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self._send(400, [("Content-Type", "application/json")], error_body(400, "bad_request", "unreadable body"))
            return
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        host = headers.get("host") or f"127.0.0.1:{self.server.app.port}"
        status, resp_headers, payload = self.server.app.dispatch(self.command.upper(), self.path, headers, body, host)
        self._send(status, resp_headers, payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        try:
            self.send_response(status)
            for k, v in headers:
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                    self.send_header(k, v)
            if status in (204, 304):
                payload = b""
            self.send_header("Content-Length", str(len(payload)))
            if self.server.stopping:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD" and payload:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the request line would carry `?code=`; invocations log their own line."""

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("http connection problem (details suppressed)")
