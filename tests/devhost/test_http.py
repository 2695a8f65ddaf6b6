"""devhost serving HTTP triggers: real HTTP against a devhost subprocess running tests/devhost/apps/http_app."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from devhost.config import host_keys
from devhost.services import REPO_ROOT, Service, free_port, start_devhost

APP_DIR = Path(__file__).parent / "apps" / "http_app"
KEY = "http-test-key-" + uuid.uuid4().hex[:8]


THREADPOOL = 12  # PYTHON_THREADPOOL_THREAD_COUNT for this host
MASTER = "http-test-master-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def host(artifacts_dir: Path) -> Iterator[Service]:
    log_path = artifacts_dir / "devhost-http-app.log"
    log_path.unlink(missing_ok=True)
    svc = start_devhost(
        APP_DIR,
        {
            "DEVHOST_FUNCTION_KEY": KEY,
            "DEVHOST_MASTER_KEY": MASTER,
            "PYTHON_THREADPOOL_THREAD_COUNT": str(THREADPOOL),
            "DEVHOST_HTTP_PER_INSTANCE_CONCURRENCY": "64",  # past the pool: the pool is what bounds the test below
            "DEVHOST_LOOP_BLOCK_WARN_MS": "200",
        },
        log_path=log_path,
        ready_path="/api/items/special",
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def client(host: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=host.url, timeout=30) as c:
        yield c


def test_literal_beats_int_beats_param_beats_catch_all(client: httpx.Client) -> None:
    assert client.get("/api/items/special").json() == {"route": "literal"}
    assert client.get("/api/items/42").json() == {"route": "int", "id": "42"}
    assert client.get("/api/items/forty-two").json() == {"route": "param", "name": "forty-two"}
    assert client.get("/api/items/a/b/c").json() == {"route": "catch-all", "rest": "a/b/c"}


def test_optional_catch_all_and_constraints(client: httpx.Client) -> None:
    assert client.get("/api/optional").json() == {"value": None}
    assert client.get("/api/optional/7").json() == {"value": "7"}
    assert client.get("/api/files").json() == {"path": None}
    assert client.get("/api/files/x/y%20z.txt").json() == {"path": "x/y z.txt"}
    guid = str(uuid.uuid4())
    assert client.get(f"/api/guid/{guid}/abc").json() == {"g": guid, "kind": "abc"}
    assert client.get(f"/api/guid/{guid}/abc1").status_code == 404  # alpha constraint
    assert client.get("/api/guid/nope/abc").status_code == 404  # guid constraint
    assert client.get("/api/named_function").text == "routed by function name"


def test_unknown_route_is_404_json(client: httpx.Client) -> None:
    resp = client.get("/api/no/such/route")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_wrong_method_is_405_with_allow(client: httpx.Client) -> None:
    resp = client.post("/api/items/3")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "GET"
    assert resp.json()["error"]["code"] == "method_not_allowed"


def test_request_round_trip_raw_body_query_headers_route_params(host: Service, client: httpx.Client) -> None:
    body = bytes(range(256)) * 4
    resp = client.put(
        "/api/echo/tag-1?a=1&a=2&empty=&sp=x%20y",
        content=body,
        headers={"X-Test-Header": "hello", "Content-Type": "application/x-thing"},
    )
    assert resp.status_code == 201
    assert resp.content == body
    assert resp.headers["content-type"] == "application/octet-stream"
    meta = json.loads(base64.b64decode(resp.headers["x-echo"]))
    assert meta["method"] == "PUT"
    assert meta["url"] == f"{host.url}/api/echo/tag-1?a=1&a=2&empty=&sp=x%20y"
    assert meta["params"] == {"a": "1,2", "empty": "", "sp": "x y"}
    assert meta["route_params"] == {"tag": "tag-1"}
    assert meta["x_test"] == "hello"
    assert meta["content_type"] == "application/x-thing"


def test_chunked_request_body_arrives_whole(client: httpx.Client) -> None:
    chunks = [b"abc", b"\x00\xff" * 1000, b"end"]
    resp = client.post("/api/echo/chunked", content=iter(chunks))  # an iterator is sent chunked
    assert resp.content == b"".join(chunks)


def test_response_mimetype_charset_and_headers(client: httpx.Client) -> None:
    resp = client.get("/api/text")
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    assert resp.headers["x-custom"] == "1"
    assert resp.text == "<b>héllo</b>"
    # None is not an HTTP response: the worker fails to encode it, so the host answers 500, as on Azure.
    nothing = client.delete("/api/nothing")
    assert nothing.status_code == 500 and nothing.json()["error"]["code"] == "function_error"


def test_auth_levels(client: httpx.Client) -> None:
    denied = client.get("/api/secure")
    assert denied.status_code == 401
    assert denied.json()["error"]["code"] == "function_key_required"
    assert client.get("/api/secure", headers={"x-functions-key": "wrong"}).status_code == 401
    assert client.get("/api/secure", params={"code": "wrong"}).status_code == 401
    assert client.get("/api/secure", headers={"x-functions-key": KEY}).json() == {"secure": True}
    assert client.get("/api/secure", params={"code": KEY}).json() == {"secure": True}
    assert client.get("/api/secure", headers={"x-functions-key": MASTER}).json() == {"secure": True}
    # `admin` needs the master key; a function key is not enough (as on Azure).
    assert client.get("/api/master-only").status_code == 401
    refused = client.get("/api/master-only", headers={"x-functions-key": KEY})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "master_key_required"
    assert client.get("/api/master-only", params={"code": MASTER}).json() == {"admin": True}
    assert client.get("/api/items/special").status_code == 200  # anonymous needs no key


def test_async_functions_share_one_loop_and_overlap(client: httpx.Client) -> None:
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda n: client.get(f"/api/async/{n}"), range(16)))
    assert [r.json()["double"] for r in results] == [n * 2 for n in range(16)]
    assert len({r.json()["loop"] for r in results}) == 1


def test_a_blocking_async_function_holds_the_loop_and_is_named_in_the_log(host: Service, client: httpx.Client) -> None:
    """Async functions run on the worker's one dispatcher loop: while one blocks, another async function waits
    (on Azure as here). devhost names the function that held the loop."""
    with ThreadPoolExecutor(2) as pool:
        blocking = pool.submit(client.get, "/api/async-blocking")
        other = pool.submit(client.get, "/api/async/7")
        assert blocking.result().json() == {"blocked": True} and other.result().json()["double"] == 14
    assert host.log_path is not None
    log = host.log_path.read_text()
    held = [line for line in log.splitlines() if "name='invoke async_blocking'" in line and " took " in line]
    assert held, "no slow-callback warning for async_blocking"
    assert not [line for line in log.splitlines() if "name='invoke async_double'" in line and " took " in line]


def test_sync_functions_run_on_the_workers_thread_pool(host: Service) -> None:
    """50 slow sync requests overlap, but never more than PYTHON_THREADPOOL_THREAD_COUNT at once: sync functions
    run on the worker's thread pool (azure-functions-runtime `invocation_request`), not one thread per request."""
    n = 50
    with httpx.Client(base_url=host.url, timeout=60, limits=httpx.Limits(max_connections=n)) as c:
        before = c.get("/api/slow/stats").json()["done"]
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda _: c.get("/api/slow", params={"seconds": "0.5"}), range(n)))
        stats = c.get("/api/slow/stats").json()
    assert all(r.status_code == 200 for r in results)
    assert stats["done"] - before == n
    assert stats["peak"] == THREADPOOL, stats  # the stats route itself also takes a pool thread, after the burst


