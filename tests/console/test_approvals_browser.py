"""Issue 16, point 4: the console's Approvals view, a run waiting for approval, and a key's alerts.

Debian chromium (Playwright) drives the page served by the real app on devhost; what the page
claims is checked where it lives: the approval's state and who decided (the API), the charge in
localstripe after approval, the run's outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from proxy.client import Outcome, ProxyClient
from tests.billing.e2e import seed, start_run, unique_plan, wait_until
from tests.conftest import STRIPE_TEST_SECRET, AppStack
from tests.console.conftest import ConsolePage
from tests.proxy.conftest import key_request, new_tag, pi_params, tagged_objects

pytestmark = [pytest.mark.integration, pytest.mark.browser]

OpenConsole = Callable[..., ConsolePage]


def held_charge(stack: AppStack, admin: httpx.Client, amount: int) -> tuple[dict[str, Any], str, str, str]:
    """A key with approval_above_usd 10 and one charge it holds: (key, approval id, idempotency key, tag)."""
    resp = admin.post("/api/vault/keys", json=key_request(daily_usd_cap=500, approval_above_usd=10))
    assert resp.status_code == 201, resp.text
    key, tag, idem = resp.json(), new_tag(), f"console-{new_tag()}"
    with ProxyClient(f"{stack.url}/api/stripe", key["vault_key"], max_retries=0) as client:
        result = client.post("/v1/payment_intents", pi_params(amount, tag), idempotency_key=idem)
    assert result.status == 402 and result.code == "approval_required", result
    return key, str(result.body["error"]["approval"]), idem, tag


def decide_in_dialog(tab: ConsolePage, row: Any, verb: str, approver: str) -> None:
    page = tab.page
    row.locator(f'[data-decide="{verb}"]').click()
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-who")).to_be_visible()
    page.fill("#confirm-approver", approver)
    page.fill("#confirm-reason", f"{verb} from the console test")
    page.click("#confirm-ok")


def test_the_approvals_view_approves_and_rejects_held_charges(
    open_console: OpenConsole, app_stack: AppStack, admin: httpx.Client
) -> None:
    key, approval, idem, tag = held_charge(app_stack, admin, 4200)
    _, other, _, _ = held_charge(app_stack, admin, 1500)
    tab = open_console()
    tab.open_signed_in("#/approvals")
    page = tab.page
    row = page.locator(f'tr[data-approval-id="{approval}"]')
    expect(row).to_contain_text("$42.00")
    expect(page.locator("#approvals-count")).to_be_visible()
    tab.shot("approvals")

    # Cancel changes nothing; an empty "deciding as" cannot be submitted.
    row.locator('[data-decide="approve"]').click()
    page.click("#confirm button[value=cancel]")
    assert admin.get("/api/approvals").json()["data"][0]["state"] == "pending"

    decide_in_dialog(tab, row, "approve", "ops@example.com")
    expect(row).to_have_count(0, timeout=10_000)
    decided = {a["id"]: a for a in admin.get("/api/approvals", params={"state": "approved"}).json()["data"]}[approval]
    assert decided["state"] == "approved" and decided["decided_by"] == "ops@example.com"
    with ProxyClient(f"{app_stack.url}/api/stripe", key["vault_key"], max_retries=0) as client:
        assert client.post("/v1/payment_intents", pi_params(4200, tag), idempotency_key=idem).outcome is Outcome.SUCCEEDED
    assert [o["amount"] for o in tagged_objects(app_stack.localstripe.url, tag)] == [4200]

    other_row = page.locator(f'tr[data-approval-id="{other}"]')
    decide_in_dialog(tab, other_row, "reject", "finance@example.com")
    expect(other_row).to_have_count(0, timeout=10_000)
    rejected = {a["id"]: a for a in admin.get("/api/approvals", params={"state": "rejected"}).json()["data"]}[other]
    assert rejected["state"] == "rejected" and rejected["decided_by"] == "finance@example.com"

    # The key's page lists its alerts: the approval request.
    tab.open(f"#/keys/{key['key_id']}")  # signed in already (the key is in this tab's session)
    expect(page.locator('#key-alerts-table tr[data-alert="approval_requested"]')).to_have_count(1)
    expect(page.locator("#key-alerts-table")).to_contain_text(approval)
    assert tab.console_errors == []


def test_a_run_waiting_for_approval_shows_it_and_is_approved_from_its_page(
    open_console: OpenConsole, app_stack: AppStack
) -> None:
    customers = seed(app_stack.localstripe.url, STRIPE_TEST_SECRET, 2, unique_plan("console-approve"))
    run_id = start_run(app_stack.url, app_stack.admin_headers, {
        "billing_period": "2026-09", "budget_usd": 100, "require_approval": True, "purpose": unique_plan("c"),
        "customers": [{"customer_id": c, "amount_cents": 2900} for c in customers]})
    tab = open_console()
    tab.open_signed_in("#/approvals")
    page = tab.page
    expect(page.locator(f'#run-approvals-table tr[data-run-id="{run_id}"]')).to_be_visible(timeout=15_000)

    tab.open(f"#/runs/{run_id}")
    expect(page.locator("#run-status")).to_have_text("awaiting approval", timeout=15_000)
    expect(page.locator("#run-facts")).to_contain_text("waiting for a decision")
    tab.shot("run-awaiting-approval")
    decide_in_dialog(tab, page.locator("#stop-slot"), "approve", "ops@example.com")
    run = wait_until(app_stack.url, app_stack.admin_headers, run_id)
    assert run["output"]["counts"]["charged"] == 2 and run["output"]["approval"]["by"] == "ops@example.com"
    expect(page.locator("#run-facts")).to_contain_text("approved by ops@example.com", timeout=15_000)
    assert tab.console_errors == []
