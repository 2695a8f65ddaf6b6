"""The billing tools an AI agent calls: charge, look up, list — only through the spend proxy.

Three guarantees, whichever agent framework calls them:

* **Exactly once.** `charge_stripe` derives its idempotency key from the normalized
  arguments (`agents.idempotency`), so an SDK retry, a retried run or a replayed thread
  that repeats a charge gets the original payment back (`"replayed": true`), never a
  second one. Retries live in one layer only — the shared `ProxyClient`, which resends
  the same key; the Foundry clients are built with their own retries off.
* **Once per customer and period.** The charge goes to `POST /api/billing/charges`
  (`billing.once`), which claims the charge identity (customer, billing period,
  `invoice_id`) in the same table the billing runs use before it forwards the form to the
  proxy: a customer a run (or another call, whatever the amount) already billed for the
  period answers `already_charged` with that payment's id, and nothing is charged.
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
from agents.idempotency import CURRENCY, ChargeArgs, InvalidArguments, charge_idempotency_key
from billing import cards
from billing.once import charges_base_url
from core.settings import AUDIT_KEY, BILLING_KEY, PROXY_URL, MissingSettingError, Settings, get_settings
from proxy.client import Outcome, ProxyClient, ProxyResult
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


def payment_intent_params(args: ChargeArgs, payment_method: str) -> dict[str, Any]:
    """The Stripe parameters of a charge: a confirmed, off-session payment intent.

    Only normalized values go in, so a repeat spelled differently by the model sends
    byte-identical parameters under the same key (no `idempotency_error`).
    """
    metadata = {"billing_period": args.billing_period, "source": "spendgate-agent"}
    if args.invoice_id:
        metadata["invoice_id"] = args.invoice_id
    return {
        "customer": args.customer_id,
        "amount": args.amount_cents,
        "currency": CURRENCY,
        "payment_method": payment_method,
        "confirm": "true",
        "off_session": "true",
        "metadata": metadata,
    }


def _payment_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a payment intent or charge a model needs, nothing more."""
    metadata = body.get("metadata") or {}
    summary = {
        "charge_id": body.get("id"),
        "object": body.get("object"),
        "status": body.get("status"),
        "amount_cents": body.get("amount"),
        "currency": body.get("currency"),
        "customer_id": body.get("customer"),
        "billing_period": metadata.get("billing_period"),
        "invoice_id": metadata.get("invoice_id"),
        "created": body.get("created"),
    }
    if body.get("object") == "charge":
        summary.update(payment_intent=body.get("payment_intent"), paid=body.get("paid"), refunded=body.get("refunded"))
    return {k: v for k, v in summary.items() if v is not None}


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
        self._charge = ProxyClient(
            proxy_url, charge_key, http=http, max_retries=max_retries, backoff_seconds=backoff_seconds
        )
        # The same key to `POST /api/billing/charges`, which claims the charge identity first.
        self._once = ProxyClient(
            charges_base_url(proxy_url), charge_key, http=http, max_retries=max_retries, backoff_seconds=backoff_seconds
        )
        self._lookup = (
            self._charge
            if lookup_key == charge_key
            else ProxyClient(proxy_url, lookup_key, http=http, max_retries=max_retries, backoff_seconds=backoff_seconds)
        )

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
        self._charge.close()
        self._once.close()
        if self._lookup is not self._charge:
            self._lookup.close()

    def __enter__(self) -> "BillingTools":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the tools --------------------------------------------------------------------
    def charge_stripe(
        self, customer_id: str, amount_cents: int, billing_period: str, invoice_id: str | None = None
    ) -> str:
        """Charge `customer_id` once for `billing_period`; see the module-level function."""
        try:
            args = ChargeArgs.parse(customer_id, amount_cents, billing_period, invoice_id)
        except InvalidArguments as exc:
            return messages.error_output(
                "invalid_arguments", f"{exc}. Nothing was charged. Ask the user for the correct value; do not guess."
            )
        key = charge_idempotency_key(args)
        try:
            payment_method, refusal = self._payment_method_for(args.customer_id)
            if refusal is not None:
                return refusal
            result = self._once.post("/charges", payment_intent_params(args, payment_method), idempotency_key=key)
            return self._charge_output(result, key)
        except Exception as exc:  # never raise into the agent framework
            log.exception("charge_stripe failed unexpectedly (idempotency key %s)", key)
            return messages.error_output(
                "internal_error", messages.INTERNAL_ERROR.format(detail=type(exc).__name__), idempotency_key=key
            )

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
            path, None, lambda body: {**_payment_summary(body), "message": _status_message(body)}, charge_id=text
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
        return messages.error_output(result.code or "upstream_unavailable", f"The lookup failed: {_detail(result)}.",
                                     retryable=result.outcome is Outcome.TRANSIENT)

    def list_customer_charges(self, customer_id: str) -> str:
        """List a customer's recent charges read-only; see the module-level function."""
        text = str(customer_id or "").strip()
        if not re.match(r"^cus_[A-Za-z0-9]{1,100}$", text):
            return messages.error_output("invalid_arguments", f"customer_id must look like cus_…, got {customer_id!r}.")

        def shape(body: Mapping[str, Any]) -> dict[str, Any]:
            charges = [_payment_summary(c) for c in body.get("data") or []]
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

    # --- shaping answers -----------------------------------------------------------------
    def _charge_output(self, result: ProxyResult, key: str) -> str:
        if result.outcome is Outcome.SUCCEEDED:
            body = {**_payment_summary(result.body), "idempotency_key": key, "replayed": result.replayed}
            status = body.get("status")
            if status != "succeeded":
                body["message"] = (
                    f"The payment exists but its status is {status!r}, so it is not paid yet. "
                    "Do not charge again; tell the user."
                )
            else:
                body["message"] = messages.ALREADY_CHARGED if result.replayed else messages.CHARGED
            return json.dumps(body)
        if result.code == "already_charged":
            intent = (result.body.get("error") or {}).get("payment_intent")
            return messages.error_output(
                "already_charged", messages.ALREADY_BILLED, charge_id=intent, idempotency_key=key
            )
        if result.code in approval.CODES:
            return approval.charge_held(str(result.code), result.body, key)
        if result.code == "charge_in_progress":
            return messages.error_output(
                "charge_in_progress", messages.CHARGE_IN_PROGRESS, retryable=True, idempotency_key=key
            )
        stop_code = _stop_code(result)
        if stop_code:
            return messages.error_output(stop_code, "", idempotency_key=key)
        if result.outcome is Outcome.FORBIDDEN:
            return messages.error_output(result.code or "endpoint_not_allowed", messages.NOT_ALLOWED_TO_CHARGE)
        if result.outcome is Outcome.DECLINED:
            return messages.error_output(result.code or "card_declined", messages.DECLINED, idempotency_key=key)
        if result.outcome is Outcome.TRANSIENT:
            return messages.error_output(
                result.code or "upstream_unavailable",
                messages.TRANSIENT_CHARGE.format(detail=_detail(result)),
                retryable=True,
                idempotency_key=key,
            )
        return messages.error_output(
            result.code or "invalid_request", messages.REJECTED.format(detail=_detail(result)), idempotency_key=key
        )

    def _payment_method_for(self, customer_id: str) -> tuple[str, str | None]:
        """(the customer's card, None) or ("", the error output that ends the charge)."""
        try:
            choice = cards.resolve(self._lookup, customer_id, self.payment_method)
        except cards.CardLookupTransient as exc:
            return "", messages.error_output(
                "upstream_unavailable", messages.TRANSIENT_CHARGE.format(detail=str(exc)), retryable=True
            )
        except cards.CardLookupRefused as refused:
            answer = refused.result
            if stop_code := _stop_code(answer):  # billing is switched off either way
                return "", messages.error_output(stop_code, "")
            return "", messages.error_output(
                answer.code or "lookup_refused", messages.CARD_UNREADABLE.format(detail=_detail(answer)), stop=False
            )
        if choice.payment_method:
            return choice.payment_method, None
        if choice.code is cards.CardCode.CUSTOMER_DELETED:
            return "", messages.error_output(
                "customer_deleted", messages.CUSTOMER_DELETED.format(customer_id=customer_id)
            )
        if choice.code is cards.CardCode.NO_SUCH_CUSTOMER:
            return "", messages.error_output("no_such_customer", messages.NO_CUSTOMER.format(customer_id=customer_id))
        return "", messages.error_output("no_payment_method", messages.NO_PAYMENT_METHOD)

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
                    messages.TRANSIENT_READ.format(detail=_detail(result)),
                    retryable=True,
                )
            if result.status == 404 and "charge_id" in context:
                return messages.error_output("not_found", messages.NOT_FOUND.format(charge_id=context["charge_id"]))
            # A revoked or expired *audit* key ends lookups, not billing: no STOP here.
            return messages.error_output(
                result.code or "invalid_request",
                f"The lookup was refused: {_detail(result)}. Do not retry; tell the user.",
                stop=False,
            )
        except Exception as exc:  # never raise into the agent framework
            log.exception("lookup %s failed unexpectedly", path)
            return messages.error_output("internal_error", f"The lookup failed unexpectedly ({type(exc).__name__}).")


