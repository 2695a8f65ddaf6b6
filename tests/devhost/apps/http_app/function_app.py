"""devhost's HTTP test app: routes, methods, auth levels, bodies, async, concurrency, errors."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
ANON = func.AuthLevel.ANONYMOUS


def _json(body: object, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


@app.route(route="items/special", methods=["GET"], auth_level=ANON)
def item_special(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"route": "literal"})


@app.route(route="items/{id:int}", methods=["GET"], auth_level=ANON)
def item_by_id(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"route": "int", "id": req.route_params["id"]})


@app.route(route="items/{name}", methods=["GET"], auth_level=ANON)
def item_by_name(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"route": "param", "name": req.route_params["name"]})


@app.route(route="items/{*rest}", methods=["GET"], auth_level=ANON)
def item_rest(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"route": "catch-all", "rest": req.route_params.get("rest")})


@app.route(route="files/{*path}", methods=["GET"], auth_level=ANON)
def files(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"path": req.route_params.get("path")})


@app.route(route="optional/{value?}", methods=["GET"], auth_level=ANON)
def optional(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"value": req.route_params.get("value")})


@app.route(route="guid/{g:guid}/{kind:alpha}", methods=["GET"], auth_level=ANON)
def by_guid(req: func.HttpRequest) -> func.HttpResponse:
    return _json(dict(req.route_params))


@app.route(route="echo/{tag}", methods=["POST", "PUT"], auth_level=ANON)
def echo(req: func.HttpRequest) -> func.HttpResponse:
    """Sends the raw body back; everything else about the request goes in X-Echo headers."""
    meta = {
        "method": req.method,
        "url": req.url,
        "params": dict(req.params),
        "route_params": dict(req.route_params),
        "x_test": req.headers.get("X-Test-Header"),
        "content_type": req.headers.get("content-type"),
    }
    encoded = base64.b64encode(json.dumps(meta).encode()).decode()
    return func.HttpResponse(
        req.get_body(), status_code=201, headers={"X-Echo": encoded}, mimetype="application/octet-stream"
    )


@app.route(route="text", methods=["GET"], auth_level=ANON)
def text(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("<b>héllo</b>", mimetype="text/html", charset="utf-8", headers={"X-Custom": "1"})


@app.route(route="secure", methods=["GET"])
def secure(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"secure": True})


@app.route(route="master-only", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def admin_only(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"admin": True})


@app.route(route="async/{n:int}", methods=["GET"], auth_level=ANON)
async def async_double(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(0.2)
    return _json({"double": int(req.route_params["n"]) * 2, "loop": id(asyncio.get_running_loop())})


_lock = threading.Lock()
_state = {"current": 0, "peak": 0, "done": 0}


@app.route(route="async-blocking", methods=["GET"], auth_level=ANON)
async def async_blocking(req: func.HttpRequest) -> func.HttpResponse:
    """A mistake on purpose: a blocking call inside an async function holds the worker's one event loop."""
    time.sleep(0.4)
    return _json({"blocked": True})


@app.route(route="slow", methods=["GET"], auth_level=ANON)
def slow(req: func.HttpRequest) -> func.HttpResponse:
    """Sleeps while counting how many calls overlap, to show sync functions run concurrently."""
    with _lock:
        _state["current"] += 1
        _state["peak"] = max(_state["peak"], _state["current"])
    time.sleep(float(req.params.get("seconds", "0.5")))
    with _lock:
        _state["current"] -= 1
        _state["done"] += 1
    return _json({"ok": True})


@app.route(route="slow/stats", methods=["GET"], auth_level=ANON)
def slow_stats(req: func.HttpRequest) -> func.HttpResponse:
    with _lock:
        return _json(dict(_state))


@app.route(route="boom", methods=["GET"], auth_level=ANON)
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("boom: secret detail that must not reach the client")


@app.route(route="nothing", methods=["DELETE"], auth_level=ANON)
def nothing(req: func.HttpRequest):
    """Returns None: the worker cannot encode that as an HTTP response, so the host answers 500."""
    return None


@app.function_name("named_function")
@app.route(methods=["GET"], auth_level=ANON)
def default_route(req: func.HttpRequest) -> str:
    return "routed by function name"
