"""The console's static files: only the whitelist is served, with safe headers."""

from __future__ import annotations

import re

import pytest

from console.assets import ASSETS, STATIC_DIR, find_asset, page


def test_page_is_html_that_links_only_local_assets() -> None:
    asset = page()
    assert asset.content_type.startswith("text/html")
    html = asset.body.decode()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs, "the page should load its script and stylesheet"
    for ref in refs:
        # No CDN, no other origin: everything comes from this app (or is a data: URL).
        assert ref.startswith(("/api/console/assets/", "#", "data:")), ref
        if ref.startswith("/api/console/assets/"):
            assert find_asset(ref.rsplit("/", 1)[1]) is not None, ref


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("console.js", "text/javascript; charset=utf-8"), ("console.css", "text/css; charset=utf-8")],
)
def test_whitelisted_assets_have_their_content_type(name: str, content_type: str) -> None:
    asset = find_asset(name)
    assert asset is not None
    assert asset.content_type == content_type
    assert asset.body == (STATIC_DIR / name).read_bytes()
    assert asset.headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src 'self'" in asset.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    "name",
    [None, "", "../assets.py", "..%2Fassets.py", "/etc/passwd", "routes.py", "CONSOLE.JS", "console.js/", ".", ".."],
)
def test_anything_else_is_not_found(name: str | None) -> None:
    assert find_asset(name) is None


def test_every_static_file_is_whitelisted_and_every_whitelisted_file_exists() -> None:
    on_disk = {p.name for p in STATIC_DIR.iterdir() if p.is_file()}
    assert on_disk == set(ASSETS)


def test_script_never_puts_data_into_html_or_the_key_into_a_url() -> None:
    js = (STATIC_DIR / "console.js").read_text()
    # Labels and audit fields come from agents: render them as text only.
    assert "innerHTML" not in js and "outerHTML" not in js and "insertAdjacentHTML" not in js
    assert "localStorage" not in js, "the function key belongs in sessionStorage only"
    assert '"x-functions-key": key' in js
    assert "code=" not in js, "never send the function key as ?code="
