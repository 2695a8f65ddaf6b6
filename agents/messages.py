"""What the model reads when a tool fails: one JSON shape, one plain instruction per case.

Tools never raise into the agent framework — an exception becomes a platform-level
failure that frameworks retry (classic runs count it toward `max_retry`, a retried
run re-submits the same call). Instead every failure is returned as data::

    {"error": <code>, "message": <what happened and what to do>, "retryable": <bool>, "stop": <bool>}

`retryable` is true only where calling the same tool again with the same arguments
is safe and may help; `stop` is true where the agent must stop billing entirely and
tell the user. The STOP texts are written for a model: imperative, no jargon, and
they say that nothing was charged.

    code                    retryable  stop   when
    ----------------------  ---------  -----  ------------------------------------------
    spend_cap_exceeded      false      true   the billing key's spend cap is used up
    vault_key_revoked       false      true*  the key was revoked (kill switch)
    vault_key_expired       false      true*  the key's time window is over
    vault_key_invalid       false      true*  the configured key is unknown or malformed
    configuration_error     false      true   the tools are not configured (no key / raw sk_ key)
    endpoint_not_allowed    false      false  this agent's key may not make this call (role)
    card_declined           false      false  the card was declined (retry only after the card is fixed)
    no_payment_method       false      false  the customer has no saved card
    no_such_customer        false      false  Stripe has no such customer
    customer_deleted        false      false  the customer was deleted in Stripe
    already_charged         false      false  this customer + period (+ invoice) was already charged
    charge_in_progress      true       false  another run or agent is billing this customer for the period now
    invalid_arguments       false      false  the model's arguments are unusable (the message names the form)
    not_found               false      false  no such charge
    unknown_tool            false      false  the model named a tool that does not exist
    tool_round_limit        false      false  the turn ran out of tool rounds; the call was not run
    not_run                 false      false  `repair_conversation` answered a call an interrupted loop left
    upstream_unavailable    true       false  transient: Stripe or the proxy did not answer
    internal_error          false      false  a bug in the tool; check before charging again

    * A key failure names the key it concerns (``"vault_key": "billing"`` or ``"audit"``): a
      revoked *audit* key stops charges too (the card cannot be read) but its message tells
      the operator to replace the audit key, not the billing key. In a lookup it does not stop.
"""

from __future__ import annotations

import json
from typing import Any

STOP_CODES = frozenset(
    {"spend_cap_exceeded", "vault_key_revoked", "vault_key_expired", "vault_key_invalid", "configuration_error"}
)

_NOTHING_CHARGED = "Nothing was charged."
_STOP_TAIL = (
    " Do not call charge_stripe again in this conversation, do not retry with other arguments,"
    " and do not try another way to charge. Tell the user plainly that billing could not be completed"
    " and that a person has to {remedy}."
)

KEY_ROLES = ("billing", "audit")
_AUDIT_STOP: dict[str, str] = {
    "vault_key_revoked": "STOP: this agent's audit (lookup) key has been revoked, so the customer's card could not be"
    " read and the charge was not attempted. "
    + _NOTHING_CHARGED
    + _STOP_TAIL.format(remedy="issue a new audit key (SPENDGATE_AUDIT_KEY); the billing key is not the problem"),
    "vault_key_expired": "STOP: this agent's audit (lookup) key has expired, so the customer's card could not be read"
    " and the charge was not attempted. "
    + _NOTHING_CHARGED
    + _STOP_TAIL.format(remedy="issue a new audit key (SPENDGATE_AUDIT_KEY); the billing key is not the problem"),
    "vault_key_invalid": "STOP: this agent's audit (lookup) key is not recognised by the spend proxy, so the"
    " customer's card could not be read. "
    + _NOTHING_CHARGED
    + _STOP_TAIL.format(remedy="fix the agent's audit key (SPENDGATE_AUDIT_KEY)"),
}
AUDIT_KEY_LOOKUP = (
    "The lookup was refused because this agent's audit (lookup) key {state}. Do not retry; tell the user that"
    " charge lookups are unavailable until a person issues a new audit key (SPENDGATE_AUDIT_KEY)."
)

STOP_MESSAGES: dict[str, str] = {
    "spend_cap_exceeded": "STOP: this agent's spending limit is used up, so the charge was refused. "
    + _NOTHING_CHARGED
    + _STOP_TAIL.format(remedy="review the spending and raise the limit or issue a new billing key"),
    "vault_key_revoked": "STOP: this agent's billing key has been revoked, so the charge was refused. "
    + _NOTHING_CHARGED
    + _STOP_TAIL.format(remedy="review why billing was switched off before it is switched back on"),
    "vault_key_expired": "STOP: this agent's billing key has expired, so the charge was refused. "
    + _NOTHING_CHARGED
    + _STOP_TAIL.format(remedy="issue a new billing key"),
    "vault_key_invalid": "STOP: this agent's billing key is not recognised by the spend proxy. "
    + _NOTHING_CHARGED
    + _STOP_TAIL.format(remedy="fix the agent's key configuration"),
    "configuration_error": "STOP: the billing tools are not configured correctly. "
    + _NOTHING_CHARGED
    + _STOP_TAIL.format(remedy="fix the agent's configuration"),
}

