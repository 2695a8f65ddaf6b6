"""A tiny Stripe-side fault injector: forwards to localstripe, misbehaves on request.

Tests point the app's STRIPE_API_BASE at it and arm one fault at a time::

    fault.arm("drop_after_forward", method="POST", path="/v1/payment_intents", times=1)

Faults: ``drop_after_forward`` (Stripe did the work, the connection dies before the
answer), ``sleep_after_forward`` (answer later than the app's timeout),
``500_after_forward`` (Stripe did the work but answers 500), ``refuse`` (answer
500 without forwarding), ``409_in_use`` (Stripe's answer while an earlier request with the
same idempotency key is still running: 409 ``idempotency_key_in_use``, not forwarded),
``trickle_after_forward`` (Stripe did the work; the answer arrives a few bytes at a time,
each within any per-read timeout, the whole far later than the proxy's deadline) and
``raw_utf8`` (the answer re-serialised with non-ASCII characters as raw UTF-8: JSON allows
both, and localstripe escapes them while a real encoder may not; the UTF-16 size of a
stored answer depends on it).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


@dataclass
class _Fault:
    mode: str
    method: str
    path: str
    times: int


class FaultUpstream:
    def __init__(self, target: str, sleep_seconds: float = 4.0) -> None:
        self.target = target.rstrip("/")
        self.sleep_seconds = sleep_seconds
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self.forwarded: list[tuple[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _handle(self) -> None:
                owner._serve(self)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def arm(self, mode: str, *, method: str = "POST", path: str = "/v1/payment_intents", times: int = 1) -> None:
        with self._lock:
            self._faults.append(_Fault(mode, method, path, times))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take(self, method: str, path: str) -> str | None:
        with self._lock:
            for f in self._faults:
                if f.method == method and path.split("?")[0] == f.path and f.times > 0:
                    f.times -= 1
                    return f.mode
        return None

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        mode = self._take(h.command, h.path)
        if mode == "refuse":
            self._answer(h, 500, b'{"error": {"type": "api_error", "message": "injected"}}', "application/json")
            return
        if mode == "409_in_use":
            self._answer(h, 409, json.dumps({"error": {
                "type": "invalid_request_error", "code": "idempotency_key_in_use",
                "message": "There is currently another in-progress request using this Idempotent Key."}}).encode(),
                "application/json")
            return
        headers = {k: v for k, v in h.headers.items() if k.lower() in ("authorization", "content-type", "idempotency-key")}
        resp = httpx.request(h.command, self.target + h.path, headers=headers, content=body, timeout=30)
        with self._lock:
            self.forwarded.append((h.command, h.path))
        if mode == "drop_after_forward":
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if mode == "sleep_after_forward":
            time.sleep(self.sleep_seconds)
        if mode == "trickle_after_forward":
            self._trickle(h, resp.status_code, resp.content)
            return
        content = resp.content
        if mode == "raw_utf8":
            content = json.dumps(resp.json(), indent=2, sort_keys=True, ensure_ascii=False).encode()
        status = 500 if mode == "500_after_forward" else resp.status_code
        self._answer(h, status, content, resp.headers.get("content-type", "application/json"))

    def _trickle(self, h: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            for i in range(0, len(body), 16):  # ~2 KB: over 30 s, each piece within 0.25 s
                h.wfile.write(body[i:i + 16])
                h.wfile.flush()
                time.sleep(0.25)
        except OSError:
            pass

    @staticmethod
    def _answer(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except OSError:
            pass

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
