"""The operator console in a real browser, against a live devhost stack.

Debian chromium (Playwright) drives the page served by the real function_app.py on
devhost, with Azurite and localstripe behind it. What the page claims is checked where
it lives: a revoked key is refused by the proxy, a stopped run creates no more objects
in localstripe. Screenshots of the main views go to artifacts/ (ignored by git).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from proxy.client import Outcome, ProxyClient
from tests.billing.e2e import get_run, seed, start_run, succeeded_objects, unique_plan, wait_until
from tests.conftest import STRIPE_TEST_SECRET, AppStack
from tests.console.conftest import PHONE, ConsolePage
from tests.proxy.conftest import key_request, new_tag, pi_params, tagged_objects

pytestmark = [pytest.mark.integration, pytest.mark.browser]

OpenConsole = Callable[..., ConsolePage]


def issue_key(admin: httpx.Client, **overrides: Any) -> dict[str, Any]:
    resp = admin.post("/api/vault/keys", json=key_request(**overrides))
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def proxy(stack: AppStack, vault_key: str) -> ProxyClient:
    return ProxyClient(f"{stack.url}/api/stripe", vault_key, max_retries=0)


def run_body(customers: list[str], amount_cents: int, **extra: Any) -> dict[str, Any]:
    return {"billing_period": "2026-06", "budget_usd": 10_000,
            "customers": [{"customer_id": c, "amount_cents": amount_cents} for c in customers], **extra}


def test_without_a_key_the_page_shows_only_the_prompt(open_console: OpenConsole) -> None:
    tab = open_console()
    tab.open()
    page = tab.page
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#function-key")).to_have_attribute("type", "password")
    for hidden in ("#nav", "#view-keys", "#view-key", "#view-runs", "#view-run"):
        expect(page.locator(hidden)).to_be_hidden()
    page.wait_for_timeout(500)
    assert not [u for u in tab.urls if "/api/vault" in u or "/api/billing" in u], "no data without a key"
    assert tab.console_errors == []
    tab.shot("signin")


def test_a_wrong_key_shows_a_clear_message_and_nothing_else(open_console: OpenConsole) -> None:
    tab = open_console()
    tab.open()
    tab.sign_in("not-the-function-key")
    error = tab.page.locator("#signin-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("function key was refused (HTTP 401)")
    expect(tab.page.locator("#view-keys")).to_be_hidden()
    assert tab.page.evaluate("sessionStorage.getItem('spendgate.functionKey')") is None
    tab.shot("wrong-key")

    # A key that stops working mid-session (rotated) sends the page back to the prompt.
    tab.sign_in()
    expect(tab.page.locator("#view-keys")).to_be_visible()
    tab.page.evaluate("sessionStorage.setItem('spendgate.functionKey', 'rotated-away')")
    expect(tab.page.locator("#signin")).to_be_visible(timeout=10_000)
    expect(error).to_contain_text("function key was refused (HTTP 401)")
    expect(tab.page.locator("#view-keys")).to_be_hidden()
    assert tab.page.evaluate("sessionStorage.getItem('spendgate.functionKey')") is None


def test_keys_list_loads_clean_and_the_spend_bar_follows_a_live_charge(
    open_console: OpenConsole, app_stack: AppStack, admin: httpx.Client
) -> None:
    key = issue_key(admin, daily_usd_cap=100)
    tab = open_console()
    tab.open_signed_in("#/keys")
    page = tab.page
    page.fill("#keys-label", key["label"])
    page.click("#keys-filter button")
    row = page.locator(f'tr[data-key-id="{key["key_id"]}"]')
    expect(row).to_contain_text("active")
    expect(row.locator(".bar")).to_have_attribute("data-spent", "0")
    expect(row.locator(".bar")).to_have_attribute("data-cap", "10000")

    with proxy(app_stack, key["vault_key"]) as client:
        result = client.post("/v1/payment_intents", pi_params(2500, new_tag()))
    assert result.outcome is Outcome.SUCCEEDED, result
    # No reload: the page's own polling picks up the new spend.
    expect(row.locator(".bar")).to_have_attribute("data-spent", "2500", timeout=10_000)
    expect(row).to_contain_text("$25.00 spent of $100.00 daily cap")

    # The key lives in this tab's sessionStorage only, never in localStorage or cookies.
    assert page.evaluate("sessionStorage.getItem('spendgate.functionKey')") == app_stack.function_key
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    assert tab.console_errors == []
    page.fill("#keys-label", "")
    page.click("#keys-filter button")
    expect(page.locator("#keys-table tbody tr").first).to_be_visible()
    tab.shot("keys")


def test_revoke_in_the_console_makes_the_next_proxied_request_fail(
    open_console: OpenConsole, app_stack: AppStack, admin: httpx.Client
) -> None:
    key = issue_key(admin)
    tag = new_tag()
    with proxy(app_stack, key["vault_key"]) as client:
        assert client.post("/v1/payment_intents", pi_params(1000, tag)).outcome is Outcome.SUCCEEDED

    tab = open_console()
    tab.open_signed_in(f"#/keys/{key['key_id']}")
    page = tab.page
    expect(page.locator('#audit-table tr[data-decision="forwarded"]')).to_contain_text("Allowed: sent to Stripe")

    # Cancel changes nothing.
    page.click("#revoke")
    expect(page.locator("#confirm")).to_be_visible()
    tab.shot("revoke-confirm")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#confirm")).to_be_hidden()
    assert admin.get(f"/api/vault/keys/{key['key_id']}").json()["status"] == "active"

    page.click("#revoke")
    page.click("#confirm-ok")
    result = page.locator("[data-testid=action-result]")
    expect(result).to_contain_text("Revoked: status revoked")
    expect(result).to_contain_text(key["key_id"])  # the admin route's own answer, shown as returned

    with proxy(app_stack, key["vault_key"]) as client:
        denied = client.post("/v1/payment_intents", pi_params(1000, tag))
    assert denied.outcome is Outcome.REVOKED and denied.status == 401 and denied.code == "vault_key_revoked"
    assert len(tagged_objects(app_stack.localstripe.url, tag)) == 1
    expect(page.locator("#key-status")).to_have_text("revoked")
    expect(page.locator('#audit-table tr[data-decision="vault_key_revoked"]')).to_contain_text(
        "Denied: the key was revoked", timeout=10_000
    )
    assert tab.console_errors == []
    tab.shot("key-revoked", full_page=True)


def test_a_running_run_moves_on_screen_and_stop_ends_it(
    open_console: OpenConsole, app_stack: AppStack, admin: httpx.Client
) -> None:
    customers = seed(app_stack.localstripe.url, STRIPE_TEST_SECRET, 60, unique_plan("console-stop"))
    run_id = start_run(app_stack.url, app_stack.admin_headers, run_body(customers, 1500, max_parallel=2))
    tab = open_console()
    tab.open_signed_in("#/runs")
    page = tab.page
    row = page.locator(f'tr[data-run-id="{run_id}"]')
    expect(row).to_contain_text("running")
    tab.shot("runs")

    row.get_by_role("link", name=run_id).click()
    progress = page.locator("#run-progress")
    expect(progress).not_to_have_attribute("data-done", "0", timeout=30_000)
    first = int(tab.attr("#run-progress", "data-done"))
    page.wait_for_function(
        "n => Number(document.querySelector('#run-progress').dataset.done) > n", arg=first, timeout=30_000
    )
    assert int(tab.attr("#run-spend", "data-spent")) > 0
    tab.shot("run-running")

    page.click("#stop")
    expect(page.locator("#confirm")).to_contain_text("Stop this billing run?")
    page.click("#confirm-ok")
    expect(page.locator("[data-testid=action-result]")).to_contain_text("Stopped: run terminated")
    expect(page.locator("#run-status")).to_have_text("terminated", timeout=10_000)

    time.sleep(1)  # let a charge that was already at Stripe when the key was revoked finish
    charged = sum(succeeded_objects(app_stack.localstripe.url, STRIPE_TEST_SECRET, run_id).values())
    assert 0 < charged < 60
    time.sleep(3)
    assert sum(succeeded_objects(app_stack.localstripe.url, STRIPE_TEST_SECRET, run_id).values()) == charged
    assert get_run(app_stack.url, app_stack.admin_headers, run_id)["runtime_status"] == "Terminated"
    # A stopped run has no summary; its per-item outcomes come from the audit log and match Stripe.
    expect(page.locator("#items-filter")).to_contain_text(f"Charged ({charged})", timeout=10_000)
    assert tab.console_errors == []
    tab.shot("run-stopped", full_page=True)


def test_keys_are_paged(open_console: OpenConsole, admin: httpx.Client) -> None:
    label = f"console-paging/{uuid.uuid4().hex[:8]}"
    ids = {issue_key(admin, label=label)["key_id"] for _ in range(30)}
    tab = open_console()
    tab.open_signed_in("#/keys")
    page = tab.page
    page.fill("#keys-label", label)
    page.click("#keys-filter button")
    rows = page.locator("#keys-table tbody tr")
    expect(rows).to_have_count(25)
    # The unfiltered list also fills 25 rows; read only once every row is from the filtered list.
    expect(page.locator("#keys-table tbody tr", has_not_text=label)).to_have_count(0)
    first_page = {rows.nth(i).get_attribute("data-key-id") for i in range(25)}
    page.get_by_role("button", name="Next →").first.click()
    expect(rows).to_have_count(5)
    second_page = {rows.nth(i).get_attribute("data-key-id") for i in range(5)}
    assert first_page | second_page == ids
    expect(page.get_by_role("button", name="Next →").first).to_be_disabled()
    page.get_by_role("button", name="← Previous").first.click()
    expect(rows).to_have_count(25)
    assert tab.console_errors == []


def test_phone_sized_screen_needs_no_sideways_scrolling(
    open_console: OpenConsole, app_stack: AppStack, admin: httpx.Client
) -> None:
    customers = seed(app_stack.localstripe.url, STRIPE_TEST_SECRET, 2, unique_plan("console-phone"), declining=1)
    run_id = start_run(app_stack.url, app_stack.admin_headers, run_body(customers, 2000))
    assert wait_until(app_stack.url, app_stack.admin_headers, run_id)["runtime_status"] == "Completed"
    key = issue_key(admin)

    tab = open_console(PHONE)
    tab.open_signed_in("#/keys")
    page = tab.page
    no_sideways = "document.documentElement.scrollWidth <= window.innerWidth"
    expect(page.locator("#keys-table tbody tr").first).to_be_visible()
    assert page.evaluate(no_sideways)
    tab.shot("phone-keys")

    page.goto(f"{app_stack.url}/api/console#/keys/{key['key_id']}")
    expect(page.locator("#key-card h1")).to_contain_text(key["label"])
    assert page.evaluate(no_sideways)
    tab.shot("phone-key", full_page=True)

    page.goto(f"{app_stack.url}/api/console#/runs/{run_id}/items")
    items = page.locator("#items-table tbody tr")
    expect(items).to_have_count(3)
    expect(page.locator('#items-table tr[data-outcome="charged"]')).to_have_count(2)
    expect(page.locator('#items-table tr[data-outcome="declined"]')).to_contain_text("Card declined")
    assert page.evaluate(no_sideways)
    tab.shot("phone-run", full_page=True)
    assert tab.console_errors == []


def test_a_run_that_hit_its_cap_shows_skipped_items_by_reason(open_console: OpenConsole, app_stack: AppStack) -> None:
    customers = seed(app_stack.localstripe.url, STRIPE_TEST_SECRET, 6, unique_plan("console-cap"))
    body = {**run_body(customers, 2000, max_parallel=2), "budget_usd": 40}  # 2 charged, 2 over the cap, 2 skipped
    run_id = start_run(app_stack.url, app_stack.admin_headers, body)
    out = wait_until(app_stack.url, app_stack.admin_headers, run_id)["output"]
    assert out["skipped_by_reason"] == {"cap_exceeded": 2}
    tab = open_console()
    tab.open_signed_in("#/runs")
    row = tab.page.locator(f'tr[data-run-id="{run_id}"]')
    expect(row).to_contain_text("skipped: 2 (Run cap reached)")
    expect(row).to_contain_text("2 charged")
    assert tab.console_errors == []
