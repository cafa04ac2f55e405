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

. scripts/stack.sh
LISTEN_PORT=$(free_port)
mkdir -m 0700 "$WORK/state"
start_stack "$BIN/tfc-emulator" "$BAO" demo-root
printf 'demo-root\n' >"$WORK/vault-token"; chmod 0600 "$WORK/vault-token"
stack_policy "$LISTEN_PORT" "$WORK/tfc-admin" "$WORK/vault-token" demo-org demo/tfc-org "$WORK/state" >"$WORK/policy.toml"
# A delivery target beside the record: the bare token in a file, as a consumer that reads a token file wants it.
sed -i 's|^sinks = \[{ sink = "vault", path = "demo/tfc-org" }\]$|sinks = [{ sink = "vault", path = "demo/tfc-org" }, { sink = "files", path = "demo-org.token", format = "token" }]|' "$WORK/policy.toml"
printf '\n[sinks.files]\nkind = "file"\ndirectory = "%s"\n' "$WORK/files" >>"$WORK/policy.toml"
grep -q 'format = "token"' "$WORK/policy.toml" || { echo "demo: the delivery target was not added to the policy" >&2; exit 1; }

"$BIN/token-rotator" check --config "$WORK/policy.toml"
"$BIN/token-rotator" run --config "$WORK/policy.toml" 2>"$WORK/daemon.log" &
PIDS+=($!)
wait_http "http://127.0.0.1:$LISTEN_PORT/healthz"

cat <<EOT

  token-rotator is running.
    metrics:  http://127.0.0.1:$LISTEN_PORT/metrics
    ready:    http://127.0.0.1:$LISTEN_PORT/readyz
    logs:     $WORK/daemon.log
  The organization token of "acme" rotates every ~8 s into OpenBao at secret/demo/tfc-org (the record), and
  into $WORK/files/demo-org.token (a delivery target: the bare token, 0600).
  Below: each new token as OpenBao holds it (id and expiry; the value itself is never printed), and whether the
  token file holds the same value.

EOT

export BAO_ADDR="http://127.0.0.1:$BAO_PORT" BAO_TOKEN=demo-root HOME="$WORK/home"
last=""; start=$(date +%s); rotations=0
while :; do
  rec=$("$BAO" kv get -format=json secret/demo/tfc-org 2>/dev/null | jq -c '.data.data | {token_id, created_at, expires_at}' || true)
  id=$(jq -r '.token_id // empty' <<<"${rec:-{\}}")
  if [ -n "$id" ] && [ "$id" != "$last" ]; then
    rotations=$((rotations + 1)); last="$id"
    ready=$(curl -fsS "http://127.0.0.1:$LISTEN_PORT/metrics" | grep '^token_rotator_token_ready' || true)
    # Compared in the shell: neither value is printed.
    want=$("$BAO" kv get -field=token secret/demo/tfc-org 2>/dev/null || true)
    have=$(cat "$WORK/files/demo-org.token" 2>/dev/null || true)
    file="token file: $([ -n "$want" ] && [ "$want" = "$have" ] && echo same value || echo not yet)"
    echo "$(date -u +%H:%M:%S)  rotation #$rotations  $rec  ${ready}  ${file}"
  fi
  if [ -n "${DEMO_SECONDS:-}" ] && [ $(( $(date +%s) - start )) -ge "$DEMO_SECONDS" ]; then break; fi
  sleep 1
done
echo
curl -fsS "http://127.0.0.1:$LISTEN_PORT/metrics" | grep -E '^token_rotator_(token_|rotations_total)' || true
if [ "$rotations" -lt 2 ] && [ -n "${DEMO_SECONDS:-}" ] && [ "$DEMO_SECONDS" -ge 20 ]; then
  echo "expected at least two rotations; daemon log:" >&2; cat "$WORK/daemon.log" >&2; exit 1
fi
