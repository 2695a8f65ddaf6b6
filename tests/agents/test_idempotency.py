"""The charge identity and the attempt key: one spelling per charge, the card only in the attempt key."""

from __future__ import annotations

import re

import pytest

from agents.idempotency import (
    IDENTITY_PREFIX,
    KEY_PREFIX,
    PERIOD_PATTERN,
    ChargeArgs,
    InvalidArguments,
    charge_idempotency_key,
    charge_identity,
)


def identity(*args: object) -> str:
    return charge_identity(ChargeArgs.parse(*args))


def test_models_sending_amounts_as_text_or_float_get_the_same_identity() -> None:
    assert identity("cus_A1", "2900", "2026-06") == identity("cus_A1", 2900.0, "2026-06") == identity(" cus_A1 ", 2900, "2026-06")


@pytest.mark.parametrize(
    "other",
    [
        ("cus_B2", 2900, "2026-06"),
        ("cus_A1", 2901, "2026-06"),
        ("cus_A1", 2900, "2026-07"),
        ("cus_A1", 2900, "2026-q2"),
        ("cus_A1", 2900, "2026-06", "in_2"),
        ("cus_a1", 2900, "2026-06"),
    ],
)
def test_a_different_charge_gets_a_different_identity(other: tuple[object, ...]) -> None:
    assert identity(*other) != identity("cus_A1", 2900, "2026-06")


def test_the_card_is_in_the_attempt_key_and_not_in_the_identity() -> None:
    """Issue 15 point 1: the identity is what the claim and the metadata use; the key also covers the card."""
    args = ChargeArgs.parse("cus_A1", 2900, "2026-06")
    assert charge_idempotency_key(args, "pm_old") != charge_idempotency_key(args, "pm_new")
    assert charge_idempotency_key(args, "pm_old") == charge_idempotency_key(ChargeArgs.parse("cus_A1", "2900", "2026-06"), "pm_old")
    key, ident = charge_idempotency_key(args, "pm_old"), charge_identity(args)
    assert key.startswith(KEY_PREFIX) and ident.startswith(IDENTITY_PREFIX) and len(key) <= 255


@pytest.mark.parametrize("period", ["June", "2026-06-01", "June 2026 subscription", "06/26", "Jun '26", "June 2026",
                                    "2026-6", "2026-13", "2026-Q2", "Q2 2026", "2026-q5"])
def test_periods_other_than_yyyy_mm_or_yyyy_qn_are_refused_naming_the_form(period: str) -> None:
    """Issue 15 point 5: each of these used to become its own key (a second charge)."""
    with pytest.raises(InvalidArguments, match=r"YYYY-MM \(e\.g\. 2026-06\) or YYYY-qN"):
        ChargeArgs.parse("cus_A1", 2900, period)
    assert not re.match(PERIOD_PATTERN, period)


@pytest.mark.parametrize("period", ["2026-01", "2026-12", "2026-q1", "2026-q4"])
def test_the_two_forms_are_accepted(period: str) -> None:
    assert ChargeArgs.parse("cus_A1", 2900, period).billing_period == period and re.match(PERIOD_PATTERN, period)


@pytest.mark.parametrize("invoice", ["INV-0042", "in 1", "june-invoice", "in_", "IN_1abc", "in_1/../x"])
def test_invoice_ids_must_look_like_stripe_invoices(invoice: str) -> None:
    with pytest.raises(InvalidArguments, match="in_1Nv"):
        ChargeArgs.parse("cus_A1", 2900, "2026-06", invoice)


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
    ],
)
def test_unusable_arguments_are_refused(args: tuple[object, ...]) -> None:
    with pytest.raises(InvalidArguments):
        ChargeArgs.parse(*args)
