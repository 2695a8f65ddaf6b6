"""The billing tools an AI agent calls: charge, look up, list — only through the spend proxy.

Three guarantees, whichever agent framework calls them:

* **Exactly once.** `charge_stripe` derives the charge identity and the attempt's
  idempotency key from the validated arguments and the card (`agents.idempotency`), so an
  SDK retry, a retried run or a replayed conversation that repeats a charge gets the
  original payment back ("already charged: <pi id>"), never a second one. The charge
  itself is `agents.charge`.
* **Once per customer and period, across keys.** The charge goes to
  `POST /api/billing/charges` (`billing.once`), which claims the charge identity (customer,
  billing period, `invoice_id`) in the same table the billing runs use before it forwards
  the form to the proxy: a customer a run, another agent, another vault key (a rotation) or
  an earlier call already billed for the period answers `already_charged` with that
  payment's id, and nothing is charged.
* **Least privilege.** A charge goes out with the *billing* vault key (allowlist:
  ``POST /v1/payment_intents``), a lookup with the *audit* key (GETs only). A process
  holds only the keys its role was issued; a tool whose own key is absent uses the other
  one, so the proxy's allowlist — not this code — decides (a supervisor holding only the
  audit key gets a 403 when it tries to charge).
* **Never raises.** Every answer is a JSON string; failures use `agents.messages`.

Tests build `BillingTools` directly; the classic SDK needs plain functions with Sphinx
docstrings, so the module-level functions below delegate to `default_tools()`, which is
built lazily from `core.settings`. This module deliberately has no
``from __future__ import annotations``: azure-ai-agents reads the real annotations to
build the tool schemas (string annotations would all become ``"string"``).
"""

import inspect
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, Optional

import httpx

from agents import approval, messages
from agents.charge import Keys, charge, detail, key_failure, payment_summary
from agents.idempotency import ChargeArgs, InvalidArguments
from billing.once import charges_base_url
from core.settings import AUDIT_KEY, BILLING_KEY, PROXY_URL, MissingSettingError, Settings, get_settings
from proxy.client import Outcome, ProxyClient
from proxy.keys import KEY_PREFIX as VAULT_KEY_PREFIX

log = logging.getLogger(__name__)

TOOL_NAMES = ("charge_stripe", "get_charge_status", "list_customer_charges")
_LOOKUP_ID = re.compile(r"^(pi|ch)_[A-Za-z0-9]{1,100}$")
_RAW_STRIPE_PREFIXES = ("sk_", "rk_", "pk_")


class ToolConfigurationError(ValueError):
    """The tools were given no usable vault key (or a raw Stripe key); they refuse to start."""


def check_vault_key(setting: str, value: str) -> str:
    """Return `value` if it is a spendgate vault key; raise naming the setting otherwise."""
    value = value.strip()
    if value.startswith(_RAW_STRIPE_PREFIXES):
        raise ToolConfigurationError(
            f"{setting} holds a raw Stripe key ({value[:3]}…); agent tools only accept spendgate vault keys "
            f"({VAULT_KEY_PREFIX}…) issued by POST /api/vault/keys"
        )
    if not value.startswith(VAULT_KEY_PREFIX):
        raise ToolConfigurationError(f"{setting} is not a spendgate vault key (expected {VAULT_KEY_PREFIX}…)")
    return value


