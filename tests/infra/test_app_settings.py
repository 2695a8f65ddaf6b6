"""The app settings main.bicep sets are exactly the ones the deployed code reads.

"The code's names" are `core.settings.APP_SETTING_NAMES` and every other setting-name constant
of core/settings.py, plus any name the deployed code reads from the environment directly (found by
walking its syntax tree), so a setting added anywhere shows up here. A name may differ between the two sides only if it is listed below with a reason.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from core import settings as settings_module
from core.settings import APP_SETTING_NAMES
from devhost.services import REPO_ROOT
from tests.infra.bicep import MAIN, parse, variable

# Read by the code but deliberately not set by main.bicep.
NOT_SET_ON_AZURE: dict[str, str] = {
    "AzureWebJobsStorage": "local only (Azurite's connection string); on Azure the identity-based "
    "AzureWebJobsStorage__accountName/__credential/__clientId replace it, so no account key exists anywhere",
    "AzureWebJobsStorage__tableServiceUri": "optional override; core/settings.py derives the table endpoint "
    "from AzureWebJobsStorage__accountName, which main.bicep sets",
    "SPENDGATE_PROXY_URL": "optional; core/settings.py builds it from WEBSITE_HOSTNAME, which the platform sets "
    "to the app's real host name (set it only behind a custom domain)",
    "WEBSITE_HOSTNAME": "platform-provided on Azure Functions",
    "SPENDGATE_ALERT_SWEEP_GRACE_SECONDS": "optional, default 60 (docs/approvals.md, the sweeper); tests shorten it",
    "SPENDGATE_ALERT_FAULT": "tests only: makes the alert publish step fail so the sweeper can be proven",
}

# Set by main.bicep but read by the Functions host, not by spendgate's code.
READ_BY_THE_HOST: dict[str, str] = {
    "AzureWebJobsStorage__credential": "the host's identity-based storage connection ('managedidentity')",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "the host's telemetry target",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "the host sends telemetry with Entra ID (local auth is disabled)",
    "PYTHON_THREADPOOL_THREAD_COUNT": "the Python worker's thread pool for sync functions (devhost runs that worker)",
}

# In local.settings.sample.json only: read by the local tooling, not by the deployed app.
LOCAL_ONLY: dict[str, str] = {
    "FUNCTIONS_WORKER_RUNTIME": "read by `func start`; Flex Consumption takes the runtime from functionAppConfig",
    "AzureWebJobsFeatureFlags": "read by `func start` (worker indexing is the default on Azure)",
    "DEVHOST_FUNCTION_KEY": "read by devhost, the local stand-in for the Functions host's keys",
    "DEVHOST_HTTP_PER_INSTANCE_CONCURRENCY": "read by devhost: on Azure it is function.bicep's perInstanceConcurrency",
}

ENV_READERS = {"get", "getenv", "setdefault", "pop"}
SETTING_LIKE = re.compile(r"^SPENDGATE_[A-Z0-9_]+$")


def _ignored_patterns() -> list[str]:
    lines = (REPO_ROOT / ".funcignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def deployed_python_files() -> Iterator[Path]:
    """The .py files azd would ship: everything .funcignore does not exclude."""
    patterns = [*_ignored_patterns(), "__pycache__", ".venv*", "node_modules", ".git"]

    def ignored(rel: str, name: str) -> bool:
        return any(fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(rel, pat) for pat in patterns)

    for root, dirs, files in os.walk(REPO_ROOT):
        base = Path(root).relative_to(REPO_ROOT)
        dirs[:] = sorted(d for d in dirs if not ignored((base / d).as_posix(), d))
        for name in sorted(files):
            if name.endswith(".py") and not ignored((base / name).as_posix(), name):
                yield Path(root) / name


def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def names_read_in(source: str) -> set[str]:
    """Setting names a module reads from the environment directly, or spells like a setting."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            reads_env = (
                (isinstance(func, ast.Attribute) and func.attr in ENV_READERS and _is_environ(func.value))
                or (isinstance(func, ast.Attribute) and func.attr == "getenv")
                or (isinstance(func, ast.Name) and func.id == "getenv")
            )
            if reads_env and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
        elif isinstance(node, ast.Subscript) and _is_environ(node.value) and isinstance(node.slice, ast.Constant):
            names.add(str(node.slice.value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SETTING_LIKE.match(node.value):
            names.add(node.value)
    return names


@cache
def code_setting_names() -> frozenset[str]:
    """Every setting name the deployed code reads (computed once per session)."""
    names = set(APP_SETTING_NAMES)
    names |= {v for k, v in vars(settings_module).items() if k.isupper() and isinstance(v, str)}
    for path in deployed_python_files():
        names |= names_read_in(path.read_text())
    return frozenset(names)


def bicep_setting_names() -> frozenset[str]:
    return frozenset(variable(parse(MAIN), "appSettings"))


def test_the_scan_sees_the_deployed_code() -> None:
    files = {p.relative_to(REPO_ROOT).as_posix() for p in deployed_python_files()}
    assert {"function_app.py", "core/settings.py"} <= files
    assert not any(f.startswith(("tests/", "devhost/", "infra/", "scripts/")) for f in files)
    assert names_read_in('import os\nos.environ["A"]; os.environ.get("B"); os.getenv("C"); x = "SPENDGATE_D"') == {
        "A",
        "B",
        "C",
        "SPENDGATE_D",
    }


def test_every_setting_the_code_reads_is_set_by_main_bicep() -> None:
    missing = code_setting_names() - bicep_setting_names() - set(NOT_SET_ON_AZURE)
    assert not missing, f"read by the code but not set in infra/main.bicep appSettings: {sorted(missing)}"


def test_main_bicep_sets_no_setting_nobody_reads() -> None:
    orphaned = bicep_setting_names() - code_setting_names() - set(READ_BY_THE_HOST)
    assert not orphaned, f"set in infra/main.bicep but read by nothing: {sorted(orphaned)}"


@pytest.mark.parametrize("name", sorted(NOT_SET_ON_AZURE))
def test_each_unset_exception_is_still_true(name: str) -> None:
    assert name in code_setting_names(), f"{name} is no longer read by the code; drop the exception"
    assert name not in bicep_setting_names(), f"{name} is set in main.bicep; drop the exception"


@pytest.mark.parametrize("name", sorted(READ_BY_THE_HOST))
def test_each_host_setting_is_set_and_not_read_by_the_code(name: str) -> None:
    assert name in bicep_setting_names()
    assert name not in code_setting_names(), f"{name} is read by the code now; drop the exception"


def test_local_sample_uses_only_known_names() -> None:
    sample = json.loads((REPO_ROOT / "local.settings.sample.json").read_text())["Values"]
    unknown = set(sample) - code_setting_names() - set(READ_BY_THE_HOST) - set(LOCAL_ONLY)
    assert not unknown, f"local.settings.sample.json sets names nothing reads: {sorted(unknown)}"


def test_the_worker_pool_outnumbers_concurrent_activities() -> None:
    """Sync activities and HTTP functions share the worker's one thread pool; a charge activity holds a thread
    while its proxy call waits for another, so the pool must be larger than maxConcurrentActivityFunctions."""
    main = (REPO_ROOT / "infra" / "main.bicep").read_text()
    pool = int(re.search(r"PYTHON_THREADPOOL_THREAD_COUNT: '(\d+)'", main).group(1))  # type: ignore[union-attr]
    activities = json.loads((REPO_ROOT / "host.json").read_text())["extensions"]["durableTask"][
        "maxConcurrentActivityFunctions"
    ]
    sample = json.loads((REPO_ROOT / "local.settings.sample.json").read_text())["Values"]
    assert pool > activities
    assert int(sample["PYTHON_THREADPOOL_THREAD_COUNT"]) == pool


def test_devhost_runs_as_many_http_requests_per_instance_as_flex_is_told() -> None:
    """function.bicep's perInstanceConcurrency (Flex's default for Python is 1) and devhost's setting agree."""
    function = (REPO_ROOT / "infra" / "app" / "function.bicep").read_text()
    flex = int(re.search(r"param httpPerInstanceConcurrency int = (\d+)", function).group(1))  # type: ignore[union-attr]
    assert "perInstanceConcurrency: httpPerInstanceConcurrency" in function
    sample = json.loads((REPO_ROOT / "local.settings.sample.json").read_text())["Values"]
    assert int(sample["DEVHOST_HTTP_PER_INSTANCE_CONCURRENCY"]) == flex
