"""Route templates as ASP.NET reads them: parameters, constraints, precedence (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devhost.http import HttpRoute, RouteConflict, build_routes
from devhost.loader import FunctionIndex, FunctionInfo
from devhost.routes import RouteTemplate, split_path


def match(template: str, path: str) -> dict[str, str] | None:
    return RouteTemplate.parse(template).match(split_path(path))


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("api/items/{id}", "/api/items/7", {"id": "7"}),
        ("api/items/{id}", "/API/Items/7/", {"id": "7"}),  # literals ignore case, trailing slash ignored
        ("api/items/{id}", "/api/items", None),
        ("api/items/{id}", "/api/items/7/8", None),
        ("api/items/{id:int}", "/api/items/-12", {"id": "-12"}),
        ("api/items/{id:int}", "/api/items/x1", None),
        ("api/items/{id:int}", "/api/items/99999999999", None),  # int is 32-bit
        ("api/items/{id:long}", "/api/items/99999999999", {"id": "99999999999"}),
        ("api/x/{a:alpha}", "/api/x/abcXYZ", {"a": "abcXYZ"}),
        ("api/x/{a:alpha}", "/api/x/ab1", None),
        (
            "api/g/{g:guid}",
            "/api/g/0f8fad5b-d9cb-469f-a165-70867728950e",
            {"g": "0f8fad5b-d9cb-469f-a165-70867728950e"},
        ),
        ("api/g/{g:guid}", "/api/g/not-a-guid", None),
        ("api/b/{b:bool}", "/api/b/True", {"b": "True"}),
        ("api/n/{n:min(5)}", "/api/n/4", None),
        ("api/n/{n:range(1,3)}", "/api/n/3", {"n": "3"}),
        ("api/s/{s:minlength(2):maxlength(3)}", "/api/s/abcd", None),
        ("api/s/{s:regex(^v\\d+$)}", "/api/s/v12", {"s": "v12"}),
        ("api/opt/{v?}", "/api/opt", {}),
        ("api/opt/{v?}", "/api/opt/1", {"v": "1"}),
        ("api/def/{v=abc}", "/api/def", {"v": "abc"}),
        ("api/stripe/{*path}", "/api/stripe/v1/payment_intents/pi_1", {"path": "v1/payment_intents/pi_1"}),
        ("api/stripe/{*path}", "/api/stripe", {}),
        ("api/stripe/{*path}", "/api/stripe/a%2Fb/c%20d", {"path": "a/b/c d"}),
        ("api/files/{name}.{ext}", "/api/files/report.final.pdf", {"name": "report.final", "ext": "pdf"}),
        ("", "/", {}),
    ],
)
def test_template_matching(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert match(template, path) == expected


def test_precedence_orders_literal_then_constrained_then_param_then_catch_all() -> None:
    templates = ["api/items/{*rest}", "api/items/{name}", "api/items/{id:int}", "api/items/special"]
    ordered = sorted(templates, key=lambda t: RouteTemplate.parse(t).precedence)
    assert ordered == ["api/items/special", "api/items/{id:int}", "api/items/{name}", "api/items/{*rest}"]


@pytest.mark.parametrize("bad", ["api/{*rest}/tail", "api/{id:nosuch}", "api/{bad-name}"])
def test_invalid_templates_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        RouteTemplate.parse(bad)


def _index(*routes: str) -> FunctionIndex:
    functions = {
        f"fn{i}": FunctionInfo(f"fn{i}", f"id-{i}", {"type": "httpTrigger", "route": r, "authLevel": "anonymous"}, [])
        for i, r in enumerate(routes)
    }
    return FunctionIndex(functions, Path("."), None)  # type: ignore[arg-type]  # routing never touches the worker


def _routed(routes: list[HttpRoute], path: str) -> str | None:
    matched = [r.function.name for r in routes if r.template.match(split_path(path)) is not None]
    return matched[0] if matched else None


def test_route_prefix_is_prepended_and_an_empty_prefix_serves_routes_at_the_root() -> None:
    """As the host's WebJobsRouteBuilder: `<prefix>/<route>`, or the route alone for routePrefix ""."""
    api = build_routes(_index("items/{id}", "v1/{*path}"), "api")
    assert [r.template.template for r in api] == ["api/items/{id}", "api/v1/{*path}"]
    assert _routed(api, "/v1/payment_intents") is None and _routed(api, "/api/v1/payment_intents") == "fn1"
    root = build_routes(_index("api/items/{id}", "v1/{*path}"), "")
    assert _routed(root, "/v1/payment_intents") == "fn1" and _routed(root, "/api/items/7") == "fn0"
    assert _routed(root, "/items/7") is None


@pytest.mark.parametrize("route", ["admin/keys", "Admin", "administration/x", "runtime/webhooks/x", "/runtimeinfo"])
def test_routes_the_host_reserves_are_refused_whatever_the_prefix(route: str) -> None:
    """ScriptHost.ValidateHttpFunction: a route starting with `admin` or `runtime` (prefix not counted) is an error;
    devhost refuses the whole app (stricter than Azure, which serves the other functions)."""
    for prefix in ("", "api"):
        with pytest.raises(RouteConflict, match=r"function fn0: .*conflicts with one or more built in routes"):
            build_routes(_index(route, "api/ok"), prefix)
    assert [r.template.template for r in build_routes(_index("ok", "api/ok"), "api")] == ["api/ok", "api/api/ok"]
