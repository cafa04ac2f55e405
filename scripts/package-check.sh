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
#   - a changed conffile survives a reinstall and a remove; purge removes it and the state directory.
set -euo pipefail
cd "$(dirname "$0")/.."
DEBOOTSTRAP_DEB_VERSION=1.0.128+nmu2+deb12u2
deb="$(realpath "${1:?usage: package-check.sh PACKAGE.deb}")"
if ! command -v debootstrap >/dev/null 2>&1; then
  . scripts/apt-pinned.sh
  apt_pinned "debootstrap=${DEBOOTSTRAP_DEB_VERSION}"
fi

WORK="$(mktemp -d)"
ROOT="$WORK/root"
cleanup() {
  umount "$ROOT/proc" 2>/dev/null || true
  rm -rf "$WORK"
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

# Conffile handling: an operator's edit survives a reinstall and a remove; purge takes it and the state.
echo '# edited by the operator' >>"$ROOT/etc/token-rotator/policy.toml"
in_root dpkg -i --force-confold /tmp/token-rotator.deb >/dev/null
grep -q 'edited by the operator' "$ROOT/etc/token-rotator/policy.toml" || fail "reinstall replaced the edited policy"
mkdir -p "$ROOT/var/lib/private/token-rotator" && touch "$ROOT/var/lib/private/token-rotator/journal"
in_root dpkg -r token-rotator >/dev/null
[ ! -e "$ROOT/usr/bin/token-rotator" ] || fail "remove left the binary"
grep -q 'edited by the operator' "$ROOT/etc/token-rotator/policy.toml" || fail "remove took the edited policy"
[ -e "$ROOT/var/lib/private/token-rotator/journal" ] || fail "remove took the journal"
in_root dpkg -P token-rotator >/dev/null
[ ! -e "$ROOT/etc/token-rotator/policy.toml" ] || fail "purge left the policy"
[ ! -e "$ROOT/var/lib/private/token-rotator" ] || fail "purge left the state directory"
echo "package check passed"
