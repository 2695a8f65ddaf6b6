"""Charge identity claims on real Azurite: one winner per identity, crashes, declines, takeovers.

The proxy's side (`ProxyRecords`: what the proxy recorded for an owner's request, and whether
its key can still send) is a stand-in here; the table semantics (insert-if-absent, If-Match)
are Azurite's own.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableClient

from billing.claims import Attempt, ChargeClaims, Identity, Owner, Verdict
from core.storage import table_service_from_connection_string
from devhost.services import Service

pytestmark = pytest.mark.integration
NOW = datetime(2026, 9, 1, 12, tzinfo=UTC)
LEASE = timedelta(seconds=70)


class Records:
    """What the proxy knows: attempts by (key id, idempotency key), and keys that can no longer send."""

    def __init__(self) -> None:
        self.attempts: dict[tuple[str, str], Attempt] = {}
        self.dead_keys: set[str] = set()

    def attempt(self, key_id: str, idempotency_key: str) -> Attempt:
        return self.attempts.get((key_id, idempotency_key), Attempt("none"))

    def key_can_send(self, key_id: str, now: datetime) -> bool:
        return key_id not in self.dead_keys


@pytest.fixture
def table(azurite: Service) -> TableClient:
    tables = table_service_from_connection_string(azurite.extra["connection_string"])
    name = "claims" + uuid.uuid4().hex[:10]
    tables.create_table(name)
    return tables.get_table_client(name)


def identity() -> Identity:
    return Identity(f"cus_{uuid.uuid4().hex[:12]}", "2026-09")


RUN_A, RUN_B = Owner("keyA", "runA-0", "azure-durable/runA"), Owner("keyB", "runB-0", "azure-durable/runB")


def test_of_many_concurrent_claimers_exactly_one_may_charge(table: TableClient) -> None:
    claims, who = ChargeClaims(table, Records(), LEASE), identity()
    owners = [Owner(f"key{n}", f"run{n}-0") for n in range(16)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda o: claims.claim(who, o, 2900, NOW), owners))
    assert sorted(a.verdict for a in answers) == [Verdict.IN_PROGRESS] * 15 + [Verdict.PROCEED]


def test_charged_identities_answer_already_charged_and_purposes_are_distinct(table: TableClient) -> None:
    claims, who = ChargeClaims(table, Records(), LEASE), identity()
    assert claims.claim(who, RUN_A, 2900, NOW).verdict is Verdict.PROCEED
    claims.settle(who, RUN_A, moved_money=True, object_id="pi_A", now=NOW)
    again = claims.claim(who, RUN_B, 2900, NOW)
    assert (again.verdict, again.object_id, again.owner) == (Verdict.ALREADY_CHARGED, "pi_A", RUN_A)
    retry = claims.claim(who, RUN_A, 2900, NOW)  # the same item retried: its own charge
    assert (retry.verdict, retry.mine, retry.object_id) == (Verdict.PROCEED, True, "pi_A")
    extra = Identity(who.customer_id, who.billing_period, "inv-2")
    assert claims.claim(extra, RUN_B, 2900, NOW).verdict is Verdict.PROCEED


def test_a_decline_releases_the_identity_for_a_later_charge(table: TableClient) -> None:
    claims, who = ChargeClaims(table, Records(), LEASE), identity()
    claims.claim(who, RUN_A, 2900, NOW)
    claims.settle(who, RUN_A, moved_money=False, object_id="pi_declined", now=NOW)
    assert claims.read(who) is None
    assert claims.claim(who, RUN_B, 2900, NOW).verdict is Verdict.PROCEED


def test_a_crash_between_claim_and_charge(table: TableClient) -> None:
    records = Records()
    claims, who = ChargeClaims(table, records, LEASE), identity()
    claims.claim(who, RUN_A, 2900, NOW)  # ... and run A's host dies before it sends anything
    # While A's key can still send and the claim is fresh, A might still charge: nobody else may.
    assert claims.claim(who, RUN_B, 2900, NOW + timedelta(seconds=5)).verdict is Verdict.IN_PROGRESS
    # A retry of A's own item goes ahead (same idempotency key: the proxy replays if it was sent).
    assert claims.claim(who, RUN_A, 2900, NOW + timedelta(seconds=5)).verdict is Verdict.PROCEED
    # After the lease, or at once when A's key is revoked, B takes the claim over.
    assert claims.claim(who, RUN_B, 2900, NOW + LEASE + timedelta(seconds=1)).verdict is Verdict.PROCEED
    assert claims.read(who)["owner_key_id"] == "keyB"  # type: ignore[index]
    other = identity()
    claims.claim(other, RUN_A, 2900, NOW)
    records.dead_keys.add("keyA")
    assert claims.claim(other, RUN_B, 2900, NOW).verdict is Verdict.PROCEED


def test_a_charge_whose_owner_never_settled_is_judged_from_the_proxys_record(table: TableClient) -> None:
    records = Records()
    claims, who = ChargeClaims(table, records, LEASE), identity()
    claims.claim(who, RUN_A, 2900, NOW)
    records.attempts[("keyA", "runA-0")] = Attempt("in_flight")
    assert claims.claim(who, RUN_B, 2900, NOW + LEASE * 2).verdict is Verdict.IN_PROGRESS  # the proxy still waits
    records.attempts[("keyA", "runA-0")] = Attempt("completed", 200, "pi_A", "succeeded")
    answer = claims.claim(who, RUN_B, 2900, NOW + LEASE * 2)
    assert (answer.verdict, answer.object_id) == (Verdict.ALREADY_CHARGED, "pi_A")
    assert claims.read(who)["state"] == "charged"  # type: ignore[index]
    declined = identity()
    claims.claim(declined, RUN_A, 2900, NOW)
    records.attempts[("keyA", "runA-0")] = Attempt("completed", 402)
    assert claims.claim(declined, RUN_B, 2900, NOW).verdict is Verdict.PROCEED
    # An intent awaiting the customer (3-D Secure) may still move money: it holds the identity.
    pending = identity()
    claims.claim(pending, RUN_A, 2900, NOW)
    records.attempts[("keyA", "runA-0")] = Attempt("completed", 200, "pi_3ds", "requires_action")
    assert claims.claim(pending, RUN_B, 2900, NOW).verdict is Verdict.ALREADY_CHARGED


def test_settle_never_touches_a_claim_that_was_taken_over(table: TableClient) -> None:
    records = Records()
    claims, who = ChargeClaims(table, records, LEASE), identity()
    claims.claim(who, RUN_A, 2900, NOW)
    records.dead_keys.add("keyA")
    claims.claim(who, RUN_B, 2900, NOW)
    claims.settle(who, RUN_A, moved_money=False, object_id=None, now=NOW)  # A's late settlement
    assert claims.read(who)["owner_key_id"] == "keyB"  # type: ignore[index]
