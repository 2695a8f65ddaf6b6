"""The endpoint table: every Stripe endpoint the proxy knows, and what it does with each.

This table is the proxy's allowlist of allowlists. A key may name only endpoints listed
here as ``read`` or ``metered`` (or ``release``); a request is classified against this table
first and against the key second, so a wildcard in a key can never reach an endpoint the
table does not name. Everything else, including every endpoint listed as ``refused``, is
refused at issue time and at request time (fail closed; docs/proxy.md has the table).

``*`` in a pattern matches one id segment. When a literal pattern and a ``*`` pattern
could both match (``GET /v1/payment_intents/search`` and ``GET /v1/payment_intents/*``),
the one with more literal segments wins, so ``search`` and list sub-resources are
endpoints of their own, never reads of an object called "search".

Metered endpoints name how the amount is read (``pricing``):

    body      the request's own ``amount`` (currency must be usd)
    intent    the payment intent's ``amount``, read by the proxy just before the reservation
    capture   ``amount_to_capture`` if given, else the intent's ``amount_capturable`` (or amount)
    refund    the request's ``amount`` if given, else what is left of the charge or intent;
              the charge or intent is read in every case to check its currency

``expand[]`` is checked against `EXPANDABLE`: a field may be expanded only into an object
type whose retrieve endpoint the key may call.
"""

from __future__ import annotations

from dataclasses import dataclass

READ, METERED, RELEASE, REFUSED = "read", "metered", "release", "refused"


@dataclass(frozen=True)
class Rule:
    """One row of the endpoint table."""

    method: str
    pattern: str
    access: str  # read | metered | release | refused
    returns: str | None = None  # object type of the answer (for expand[]); None for refused
    is_list: bool = False
    pricing: str | None = None  # metered only: body | intent | capture | refund
    why: str = ""

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.pattern.lstrip("/").split("/"))

    @property
    def literals(self) -> int:
        return sum(1 for s in self.segments if s != "*")

    def __str__(self) -> str:
        return f"{self.method} {self.pattern}"

    def matches(self, method: str, path: str) -> bool:
        parts = path.lstrip("/").split("/")
        return method == self.method and len(parts) == len(self.segments) and all(
            s == "*" or s == p for s, p in zip(self.segments, parts, strict=True)
        )


def _reads(resource: str, obj: str, *, search: bool = True) -> list[Rule]:
    rules = [Rule("GET", f"/v1/{resource}", READ, obj, is_list=True),
             Rule("GET", f"/v1/{resource}/*", READ, obj)]
    if search:
        rules.append(Rule("GET", f"/v1/{resource}/search", READ, obj, is_list=True))
    return rules


_NOT_PRICEABLE = "moves money in amounts the proxy cannot read from the request before it happens"

