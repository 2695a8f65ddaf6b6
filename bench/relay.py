"""A counting TCP relay: sits in front of Azurite's table port and counts HTTP requests.

The proxy runs in devhost (another process), so its storage round trips are counted on
the wire: every request the relay passes on is parsed just enough to find its end
(Content-Length or chunked), and counted when its head or body names `needle` (the
ledger table: queries name it in the path, entity-group transactions in the body of
``$batch``), which keeps the durable engine's own tables out of the count.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class CountingRelay:
    """`delay` seconds are added before passing on data that names `needle` (tests use it as slow storage)."""

    def __init__(self, upstream_port: int, needle: bytes, *, delay: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.needle = needle.lower()
        self.delay = delay
        self.lock = threading.Lock()
        self.requests = 0  # every HTTP request passed on
        self.matching = 0  # those naming the needle
        self._server = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = self._server.getsockname()[1]
        self._stopped = False

    def start(self) -> CountingRelay:
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped = True
        self._server.close()

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.requests, self.matching

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        buffer = b""
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if self.delay and self.needle in data.lower():
                time.sleep(self.delay)
            upstream.sendall(data)
            buffer = self._count(buffer + data)
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _count(self, buffer: bytes) -> bytes:
        """Count every complete request at the front of `buffer`; return the rest."""
        while True:
            end = _message_end(buffer)
            if end is None:
                return buffer
            message, buffer = buffer[:end], buffer[end:]
            with self.lock:
                self.requests += 1
                self.matching += self.needle in message.lower()


def _message_end(buffer: bytes) -> int | None:
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    body_start = head_end + 4
    headers = buffer[:head_end].lower().split(b"\r\n")[1:]
    length, chunked = 0, False
    for line in headers:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            length = int(value.strip())
        elif name.strip() == b"transfer-encoding" and b"chunked" in value:
            chunked = True
    if not chunked:
        return body_start + length if len(buffer) >= body_start + length else None
    pos = body_start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(buffer[pos:line_end].split(b";")[0], 16)
        pos = line_end + 2 + size + 2
        if size == 0:
            return pos if len(buffer) >= pos else None
        if len(buffer) < pos:
            return None


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
