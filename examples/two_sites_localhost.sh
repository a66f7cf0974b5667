#!/usr/bin/env bash
# Two sites on one machine over QUIC: a worker and a controller, then the same prompt target-only.
# The controller's text must equal the target-only text exactly (lossless).  The sites
# authenticate each other as they would across the internet: mutual TLS and a pre-shared key
# (on loopback neither is required; see docs/security.md).
#
# Runs after README's install, activated or not: it uses $WANSPEC if set, else the wanspec of
# this checkout's .venv, else the one on PATH.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${WANSPEC:-}" ]]; then
    if [[ -x "$repo/.venv/bin/wanspec" ]]; then
        WANSPEC="$repo/.venv/bin/wanspec"
    elif command -v wanspec >/dev/null; then
        WANSPEC=$(command -v wanspec)
    else
        echo "wanspec not found: install it first (README: python3 -m venv .venv && .venv/bin/pip install -e .)" >&2
        exit 1
    fi
fi
python=$(dirname "$WANSPEC")/python  # the interpreter wanspec is installed in
[[ -x "$python" ]] || python=python3
dir=$(mktemp -d)
worker=
trap '[[ -n "$worker" ]] && kill "$worker" 2>/dev/null; rm -rf "$dir"' EXIT

"$WANSPEC" certs "$dir/certs" >/dev/null  # on another host: add --host NAME, the name controllers dial
"$python" -c 'import secrets; print(secrets.token_hex(32))' >"$dir/wanspec.key"
"$WANSPEC" worker --transport quic --listen 127.0.0.1:0 \
    --cert "$dir/certs/server.pem" --key "$dir/certs/server.key" \
    --client-ca "$dir/certs/ca.pem" --auth-key-file "$dir/wanspec.key" >"$dir/worker.log" 2>&1 &
worker=$!
for _ in $(seq 300); do grep -q listening "$dir/worker.log" && break; sleep 0.1; done
addr=$(grep -o 'quic://[^ ]*' "$dir/worker.log" | head -1 | sed 's|quic://||')
[[ -n "$addr" ]] || { echo "the worker did not start:" >&2; cat "$dir/worker.log" >&2; exit 1; }
echo "worker at $addr"

prompt=$'ROMEO.\nBut soft, what light'
# --require-worker: exit 1 rather than decode at the busy site alone if the worker is unusable
"$WANSPEC" controller --transport quic --worker "$addr" --ca "$dir/certs/ca.pem" \
    --cert "$dir/certs/client.pem" --key "$dir/certs/client.key" --auth-key-file "$dir/wanspec.key" \
    --prompt "$prompt" --max-tokens 48 --json --require-worker >"$dir/remote.json"
"$WANSPEC" generate --mode target --prompt "$prompt" --max-tokens 48 --json >"$dir/target.json"
"$python" - "$dir/remote.json" "$dir/target.json" <<'PY'
import json, sys
remote, target = (json.load(open(p)) for p in sys.argv[1:])
print(remote["text"])
print("per-site draft passes:", remote["metrics"]["draft_passes"])
assert remote["token_ids"] == target["token_ids"], "outputs differ!"
print("identical to target-only: yes")
PY