def test_unhandled_exception_is_generic_500_with_traceback_in_log(host: Service, client: httpx.Client) -> None:
    resp = client.get("/api/boom")
    assert resp.status_code == 500
    assert resp.json()["error"]["code"] == "function_error"
    assert "secret detail" not in resp.text
    assert host.log_path is not None
    log = host.log_path.read_text()
    assert "Traceback" in log and "secret detail that must not reach the client" in log


def test_durable_webhooks_need_the_system_key_and_are_404_without_durable_functions(client: httpx.Client) -> None:
    assert client.get("/runtime/webhooks/durabletask/instances/abc").status_code == 401
    assert client.get("/runtime/webhooks/durabletask/instances/abc", params={"code": KEY}).status_code == 401
    keyed = client.get("/runtime/webhooks/durabletask/instances/abc", params={"code": host_keys({}).durabletask})
    assert keyed.status_code == 404


def test_log_has_one_line_per_invocation_and_no_key(host: Service, client: httpx.Client) -> None:
    marker = uuid.uuid4().hex
    client.get(f"/api/items/{marker}", params={"code": KEY})
    client.get("/api/secure", params={"code": KEY})
    assert host.log_path is not None
    log = host.log_path.read_text()
    lines = [line for line in log.splitlines() if f"/api/items/{marker}" in line]
    assert len(lines) == 1 and "item_by_name (http)" in lines[0] and "-> 200" in lines[0]
    assert KEY not in log


def test_sigterm_stops_cleanly_with_exit_0_and_http_concurrency_defaults_to_flex_s_1(artifacts_dir: Path) -> None:
    """Unset, per-instance HTTP concurrency is Flex Consumption's default for Python: one request at a time."""
    svc = start_devhost(APP_DIR, {"DEVHOST_FUNCTION_KEY": KEY}, ready_path="/api/items/special")
    with httpx.Client(base_url=svc.url, timeout=30) as c, ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: c.get("/api/slow", params={"seconds": "0.2"}), range(6)))
        assert all(r.status_code == 200 for r in results)
        assert c.get("/api/slow/stats").json()["peak"] == 1
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(15) == 0


def test_routes_under_the_hosts_own_prefixes_are_refused_at_start(tmp_path: Path) -> None:
    """azure-functions-host refuses a route starting with `admin` (its key and status API) or `runtime`."""
    for route in ("admin/keys", "administration", "runtime/status"):
        (tmp_path / "function_app.py").write_text(
            "import azure.functions as func\n"
            "app = func.FunctionApp()\n"
            f"@app.route(route={route!r})\n"
            "def clash(req: func.HttpRequest) -> func.HttpResponse:\n"
            "    return func.HttpResponse('no')\n"
        )
        started = subprocess.run(
            [sys.executable, "-m", "devhost", "--app-dir", str(tmp_path), "--port", str(free_port()),
             "--no-local-settings"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )
        assert started.returncode == 3, started.stderr
        assert "conflicts with one or more built in routes" in started.stderr and "function clash" in started.stderr
