"""A total deadline for HTTP calls: connect + write + read, enforced on every socket operation.

httpx's timeouts bound each operation (one connect, one write, one read), not the request:
an upstream that trickles its answer a byte at a time keeps a request alive indefinitely.
The proxy needs more: its in-flight lease must outlive any forward it makes (docs/proxy.md,
"Why the cap holds"). So `deadline_transport()` gives httpx a network backend that clips
every connect, read and write to the time left before the deadline set by `within()`, and
fails the operation once none is left (as httpcore's own timeout exceptions, which httpx
maps to `httpx.ConnectTimeout`, `ReadTimeout` and `WriteTimeout`).

    with within(5.0):
        client.post(...)   # raises an httpx timeout at the latest ~5 s after `within` began

Outside `within()` the transport behaves like httpx's default one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

_deadline: ContextVar[float | None] = ContextVar("spendgate_http_deadline", default=None)


@contextlib.contextmanager
def within(seconds: float) -> Iterator[float]:
    """Run the enclosed HTTP calls under one total deadline (a monotonic time); nests by the minimum."""
    end = time.monotonic() + max(0.0, seconds)
    outer = _deadline.get()
    token = _deadline.set(end if outer is None else min(end, outer))
    try:
        yield end
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the current deadline (None: no deadline)."""
    end = _deadline.get()
    return None if end is None else end - time.monotonic()


def _clip(timeout: float | None, exc: type[Exception]) -> float | None:
    left = remaining()
    if left is None:
        return timeout
    if left <= 0:
        raise exc("the total deadline of this request has passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clip(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clip(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _clip(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync backend with every operation clipped to the current deadline."""

    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        clipped = _clip(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_tcp(host, port, clipped, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, _clip(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    """An httpx transport whose connections obey `within()` deadlines.

    httpx has no public way to pass a network backend, so the pool's backend is swapped
    after construction; tests/proxy/test_money_holes.py (the trickle test) fails if an httpx/httpcore upgrade
    moves it."""
    transport = httpx.HTTPTransport(limits=limits)
    pool = transport._pool
    pool._network_backend = DeadlineBackend(pool._network_backend)  # type: ignore[attr-defined]
    return transport