def _stop_code(result: ProxyResult) -> str | None:
    """The STOP code for a charge refusal that ends billing (cap spent, key revoked/expired/unknown)."""
    by_outcome = {
        Outcome.CAP_EXCEEDED: "spend_cap_exceeded",
        Outcome.REVOKED: "vault_key_revoked",
        Outcome.EXPIRED: "vault_key_expired",
    }
    if result.outcome in by_outcome:
        return by_outcome[result.outcome]
    if result.code == "vault_key_invalid":
        return "vault_key_invalid"
    return None


def _detail(result: ProxyResult) -> str:
    return f"{result.code or 'HTTP ' + str(result.status)}: {result.message or 'no details'}"


def _status_message(body: Mapping[str, Any]) -> str:
    status = body.get("status")
    if status == "succeeded" or body.get("paid"):
        return "This payment succeeded; the customer has been charged. Do not charge again."
    return f"This payment's status is {status!r}; it has not been paid. Do not charge again without the user's instruction."


# --- the process-wide tools behind the module-level functions ------------------------------
_default: tuple[Settings, BillingTools] | None = None
_default_lock = threading.Lock()


def default_tools() -> BillingTools:
    """The process's tools, built from app settings on first use (and again if they change)."""
    global _default
    settings = get_settings()
    with _default_lock:
        if _default is None or _default[0] != settings:
            _default = (settings, BillingTools.from_settings(settings))
        return _default[1]