class BillingTools:
    """The tools bound to one proxy and one role's keys (one `ProxyClient` per key).

    A charge uses the customer's card as `billing.cards.resolve` finds it with the lookup key
    (``invoice_settings.default_payment_method``, else ``default_source``, else the only
    attached card) — the one resolution the billing runs use too — unless a fixed
    `payment_method` is given (e.g. ``pm_card_visa`` in Stripe test mode).
    """

    def __init__(
        self,
        proxy_url: str,
        *,
        billing_key: str | None = None,
        audit_key: str | None = None,
        http: httpx.Client | None = None,
        max_retries: int = 2,
        backoff_seconds: float = 0.2,
        payment_method: str | None = None,
    ) -> None:
        if not proxy_url:
            raise ToolConfigurationError(f"{PROXY_URL} is not set: the tools only talk to Stripe through the proxy")
        billing = check_vault_key(BILLING_KEY, billing_key) if billing_key else None
        audit = check_vault_key(AUDIT_KEY, audit_key) if audit_key else None
        if not (billing or audit):
            raise ToolConfigurationError(f"set {BILLING_KEY} (billing agent) and/or {AUDIT_KEY} (supervisor, audit)")
        self.payment_method = payment_method
        charge_key, lookup_key = billing or audit or "", audit or billing or ""

        def client(base: str, key: str) -> ProxyClient:
            return ProxyClient(base, key, http=http, max_retries=max_retries, backoff_seconds=backoff_seconds)

        # The charging key goes to `POST /api/billing/charges`, which claims the charge identity first.
        self._once = client(charges_base_url(proxy_url), charge_key)
        self._lookup = client(proxy_url, lookup_key)
        self._lookup_role = "audit" if audit else "billing"
        self._keys = Keys(self._once, self._lookup, "billing" if billing else "audit", self._lookup_role)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> "BillingTools":
        """Tools configured from app settings; raises `ToolConfigurationError` when unusable."""
        settings = settings or get_settings()
        try:
            proxy_url = settings.proxy_url
        except MissingSettingError as exc:
            raise ToolConfigurationError(str(exc)) from exc
        return cls(proxy_url, billing_key=settings.billing_key, audit_key=settings.audit_key, **kwargs)

    def close(self) -> None:
        self._once.close()
        self._lookup.close()

    def __enter__(self) -> "BillingTools":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the tools --------------------------------------------------------------------
    def charge_stripe(
        self, customer_id: str, amount_cents: int, billing_period: str, invoice_id: str | None = None
    ) -> str:
        """Charge `customer_id` once for `billing_period`; see the module-level function and `agents.charge`."""
        try:
            args = ChargeArgs.parse(customer_id, amount_cents, billing_period, invoice_id)
        except InvalidArguments as exc:
            return messages.error_output(
                "invalid_arguments", f"{exc}. Nothing was charged. Ask the user for the correct value; do not guess."
            )
        return charge(self._keys, args, self.payment_method)

    def get_charge_status(self, charge_id: str) -> str:
        """Look up one payment (pi_…) or charge (ch_…) read-only; see the module-level function."""
        text = str(charge_id or "").strip()
        if approval.APPROVAL_ID.match(text):  # a charge waiting for a person (agents/approval.py)
            return self._approval_status(text)
        if not _LOOKUP_ID.match(text):
            return messages.error_output(
                "invalid_arguments",
                f"charge_id must be a payment id like pi_… (or a charge id like ch_…), got {charge_id!r}.",
            )
        path = f"/v1/payment_intents/{text}" if text.startswith("pi_") else f"/v1/charges/{text}"
        return self._read(
            path, None, lambda body: {**payment_summary(body), "message": _status_message(body)}, charge_id=text
        )

    def _approval_status(self, approval_id: str) -> str:
        try:
            result = self._once.get(f"/approvals/{approval_id}")
        except Exception as exc:  # never raise into the agent framework
            return messages.error_output("internal_error", f"The lookup failed unexpectedly ({type(exc).__name__}).")
        if result.outcome is Outcome.SUCCEEDED:
            return json.dumps(approval.status(result.body))
        if result.status == 404:
            return messages.error_output("not_found", f"There is no approval {approval_id} for this agent's key.")
        return messages.error_output(result.code or "upstream_unavailable", f"The lookup failed: {detail(result)}.",
                                     retryable=result.outcome is Outcome.TRANSIENT)

    def list_customer_charges(self, customer_id: str) -> str:
        """List a customer's recent charges read-only; see the module-level function."""
        text = str(customer_id or "").strip()
        if not re.match(r"^cus_[A-Za-z0-9]{1,100}$", text):
            return messages.error_output("invalid_arguments", f"customer_id must look like cus_…, got {customer_id!r}.")

        def shape(body: Mapping[str, Any]) -> dict[str, Any]:
            charges = [payment_summary(c) for c in body.get("data") or []]
            return {
                "customer_id": text,
                "charges": charges,
                "has_more": bool(body.get("has_more")),
                "message": f"{len(charges)} recent charge(s), newest first. Each payment_intent id works with get_charge_status.",
            }

        return self._read("/v1/charges", {"customer": text, "limit": 20}, shape, customer_id=text)

    def call(self, name: str, arguments: str | Mapping[str, Any] | None) -> str:
        """Run the tool `name` with the model's JSON `arguments`; never raises (for the run loops)."""
        if name not in TOOL_NAMES:
            return messages.error_output(
                "unknown_tool", f"There is no tool named {name!r}; use one of {', '.join(TOOL_NAMES)}."
            )
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str | bytes) else dict(arguments or {})
            if not isinstance(parsed, dict):
                raise TypeError("arguments must be a JSON object")
            bound = inspect.signature(getattr(self, name)).bind(**parsed)
        except (ValueError, TypeError) as exc:
            return messages.error_output(
                "invalid_arguments", f"Arguments for {name} are unusable: {exc}. Nothing was done."
            )
        output: str = getattr(self, name)(*bound.args, **bound.kwargs)
        return output

    # --- lookups ---------------------------------------------------------------------------
    def _read(
        self,
        path: str,
        params: Mapping[str, Any] | None,
        shape: Callable[[Mapping[str, Any]], dict[str, Any]],
        **context: str,
    ) -> str:
        try:
            result = self._lookup.get(path, params)
            if result.outcome is Outcome.SUCCEEDED:
                return json.dumps(shape(result.body))
            if result.outcome is Outcome.FORBIDDEN:
                return messages.error_output(result.code or "endpoint_not_allowed", messages.NOT_ALLOWED_TO_READ)
            if result.outcome is Outcome.TRANSIENT:
                return messages.error_output(
                    result.code or "upstream_unavailable",
                    messages.TRANSIENT_READ.format(detail=detail(result)),
                    retryable=True,
                )
            if result.status == 404 and "charge_id" in context:
                return messages.error_output("not_found", messages.NOT_FOUND.format(charge_id=context["charge_id"]))
            # A revoked or expired lookup key ends lookups, not billing: no STOP here, but name the key.
            if (code := key_failure(result)) and self._lookup_role == "audit":
                state = {"vault_key_revoked": "has been revoked", "vault_key_expired": "has expired"}
                return messages.error_output(
                    code,
                    messages.AUDIT_KEY_LOOKUP.format(state=state.get(code, "is not recognised")),
                    stop=False,
                    vault_key="audit",
                )
            return messages.error_output(
                result.code or "invalid_request",
                f"The lookup was refused: {detail(result)}. Do not retry; tell the user.",
                stop=False,
            )
        except Exception as exc:  # never raise into the agent framework
            log.exception("lookup %s failed unexpectedly", path)
            return messages.error_output("internal_error", f"The lookup failed unexpectedly ({type(exc).__name__}).")


