"""The tools themselves against the real proxy: every outcome the model can see, and nothing raises."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from agents.tools import BillingTools, ToolConfigurationError, check_vault_key
from devhost.seed import DECLINING_CARD, create_customer
from tests.agents.conftest import AgentStack
from tests.conftest import STRIPE_TEST_SECRET

VAULT_KEY = "vk_0123456789abcdef0123_" + "x" * 48


@pytest.mark.parametrize("raw", ["sk_live_abc", "sk_test_abc", "rk_live_abc", "pk_test_abc", "whatever"])
def test_raw_stripe_keys_are_refused_without_echoing_them(raw: str) -> None:
    with pytest.raises(ToolConfigurationError) as err:
        BillingTools("http://127.0.0.1:9/api/stripe", billing_key=raw)
    assert raw not in str(err.value)
    with pytest.raises(ToolConfigurationError):
        BillingTools("http://127.0.0.1:9/api/stripe", billing_key=VAULT_KEY, audit_key=raw)


def test_a_proxy_url_and_at_least_one_vault_key_are_required() -> None:
    with pytest.raises(ToolConfigurationError):
        BillingTools("http://127.0.0.1:9/api/stripe")
    with pytest.raises(ToolConfigurationError):
        BillingTools("", billing_key=VAULT_KEY)
    assert check_vault_key("X", f"  {VAULT_KEY} ") == VAULT_KEY


def test_unusable_arguments_come_back_as_errors_without_any_request() -> None:
    # Port 9 (discard) is never contacted: validation happens before any request.
    with BillingTools("http://127.0.0.1:9/api/stripe", billing_key=VAULT_KEY) as tools:
        for output in (
            tools.charge_stripe("cus_1", -1, "2026-06"),
            tools.get_charge_status("../v1/balance"),
            tools.list_customer_charges("acct_1"),
            tools.call("charge_stripe", "{not json"),
            tools.call("charge_stripe", '{"customer_id": "cus_1"}'),
            tools.call("refund_everything", "{}"),
        ):
            body = json.loads(output)
            assert body["error"] in {"invalid_arguments", "unknown_tool"} and body["retryable"] is False


def test_an_unreachable_proxy_is_a_retryable_error_with_the_same_key() -> None:
    with BillingTools(
        "http://127.0.0.1:9/api/stripe", billing_key=VAULT_KEY, backoff_seconds=0.01, payment_method="pm_card_visa"
    ) as tools:
        first = json.loads(tools.charge_stripe("cus_1", 2900, "2026-06"))
        second = json.loads(tools.charge_stripe("cus_1", "2900", "2026-06"))
    assert first["retryable"] is True and first["stop"] is False and "same idempotency key" in first["message"]
    assert first["idempotency_key"] == second["idempotency_key"]


@pytest.mark.integration
def test_invoice_id_lets_a_legitimate_repeat_through(stack: AgentStack) -> None:
    customer = stack.new_customer()
    invoice_a, invoice_b = stack.new_invoice(customer), stack.new_invoice(customer)
    tools = stack.tools(billing=stack.billing_key(), audit=stack.audit_key())
    a = json.loads(tools.charge_stripe(customer, 2900, "2026-06", invoice_a))
    b = json.loads(tools.charge_stripe(customer, 2900, "2026-06", invoice_b))
    again = json.loads(tools.charge_stripe(customer, 2900, "2026-06", invoice_b))
    assert a["charge_id"] != b["charge_id"] and again["charge_id"] == b["charge_id"] and again["replayed"] is True
    ours = [pi for pi in stack.payment_intents(customer) if pi["metadata"].get("source") == "spendgate-agent"]
    assert sorted(pi["metadata"]["invoice_id"] for pi in ours) == sorted([invoice_a, invoice_b])


@pytest.mark.integration
def test_revoked_and_expired_keys_make_the_tool_say_stop(stack: AgentStack) -> None:
    customer = stack.new_customer()
    audit = stack.audit_key()
    revoked = stack.billing_key()
    stack.revoke(revoked["key_id"])
    expired = stack.issue_key("billing", ["POST /v1/payment_intents"], 500, expires_in="1s")
    time.sleep(1.2)
    for key, code in ((revoked, "vault_key_revoked"), (expired, "vault_key_expired")):
        out = json.loads(stack.tools(billing=key, audit=audit).charge_stripe(customer, 2900, "2026-06"))
        assert out["error"] == code and out["stop"] is True and out["retryable"] is False
        assert out["message"].startswith("STOP:") and "Tell the user" in out["message"]
    assert stack.payment_intents(customer) == []


@pytest.mark.integration
def test_a_declined_card_and_a_customer_without_card_are_explained(stack: AgentStack) -> None:
    tools = stack.tools(billing=stack.billing_key(), audit=stack.audit_key())
    with httpx.Client(base_url=stack.app.localstripe.url, auth=(STRIPE_TEST_SECRET, ""), timeout=30) as client:
        declining = create_customer(client, name="Declines", card=DECLINING_CARD)
        no_card = client.post("/v1/customers", data={"name": "No card"}).json()["id"]
    declined = json.loads(tools.charge_stripe(declining, 2900, "2026-06"))
    assert declined["error"] == "card_declined" and declined["retryable"] is False and declined["stop"] is False
    missing = json.loads(tools.charge_stripe(no_card, 2900, "2026-06"))
    assert missing["error"] == "no_payment_method"
    unknown = json.loads(tools.charge_stripe("cus_doesnotexist", 2900, "2026-06"))
    assert unknown["error"] == "no_such_customer"
    assert [pi["status"] for pi in stack.payment_intents(declining)] in ([], ["requires_payment_method"])
    assert stack.payment_intents(no_card) == []


@pytest.mark.integration
def test_lookups_are_read_only_and_need_the_audit_key(stack: AgentStack) -> None:
    customer = stack.new_customer()
    billing = stack.billing_key()
    charged = json.loads(stack.tools(billing=billing, audit=stack.audit_key()).charge_stripe(customer, 2900, "2026-06"))

    audit_only = stack.tools(audit=stack.audit_key())
    status = json.loads(audit_only.get_charge_status(charged["charge_id"]))
    assert status["status"] == "succeeded" and status["customer_id"] == customer
    listed = json.loads(audit_only.list_customer_charges(customer))
    assert [c["payment_intent"] for c in listed["charges"]] == [charged["charge_id"]]
    assert json.loads(audit_only.get_charge_status("pi_doesnotexist"))["error"] == "not_found"

    billing_only = stack.tools(billing=billing)  # may POST payment intents and nothing else
    refused = json.loads(billing_only.get_charge_status(charged["charge_id"]))
    assert refused["error"] == "endpoint_not_allowed" and refused["retryable"] is False
    assert len(stack.payment_intents(customer)) == 1


def test_default_tools_are_rebuilt_only_for_their_own_settings_and_close_the_old_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 15 point 9: any environment change used to rebuild them, and the old clients were never closed."""
    from agents import tools as tools_module

    monkeypatch.setattr(tools_module, "_default", None)
    monkeypatch.setenv("SPENDGATE_PROXY_URL", "http://127.0.0.1:9/api/stripe")
    monkeypatch.setenv("SPENDGATE_BILLING_KEY", VAULT_KEY)
    first = tools_module.default_tools()
    monkeypatch.setenv("SOME_OTHER_SETTING", "changed")
    assert tools_module.default_tools() is first
    monkeypatch.setenv("SPENDGATE_BILLING_KEY", VAULT_KEY[:-1] + "y")  # a rotated key
    second = tools_module.default_tools()
    assert second is not first and first._once._http.is_closed and first._lookup._http.is_closed
    # A rotation while a call is in flight closes the old clients only when that call returns.
    seen: list[bool] = []

    def rotate_mid_call(tools: object) -> str:
        monkeypatch.setenv("SPENDGATE_BILLING_KEY", VAULT_KEY[:-1] + "z")
        assert tools_module.default_tools() is not second
        seen.append(second._once._http.is_closed)
        return "done"

    assert tools_module._with_default_tools(rotate_mid_call) == "done"
    assert seen == [False] and second._once._http.is_closed and second._lookup._http.is_closed
    tools_module.default_tools().close()
