# Sourced by demo.sh, image.sh and package-check.sh: the HCP Terraform emulator and a dev-mode OpenBao on loopback
# ports chosen now, and the one-token policy that rotates the emulator's organization token into OpenBao.
# The caller sets WORK (a private temporary directory) and PIDS (an array its cleanup kills).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http URL [TRIES]: until URL answers 2xx, every 0.2 s, at most TRIES times (default 150: 30 s).
wait_http() {
  local _
  for _ in $(seq 1 "${2:-150}"); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.2; done
  echo "timed out waiting for $1" >&2
  return 1
}

# start_stack EMULATOR BAO ROOT_TOKEN: starts both; sets TFC_PORT and BAO_PORT; the emulator's admin token (an
# owners-team token of organization "acme") is in $WORK/tfc-admin.
start_stack() {
  TFC_PORT=$(free_port); BAO_PORT=$(free_port)
  mkdir -p -m 0700 "$WORK/home"
  "$1" --listen "127.0.0.1:$TFC_PORT" --org acme --admin-token-file "$WORK/tfc-admin" 2>"$WORK/tfc.log" &
  PIDS+=($!)
  HOME="$WORK/home" "$2" server -dev -dev-listen-address="127.0.0.1:$BAO_PORT" -dev-root-token-id="$3" \
    -dev-no-store-token >"$WORK/bao.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$BAO_PORT/v1/sys/health" ||
    { echo "OpenBao did not start; its log:" >&2; cat "$WORK/bao.log" >&2; return 1; }
  local _
  for _ in $(seq 1 100); do [ -s "$WORK/tfc-admin" ] && return 0; sleep 0.1; done
  echo "the TFC emulator wrote no admin token; its log:" >&2; cat "$WORK/tfc.log" >&2
  return 1
}

# stack_policy LISTEN_PORT TFC_TOKEN_FILE VAULT_TOKEN_FILE TOKEN_NAME KV_PATH [STATE_DIR]: the policy on stdout.
# STACK_VAULT_HOST: OpenBao's host name in the policy (default 127.0.0.1; `localhost` tests name lookup).
# The organization token lives 40 s and is rotated 32 s before it expires: a rotation every ~8 s.
stack_policy() {
  [ -z "${6:-}" ] || printf '[daemon]\nstate_dir = "%s"\n' "$6"
  [ -n "${6:-}" ] || printf '[daemon]\n'
  cat <<POLICY
listen = "127.0.0.1:$1"

[issuers.tfc]
kind = "tfe"
address = "http://127.0.0.1:$TFC_PORT"
token = { file = "$2" }

[sinks.vault]
kind = "vault"
address = "http://${STACK_VAULT_HOST:-127.0.0.1}:$BAO_PORT"
mount = "secret"
auth = { method = "token", token = { file = "$3" } }

[tokens.$4]
issuer = "tfc"
type = "organization"
organization = "acme"
lifetime = "40s"          # short on purpose: a rotation every ~8 s
rotate_before = "32s"
sinks = [{ sink = "vault", path = "$5" }]
POLICY
}
