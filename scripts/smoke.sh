#!/usr/bin/env bash
# Smoke-test a running spendgate: Azure after `azd up`, or `make run` on this machine.
#
#   scripts/smoke.sh <base-url> <function-key>
#   scripts/smoke.sh http://localhost:7071 local-dev-function-key      # make run
#
# It checks health, issues a tiny vault key ($1/day, one read-only endpoint, 1 hour), reads one
# customer through the proxy with it at Stripe's own path `/v1/customers` at the root of the host,
# as Stripe SDKs call it (which proves the Stripe secret resolves), revokes the key and
# checks that the proxy now refuses it with `vault_key_revoked`. It never moves money and never
# prints a key. The key is revoked on any exit, even a failed one. Needs bash, curl and python3.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 <base-url> <function-key>" >&2
  exit 2
fi
BASE_URL="${1%/}"
FUNCTION_KEY="$2"
WORK="$(mktemp -d)"
KEY_ID=""
REVOKED=""
VAULT_KEY=""
CHECKS=0

say() { printf 'smoke: %s\n' "$*"; }
ok() { CHECKS=$((CHECKS + 1)); say "ok   $*"; }
fail() {
  say "FAIL $*"
  if [[ -s "$WORK/body" ]]; then
    say "     response: $(head -c 600 "$WORK/body" | sed -E 's/vk_[A-Za-z0-9_]+/vk_…(redacted)/g')"
  fi
  exit 1
}

# request METHOD PATH AUTH [JSON]: the status code on stdout, the body in $WORK/body.
# AUTH is "function", "vault" or "none". Keys go to curl through a config on stdin, not argv.
request() {
  local method="$1" path="$2" auth="$3" data="${4:-}"
  rm -f "$WORK/body"
  {
    printf 'url = "%s%s"\n' "$BASE_URL" "$path"
    printf 'request = "%s"\n' "$method"
    case "$auth" in
      function) printf 'header = "x-functions-key: %s"\n' "$FUNCTION_KEY" ;;
      vault) printf 'header = "Authorization: Bearer %s"\n' "$VAULT_KEY" ;;
    esac
    if [[ -n "$data" ]]; then
      printf 'header = "Content-Type: application/json"\n'
      printf 'data = "%s"\n' "$(printf '%s' "$data" | sed 's/\\/\\\\/g; s/"/\\"/g')"
    fi
  } | curl --silent --show-error --max-time 60 --output "$WORK/body" --write-out '%{http_code}' --config - || true
}

# json FIELD: one top-level field of $WORK/body ("error.code" reaches one level down).
json() {
  python3 -c '
import json, sys
try:
    value = json.load(open(sys.argv[1]))
    for part in sys.argv[2].split("."):
        value = value.get(part) if isinstance(value, dict) else None
except ValueError:
    value = None
print("" if value is None else value)
' "$WORK/body" "$1"
}

cleanup() {
  local status=$?
  if [[ -n "$KEY_ID" && -z "$REVOKED" ]]; then
    request DELETE "/api/vault/keys/$KEY_ID" function >/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT

say "checking $BASE_URL"

# 1. Health: table storage and the Stripe upstream both answer.
code="$(request GET /api/health none)"
[[ "$code" == 200 && "$(json status)" == ok ]] || fail "GET /api/health answered $code"
ok "GET /api/health: storage and Stripe reachable"

# 2. The admin API refuses a caller without the function key.
code="$(request GET /api/vault/keys none)"
[[ "$code" == 401 || "$code" == 403 ]] || fail "GET /api/vault/keys without a function key answered $code, wanted 401"
ok "admin API needs the function key ($code without it)"

# 3. Issue a tiny key that may only list customers.
label="smoke-$(date -u +%Y%m%d%H%M%S)-$RANDOM"
code="$(request POST /api/vault/keys function "{\"vendor\": \"stripe\", \"label\": \"$label\", \"daily_usd_cap\": 1, \"allowed_endpoints\": [\"GET /v1/customers\"], \"expires_in\": \"1h\", \"metadata\": {\"purpose\": \"smoke test\"}}")"
[[ "$code" == 201 ]] || fail "POST /api/vault/keys answered $code, wanted 201 (is the function key right?)"
KEY_ID="$(json key_id)"
VAULT_KEY="$(json vault_key)"
[[ -n "$KEY_ID" && "$VAULT_KEY" == vk_* ]] || fail "POST /api/vault/keys returned no key_id/vault_key"
ok "issued vault key $KEY_ID (label $label, \$1/day, GET /v1/customers only)"

# 4. The key works through the proxy at Stripe's own path (what every Stripe SDK calls, routePrefix ""):
#    this call reaches Stripe with the app's own secret.
code="$(request GET "/v1/customers?limit=1" vault)"
if [[ "$code" == 401 && "$(json error.code)" != vault_key_* ]]; then
  fail "Stripe refused the app's secret key (401): set it in Key Vault and restart the app (docs/deploy.md)"
fi
[[ "$code" == 200 ]] || fail "GET /v1/customers with the new key answered $code, wanted 200 (is host.json's routePrefix \"\"?)"
ok "proxy forwarded GET /v1/customers to Stripe with the new key"

# 5. Anything outside the key's allow-list is refused before it reaches Stripe (also under /api/stripe).
code="$(request GET /api/stripe/v1/balance vault)"
[[ "$code" == 403 && "$(json error.code)" == endpoint_not_allowed ]] ||
  fail "GET /api/stripe/v1/balance answered $code $(json error.code), wanted 403 endpoint_not_allowed"
ok "proxy refused an endpoint outside the key's allow-list"

# 6. Revoke it.
code="$(request DELETE "/api/vault/keys/$KEY_ID" function)"
[[ "$code" == 200 && "$(json status)" == revoked ]] || fail "DELETE /api/vault/keys/$KEY_ID answered $code"
REVOKED=1
ok "revoked $KEY_ID"

# 7. Stop means stop: the proxy refuses the revoked key.
code="$(request GET "/api/stripe/v1/customers?limit=1" vault)"
[[ "$code" == 401 && "$(json error.code)" == vault_key_revoked ]] ||
  fail "the revoked key got $code $(json error.code), wanted 401 vault_key_revoked"
ok "proxy refuses the revoked key (401 vault_key_revoked)"

code="$(request GET "/api/vault/keys/$KEY_ID" function)"
[[ "$code" == 200 && "$(json status)" == revoked ]] || fail "GET /api/vault/keys/$KEY_ID answered $code $(json status)"
ok "GET /api/vault/keys/$KEY_ID reports status revoked"

say "all $CHECKS checks passed"