TABLE: tuple[Rule, ...] = (
    *_reads("payment_intents", "payment_intent"),
    *_reads("charges", "charge"),
    *_reads("refunds", "refund", search=False),
    *_reads("customers", "customer"),
    *_reads("invoices", "invoice"),  # agents check an invoice_id exists before it names a charge (agents/charge.py)
    Rule("GET", "/v1/customers/*/payment_methods", READ, "payment_method", is_list=True),
    Rule("GET", "/v1/payment_methods", READ, "payment_method", is_list=True),  # ?customer=: the card resolution
    Rule("GET", "/v1/payment_methods/*", READ, "payment_method"),
    Rule("POST", "/v1/payment_intents", METERED, "payment_intent", pricing="body",
         why="create with confirm=true; priced from amount"),
    Rule("POST", "/v1/payment_intents/*/confirm", METERED, "payment_intent", pricing="intent",
         why="priced from the intent's amount, read just before the reservation"),
    Rule("POST", "/v1/payment_intents/*/capture", METERED, "payment_intent", pricing="capture",
         why="priced from amount_to_capture, else the intent's amount_capturable"),
    Rule("POST", "/v1/payment_intents/*/cancel", RELEASE, "payment_intent",
         why="moves no money; releases a pending confirm of the intent"),
    Rule("POST", "/v1/charges", METERED, "charge", pricing="body", why="priced from amount"),
    Rule("POST", "/v1/refunds", METERED, "refund", pricing="refund",
         why="money leaves the account: counts against the cap; amount, else read from the charge or intent"),
    # Refused, listed so that the reason is stated; anything absent is refused just the same.
    Rule("POST", "/v1/payment_intents/*", REFUSED, why="an update can change the amount after it was priced"),
    Rule("POST", "/v1/payment_intents/*/increment_authorization", REFUSED, why=_NOT_PRICEABLE),
    Rule("POST", "/v1/charges/*", REFUSED, why="not needed"),
    Rule("POST", "/v1/charges/*/capture", REFUSED, why="legacy capture; use payment intents"),
    Rule("POST", "/v1/customers", REFUSED, why="not needed by the product"),
    Rule("POST", "/v1/customers/*/subscriptions", REFUSED, why=_NOT_PRICEABLE),
    Rule("POST", "/v1/subscriptions", REFUSED, why=_NOT_PRICEABLE),
    Rule("POST", "/v1/subscriptions/*", REFUSED, why=_NOT_PRICEABLE),
    Rule("DELETE", "/v1/subscriptions/*", REFUSED, why="prorations and final invoices move money"),
    Rule("POST", "/v1/subscription_items", REFUSED, why=_NOT_PRICEABLE),
    Rule("POST", "/v1/subscription_items/*", REFUSED, why=_NOT_PRICEABLE),
    Rule("POST", "/v1/invoices", REFUSED, why=_NOT_PRICEABLE),
    Rule("POST", "/v1/invoices/*/finalize", REFUSED, why=_NOT_PRICEABLE),
    Rule("POST", "/v1/invoices/*/pay", REFUSED, why=_NOT_PRICEABLE),
    Rule("POST", "/v1/quotes/*/accept", REFUSED, why=_NOT_PRICEABLE),
    Rule("POST", "/v1/treasury/outbound_payments", REFUSED, why=_NOT_PRICEABLE),
    Rule("POST", "/v1/issuing/cards", REFUSED, why="issued cards spend outside the proxy"),
    Rule("POST", "/v1/payouts", REFUSED, why=_NOT_PRICEABLE),
    Rule("POST", "/v1/transfers", REFUSED, why=_NOT_PRICEABLE),
)

# Which field of which object type expands into which object type (Stripe API reference).
EXPANDABLE: dict[str, dict[str, str]] = {
    "payment_intent": {"customer": "customer", "latest_charge": "charge", "payment_method": "payment_method"},
    "charge": {"customer": "customer", "payment_intent": "payment_intent"},
    "refund": {"charge": "charge", "payment_intent": "payment_intent"},
    "customer": {"invoice_settings.default_payment_method": "payment_method"},
    "payment_method": {"customer": "customer"},
}


def classify(method: str, path: str) -> Rule | None:
    """The table row a concrete request falls under (most literal segments first), or None."""
    best: Rule | None = None
    for rule in TABLE:
        if rule.matches(method, path) and (best is None or rule.literals > best.literals):
            best = rule
    return best


def by_name(text: str) -> Rule | None:
    """The table row a key's allowlist entry names exactly (``*`` only where the table has one)."""
    method, _, path = text.strip().partition(" ")
    name = f"{method.upper()} {path.strip()}"
    return next((r for r in TABLE if str(r) == name), None)


def grantable() -> list[str]:
    """Every entry a key may name."""
    return [str(r) for r in TABLE if r.access != REFUSED]


def readable_types(allowed: tuple[str, ...] | list[str]) -> set[str]:
    """Object types a key may read: those whose retrieve endpoint (``GET …/*``) it may call."""
    names = set(allowed)
    return {r.returns for r in TABLE if r.access == READ and not r.is_list and str(r) in names and r.returns}


def expand_chain(rule: Rule, expand: str) -> list[str]:
    """Object types each step of `expand` expands into; empty when any step is unknown."""
    parts = expand.split(".")
    if rule.is_list:
        if not parts or parts[0] != "data":
            return []
        parts = parts[1:]
    current, chain = rule.returns, []
    i = 0
    while i < len(parts):
        fields = EXPANDABLE.get(current or "", {})
        for width in (2, 1):  # dotted field names such as invoice_settings.default_payment_method
            name = ".".join(parts[i:i + width])
            if len(parts[i:i + width]) == width and name in fields:
                current = fields[name]
                chain.append(current)
                i += width
                break
        else:
            return []
    return chain
