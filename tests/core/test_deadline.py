"""The total deadline of an HTTP call (core/deadline.py), against a server that trickles."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from core.deadline import deadline_transport, remaining, within


@pytest.fixture
def trickler() -> Iterator[str]:
    """Answers every request with a 40-byte body, one byte every 50 ms (2 s in all)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\nConnection: close\r\n\r\n")
                    for _ in range(40):
                        conn.sendall(b"x")
                        time.sleep(0.05)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


def client() -> httpx.Client:
    limits = httpx.Limits(max_connections=4)
    return httpx.Client(timeout=5, limits=limits, transport=deadline_transport(limits))


def test_every_read_in_time_but_the_whole_too_late_is_a_read_timeout(trickler: str) -> None:
    with client() as http, within(0.5), pytest.raises(httpx.ReadTimeout):
        http.get(trickler)


def test_without_a_deadline_the_transport_is_httpxs_own(trickler: str) -> None:
    with client() as http:
        assert http.get(trickler).content == b"x" * 40


def test_deadlines_nest_by_the_minimum() -> None:
    assert remaining() is None
    with within(10), within(100):
        left = remaining()
        assert left is not None and left <= 10
    assert remaining() is None
