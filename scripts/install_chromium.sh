#!/usr/bin/env bash
# Debian's chromium for the console's browser tests (tests/console), driven by Playwright.
# `playwright install` downloads its own browser build, which cannot work offline-from-CDN
# machines like ours, so the tests launch /usr/bin/chromium instead. Idempotent: does
# nothing when chromium is already installed (the install takes about 30 s otherwise).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi
echo "installing Debian chromium for the browser tests..." >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version >&2 2>/dev/null || true
