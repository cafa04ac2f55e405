#!/usr/bin/env bash
# The container image, built and run (README "Install"; CI runs this). Builds the static `dist` binary, then the
# Dockerfile's runtime stage unchanged, with the `build` stage replaced by a directory of the same layout
# (`--build-context build=DIR`: base images cannot be pulled here). Then runs the image against the TFC emulator and
# a real OpenBao on the host's loopback and checks, failing on any miss:
#   - it runs as the non-root user 65532 with a read-only root file system (even root cannot write /), all
#     capabilities dropped;
#   - /healthz answers and the image's HEALTHCHECK (`token-rotator healthcheck`) passes, and fails with no daemon;
#   - it reaches OpenBao by name (`localhost`: name lookup works in a static binary on scratch);
#   - the organization token rotates into OpenBao, the stored token works at the issuer and its predecessor does not;
#   - the journal lands on the state volume, owned by the image's user, mode 0700;
#   - no token value appears in the container's logs;
#   - SIGTERM (`podman stop`) ends it with exit status 0 well inside the stop timeout;
#   and prints the image size.
# Needs root (podman); installs podman and runc from Debian, pinned, when missing.
#   IMAGE=name:tag  the tag to build (default token-rotator:test)
set -euo pipefail
cd "$(dirname "$0")/.."
PODMAN_DEB_VERSION=4.3.1+ds1-8+deb12u1+b3
RUNC_DEB_VERSION=1.1.5+ds1-1+deb12u1
IMAGE="${IMAGE:-token-rotator:test}"

bash scripts/install-test-deps.sh
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
  . scripts/apt-pinned.sh
  apt_pinned "podman=${PODMAN_DEB_VERSION}" "runc=${RUNC_DEB_VERSION}"
fi
export CONTAINERS_CONF="$PWD/scripts/containers.conf"

echo "building the static binary (dist profile) and the emulator…" >&2
BIN=$(bash scripts/dist-build.sh)
cargo build --quiet --locked -p token-rotator-emulators
BAO="$PWD/.venv/bin/bao"

WORK="$(mktemp -d)"
NAME="token-rotator-image-test-$$"
VOLUME="$NAME-state"
PIDS=()
cleanup() {
  podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
  podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "image test FAILED: $*" >&2; echo "--- container log" >&2; podman logs "$NAME" >&2 2>&1 || true; exit 1; }

