#!/usr/bin/env bash
# Demo: the HCP Terraform emulator, a real OpenBao and token-rotator on loopback. The organization token is
# rotated every few seconds into OpenBao; watch the token ids change and scrape the metrics URL printed below.
#   DEMO_SECONDS=N  stop after N seconds (default: run until Ctrl-C)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
echo "building token-rotator and the emulators…" >&2
cargo build --quiet --locked -p token-rotator -p token-rotator-emulators
BIN="$PWD/target/debug"
BAO="$PWD/.venv/bin/bao"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.2; done; echo "timed out waiting for $1" >&2; return 1; }

TFC_PORT=$(free_port); BAO_PORT=$(free_port); LISTEN_PORT=$(free_port)
mkdir -m 0700 "$WORK/home" "$WORK/state"

"$BIN/tfc-emulator" --listen "127.0.0.1:$TFC_PORT" --org acme --admin-token-file "$WORK/tfc-admin" 2>"$WORK/tfc.log" &
PIDS+=($!)
HOME="$WORK/home" "$BAO" server -dev -dev-listen-address="127.0.0.1:$BAO_PORT" -dev-root-token-id=demo-root \
  -dev-no-store-token >"$WORK/bao.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$BAO_PORT/v1/sys/health"
for _ in $(seq 1 100); do [ -s "$WORK/tfc-admin" ] && break; sleep 0.1; done
printf 'demo-root\n' >"$WORK/vault-token"; chmod 0600 "$WORK/vault-token"

cat >"$WORK/policy.toml" <<POLICY
[daemon]
state_dir = "$WORK/state"
listen = "127.0.0.1:$LISTEN_PORT"

[issuers.tfc]
kind = "tfe"
address = "http://127.0.0.1:$TFC_PORT"
token = { file = "$WORK/tfc-admin" }

[sinks.vault]
kind = "vault"
address = "http://127.0.0.1:$BAO_PORT"
mount = "secret"
auth = { method = "token", token = { file = "$WORK/vault-token" } }

[tokens.demo-org]
issuer = "tfc"
type = "organization"
organization = "acme"
lifetime = "40s"          # short on purpose: a rotation every ~8 s
rotate_before = "32s"
sinks = [{ sink = "vault", path = "demo/tfc-org" }]
POLICY

"$BIN/token-rotator" check --config "$WORK/policy.toml"
"$BIN/token-rotator" run --config "$WORK/policy.toml" 2>"$WORK/daemon.log" &
PIDS+=($!)
wait_http "http://127.0.0.1:$LISTEN_PORT/healthz"

cat <<EOT

  token-rotator is running.
    metrics:  http://127.0.0.1:$LISTEN_PORT/metrics
    ready:    http://127.0.0.1:$LISTEN_PORT/readyz
    logs:     $WORK/daemon.log
  The organization token of "acme" rotates every ~8 s into OpenBao at secret/demo/tfc-org.
  Below: each new token as OpenBao holds it (id and expiry; the value itself is never printed).

EOT

export BAO_ADDR="http://127.0.0.1:$BAO_PORT" BAO_TOKEN=demo-root HOME="$WORK/home"
last=""; start=$(date +%s); rotations=0
while :; do
  rec=$("$BAO" kv get -format=json secret/demo/tfc-org 2>/dev/null | jq -c '.data.data | {token_id, created_at, expires_at}' || true)
  id=$(jq -r '.token_id // empty' <<<"${rec:-{\}}")
  if [ -n "$id" ] && [ "$id" != "$last" ]; then
    rotations=$((rotations + 1)); last="$id"
    ready=$(curl -fsS "http://127.0.0.1:$LISTEN_PORT/metrics" | grep '^token_rotator_token_ready' || true)
    echo "$(date -u +%H:%M:%S)  rotation #$rotations  $rec  ${ready}"
  fi
  if [ -n "${DEMO_SECONDS:-}" ] && [ $(( $(date +%s) - start )) -ge "$DEMO_SECONDS" ]; then break; fi
  sleep 1
done
echo
curl -fsS "http://127.0.0.1:$LISTEN_PORT/metrics" | grep -E '^token_rotator_(token_|rotations_total)' || true
if [ "$rotations" -lt 2 ] && [ -n "${DEMO_SECONDS:-}" ] && [ "$DEMO_SECONDS" -ge 20 ]; then
  echo "expected at least two rotations; daemon log:" >&2; cat "$WORK/daemon.log" >&2; exit 1
fi