def _status_message(body: Mapping[str, Any]) -> str:
    status = body.get("status")
    if status == "succeeded" or body.get("paid"):
        return "This payment succeeded; the customer has been charged. Do not charge again."
    return f"This payment's status is {status!r}; it has not been paid. Do not charge again without the user's instruction."


# --- the process-wide tools behind the module-level functions ------------------------------
_default: tuple[tuple[str | None, ...], BillingTools] | None = None
_default_lock = threading.Lock()
# Calls in flight per tools object (by id), and tools replaced while calls were in flight: they
# are closed when their last call returns, so a rotation never cuts a charge off mid-request.
_in_flight: dict[int, int] = {}
_retired: dict[int, BillingTools] = {}


def _tool_settings(settings: Settings) -> tuple[str | None, ...]:
    """The settings the tools are built from; other app settings changing does not rebuild them."""
    try:
        proxy_url: str | None = settings.proxy_url
    except MissingSettingError:
        proxy_url = None
    return (proxy_url, settings.billing_key, settings.audit_key)


def _current_locked() -> BillingTools:
    global _default
    settings = get_settings()
    wanted = _tool_settings(settings)
    if _default is None or _default[0] != wanted:
        fresh = BillingTools.from_settings(settings)
        if _default is not None:
            old = _default[1]
            if _in_flight.get(id(old)):
                _retired[id(old)] = old  # closed by the last call still using it
            else:
                old.close()
        _default = (wanted, fresh)
    return _default[1]