def _with_default_tools(run: Callable[[BillingTools], str]) -> str:
    try:
        tools = default_tools()
    except Exception as exc:  # ToolConfigurationError, a malformed setting…: answer, never raise
        log.error("agent tools are not configured: %s", exc)
        return messages.error_output("configuration_error", str(exc))
    return run(tools)


# --- module-level functions for azure-ai-agents (FunctionTool reads their signature + docstring) ---
# Only the first docstring line becomes the tool description the model sees; the `:param:`
# lines become the parameter descriptions. Keep both written for the model.


def charge_stripe(customer_id: str, amount_cents: int, billing_period: str, invoice_id: Optional[str] = None) -> str:  # noqa: UP045 - the SDK maps Optional[...] to a nullable type
    """Bill a customer ONCE for a billing period; only when the current message asks to bill (never to look something up).

    Repeating the same customer, amount and billing period never charges twice: it returns the
    existing payment with "replayed": true. A customer already billed for the period (by a billing
    run or an earlier call, whatever the amount) is not charged again: the answer is already_charged.

    :param customer_id: The Stripe customer id, e.g. cus_123.
    :param amount_cents: The amount in US cents, e.g. 2900 for $29.00.
    :param billing_period: The period being billed, e.g. 2026-06.
    :param invoice_id: Only to bill the same customer the same amount twice in one period: the invoice id that tells the charges apart; otherwise null.
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
