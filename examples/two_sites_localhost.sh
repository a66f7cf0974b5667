#!/usr/bin/env bash
# Two sites on one machine over QUIC: a worker and a controller, then the same prompt target-only.
# The controller's text must equal the target-only text exactly (lossless).  The sites
# authenticate each other as they would across the internet: mutual TLS and a pre-shared key
# (on loopback neither is required; see docs/security.md).
set -euo pipefail
WANSPEC=${WANSPEC:-wanspec}
dir=$(mktemp -d)
trap 'kill $worker 2>/dev/null || true; rm -rf "$dir"' EXIT

$WANSPEC certs "$dir/certs" >/dev/null
python3 -c 'import secrets; print(secrets.token_hex(32))' >"$dir/wanspec.key"
$WANSPEC worker --transport quic --listen 127.0.0.1:0 \
    --cert "$dir/certs/server.pem" --key "$dir/certs/server.key" \
    --client-ca "$dir/certs/ca.pem" --auth-key-file "$dir/wanspec.key" >"$dir/worker.log" 2>&1 &
worker=$!
for _ in $(seq 100); do grep -q listening "$dir/worker.log" && break; sleep 0.1; done
addr=$(grep -o 'quic://[^ ]*' "$dir/worker.log" | head -1 | sed 's|quic://||')
echo "worker at $addr"

prompt=$'ROMEO.\nBut soft, what light'
$WANSPEC controller --transport quic --worker "$addr" --ca "$dir/certs/ca.pem" \
    --cert "$dir/certs/client.pem" --key "$dir/certs/client.key" --auth-key-file "$dir/wanspec.key" \
    --prompt "$prompt" --max-tokens 48 --json >"$dir/remote.json"
$WANSPEC generate --mode target --prompt "$prompt" --max-tokens 48 --json >"$dir/target.json"
python3 - "$dir/remote.json" "$dir/target.json" <<'PY'
import json, sys
remote, target = (json.load(open(p)) for p in sys.argv[1:])
print(remote["text"])
print("per-site draft passes:", remote["metrics"]["draft_passes"])
assert remote["metrics"]["worker_used"], remote["metrics"].get("worker_error")
assert remote["token_ids"] == target["token_ids"], "outputs differ!"
print("identical to target-only: yes")
PY