def default_tools() -> BillingTools:
    """The process's tools, built from app settings on first use, and rebuilt only when the
    proxy URL or a key changes (a key rotation); the old clients are closed once idle."""
    with _default_lock:
        return _current_locked()


def _with_default_tools(run: Callable[[BillingTools], str]) -> str:
    try:
        with _default_lock:
            tools = _current_locked()
            _in_flight[id(tools)] = _in_flight.get(id(tools), 0) + 1
    except Exception as exc:  # ToolConfigurationError, a malformed setting…: answer, never raise
        log.error("agent tools are not configured: %s", exc)
        return messages.error_output("configuration_error", str(exc))
    try:
        return run(tools)
    finally:
        with _default_lock:
            left = _in_flight[id(tools)] - 1
            if left:
                _in_flight[id(tools)] = left
            else:
                del _in_flight[id(tools)]
                retired = _retired.pop(id(tools), None)
                if retired is not None:
                    retired.close()


# --- module-level functions for azure-ai-agents (FunctionTool reads their signature + docstring) ---
# Only the first docstring line becomes the tool description the model sees; the `:param:`
# lines become the parameter descriptions. Keep both written for the model.


def charge_stripe(customer_id: str, amount_cents: int, billing_period: str, invoice_id: Optional[str] = None) -> str:  # noqa: UP045 - the SDK maps Optional[...] to a nullable type
    """Bill a customer ONCE for a billing period; only when the current message asks to bill (never to look something up).

    Repeating a charge never charges twice: a customer already billed for the period (by this
    agent, another agent or key, or a billing run; whatever the amount or card) is not charged
    again, and the answer says "already charged: <charge_id>".

    :param customer_id: The Stripe customer id, e.g. cus_123.
    :param amount_cents: The amount in US cents, e.g. 2900 for $29.00.
    :param billing_period: The period being billed, exactly YYYY-MM (e.g. 2026-06) or YYYY-qN for a quarter (e.g. 2026-q2).
    :param invoice_id: Only when the user names a Stripe invoice (an existing in_... id) to bill separately in the same period; otherwise null. Never invent one.
    :return: JSON with charge_id, status, idempotency_key and replayed, or an error object with a message to follow.
    """
    return _with_default_tools(lambda t: t.charge_stripe(customer_id, amount_cents, billing_period, invoice_id))


def get_charge_status(charge_id: str) -> str:
    """Look up an existing payment by id (read-only); use this for any question about a charge already made.

    :param charge_id: The charge_id from an earlier charge_stripe result (pi_...), a charge id (ch_...), or an approval_id (apr_...) of a charge waiting for approval.
    :return: JSON with the payment's status, amount, customer and billing period (or the approval's state), or an error object.
    """
    return _with_default_tools(lambda t: t.get_charge_status(charge_id))


def list_customer_charges(customer_id: str) -> str:
    """List a customer's recent charges (read-only); use it to check what was billed when no charge id is known.

    :param customer_id: The Stripe customer id, e.g. cus_123.
    :return: JSON with the customer's recent charges, newest first, or an error object.
    """
    return _with_default_tools(lambda t: t.list_customer_charges(customer_id))


TOOL_FUNCTIONS: tuple[Callable[..., str], ...] = (charge_stripe, get_charge_status, list_customer_charges)
