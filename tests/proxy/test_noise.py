"""The unauthenticated noise gate: per-source and global buckets, audit sampling (pure)."""

from __future__ import annotations

from proxy.noise import GLOBAL_SAMPLES_PER_WINDOW, PER_SOURCE_BURST, PER_SOURCE_PER_SECOND, NoiseGate, source_of


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_source_is_the_address_the_nearest_proxy_appended_without_its_port() -> None:
    assert source_of({"x-forwarded-for": "6.6.6.6, 203.0.113.9:51234"}) == "203.0.113.9"
    assert source_of({"x-forwarded-for": "[2001:db8::1]:443"}) == "2001:db8::1"
    assert source_of({"x-forwarded-for": "2001:db8::1"}) == "2001:db8::1"
    assert source_of({}) == "unknown"


def test_each_source_has_its_own_bucket_and_it_refills() -> None:
    clock = Clock()
    gate = NoiseGate(clock)
    assert all(gate.admit("a") for _ in range(int(PER_SOURCE_BURST)))
    assert not gate.admit("a") and gate.admit("b")
    clock.t += 1 / PER_SOURCE_PER_SECOND
    assert gate.admit("a") and not gate.admit("a")


def test_audit_is_sampled_once_per_source_per_window_and_counts_the_rest() -> None:
    clock = Clock()
    gate = NoiseGate(clock)
    assert gate.sample("a") == 0
    assert [gate.sample("a") for _ in range(5)] == [None] * 5
    clock.t += 61
    assert gate.sample("a") == 5  # the next row reports what went unaudited
    rows = sum(gate.sample(f"s{i}") is not None for i in range(GLOBAL_SAMPLES_PER_WINDOW + 50))
    assert rows == GLOBAL_SAMPLES_PER_WINDOW - 1  # "a" took one of this window's rows
