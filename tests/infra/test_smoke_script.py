"""scripts/smoke.sh, the post-deploy check, passes against the real app (devhost) and can fail."""

from __future__ import annotations

import re
import subprocess

import httpx
import pytest

from devhost.services import REPO_ROOT
from tests.conftest import AppStack

SMOKE = REPO_ROOT / "scripts" / "smoke.sh"

pytestmark = pytest.mark.integration


def run_smoke(base_url: str, function_key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SMOKE), base_url, function_key], capture_output=True, text=True, timeout=180, check=False
    )


def test_smoke_script_passes_and_leaves_its_key_revoked(app_stack: AppStack) -> None:
    proc = run_smoke(app_stack.url, app_stack.function_key)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all 8 checks passed" in proc.stdout
    assert "vk_" not in proc.stdout + proc.stderr, "the script printed a vault key"
    assert app_stack.function_key not in proc.stdout + proc.stderr, "the script printed the function key"
    match = re.search(r"issued vault key (\S+)", proc.stdout)
    assert match, proc.stdout
    described = httpx.get(f"{app_stack.url}/api/vault/keys/{match.group(1)}", headers=app_stack.admin_headers)
    assert described.status_code == 200
    assert described.json()["status"] == "revoked"


def test_smoke_script_fails_with_a_wrong_function_key(app_stack: AppStack) -> None:
    proc = run_smoke(app_stack.url, "not-the-function-key")
    assert proc.returncode == 1
    assert "FAIL POST /api/vault/keys answered 401" in proc.stdout
