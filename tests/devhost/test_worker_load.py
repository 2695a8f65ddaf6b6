"""Every app loads through Microsoft's Python worker (azure-functions-runtime), or devhost refuses to start.

The worker checks each function at load (annotations, binding directions, return types) and a
single refusal means the host serves nothing on Azure. These tests run devhost's `--check`
(the worker's init, metadata and load requests, nothing else) and a real devhost start.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from devhost.services import REPO_ROOT, free_port

APPS = [REPO_ROOT, *sorted(p for p in (REPO_ROOT / "tests" / "devhost" / "apps").iterdir() if p.is_dir())]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devhost", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def _registered_names(app_dir: Path) -> set[str]:
    """What the app registers, as azure-functions' own indexing lists it (in a fresh interpreter)."""
    code = "import function_app as m; print('\\n'.join(f.get_function_name() for f in m.app.get_functions()))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=app_dir, capture_output=True, text=True, timeout=60, check=True,
        env={"PYTHONPATH": f"{app_dir}:{REPO_ROOT}", "PATH": "/usr/bin:/bin"},
    )
    return set(out.stdout.split())


@pytest.mark.parametrize("app_dir", APPS, ids=lambda p: p.name if p != REPO_ROOT else "function_app")
def test_every_function_loads_through_the_worker(app_dir: Path) -> None:
    result = _run("--check", "--app-dir", str(app_dir))
    assert result.returncode == 0, result.stderr
    loaded = {line.split()[0] for line in result.stdout.splitlines()}
    assert loaded == _registered_names(app_dir)


BAD_APP = '''
from typing import Any

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="ping")
def ping(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("pong")


@app.activity_trigger(input_name="payload")
def settle(payload: dict[str, Any]) -> dict:
    return payload
'''


def test_a_bad_annotation_stops_devhost_with_the_workers_message(tmp_path: Path) -> None:
    """`dict[str, Any]` on a binding parameter is what Azure's worker refused in spendgate itself."""
    (tmp_path / "function_app.py").write_text(textwrap.dedent(BAD_APP))
    expected = "cannot load the settle function: binding payload has invalid non-type annotation dict[str, typing.Any]"

    checked = _run("--check", "--app-dir", str(tmp_path))
    assert checked.returncode == 3 and expected in checked.stderr, checked.stderr

    started = _run("--app-dir", str(tmp_path), "--port", str(free_port()), "--no-local-settings")
    assert started.returncode == 3, started.stderr
    assert f"FunctionLoadError: {expected}" in started.stderr
    assert "devhost ready" not in started.stderr
