"""The settings module: numeric settings fail with a message naming the setting."""

from __future__ import annotations

import pytest

from core.settings import (
    IDEMPOTENCY_RETENTION_DAYS,
    STRIPE_TIMEOUT_SECONDS,
    STRIPE_VERSION,
    InvalidSettingError,
    Settings,
)


def test_numeric_settings_default_and_parse() -> None:
    assert Settings.from_mapping({}).idempotency_retention_days == 30
    assert Settings.from_mapping({IDEMPOTENCY_RETENTION_DAYS: "45"}).idempotency_retention_days == 45
    assert Settings.from_mapping({STRIPE_TIMEOUT_SECONDS: "2.5"}).stripe_timeout_seconds == 2.5


@pytest.mark.parametrize(
    ("name", "raw", "attribute"),
    [
        (IDEMPOTENCY_RETENTION_DAYS, "thirty", "idempotency_retention_days"),
        (IDEMPOTENCY_RETENTION_DAYS, "1", "idempotency_retention_days"),  # not longer than Stripe's 24 h
        (IDEMPOTENCY_RETENTION_DAYS, "2.5", "idempotency_retention_days"),
        (STRIPE_TIMEOUT_SECONDS, "soon", "stripe_timeout_seconds"),
        (STRIPE_TIMEOUT_SECONDS, "0", "stripe_timeout_seconds"),
    ],
)
def test_unusable_numbers_name_the_setting(name: str, raw: str, attribute: str) -> None:
    with pytest.raises(InvalidSettingError) as err:
        getattr(Settings.from_mapping({name: raw}), attribute)
    assert name in str(err.value) and repr(raw) in str(err.value)


def test_the_stripe_version_is_pinned_by_a_setting() -> None:
    assert Settings.from_mapping({}).stripe_version == "2026-10-28.endive"  # what stripe-python 16.1.0 sends
    assert Settings.from_mapping({STRIPE_VERSION: "2027-01-01.x"}).stripe_version == "2027-01-01.x"
    with pytest.raises(InvalidSettingError) as err:
        Settings.from_mapping({STRIPE_VERSION: "2026 10"}).stripe_version  # noqa: B018
    assert STRIPE_VERSION in str(err.value)
