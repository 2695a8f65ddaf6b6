"""The content-derived charge key: same charge, same key; different charge, different key."""

from __future__ import annotations

import pytest

from agents.idempotency import (
    KEY_PREFIX,
    ChargeArgs,
    InvalidArguments,
    charge_idempotency_key,
    normalize_billing_period,
)


def key(*args: object) -> str:
    return charge_idempotency_key(ChargeArgs.parse(*args))


@pytest.mark.parametrize(
    "period",
    ["2026-06", "June 2026", "jun 2026", "06/2026", "6/2026", "2026/6", " JUNE  2026 ", "2026 June", "June, 2026"],
)
def test_spellings_of_one_month_share_a_key(period: str) -> None:
    assert normalize_billing_period(period) == "2026-06"
    assert key("cus_A1", 2900, period) == key("cus_A1", 2900, "2026-06")


def test_models_sending_amounts_as_text_or_float_get_the_same_key() -> None:
    assert key("cus_A1", "2900", "2026-06") == key("cus_A1", 2900.0, "2026-06") == key(" cus_A1 ", 2900, "2026-06")


@pytest.mark.parametrize(
    "other",
    [
        ("cus_B2", 2900, "2026-06"),
        ("cus_A1", 2901, "2026-06"),
        ("cus_A1", 2900, "2026-07"),
        ("cus_A1", 2900, "2026-06", "in_2"),
        ("cus_a1", 2900, "2026-06"),
    ],
)
def test_a_different_charge_gets_a_different_key(other: tuple[object, ...]) -> None:
    assert key(*other) != key("cus_A1", 2900, "2026-06")


def test_invoice_id_tells_a_legitimately_repeated_charge_apart() -> None:
    first, second = key("cus_A1", 2900, "2026-06", "in_1"), key("cus_A1", 2900, "2026-06", "in_2")
    assert first != second
    assert key("cus_A1", 2900, "2026-06", "") == key("cus_A1", 2900, "2026-06", None)


def test_key_shape() -> None:
    k = key("cus_" + "x" * 96, 99_999_999, "y" * 100, "in_" + "z" * 97)
    assert k.startswith(KEY_PREFIX) and len(k) <= 255 and k.isascii()


def test_unrecognized_periods_are_kept_as_trimmed_lower_text() -> None:
    assert normalize_billing_period("  Annual   Plan 2026 ") == "annual plan 2026"
    assert normalize_billing_period("Q3 2026") == normalize_billing_period("2026-Q3") == "2026-q3"
    assert normalize_billing_period("2026-13") == "2026-13"  # not a month: left as text


@pytest.mark.parametrize(
    "args",
    [
        ("", 2900, "2026-06"),
        ("acct_1", 2900, "2026-06"),
        ("cus_1/../x", 2900, "2026-06"),
        ("cus_1", 0, "2026-06"),
        ("cus_1", -5, "2026-06"),
        ("cus_1", 29.5, "2026-06"),
        ("cus_1", True, "2026-06"),
        ("cus_1", "29 dollars", "2026-06"),
        ("cus_1", 100_000_000, "2026-06"),
        ("cus_1", 2900, ""),
        ("cus_1", 2900, None),
        ("cus_1", 2900, "p" * 101),
        ("cus_1", 2900, "2026-06", "in 1"),
    ],
)
def test_unusable_arguments_are_refused(args: tuple[object, ...]) -> None:
    with pytest.raises(InvalidArguments):
        ChargeArgs.parse(*args)
