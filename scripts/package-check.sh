#!/usr/bin/env bash
# Installs a built package into a throwaway Debian root and checks it as an operator would meet it (CI runs this
# through `scripts/package.sh --check`). Needs root (debootstrap, chroot); installs debootstrap pinned when missing.
#   scripts/package-check.sh target/pkg/token-rotator_VERSION-1_ARCH.deb
#   DEBIAN_MIRROR  where debootstrap fetches bookworm (default http://deb.debian.org/debian)
# Checks, failing on any miss:
#   - the package installs with apt (dependencies from the mirror) and its maintainer scripts: the system user exists (no shell, no home), the unit is
#     installed but neither enabled nor started;
#   - /usr/bin/token-rotator --version; `check` accepts the shipped /etc/token-rotator/policy.toml;
#   - `systemd-analyze verify` prints nothing for the installed unit; its hardening score stays <= 2.0;
#   - man pages, bash completion (sourced and asked) present;
#   - booted under systemd (systemd-nspawn) with the unit enabled and LoadCredential=: the daemon runs as the
#     package's user with no capabilities and a seccomp filter, becomes ready, rotates into OpenBao, keeps its journal
#     in StateDirectory=, stops cleanly at shutdown, and logs no secret;
#   - an edited conffile survives an upgrade (to this package repacked with a changed policy) and a remove; purge
#     removes it and the state directory.
set -euo pipefail
deb="$(realpath "${1:?usage: package-check.sh PACKAGE.deb}")"
cd "$(dirname "$0")/.."
DEBOOTSTRAP_DEB_VERSION=1.0.128+nmu2+deb12u2
SYSTEMD_CONTAINER_DEB_VERSION=252.39-1~deb12u2
if ! command -v debootstrap >/dev/null 2>&1; then
  . scripts/apt-pinned.sh
  apt_pinned "debootstrap=${DEBOOTSTRAP_DEB_VERSION}"
fi