# The build context: what the Dockerfile's builder stage leaves in /out.
CTX="$WORK/build"
install -D -m 0755 "$BIN" "$CTX/out/rootfs/usr/local/bin/token-rotator"
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$CTX/out/rootfs/etc/ssl/certs/ca-certificates.crt"
install -D -m 0644 THIRD-PARTY-LICENSES "$CTX/out/rootfs/usr/share/doc/token-rotator/THIRD-PARTY-LICENSES"
install -d -m 0755 "$CTX/out/rootfs/var/lib"
install -d -m 0700 "$CTX/out/state/token-rotator"
podman build --quiet --format docker --pull=never --build-context "build=$CTX" -t "$IMAGE" -f Dockerfile "$CTX" >/dev/null

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
health=$(podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE")
compressed=$(podman save --format docker-archive "$IMAGE" | gzip -6 | wc -c)
echo "image $IMAGE: $((size / 1024)) KiB unpacked, $((compressed / 1024)) KiB as a gzip'd archive; user $user; healthcheck $health"
[ "$user" = "65532:65532" ] || fail "image user is '$user', not 65532:65532"
[ "$health" = '["CMD","/usr/local/bin/token-rotator","healthcheck"]' ] || fail "HEALTHCHECK is $health"
version=$(podman --log-level=fatal run --rm --read-only "$IMAGE" --version)
[ "$version" = "token-rotator $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ] || fail "--version said '$version'"

. scripts/stack.sh
LISTEN_PORT=$(free_port)
start_stack "${CARGO_TARGET_DIR:-$PWD/target}/debug/tfc-emulator" "$BAO" image-root || fail "the emulator and OpenBao"

# Secrets as an operator mounts them: a read-only directory, files owned by the image's user, mode 0600.
install -d -m 0755 "$WORK/secrets"
install -m 0600 -o 65532 -g 65532 "$WORK/tfc-admin" "$WORK/secrets/tfc-token"
printf 'image-root\n' >"$WORK/vault-token"
install -m 0600 -o 65532 -g 65532 "$WORK/vault-token" "$WORK/secrets/vault-token"
# OpenBao by name: the static binary resolves `localhost` on scratch (glibc's built-in files lookup, podman's hosts).
STACK_VAULT_HOST=localhost stack_policy "$LISTEN_PORT" /run/secrets/tfc-token /run/secrets/vault-token image-org image/tfc-org >"$WORK/policy.toml"
chmod 0644 "$WORK/policy.toml"

podman volume create "$VOLUME" >/dev/null
# --network host: the daemon reaches the emulator and OpenBao on the host's loopback, and is reached there.
podman --log-level=fatal run -d --name "$NAME" --network host --read-only --cap-drop=all --security-opt no-new-privileges \
  -v "$WORK/policy.toml:/etc/token-rotator/policy.toml:ro" -v "$WORK/secrets:/run/secrets:ro" \
  -v "$VOLUME:/var/lib/token-rotator" "$IMAGE" >/dev/null 2>"$WORK/podman-run.log" ||
  { cat "$WORK/podman-run.log" >&2; fail "podman run failed"; }
# (Without systemd as PID 1 podman cannot schedule the periodic HEALTHCHECK and says so on stderr; the check itself
# is run below with `podman healthcheck run`.)
wait_http "http://127.0.0.1:$LISTEN_PORT/healthz" || fail "/healthz"

pid=$(podman inspect --format '{{.State.Pid}}' "$NAME")
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[ "$uid" = "65532" ] || fail "the daemon runs as uid $uid"
# The root file system is read-only even for root in the container: our own binary, run as uid 0, cannot write to /.
if ro=$(podman exec --user 0 "$NAME" /usr/local/bin/token-rotator man --out-dir / 2>&1); then
  fail "root could write to / in the container"
fi
grep -q "Read-only file system" <<<"$ro" || fail "writing to / failed, but not for a read-only root: $ro"
caps=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
[ "$caps" = "0000000000000000" ] || fail "effective capabilities $caps"

# `podman healthcheck run` runs the image's HEALTHCHECK command inside the container now (exit 0 = healthy).
podman healthcheck run "$NAME" >/dev/null || fail "HEALTHCHECK reported unhealthy"
# …and the same command fails when nothing answers on `listen` (a policy whose port nobody serves).
sed "s/^listen = .*/listen = \"127.0.0.1:$(free_port)\"/" "$WORK/policy.toml" >"$WORK/idle-policy.toml"
chmod 0644 "$WORK/idle-policy.toml"
code=0
podman --log-level=fatal run --rm --network host -v "$WORK/idle-policy.toml:/etc/token-rotator/policy.toml:ro" \
  -v "$WORK/secrets:/run/secrets:ro" "$IMAGE" healthcheck >/dev/null 2>"$WORK/idle-health.log" || code=$?
[ "$code" = "1" ] || fail "healthcheck with no daemon listening exited $code, not 1: $(cat "$WORK/idle-health.log")"
grep -q "did not answer 200" "$WORK/idle-health.log" || fail "healthcheck failed for another reason: $(cat "$WORK/idle-health.log")"

export BAO_ADDR="http://127.0.0.1:$BAO_PORT" BAO_TOKEN=image-root HOME="$WORK/home"
record() { "$BAO" kv get -format=json secret/image/tfc-org 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin)["data"]["data"]; print(d["token_id"], d["token"])' || true; }
works() { curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" "http://127.0.0.1:$TFC_PORT/api/v2/account/details"; }
first=""; second=""
for _ in $(seq 1 60); do
  rec=$(record)
  if [ -n "$rec" ] && [ -z "$first" ]; then first="$rec"; fi
  if [ -n "$rec" ] && [ -n "$first" ] && [ "$rec" != "$first" ]; then second="$rec"; break; fi
  sleep 1
done
[ -n "$first" ] || fail "no record in OpenBao after 60 s"
[ -n "$second" ] || fail "the stored token did not rotate within 60 s of the first"
first_value="${first#* }"; second_value="${second#* }"
[ "$(works "$second_value")" = "200" ] || fail "the stored token does not work at the issuer"
[ "$(works "$first_value")" = "401" ] || fail "the replaced organization token still works"
echo "rotated in the container: ${first%% *} -> ${second%% *}; the stored token works, its predecessor answers 401"
metrics=$(curl -fsS "http://127.0.0.1:$LISTEN_PORT/metrics")
grep -E '^token_rotator_rotations_total\{' <<<"$metrics" | grep -F 'token="image-org"' | grep -F 'result="success"' |
  grep -qE ' [1-9][0-9]*$' ||
  fail "metrics show no successful rotation: $(grep rotations_total <<<"$metrics")"
grep -qxF 'token_rotator_token_ready{token="image-org"} 1' <<<"$metrics" || fail "token not ready"

mountpoint=$(podman volume inspect --format '{{.Mountpoint}}' "$VOLUME")
[ "$(stat -c '%u %a' "$mountpoint")" = "65532 700" ] || fail "state volume is $(stat -c '%u %a' "$mountpoint")"
[ -n "$(find "$mountpoint" -mindepth 1 -user 65532 | head -1)" ] || fail "nothing written to the state volume"

started=$(date +%s)
podman --log-level=fatal stop -t 30 "$NAME" >/dev/null
elapsed=$(( $(date +%s) - started ))
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$code" = "0" ] || fail "exit status $code after SIGTERM"
[ "$elapsed" -lt 20 ] || fail "SIGTERM took ${elapsed}s"
logs=$(podman logs "$NAME" 2>&1)
for secret in "$first_value" "$second_value" "$(cat "$WORK/tfc-admin")" image-root; do
  if grep -qF "$secret" <<<"$logs"; then fail "a secret appears in the container log"; fi
done
echo "SIGTERM: exit 0 after ${elapsed}s; no secret in $(wc -l <<<"$logs") log lines"
echo "image test passed"
