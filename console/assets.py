"""The console's static files: a fixed whitelist, read from `console/static/`.

Only the names listed in `ASSETS` can ever be served, so no request path reaches the
file system (no traversal, no directory listing). Each answer carries headers that keep
the page self-contained: a Content-Security-Policy allowing only this origin (no CDN,
no inline script), `nosniff`, and no referrer, so nothing the page does leaks elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE = "index.html"

# name -> content type; the page itself is served at /api/console, the rest under /api/console/assets/.
ASSETS: dict[str, str] = {
    PAGE: "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class Asset:
    """One servable file: its bytes, content type and response headers."""

    name: str
    body: bytes
    content_type: str

    @property
    def headers(self) -> dict[str, str]:
        # The page and assets change only with a deploy; "no-cache" makes the browser
        # revalidate so an operator never runs a stale console against a newer app.
        return {**SECURITY_HEADERS, "Cache-Control": "no-cache"}


def _read(name: str) -> bytes:
    # Read per request (a few KB): an edited file shows on reload, no restart needed.
    return (STATIC_DIR / name).read_bytes()


def find_asset(name: str | None) -> Asset | None:
    """The whitelisted asset called `name`, or None for anything else."""
    if not name or name not in ASSETS:
        return None
    return Asset(name, _read(name), ASSETS[name])


def page() -> Asset:
    """The console's HTML page."""
    asset = find_asset(PAGE)
    assert asset is not None
    return asset