ROUND_LIMIT = (
    "stopped: round limit. This call was not run because the turn used up its tool rounds; nothing was charged"
    " by it. Stop calling tools and tell the user what has been done so far."
)
NOT_RUN = (
    "stopped: not run. The conversation was interrupted before this call ran, so it was not run and nothing"
    " was charged by it. If the user still wants it, they have to ask again."
)
CHARGED = (
    "Charged once. This charge is complete: do not call charge_stripe again for this customer and"
    " billing period; use get_charge_status with charge_id to answer questions about it."
)
ALREADY_CHARGED = (
    "already charged: {charge_id}. This exact charge (same customer, amount and billing period) had already"
    " been made, so nothing new was charged; these are the details of the existing charge. Do not call"
    " charge_stripe again for it; use get_charge_status with charge_id to check on it."
)
NOT_ALLOWED_TO_CHARGE = (
    "This agent's key is not allowed to create charges, so nothing was charged. Do not retry."
    " Charging is done only by the billing agent; to check an existing charge use get_charge_status"
    " or list_customer_charges."
)
NOT_ALLOWED_TO_READ = (
    "This agent's key is not allowed to look up charges. Do not retry; tell the user that charge"
    " lookups are not available to this agent."
)
DECLINED = (
    "The customer's card was declined, so nothing was charged. Do not retry now; tell the user that the"
    " customer needs to update their payment method. Once the customer has a new card, this same charge"
    " (same arguments) can be made again; with the same card it keeps answering card_declined."
)
TRANSIENT_CHARGE = (
    "A temporary problem stopped the charge from being confirmed ({detail}). It may or may not have"
    " gone through. You may call charge_stripe once more with exactly the same arguments: it carries"
    " the same idempotency key, so it cannot charge twice. If that fails too, stop and tell the user."
)
TRANSIENT_READ = "A temporary problem stopped the lookup ({detail}). You may try the same lookup once more."
REJECTED = (
    "The request was rejected: {detail}. Nothing was charged. Do not retry with the same arguments;"
    " tell the user what was rejected."
)
NOT_FOUND = (
    "No charge with id {charge_id} exists. Check the id (from an earlier charge_stripe result) and do not guess."
)
NO_PAYMENT_METHOD = (
    "The customer has no saved payment method, so nothing was charged. Do not retry; tell the user that"
    " the customer needs to add a card first."
)
NO_CUSTOMER = "No customer {customer_id} exists, so nothing was charged. Check the id with the user; do not guess."
CUSTOMER_DELETED = (
    "Customer {customer_id} was deleted in Stripe, so nothing was charged. Do not retry; tell the user."
)
ALREADY_BILLED = (
    "already charged: {charge_id}. This customer was already charged for this billing period (by a billing"
    " run, another agent or key, or an earlier charge,"
    " whatever its amount), so nothing new was charged; charge_id is that payment. Do not charge again;"
    " use get_charge_status with charge_id to check on it. Only a separate invoice (a distinct invoice_id)"
    " is charged separately, and only when the user asks for it."
)
CHARGE_IN_PROGRESS = (
    "Another billing run or agent is charging this customer for this billing period right now, so nothing"
    " was charged by this call. You may call charge_stripe once more with exactly the same arguments in a"
    " moment; if it says already_charged, the customer has been billed."
)
LOOKUP_REFUSED = "{what} could not be read ({detail}), so nothing was charged. Do not retry; tell the user."
NO_INVOICE = (
    "No invoice {invoice_id} exists, so nothing was charged. Only pass an invoice_id the user gave you (an existing"
    " Stripe invoice id, in_…); otherwise pass null. Do not guess ids."
)
INVOICE_OTHER_CUSTOMER = (
    "Invoice {invoice_id} does not belong to {customer_id}, so nothing was charged. Check the ids with the user;"
    " do not guess."
)
INTERNAL_ERROR = (
    "The tool failed unexpectedly ({detail}). Do not charge again: check with list_customer_charges or"
    " get_charge_status first, and tell the user if the outcome is unclear."
)


def error_output(
    code: str,
    message: str,
    *,
    retryable: bool = False,
    stop: bool | None = None,
    vault_key: str | None = None,
    **extra: Any,
) -> str:
    """The JSON string a tool returns for a failure (see the module table).

    A STOP code gets its STOP text, for the key named by `vault_key` ("billing" unless
    "audit"); `stop=False` overrides that where the code does not end billing (a revoked
    *audit* key in a lookup).
    """
    stop = code in STOP_CODES if stop is None else stop
    if stop and vault_key == "audit" and code in _AUDIT_STOP:
        message, retryable = _AUDIT_STOP[code], False
    elif stop and code in STOP_MESSAGES:
        message, retryable = STOP_MESSAGES[code], False
    extra["vault_key"] = vault_key
    body: dict[str, Any] = {"error": code, "message": message, "retryable": retryable, "stop": stop}
    body.update({k: v for k, v in extra.items() if v is not None})
    return json.dumps(body)


def is_stop(output: str) -> bool:
    """Whether a tool output tells the agent to stop billing (loops use it to end early)."""
    try:
        return bool(json.loads(output).get("stop"))
    except (ValueError, AttributeError):
        return False