WORK="$(mktemp -d)"
ROOT="$WORK/root"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  umount -R "$ROOT/proc" 2>/dev/null || true
  # Never through a mount a killed debootstrap or nspawn may have left behind.
  if findmnt -rn -o TARGET | grep -qF "$ROOT/"; then
    echo "mounts left under $ROOT; not removing $WORK" >&2
  else
    rm -rf --one-file-system "$WORK"
  fi
}
trap cleanup EXIT
fail() { echo "package check FAILED: $*" >&2; exit 1; }
in_root() { chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

echo "debootstrap bookworm (minbase + systemd) into $ROOT…" >&2
timeout 900 debootstrap --variant=minbase --include=systemd bookworm "$ROOT" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
  >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
mount -t proc proc "$ROOT/proc"
cp "$deb" "$ROOT/tmp/token-rotator.deb"

# As an operator installs a downloaded package: apt resolves its dependencies from the mirror.
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends /tmp/token-rotator.deb \
  >"$WORK/install.log" 2>&1 || { cat "$WORK/install.log" >&2; fail "apt-get install"; }
grep -E "Creating (user|group)" "$WORK/install.log" || true
version=$(in_root token-rotator --version)
[ "$version" = "token-rotator $(dpkg-deb -f "$deb" Version | sed 's/-[^-]*$//')" ] || fail "--version said '$version'"
echo "installed: $version"

entry=$(in_root getent passwd token-rotator) || fail "no token-rotator user"
IFS=: read -r _ _ uid _ _ home shell <<<"$entry"
[ "$uid" -lt 1000 ] || fail "token-rotator is not a system user (uid $uid)"
[ "$shell" = "/usr/sbin/nologin" ] && [ "$home" = "/nonexistent" ] || fail "user entry $entry"
[ ! -e "$ROOT/etc/systemd/system/multi-user.target.wants/token-rotator.service" ] || fail "the unit was enabled on install"

unit=/lib/systemd/system/token-rotator.service
[ -f "$ROOT$unit" ] || fail "no unit at $unit"
grep -q '^ExecStart=/usr/bin/token-rotator run' "$ROOT$unit" || fail "ExecStart does not run /usr/bin/token-rotator"
out=$(in_root systemd-analyze verify --man=no "$unit" 2>&1 || true)
[ -z "$out" ] || fail "systemd-analyze verify: $out"
in_root systemd-analyze security --offline=true --threshold=20 "$unit" | tail -1

in_root token-rotator check --config /etc/token-rotator/policy.toml || fail "the shipped policy does not pass check"
cmp "$ROOT/etc/token-rotator/policy.toml" config/policy.example.toml || fail "the shipped policy is not the annotated example"
zcat "$ROOT/usr/share/man/man1/token-rotator.1.gz" | grep -q '^\.SH "EXIT STATUS"' || fail "man page"
for cmd in run check plan rotate status; do
  [ -f "$ROOT/usr/share/man/man1/token-rotator-$cmd.1.gz" ] || fail "no man page for $cmd"
done
completed=$(in_root bash --norc -c 'source /usr/share/bash-completion/completions/token-rotator
COMP_WORDS=(token-rotator check --o); COMP_CWORD=2
_token__rotator token-rotator --o check; echo "${COMPREPLY[*]}"')
[ "$completed" = "--online" ] || fail "bash completion of 'check --o' gave '$completed'"

# Under a real systemd: boot the root (systemd-nspawn, sharing the host's network) with the unit enabled, the policy
# pointing at the TFC emulator and OpenBao on the host's loopback, and the issuer and Vault tokens handed over with
# LoadCredential= as the unit's comments say. The daemon must run as the package's static user, inside the unit's
# sandbox, reach READY, rotate, keep its journal in StateDirectory=, and stop cleanly at shutdown.
if ! command -v systemd-nspawn >/dev/null 2>&1; then
  . scripts/apt-pinned.sh
  apt_pinned "systemd-container=${SYSTEMD_CONTAINER_DEB_VERSION}"
fi
bash scripts/install-test-deps.sh
cargo build --quiet --locked -p token-rotator-emulators
. scripts/stack.sh
LISTEN_PORT=$(free_port)
start_stack "${CARGO_TARGET_DIR:-$PWD/target}/debug/tfc-emulator" .venv/bin/bao pkg-root || fail "the emulator and OpenBao"
install -d -m 0700 "$ROOT/etc/token-rotator/credentials"
install -m 0600 "$WORK/tfc-admin" "$ROOT/etc/token-rotator/credentials/tfc-token"
printf 'pkg-root\n' >"$ROOT/etc/token-rotator/credentials/vault-token"
chmod 0600 "$ROOT/etc/token-rotator/credentials/vault-token"
install -d "$ROOT/etc/systemd/system/token-rotator.service.d"
cat >"$ROOT/etc/systemd/system/token-rotator.service.d/credentials.conf" <<'DROPIN'
[Service]
LoadCredential=tfc-token:/etc/token-rotator/credentials/tfc-token
LoadCredential=vault-token:/etc/token-rotator/credentials/vault-token
DROPIN
cp "$ROOT/etc/token-rotator/policy.toml" "$WORK/shipped-policy.toml"
# shellcheck disable=SC2016 # $CREDENTIALS_DIRECTORY is for the daemon to expand, not this shell
stack_policy "$LISTEN_PORT" '$CREDENTIALS_DIRECTORY/tfc-token' '$CREDENTIALS_DIRECTORY/vault-token' pkg-org pkg/tfc-org \
  >"$ROOT/etc/token-rotator/policy.toml"
in_root systemctl enable token-rotator.service >/dev/null 2>&1
[ -L "$ROOT/etc/systemd/system/multi-user.target.wants/token-rotator.service" ] || fail "systemctl enable"
install -d "$ROOT/var/log/journal"   # persistent journal: read from the host after shutdown
umount "$ROOT/proc"
systemd-nspawn --quiet --register=no --keep-unit --boot --directory="$ROOT" --console=pipe >"$WORK/boot.log" 2>&1 </dev/null &
NSPAWN=$!
PIDS+=($NSPAWN)
journal() { journalctl --directory="$ROOT/var/log/journal" --no-pager -o cat "$@" 2>/dev/null || true; }
boot_fail() {
  echo "--- console" >&2; tail -40 "$WORK/boot.log" >&2
  echo "--- token-rotator.service" >&2; journal -u token-rotator.service | tail -40 >&2
  fail "$*"
}
wait_http "http://127.0.0.1:$LISTEN_PORT/readyz" 300 || boot_fail "the packaged daemon did not become ready under systemd"
export BAO_ADDR="http://127.0.0.1:$BAO_PORT" BAO_TOKEN=pkg-root HOME="$WORK/home"
stored=""
for _ in $(seq 1 30); do
  stored=$(.venv/bin/bao kv get -field=token secret/pkg/tfc-org 2>/dev/null || true)
  [ -n "$stored" ] && break
  sleep 1
done
[ -n "$stored" ] || boot_fail "nothing stored in OpenBao"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $stored" "http://127.0.0.1:$TFC_PORT/api/v2/account/details")
[ "$code" = "200" ] || boot_fail "the stored token answers $code at the issuer"
pid=$(ss -ltnpH "sport = :$LISTEN_PORT" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
[ -n "$pid" ] || boot_fail "no process listens on $LISTEN_PORT"
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
want_uid=$(in_root getent passwd token-rotator | cut -d: -f3)
[ "$uid" = "$want_uid" ] || boot_fail "the daemon runs as uid $uid, not the package's user ($want_uid)"
[ "$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")" = "0000000000000000" ] || boot_fail "the daemon has capabilities"
[ "$(awk '/^Seccomp:/ {print $2}' "/proc/$pid/status")" = "2" ] || boot_fail "no seccomp filter"
state="$ROOT/var/lib/private/token-rotator"
[ "$(stat -c '%u %a' "$state")" = "$want_uid 700" ] || boot_fail "state directory is $(stat -c '%u %a' "$state")"
[ -n "$(find "$state" -mindepth 1 -user "$want_uid" | head -1)" ] || boot_fail "no journal in the state directory"
echo "under systemd: ready, rotated (stored token works), uid $uid (the package's user), no capabilities, seccomp on"
kill -TERM "$NSPAWN"   # nspawn shuts the container down: systemd stops the unit with SIGTERM
for _ in $(seq 1 300); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.1; done
kill -0 "$NSPAWN" 2>/dev/null && boot_fail "the container did not shut down within 30 s"
log=$(journal -u token-rotator.service)
grep -q "token-rotator started" <<<"$log" || boot_fail "no start in the unit's journal"
grep -qE "Deactivated successfully|Succeeded" <<<"$log" || boot_fail "the unit did not stop cleanly at shutdown"
# Only our own words: the Vault client's context-free errors stay off even with the unit's RUST_LOG=info.
if grep -q "Server returned error" <<<"$log"; then boot_fail "the Vault client's own error lines are in the journal"; fi
for secret in "$stored" "$(cat "$WORK/tfc-admin")" pkg-root; do
  if grep -qF "$secret" <<<"$log"; then boot_fail "a secret appears in the unit's journal"; fi
done
mount -t proc proc "$ROOT/proc"
cp "$WORK/shipped-policy.toml" "$ROOT/etc/token-rotator/policy.toml"
echo "under systemd: stopped cleanly at shutdown; no secret in $(wc -l <<<"$log") journal lines"

# Conffile handling. An upgrade to a package whose shipped policy changed keeps the operator's edited one (and
# leaves the new one beside it as .dpkg-dist); an unedited one would be replaced. The "upgrade" is this package
# repacked as revision +1 with one line added to the shipped policy.
dpkg-deb -R "$deb" "$WORK/next"
version=$(dpkg-deb -f "$deb" Version)
sed -i "s/^Version: .*/Version: ${version}+1/" "$WORK/next/DEBIAN/control"
echo '# changed by the next release' >>"$WORK/next/etc/token-rotator/policy.toml"
(cd "$WORK/next" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
dpkg-deb --root-owner-group -b "$WORK/next" "$ROOT/tmp/token-rotator-next.deb" >/dev/null
echo '# edited by the operator' >>"$ROOT/etc/token-rotator/policy.toml"
in_root dpkg -i --force-confold /tmp/token-rotator-next.deb >/dev/null
[ "$(in_root dpkg-query -W -f '${Version}' token-rotator)" = "${version}+1" ] || fail "the upgrade did not happen"
grep -q 'edited by the operator' "$ROOT/etc/token-rotator/policy.toml" || fail "the upgrade replaced the edited policy"
grep -q 'changed by the next release' "$ROOT/etc/token-rotator/policy.toml.dpkg-dist" ||
  fail "the upgrade did not leave the new shipped policy as policy.toml.dpkg-dist"
mkdir -p "$ROOT/var/lib/private/token-rotator" && touch "$ROOT/var/lib/private/token-rotator/journal"
in_root dpkg -r token-rotator >/dev/null
[ ! -e "$ROOT/usr/bin/token-rotator" ] || fail "remove left the binary"
grep -q 'edited by the operator' "$ROOT/etc/token-rotator/policy.toml" || fail "remove took the edited policy"
[ -e "$ROOT/var/lib/private/token-rotator/journal" ] || fail "remove took the journal"
in_root dpkg -P token-rotator >/dev/null
[ ! -e "$ROOT/etc/token-rotator/policy.toml" ] || fail "purge left the policy"
[ ! -e "$ROOT/var/lib/private/token-rotator" ] || fail "purge left the state directory"
echo "package check passed"
