"""The one place spendgate reads its configuration from.

Every setting is read lazily from the environment (which Azure Functions, `func start`
and devhost all fill from app settings / `local.settings.json`), so importing the app
never fails; asking for a required setting that is missing raises
`MissingSettingError` naming it. `local.settings.sample.json` and `infra/main.bicep`
use exactly the names below (a test keeps them in step).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import ClassVar

# Names of every setting the app code reads (the infra test compares this list with Bicep).
STORAGE_CONNECTION = "AzureWebJobsStorage"
STORAGE_ACCOUNT_NAME = "AzureWebJobsStorage__accountName"
STORAGE_TABLE_ENDPOINT = "AzureWebJobsStorage__tableServiceUri"
STORAGE_CLIENT_ID = "AzureWebJobsStorage__clientId"
STRIPE_API_BASE = "STRIPE_API_BASE"
STRIPE_SECRET_KEY = "STRIPE_SECRET_KEY"
STRIPE_TIMEOUT_SECONDS = "SPENDGATE_STRIPE_TIMEOUT_SECONDS"
STRIPE_VERSION = "SPENDGATE_STRIPE_VERSION"
TABLE_PREFIX = "SPENDGATE_TABLE_PREFIX"
IDEMPOTENCY_RETENTION_DAYS = "SPENDGATE_IDEMPOTENCY_RETENTION_DAYS"
PROXY_URL = "SPENDGATE_PROXY_URL"
BILLING_KEY = "SPENDGATE_BILLING_KEY"
AUDIT_KEY = "SPENDGATE_AUDIT_KEY"
TOOL_QUEUE_PREFIX = "SPENDGATE_TOOL_QUEUE_PREFIX"
APPROVAL_THRESHOLD_USD = "SPENDGATE_APPROVAL_THRESHOLD_USD"
APPROVAL_TIMEOUT = "SPENDGATE_APPROVAL_TIMEOUT"
ALERT_WEBHOOK_URL = "SPENDGATE_ALERT_WEBHOOK_URL"
ALERT_WEBHOOK_SECRET = "SPENDGATE_ALERT_WEBHOOK_SECRET"
WEBSITE_HOSTNAME = "WEBSITE_HOSTNAME"
ALERT_SWEEP_GRACE_SECONDS = "SPENDGATE_ALERT_SWEEP_GRACE_SECONDS"  # optional (default 60); not set on Azure
# Tests only, never set on Azure: makes the alert publish step fail in the process under test, so
# the tests can prove the sweeper delivers what a crash or a failed queue send left behind.
ALERT_FAULT = "SPENDGATE_ALERT_FAULT"

APP_SETTING_NAMES: tuple[str, ...] = (
    STORAGE_CONNECTION,
    STORAGE_ACCOUNT_NAME,
    STORAGE_TABLE_ENDPOINT,
    STORAGE_CLIENT_ID,
    STRIPE_API_BASE,
    STRIPE_SECRET_KEY,
    STRIPE_TIMEOUT_SECONDS,
    STRIPE_VERSION,
    TABLE_PREFIX,
    IDEMPOTENCY_RETENTION_DAYS,
    PROXY_URL,
    BILLING_KEY,
    AUDIT_KEY,
    TOOL_QUEUE_PREFIX,
    APPROVAL_THRESHOLD_USD,
    APPROVAL_TIMEOUT,
    ALERT_WEBHOOK_URL,
    ALERT_WEBHOOK_SECRET,
)


class MissingSettingError(RuntimeError):
    """A required app setting is absent; the message names it."""

    def __init__(self, name: str, hint: str = "") -> None:
        super().__init__(f"app setting {name} is not set{': ' + hint if hint else ''}")
        self.name = name


class InvalidSettingError(MissingSettingError):
    """An app setting is present but unusable (say, not a number); the message names it."""

    def __init__(self, name: str, problem: str) -> None:
        RuntimeError.__init__(self, f"app setting {name} {problem}")
        self.name = name


@dataclass(frozen=True)
class Settings:
    """A read-only view of the app settings.

    >>> s = Settings.from_mapping({"STRIPE_SECRET_KEY": "sk_test_x"})
    >>> s.stripe_api_base
    'https://api.stripe.com'
    """

    env: Mapping[str, str]
    # The Stripe API version the proxy forwards by default: what stripe-python 16.1.0 and
    # stripe-node 23.1.0 send, and what the proxy was tested with. Old versions change what
    # endpoints do. (A class attribute: module-level capitals are read as setting names.)
    default_stripe_version: ClassVar[str] = "2026-10-28.endive"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(dict(os.environ))

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Settings:
        return cls(dict(values))

    def _get(self, name: str, default: str | None = None) -> str | None:
        value = self.env.get(name)
        return value if value not in (None, "") else default

    def _number(self, name: str, default: float, *, minimum: float, integer: bool = False) -> float:
        """A numeric setting; anything unparsable or below `minimum` is an `InvalidSettingError`."""
        raw = self._get(name)
        if raw is None:
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            raise InvalidSettingError(name, f"must be {'an integer' if integer else 'a number'}, got {raw!r}") from None
        if value < minimum:
            raise InvalidSettingError(name, f"must be at least {minimum:g}, got {raw!r}")
        return value

    def _require(self, name: str, hint: str = "") -> str:
        value = self._get(name)
        if value is None:
            raise MissingSettingError(name, hint)
        return value

    # --- storage -------------------------------------------------------------------
    @property
    def storage_connection_string(self) -> str | None:
        """Connection string (Azurite locally); None when identity-based access is configured."""
        return self._get(STORAGE_CONNECTION)

    @property
    def table_endpoint(self) -> str:
        """Table service URL for identity-based access (Azure, no account keys)."""
        explicit = self._get(STORAGE_TABLE_ENDPOINT)
        if explicit:
            return explicit
        account = self._require(
            STORAGE_ACCOUNT_NAME, f"set {STORAGE_CONNECTION} (local) or {STORAGE_ACCOUNT_NAME} (Azure)"
        )
        return f"https://{account}.table.core.windows.net"

    @property
    def storage_client_id(self) -> str | None:
        """Client id of the user-assigned managed identity, if one is used."""
        return self._get(STORAGE_CLIENT_ID)

    @property
    def table_prefix(self) -> str:
        """Prefix of every table spendgate creates (letters and digits only)."""
        prefix = self._get(TABLE_PREFIX, "spendgate") or "spendgate"
        if not prefix.isalnum() or not prefix[0].isalpha():
            raise ValueError(f"{TABLE_PREFIX} must be alphanumeric and start with a letter")
        return prefix

    # --- stripe --------------------------------------------------------------------
    @property
    def stripe_api_base(self) -> str:
        return (self._get(STRIPE_API_BASE, "https://api.stripe.com") or "").rstrip("/")

    @property
    def stripe_secret_key(self) -> str:
        return self._require(STRIPE_SECRET_KEY, "the real Stripe secret (Key Vault reference on Azure)")

    @property
    def stripe_timeout_seconds(self) -> float:
        """The total deadline of one forward to Stripe (connect + write + read), enforced by the client."""
        return self._number(STRIPE_TIMEOUT_SECONDS, 30.0, minimum=0.1)

    @property
    def stripe_version(self) -> str:
        """The one `Stripe-Version` the proxy forwards; requests naming another are refused."""
        value = self._get(STRIPE_VERSION, self.default_stripe_version) or self.default_stripe_version
        if not all(0x21 <= ord(c) <= 0x7E for c in value) or len(value) > 64:
            raise InvalidSettingError(STRIPE_VERSION, f"must be printable ASCII without spaces, got {value!r}")
        return value

    # --- proxy ---------------------------------------------------------------------
    @property
    def idempotency_retention_days(self) -> int:
        return int(self._number(IDEMPOTENCY_RETENTION_DAYS, 30, minimum=2, integer=True))

    @cached_property
    def proxy_url(self) -> str:
        """Base URL of this app's governance proxy (`…/api/stripe`), for activities and tools."""
        explicit = self._get(PROXY_URL)
        if explicit:
            return explicit.rstrip("/")
        host = self._require(WEBSITE_HOSTNAME, f"or set {PROXY_URL}")
        scheme = "http" if host.startswith(("localhost", "127.")) else "https"
        return f"{scheme}://{host}/api/stripe"

    # --- agent tools (agents/) -------------------------------------------------------
    @property
    def billing_key(self) -> str | None:
        """Vault key the agent tools charge with (billing sub-agent only; never a raw sk_ key)."""
        return self._get(BILLING_KEY)

    @property
    def audit_key(self) -> str | None:
        """Read-only vault key the agent tools look charges up with (supervisor and billing agent)."""
        return self._get(AUDIT_KEY)

    @property
    def tool_queue_prefix(self) -> str:
        """Stem of the agent tools' queue names (`<prefix>-charge-stripe-input`, …; agents/queue_tools.py).

        The queue triggers name their queues through the same setting (``%SPENDGATE_TOOL_QUEUE_PREFIX%``),
        so the agent's tool definitions and the app always agree. Lowercase letters, digits, hyphens.
        """
        value = self._get(TOOL_QUEUE_PREFIX, "spendgate-tool") or "spendgate-tool"
        if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?!-)){1,30}[a-z0-9]", value):
            raise InvalidSettingError(TOOL_QUEUE_PREFIX, f"must be 3-32 lowercase letters, digits or single hyphens, got {value!r}")
        return value

    # --- approvals and alerts (docs/approvals.md) ------------------------------------
    @property
    def approval_threshold_cents(self) -> int | None:
        """Billing runs with a budget at or above this many cents wait for a person; None: only on request."""
        raw = self._get(APPROVAL_THRESHOLD_USD)
        if raw is None:
            return None
        try:
            dollars = Decimal(raw)
        except InvalidOperation:
            raise InvalidSettingError(APPROVAL_THRESHOLD_USD, f"must be a number of US dollars, got {raw!r}") from None
        if not dollars.is_finite() or dollars < 0:
            raise InvalidSettingError(APPROVAL_THRESHOLD_USD, f"must be 0 or more US dollars, got {raw!r}")
        return int(dollars * 100)

    @property
    def approval_timeout(self) -> timedelta:
        """How long a billing run or an agent charge waits for a person (`90s`, `30m`, `24h`, `7d`; default 24h)."""
        raw = self._get(APPROVAL_TIMEOUT, "24h") or "24h"
        m = re.fullmatch(r"\s*(\d{1,6})\s*([smhd])\s*", raw)
        if not m or int(m.group(1)) == 0:
            raise InvalidSettingError(APPROVAL_TIMEOUT, f"must be a duration like 90s, 30m, 24h or 7d, got {raw!r}")
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        value = timedelta(**{unit: int(m.group(1))})
        # "For JavaScript, Python, and PowerShell apps, Durable timers are limited to six days"
        # (learn.microsoft.com/azure/azure-functions/durable/durable-functions-timers): the run's wait is one timer.
        if value > timedelta(days=6):
            raise InvalidSettingError(APPROVAL_TIMEOUT, f"must be at most 6d (a Python durable timer's limit), got {raw!r}")
        return value

    @property
    def alert_webhook_url(self) -> str | None:
        """Where spend alerts are POSTed (signed); None: alerts go to the queue only."""
        return self._get(ALERT_WEBHOOK_URL)

    @property
    def alert_webhook_secret(self) -> str:
        """The HMAC-SHA256 key that signs alert webhooks (required once a webhook URL is set)."""
        return self._require(ALERT_WEBHOOK_SECRET, f"the key that signs POSTs to {ALERT_WEBHOOK_URL}")


    @property
    def alert_sweep_grace(self) -> timedelta:
        """How old an unpublished alert (or an unrecorded threshold) must be before the sweeper
        publishes it: the normal path needs well under a second, so it is never raced."""
        return timedelta(seconds=self._number(ALERT_SWEEP_GRACE_SECONDS, 60.0, minimum=0.0))

    @property
    def alert_fault(self) -> str | None:
        """Tests only: `crash` (the process exits right after a threshold's ledger commit) or `queue`
        (every alert queue send fails)."""
        value = self._get(ALERT_FAULT)
        if value not in (None, "crash", "queue"):
            raise InvalidSettingError(ALERT_FAULT, f"must be crash or queue (tests only), got {value!r}")
        return value


def get_settings() -> Settings:
    """Settings as the process sees them now (cheap; re-reads the environment)."""
    return Settings.from_env()
