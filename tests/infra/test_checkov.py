"""checkov scans infra/ and finds nothing; every suppression says why, in the Bicep file itself.

checkov lives in its own venv (`.venv-tools/`, made by `make setup`) because its pinned
dependencies clash with the app's. It runs once per test session, offline (~5 s).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pytest

from devhost.services import REPO_ROOT
from tests.infra.bicep import INFRA, bicep_files, parse

CHECKOV = REPO_ROOT / ".venv-tools" / "bin" / "checkov"
SKIP_COMMENT = re.compile(r"checkov:skip=([A-Z0-9_]+)(?::(.*))?")
MIN_REASON_LENGTH = 40


@pytest.fixture(scope="session")
def checkov_report() -> dict[str, Any]:
    assert CHECKOV.is_file(), f"{CHECKOV} is missing: run `make setup` (it installs requirements-tools.txt)"
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"}  # no PyPI version check
    proc = subprocess.run(
        [str(CHECKOV), "--directory", str(INFRA), "--framework", "bicep", "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode in (0, 1), f"checkov crashed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    assert isinstance(report, dict) and report["check_type"] == "bicep", "expected one bicep report"
    return report


def _summary(report: dict[str, Any]) -> str:
    s = report["summary"]
    return f"passed={s['passed']} failed={s['failed']} skipped={s['skipped']} parsing_errors={s['parsing_errors']}"


def test_checkov_finds_no_failed_check(checkov_report: dict[str, Any]) -> None:
    failed = [
        f"{r['check_id']} {r['check_name']} — {r['resource']} ({r['file_path']}:{r['file_line_range']})"
        for r in checkov_report["results"]["failed_checks"]
    ]
    assert not failed, "checkov failures:\n" + "\n".join(failed)
    assert checkov_report["summary"]["parsing_errors"] == 0, _summary(checkov_report)


def test_checkov_scanned_every_file_that_declares_resources(checkov_report: dict[str, Any]) -> None:
    results = checkov_report["results"]
    scanned = {r["file_abs_path"] for kind in ("passed_checks", "skipped_checks") for r in results[kind]}
    # Role assignments, identities and resource groups have no checkov checks; these types do.
    checked_types = ("Microsoft.Storage/", "Microsoft.Web/", "Microsoft.KeyVault/")
    must_scan = {
        str(path)
        for path in bicep_files()
        for res in parse(path).get("resources", {}).values()
        if not res.get("existing") and res["type"].startswith(checked_types)
    }
    assert must_scan, "no checkable resources found"
    assert must_scan <= scanned, f"not scanned: {sorted(must_scan - scanned)}"
    assert checkov_report["summary"]["passed"] >= 20, _summary(checkov_report)


def test_every_suppression_carries_a_written_reason(checkov_report: dict[str, Any]) -> None:
    for r in checkov_report["results"]["skipped_checks"]:
        reason = r["check_result"].get("suppress_comment", "").strip()
        assert reason and reason != "No comment provided", f"{r['check_id']} in {r['file_path']} has no reason"
        assert len(reason) >= MIN_REASON_LENGTH, f"{r['check_id']} in {r['file_path']}: reason too thin: {reason!r}"


def test_every_suppression_in_the_files_is_used(checkov_report: dict[str, Any]) -> None:
    """A skip comment for a check that no longer fires (or sits outside its resource) is stale."""
    used = {(r["file_abs_path"], r["check_id"]) for r in checkov_report["results"]["skipped_checks"]}
    for path in bicep_files():
        for line in path.read_text().splitlines():
            if match := SKIP_COMMENT.search(line):
                check_id, reason = match.group(1), (match.group(2) or "").strip()
                assert len(reason) >= MIN_REASON_LENGTH, f"{path}: {check_id} suppressed without a reason"
                assert (str(path), check_id) in used, f"{path}: suppression of {check_id} matches nothing"
