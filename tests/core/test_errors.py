"""The error catalog: docs/errors.md matches it, and its docstring table lists every code."""

from __future__ import annotations

from pathlib import Path

import core.errors as errors
from core.errors import CATALOG, SpendgateError, render_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def test_docs_errors_md_is_generated_from_the_catalog() -> None:
    assert DOC.read_text() == render_markdown(), "regenerate: python -m core.errors > docs/errors.md"


def test_module_docstring_lists_every_code_with_status_and_retry() -> None:
    doc = errors.__doc__ or ""
    for kind in CATALOG.values():
        line = next((ln for ln in doc.splitlines() if ln.strip().startswith(kind.code + " ")), "")
        assert str(kind.status) in line and ("true" if kind.retryable else "false") in line, kind.code


def test_errors_are_stripe_shaped_with_a_retry_header() -> None:
    err = SpendgateError("spend_cap_exceeded", param="amount")
    assert err.status == 402 and err.body()["error"]["type"] == "card_error"
    assert err.headers()["Stripe-Should-Retry"] == "false"
    assert SpendgateError("idempotency_key_in_use").headers()["Stripe-Should-Retry"] == "true"
